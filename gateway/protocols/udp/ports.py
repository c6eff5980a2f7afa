"""UDP ports for RTP sessions from the configured range: RTP on an even port, RTCP on the next
one (or muxed on the same), bound before they are announced in an answer."""

from __future__ import annotations

import asyncio
import socket
from typing import TypeVar

__all__ = ["PortRange", "PortsExhausted", "open_endpoint"]

P = TypeVar("P", bound=asyncio.DatagramProtocol)


async def open_endpoint(protocol: P, *, sock: socket.socket | None = None,
                        local_addr: tuple[str, int] | None = None) -> asyncio.DatagramTransport:
    """Serve ``protocol`` (an existing object) on a bound socket or a local address."""
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: protocol, sock=sock, local_addr=local_addr)
    return transport


class PortsExhausted(RuntimeError):
    """No free port (pair) is left in the range."""


class PortRange:
    """Hands out bound UDP sockets from ``low``..``high``, round robin, skipping ports in use."""

    def __init__(self, host: str, low: int, high: int) -> None:
        self.host = host
        self.low = low + (low & 1)  # RTP on even ports (RFC 3550 11)
        self.high = high
        self._next = self.low

    def allocate(self, mux: bool) -> tuple[int, socket.socket, socket.socket | None]:
        """(port, RTP socket, RTCP socket on port + 1 or None when muxed)."""
        span = max(0, (self.high - self.low) // 2 + 1)
        for _ in range(span):
            port = self._next
            self._next = port + 2 if port + 2 <= self.high - (0 if mux else 1) else self.low
            if not mux and port + 1 > self.high:
                continue
            rtp = self._bind(port)
            if rtp is None:
                continue
            if mux:
                return port, rtp, None
            rtcp = self._bind(port + 1)
            if rtcp is None:
                rtp.close()
                continue
            return port, rtp, rtcp
        raise PortsExhausted(f"no free UDP port left in {self.low}-{self.high}")

    def _bind(self, port: int) -> socket.socket | None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((self.host, port))
        except OSError:
            sock.close()
            return None
        sock.setblocking(False)
        return sock
