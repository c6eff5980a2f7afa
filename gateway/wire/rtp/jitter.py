"""RTP over plain UDP arrives reordered, duplicated, lost or from a restarted sender: this puts
one track's packets back in sequence order, waits a bounded time and number of packets for a
gap, then gives it up and says so (for a PLI), and lists what it awaits (for NACKs). Sans I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

from .packet import RtpPacket, seq_delta

__all__ = ["JitterBuffer"]

_MOD = 0xFFFF


@dataclass(slots=True)
class JitterBuffer:
    """Packets of one track (one SSRC) back in sequence order.

    ``push(packet, now)`` returns the packets now in order (none, one or several),
    ``poll(now)`` those whose gap waited too long (call it from a timer, e.g. every
    ``max_delay / 4``), ``flush()`` everything held, at the end. ``now`` is any monotonic clock
    in seconds. Each of the three sets ``gaps``: the positions, in the list it returned, of the
    packets released after a break in the sequence (packets given up, a sender restart or a new
    SSRC), empty for an unbroken run; from there the caller drops to the next key frame and
    sends a PLI. ``missing()`` lists the sequence numbers awaited, to NACK them while they can
    still arrive.

    A gap is given up when the oldest held packet waited ``max_delay`` seconds or when a packet
    arrives more than ``max_packets`` after the first missing one; a packet more than
    ``max_packets`` after the newest one is a sender restart (the buffer is flushed and follows
    it), as are two consecutive packets more than ``max_packets`` behind. At most
    ``max_packets`` packets are held. The first SSRC is followed; another one is dropped until
    the followed one has been silent for ``ssrc_switch_after`` seconds.

    Counters: ``lost`` (sequence numbers given up; a restart's jump is not counted),
    ``duplicates`` (a packet already held), ``late`` (behind what was released or given up,
    a duplicate of a released packet included), ``foreign_ssrc``, ``ssrc_changes``,
    ``restarts``.
    """

    max_delay: float = 0.2
    max_packets: int = 1024
    ssrc_switch_after: float = 3.0
    gaps: list[int] = field(default_factory=list, init=False)
    lost: int = field(default=0, init=False)
    duplicates: int = field(default=0, init=False)
    late: int = field(default=0, init=False)
    foreign_ssrc: int = field(default=0, init=False)
    ssrc_changes: int = field(default=0, init=False)
    restarts: int = field(default=0, init=False)
    _ssrc: int | None = field(default=None, init=False, repr=False)
    _seen: float = field(default=0.0, init=False, repr=False)  # the followed SSRC's last packet
    _next: int | None = field(default=None, init=False, repr=False)  # next to release
    _top: int = field(default=0, init=False, repr=False)  # newest sequence number accepted
    # sequence number -> (packet, arrival); dict order is arrival order, so the first is oldest
    _held: dict[int, tuple[RtpPacket, float]] = field(default_factory=dict, init=False,
                                                      repr=False)
    _stray: RtpPacket | None = field(default=None, init=False, repr=False)  # far behind: restart?
    _broken: bool = field(default=False, init=False, repr=False)  # next release follows a break

    def __post_init__(self) -> None:
        if not 1 <= self.max_packets <= 0x4000:
            raise ValueError(f"max_packets {self.max_packets} is not 1..16384")
        if self.max_delay < 0 or self.ssrc_switch_after < 0:
            raise ValueError("max_delay and ssrc_switch_after must not be negative")

    @property
    def held(self) -> int:
        """How many packets wait for a gap before them."""
        return len(self._held)

    def push(self, packet: RtpPacket, now: float) -> list[RtpPacket]:
        """Take one received packet; the packets now in order (see ``gaps``)."""
        self.gaps = []
        out: list[RtpPacket] = []
        if self._ssrc is None:
            self._ssrc = packet.ssrc
        elif packet.ssrc != self._ssrc:
            if now - self._seen < self.ssrc_switch_after:
                self.foreign_ssrc += 1
                self._expire(now, out)
                return out
            self._reset(out)
            self._ssrc = packet.ssrc
            self.ssrc_changes += 1
        self._seen = now
        self._accept(packet, now, out)
        self._expire(now, out)
        return out

    def poll(self, now: float) -> list[RtpPacket]:
        """The packets released because the gap before them waited ``max_delay``."""
        self.gaps = []
        out: list[RtpPacket] = []
        self._expire(now, out)
        return out

    def flush(self) -> list[RtpPacket]:
        """Every held packet in order, the gaps between them given up."""
        self.gaps = []
        out: list[RtpPacket] = []
        while self._held:
            self._skip(out)
        if self._stray is not None:
            self._stray = None
            self.late += 1
        return out

    def missing(self) -> list[int]:
        """The sequence numbers awaited (before held packets), oldest first: at most
        ``max_packets``."""
        if not self._held or self._next is None:
            return []
        span = seq_delta(self._top, self._next)
        return [s for s in ((self._next + i) & _MOD for i in range(span)) if s not in self._held]

    # ----------------------------------------------------------------------- internals

    def _accept(self, packet: RtpPacket, now: float, out: list[RtpPacket]) -> None:
        seq = packet.sequence_number & _MOD
        if self._next is None:
            self._start(seq)
        assert self._next is not None
        behind = seq_delta(seq, self._next)
        if behind < 0:
            if behind >= -self.max_packets:
                self.late += 1
                return
            stray = self._stray
            if stray is None or seq != (stray.sequence_number + 1) & _MOD:
                if stray is not None:
                    self.late += 1
                self._stray = packet
                return
            self._restart(out)  # two consecutive packets far behind: the sender restarted
            self._start(stray.sequence_number & _MOD)
            self._release(stray, out)
            behind = 0
        elif seq_delta(seq, self._top) > self.max_packets:
            self._restart(out)
            self._start(seq)
            behind = 0
        if self._stray is not None:
            self._stray = None
            self.late += 1
        if seq in self._held:
            self.duplicates += 1
            return
        if seq_delta(seq, self._top) > 0:
            self._top = seq
        if behind == 0:
            self._release(packet, out)
            self._drain(out)
            return
        self._held[seq] = (packet, now)
        while seq_delta(seq, self._next) > self.max_packets:  # the window slides to take it
            self._skip(out)

    def _expire(self, now: float, out: list[RtpPacket]) -> None:
        while self._held and now - next(iter(self._held.values()))[1] >= self.max_delay:
            self._skip(out)

    def _skip(self, out: list[RtpPacket]) -> None:
        """Give up the gap before the first held packet and release from there."""
        base = self._next
        assert base is not None
        first = min(self._held, key=lambda s: seq_delta(s, base))
        self.lost += seq_delta(first, base)
        self._next = first
        self._broken = True
        self._drain(out)

    def _drain(self, out: list[RtpPacket]) -> None:
        while self._next in self._held:
            packet, _ = self._held.pop(self._next)
            self._release(packet, out)

    def _release(self, packet: RtpPacket, out: list[RtpPacket]) -> None:
        if self._broken:
            self.gaps.append(len(out))
            self._broken = False
        out.append(packet)
        self._next = (packet.sequence_number + 1) & _MOD

    def _start(self, seq: int) -> None:
        self._next = seq
        self._top = (seq - 1) & _MOD

    def _restart(self, out: list[RtpPacket]) -> None:
        self._reset(out)
        self.restarts += 1

    def _reset(self, out: list[RtpPacket]) -> None:
        """Release what is held and follow the next packet as a new sequence."""
        while self._held:
            self._skip(out)
        self._stray = None
        self._next = None
        self._broken = True
