"""Hub and fan-out behaviour: GOP cache, shared bytes, bounded viewers, one publisher per key."""

from __future__ import annotations

import pytest

from gateway.hub.fanout import Fanout, Limits, Viewer
from gateway.hub.stream import Hub, StreamBusy, StreamNotFound
from gateway.media import Frame, StreamInfo, Track
from gateway.web.framing import http_chunk, ws_binary


class FakeTransport:
    """A peer whose socket buffer we control: ``backlog`` is what it has not yet read."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.backlog = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return self.backlog

    def is_closing(self) -> bool:
        return self.closing


def viewer(t: FakeTransport, ends: list[str]) -> Viewer:
    return Viewer(t, "test", ends.append)


def test_batches_are_shared_objects_not_copies() -> None:
    f = Fanout("s", limits=Limits(batch_interval=0))
    a, b = FakeTransport(), FakeTransport()
    f.add(viewer(a, []))
    f.add(viewer(b, []))
    f.push(b"key", keyframe=True, flush=True)
    f.push(b"delta", flush=True)
    assert a.writes[1:] == [b"key", b"delta"]
    assert all(x is y for x, y in zip(a.writes[1:], b.writes[1:], strict=False))


def test_new_viewer_gets_header_and_gop_from_latest_keyframe() -> None:
    f = Fanout("s", limits=Limits(batch_interval=0))
    f.set_header(b"H")
    for i in range(3):
        f.push(b"K%d" % i, keyframe=True, flush=True)
        f.push(b"d%d" % i, flush=True)
    t = FakeTransport()
    f.add(viewer(t, []))
    assert t.writes == [b"HK2d2"]


def test_framing_applied_once_per_batch() -> None:
    assert http_chunk(b"abc") == b"3\r\nabc\r\n"
    assert ws_binary(b"x" * 5) == b"\x82\x05xxxxx"
    assert ws_binary(b"x" * 300)[:4] == b"\x82\x7e\x01\x2c"
    assert ws_binary(b"x" * 70000)[:2] == b"\x82\x7f"
    f = Fanout("s", framing=http_chunk, limits=Limits(batch_interval=1))
    f.add(viewer(FakeTransport(), []))
    f.push(b"ab", keyframe=True)
    f.push(b"cd")
    f.flush()
    assert f.initial() == b"4\r\nabcd\r\n"


def test_slow_viewer_drops_to_next_keyframe_without_touching_others() -> None:
    f = Fanout("s", limits=Limits(soft_limit=10, hard_limit=1000, batch_interval=0))
    slow, fast = FakeTransport(), FakeTransport()
    ends: list[str] = []
    f.add(viewer(slow, ends))
    f.add(viewer(fast, []))
    f.push(b"K1", keyframe=True, flush=True)
    slow.backlog = 50  # stops reading
    f.push(b"d1", flush=True)
    f.push(b"d2", flush=True)
    slow.backlog = 0  # catches up: must resume at a keyframe, not mid-GOP
    f.push(b"d3", flush=True)
    f.push(b"K2", keyframe=True, flush=True)
    f.push(b"d4", flush=True)
    assert slow.writes[1:] == [b"K1", b"K2", b"d4"]
    assert fast.writes[1:] == [b"K1", b"d1", b"d2", b"d3", b"K2", b"d4"]
    assert not ends


def test_persistently_slow_viewer_is_disconnected() -> None:
    f = Fanout("s", limits=Limits(soft_limit=10, hard_limit=100, batch_interval=0))
    t = FakeTransport()
    ends: list[str] = []
    f.add(viewer(t, ends))
    f.push(b"K", keyframe=True, flush=True)
    t.backlog = 500
    f.push(b"K", keyframe=True, flush=True)
    assert ends and "disconnected" in ends[0]
    assert not f.viewers


def test_viewer_behind_too_long_is_disconnected() -> None:
    f = Fanout("s", limits=Limits(soft_limit=10, hard_limit=10**9, max_behind=0.0, batch_interval=0))
    t = FakeTransport()
    ends: list[str] = []
    f.add(viewer(t, ends))
    f.push(b"K", keyframe=True, flush=True)
    t.backlog = 50
    f.push(b"d", flush=True)  # now waiting for a keyframe
    f.push(b"d", flush=True)  # still behind, past max_behind
    assert ends and "behind" in ends[0]


def test_gop_cache_is_bounded() -> None:
    f = Fanout("s", limits=Limits(max_gop_bytes=10, batch_interval=0))
    f.set_header(b"H")
    f.push(b"K" * 5, keyframe=True, flush=True)
    f.push(b"d" * 8, flush=True)  # past the bound: cache dropped
    assert f.initial() == b"H"
    t = FakeTransport()
    f.add(viewer(t, []))
    f.push(b"d", flush=True)
    f.set_header(b"H2")  # e.g. a codec configuration that arrived while it waited
    f.push(b"K", keyframe=True, flush=True)
    assert t.writes == [b"H2", b"K"]  # joined at the next keyframe, never mid-GOP


def _tracks() -> tuple[Track, Track]:
    return Track("video", "h264", b"cfg", width=2, height=2), Track("audio", "aac", b"\x12\x10")


def test_hub_one_publisher_per_key_and_not_found() -> None:
    hub = Hub()
    s = hub.publish("live/a", StreamInfo("rtmp"), "p1")
    with pytest.raises(StreamBusy, match="already being published"):
        hub.publish("live/a", StreamInfo("rtmp"), "p2")
    with pytest.raises(StreamNotFound):
        hub.get("live/b")
    hub.unpublish(s)
    with pytest.raises(StreamNotFound):
        hub.get("live/a")
    hub.publish("live/a", StreamInfo("rtmp"), "p3")  # free again


def test_stream_frame_gop_starts_at_latest_video_keyframe() -> None:
    hub = Hub()
    s = hub.publish("live/a", StreamInfo("rtmp"), "p")
    v, a = _tracks()
    s.set_track(v)
    s.set_track(a)
    s.push(Frame(a, b"a0", 0, 0, keyframe=True))  # before any video keyframe: not cached
    assert s.gop == []
    s.push(Frame(v, b"k", 0, 0, keyframe=True))
    s.push(Frame(a, b"a1", 10, 10, keyframe=True))
    s.push(Frame(v, b"p", 33, 33))
    s.push(Frame(v, b"k2", 66, 66, keyframe=True))
    assert [f.data for f in s.gop] == [b"k2"]


def test_sink_shared_and_dropped() -> None:
    hub = Hub()
    s = hub.publish("live/a", StreamInfo("rtmp"), "p")
    made: list[object] = []

    class Sink:
        def __init__(self, stream: object) -> None:
            made.append(self)
            self.ended = ""

        def on_track(self, track: Track) -> None: ...
        def on_metadata(self, metadata: dict[str, object]) -> None: ...
        def on_frame(self, frame: Frame) -> None: ...

        def on_end(self, reason: str) -> None:
            self.ended = reason

    x = s.sink("k", Sink)
    y = s.sink("k", Sink)
    assert x is y and len(made) == 1
    hub.unpublish(s, "bye")
    assert x.ended == "bye"


def test_transport_closed_under_us_removes_only_that_viewer() -> None:
    class Closed(FakeTransport):
        def write(self, data: bytes) -> None:
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")

    f = Fanout("s", limits=Limits(batch_interval=0))
    bad, good = Closed(), FakeTransport()
    ends: list[str] = []
    f.add(viewer(bad, ends), send_initial=False)
    f.add(viewer(good, []))
    f.push(b"K", keyframe=True, flush=True)  # must not raise into the publisher
    f.push(b"d", flush=True)
    assert ends and ends[0].startswith("connection closed")
    assert good.writes[1:] == [b"K", b"d"]


def test_failing_sink_is_removed_publisher_unharmed() -> None:
    hub = Hub()
    s = hub.publish("live/a", StreamInfo("rtmp"), "p")
    v, _ = _tracks()
    s.set_track(v)
    got: list[bytes] = []

    class Bad:
        def on_track(self, track: Track) -> None: ...
        def on_metadata(self, metadata: dict[str, object]) -> None: ...
        def on_frame(self, frame: Frame) -> None:
            raise ValueError("boom")
        def on_end(self, reason: str) -> None: ...

    class Good(Bad):
        def on_frame(self, frame: Frame) -> None:
            got.append(frame.data)

    s.sink("bad", lambda _s: Bad())
    s.sink("good", lambda _s: Good())
    s.push(Frame(v, b"k", 0, 0, keyframe=True))
    s.push(Frame(v, b"p", 33, 33))
    assert got == [b"k", b"p"] and "bad" not in s.sinks


def test_wait_settled_waits_for_both_kinds_and_says_what_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    """A viewer's plan waits until video and audio are known (or one of them for ``SETTLE``);
    a stream that ended, or that still has no track, is an error with the reason."""
    import asyncio

    from gateway.hub import stream as stream_mod

    monkeypatch.setattr(stream_mod, "SETTLE", 0.2)

    async def run() -> None:
        hub = Hub()
        s = hub.publish("live/s", StreamInfo("rtmp"), "test")
        with pytest.raises(stream_mod.NoMediaYet, match="live/s has no media yet"):
            await s.wait_settled(0.1)
        s.set_track(Track(kind="video", codec="h264"))
        assert not s.settled()  # one kind, announced just now: the other may follow
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, s.set_track, Track(kind="audio", codec="aac"))
        t0 = loop.time()
        await s.wait_settled(2.0)
        assert s.settled() and loop.time() - t0 < 0.15  # returned with the second kind
        video_only = hub.publish("live/v", StreamInfo("rtmp"), "test")
        video_only.set_track(Track(kind="video", codec="h264"))
        t0 = loop.time()
        await video_only.wait_settled(2.0)
        assert 0.15 < loop.time() - t0 < 1.0  # one kind: settled after SETTLE
        hub.unpublish(s, "gone")
        with pytest.raises(stream_mod.HubError, match="live/s ended"):
            await s.wait_settled(0.1)

    asyncio.run(run())


def test_a_viewer_waits_for_an_announced_kind_and_not_for_an_unannounced_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A publisher that announces its kinds (a TS's PMT) holds a viewer's plan until each is
    known, up to ``SETTLE_ANNOUNCED`` after the first track, past ``SETTLE`` and past the wait's
    own timeout: a TS publisher that started mid-GOP has its video seconds after the audio, and
    a browser's FLV player cannot take video that starts after its audio. One announced kind
    alone settles at once."""
    import asyncio

    from gateway.hub import stream as stream_mod

    monkeypatch.setattr(stream_mod, "SETTLE", 0.1)
    monkeypatch.setattr(stream_mod, "SETTLE_ANNOUNCED", 0.6)

    async def run() -> None:
        hub = Hub()
        loop = asyncio.get_running_loop()
        s = hub.publish("live/ts", StreamInfo("h5"), "test")
        s.expect(frozenset({"audio", "video"}))
        s.set_track(Track(kind="audio", codec="mp2"))
        loop.call_later(0.3, s.set_track, Track(kind="video", codec="h264"))
        t0 = loop.time()
        await s.wait_settled(0.05)
        assert "video" in s.tracks and 0.25 < loop.time() - t0 < 0.5  # waited for the video
        never = hub.publish("live/never", StreamInfo("h5"), "test")
        never.expect(frozenset({"audio", "video"}))
        never.set_track(Track(kind="audio", codec="mp2"))
        t0 = loop.time()
        await never.wait_settled(0.05)
        assert 0.55 < loop.time() - t0 < 0.9 and never.settled()  # bounded: audio alone then
        radio = hub.publish("live/radio", StreamInfo("h5"), "test")
        radio.expect(frozenset({"audio"}))
        radio.set_track(Track(kind="audio", codec="mp2"))
        assert radio.settled()  # all it announced: no wait at all

    asyncio.run(run())
