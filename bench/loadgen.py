#!/usr/bin/env python3
"""Fan-out load generator: N RTMP and/or N HTTP-FLV viewers of one live stream on loopback.

Why it looks like this: thousands of 2 Mbit/s viewers are GB/s on loopback, far more than
Python can parse. So each viewer parses only the start of its byte stream (until its first
video key frame, to time the join) and then merely counts bytes (``BufferedProtocol`` into
one shared buffer, ``SO_RCVLOWAT`` so the kernel wakes us per 32 KiB, not per server
write). Lag is judged from the byte counts of every viewer against the best viewers, and
from a few fully parsed sample viewers whose media timestamps are compared to wall clock.

Prints JSON lines on stdout (``{"event": ...}``); the last one is ``"result"``. Progress
goes to stderr. Meant to be driven by ``bench/fanout.py`` but runs standalone too::

    python bench/loadgen.py --rtmp-url rtmp://127.0.0.1:1935/live/bench --rtmp 500 \
        --source-bytes-per-s 270000 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import resource
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np

try:  # uvloop is what production uses; fall back so the tool still runs without it
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]

now = time.perf_counter

SHARED_BUF = bytearray(256 * 1024)
SHARED_VIEW = memoryview(SHARED_BUF)  # every counting viewer receives into this, then drops it


def log(msg: str) -> None:
    """Progress to stderr; stdout is reserved for JSON events."""
    print(f"[loadgen {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout for the orchestrator."""
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


# =========================================================================== AMF0 (subset)


def amf0_encode(value: Any) -> bytes:
    """Encode the few AMF0 types an RTMP play client sends."""
    if value is None:
        return b"\x05"
    if isinstance(value, bool):
        return b"\x01" + (b"\x01" if value else b"\x00")
    if isinstance(value, (int, float)):
        return b"\x00" + struct.pack(">d", float(value))
    if isinstance(value, str):
        raw = value.encode()
        return b"\x02" + struct.pack(">H", len(raw)) + raw
    if isinstance(value, dict):
        out = bytearray(b"\x03")
        for k, v in value.items():
            kb = k.encode()
            out += struct.pack(">H", len(kb)) + kb + amf0_encode(v)
        return bytes(out + b"\x00\x00\x09")
    raise TypeError(f"cannot AMF0-encode {type(value).__name__}")


def amf0_decode_all(data: bytes) -> list[Any]:
    """Decode a command payload; stops quietly at anything it does not know."""
    out: list[Any] = []
    pos = 0

    def value(p: int) -> tuple[Any, int]:
        t = data[p]
        p += 1
        if t == 0x00:
            return struct.unpack_from(">d", data, p)[0], p + 8
        if t == 0x01:
            return data[p] != 0, p + 1
        if t == 0x02:
            n = struct.unpack_from(">H", data, p)[0]
            return data[p + 2 : p + 2 + n].decode(errors="replace"), p + 2 + n
        if t == 0x0C:
            n = struct.unpack_from(">I", data, p)[0]
            return data[p + 4 : p + 4 + n].decode(errors="replace"), p + 4 + n
        if t in (0x03, 0x08):
            if t == 0x08:
                p += 4
            obj: dict[str, Any] = {}
            while True:
                n = struct.unpack_from(">H", data, p)[0]
                p += 2
                if n == 0 and data[p] == 0x09:
                    return obj, p + 1
                key = data[p : p + n].decode(errors="replace")
                obj[key], p = value(p + n)
        if t == 0x0A:
            n = struct.unpack_from(">I", data, p)[0]
            p += 4
            arr = []
            for _ in range(n):
                v, p = value(p)
                arr.append(v)
            return arr, p
        if t in (0x05, 0x06):
            return None, p
        if t == 0x0B:
            return struct.unpack_from(">d", data, p)[0], p + 10
        raise ValueError(f"AMF0 type {t:#x}")

    try:
        while pos < len(data):
            v, pos = value(pos)
            out.append(v)
    except (ValueError, IndexError, struct.error):
        pass
    return out


# =========================================================================== RTMP (play side)


def rtmp_message(csid: int, type_id: int, stream_id: int, payload: bytes, chunk_size: int = 128) -> bytes:
    """Chunk one message: a type-0 header, then type-3 continuation headers."""
    out = bytearray()
    out.append(csid & 0x3F)  # csid < 64 only (we pick 2, 3, 8)
    out += (0).to_bytes(3, "big") + len(payload).to_bytes(3, "big") + bytes([type_id])
    out += stream_id.to_bytes(4, "little")
    for i in range(0, max(len(payload), 1), chunk_size):
        if i:
            out.append(0xC0 | (csid & 0x3F))
        out += payload[i : i + chunk_size]
    return bytes(out)


def rtmp_ack(sequence: int) -> bytes:
    """Acknowledgement (type 3): keeps strict servers sending and resets nginx-rtmp's ping timer."""
    return rtmp_message(2, 3, 0, (sequence & 0xFFFFFFFF).to_bytes(4, "big"))


class _ChunkStream:
    __slots__ = ("ts", "delta", "length", "type_id", "stream_id", "ext", "remaining", "payload")

    def __init__(self) -> None:
        self.ts = 0
        self.delta = 0
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.ext = False
        self.remaining = 0
        self.payload = bytearray()


class ChunkReader:
    """Incremental RTMP chunk de-multiplexer. Media payloads are cut to their first bytes.

    Why cut: the parser only has to tell a key frame from an inter frame and read the
    timestamp; copying whole video frames would waste the load generator's single core.
    """

    MEDIA_KEEP = 16

    def __init__(self) -> None:
        self.buf = bytearray()
        self.chunk_size = 128
        self.streams: dict[int, _ChunkStream] = {}

    def feed(self, data: bytes) -> list[tuple[int, int, int, bytes]]:
        """Add bytes; return complete messages as (type_id, stream_id, timestamp, payload)."""
        buf = self.buf
        buf += data
        n = len(buf)
        p = 0
        out: list[tuple[int, int, int, bytes]] = []
        while p < n:
            start = p
            b0 = buf[p]
            fmt = b0 >> 6
            csid = b0 & 0x3F
            p += 1
            if csid == 0:
                if p + 1 > n:
                    p = start
                    break
                csid = 64 + buf[p]
                p += 1
            elif csid == 1:
                if p + 2 > n:
                    p = start
                    break
                csid = 64 + buf[p] + (buf[p + 1] << 8)
                p += 2
            hlen = (11, 7, 3, 0)[fmt]
            if p + hlen > n:
                p = start
                break
            cs = self.streams.get(csid)
            if cs is None:
                cs = self.streams[csid] = _ChunkStream()
            tval = 0
            length, type_id, stream_id = cs.length, cs.type_id, cs.stream_id
            if fmt <= 2:
                tval = int.from_bytes(buf[p : p + 3], "big")
                if fmt <= 1:
                    length = int.from_bytes(buf[p + 3 : p + 6], "big")
                    type_id = buf[p + 6]
                    if fmt == 0:
                        stream_id = int.from_bytes(buf[p + 7 : p + 11], "little")
                p += hlen
                ext = tval == 0xFFFFFF
            else:
                ext = cs.ext
            if ext:
                if p + 4 > n:
                    p = start
                    break
                ext_val = int.from_bytes(buf[p : p + 4], "big")
                p += 4
                if fmt <= 2:
                    tval = ext_val
            new_message = not (fmt == 3 and cs.remaining > 0)
            remaining = length if new_message else cs.remaining
            take = min(self.chunk_size, remaining)
            if p + take > n:
                p = start
                break
            # the whole chunk is here: commit
            if new_message:
                if fmt == 0:
                    cs.ts = tval
                    cs.delta = 0
                elif fmt in (1, 2):
                    cs.delta = tval
                    cs.ts += tval
                else:
                    cs.ts += cs.delta
                if fmt <= 2:
                    cs.ext = ext
                cs.length, cs.type_id, cs.stream_id = length, type_id, stream_id
                cs.remaining = length
                cs.payload = bytearray()
            keep = self.MEDIA_KEEP if cs.type_id in (8, 9) else take
            have = len(cs.payload)
            if have < keep:
                cs.payload += buf[p : p + min(take, keep - have)]
            p += take
            cs.remaining -= take
            if cs.remaining == 0:
                payload = bytes(cs.payload)
                cs.payload = bytearray()
                if cs.type_id == 1 and len(payload) >= 4:
                    self.chunk_size = max(1, int.from_bytes(payload[:4], "big") & 0x7FFFFFFF)
                out.append((cs.type_id, cs.stream_id, cs.ts & 0xFFFFFFFF, payload))
        if p:
            del buf[:p]
        return out


# Events a play session reports, whatever RTMP client implementation sits underneath.
EV_PLAY_SENT = "play_sent"
EV_MEDIA = "media"  # (type_id, timestamp_ms, payload_head)
EV_ERROR = "error"


class PlaySession(Protocol):
    """What a viewer needs from an RTMP client: bytes out, bytes in -> play/media/error events."""

    @property
    def ack_window(self) -> int: ...

    def start(self) -> None: ...
    def feed(self, data: bytes) -> list[tuple[Any, ...]]: ...
    def outgoing(self) -> bytes: ...


class BuiltinPlaySession:
    """Minimal RTMP play client (simple handshake, connect, createStream, play).

    Independent of the gateway so that the bench can validate against nginx-rtmp before the
    gateway's own client exists, and so a bug shared by gateway client and server cannot
    hide itself.
    """

    C1 = bytes(8) + os.urandom(1528)

    def __init__(self, app: str, tc_url: str, name: str) -> None:
        self.app, self.tc_url, self.name = app, tc_url, name
        self.out = bytearray()
        self.hs = bytearray()
        self.handshaken = False
        self.reader = ChunkReader()
        self.ack_window = 2_500_000
        self.received = 0
        self.next_ack = self.ack_window
        self.stream_id: int | None = None

    def start(self) -> None:
        self.out += b"\x03" + self.C1

    def outgoing(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data

    def _command(self, csid: int, stream_id: int, *values: Any) -> None:
        self.out += rtmp_message(csid, 20, stream_id, b"".join(amf0_encode(v) for v in values))

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        events: list[tuple[Any, ...]] = []
        self.received += len(data)
        if not self.handshaken:
            self.hs += data
            if len(self.hs) < 1 + 1536 + 1536:
                return events
            s1 = bytes(self.hs[1:1537])
            data = bytes(self.hs[3073:])
            self.hs = bytearray()
            self.handshaken = True
            self.out += s1  # C2 echoes S1
            self._command(
                3, 0, "connect", 1,
                {"app": self.app, "flashVer": "LNX 9,0,124,2", "tcUrl": self.tc_url, "fpad": False,
                 "capabilities": 15, "audioCodecs": 3575, "videoCodecs": 252, "videoFunction": 1},
            )  # fmt: skip
            if not data:
                return events
        for type_id, _stream_id, ts, payload in self.reader.feed(data):
            if type_id in (8, 9):
                events.append((EV_MEDIA, type_id, ts, payload))
            elif type_id == 5 and len(payload) >= 4:
                self.ack_window = max(1, int.from_bytes(payload[:4], "big"))
                self.next_ack = self.received + self.ack_window
            elif type_id == 4 and len(payload) >= 6 and payload[1] == 6:  # PingRequest
                self.out += rtmp_message(2, 4, 0, b"\x00\x07" + payload[2:6])
            elif type_id in (20, 17):
                events.extend(self._on_command(amf0_decode_all(payload[1:] if type_id == 17 else payload)))
        if self.received >= self.next_ack:
            self.out += rtmp_ack(self.received)
            self.next_ack = self.received + self.ack_window
        return events

    def _on_command(self, args: list[Any]) -> list[tuple[Any, ...]]:
        if not args:
            return []
        name = args[0]
        txn = args[1] if len(args) > 1 else 0
        if name == "_result" and txn == 1:
            self._command(3, 0, "createStream", 2, None)
        elif name == "_result" and txn == 2:
            self.stream_id = int(args[3]) if len(args) > 3 and isinstance(args[3], float) else 1
            self._command(8, self.stream_id, "play", 0, None, self.name, -2)
            # SetBufferLength, as players do; some servers wait for it
            self.out += rtmp_message(2, 4, 0, struct.pack(">HII", 3, self.stream_id, 3000))
            return [(EV_PLAY_SENT,)]
        elif name == "_error":
            return [(EV_ERROR, f"command error: {args[3:]!r}"[:200])]
        elif name == "onStatus":
            info = args[3] if len(args) > 3 and isinstance(args[3], dict) else {}
            code = str(info.get("code", ""))
            if info.get("level") == "error" or code.endswith(("Failed", "StreamNotFound", "Rejected")):
                return [(EV_ERROR, f"status {code}")]
        return []


class GatewayPlaySession:
    """Adapter over the gateway's sans-I/O ``ClientConnection`` (handshake, acks, pings inside).

    ``media_prefix`` keeps media payload copies to a few bytes, as for the builtin client.
    """

    def __init__(self, app: str, tc_url: str, name: str) -> None:
        from gateway.wire.rtmp import connection as rc

        self.rc = rc
        self.app, self.tc_url, self.name = app, tc_url, name
        self.conn = rc.ClientConnection(media_prefix=ChunkReader.MEDIA_KEEP)

    @property
    def ack_window(self) -> int:
        # the peer's Window Acknowledgement Size, for acks once the viewer only counts bytes
        return int(getattr(self.conn, "_peer_window", 0) or 2_500_000)

    def start(self) -> None:
        self.conn.connect(self.app, self.tc_url)

    def outgoing(self) -> bytes:
        return self.conn.data_to_send()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        rc = self.rc
        events: list[tuple[Any, ...]] = []
        for ev in self.conn.receive_data(data):
            if isinstance(ev, rc.MediaReceived):
                events.append((EV_MEDIA, ev.type_id, ev.timestamp, ev.payload))
            elif isinstance(ev, rc.ConnectResult):
                if not ev.success:
                    return [(EV_ERROR, f"connect {ev.code}")]
                self.conn.create_stream()
            elif isinstance(ev, rc.StreamCreated):
                self.conn.play(self.name, ev.stream_id, buffer_ms=3000)
                events.append((EV_PLAY_SENT,))
            elif isinstance(ev, rc.Status):
                if ev.level == "error" or ev.code.endswith(("Failed", "StreamNotFound", "Rejected")):
                    return [(EV_ERROR, f"status {ev.code}")]
            elif isinstance(ev, rc.CommandResult) and not ev.success:
                return [(EV_ERROR, f"{ev.method} failed")]
        return events


# =========================================================================== FLV (HTTP) side


class FlvHead:
    """Incremental HTTP response + chunked-encoding + FLV tag reader, skipping tag bodies."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.in_body = False
        self.chunked = False
        self.status = 0
        self.chunk_left = 0  # bytes left in the current HTTP chunk
        self.chunk_line = bytearray()
        self.chunk_state = 0  # 0 size line, 1 data, 2 CRLF after data
        self.flv = bytearray()
        self.flv_header_done = False
        self.skip = 0  # tag bytes still to drop

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """Return FLV tags seen as (tag_type, timestamp_ms, first bytes of body); raise on HTTP error."""
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    raise ValueError("HTTP header too long")
                return []
            header = bytes(self.head[:end]).decode("latin-1")
            data = bytes(self.head[end + 4 :])
            self.head = bytearray()
            self.in_body = True
            first, *lines = header.split("\r\n")
            parts = first.split()
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            if self.status != 200:
                raise ValueError(f"HTTP {first!r}")
            for line in lines:
                k, _, v = line.partition(":")
                if k.strip().lower() == "transfer-encoding" and "chunked" in v.lower():
                    self.chunked = True
        if self.chunked:
            data = self._dechunk(data)
        return self._tags(data)

    def _dechunk(self, data: bytes) -> bytes:
        out = bytearray()
        p, n = 0, len(data)
        while p < n:
            if self.chunk_state == 0:
                e = data.find(b"\n", p)
                if e < 0:
                    self.chunk_line += data[p:]
                    break
                self.chunk_line += data[p:e]
                p = e + 1
                size_txt = bytes(self.chunk_line).split(b";")[0].strip()
                self.chunk_line = bytearray()
                if not size_txt:
                    continue
                self.chunk_left = int(size_txt, 16)
                if self.chunk_left == 0:
                    raise ValueError("HTTP body ended")
                self.chunk_state = 1
            elif self.chunk_state == 1:
                take = min(self.chunk_left, n - p)
                out += data[p : p + take]
                p += take
                self.chunk_left -= take
                if self.chunk_left == 0:
                    self.chunk_state = 0  # the trailing CRLF parses as an empty size line
        return bytes(out)

    def _tags(self, data: bytes) -> list[tuple[int, int, bytes]]:
        out: list[tuple[int, int, bytes]] = []
        if self.skip:
            if len(data) <= self.skip:
                self.skip -= len(data)
                return out
            data = data[self.skip :]
            self.skip = 0
        buf = self.flv
        buf += data
        p = 0
        if not self.flv_header_done:
            if len(buf) < 13:
                return out
            if buf[:3] != b"FLV":
                raise ValueError("not FLV")
            p = int.from_bytes(buf[5:9], "big") + 4
            self.flv_header_done = True
        n = len(buf)
        while p + 16 <= n:  # 11 header + up to 5 body bytes we look at
            tag_type = buf[p] & 0x1F
            size = int.from_bytes(buf[p + 1 : p + 4], "big")
            ts = int.from_bytes(buf[p + 4 : p + 7], "big") | (buf[p + 7] << 24)
            head = bytes(buf[p + 11 : p + 11 + min(size, 5)])
            if size < 5 and p + 11 + size > n:
                break
            out.append((tag_type, ts, head))
            total = 11 + size + 4
            if p + total > n:
                self.skip = p + total - n
                p = n
                break
            p += total
        del buf[:p]
        return out


# =========================================================================== viewers


def classify_video(head: bytes) -> tuple[bool, bool]:
    """(is a coded frame, is a key frame) for a video message/tag body start (legacy + enhanced)."""
    if not head:
        return False, False
    b0 = head[0]
    frame_type = (b0 >> 4) & 0x07
    if b0 & 0x80:  # enhanced RTMP: packet type in the low nibble
        pkt = b0 & 0x0F
        coded = pkt in (1, 3)
    elif b0 & 0x0F == 7 or b0 & 0x0F == 12:  # AVC / HEVC (legacy): byte 1 is the packet type
        coded = len(head) > 1 and head[1] == 1
    else:
        coded = frame_type != 5  # other codecs: anything but a command frame
    return coded, coded and frame_type == 1


class Viewer(asyncio.BufferedProtocol):
    """One viewer connection: parses until its first key frame, then only counts bytes."""

    def __init__(self, lg: LoadGen, idx: int, kind: str, sample: bool) -> None:
        self.lg = lg
        self.idx = idx
        self.kind = kind
        self.sample = sample
        self.transport: asyncio.Transport | None = None
        self.bytes = 0
        self.counting = False
        self.next_ack = math.inf  # RTMP: byte count at which to send the next Acknowledgement
        self.ack_window = 0
        self.t_start = 0.0  # connection attempt
        self.t_request = 0.0  # play command / GET sent
        self.t_first_video = 0.0  # any video message (sequence header included)
        self.t_first_frame = 0.0  # first coded picture
        self.t_first_key = 0.0
        self.closed = False
        self.t_closed = 0.0
        self.error = ""
        self.session: PlaySession | None = None
        self.flv: FlvHead | None = None
        self.offsets: list[tuple[float, float]] = []  # samples: (wall, wall - media ts)

    # --- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t: asyncio.Transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.transport = t
        sock = t.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if self.kind == "rtmp":
            self.session = self.lg.session_factory()
            self.session.start()
            self._flush()
        else:
            self.flv = FlvHead()
            self.t_request = now()
            t.write(self.lg.flv_request)

    def get_buffer(self, sizehint: int) -> memoryview:
        return SHARED_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        self.bytes += nbytes
        if self.counting:
            if self.bytes >= self.next_ack:
                self._ack()
            return
        try:
            self._parse(bytes(SHARED_VIEW[:nbytes]))
        except Exception as exc:  # a protocol error ends this viewer, not the run
            self.fail(f"{type(exc).__name__}: {exc}"[:200])

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.t_closed = now()
            if not self.error:
                self.error = f"closed by peer{': ' + str(exc) if exc else ''}"[:200]

    # --- helpers
    def fail(self, why: str) -> None:
        """Record the reason and drop the connection."""
        if not self.error:
            self.error = why
        if self.transport is not None:
            self.transport.abort()

    def _flush(self) -> None:
        assert self.session is not None and self.transport is not None
        out = self.session.outgoing()
        if out:
            self.transport.write(out)

    def _ack(self) -> None:
        assert self.transport is not None
        self.transport.write(rtmp_ack(self.bytes))
        self.next_ack = self.bytes + self.ack_window

    def start_counting(self) -> None:
        """Stop parsing: from here on only byte counts (and RTMP acks) are kept."""
        if self.counting or self.sample:
            return
        self.counting = True
        if self.kind == "rtmp" and self.session is not None:
            if self.transport is not None:
                self._flush()  # whatever the client still owes the server (ack, ping reply)
            self.ack_window = max(64 * 1024, min(self.session.ack_window, 2_500_000))
            self.next_ack = self.bytes + self.ack_window
        self.session = None
        self.flv = None
        if self.lg.rcvlowat and self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, self.lg.rcvlowat)
            except (OSError, AttributeError):
                pass

    def _on_video(self, ts: int, head: bytes) -> None:
        t = now()
        if not self.t_first_video:
            self.t_first_video = t
        coded, key = classify_video(head)
        if coded:
            if not self.t_first_frame:
                self.t_first_frame = t
            if key and not self.t_first_key:
                self.t_first_key = t
            if self.sample:
                self.offsets.append((t, t - ts / 1000.0))
        if self.t_first_key and not self.sample:
            self.start_counting()

    def _parse(self, data: bytes) -> None:
        if self.kind == "rtmp":
            assert self.session is not None
            for ev in self.session.feed(data):
                if ev[0] == EV_MEDIA:
                    if ev[1] == 9:
                        self._on_video(ev[2], ev[3])
                elif ev[0] == EV_PLAY_SENT:
                    self.t_request = now()
                elif ev[0] == EV_ERROR:
                    self.fail(ev[1])
                    return
                if self.counting:
                    break
            if self.session is not None:
                self._flush()
            elif self.bytes >= self.next_ack:
                self._ack()
        else:
            assert self.flv is not None
            for tag_type, ts, head in self.flv.feed(data):
                if tag_type == 9:
                    self._on_video(ts, head)
                    if self.counting:
                        break


# =========================================================================== the run


def pct(values: Iterable[float], q: float) -> float | None:
    """Percentile (nearest-rank on sorted data, linear via numpy) or None when empty."""
    arr = np.asarray(list(values), dtype=float)
    return float(np.percentile(arr, q)) if arr.size else None


def rnd(v: float | None, nd: int = 3) -> float | None:
    return None if v is None else round(v, nd)


@dataclass
class LoadGen:
    """Drives the ramp, the settle time and the measurement window; then summarises."""

    args: argparse.Namespace
    viewers: list[Viewer] = field(default_factory=list)
    flv_request: bytes = b""
    session_factory: Callable[[], PlaySession] = lambda: None  # type: ignore[assignment,return-value]
    rcvlowat: int = 0
    loop_lag: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        a = self.args
        self.rcvlowat = a.rcvlowat
        if a.rtmp:
            u = urlsplit(a.rtmp_url)
            self.rtmp_addr = (u.hostname or "127.0.0.1", u.port or 1935)
            path = u.path.lstrip("/")
            app, _, name = path.rpartition("/")
            tc_url = f"rtmp://{self.rtmp_addr[0]}:{self.rtmp_addr[1]}/{app}"
            impl = a.rtmp_client
            if impl == "auto":
                impl = "gateway" if gateway_client_available() else "builtin"
            self.rtmp_impl = impl
            if impl == "gateway":
                self.session_factory = lambda: GatewayPlaySession(app, tc_url, name)
            else:
                self.session_factory = lambda: BuiltinPlaySession(app, tc_url, name)
        if a.flv:
            u = urlsplit(a.flv_url)
            self.flv_addr = (u.hostname or "127.0.0.1", u.port or 80)
            target = u.path + (f"?{u.query}" if u.query else "")
            self.flv_request = (
                f"GET {target} HTTP/1.1\r\nHost: {u.netloc}\r\nUser-Agent: fanout-loadgen\r\n"
                "Accept: */*\r\nConnection: keep-alive\r\n\r\n"
            ).encode()

    # --- phases
    async def _open(self, v: Viewer, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        v.t_start = now()
        try:
            await asyncio.wait_for(loop.create_connection(lambda: v, addr[0], addr[1]), self.args.connect_timeout)
        except (TimeoutError, OSError) as exc:
            v.closed = True
            v.t_closed = now()
            v.error = f"connect: {type(exc).__name__}: {exc}"[:200]

    async def ramp(self) -> None:
        """Open viewers at --ramp-rate per second, RTMP and FLV interleaved."""
        a = self.args
        specs: list[tuple[str, tuple[str, int]]] = []
        for i in range(max(a.rtmp, a.flv)):
            if i < a.rtmp:
                specs.append(("rtmp", self.rtmp_addr))
            if i < a.flv:
                specs.append(("flv", self.flv_addr))
        counts = {"rtmp": a.rtmp, "flv": a.flv}
        seen = {"rtmp": 0, "flv": 0}
        tasks = []
        t0 = now()
        for k, (kind, addr) in enumerate(specs):
            due = t0 + k / a.ramp_rate
            delay = due - now()
            if delay > 0.002:
                await asyncio.sleep(delay)
            i = seen[kind]
            seen[kind] += 1
            every = max(1, counts[kind] // max(1, a.sample)) if a.sample else 0
            sample = bool(every) and i % every == 0 and i // every < a.sample
            v = Viewer(self, len(self.viewers), kind, sample)
            self.viewers.append(v)
            tasks.append(asyncio.ensure_future(self._open(v, addr)))
            if k and k % 1000 == 0:
                log(f"ramp: {k}/{len(specs)} started")
        await asyncio.gather(*tasks)

    async def wait_joined(self) -> None:
        """Until every viewer got a key frame, failed, or ran out of --join-timeout."""
        deadline = now() + self.args.join_timeout
        while now() < deadline:
            pending = [v for v in self.viewers if not v.closed and not v.t_first_key]
            if not pending:
                return
            await asyncio.sleep(0.1)
        for v in self.viewers:
            # has video but no key frame yet: judge it by its bytes from now on. Viewers with no
            # video at all keep parsing (they may still be in the handshake); a late join then
            # shows up as lag in the window
            if not v.closed and v.t_first_frame and not v.t_first_key:
                v.start_counting()

    async def monitor_loop(self, stop: asyncio.Event) -> None:
        """Event-loop lateness: if our own loop is late, the numbers are ours, not the server's."""
        period = 0.05
        while not stop.is_set():
            t = now()
            await asyncio.sleep(period)
            self.loop_lag.append((now(), max(0.0, now() - t - period)))

    def _gc_callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_t = now()
        elif self._gc_t:
            self.gc_pauses.append((now(), now() - self._gc_t))

    async def run(self) -> dict[str, Any]:
        a = self.args
        # GC pauses are our own event-loop stalls; record them so they are not blamed on servers
        self.gc_pauses: list[tuple[float, float]] = []
        self._gc_t = 0.0
        gc.callbacks.append(self._gc_callback)
        stop = asyncio.Event()
        mon = asyncio.ensure_future(self.monitor_loop(stop))
        ru = resource.getrusage(resource.RUSAGE_SELF)
        cpu0 = ru.ru_utime + ru.ru_stime
        t_ramp0 = now()
        emit("ramp_start", rtmp=a.rtmp, flv=a.flv, rtmp_client=getattr(self, "rtmp_impl", None))
        await self.ramp()
        t_ramp1 = now()
        log(f"ramp done in {t_ramp1 - t_ramp0:.1f}s; waiting for joins")
        await self.wait_joined()
        joined = sum(1 for v in self.viewers if v.t_first_frame and not v.closed)
        emit("ramp_done", seconds=round(now() - t_ramp0, 2), joined=joined, requested=len(self.viewers))
        ru = resource.getrusage(resource.RUSAGE_SELF)
        cpu_ramp = ru.ru_utime + ru.ru_stime - cpu0
        t_ramp_end = now()
        # thousands of long-lived viewer objects: keep the cyclic GC from re-walking them
        gc.collect()
        gc.freeze()
        await asyncio.sleep(a.settle)

        # ---- measurement window
        n = len(self.viewers)
        ticks: list[float] = []
        rows: list[np.ndarray] = []
        ru = resource.getrusage(resource.RUSAGE_SELF)
        w_cpu0 = ru.ru_utime + ru.ru_stime
        w0 = now()
        emit("window_start", viewers=n)
        step = a.tick
        k = 0
        while True:
            ticks.append(now())
            rows.append(np.fromiter((v.bytes for v in self.viewers), dtype=np.int64, count=n))
            if ticks[-1] - w0 >= a.duration - 1e-3:
                break
            k += 1
            await asyncio.sleep(max(0.0, w0 + k * step - now()))
        w1 = now()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        w_cpu = ru.ru_utime + ru.ru_stime - w_cpu0
        emit("window_end")
        stop.set()
        await mon
        alive_end = np.array([not v.closed for v in self.viewers], dtype=bool)
        result = self.summarise(np.array(ticks), np.vstack(rows), alive_end, w0, w1)
        lag_ramp = [l for t, l in self.loop_lag if t <= t_ramp_end]
        lag_win = [l for t, l in self.loop_lag if w0 <= t <= w1]
        result["loadgen"] = {
            "cpu_pct_window": round(100.0 * w_cpu / (w1 - w0), 1),
            "cpu_pct_ramp": round(100.0 * cpu_ramp / max(t_ramp_end - t_ramp0, 1e-6), 1),
            "ramp_s": round(t_ramp1 - t_ramp0, 2),
            "loop_lag_ms_p99_window": rnd(1000 * (pct(lag_win, 99) or 0), 1),
            "loop_lag_ms_max_window": rnd(1000 * max(lag_win, default=0), 1),
            "loop_lag_ms_p99_ramp": rnd(1000 * (pct(lag_ramp, 99) or 0), 1),
            "gc_pause_ms_max_window": rnd(1000 * max((d for t, d in self.gc_pauses if w0 <= t <= w1), default=0), 1),
            "gc_pause_ms_max_ramp": rnd(1000 * max((d for t, d in self.gc_pauses if t <= t_ramp_end), default=0), 1),
            "rcvlowat": self.rcvlowat,
            "rtmp_client": getattr(self, "rtmp_impl", None),
            "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        lgc = result["loadgen"]
        lgc["bound"] = bool(
            lgc["cpu_pct_window"] >= a.bound_cpu or (lgc["loop_lag_ms_p99_window"] or 0) >= a.bound_lag_ms
        )
        result["pass"] = all(p["pass"] for p in result["protocols"].values()) if result["protocols"] else False
        for v in self.viewers:
            if v.transport is not None:
                v.transport.abort()
        return result

    def summarise(
        self, ticks: np.ndarray, b: np.ndarray, alive_end: np.ndarray, w0: float, w1: float
    ) -> dict[str, Any]:
        """Per protocol: connected share, bitrate ratios, join times, lag growth."""
        a = self.args
        T = w1 - w0
        rate = a.source_bytes_per_s
        out: dict[str, Any] = {"window_s": round(T, 2), "source_bytes_per_s": rate, "protocols": {}}
        rel_t = ticks - ticks[0]
        for kind in ("rtmp", "flv"):
            idx = np.array([v.idx for v in self.viewers if v.kind == kind], dtype=np.int64)
            if idx.size == 0:
                continue
            vs = [self.viewers[i] for i in idx]
            playing = np.array([bool(v.t_first_frame) for v in vs]) & alive_end[idx]
            bk = b[:, idx]
            delta = (bk[-1] - bk[0]).astype(float)
            ratio_all = np.where(playing, delta / (rate * T), 0.0)
            # lag growth of each viewer relative to the best ones (p90 of per-tick progress)
            prog = (bk - bk[0]).astype(float)
            alive_cols = np.flatnonzero(playing)
            lagging = stalled = 0
            growth = np.zeros(idx.size)
            if alive_cols.size:
                ref = np.percentile(prog[:, alive_cols], 90, axis=1)
                deficit = ref[:, None] - prog  # bytes behind the best viewers, per tick
                tc = rel_t - rel_t.mean()
                denom = float((tc * tc).sum()) or 1.0
                slope = (tc[:, None] * (deficit - deficit.mean(axis=0))).sum(axis=0) / denom
                growth = slope * T / rate  # seconds of media fallen behind over the window
                tail_ticks = max(1, int(round(a.stall_s / a.tick)))
                stall = (bk[-1] - bk[max(0, len(bk) - 1 - tail_ticks)]) == 0
                lag_mask = playing & ((growth > a.lag_tolerance) | stall)
                lagging = int(lag_mask.sum())
                stalled = int((playing & stall).sum())
            # absolute lag of the fully parsed samples: (wall - media ts) drift over the window
            sample_growth: list[float] = []
            for v in vs:
                if not v.sample or not v.offsets or v.closed:
                    continue
                first = [o for t, o in v.offsets if w0 <= t <= w0 + 2.0]
                last = [o for t, o in v.offsets if w1 - 2.0 <= t <= w1]
                if first and last:
                    sample_growth.append(statistics.median(last) - statistics.median(first))
                else:
                    sample_growth.append(float(T))  # no media in a window edge: stalled
            ff = [1000 * (v.t_first_frame - v.t_request) for v in vs if v.t_first_frame and v.t_request]
            fk = [1000 * (v.t_first_key - v.t_request) for v in vs if v.t_first_key and v.t_request]
            fv = [1000 * (v.t_first_video - v.t_request) for v in vs if v.t_first_video and v.t_request]
            errors: dict[str, int] = {}
            for v in vs:
                if v.error:
                    key = v.error.split(":")[0][:60]
                    errors[key] = errors.get(key, 0) + 1
            connected = int(playing.sum())
            med_ratio = float(np.median(ratio_all))
            conn_frac = connected / idx.size
            max_sample = max(sample_growth, default=0.0)
            reasons = []
            if conn_frac < a.min_connected:
                reasons.append(f"connected {conn_frac:.1%} < {a.min_connected:.0%}")
            if med_ratio < a.min_ratio:
                reasons.append(f"median bitrate {med_ratio:.1%} < {a.min_ratio:.0%}")
            if lagging:
                reasons.append(f"{lagging} viewers lagging ({stalled} stalled)")
            if max_sample > a.lag_tolerance:
                reasons.append(f"sample lag grew {max_sample:.2f}s")
            out["protocols"][kind] = {
                "requested": int(idx.size),
                "connected": connected,
                "connected_frac": round(conn_frac, 4),
                "ratio_median": round(med_ratio, 4),
                "ratio_p10": round(float(np.percentile(ratio_all, 10)), 4),
                "ratio_min": round(float(ratio_all.min()), 4),
                "lagging": lagging,
                "stalled": stalled,
                "lag_growth_s_max": round(float(growth[playing].max()), 3) if playing.any() else None,
                "sample_lag_growth_s": [round(x, 3) for x in sample_growth],
                "first_video_ms_median": rnd(pct(fv, 50), 2),
                "first_frame_ms_median": rnd(pct(ff, 50), 2),
                "first_frame_ms_p95": rnd(pct(ff, 95), 2),
                "first_frame_ms_max": rnd(max(ff, default=None) if ff else None, 2),
                "first_key_ms_median": rnd(pct(fk, 50), 2),
                "first_key_ms_p95": rnd(pct(fk, 95), 2),
                "errors": errors,
                "pass": not reasons,
                "reasons": reasons,
            }
        return out


def gateway_client_available() -> bool:
    """True when the gateway's sans-I/O RTMP client can be imported (repo root on sys.path)."""
    try:
        from gateway.wire.rtmp import connection

        return hasattr(connection, "ClientConnection")
    except Exception:
        return False


def raise_nofile(need: int) -> int:
    """Lift the soft fd limit to the hard one; thousands of sockets need it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


async def probe(args: argparse.Namespace) -> int:
    """Exit 0 once one viewer per requested protocol saw a coded video frame (stream is up)."""
    lg = LoadGen(args)
    deadline = now() + args.probe
    while now() < deadline:
        lg.viewers.clear()
        tasks = []
        if args.rtmp:
            lg.viewers.append(Viewer(lg, 0, "rtmp", False))
            tasks.append(lg._open(lg.viewers[-1], lg.rtmp_addr))
        if args.flv:
            lg.viewers.append(Viewer(lg, len(lg.viewers), "flv", False))
            tasks.append(lg._open(lg.viewers[-1], lg.flv_addr))
        await asyncio.gather(*tasks)
        t_end = min(deadline, now() + 5.0)
        while now() < t_end and not all(v.t_first_frame or v.closed for v in lg.viewers):
            await asyncio.sleep(0.05)
        ok = all(v.t_first_frame and not v.closed for v in lg.viewers)
        for v in lg.viewers:
            if v.transport:
                v.transport.abort()
        if ok:
            emit("probe_ok", rtmp_client=getattr(lg, "rtmp_impl", None))
            return 0
        errs = "; ".join(f"{v.kind}: {v.error or 'no video yet'}" for v in lg.viewers if not v.t_first_frame)
        log(f"probe: {errs}")
        await asyncio.sleep(0.5)
    emit("probe_failed")
    return 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rtmp-url", default="rtmp://127.0.0.1:1935/live/bench")
    p.add_argument("--flv-url", default="http://127.0.0.1:8080/live/bench.flv")
    p.add_argument("--rtmp", type=int, default=0, help="RTMP viewers")
    p.add_argument("--flv", type=int, default=0, help="HTTP-FLV viewers")
    p.add_argument("--rtmp-client", choices=("auto", "builtin", "gateway"), default="builtin",
                   help="RTMP play client: the bench's own, or the gateway's sans-I/O ClientConnection")
    p.add_argument("--source-bytes-per-s", type=float, default=2_160_000 / 8,
                   help="what a keeping-up viewer receives per second (the clip's FLV byte rate)")
    p.add_argument("--ramp-rate", type=float, default=400.0, help="new connections per second")
    p.add_argument("--join-timeout", type=float, default=8.0, help="max wait for key frames after ramp")
    p.add_argument("--settle", type=float, default=3.0, help="seconds between joins and the window")
    p.add_argument("--duration", type=float, default=20.0, help="measurement window, seconds")
    p.add_argument("--tick", type=float, default=0.5, help="byte-count sampling period")
    p.add_argument("--sample", type=int, default=5, help="fully parsed viewers per protocol (lag)")
    p.add_argument("--rcvlowat", type=int, default=32768, help="SO_RCVLOWAT for counting viewers (0=off)")
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument("--min-connected", type=float, default=0.99)
    p.add_argument("--min-ratio", type=float, default=0.95)
    p.add_argument("--lag-tolerance", type=float, default=1.0,
                   help="seconds of lag growth over the window that count as 'lag grows'")
    p.add_argument("--stall-s", type=float, default=2.0, help="no bytes for this long at window end = stalled")
    p.add_argument("--bound-cpu", type=float, default=90.0, help="loadgen CPU%% that marks it as the bottleneck")
    p.add_argument("--bound-lag-ms", type=float, default=250.0, help="loop lag p99 that marks it as the bottleneck")
    p.add_argument("--probe", type=float, default=0.0, help="only check the stream plays (timeout, s)")
    p.add_argument("--no-uvloop", action="store_true")
    args = p.parse_args(argv)
    if not args.probe and not (args.rtmp or args.flv):
        p.error("nothing to do: give --rtmp N and/or --flv N")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # the gateway package (for --rtmp-client gateway) sits at the repo root
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    raise_nofile(args.rtmp + args.flv + 100)
    if uvloop is not None and not args.no_uvloop:
        uvloop.install()
    if args.probe:
        args.rtmp = 1 if args.rtmp else 0
        args.flv = 1 if args.flv else 0
        return asyncio.run(probe(args))
    result = asyncio.run(LoadGen(args).run())
    emit("result", **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
