"""Property tests: round trips, split invariance, and garbage only ever raising our errors."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_rtmp_chunk import write_compressed

from gateway.wire.rtmp import amf0
from gateway.wire.rtmp.chunk import ChunkError, ChunkReader, Message, encode_message
from gateway.wire.rtmp.connection import ClientConnection, ServerConnection
from gateway.wire.rtmp.handshake import HANDSHAKE_SIZE
from gateway.wire.rtmp.messages import RtmpError

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- AMF0

keys = st.text(max_size=8)
scalars = st.one_of(
    st.none(),
    st.just(amf0.UNDEFINED),
    st.booleans(),
    st.floats(allow_nan=False),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.text(max_size=20),
    st.builds(amf0.Date, st.floats(allow_nan=False), st.integers(-32768, 32767)),
)
amf_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=4),
        st.dictionaries(keys, children, max_size=4).map(amf0.ECMAArray),
    ),
    max_leaves=20,
)


@FAST
@given(st.lists(amf_values, max_size=4))
def test_amf0_round_trip(values: list[Any]) -> None:
    data = amf0.encode(*values)
    decoded = amf0.decode_all(data)
    assert decoded == values
    assert amf0.encode(*decoded) == data


@FAST
@given(st.binary(max_size=300))
def test_amf0_garbage_raises_only_amf0_error(data: bytes) -> None:
    try:
        amf0.decode_all(data)
    except amf0.AMF0Error:
        pass


@FAST
@given(amf_values, st.binary(min_size=1, max_size=20), st.integers(0, 40))
def test_amf0_mutated_input_raises_only_amf0_error(value: Any, noise: bytes, at: int) -> None:
    data = bytearray(amf0.encode(value))
    at = min(at, len(data))
    data[at : at + len(noise)] = noise
    try:
        amf0.decode_all(bytes(data))
    except amf0.AMF0Error:
        pass


# --------------------------------------------------------------------------- chunk stream

messages = st.lists(
    st.builds(
        Message,
        type_id=st.sampled_from([8, 9, 18, 20, 4]),
        stream_id=st.sampled_from([0, 1, 2]),
        timestamp=st.integers(0, 0xFFFFFFFF),
        payload=st.binary(max_size=700),
        csid=st.sampled_from([3, 4, 6, 63, 64, 300, 320, 65599]),
    ),
    max_size=8,
)


def monotonic(msgs: list[Message], bump: int) -> list[Message]:
    """Per-csid non-decreasing timestamps so the compressing writer uses deltas a lot."""
    last: dict[int, int] = {}
    out = []
    for msg in msgs:
        ts = max(msg.timestamp, last.get(msg.csid, 0)) if bump else msg.timestamp
        last[msg.csid] = ts
        out.append(Message(msg.type_id, msg.stream_id, ts, msg.payload, msg.csid))
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, prev = [], 0
    for p in points:
        pieces.append(data[prev:p])
        prev = p
    pieces.append(data[prev:])
    return pieces


def read_pieces(pieces: list[bytes]) -> list[Message]:
    reader = ChunkReader()
    out: list[Message] = []
    for piece in pieces:
        out += reader.receive_data(piece)
    return out


@FAST
@given(messages, st.sampled_from([1, 2, 128, 1000]), st.booleans(), st.lists(st.integers(0, 10**6), max_size=12))
def test_chunk_round_trip_with_compressed_headers_any_split(
    msgs: list[Message], chunk_size: int, sort_ts: bool, cuts: list[int]
) -> None:
    msgs = monotonic(msgs, sort_ts)
    prefix = [Message(1, 0, 0, struct.pack(">I", chunk_size), 2)]
    data = write_compressed(prefix + msgs, repeat_ext=True)
    whole = ChunkReader().receive_data(data)
    assert whole == prefix + msgs
    assert read_pieces(split(data, cuts)) == whole


def _ambiguous(msgs: list[Message]) -> bool:
    """True if a continuation chunk starts with 4 bytes equal to a timestamp or delta.

    Without repetition such a chunk cannot be told from one carrying a repeated extended
    timestamp, so exact equality is only checked for unambiguous streams.
    """
    values = {x.timestamp for x in msgs}
    values |= {(a.timestamp - b.timestamp) & 0xFFFFFFFF for a in msgs for b in msgs}
    for x in msgs:
        for i in range(128, len(x.payload), 128):
            if int.from_bytes(x.payload[i : i + 4], "big") in values:
                return True
    return False


@FAST
@given(messages, st.lists(st.integers(0, 10**6), max_size=12))
def test_chunk_without_ext_repetition_split_invariant(msgs: list[Message], cuts: list[int]) -> None:
    msgs = monotonic(msgs, 1)
    flush = encode_message(8, 1, 0, b"flush", 7)
    data = write_compressed(msgs, repeat_ext=False)
    whole = ChunkReader().receive_data(data + flush)
    assert read_pieces(split(data, cuts) + [flush]) == whole
    if not _ambiguous(msgs):
        assert whole[:-1] == msgs


@FAST
@given(messages, st.sampled_from([1, 128, 4096, 0x7FFFFFFF]), st.lists(st.integers(0, 10**6), max_size=12))
def test_encode_message_round_trip_any_split(msgs: list[Message], chunk_size: int, cuts: list[int]) -> None:
    head = encode_message(1, 0, 0, struct.pack(">I", chunk_size), 2)
    data = head + b"".join(
        encode_message(x.type_id, x.stream_id, x.timestamp, x.payload, x.csid, chunk_size) for x in msgs
    )
    assert read_pieces(split(data, cuts))[1:] == msgs


@FAST
@given(st.binary(max_size=400), st.lists(st.integers(0, 1000), max_size=6))
def test_chunk_reader_garbage_raises_only_chunk_error(data: bytes, cuts: list[int]) -> None:
    reader = ChunkReader(max_message_size=4096)
    try:
        for piece in split(data, cuts):
            reader.receive_data(piece)
    except ChunkError:
        pass


@FAST
@given(messages, st.binary(min_size=1, max_size=16), st.integers(0, 5000))
def test_chunk_reader_corrupted_stream_raises_only_chunk_error(msgs: list[Message], noise: bytes, at: int) -> None:
    data = bytearray(write_compressed(monotonic(msgs, 1)))
    at = at % (len(data) + 1)
    data[at : at + len(noise)] = noise
    try:
        ChunkReader(max_message_size=1 << 16).receive_data(bytes(data))
    except ChunkError:
        pass


# --------------------------------------------------------------------------- connections


def handshaken_server() -> ServerConnection:
    server = ServerConnection()
    server.receive_data(b"\x03" + bytes(HANDSHAKE_SIZE))
    server.receive_data(server.data_to_send()[1 : 1 + HANDSHAKE_SIZE])
    return server


CONNECT = encode_message(20, 0, 0, amf0.encode("connect", 1, {"app": "live"}), 3, 128)


@FAST
@given(st.binary(max_size=400), st.booleans())
def test_server_connection_garbage_raises_only_rtmp_errors(data: bytes, after_connect: bool) -> None:
    server = handshaken_server()
    if after_connect:
        server.receive_data(CONNECT)
    try:
        server.receive_data(data)
    except RtmpError:
        pass


@FAST
@given(st.binary(max_size=200))
def test_server_connection_garbage_handshake(data: bytes) -> None:
    for attempt in (b"\x03" + data, data):
        try:
            ServerConnection().receive_data(attempt)
        except RtmpError:
            pass


command_names = st.sampled_from(
    ["connect", "createStream", "publish", "play", "deleteStream", "closeStream", "FCPublish",
     "FCUnpublish", "releaseStream", "getStreamLength", "_checkbw", "pause", "whatever", "_result"]
)


@FAST
@given(
    st.lists(
        st.tuples(
            st.sampled_from([20, 17, 18, 15, 8, 9, 22, 1, 2, 3, 4, 5, 6]),
            st.sampled_from([0, 1, 2, 7]),
            command_names,
            st.lists(amf_values, max_size=4),
            st.binary(max_size=30),
        ),
        max_size=10,
    ),
    st.booleans(),
)
def test_server_connection_random_messages_raise_only_rtmp_errors(
    items: list[tuple[int, int, str, list[Any], bytes]], connect_first: bool
) -> None:
    server = handshaken_server()
    if connect_first:
        server.receive_data(CONNECT)
    for type_id, stream_id, name, args, raw in items:
        if type_id in (20, 17, 18, 15):
            body = amf0.encode(name, *args)
            payload = (b"\x00" + body) if type_id in (17, 15) else body
        else:
            payload = raw
        try:
            server.receive_data(encode_message(type_id, stream_id, 0, payload, 3, 128))
            server.data_to_send()
            for sid in (1, 2):
                server.accept_publish(sid)
                server.accept_play(sid)
        except RtmpError:
            return


@FAST
@given(st.binary(max_size=400))
def test_client_connection_garbage_raises_only_rtmp_errors(data: bytes) -> None:
    client = ClientConnection()
    server = ServerConnection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    try:
        client.receive_data(data)
    except RtmpError:
        pass

