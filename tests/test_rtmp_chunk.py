"""Chunk stream reader and writer."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest

from gateway.wire.rtmp.chunk import ChunkError, ChunkReader, Message, encode_message
from gateway.wire.rtmp.messages import RtmpError

MASK = 0xFFFFFFFF


# --------------------------------------------------------------------------- test-side writer


def basic_header(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes([(fmt << 6) | csid])
    if csid < 320:
        return bytes([fmt << 6, csid - 64])
    v = csid - 64
    return bytes([(fmt << 6) | 1, v & 0xFF, v >> 8])


@dataclass
class _Prev:
    timestamp: int
    header_value: int  # value of the last type 0/1/2 timestamp field (abs or delta)
    length: int
    type_id: int
    stream_id: int
    ext: bool


def write_compressed(
    messages: list[Message],
    chunk_size: int = 128,
    repeat_ext: bool = True,
    allow_wrap: bool = False,
) -> bytes:
    """An FFmpeg-like writer: picks the smallest header type the previous message allows.

    Independent from the library's writer so the reader is tested against another encoder.
    ``repeat_ext`` puts the extended timestamp on type-3 chunks (FFmpeg, Adobe), or not
    (old encoders). A ``SET_CHUNK_SIZE`` message switches the chunk size for what follows.
    """
    prev: dict[int, _Prev] = {}
    out = bytearray()
    for m in messages:
        p = prev.get(m.csid)
        n = len(m.payload)
        if p is None or p.stream_id != m.stream_id or (m.timestamp < p.timestamp and not allow_wrap):
            fmt, value = 0, m.timestamp
        else:
            value = (m.timestamp - p.timestamp) & MASK
            if m.type_id != p.type_id or n != p.length:
                fmt = 1
            elif value != p.header_value:
                fmt = 2
            else:
                fmt = 3
        if fmt == 3:
            ext = p.ext  # type: ignore[union-attr]
            value = p.header_value  # type: ignore[union-attr]
        else:
            ext = value >= 0xFFFFFF
        field = 0xFFFFFF if ext else value
        out += basic_header(fmt, m.csid)
        if fmt == 0:
            out += field.to_bytes(3, "big") + n.to_bytes(3, "big") + bytes([m.type_id])
            out += struct.pack("<I", m.stream_id)
        elif fmt == 1:
            out += field.to_bytes(3, "big") + n.to_bytes(3, "big") + bytes([m.type_id])
        elif fmt == 2:
            out += field.to_bytes(3, "big")
        if ext and (fmt != 3 or repeat_ext):
            out += struct.pack(">I", value)
        out += m.payload[:chunk_size]
        for i in range(chunk_size, n, chunk_size):
            out += basic_header(3, m.csid)
            if ext and repeat_ext:
                out += struct.pack(">I", value)
            out += m.payload[i : i + chunk_size]
        prev[m.csid] = _Prev(m.timestamp, value, n, m.type_id, m.stream_id, ext)
        if m.type_id == 1:
            chunk_size = struct.unpack(">I", m.payload[:4])[0]
    return bytes(out)


def feed_all(reader: ChunkReader, data: bytes, step: int | None = None) -> list[Message]:
    if step is None:
        return reader.receive_data(data)
    out: list[Message] = []
    for i in range(0, len(data), step):
        out += reader.receive_data(data[i : i + step])
    return out


def msg(type_id: int, ts: int, payload: bytes, csid: int = 6, stream_id: int = 1) -> Message:
    return Message(type_id, stream_id, ts, payload, csid)


# --------------------------------------------------------------------------- writer


def test_encode_small_message_exact_bytes() -> None:
    data = encode_message(20, 0, 0x123, b"abc", csid=3, chunk_size=128)
    assert data == bytes([0x03, 0x00, 0x01, 0x23, 0, 0, 3, 20, 0, 0, 0, 0]) + b"abc"


def test_encode_splits_into_type3_chunks() -> None:
    payload = bytes(range(256)) * 2  # 512 bytes
    data = encode_message(9, 1, 40, payload, csid=6, chunk_size=200)
    assert data[0] == 0x06
    assert data[12:212] == payload[:200]
    assert data[212] == 0xC6
    assert data[213:413] == payload[200:400]
    assert data[413] == 0xC6
    assert data[414:] == payload[400:]


def test_encode_extended_timestamp_repeated_on_continuations() -> None:
    ts = 0x01234567
    payload = b"x" * 300
    data = encode_message(9, 1, ts, payload, csid=6, chunk_size=128)
    assert data[1:4] == b"\xff\xff\xff"
    assert data[12:16] == struct.pack(">I", ts)
    first_cont = 16 + 128
    assert data[first_cont] == 0xC6
    assert data[first_cont + 1 : first_cont + 5] == struct.pack(">I", ts)
    assert ChunkReader().receive_data(data) == [Message(9, 1, ts, payload, 6)]


def test_encode_timestamp_exactly_0xffffff_uses_extended_field() -> None:
    data = encode_message(8, 1, 0xFFFFFF, b"a", csid=4)
    assert data[1:4] == b"\xff\xff\xff" and data[12:16] == b"\x00\xff\xff\xff"
    assert ChunkReader().receive_data(data)[0].timestamp == 0xFFFFFF


def test_encode_depends_only_on_arguments() -> None:
    payload = bytearray(b"p" * 10000)
    a = encode_message(9, 1, 1000, payload, 6, 4096)
    b = encode_message(9, 1, 1000, bytes(payload), 6, 4096)
    c = encode_message(9, 1, 1000, memoryview(payload), 6, 4096)
    assert a == b == c and isinstance(a, bytes)


@pytest.mark.parametrize("csid", [2, 3, 63, 64, 65, 319, 320, 1000, 65599])
def test_basic_header_sizes_round_trip(csid: int) -> None:
    payload = b"z" * 300
    data = encode_message(9, 1, 5, payload, csid=csid, chunk_size=128)
    expected_len = {True: 1}.get(csid < 64, 2 if csid < 320 else 3)
    assert len(data) == expected_len + 11 + 128 + (expected_len + 128) + (expected_len + 44)
    assert ChunkReader().receive_data(data) == [Message(9, 1, 5, payload, csid)]


@pytest.mark.parametrize("bad", [0, 1, 65600])
def test_encode_rejects_bad_csid(bad: int) -> None:
    with pytest.raises(ValueError):
        encode_message(9, 1, 0, b"", csid=bad)


def test_encode_rejects_oversized_payload_and_bad_chunk_size() -> None:
    with pytest.raises(ValueError):
        encode_message(9, 1, 0, b"\0" * 0x1000000)
    with pytest.raises(ValueError):
        encode_message(9, 1, 0, b"a", chunk_size=0)


def test_encode_empty_payload() -> None:
    data = encode_message(18, 1, 7, b"", csid=5)
    assert len(data) == 12
    assert ChunkReader().receive_data(data) == [Message(18, 1, 7, b"", 5)]


# --------------------------------------------------------------------------- reader: headers


def test_all_header_types_and_timestamp_deltas() -> None:
    msgs = [
        msg(9, 1000, b"a" * 10),  # type 0
        msg(9, 1040, b"b" * 20),  # type 1 (length changes)
        msg(9, 1080, b"c" * 20),  # type 3 (same delta 40, same length)
        msg(9, 1100, b"d" * 20),  # type 2 (delta changes)
        msg(8, 1150, b"e" * 5),  # type 1 (type changes)
    ]
    data = write_compressed(msgs)
    # Check the writer really emitted every header type.
    fmts = []
    pos = 0
    for m in msgs:
        fmts.append(data[pos] >> 6)
        pos += 1 + {0: 11, 1: 7, 2: 3, 3: 0}[data[pos] >> 6] + len(m.payload)
    assert fmts == [0, 1, 3, 2, 1]
    assert ChunkReader().receive_data(data) == msgs


def test_type3_after_type0_uses_type0_timestamp_as_delta() -> None:
    # Spec: a type-3 starting a new message after a type-0 reuses the type-0 timestamp as delta.
    first = encode_message(8, 1, 20, b"aaaa", csid=4)
    second = bytes([0xC4]) + b"bbbb"
    out = ChunkReader().receive_data(first + second)
    assert [m.timestamp for m in out] == [20, 40]
    assert out[1].payload == b"bbbb" and out[1].type_id == 8 and out[1].stream_id == 1


def test_multi_chunk_message_with_various_chunk_sizes() -> None:
    payload = bytes(range(256)) * 40
    for cs in (1, 7, 128, 4096, 65536):
        data = encode_message(9, 1, 123, payload, csid=6, chunk_size=cs)
        reader = ChunkReader()
        reader.chunk_size = cs
        assert reader.receive_data(data) == [Message(9, 1, 123, payload, 6)]


def test_interleaved_chunk_streams() -> None:
    video = b"V" * 300
    audio = b"A" * 200
    v = encode_message(9, 1, 10, video, csid=6, chunk_size=128)
    a = encode_message(8, 1, 11, audio, csid=4, chunk_size=128)
    # Split both into their chunks and interleave them.
    v_chunks = [v[:140], v[140:269], v[269:]]
    a_chunks = [a[:140], a[140:]]
    data = v_chunks[0] + a_chunks[0] + v_chunks[1] + a_chunks[1] + v_chunks[2]
    out = ChunkReader().receive_data(data)
    assert out == [Message(8, 1, 11, audio, 4), Message(9, 1, 10, video, 6)]


def test_split_at_every_byte_gives_same_messages() -> None:
    msgs = [msg(9, i * 33, bytes([i]) * (50 + 97 * i)) for i in range(6)]
    msgs.insert(2, msg(8, 5, b"audio" * 30, csid=4))
    data = write_compressed(msgs)
    assert feed_all(ChunkReader(), data, 1) == msgs
    assert feed_all(ChunkReader(), data, 7) == msgs
    assert feed_all(ChunkReader(), data) == msgs


# --------------------------------------------------------------------------- reader: chunk size


def test_set_chunk_size_applies_to_the_very_next_chunk() -> None:
    big = bytes(range(256)) * 20
    msgs = [
        Message(1, 0, 0, struct.pack(">I", 1000), 2),
        msg(9, 0, big),
        Message(1, 0, 0, struct.pack(">I", 64), 2),
        msg(9, 40, big),
    ]
    data = write_compressed(msgs)
    for step in (None, 1, 13):
        reader = ChunkReader()
        assert feed_all(reader, data, step) == msgs
        assert reader.chunk_size == 64


@pytest.mark.parametrize("value", [0, 0x80000000, 0xFFFFFFFF])
def test_invalid_chunk_size_rejected(value: int) -> None:
    data = encode_message(1, 0, 0, struct.pack(">I", value), csid=2)
    with pytest.raises(ChunkError, match="chunk size"):
        ChunkReader().receive_data(data)


def test_max_chunk_size_accepted() -> None:
    reader = ChunkReader()
    reader.receive_data(encode_message(1, 0, 0, struct.pack(">I", 0x7FFFFFFF), csid=2))
    assert reader.chunk_size == 0x7FFFFFFF
    payload = b"q" * 100_000
    assert reader.receive_data(encode_message(9, 1, 0, payload, 6, 0x7FFFFFFF))[0].payload == payload


def test_short_set_chunk_size_rejected() -> None:
    with pytest.raises(ChunkError):
        ChunkReader().receive_data(encode_message(1, 0, 0, b"\x00\x10", csid=2))


# --------------------------------------------------------------------------- reader: timestamps


@pytest.mark.parametrize("repeat", [True, False])
def test_extended_timestamp_on_type0_with_continuations(repeat: bool) -> None:
    ts = 0x1000000 + 5
    payload = bytes(range(200)) * 3
    msgs = [msg(9, ts, payload)]
    data = write_compressed(msgs, repeat_ext=repeat)
    assert len(data) == 1 + 11 + 4 + 600 + 4 * (1 + (4 if repeat else 0))
    for step in (None, 1, 5):
        assert feed_all(ChunkReader(), data, step) == msgs


@pytest.mark.parametrize("repeat", [True, False])
def test_extended_delta_on_type1_with_continuations(repeat: bool) -> None:
    # FFmpeg's pattern: sequence header at 0, then frames 17 000 000 ms later as a type-1
    # header with an extended *delta*, repeated on the type-3 continuation chunks.
    msgs = [msg(9, 0, b"seq"), msg(9, 17_000_000, b"K" * 1000), msg(9, 17_000_033, b"P" * 300)]
    data = write_compressed(msgs, repeat_ext=repeat)
    for step in (None, 1, 3):
        assert feed_all(ChunkReader(), data, step) == msgs


def test_type3_new_message_after_extended_header_with_repetition() -> None:
    delta = 0x1000000
    msgs = [msg(8, 0, b"aa"), msg(8, delta, b"bb"), msg(8, 2 * delta, b"cc"), msg(8, 3 * delta, b"dd")]
    data = write_compressed(msgs, repeat_ext=True)
    assert data.count(bytes([0xC6])) >= 1  # type-3 new messages were used
    assert ChunkReader().receive_data(data) == msgs


def test_type3_new_message_after_extended_header_without_repetition() -> None:
    delta = 0x1000000
    msgs = [msg(8, 0, b"aa"), msg(8, delta, b"bb"), msg(8, 2 * delta, b"cc")]
    data = write_compressed(msgs, repeat_ext=False)
    reader = ChunkReader()
    # The reader must see 4 bytes after a type-3 header to tell a repeated extended
    # timestamp from payload, so a tiny trailing message waits for the next bytes.
    assert reader.receive_data(data) == msgs[:2]
    later = msg(9, 0, b"next", csid=7)
    assert reader.receive_data(encode_message(9, 1, 0, b"next", csid=7)) == [msgs[2], later]


def test_repeated_absolute_timestamp_on_continuation_is_accepted() -> None:
    # Some servers repeat the absolute timestamp instead of the header's delta.
    first = encode_message(9, 1, 100, b"s", csid=6)
    delta = 0x1000001
    payload = b"x" * 200
    t1 = bytes([0x46]) + b"\xff\xff\xff" + (200).to_bytes(3, "big") + b"\x09" + struct.pack(">I", delta)
    body = t1 + payload[:128] + bytes([0xC6]) + struct.pack(">I", 100 + delta) + payload[128:]
    out = ChunkReader().receive_data(first + body)
    assert out[1] == Message(9, 1, 100 + delta, payload, 6)


def test_timestamp_deltas_accumulate_past_24_bits() -> None:
    # Deltas below 0xFFFFFF never need the extended field, yet their sum passes 2**24.
    msgs = [msg(9, i * 0x700000, b"f") for i in range(8)]
    data = write_compressed(msgs)
    assert b"\xff\xff\xff" not in data
    out = ChunkReader().receive_data(data)
    assert [m.timestamp for m in out] == [i * 0x700000 for i in range(8)]
    assert out[-1].timestamp > 0xFFFFFF


def test_timestamp_wraps_at_32_bits() -> None:
    msgs = [msg(9, 0xFFFFFFF0, b"a"), msg(9, 0x00000010, b"b"), msg(9, 0x30, b"c")]
    data = write_compressed(msgs, allow_wrap=True)
    out = ChunkReader().receive_data(data)
    assert [m.timestamp for m in out] == [0xFFFFFFF0, 0x10, 0x30]


# --------------------------------------------------------------------------- reader: abort, bounds


def test_abort_discards_partial_message() -> None:
    payload = b"x" * 300
    data = encode_message(9, 1, 0, payload, csid=6)
    partial = data[: 12 + 128]
    abort = encode_message(2, 0, 0, struct.pack(">I", 6), csid=2)
    after = encode_message(9, 1, 50, b"fresh", csid=6)
    reader = ChunkReader()
    out = reader.receive_data(partial + abort + after)
    assert [m.type_id for m in out] == [2, 9]
    assert out[1].payload == b"fresh"
    assert reader.buffered == 0


def test_message_size_limit() -> None:
    reader = ChunkReader(max_message_size=1000)
    with pytest.raises(ChunkError, match="exceeds the limit"):
        reader.receive_data(encode_message(9, 1, 0, b"x" * 1001, csid=6))
    # The reader stays failed.
    with pytest.raises(ChunkError, match="already failed"):
        reader.receive_data(b"\x00")


def test_chunk_stream_count_limit() -> None:
    reader = ChunkReader(max_chunk_streams=4)
    data = b"".join(encode_message(8, 1, 0, b"a", csid=c) for c in range(3, 7))
    assert len(reader.receive_data(data)) == 4
    with pytest.raises(ChunkError, match="chunk streams"):
        reader.receive_data(encode_message(8, 1, 0, b"a", csid=7))


def test_pending_bytes_limit() -> None:
    reader = ChunkReader(max_message_size=1000, max_pending=300)
    parts = [encode_message(9, 1, 0, b"x" * 900, csid=c)[: 12 + 128] for c in (3, 4, 5)]
    with pytest.raises(ChunkError, match="partial"):
        reader.receive_data(b"".join(parts))


@pytest.mark.parametrize("fmt", [1, 2, 3])
def test_compressed_header_without_previous_header(fmt: int) -> None:
    with pytest.raises(ChunkError, match="no previous header"):
        ChunkReader().receive_data(bytes([(fmt << 6) | 5]) + b"\x00" * 20)


def test_new_header_interrupting_a_message() -> None:
    first = encode_message(9, 1, 0, b"x" * 300, csid=6)[:140]
    second = encode_message(9, 1, 0, b"y", csid=6)
    with pytest.raises(ChunkError, match="interrupts"):
        ChunkReader().receive_data(first + second)


def test_chunk_error_is_an_rtmp_error_and_value_error() -> None:
    assert issubclass(ChunkError, RtmpError) and issubclass(ChunkError, ValueError)


# --------------------------------------------------------------------------- reader: options


def test_media_prefix_mode_keeps_only_a_prefix() -> None:
    video = bytes(range(256)) * 10
    data = (
        encode_message(9, 1, 0, video, csid=6, chunk_size=128)
        + encode_message(18, 1, 0, b"metadata" * 40, csid=5, chunk_size=128)
        + encode_message(8, 1, 0, b"\xaf\x01", csid=4)
    )
    out = feed_all(ChunkReader(media_prefix=2), data, 50)
    assert out[0].payload == video[:2] and out[0].size == len(video)
    assert out[1].payload == b"metadata" * 40  # non-media untouched
    assert out[2].payload == b"\xaf\x01" and out[2].size == 2
    out0 = ChunkReader(media_prefix=0).receive_data(data)
    assert out0[0].payload == b"" and out0[0].size == 2560
