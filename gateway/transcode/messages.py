"""The framing between the gateway and its codec processes (``pool.py`` and ``child.py``).

Every message: u32 length of what follows, u8 type, u32 step id, payload. Headers are
``struct``-packed and payloads are the frames' own bytes; only ``Track``/``Transcode``
descriptions are pickled, and only when they change (see ``pool.py`` for the messages).
Both sides import this module, so that they cannot disagree on a layout.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Final

HEADER: Final = struct.Struct("<IBI")
#: track id, pts, dts, time base num/den, flags; then data
FRAME_HEAD: Final = struct.Struct("<IqqqqB")
KEY, CATCH_UP = 1, 2  # frame flags: keyframe; decode only, no result (``step.catch_up``)
#: header + ``FRAME_HEAD`` in one pack, on the parent's hot path
FRAME_MSG: Final = struct.Struct("<IBIIqqqqB")
#: ``FRAME_HEAD`` plus the data length (several frames per result)
OUT_HEAD: Final = struct.Struct("<IqqqqBI")
#: frames, us waiting in the process and coding, codec errors
RESULT_HEAD: Final = struct.Struct("<HIII")
TRACK_ID: Final = struct.Struct("<I")
COUNTS: Final = struct.Struct("<qqqq")
COUNTER_NAMES: Final = ("decoders_opened", "encoders_opened", "frames_decoded", "frames_encoded")
AUDIO_STEP, OTHER_STEP = b"a"[0], b"-"[0]  # first byte of an open message: the step's kind

OPEN, TRACK, FRAME, CLOSE = b"o"[0], b"t"[0], b"f"[0], b"c"[0]  # parent -> child
RESULT, COUNTERS_MSG, ERROR, CLOSED, LOG, READY = (b"r"[0], b"n"[0], b"e"[0], b"x"[0],
                                                   b"l"[0], b"y"[0])  # child -> parent (+TRACK)

READ_SIZE = 1 << 20
MAX_TRACKS = 8  # Track ids remembered per step and direction; tracks change rarely


class Reader:
    """Receives into one reused buffer: a fresh 1 MiB ``recv`` per message costs an mmap."""

    __slots__ = ("_buf", "_view")

    def __init__(self) -> None:
        self._buf = bytearray(READ_SIZE)
        self._view = memoryview(self._buf)

    def recv(self, sock: socket.socket, flags: int = 0) -> bytes:
        n = sock.recv_into(self._buf, 0, flags)
        return self._view[:n].tobytes()


def header(kind: int, step_id: int, payload_len: int) -> bytes:
    """A message's header; its payload follows."""
    return HEADER.pack(payload_len + 5, kind, step_id)


def messages(data: bytes) -> tuple[list[tuple[int, int, int, int]], int]:
    """Complete messages in ``data`` as (type, step, payload start, end), and bytes consumed."""
    out: list[tuple[int, int, int, int]] = []
    o, n = 0, len(data)
    unpack = HEADER.unpack_from
    while n - o >= 9:
        length, kind, sid = unpack(data, o)
        end = o + 4 + length
        if end > n:
            break
        out.append((kind, sid, o + 9, end))
        o = end
    return out, o


def remember(table: dict[int, Any], key: int, value: Any) -> None:
    """Bounded id table: old tracks are never referenced again once a newer one was sent."""
    if len(table) >= MAX_TRACKS:
        del table[next(iter(table))]
    table[key] = value
