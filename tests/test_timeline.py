"""The hub's timeline: a source clock that jumps back continues forward, tracks kept in sync."""

from __future__ import annotations

from fractions import Fraction

from gateway.hub.timeline import Timeline
from gateway.media import Frame, Track

V = Track(kind="video", codec="h264")
A = Track(kind="audio", codec="aac", sample_rate=48000, channels=2)
MS = Fraction(1, 1000)


def _frames(start_ms: float, seconds: float) -> list[Frame]:
    """Interleaved 30 fps video (every 10th a keyframe) and 48 kHz AAC (1024 samples), by dts."""
    out: list[tuple[float, Frame]] = []
    for i in range(int(seconds * 30)):
        t = round(start_ms + i * 1000 / 30)
        out.append((t, Frame(V, b"v", t, t, MS, i % 10 == 0)))
    for i in range(int(seconds * 48000 / 1024)):
        t = round(start_ms + i * 1024 / 48)
        out.append((t + 0.5, Frame(A, b"a", t, t, MS, True)))  # audio after video at equal times
    return [f for _, f in sorted(out, key=lambda x: x[0])]


def _run(tl: Timeline, frames: list[Frame]) -> dict[str, list[int]]:
    got: dict[str, list[int]] = {"video": [], "audio": []}
    for f in frames:
        placed = tl.place(f)
        if placed is not None:
            got[f.track.kind].append(placed.dts)
    return got


def test_a_steady_clock_is_left_alone() -> None:
    tl = Timeline("t")
    frames = _frames(1400, 3)
    assert all(tl.place(f) is f for f in frames)  # the same objects: nothing re-stamped
    assert tl.jumps == 0


def test_a_clock_that_jumps_back_continues_one_frame_later_for_every_track() -> None:
    tl = Timeline("t")
    got = _run(tl, _frames(5000, 4) + _frames(1000, 4))
    assert tl.jumps == 1
    for kind, dts in got.items():
        assert all(b > a for a, b in zip(dts, dts[1:], strict=False)), kind
    v, a = got["video"], got["audio"]
    assert v[120] - v[119] in (33, 34)  # video's next frame one frame interval after its last
    # both tracks shifted alike: their ends stay as close as the source's were
    src = _frames(1000, 4)
    src_v = [f.dts for f in src if f.track is V][-1]
    src_a = [f.dts for f in src if f.track is A][-1]
    assert v[-1] - a[-1] == src_v - src_a
    assert abs(v[-1] - (5000 + 3967 + 33 + 3967)) <= 1
    # audio that overlapped video's splice point was dropped, not squeezed in
    assert len(a) >= 2 * 187 - 4 and tl.dropped <= 4


def test_a_track_that_jumps_alone_is_re_based_by_itself() -> None:
    tl = Timeline("t")
    v = [Frame(V, b"v", t, t, MS, True) for t in (0, 33, 66, 100)]
    a = [Frame(A, b"a", t, t, MS, True) for t in (0, 21, 42, 63)]
    for f in (v[0], a[0], v[1], a[1], v[2], a[2], v[3], a[3]):
        tl.place(f)
    back = tl.place(Frame(A, b"a", -5000, -5000, MS, True))  # audio alone goes back 5 s
    assert back is not None and back.dts == 63 + 21
    nxt = tl.place(Frame(V, b"v", 133, 133, MS, False))  # video unaffected
    assert nxt is not None and nxt.dts == 133


def test_forward_gaps_and_small_jitter_pass_unchanged() -> None:
    tl = Timeline("t")
    frames = [Frame(A, b"a", t, t, MS, True) for t in (0, 21, 42, 4042, 4063, 4050, 4084)]
    assert all(tl.place(f) is f for f in frames)  # a 4 s pause, then 13 ms of jitter back


def test_b_frames_keep_their_pts_dts_distance_and_a_new_time_base_gets_the_same_shift() -> None:
    tl = Timeline("t")
    tb = Fraction(1, 90000)
    tl.place(Frame(V, b"v", 906000, 900000, tb, True))  # at 10 s
    f = tl.place(Frame(V, b"v", 9000, 3000, tb, True))  # back to 1/30 s: re-based
    assert f is not None and (f.dts, f.pts) == (903000, 909000)  # one frame (default 1/30 s) on
    g = tl.place(Frame(V, b"v", 40, 40, MS, False))  # the same shift in another time base
    assert g is not None and g.dts == 10040 - 33 + 33  # 40 ms + 10 s - 33.3 ms + 33.3 ms
