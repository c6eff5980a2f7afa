"""RTMP connections as sans-I/O state machines, in the style of h11.

Feed received bytes to ``receive_data`` and act on the returned events; write whatever
``data_to_send`` returns. The connection answers the protocol chatter (handshake, control
messages, ``connect``/``createStream``/FMLE extras, pings, acknowledgements) by itself and
leaves only decisions (accept or reject publish/play) and media to the application.

Anything malformed that a peer sends raises an :class:`~.messages.RtmpError` subclass; the
connection is unusable afterwards and the session should log the reason and close.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final
from urllib.parse import parse_qsl

from . import amf0
from .chunk import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    ChunkReader,
    Message,
    encode_message,
)
from .handshake import ClientHandshake, ServerHandshake
from .messages import (
    ACK,
    AGGREGATE,
    AUDIO,
    COMMAND_AMF0,
    COMMAND_AMF3,
    CSID_AUDIO,
    CSID_COMMAND,
    CSID_DATA,
    CSID_PROTOCOL,
    CSID_STREAM,
    CSID_VIDEO,
    DATA_AMF0,
    DATA_AMF3,
    LIMIT_DYNAMIC,
    PING_REQUEST,
    PING_RESPONSE,
    SET_BUFFER_LENGTH,
    SET_CHUNK_SIZE,
    SET_PEER_BANDWIDTH,
    STREAM_BEGIN,
    STREAM_EOF,
    USER_CONTROL,
    VIDEO,
    WINDOW_ACK_SIZE,
    Command,
    MessageError,
    RtmpError,
    UserControl,
    pack_acknowledgement,
    pack_command,
    pack_set_chunk_size,
    pack_set_peer_bandwidth,
    pack_status,
    pack_user_control,
    pack_window_ack_size,
    split_aggregate,
    unpack_command,
    unpack_data,
    unpack_u32,
    unpack_user_control,
)

__all__ = [
    "ClientConnection",
    "CommandReceived",
    "CommandResult",
    "ConnectResult",
    "Connected",
    "DataReceived",
    "Event",
    "LocalProtocolError",
    "MediaReceived",
    "PlayRequested",
    "PlayStopped",
    "PublishRequested",
    "PublishStopped",
    "RtmpProtocolError",
    "ServerConnection",
    "Status",
    "StreamCreated",
    "UserControlReceived",
]

FMS_VERSION: Final = "FMS/3,5,7,7009"
FLASH_VERSION: Final = "FMLE/3.0 (compatible; mediagateway)"


class RtmpProtocolError(RtmpError):
    """The peer broke the command-level protocol (e.g. publish on a stream it never created)."""


class LocalProtocolError(RtmpError):
    """The application used the connection in a way the protocol state does not allow."""


# --------------------------------------------------------------------------- events


@dataclass(slots=True)
class Connected:
    """A client connected; the connection already answered NetConnection.Connect.Success."""

    app: str
    tc_url: str
    query: dict[str, str]
    command_object: dict[str, Any]


@dataclass(slots=True)
class PublishRequested:
    """Answer with ``accept_publish`` or ``reject_publish``."""

    stream_id: int
    name: str
    query: dict[str, str]
    publish_type: str


@dataclass(slots=True)
class PlayRequested:
    """Answer with ``accept_play`` or ``reject_play``."""

    stream_id: int
    name: str
    query: dict[str, str]


@dataclass(slots=True)
class MediaReceived:
    """An audio (8) or video (9) message; ``payload`` is the FLV tag body.

    ``size`` is the announced length, which exceeds ``len(payload)`` only in the client's
    ``media_prefix`` mode.
    """

    stream_id: int
    type_id: int
    timestamp: int
    payload: bytes = field(repr=False)
    size: int = field(default=0, compare=False)


@dataclass(slots=True)
class DataReceived:
    """An AMF data message, ``@setDataFrame`` unwrapped (``values[0] == 'onMetaData'``)."""

    stream_id: int
    timestamp: int
    values: list[Any]


@dataclass(slots=True)
class PublishStopped:
    stream_id: int


@dataclass(slots=True)
class PlayStopped:
    stream_id: int


@dataclass(slots=True)
class ConnectResult:
    success: bool
    code: str
    description: str
    info: dict[str, Any]
    properties: dict[str, Any]


@dataclass(slots=True)
class StreamCreated:
    stream_id: int
    transaction_id: int


@dataclass(slots=True)
class Status:
    stream_id: int
    level: str
    code: str
    description: str
    info: dict[str, Any]


@dataclass(slots=True)
class CommandResult:
    """``_result``/``_error`` for a call other than connect/createStream."""

    transaction_id: int
    method: str
    success: bool
    values: list[Any]


@dataclass(slots=True)
class CommandReceived:
    """A command the client does not interpret itself (``onBWDone``, ``onFCPublish``...)."""

    stream_id: int
    name: str
    transaction_id: float
    command_object: Any
    args: list[Any]


@dataclass(slots=True)
class UserControlReceived:
    event: int
    value: int


Event = (
    Connected
    | PublishRequested
    | PlayRequested
    | MediaReceived
    | DataReceived
    | PublishStopped
    | PlayStopped
    | ConnectResult
    | StreamCreated
    | Status
    | CommandResult
    | CommandReceived
    | UserControlReceived
)


# --------------------------------------------------------------------------- helpers


def split_query(text: str) -> tuple[str, dict[str, str]]:
    """``"name?k=v&x=y"`` -> ``("name", {"k": "v", "x": "y"})``; the last duplicate wins."""
    base, sep, qs = text.partition("?")
    if not sep:
        return text, {}
    return base, dict(parse_qsl(qs, keep_blank_values=True))


def _stream_id_arg(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or not 0 <= value <= 0xFFFFFFFF:
        return None
    return int(value)


def _data_values(msg: Message) -> list[Any] | None:
    # Broken metadata must not end a publish: an undecodable data message is dropped.
    try:
        values = unpack_data(msg.payload, msg.type_id == DATA_AMF3)
    except MessageError:
        return None
    if values and values[0] == "@setDataFrame":
        values = values[1:]
    return values or None


def _info(args: list[Any]) -> dict[str, Any]:
    return args[0] if args and isinstance(args[0], dict) else {}


def _text(info: dict[str, Any], key: str) -> str:
    value = info.get(key, "")
    return value if isinstance(value, str) else ""


class _Connection:
    """Output buffering, acknowledgements and protocol control shared by both roles."""

    def __init__(
        self,
        chunk_size_out: int,
        window_ack_size: int,
        max_message_size: int,
        media_prefix: int | None,
    ) -> None:
        if not 1 <= chunk_size_out <= 0x7FFFFFFF:
            raise ValueError(f"chunk_size_out {chunk_size_out} out of range")
        self.chunk_size_out = chunk_size_out
        self.window_ack_size = window_ack_size
        self.bytes_received = 0
        self.peer_acknowledged = 0
        self._reader = ChunkReader(max_message_size=max_message_size, media_prefix=media_prefix)
        self._out: list[bytes] = []
        self._sink = self._out
        self._cs_now = DEFAULT_CHUNK_SIZE  # until our Set Chunk Size is out
        self._peer_window = 0
        self._acked_at = 0
        self._failure: str | None = None

    @property
    def peer_window_ack_size(self) -> int:
        """The peer's Window Acknowledgement Size (0 until announced): we ack every N bytes."""
        return self._peer_window

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer now (empty when there is nothing)."""
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out.clear()
        return out

    # writing -----------------------------------------------------------------

    def _write(self, type_id: int, stream_id: int, payload: bytes, csid: int, timestamp: int = 0) -> None:
        self._sink.append(encode_message(type_id, stream_id, timestamp, payload, csid, self._cs_now))

    def _control(self, type_id: int, payload: bytes) -> None:
        self._write(type_id, 0, payload, CSID_PROTOCOL)

    def _user_control(self, event: int, value: int, extra: int | None = None) -> None:
        self._control(USER_CONTROL, pack_user_control(event, value, extra))

    def _announce_chunk_size(self) -> None:
        self._control(SET_CHUNK_SIZE, pack_set_chunk_size(self.chunk_size_out))
        self._cs_now = self.chunk_size_out

    def _command(self, stream_id: int, csid: int, name: str, tid: float, obj: Any, *args: Any) -> None:
        self._write(COMMAND_AMF0, stream_id, pack_command(name, tid, obj, *args), csid)

    # reading -----------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._failure is not None:
            raise RtmpProtocolError(f"connection already failed: {self._failure}")

    def _fail(self, exc: RtmpError) -> None:
        self._failure = str(exc) or type(exc).__name__

    def _on_protocol(self, msg: Message) -> UserControl | None:
        """Handle a protocol control message; return user control events for the caller."""
        t = msg.type_id
        if t == USER_CONTROL:
            uc = unpack_user_control(msg.payload)
            if uc.event == PING_REQUEST:
                self._user_control(PING_RESPONSE, uc.value)
            return uc
        if t == WINDOW_ACK_SIZE:
            self._peer_window = unpack_u32(msg.payload, "Window Acknowledgement Size")
        elif t == ACK:
            self.peer_acknowledged = unpack_u32(msg.payload, "Acknowledgement")
        elif t == SET_PEER_BANDWIDTH:
            if len(msg.payload) < 5:
                raise MessageError("Set Peer Bandwidth payload too short")
            self._on_peer_bandwidth(unpack_u32(msg.payload))
        # Set Chunk Size and Abort were applied by the chunk reader; others are ignored.
        return None

    def _on_peer_bandwidth(self, size: int) -> None:
        pass

    def _maybe_ack(self) -> None:
        window = self._peer_window
        if window and self.bytes_received - self._acked_at >= window:
            self._acked_at = self.bytes_received
            self._control(ACK, pack_acknowledgement(self.bytes_received))


# --------------------------------------------------------------------------- server

_PUBLISH: Final = "publish"
_PLAY: Final = "play"


class _Stream:
    __slots__ = ("accepted", "mode", "name")

    def __init__(self) -> None:
        self.mode: str | None = None  # _PUBLISH, _PLAY or None
        self.accepted = False
        self.name = ""


_Handler = Callable[["ServerConnection", int, Command, list[Event]], None]

# Commands FFmpeg/OBS/Flash send that need no reply (replying _error would make FFmpeg fail).
_SILENT: Final = frozenset(
    {"pause", "pauseRaw", "seek", "receiveAudio", "receiveVideo", "_result", "_error",
     "onStatus", "onBWDone", "setBufferLength"}
)


class ServerConnection(_Connection):
    """Server side of one RTMP connection (publisher or player)."""

    def __init__(
        self,
        chunk_size_out: int = 4096,
        window_ack_size: int = 2_500_000,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_streams: int = 16,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        super().__init__(chunk_size_out, window_ack_size, max_message_size, None)
        self.max_streams = max_streams
        self.connected = False
        self.app = ""
        self.tc_url = ""
        self._handshake = ServerHandshake(random)
        self._streams: dict[int, _Stream] = {}
        self._publishing: set[int] = set()  # streams whose media/data is delivered
        self._next_stream_id = 1

    @property
    def handshake_digest(self) -> bool:
        """Whether the client used (and got) the Flash digest handshake."""
        return self._handshake.digest

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        self._check_alive()
        self.bytes_received += len(data)
        events: list[Event] = []
        try:
            if not self._handshake.complete:
                self._handshake.receive_data(data)
                answer = self._handshake.data_to_send()
                if answer:
                    self._out.append(answer)
                if not self._handshake.complete:
                    return events
                data = self._handshake.leftover
            for msg in self._reader.receive_data(data):
                self._on_message(msg, events)
            self._maybe_ack()
        except RtmpError as exc:
            self._fail(exc)
            raise
        return events

    def _on_message(self, msg: Message, events: list[Event]) -> None:
        t = msg.type_id
        if t == AUDIO or t == VIDEO:
            if msg.stream_id in self._publishing:
                events.append(MediaReceived(msg.stream_id, t, msg.timestamp, msg.payload, msg.size))
        elif t == COMMAND_AMF0 or t == COMMAND_AMF3:
            self._on_command(msg.stream_id, unpack_command(msg.payload, t == COMMAND_AMF3), events)
        elif t == DATA_AMF0 or t == DATA_AMF3:
            if msg.stream_id in self._publishing:
                values = _data_values(msg)
                if values is not None:
                    events.append(DataReceived(msg.stream_id, msg.timestamp, values))
        elif t == AGGREGATE:
            if msg.stream_id in self._publishing:
                for sub_type, ts, payload in split_aggregate(msg.payload, msg.timestamp):
                    sub = Message(sub_type, msg.stream_id, ts, payload, msg.csid, len(payload))
                    if sub_type != AGGREGATE:
                        self._on_message(sub, events)
        else:
            self._on_protocol(msg)

    def _on_command(self, stream_id: int, cmd: Command, events: list[Event]) -> None:
        name = cmd.name
        if not self.connected and name != "connect":
            raise RtmpProtocolError(f"command {name!r} before connect")
        handler = self._HANDLERS.get(name)
        if handler is not None:
            handler(self, stream_id, cmd, events)
        elif cmd.transaction_id > 0 and name not in _SILENT:
            self._command(0, CSID_COMMAND, "_error", cmd.transaction_id, None, {
                "level": "error",
                "code": "NetConnection.Call.Failed",
                "description": f"Method not found ({name}).",
            })

    # NetConnection commands ---------------------------------------------------

    def _on_connect(self, stream_id: int, cmd: Command, events: list[Event]) -> None:
        if self.connected:
            raise RtmpProtocolError("second connect on one connection")
        obj = cmd.command_object if isinstance(cmd.command_object, dict) else {}
        app, query = split_query(_text(obj, "app"))
        tc_url = _text(obj, "tcUrl")
        _, tc_query = split_query(tc_url)
        encoding = obj.get("objectEncoding", 0.0)
        if isinstance(encoding, bool) or not isinstance(encoding, (int, float)):
            encoding = 0.0
        self.connected = True
        self.app = app
        self.tc_url = tc_url
        # Set Chunk Size must precede the _result: players are written to with our chunk size.
        self._control(WINDOW_ACK_SIZE, pack_window_ack_size(self.window_ack_size))
        self._control(SET_PEER_BANDWIDTH, pack_set_peer_bandwidth(self.window_ack_size, LIMIT_DYNAMIC))
        self._announce_chunk_size()
        self._command(0, CSID_COMMAND, "_result", cmd.transaction_id,
                      {"fmsVer": FMS_VERSION, "capabilities": 31.0, "mode": 1.0},
                      {"level": "status", "code": "NetConnection.Connect.Success",
                       "description": "Connection succeeded.", "objectEncoding": encoding})
        events.append(Connected(app, tc_url, {**tc_query, **query}, obj))

    def _on_create_stream(self, stream_id: int, cmd: Command, events: list[Event]) -> None:
        if len(self._streams) >= self.max_streams:
            raise RtmpProtocolError(f"more than {self.max_streams} streams on one connection")
        sid = self._next_stream_id
        self._next_stream_id += 1
        self._streams[sid] = _Stream()
        self._command(0, CSID_COMMAND, "_result", cmd.transaction_id, None, float(sid))

    def _on_simple_result(self, stream_id: int, cmd: Command, events: list[Event]) -> None:
        # releaseStream, _checkbw: nothing to do but unblock clients waiting for an answer.
        if cmd.transaction_id > 0:
            self._command(0, CSID_COMMAND, "_result", cmd.transaction_id, None, amf0.UNDEFINED)

    def _on_fc_publish(self, stream_id: int, cmd: Command, events: list[Event]) -> None:
        name = cmd.args[0] if cmd.args and isinstance(cmd.args[0], str) else ""
        self._command(0, CSID_COMMAND, "onFCPublish", 0, None,
                      {"code": "NetStream.Publish.Start", "description": name})
        self._on_simple_result(stream_id, cmd, events)

    def _on_fc_subscribe(self, stream_id: int, cmd: Command, events: list[Event]) -> None:
        name = cmd.args[0] if cmd.args and isinstance(cmd.args[0], str) else ""
        self._command(0, CSID_COMMAND, "onFCSubscribe", 0, None,
                      {"code": "NetStream.Play.Start", "description": name})
        self._on_simple_result(stream_id, cmd, events)

    def _on_fc_unpublish(self, stream_id: int, cmd: Command, events: list[Event]) -> None:
        raw = cmd.args[0] if cmd.args and isinstance(cmd.args[0], str) else ""
        name = split_query(raw)[0]
        for sid, st in self._streams.items():
            if st.mode == _PUBLISH and st.name == name:
                self._stop(sid, events)
                break
        self._command(0, CSID_COMMAND, "onFCUnpublish", 0, None,
                      {"code": "NetStream.Unpublish.Success", "description": name})
        self._on_simple_result(stream_id, cmd, events)

    def _on_get_stream_length(self, stream_id: int, cmd: Command, events: list[Event]) -> None:
        if cmd.transaction_id > 0:
            self._command(0, CSID_COMMAND, "_result", cmd.transaction_id, None, 0.0)

    def _on_delete_stream(self, stream_id: int, cmd: Command, events: list[Event]) -> None:
        sid = _stream_id_arg(cmd.args[0]) if cmd.args else None
        if sid is not None and sid in self._streams:
            self._stop(sid, events)
            del self._streams[sid]

    def _on_close_stream(self, stream_id: int, cmd: Command, events: list[Event]) -> None:
        self._stop(stream_id, events)

    # NetStream commands -------------------------------------------------------

    def _stream_for(self, stream_id: int, cmd: Command) -> tuple[_Stream, str]:
        st = self._streams.get(stream_id)
        if st is None:
            raise RtmpProtocolError(f"{cmd.name} on stream {stream_id}, which was never created")
        if not cmd.args or not isinstance(cmd.args[0], str):
            raise RtmpProtocolError(f"{cmd.name} without a stream name")
        return st, cmd.args[0]

    def _on_publish(self, stream_id: int, cmd: Command, events: list[Event]) -> None:
        st, raw = self._stream_for(stream_id, cmd)
        if st.mode is not None:
            raise RtmpProtocolError(f"publish on stream {stream_id}, which is already in use")
        kind = cmd.args[1] if len(cmd.args) > 1 and isinstance(cmd.args[1], str) else "live"
        name, query = split_query(raw)
        st.mode, st.accepted, st.name = _PUBLISH, False, name
        self._publishing.add(stream_id)
        events.append(PublishRequested(stream_id, name, query, kind))

    def _on_play(self, stream_id: int, cmd: Command, events: list[Event]) -> None:
        st, raw = self._stream_for(stream_id, cmd)
        if st.mode == _PUBLISH:
            raise RtmpProtocolError(f"play on stream {stream_id}, which is publishing")
        if st.mode == _PLAY:  # Flash switches streams by playing again on the same stream
            self._stop(stream_id, events)
        name, query = split_query(raw)
        st.mode, st.accepted, st.name = _PLAY, False, name
        events.append(PlayRequested(stream_id, name, query))

    def _stop(self, stream_id: int, events: list[Event]) -> None:
        st = self._streams.get(stream_id)
        if st is None or st.mode is None:
            return
        if st.mode == _PUBLISH:
            self._publishing.discard(stream_id)
            events.append(PublishStopped(stream_id))
        else:
            events.append(PlayStopped(stream_id))
        st.mode, st.accepted = None, False

    _HANDLERS: ClassVar[dict[str, _Handler]] = {
        "connect": _on_connect,
        "createStream": _on_create_stream,
        "releaseStream": _on_simple_result,
        "_checkbw": _on_simple_result,
        "FCPublish": _on_fc_publish,
        "FCUnpublish": _on_fc_unpublish,
        "FCSubscribe": _on_fc_subscribe,
        "getStreamLength": _on_get_stream_length,
        "deleteStream": _on_delete_stream,
        "closeStream": _on_close_stream,
        "publish": _on_publish,
        "play": _on_play,
    }

    # application decisions ----------------------------------------------------

    def _pending(self, stream_id: int, mode: str) -> _Stream | None:
        st = self._streams.get(stream_id)
        if st is None or st.mode != mode or st.accepted:
            return None
        return st

    def accept_publish(self, stream_id: int) -> bool:
        """Start the publish; False if the request is gone (peer stopped it meanwhile)."""
        st = self._pending(stream_id, _PUBLISH)
        if st is None:
            return False
        st.accepted = True
        self.send_status(stream_id, "status", "NetStream.Publish.Start",
                         f"{st.name} is now published.", details=st.name)
        return True

    def reject_publish(
        self, stream_id: int, code: str = "NetStream.Publish.BadName", description: str = "Publish rejected."
    ) -> bool:
        st = self._pending(stream_id, _PUBLISH)
        if st is None:
            return False
        st.mode = None
        self._publishing.discard(stream_id)
        self.send_status(stream_id, "error", code, description)
        return True

    def accept_play(self, stream_id: int) -> bool:
        """Stream Begin, Play.Reset, Play.Start, ``|RtmpSampleAccess``; media may follow."""
        st = self._pending(stream_id, _PLAY)
        if st is None:
            return False
        st.accepted = True
        name = st.name
        self._user_control(STREAM_BEGIN, stream_id)
        self.send_status(stream_id, "status", "NetStream.Play.Reset",
                         f"Playing and resetting {name}.", details=name)
        self.send_status(stream_id, "status", "NetStream.Play.Start",
                         f"Started playing {name}.", details=name)
        self._write(DATA_AMF0, stream_id, amf0.encode("|RtmpSampleAccess", True, True), CSID_DATA)
        return True

    def reject_play(
        self, stream_id: int, code: str = "NetStream.Play.StreamNotFound", description: str = "Stream not found."
    ) -> bool:
        st = self._pending(stream_id, _PLAY)
        if st is None:
            return False
        st.mode = None
        self.send_status(stream_id, "error", code, description)
        return True

    def send_status(self, stream_id: int, level: str, code: str, description: str, **info: Any) -> None:
        """An ``onStatus`` on a stream, e.g. NetStream.Play.UnpublishNotify."""
        self._write(COMMAND_AMF0, stream_id, pack_status(level, code, description, **info), CSID_DATA)

    def send_stream_eof(self, stream_id: int) -> None:
        self._user_control(STREAM_EOF, stream_id)

    def send_media(self, stream_id: int, type_id: int, timestamp: int, payload: bytes) -> None:
        """Convenience for tests; the gateway writes shared ``encode_message`` bytes itself."""
        self._write(type_id, stream_id, payload, CSID_AUDIO if type_id == AUDIO else CSID_VIDEO, timestamp)

    def send_data(self, stream_id: int, values: list[Any], timestamp: int = 0) -> None:
        self._write(DATA_AMF0, stream_id, amf0.encode(*values), CSID_DATA, timestamp)


# --------------------------------------------------------------------------- client


class ClientConnection(_Connection):
    """Client side, for tests, the load generator and CDN push/pull.

    ``media_prefix`` keeps only that many leading bytes of received media payloads
    (``MediaReceived.size`` still tells the full size): thousands of simulated viewers then
    cost no payload copies.
    """

    def __init__(
        self,
        chunk_size_out: int = 4096,
        window_ack_size: int = 2_500_000,
        *,
        digest: bool = False,
        media_prefix: int | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        flash_ver: str = FLASH_VERSION,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        super().__init__(chunk_size_out, window_ack_size, max_message_size, media_prefix)
        self.flash_ver = flash_ver
        self.stream_id = 0  # the most recently created stream
        self._handshake = ClientHandshake(digest, random)
        self._out.append(self._handshake.data_to_send())
        self._queued: list[bytes] = []
        self._sink = self._queued  # commands wait for the handshake to finish
        self._tid = 0
        self._calls: dict[int, str] = {}
        self._sent_window = 0

    @property
    def handshake_complete(self) -> bool:
        return self._handshake.complete

    # commands ----------------------------------------------------------------

    def call(self, name: str, command_object: Any = None, *args: Any, stream_id: int = 0) -> int:
        """Send a command expecting a reply; returns its transaction id."""
        self._tid += 1
        tid = self._tid
        self._calls[tid] = name
        csid = CSID_STREAM if stream_id else CSID_COMMAND
        self._command(stream_id, csid, name, float(tid), command_object, *args)
        return tid

    def connect(self, app: str, tc_url: str, **properties: Any) -> int:
        self._announce_chunk_size()
        obj: dict[str, Any] = {
            "app": app,
            "type": "nonprivate",
            "flashVer": self.flash_ver,
            "tcUrl": tc_url,
            "fpad": False,
            "capabilities": 15.0,
            "audioCodecs": 3191.0,
            "videoCodecs": 252.0,
            "videoFunction": 1.0,
            "objectEncoding": 0.0,
        }
        obj.update(properties)
        return self.call("connect", obj)

    def release_stream(self, name: str) -> int:
        return self.call("releaseStream", None, name)

    def fc_publish(self, name: str) -> int:
        return self.call("FCPublish", None, name)

    def fc_unpublish(self, name: str) -> int:
        return self.call("FCUnpublish", None, name)

    def create_stream(self) -> int:
        return self.call("createStream", None)

    def _sid(self, stream_id: int | None) -> int:
        sid = self.stream_id if stream_id is None else stream_id
        if not sid:
            raise LocalProtocolError("no stream: call create_stream() and wait for StreamCreated")
        return sid

    def publish(self, name: str, publish_type: str = "live", stream_id: int | None = None) -> None:
        sid = self._sid(stream_id)
        self._command(sid, CSID_STREAM, "publish", 0.0, None, name, publish_type)

    def play(self, name: str, stream_id: int | None = None, start: float = -2.0, buffer_ms: int = 1000) -> None:
        sid = self._sid(stream_id)
        self._command(sid, CSID_STREAM, "play", 0.0, None, name, start)
        self._user_control(SET_BUFFER_LENGTH, sid, buffer_ms)

    def close_stream(self, stream_id: int | None = None) -> None:
        sid = self._sid(stream_id)
        self._command(sid, CSID_STREAM, "closeStream", 0.0, None)

    def delete_stream(self, stream_id: int | None = None) -> None:
        sid = self._sid(stream_id)
        self._command(0, CSID_COMMAND, "deleteStream", 0.0, None, float(sid))

    def send_media(self, type_id: int, timestamp: int, payload: bytes, stream_id: int | None = None) -> None:
        sid = self._sid(stream_id)
        self._write(type_id, sid, payload, CSID_AUDIO if type_id == AUDIO else CSID_VIDEO, timestamp)

    def send_data(self, *values: Any, timestamp: int = 0, stream_id: int | None = None) -> None:
        """E.g. ``send_data("@setDataFrame", "onMetaData", ECMAArray(...))``."""
        self._write(DATA_AMF0, self._sid(stream_id), amf0.encode(*values), CSID_DATA, timestamp)

    # receiving -----------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        self._check_alive()
        self.bytes_received += len(data)
        events: list[Event] = []
        try:
            if not self._handshake.complete:
                self._handshake.receive_data(data)
                reply = self._handshake.data_to_send()
                if reply:
                    self._out.append(reply)
                if not self._handshake.complete:
                    return events
                self._out.extend(self._queued)
                self._queued.clear()
                self._sink = self._out
                data = self._handshake.leftover
            for msg in self._reader.receive_data(data):
                self._on_message(msg, events)
            self._maybe_ack()
        except RtmpError as exc:
            self._fail(exc)
            raise
        return events

    def _on_message(self, msg: Message, events: list[Event]) -> None:
        t = msg.type_id
        if t == AUDIO or t == VIDEO:
            events.append(MediaReceived(msg.stream_id, t, msg.timestamp, msg.payload, msg.size))
        elif t == COMMAND_AMF0 or t == COMMAND_AMF3:
            self._on_command(msg.stream_id, unpack_command(msg.payload, t == COMMAND_AMF3), events)
        elif t == DATA_AMF0 or t == DATA_AMF3:
            values = _data_values(msg)
            if values is not None:
                events.append(DataReceived(msg.stream_id, msg.timestamp, values))
        elif t == AGGREGATE:
            for sub_type, ts, payload in split_aggregate(msg.payload, msg.timestamp):
                if sub_type != AGGREGATE:
                    sub = Message(sub_type, msg.stream_id, ts, payload, msg.csid, len(payload))
                    self._on_message(sub, events)
        else:
            uc = self._on_protocol(msg)
            if uc is not None and uc.event != PING_REQUEST:
                events.append(UserControlReceived(uc.event, uc.value))

    def _on_peer_bandwidth(self, size: int) -> None:
        if size != self._sent_window:
            self._sent_window = size
            self._control(WINDOW_ACK_SIZE, pack_window_ack_size(size))

    def _on_command(self, stream_id: int, cmd: Command, events: list[Event]) -> None:
        name = cmd.name
        if name in ("_result", "_error"):
            tid = int(cmd.transaction_id)
            method = self._calls.pop(tid, "")
            ok = name == "_result"
            if method == "connect":
                info = _info(cmd.args)
                props = cmd.command_object if isinstance(cmd.command_object, dict) else {}
                code = _text(info, "code")
                events.append(ConnectResult(ok and code == "NetConnection.Connect.Success",
                                            code, _text(info, "description"), info, props))
                return
            if method == "createStream" and ok:
                sid = _stream_id_arg(cmd.args[0]) if cmd.args else None
                if sid:
                    self.stream_id = sid
                    events.append(StreamCreated(sid, tid))
                    return
            events.append(CommandResult(tid, method, ok, [cmd.command_object, *cmd.args]))
        elif name == "onStatus":
            info = _info(cmd.args)
            events.append(Status(stream_id, _text(info, "level"), _text(info, "code"),
                                 _text(info, "description"), info))
        else:
            events.append(CommandReceived(stream_id, name, cmd.transaction_id, cmd.command_object, cmd.args))
