"""The transcode child's work order and the latency statistics, without processes or codecs."""

from __future__ import annotations

import logging
from collections import Counter
from fractions import Fraction

from gateway.media import Frame, Track
from gateway.transcode import child as child_mod
from gateway.transcode import messages
from gateway.transcode.step import Admission, Latency, histogram_percentile


def _order(msgs: list[tuple[int, int, bytes]]) -> list[tuple[int, int]]:
    work = child_mod._Schedule()
    for kind, sid, payload in msgs:
        work.add(kind, sid, payload, 0, len(payload), 0.0)
    out = []
    while work:
        k, sid, *_ = work.take()
        out.append((k, sid))
    return out


def test_audio_steps_go_first_other_work_in_arrival_order() -> None:
    O, F, T, C = messages.OPEN, messages.FRAME, messages.TRACK, messages.CLOSE
    audio, video = b"a...", b"-..."
    msgs = [(O, 1, video), (O, 2, audio), (F, 1, b"x"), (O, 3, video), (F, 3, b"x"),
            (T, 2, b"t"), (F, 2, b"x"), (F, 1, b"x"), (F, 2, b"x"), (C, 2, b"")]
    # every message of the audio step keeps its own order, ahead of the video backlog
    assert _order(msgs) == [(O, 2), (T, 2), (F, 2), (F, 2), (C, 2),
                            (O, 1), (F, 1), (O, 3), (F, 3), (F, 1)]
    # a step id is no longer audio once closed; unknown steps stay in arrival order
    assert _order([(O, 2, audio), (C, 2, b""), (F, 1, b"x"), (F, 2, b"x")]) == [
        (O, 2), (C, 2), (F, 1), (F, 2)]


def test_audio_results_ride_with_the_next_video_result() -> None:
    sends: list[list[bytes]] = []
    held = child_mod._Held(sends.append, coalesce=True)
    held.add([b"a1"], fast=True)
    held.add([], fast=True)  # e.g. an audio track message: nothing to send
    held.add([b"a2"], fast=True)
    assert sends == [] and held
    held.add([b"v1", b"v1-data"], fast=False)  # a video result: one send, in coding order
    assert sends == [[b"a1", b"a2", b"v1", b"v1-data"]] and not held
    held.add([b"a3"], fast=True)
    held.flush()  # the thread has nothing else to do: nothing waits for a video frame
    assert sends[-1] == [b"a3"]
    held.flush()
    assert len(sends) == 2  # nothing held, nothing sent
    held.add([b"a4"], fast=True)
    held._since -= child_mod.HOLD_MAX * 2  # held long enough: the next add sends
    held.add([b"a5"], fast=True)
    assert sends[-1] == [b"a4", b"a5"]
    # codec threads that share steps send every result at once (no overtaking)
    solo: list[list[bytes]] = []
    threaded = child_mod._Held(solo.append, coalesce=False)
    threaded.add([b"a1"], fast=True)
    threaded.add([b"v1"], fast=False)
    assert solo == [[b"a1"], [b"v1"]]


def test_latency_histogram_gives_window_percentiles() -> None:
    lat = Latency(recent=10)
    for ms in [500.0] * 50:  # a slow start ...
        lat.add(ms)
    before = Counter(lat.histogram())
    for ms in [2.2] * 98 + [9.5, 31.0]:  # ... then a good window
        lat.add(ms)
    after = Counter(lat.histogram())
    window = after - before
    assert sum(window.values()) == 100
    assert histogram_percentile(window, 0.5) == 3  # bucket upper bounds: never optimistic
    assert histogram_percentile(window, 0.99) == 10
    assert histogram_percentile(after, 0.99) == 500
    assert len(lat) == 10 and lat.percentile(0.5) == 2.2  # the recent view forgets
    lat.add(20000.0)
    assert "inf" in lat.histogram() and histogram_percentile(lat.histogram(), 1.0) == float("inf")
    assert histogram_percentile({}, 0.5) is None


def test_a_busy_step_is_skipped_and_each_step_keeps_its_order() -> None:
    O, F = messages.OPEN, messages.FRAME
    work = child_mod._Schedule()
    for kind, sid, payload in [(O, 1, b"-"), (O, 2, b"-"), (O, 3, b"a"), (F, 1, b"1"),
                               (F, 1, b"2"), (F, 2, b"1"), (F, 3, b"1"), (F, 2, b"2")]:
        work.add(kind, sid, payload, 0, len(payload), 0.0)

    def take(busy: set[int]) -> tuple[int, int, bytes] | None:
        m = work.take(busy)
        return None if m is None else (m[0], m[1], m[2])

    assert take({3}) == (O, 1, b"-")  # audio first, unless its step is being coded
    assert take({1}) == (O, 3, b"a")
    assert take({1, 3}) == (O, 2, b"-")  # step 1's messages wait, step 2 overtakes them
    assert take({1, 2}) == (F, 3, b"1")
    assert take({1, 2, 3}) is None
    assert take({2}) == (F, 1, b"1")  # then the oldest of step 1, in its order
    assert take({1}) == (F, 2, b"1")
    assert work.oldest(set()) == 0.0 and work.oldest({1, 2}) is None
    assert [take(set()) for _ in range(3)] == [(F, 1, b"2"), (F, 2, b"2"), None]


def test_a_start_up_replay_is_not_backlog_but_stays_bounded() -> None:
    """A variant starts by feeding its GOP cache at once: those frames do not fill the queue
    bound for the live frames behind them, but only ``limit`` of them are let off."""
    track = Track(kind="video", codec="h264")
    key, inter = (Frame(track, b"", 0, 0, Fraction(1, 1000), k) for k in (True, False))
    a = Admission("t", "video", 5, logging.getLogger("t"))
    queued = 0
    for i in range(7):  # a GOP of 7: 5 let off, 2 count
        assert a.admit(key if i == 0 else inter, queued, replay=True)
        queued += 1
    for _ in range(3):  # live: 2 + 3 = 5 counted
        assert a.admit(inter, queued)
        queued += 1
    assert not a.admit(inter, queued) and a.dropped == 1
    a.need_key = False  # (what a keyframe would do) so the bound alone decides below
    queued -= 7  # the worker coded the replayed frames, the oldest ones
    assert a.admit(inter, queued)  # 3 queued: room again, under the plain bound
    queued += 1
    assert a.admit(inter, queued) and not a.admit(inter, queued + 1)
