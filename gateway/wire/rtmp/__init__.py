"""Sans-I/O RTMP: AMF0, handshake, chunk stream and connection state machines.

Nothing here touches sockets or asyncio; sessions feed bytes in and write bytes out.
"""

from .amf0 import UNDEFINED, AMF0Error, ECMAArray
from .chunk import ChunkError, ChunkReader, Message, encode_message
from .connection import (
    ClientConnection,
    CommandReceived,
    CommandResult,
    Connected,
    ConnectResult,
    DataReceived,
    Event,
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
from .handshake import ClientHandshake, HandshakeError, ServerHandshake
from .messages import MessageError, RtmpError

__all__ = [
    "UNDEFINED",
    "AMF0Error",
    "ChunkError",
    "ChunkReader",
    "ClientConnection",
    "ClientHandshake",
    "CommandReceived",
    "CommandResult",
    "ConnectResult",
    "Connected",
    "DataReceived",
    "ECMAArray",
    "Event",
    "HandshakeError",
    "LocalProtocolError",
    "MediaReceived",
    "Message",
    "MessageError",
    "PlayRequested",
    "PlayStopped",
    "PublishRequested",
    "PublishStopped",
    "RtmpError",
    "RtmpProtocolError",
    "ServerConnection",
    "ServerHandshake",
    "Status",
    "StreamCreated",
    "UserControlReceived",
    "encode_message",
]
