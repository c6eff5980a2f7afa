"""Handshake: plain and Flash digest, server and client."""

from __future__ import annotations

import hashlib
import hmac
import os
import random

import pytest

from gateway.wire.rtmp.handshake import (
    HANDSHAKE_SIZE,
    ClientHandshake,
    HandshakeError,
    ServerHandshake,
)

# The public constants, spelled out here so the tests don't trust the module under test.
TAIL = bytes(
    [
        0xF0, 0xEE, 0xC2, 0x4A, 0x80, 0x68, 0xBE, 0xE8, 0x2E, 0x00, 0xD0, 0xD1, 0x02, 0x9E, 0x7E, 0x57,
        0x6E, 0xEC, 0x5D, 0x2D, 0x29, 0x80, 0x6F, 0xAB, 0x93, 0xB8, 0xE6, 0x36, 0xCF, 0xEB, 0x31, 0xAE,
    ]
)
PLAYER_KEY = b"Genuine Adobe Flash Player 001" + TAIL
SERVER_KEY = b"Genuine Adobe Flash Media Server 001" + TAIL


def sha(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def offset(packet: bytes | bytearray, base: int) -> int:
    return sum(packet[base : base + 4]) % 728 + base + 4


def signed_c1(schema_base: int, seed: int = 1) -> tuple[bytes, int]:
    """A C1 as Flash/FFmpeg build it: version set, digest at the schema's offset."""
    rnd = random.Random(seed)
    c1 = bytearray(rnd.randbytes(HANDSHAKE_SIZE))
    c1[0:4] = b"\x00\x00\x00\x00"
    c1[4:8] = b"\x09\x00\x7c\x02"
    pos = offset(c1, schema_base)
    c1[pos : pos + 32] = sha(PLAYER_KEY[:30], bytes(c1[:pos] + c1[pos + 32 :]))
    return bytes(c1), pos


def verify_server_answer(answer: bytes, c1: bytes, c1_pos: int) -> None:
    assert answer[0] == 3
    s1 = answer[1 : 1 + HANDSHAKE_SIZE]
    s2 = answer[1 + HANDSHAKE_SIZE :]
    assert len(s2) == HANDSHAKE_SIZE
    assert s1[4:8] != b"\x00\x00\x00\x00"
    # S1 digest verifies with the partial server key at one of the two schema offsets
    # (FFmpeg tries 772 first, then 8).
    ok = False
    for base in (772, 8):
        pos = offset(s1, base)
        if sha(SERVER_KEY[:36], s1[:pos] + s1[pos + 32 :]) == s1[pos : pos + 32]:
            ok = True
    assert ok, "S1 digest does not verify"
    # S2 signature: HMAC(HMAC(full server key, C1 digest), S2[:1504]).
    key = sha(SERVER_KEY, c1[c1_pos : c1_pos + 32])
    assert sha(key, s2[:-32]) == s2[-32:], "S2 signature does not verify"


def test_plain_handshake_server_echoes_c1() -> None:
    c1 = b"\x00\x00\x00\x01" + b"\x00" * 4 + os.urandom(HANDSHAKE_SIZE - 8)
    hs = ServerHandshake()
    hs.receive_data(b"\x03" + c1)
    answer = hs.data_to_send()
    assert len(answer) == 1 + 2 * HANDSHAKE_SIZE
    assert answer[0] == 3
    assert answer[5:9] == b"\x00\x00\x00\x00"  # S1 version zero: plain
    assert answer[1 + HANDSHAKE_SIZE :] == c1
    assert not hs.complete and not hs.digest
    hs.receive_data(answer[1 : 1 + HANDSHAKE_SIZE] + b"chunkdata")
    assert hs.complete and hs.leftover == b"chunkdata"


@pytest.mark.parametrize("schema_base", [8, 772])
def test_digest_handshake_answered_with_valid_digest(schema_base: int) -> None:
    c1, pos = signed_c1(schema_base)
    hs = ServerHandshake()
    hs.receive_data(b"\x03" + c1)
    answer = hs.data_to_send()
    assert hs.digest
    verify_server_answer(answer, c1, pos)


def test_nonzero_version_without_valid_digest_falls_back_to_plain() -> None:
    c1 = bytearray(os.urandom(HANDSHAKE_SIZE))
    c1[4:8] = b"\x01\x02\x03\x04"
    hs = ServerHandshake()
    hs.receive_data(b"\x03" + bytes(c1))
    answer = hs.data_to_send()
    assert not hs.digest
    assert answer[1 + HANDSHAKE_SIZE :] == bytes(c1)


@pytest.mark.parametrize("digest", [False, True])
def test_client_against_server_byte_by_byte(digest: bool) -> None:
    client = ClientHandshake(digest=digest)
    server = ServerHandshake()
    c0c1 = client.data_to_send()
    assert len(c0c1) == 1 + HANDSHAKE_SIZE
    for b in c0c1:
        server.receive_data(bytes([b]))
    s = server.data_to_send()
    assert server.digest is digest
    for b in s + b"tail":
        client.receive_data(bytes([b]))
    assert client.complete and client.leftover == b"tail"
    c2 = client.data_to_send()
    assert len(c2) == HANDSHAKE_SIZE
    server.receive_data(c2 + b"xyz")
    assert server.complete and server.leftover == b"xyz"
    server.receive_data(b"more")
    assert server.leftover == b"xyzmore"


def test_digest_client_c2_is_signed_for_s1() -> None:
    client = ClientHandshake(digest=True)
    server = ServerHandshake()
    server.receive_data(client.data_to_send())
    answer = server.data_to_send()
    client.receive_data(answer)
    c2 = client.data_to_send()
    s1 = answer[1 : 1 + HANDSHAKE_SIZE]
    for base in (772, 8):
        pos = offset(s1, base)
        if sha(SERVER_KEY[:36], s1[:pos] + s1[pos + 32 :]) == s1[pos : pos + 32]:
            key = sha(PLAYER_KEY, s1[pos : pos + 32])
            assert sha(key, c2[:-32]) == c2[-32:]
            return
    pytest.fail("S1 digest not found")


def test_digest_client_rejects_tampered_s2() -> None:
    client = ClientHandshake(digest=True)
    server = ServerHandshake()
    server.receive_data(client.data_to_send())
    answer = bytearray(server.data_to_send())
    answer[-1] ^= 0xFF
    with pytest.raises(HandshakeError, match="S2"):
        client.receive_data(bytes(answer))


def test_digest_client_rejects_unsigned_s1_with_version() -> None:
    client = ClientHandshake(digest=True)
    client.data_to_send()
    s1 = b"\x00\x00\x00\x00\x01\x02\x03\x04" + os.urandom(HANDSHAKE_SIZE - 8)
    with pytest.raises(HandshakeError, match="S1"):
        client.receive_data(b"\x03" + s1)


def test_digest_client_accepts_plain_server() -> None:
    client = ClientHandshake(digest=True)
    c1 = client.data_to_send()[1:]
    s1 = b"\x00" * 8 + os.urandom(HANDSHAKE_SIZE - 8)
    client.receive_data(b"\x03" + s1 + c1)
    assert client.complete
    assert client.data_to_send() == s1


@pytest.mark.parametrize(
    "first, reason",
    [(b"\x06", "RTMPE"), (b"GET / HTTP/1.1", "HTTP"), (b"\x00", "version"), (b"\xff", "version")],
)
def test_bad_version_rejected_immediately(first: bytes, reason: str) -> None:
    with pytest.raises(HandshakeError, match=reason):
        ServerHandshake().receive_data(first)
    with pytest.raises(HandshakeError):
        ClientHandshake().receive_data(first)


def test_c2_content_is_not_checked() -> None:
    server = ServerHandshake()
    server.receive_data(b"\x03" + b"\x00" * HANDSHAKE_SIZE)
    server.data_to_send()
    server.receive_data(b"\x07" * HANDSHAKE_SIZE)  # first byte is not a version byte
    assert server.complete
