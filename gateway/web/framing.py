"""Transfer framings of a fan-out's batches, made once per batch and shared by all viewers."""

from __future__ import annotations


def http_chunk(data: bytes) -> bytes:
    """HTTP/1.1 chunked transfer-coding of one batch (made once, shared by all viewers)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def ws_binary(data: bytes) -> bytes:
    """One unmasked server-to-client WebSocket binary frame (RFC 6455)."""
    n = len(data)
    if n < 126:
        head = bytes((0x82, n))
    elif n < 1 << 16:
        head = bytes((0x82, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x82, 127)) + n.to_bytes(8, "big")
    return head + data
