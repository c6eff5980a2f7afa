"""RTMP handshake (C0/C1/C2, S0/S1/S2), plain and Flash "digest" flavours.

Flash Player, FFmpeg and several encoders send a C1 signed with HMAC-SHA256; some of them
(FFmpeg among others) then verify the server's S1/S2 signatures and give up on a plain
answer from a server claiming a version, so the server answers digest with digest.

Digest layout (both C1 and S1): time(4) version(4) then two 764-byte blocks. The 32-byte
digest sits in the "digest block", which comes second (schema 0, block at 772) or first
(schema 1, block at 8); its offset inside the block is the sum of the block's first four
bytes modulo 728. The digest is HMAC-SHA256 over the packet minus those 32 bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from typing import Final

from .messages import RtmpError

__all__ = [
    "FMS_KEY",
    "FP_KEY",
    "HANDSHAKE_SIZE",
    "RTMP_VERSION",
    "ClientHandshake",
    "HandshakeError",
    "ServerHandshake",
    "digest_position",
    "find_digest",
    "make_digest_packet",
    "response_signature",
]

RTMP_VERSION: Final = 3
HANDSHAKE_SIZE: Final = 1536
DIGEST_SIZE: Final = 32

_KEY_TAIL: Final = bytes.fromhex(
    "f0eec24a8068bee82e00d0d1029e7e576eec5d2d29806fab93b8e636cfeb31ae"
)
FP_KEY: Final = b"Genuine Adobe Flash Player 001" + _KEY_TAIL  # client key, 62 bytes
FMS_KEY: Final = b"Genuine Adobe Flash Media Server 001" + _KEY_TAIL  # server key, 68 bytes
FP_KEY_PARTIAL: Final = FP_KEY[:30]
FMS_KEY_PARTIAL: Final = FMS_KEY[:36]

SERVER_VERSION: Final = b"\x0d\x0e\x0a\x0d"  # any non-zero value announces the digest scheme
CLIENT_VERSION: Final = b"\x09\x00\x7c\x02"  # Flash Player 9.0.124.2, as FFmpeg claims

Random = Callable[[int], bytes]


class HandshakeError(RtmpError):
    """The peer's handshake is not RTMP, or its signatures do not verify."""


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def digest_position(packet: bytes | bytearray, schema: int) -> int:
    """Offset of the 32-byte digest in a 1536-byte C1/S1 for ``schema`` 0 or 1."""
    block = 772 if schema == 0 else 8
    return sum(packet[block : block + 4]) % 728 + block + 4


def _digest_at(packet: bytes, pos: int, key: bytes) -> bytes:
    return _hmac(key, packet[:pos] + packet[pos + DIGEST_SIZE :])


def find_digest(packet: bytes, key: bytes) -> int | None:
    """Position of a valid digest in ``packet`` (trying both schemas), or None."""
    for schema in (0, 1):
        pos = digest_position(packet, schema)
        if hmac.compare_digest(_digest_at(packet, pos, key), packet[pos : pos + DIGEST_SIZE]):
            return pos
    return None


def make_digest_packet(key: bytes, version: bytes, schema: int, random: Random = os.urandom) -> bytes:
    """A signed C1/S1 (time field 0)."""
    packet = bytearray(b"\x00\x00\x00\x00" + version + random(HANDSHAKE_SIZE - 8))
    pos = digest_position(packet, schema)
    packet[pos : pos + DIGEST_SIZE] = _digest_at(bytes(packet), pos, key)
    return bytes(packet)


def response_signature(peer_digest: bytes, key: bytes, body: bytes) -> bytes:
    """Signature closing an S2/C2: HMAC(HMAC(full key, peer's C1/S1 digest), first 1504 bytes)."""
    return _hmac(_hmac(key, peer_digest), body)


def _make_response(peer_digest: bytes, key: bytes, random: Random) -> bytes:
    body = random(HANDSHAKE_SIZE - DIGEST_SIZE)
    return body + response_signature(peer_digest, key, body)


def _check_version(byte: int) -> None:
    if byte == RTMP_VERSION:
        return
    if byte in (0x06, 0x08, 0x09):
        raise HandshakeError(f"encrypted RTMP (RTMPE, version {byte}) is not supported")
    if 0x41 <= byte <= 0x5A:
        raise HandshakeError("peer speaks a text protocol (HTTP?), not RTMP")
    raise HandshakeError(f"unsupported RTMP version byte {byte}")


class ServerHandshake:
    """Answers C0+C1 with S0+S1+S2, then waits for C2.

    ``digest`` tells which flavour the client used (and was answered with).
    """

    def __init__(self, random: Random = os.urandom) -> None:
        self._random = random
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._answered = False
        self.complete = False
        self.digest = False
        self.leftover = b""

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self.complete:
            self.leftover += bytes(data)
            return
        buf = self._buf
        buf += data
        if not self._answered:
            if buf:
                _check_version(buf[0])  # early, so HTTP or RTMPE fails before 1537 bytes
            if len(buf) < 1 + HANDSHAKE_SIZE:
                return
            c1 = bytes(buf[1 : 1 + HANDSHAKE_SIZE])
            del buf[: 1 + HANDSHAKE_SIZE]
            self._out.append(self._answer(c1))
            self._answered = True
        if len(buf) >= HANDSHAKE_SIZE:  # C2 is not checked: clients disagree on its content
            self.leftover = bytes(buf[HANDSHAKE_SIZE:])
            buf.clear()
            self.complete = True

    def _answer(self, c1: bytes) -> bytes:
        s0 = bytes((RTMP_VERSION,))
        if c1[4:8] != b"\x00\x00\x00\x00":
            pos = find_digest(c1, FP_KEY_PARTIAL)
            if pos is not None:
                self.digest = True
                schema = 0 if pos >= 776 else 1
                s1 = make_digest_packet(FMS_KEY_PARTIAL, SERVER_VERSION, schema, self._random)
                s2 = _make_response(c1[pos : pos + DIGEST_SIZE], FMS_KEY, self._random)
                return s0 + s1 + s2
        # Plain handshake: S1 with a zero version, S2 echoes C1.
        s1 = b"\x00" * 8 + self._random(HANDSHAKE_SIZE - 8)
        return s0 + s1 + c1

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out


class ClientHandshake:
    """Sends C0+C1 at once, C2 after S1; complete after S2.

    With ``digest=True`` it signs C1 and verifies a signing server's S1/S2, which is what
    servers that insist on the Flash handshake (and strict CDNs) expect.
    """

    def __init__(self, digest: bool = False, random: Random = os.urandom) -> None:
        self._random = random
        self._digest = digest
        self._buf = bytearray()
        self._c1_digest = b""
        if digest:
            c1 = make_digest_packet(FP_KEY_PARTIAL, CLIENT_VERSION, 1, random)
            pos = digest_position(c1, 1)
            self._c1_digest = c1[pos : pos + DIGEST_SIZE]
        else:
            c1 = b"\x00" * 8 + random(HANDSHAKE_SIZE - 8)
        self._out: list[bytes] = [bytes((RTMP_VERSION,)) + c1]
        self._got_s1 = False
        self._server_digest = False
        self.complete = False
        self.leftover = b""

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self.complete:
            self.leftover += bytes(data)
            return
        buf = self._buf
        buf += data
        if not self._got_s1:
            if buf:
                _check_version(buf[0])
            if len(buf) < 1 + HANDSHAKE_SIZE:
                return
            s1 = bytes(buf[1 : 1 + HANDSHAKE_SIZE])
            del buf[: 1 + HANDSHAKE_SIZE]
            self._out.append(self._c2_for(s1))
            self._got_s1 = True
        if len(buf) >= HANDSHAKE_SIZE:
            s2 = bytes(buf[:HANDSHAKE_SIZE])
            if self._server_digest:
                body = s2[: HANDSHAKE_SIZE - DIGEST_SIZE]
                expected = response_signature(self._c1_digest, FMS_KEY, body)
                if not hmac.compare_digest(expected, s2[HANDSHAKE_SIZE - DIGEST_SIZE :]):
                    raise HandshakeError("server S2 signature does not verify")
            self.leftover = bytes(buf[HANDSHAKE_SIZE:])
            buf.clear()
            self.complete = True

    def _c2_for(self, s1: bytes) -> bytes:
        if self._digest and s1[4:8] != b"\x00\x00\x00\x00":
            pos = find_digest(s1, FMS_KEY_PARTIAL)
            if pos is None:
                raise HandshakeError("server S1 digest does not verify")
            self._server_digest = True
            return _make_response(s1[pos : pos + DIGEST_SIZE], FP_KEY, self._random)
        return s1  # plain: echo S1

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out
