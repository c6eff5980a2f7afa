"""The RTP jitter buffer (gateway.wire.rtp.jitter): reordering, loss given up by time and by
count, wrap, duplicates, restarts, SSRC lock and switch, and properties over any arrival
order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.wire.rtp.jitter import JitterBuffer
from gateway.wire.rtp.packet import RtpPacket


def pkt(seq: int, ssrc: int = 0x1234, index: int | None = None) -> RtpPacket:
    """A packet; ``timestamp`` is its index in the sent order (for ordering checks)."""
    return RtpPacket(payload_type=96, sequence_number=seq & 0xFFFF,
                     timestamp=seq if index is None else index, ssrc=ssrc)


def seqs(packets: list[RtpPacket]) -> list[int]:
    return [p.sequence_number for p in packets]


def test_in_order_passes_through_at_once() -> None:
    jb = JitterBuffer()
    for seq in range(100, 110):
        assert seqs(jb.push(pkt(seq), 0.0)) == [seq]
        assert jb.gaps == []
        assert jb.missing() == []
    assert jb.held == 0
    assert jb.flush() == []
    assert (jb.lost, jb.late, jb.duplicates, jb.restarts) == (0, 0, 0, 0)


def test_swapped_pair_is_put_back_in_order() -> None:
    jb = JitterBuffer()
    assert seqs(jb.push(pkt(1), 0.0)) == [1]
    assert jb.push(pkt(3), 0.01) == []
    assert jb.missing() == [2]
    assert seqs(jb.push(pkt(2), 0.02)) == [2, 3]
    assert jb.gaps == [] and jb.lost == 0 and jb.missing() == []


def test_hole_filled_late_within_max_delay() -> None:
    jb = JitterBuffer(max_delay=0.2)
    jb.push(pkt(10), 0.0)
    for i, seq in enumerate(range(12, 16)):
        assert jb.push(pkt(seq), 0.01 * (i + 1)) == []
    assert jb.missing() == [11]
    assert jb.poll(0.19) == []
    assert seqs(jb.push(pkt(11), 0.195)) == [11, 12, 13, 14, 15]
    assert jb.gaps == [] and jb.lost == 0


def test_hole_never_filled_is_given_up_by_poll() -> None:
    jb = JitterBuffer(max_delay=0.2)
    jb.push(pkt(10), 0.0)
    jb.push(pkt(13), 0.05)  # 11 and 12 are missing
    jb.push(pkt(14), 0.10)
    assert jb.missing() == [11, 12]
    assert jb.poll(0.24) == []
    out = jb.poll(0.25)
    assert seqs(out) == [13, 14]
    assert jb.gaps == [0]  # 13 follows a loss: drop to the next key frame, send a PLI
    assert jb.lost == 2
    assert jb.missing() == []
    assert jb.late == 0
    jb.push(pkt(11), 0.3)  # too late now
    assert jb.late == 1
    assert seqs(jb.push(pkt(15), 0.3)) == [15]
    assert jb.gaps == []


def test_expired_gap_is_also_released_by_the_next_push() -> None:
    jb = JitterBuffer(max_delay=0.2)
    jb.push(pkt(1), 0.0)
    jb.push(pkt(3), 0.0)
    out = jb.push(pkt(4), 0.5)
    assert seqs(out) == [3, 4] and jb.gaps == [0] and jb.lost == 1


def test_two_gaps_in_one_release() -> None:
    jb = JitterBuffer(max_delay=0.2)
    jb.push(pkt(1), 0.0)
    for seq in (3, 4, 6, 7):
        jb.push(pkt(seq), 0.0)
    assert jb.missing() == [2, 5]
    out = jb.poll(1.0)
    assert seqs(out) == [3, 4, 6, 7]
    assert jb.gaps == [0, 2]
    assert jb.lost == 2


def test_max_packets_forces_release() -> None:
    jb = JitterBuffer(max_delay=10.0, max_packets=4)
    jb.push(pkt(0), 0.0)
    for seq in (2, 3, 4, 5):  # 1 is missing: four held, the most allowed
        assert jb.push(pkt(seq), 0.0) == []
    assert jb.held == 4
    out = jb.push(pkt(6), 0.0)
    assert seqs(out) == [2, 3, 4, 5, 6]
    assert jb.gaps == [0] and jb.lost == 1 and jb.held == 0
    assert jb.restarts == 0


def test_window_slides_but_keeps_awaiting_recent_holes() -> None:
    jb = JitterBuffer(max_delay=10.0, max_packets=4)
    jb.push(pkt(0), 0.0)
    jb.push(pkt(2), 0.0)
    jb.push(pkt(3), 0.0)
    out = jb.push(pkt(7), 0.0)  # 1 is given up; 4..6 still fit in the window after 3
    assert seqs(out) == [2, 3]
    assert jb.missing() == [4, 5, 6]
    assert seqs(jb.push(pkt(4), 0.0)) == [4]
    assert jb.gaps == []


def test_wrap_around_with_reordering() -> None:
    jb = JitterBuffer()
    arrival = [65533, 65535, 65534, 1, 0, 3, 2, 4]
    out = [p for seq in arrival for p in jb.push(pkt(seq), 0.0)]
    assert seqs(out) == [65533, 65534, 65535, 0, 1, 2, 3, 4]
    assert jb.lost == 0 and jb.late == 0 and jb.held == 0


def test_wrap_around_loss_given_up() -> None:
    jb = JitterBuffer()
    jb.push(pkt(65534), 0.0)
    jb.push(pkt(1), 0.0)
    assert jb.missing() == [65535, 0]
    assert seqs(jb.flush()) == [1]
    assert jb.gaps == [0] and jb.lost == 2


def test_duplicates_and_late_packets_are_dropped() -> None:
    jb = JitterBuffer()
    jb.push(pkt(5), 0.0)
    jb.push(pkt(7), 0.0)
    assert jb.push(pkt(7), 0.0) == []  # held already
    assert jb.duplicates == 1
    assert seqs(jb.push(pkt(6), 0.0)) == [6, 7]
    assert jb.push(pkt(6), 0.0) == []  # released already
    assert jb.push(pkt(4), 0.0) == []  # before the first
    assert jb.late == 2
    assert seqs(jb.push(pkt(8), 0.0)) == [8]


def test_sender_restart_jump_resets_instead_of_waiting() -> None:
    jb = JitterBuffer(max_delay=10.0, max_packets=16)
    jb.push(pkt(100), 0.0)
    jb.push(pkt(102), 0.0)  # 101 missing
    out = jb.push(pkt(30000), 0.0)
    assert seqs(out) == [102, 30000]  # what was held, then the new sequence at once
    assert jb.gaps == [0, 1]
    assert jb.restarts == 1 and jb.lost == 1 and jb.held == 0
    assert seqs(jb.push(pkt(30001), 0.0)) == [30001]
    jb.push(pkt(101), 0.0)  # far behind the new sequence: dropped
    assert seqs(jb.push(pkt(30002), 0.0)) == [30002]
    assert jb.late == 1 and jb.restarts == 1


def test_sender_restart_backwards_is_followed_after_two_packets() -> None:
    jb = JitterBuffer(max_packets=16)
    for seq in range(5000, 5010):
        jb.push(pkt(seq), 0.0)
    assert jb.push(pkt(7), 0.0) == []  # far behind: a stray, or a restart?
    assert jb.push(pkt(5005), 0.0) == []  # a late packet does not decide
    assert seqs(jb.push(pkt(8), 0.0)) == [7, 8]
    assert jb.gaps == [0] and jb.restarts == 1
    assert seqs(jb.push(pkt(9), 0.0)) == [9]
    assert jb.late == 1


def test_a_single_stray_far_behind_is_dropped() -> None:
    jb = JitterBuffer(max_packets=16)
    jb.push(pkt(5000), 0.0)
    assert jb.push(pkt(7), 0.0) == []
    assert seqs(jb.push(pkt(5001), 0.0)) == [5001]
    assert jb.late == 1 and jb.restarts == 0


def test_ssrc_is_locked_then_switched_after_silence() -> None:
    jb = JitterBuffer(ssrc_switch_after=3.0)
    assert seqs(jb.push(pkt(10, ssrc=1), 0.0)) == [10]
    assert jb.push(pkt(500, ssrc=2), 0.5) == []
    assert seqs(jb.push(pkt(11, ssrc=1), 1.0)) == [11]
    assert jb.push(pkt(501, ssrc=2), 3.9) == []  # 1 was heard 2.9 s ago
    assert jb.foreign_ssrc == 2
    jb.push(pkt(13, ssrc=1), 1.5)  # held: 12 is missing
    out = jb.push(pkt(502, ssrc=2), 4.5)  # 1 silent for 3 s: follow 2
    assert [(p.ssrc, p.sequence_number) for p in out] == [(1, 13), (2, 502)]
    assert jb.gaps == [0, 1]
    assert jb.ssrc_changes == 1 and jb.lost == 1
    assert jb.push(pkt(14, ssrc=1), 4.6) == []  # now 1 is the foreign one
    assert jb.foreign_ssrc == 3
    assert seqs(jb.push(pkt(503, ssrc=2), 4.7)) == [503]


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        JitterBuffer(max_packets=0)
    with pytest.raises(ValueError):
        JitterBuffer(max_delay=-1.0)


# --------------------------------------------------------------------------- properties

starts = st.one_of(st.integers(65400, 65535), st.integers(0, 65535))


def _check_order(released: list[RtpPacket]) -> None:
    order = [p.timestamp for p in released]  # the sent index: unwrapped sequence order
    assert all(a < b for a, b in zip(order, order[1:], strict=False)), order


@settings(max_examples=200, deadline=None)
@given(start=starts, data=st.data())
def test_any_permutation_with_drops_releases_in_order_once(start: int,
                                                           data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 80))
    order = data.draw(st.permutations(range(n)))
    drops = data.draw(st.sets(st.integers(0, n - 1), max_size=n))
    kept = [i for i in order if i not in drops]
    steps = data.draw(st.lists(st.floats(0.0, 0.15), min_size=len(kept), max_size=len(kept)))
    jb = JitterBuffer(max_delay=0.2, max_packets=data.draw(st.integers(n, 2 * n)))
    released: list[RtpPacket] = []
    now = 0.0
    for i, step in zip(kept, steps, strict=True):
        now += step
        released += jb.push(pkt(start + i, index=i), now)
        assert len(jb.missing()) <= jb.max_packets and jb.held <= jb.max_packets
        if step > 0.1:
            released += jb.poll(now)
    released += jb.flush()
    _check_order(released)
    assert len(released) + jb.late == len(kept)
    assert jb.duplicates == 0 and jb.restarts == 0


def _block_shuffle(data: st.DataObject, n: int, window: int) -> list[int]:
    order: list[int] = []
    for first in range(0, n, window):
        order += data.draw(st.permutations(range(first, min(first + window, n))))
    return order


@settings(max_examples=200, deadline=None)
@given(start=starts, data=st.data())
def test_bounded_shuffle_with_drops_small_buffer(start: int, data: st.DataObject) -> None:
    window = data.draw(st.integers(1, 8))
    n = data.draw(st.integers(1, 150))
    drops = data.draw(st.sets(st.integers(0, n - 1), max_size=n))
    kept = [i for i in _block_shuffle(data, n, window) if i not in drops]
    steps = data.draw(st.lists(st.sampled_from([0.0, 0.001, 0.03, 0.1]), min_size=len(kept),
                               max_size=len(kept)))
    jb = JitterBuffer(max_delay=0.05, max_packets=data.draw(st.integers(window + 1, 20)))
    released: list[RtpPacket] = []
    now = 0.0
    for i, step in zip(kept, steps, strict=True):
        now += step
        released += jb.push(pkt(start + i, index=i), now)
        assert jb.held <= jb.max_packets and len(jb.missing()) <= jb.max_packets
    released += jb.flush()
    _check_order(released)
    assert len(released) + jb.late == len(kept)


@settings(max_examples=200, deadline=None)
@given(start=starts, data=st.data())
def test_no_drops_within_limits_releases_everything_once(start: int,
                                                         data: st.DataObject) -> None:
    max_packets = data.draw(st.integers(2, 32))
    window = data.draw(st.integers(1, max_packets - 1))
    n = data.draw(st.integers(1, 120))
    order = _block_shuffle(data, n, window)
    order.remove(0)  # the first packet received starts the sequence: those before it are late
    order.insert(0, 0)
    jb = JitterBuffer(max_delay=0.2, max_packets=max_packets)
    released: list[RtpPacket] = []
    for k, i in enumerate(order):
        now = 0.19 * k / n  # every packet within max_delay of every other
        released += jb.push(pkt(start + i, index=i), now)
        released += jb.poll(now)
    released += jb.flush()
    assert [p.timestamp for p in released] == list(range(n))
    assert (jb.lost, jb.late, jb.duplicates, jb.restarts) == (0, 0, 0, 0)


@settings(max_examples=200, deadline=None)
@given(arrivals=st.lists(st.tuples(st.integers(0, 65535), st.integers(1, 3),
                                   st.floats(0.0, 2.0)), max_size=60),
       max_packets=st.integers(1, 8))
def test_any_input_stays_bounded_and_releases_each_packet_at_most_once(
        arrivals: list[tuple[int, int, float]], max_packets: int) -> None:
    jb = JitterBuffer(max_delay=0.2, max_packets=max_packets)
    released: list[RtpPacket] = []
    now = 0.0
    for k, (seq, ssrc, step) in enumerate(arrivals):
        now += step
        out = jb.push(pkt(seq, ssrc=ssrc, index=k), now)
        assert all(0 <= g < len(out) for g in jb.gaps)
        assert jb.held <= max_packets and len(jb.missing()) <= max_packets
        released += out
    released += jb.flush()
    assert jb.held == 0 and jb.missing() == []
    indexes = [p.timestamp for p in released]
    assert len(indexes) == len(set(indexes))
