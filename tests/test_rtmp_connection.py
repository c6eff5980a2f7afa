"""Server and client connection state machines, driven against each other in memory."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from gateway.wire.rtmp import amf0
from gateway.wire.rtmp import messages as m
from gateway.wire.rtmp.chunk import ChunkReader, Message, encode_message
from gateway.wire.rtmp.connection import (
    ClientConnection,
    CommandReceived,
    CommandResult,
    Connected,
    ConnectResult,
    DataReceived,
    LocalProtocolError,
    MediaReceived,
    PlayRequested,
    PlayStopped,
    PublishRequested,
    PublishStopped,
    RtmpProtocolError,
    ServerConnection,
    Status,
    StreamCreated,
    UserControlReceived,
)
from gateway.wire.rtmp.handshake import HANDSHAKE_SIZE


class Pair:
    """A client and a server wired together in memory."""

    def __init__(self, server: ServerConnection | None = None, client: ClientConnection | None = None) -> None:
        self.server = server or ServerConnection()
        self.client = client or ClientConnection()
        self.server_events: list[Any] = []
        self.client_events: list[Any] = []

    def pump(self, step: int | None = None) -> None:
        for _ in range(50):
            a = self.client.data_to_send()
            if a:
                self.server_events += feed(self.server, a, step)
            b = self.server.data_to_send()
            if b:
                self.client_events += feed(self.client, b, step)
            if not a and not b:
                return
        raise AssertionError("no quiescence")

    def take(self) -> tuple[list[Any], list[Any]]:
        s, c = self.server_events, self.client_events
        self.server_events, self.client_events = [], []
        return s, c


def feed(conn: ServerConnection | ClientConnection, data: bytes, step: int | None) -> list[Any]:
    if step is None:
        return conn.receive_data(data)
    out: list[Any] = []
    for i in range(0, len(data), step):
        out += conn.receive_data(data[i : i + step])
    return out


def connected_pair(**kw: Any) -> Pair:
    pair = Pair(**kw)
    pair.client.connect("live", "rtmp://127.0.0.1/live")
    pair.pump()
    pair.take()
    return pair


def server_after_handshake() -> tuple[ServerConnection, ChunkReader]:
    server = ServerConnection()
    server.receive_data(b"\x03" + bytes(HANDSHAKE_SIZE))
    answer = server.data_to_send()
    server.receive_data(answer[1 : 1 + HANDSHAKE_SIZE])
    return server, ChunkReader()


def command(name: str, tid: float, obj: Any = None, *args: Any, stream_id: int = 0, csid: int = 3) -> bytes:
    return encode_message(20, stream_id, 0, amf0.encode(name, tid, obj, *args), csid, 128)


def decode_out(reader: ChunkReader, data: bytes) -> list[tuple[int, int, Any]]:
    """Server output as (type_id, stream_id, decoded payload) for assertions."""
    out: list[tuple[int, int, Any]] = []
    for msg in reader.receive_data(data):
        if msg.type_id in (18, 20):
            out.append((msg.type_id, msg.stream_id, amf0.decode_all(msg.payload)))
        elif msg.type_id == m.USER_CONTROL:
            uc = m.unpack_user_control(msg.payload)
            out.append((msg.type_id, msg.stream_id, (uc.event, uc.value)))
        elif msg.type_id in (1, 3, 5, 6):
            out.append((msg.type_id, msg.stream_id, m.unpack_u32(msg.payload)))
        else:
            out.append((msg.type_id, msg.stream_id, msg.payload))
    return out


# --------------------------------------------------------------------------- connect


def test_connect_answers_and_announces_chunk_size_before_result() -> None:
    server, reader = server_after_handshake()
    tc_url = "rtmp://h:1935/live?role=miniprogram&x=1"
    obj: dict[str, Any] = {"app": "live?role=miniprogram", "tcUrl": tc_url, "objectEncoding": 3.0}
    events = server.receive_data(command("connect", 1, obj))
    assert events == [Connected("live", tc_url, {"role": "miniprogram", "x": "1"}, obj)]
    out = decode_out(reader, server.data_to_send())
    assert [(t, v) for t, _, v in out[:3]] == [
        (m.WINDOW_ACK_SIZE, 2_500_000),
        (m.SET_PEER_BANDWIDTH, 2_500_000),
        (m.SET_CHUNK_SIZE, 4096),
    ]
    kind, sid, result = out[3]
    assert (kind, sid) == (20, 0)
    assert result[0] == "_result" and result[1] == 1.0
    assert result[2]["fmsVer"].startswith("FMS/") and result[2]["capabilities"] == 31.0
    assert result[3]["code"] == "NetConnection.Connect.Success"
    assert result[3]["objectEncoding"] == 3.0
    assert server.connected and server.app == "live"
    assert reader.chunk_size == 4096  # the reader applied the announced size


def test_client_connect_result() -> None:
    pair = Pair(server=ServerConnection(chunk_size_out=60000))
    tid = pair.client.connect("live", "rtmp://127.0.0.1/live")
    pair.pump(step=100)
    s, c = pair.take()
    assert isinstance(s[0], Connected) and s[0].app == "live"
    assert len(c) == 1 and isinstance(c[0], ConnectResult)
    assert c[0].success and c[0].code == "NetConnection.Connect.Success" and tid == 1
    assert c[0].properties["fmsVer"].startswith("FMS/")


def test_digest_handshake_through_connections() -> None:
    pair = Pair(client=ClientConnection(digest=True))
    pair.client.connect("app", "rtmp://h/app")
    pair.pump(step=333)
    assert pair.server.handshake_digest
    assert isinstance(pair.client_events[0], ConnectResult)


def test_command_before_connect_is_a_protocol_error() -> None:
    server, _ = server_after_handshake()
    with pytest.raises(RtmpProtocolError, match="before connect"):
        server.receive_data(command("createStream", 2))
    with pytest.raises(RtmpProtocolError, match="already failed"):
        server.receive_data(b"")


def test_second_connect_is_a_protocol_error() -> None:
    server, _ = server_after_handshake()
    server.receive_data(command("connect", 1, {"app": "a"}))
    with pytest.raises(RtmpProtocolError, match="second connect"):
        server.receive_data(command("connect", 2, {"app": "a"}))


# --------------------------------------------------------------------------- publish


def test_fmle_publish_sequence() -> None:
    pair = Pair()
    cl = pair.client
    cl.connect("live", "rtmp://127.0.0.1:1935/live")
    cl.release_stream("cam?key=secret")
    cl.fc_publish("cam?key=secret")
    cl.create_stream()
    pair.pump()
    s, c = pair.take()
    assert [type(e) for e in s] == [Connected]
    assert [type(e) for e in c] == [ConnectResult, CommandResult, CommandReceived, CommandResult, StreamCreated]
    assert c[1].method == "releaseStream" and c[1].success
    assert c[2].name == "onFCPublish"
    assert c[4] == StreamCreated(1, 4)

    cl.publish("cam?key=secret&x=1")
    pair.pump()
    s, c = pair.take()
    assert s == [PublishRequested(1, "cam", {"key": "secret", "x": "1"}, "live")]
    assert c == []
    assert pair.server.accept_publish(1)
    assert not pair.server.accept_publish(1)  # already accepted
    pair.pump()
    s, c = pair.take()
    assert len(c) == 1 and isinstance(c[0], Status)
    assert (c[0].stream_id, c[0].level, c[0].code) == (1, "status", "NetStream.Publish.Start")

    meta = amf0.ECMAArray(width=320.0, height=240.0, videocodecid=7.0)
    cl.send_data("@setDataFrame", "onMetaData", meta)
    cl.send_media(9, 0, b"\x17\x00\x00\x00\x00" + b"avcC" * 10)
    cl.send_media(8, 0, b"\xaf\x00\x12\x10")
    frames = [(9 if i % 2 else 8, 23 * i, bytes([i]) * (100 + i * 997)) for i in range(1, 20)]
    for t, ts, payload in frames:
        cl.send_media(t, ts, payload)
    pair.pump(step=1000)
    s, c = pair.take()
    assert s[0] == DataReceived(1, 0, ["onMetaData", meta])
    assert isinstance(s[0].values[1], amf0.ECMAArray)
    media = [(e.type_id, e.timestamp, e.payload) for e in s[1:]]
    assert media[:2] == [(9, 0, b"\x17\x00\x00\x00\x00" + b"avcC" * 10), (8, 0, b"\xaf\x00\x12\x10")]
    assert media[2:] == frames
    assert all(isinstance(e, MediaReceived) and e.stream_id == 1 for e in s[1:])

    cl.fc_unpublish("cam?key=secret")
    cl.delete_stream()
    pair.pump()
    s, c = pair.take()
    assert s == [PublishStopped(1)]  # deleteStream after FCUnpublish adds nothing


def test_delete_stream_stops_publish_without_fcunpublish() -> None:
    pair = connected_pair()
    pair.client.create_stream()
    pair.pump()
    pair.client.publish("a")
    pair.pump()
    pair.server.accept_publish(1)
    pair.client.delete_stream()
    pair.pump()
    s, _ = pair.take()
    assert s == [PublishRequested(1, "a", {}, "live"), PublishStopped(1)]
    # Gone from the server: accepting now is a no-op.
    assert not pair.server.accept_publish(1)


def test_reject_publish() -> None:
    pair = connected_pair()
    pair.client.create_stream()
    pair.pump()
    pair.client.publish("taken", "record")
    pair.pump()
    s, _ = pair.take()
    assert s == [PublishRequested(1, "taken", {}, "record")]
    assert pair.server.reject_publish(1, description="name in use")
    pair.pump()
    _, c = pair.take()
    assert c == [Status(1, "error", "NetStream.Publish.BadName", "name in use", c[0].info)]
    # Media after rejection is dropped; deleteStream produces no PublishStopped.
    pair.client.send_media(9, 0, b"x")
    pair.client.delete_stream()
    pair.pump()
    s, _ = pair.take()
    assert s == []


def test_media_before_publish_is_dropped() -> None:
    pair = connected_pair()
    pair.client.create_stream()
    pair.pump()
    pair.client.send_media(9, 0, b"early")
    pair.pump()
    assert pair.take()[0] == []


def test_publish_on_unknown_stream_is_a_protocol_error() -> None:
    pair = connected_pair()
    pair.client.publish("x", stream_id=7)
    with pytest.raises(RtmpProtocolError, match="never created"):
        pair.pump()


def test_create_stream_ids_increase_and_are_bounded() -> None:
    pair = connected_pair(server=ServerConnection(max_streams=2))
    pair.client.create_stream()
    pair.client.create_stream()
    pair.pump()
    _, c = pair.take()
    assert [e.stream_id for e in c] == [1, 2]
    pair.client.create_stream()
    with pytest.raises(RtmpProtocolError, match="streams"):
        pair.pump()


def test_aggregate_message_is_split() -> None:
    pair = connected_pair()
    pair.client.create_stream()
    pair.pump()
    pair.client.publish("agg")
    pair.pump()
    pair.take()

    def sub(t: int, ts: int, body: bytes) -> bytes:
        head = bytes([t]) + len(body).to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big")
        head += bytes([ts >> 24]) + b"\x00\x00\x00"
        return head + body + struct.pack(">I", 11 + len(body))

    payload = sub(9, 1000, b"v1") + sub(8, 1010, b"a1") + sub(9, 1040, b"v2")
    pair.client._write(m.AGGREGATE, 1, payload, 6, 5000)  # no public API for sending these
    pair.pump()
    s, _ = pair.take()
    assert [(e.type_id, e.timestamp, e.payload) for e in s] == [
        (9, 5000, b"v1"), (8, 5010, b"a1"), (9, 5040, b"v2"),
    ]


# --------------------------------------------------------------------------- play


def test_play_sequence_and_media_to_player() -> None:
    pair = connected_pair()
    pair.client.create_stream()
    pair.pump()
    pair.client.play("cam?token=t")
    pair.pump()
    s, _ = pair.take()
    assert s == [PlayRequested(1, "cam", {"token": "t"})]

    server = pair.server
    raw_reader = ChunkReader()
    raw_reader.chunk_size = server.chunk_size_out
    assert server.accept_play(1)
    out = server.data_to_send()
    decoded = decode_out(raw_reader, out)
    assert decoded[0] == (m.USER_CONTROL, 0, (m.STREAM_BEGIN, 1))
    assert decoded[1][2][0] == "onStatus" and decoded[1][2][3]["code"] == "NetStream.Play.Reset"
    assert decoded[2][2][0] == "onStatus" and decoded[2][2][3]["code"] == "NetStream.Play.Start"
    assert decoded[3] == (18, 1, ["|RtmpSampleAccess", True, True])
    assert len(decoded) == 4
    events = pair.client.receive_data(out)
    assert events[0] == UserControlReceived(m.STREAM_BEGIN, 1)
    assert [e.code for e in events[1:3] if isinstance(e, Status)] == [
        "NetStream.Play.Reset",
        "NetStream.Play.Start",
    ]
    assert events[3] == DataReceived(1, 0, ["|RtmpSampleAccess", True, True])

    # Media written the way the gateway does it: shared bytes from encode_message.
    cs = server.chunk_size_out
    video = bytes(range(256)) * 100
    shared = encode_message(9, 1, 0x1000005, video, 6, cs) + encode_message(8, 1, 7, b"\xaf\x01aa", 4, cs)
    meta = encode_message(18, 1, 0, amf0.encode("onMetaData", {"w": 1.0}), 5, cs)
    events = feed(pair.client, meta + shared, 777)
    assert events == [
        DataReceived(1, 0, ["onMetaData", {"w": 1.0}]),
        MediaReceived(1, 9, 0x1000005, video),
        MediaReceived(1, 8, 7, b"\xaf\x01aa"),
    ]

    server.send_status(1, "status", "NetStream.Play.UnpublishNotify", "gone")
    server.send_stream_eof(1)
    pair.pump()
    _, c = pair.take()
    assert c[0].code == "NetStream.Play.UnpublishNotify"
    assert c[1] == UserControlReceived(m.STREAM_EOF, 1)

    pair.client.close_stream()
    pair.pump()
    s, _ = pair.take()
    assert s == [PlayStopped(1)]


def test_reject_play() -> None:
    pair = connected_pair()
    pair.client.create_stream()
    pair.pump()
    pair.client.play("missing")
    pair.pump()
    pair.take()
    assert pair.server.reject_play(1)
    assert not pair.server.accept_play(1)
    pair.pump()
    _, c = pair.take()
    assert [(e.level, e.code) for e in c] == [("error", "NetStream.Play.StreamNotFound")]


def test_play_again_on_same_stream_switches() -> None:
    pair = connected_pair()
    pair.client.create_stream()
    pair.pump()
    pair.client.play("a")
    pair.pump()
    pair.server.accept_play(1)
    pair.client.play("b")
    pair.pump()
    s, _ = pair.take()
    assert s == [PlayRequested(1, "a", {}), PlayStopped(1), PlayRequested(1, "b", {})]


def test_client_media_prefix_mode() -> None:
    pair = connected_pair(client=ClientConnection(media_prefix=1))
    pair.client.create_stream()
    pair.pump()
    pair.client.play("x")
    pair.pump()
    pair.server.accept_play(1)
    pair.server.send_media(1, 9, 40, b"\x27" + b"z" * 9999)
    pair.pump()
    _, c = pair.take()
    media = [e for e in c if isinstance(e, MediaReceived)]
    assert media == [MediaReceived(1, 9, 40, b"\x27")]
    assert media[0].size == 10000


# --------------------------------------------------------------------------- misc commands


def test_unknown_command_with_transaction_id_gets_error() -> None:
    pair = connected_pair()
    tid = pair.client.call("frobnicate", None, 1.0)
    pair.pump()
    _, c = pair.take()
    assert len(c) == 1 and isinstance(c[0], CommandResult)
    assert c[0].transaction_id == tid and not c[0].success and c[0].method == "frobnicate"
    assert c[0].values[1]["code"] == "NetConnection.Call.Failed"


def test_unknown_command_without_transaction_id_is_ignored() -> None:
    server, _ = server_after_handshake()
    server.receive_data(command("connect", 1, {"app": "a"}))
    server.data_to_send()
    for name in ("frobnicate", "pause", "receiveVideo"):
        assert server.receive_data(command(name, 0, None, True)) == []
    assert server.receive_data(command("seek", 5, None, 0.0)) == []
    assert server.data_to_send() == b""


def test_fmle_extras_are_answered() -> None:
    pair = connected_pair()
    tids = [pair.client.call(n, None, "cam") for n in ("getStreamLength", "_checkbw", "FCSubscribe")]
    pair.pump()
    _, c = pair.take()
    results = [e for e in c if isinstance(e, CommandResult)]
    assert [(r.transaction_id, r.success) for r in results] == [(t, True) for t in tids]
    assert results[0].values == [None, 0.0]
    assert any(isinstance(e, CommandReceived) and e.name == "onFCSubscribe" for e in c)


def test_amf3_command_message_is_understood() -> None:
    server, _ = server_after_handshake()
    payload = b"\x00" + amf0.encode("connect", 1, {"app": "flash"})
    events = server.receive_data(encode_message(17, 0, 0, payload, 3, 128))
    assert isinstance(events[0], Connected) and events[0].app == "flash"


def test_malformed_command_raises_message_error() -> None:
    server, _ = server_after_handshake()
    with pytest.raises(m.MessageError):
        server.receive_data(encode_message(20, 0, 0, b"\x02\x00\x09conn", 3, 128))


def test_bad_handshake_raises_rtmp_error() -> None:
    with pytest.raises(m.RtmpError):
        ServerConnection().receive_data(b"GET / HTTP/1.1\r\n")


# --------------------------------------------------------------------------- control


def test_ping_request_is_answered() -> None:
    server, reader = server_after_handshake()
    ping = encode_message(4, 0, 0, m.pack_user_control(m.PING_REQUEST, 123456), 2, 128)
    assert server.receive_data(ping) == []
    assert decode_out(reader, server.data_to_send()) == [(4, 0, (m.PING_RESPONSE, 123456))]


def test_server_acknowledges_when_peer_window_is_reached() -> None:
    server, reader = server_after_handshake()
    server.receive_data(command("connect", 1, {"app": "a"}))
    decode_out(reader, server.data_to_send())
    server.receive_data(encode_message(5, 0, 0, struct.pack(">I", 8000), 2, 128))  # handshake bytes count too
    assert server.data_to_send() == b""
    junk = encode_message(9, 1, 0, b"x" * 3000, 6, 128)  # not publishing: dropped, but counted
    server.receive_data(junk)
    assert server.data_to_send() == b""
    server.receive_data(junk)
    acks = decode_out(reader, server.data_to_send())
    assert acks == [(3, 0, server.bytes_received)]
    assert server.bytes_received == 2 * HANDSHAKE_SIZE + 1 + len(command("connect", 1, {"app": "a"})) + 16 + 2 * len(junk)


def test_client_acknowledges_server_window() -> None:
    pair = connected_pair(server=ServerConnection(window_ack_size=3000))
    pair.client.create_stream()
    pair.pump()
    pair.client.play("x")
    pair.pump()
    pair.server.accept_play(1)
    for i in range(5):
        pair.server.send_media(1, 9, i, b"y" * 1000)
    pair.pump()
    assert pair.server.peer_acknowledged > 3000


def test_client_requires_a_stream_for_stream_commands() -> None:
    with pytest.raises(LocalProtocolError):
        ClientConnection().publish("x")


def test_client_queues_commands_until_handshake_completes() -> None:
    client = ClientConnection()
    client.connect("live", "rtmp://h/live")
    assert len(client.data_to_send()) == 1 + HANDSHAKE_SIZE  # only C0+C1 so far
    server = ServerConnection()
    server.receive_data(b"\x03" + bytes(HANDSHAKE_SIZE))
    client.receive_data(server.data_to_send())
    out = client.data_to_send()
    assert len(out) > HANDSHAKE_SIZE  # C2 then Set Chunk Size and connect
    events = server.receive_data(out)
    assert isinstance(events[0], Connected)


def test_message_dataclass_repr_hides_payload() -> None:
    assert "payload" not in repr(MediaReceived(1, 9, 0, b"x" * 100, 100))
    assert "payload" not in repr(Message(9, 1, 0, b"x"))
