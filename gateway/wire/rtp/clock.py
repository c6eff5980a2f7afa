"""One clock for the tracks of an RTP session: each track's RTP timestamps placed on session
seconds, synced through RTCP sender reports (the publisher's NTP clock), sans I/O."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

__all__ = ["RtpClock"]

SR_WINDOW = 8  # sender reports whose earliest estimate anchors a track (~8 s of reports)
RESYNC_TOLERANCE = 0.010  # s a track's anchor may move before the track is re-anchored
CLOCK_STEP = 0.5  # s: an estimate this far off is a new clock relation, not a late packet


@dataclass(slots=True)
class _TrackClock:
    rate: int
    last_rtp: int | None = None
    ext: int = 0  # unwrapped RTP timestamp of last_rtp
    offset: float | None = None  # session seconds at ext == 0
    ntp_zero: float | None = None  # publisher NTP seconds at ext == 0 (from sender reports)
    estimates: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=SR_WINDOW))

    def unwrap(self, rtp: int) -> int:
        if self.last_rtp is None:
            self.last_rtp, self.ext = rtp, rtp
            return rtp
        delta = (rtp - self.last_rtp) & 0xFFFFFFFF
        if delta >= 1 << 31:
            delta -= 1 << 32
        return self.ext + delta

    def advance(self, rtp: int) -> int:
        ext = self.unwrap(rtp)
        if ext > self.ext or self.last_rtp is None:
            self.last_rtp, self.ext = rtp & 0xFFFFFFFF, ext
        return ext


class RtpClock:
    """Maps each track's RTP timestamps onto one session clock (seconds since the first frame).

    ``base`` is the publisher NTP time of session time 0, fixed by the first sender report so
    that the track it belongs to continues without a jump; later reports (of any track)
    re-anchor that track against the same base.

    A report pairs a packet's RTP time with the NTP time it was *sent* (aiortc) or captured,
    so a packet sent late makes its report's estimate late by as much. Each track keeps the
    earliest estimate of its last ``SR_WINDOW`` reports (the least delayed), and moves only
    when that differs by ``RESYNC_TOLERANCE`` or more: re-anchoring on every report made the
    clock jump back and forth by the sender's jitter (tens of ms on a loaded machine), and a
    jump back of a frame interval made frames share a millisecond in FLV. An estimate
    ``CLOCK_STEP`` off is a step of the sender's clocks and starts the window afresh.
    """

    def __init__(self) -> None:
        self.t0: float | None = None
        self.base: float | None = None
        self.tracks: dict[str, _TrackClock] = {}
        self.synced: set[str] = set()

    def add(self, kind: str, rate: int) -> None:
        self.tracks[kind] = _TrackClock(rate)

    def seconds(self, kind: str, rtp: int, arrival: float) -> float:
        c = self.tracks[kind]
        ext = c.advance(rtp)
        if self.t0 is None:
            self.t0 = arrival
        if c.offset is None:
            c.offset = (arrival - self.t0) - ext / c.rate
        return ext / c.rate + c.offset

    def sender_report(self, kind: str, ntp: int, rtp: int) -> None:
        c = self.tracks.get(kind)
        if c is None or c.last_rtp is None or c.offset is None:
            return  # before its first frame the report has nothing to anchor
        estimate = ntp / (1 << 32) - c.unwrap(rtp) / c.rate
        if c.ntp_zero is not None and abs(estimate - c.ntp_zero) >= CLOCK_STEP:
            c.estimates.clear()  # the sender's clocks stepped: older reports no longer apply
        c.estimates.append(estimate)
        ntp_zero = min(c.estimates)
        self.synced.add(kind)
        if c.ntp_zero is not None and abs(ntp_zero - c.ntp_zero) < RESYNC_TOLERANCE:
            return
        c.ntp_zero = ntp_zero
        if self.base is None:
            self.base = ntp_zero - c.offset
        c.offset = ntp_zero - self.base
