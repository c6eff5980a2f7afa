"""A real browser plays the gateway's jsmpeg page: headless Chromium shows changing pictures."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import os
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from gateway.config import Config

from browser import Chromium, require_chromium, run
from conftest import FFMPEG, Publisher, RunningGateway, _start_gateway


def _picture(png: bytes) -> np.ndarray:
    with av.open(io.BytesIO(png)) as c:
        frame = next(c.decode(video=0))
    return frame.to_ndarray(format="gray")


def test_jsmpeg_player_page_shows_changing_pictures(gateway: RunningGateway, publish, clips) -> None:
    exe = require_chromium()
    publish(clips["plain"], "live/cam")  # RTMP H264/AAC -> h5 variant (MPEG-1/MP2)

    async def go() -> None:
        async with Chromium(exe, width=640, height=480) as b:
            await b.open(gateway.http_url("live/cam.html?player=jsmpeg"))
            await b.wait_for("window.player && window.player.frames >= 15", timeout=30)
            hashes, spreads = set(), []
            for _ in range(5):
                png = await b.screenshot()
                pic = _picture(png)
                spreads.append(float(pic.std()))
                hashes.add(hashlib.sha1(pic.tobytes()).hexdigest())
                await b.evaluate("new Promise(r => setTimeout(r, 300))")
            if os.environ.get("GATEWAY_TEST_SHOTS"):
                Path(os.environ["GATEWAY_TEST_SHOTS"]).write_bytes(png)
            assert min(spreads) > 20, spreads  # not blank: testsrc2 is colourful
            assert len(hashes) >= 3, "picture does not change"
            assert await b.evaluate("window.player.error") in ("", None)

    run(go(), timeout=90)


IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1")


@pytest.mark.parametrize("device", ["desktop", "iphone"])
def test_jsmpeg_page_turns_the_sound_on_at_the_first_click(gateway: RunningGateway, publish,
                                                           clips, device: str) -> None:
    """Under a browser's real autoplay policy the page's AudioContext starts suspended, and on
    iOS JSMpeg keeps its audio output locked (it fakes playback) until ``unlock()`` runs from a
    gesture: without the page's help an iPhone never plays the sound. The page says so, and one
    click on it starts the sound."""
    exe = require_chromium()
    publish(clips["plain"], f"live/sound{device}")  # AAC -> MP2 for jsmpeg
    args = ("--autoplay-policy=document-user-activation-required",)  # a browser's default
    if device == "iphone":  # JSMpeg decides by the user agent (WebAudioOut.NeedsUnlocking)
        args += (f"--user-agent={IPHONE}",)

    async def go() -> None:
        async with Chromium(exe, width=640, height=480, args=args) as b:
            look = functools.partial(b.evaluate, user_gesture=False)  # nobody has touched the page
            await b.open(gateway.http_url(f"live/sound{device}.html?player=jsmpeg"))
            await b.wait_for("window.player && window.player.frames >= 10", timeout=30, user_gesture=False)
            # pictures play, the sound is held back until the user acts, and the page says so
            assert await look("window.player.audio") == "suspended"
            assert await look("window.player.jsmpeg.audioOut.unlocked") == (device == "desktop")
            assert await look("document.getElementById('status').textContent") == \
                "playing: jsmpeg (click or tap for sound)"
            await b.click(320, 240)
            await b.wait_for("window.player.audio === 'running'", timeout=10, user_gesture=False)
            assert await look("window.player.jsmpeg.audioOut.unlocked") is True
            t0 = await look("window.player.jsmpeg.audioOut.context.currentTime")
            await asyncio.sleep(1.0)
            t1 = await look("window.player.jsmpeg.audioOut.context.currentTime")
            assert t1 - t0 > 0.5, (t0, t1)  # the audio clock runs: MP2 is being played
            assert await look("document.getElementById('status').textContent") == "playing: jsmpeg"

    run(go(), timeout=90)


def test_jsmpeg_page_asks_for_no_click_on_a_stream_without_sound(gateway: RunningGateway,
                                                                 tmp_path: Path) -> None:
    """A video-only stream under the same autoplay policy: no 'click or tap for sound'."""
    exe = require_chromium()
    clip = tmp_path / "mute.flv"
    subprocess.run([FFMPEG, "-hide_banner", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=30", "-t", "6", "-c:v", "libx264", "-g", "30",
                    "-f", "flv", str(clip)], check=True, timeout=60)
    pub = Publisher(clip, gateway.rtmp_url("live/mute"))
    try:
        gateway.wait_stream("live/mute", tracks=1)

        async def go() -> None:
            args = ("--autoplay-policy=document-user-activation-required",)
            async with Chromium(exe, width=640, height=480, args=args) as b:
                look = functools.partial(b.evaluate, user_gesture=False)
                await b.open(gateway.http_url("live/mute.html?player=jsmpeg"))
                await b.wait_for("window.player.frames >= 30", timeout=20, user_gesture=False)
                assert await look("window.player.audio") == "suspended"  # (the page's, unused)
                assert await look("window.player.audioFrames") == 0
                assert await look("document.getElementById('status').textContent") == "playing: jsmpeg"

        run(go(), timeout=60)
    finally:
        pub.stop()


def test_jsmpeg_page_plays_an_audio_only_stream(gateway: RunningGateway, tmp_path: Path) -> None:
    """A radio-like RTMP stream (AAC only, MP2 for jsmpeg): the page plays it and says so; it
    used to say 'connecting' from 2 s on, since no picture ever came."""
    exe = require_chromium()
    clip = tmp_path / "radio.flv"
    subprocess.run([FFMPEG, "-hide_banner", "-v", "error", "-f", "lavfi", "-i", "sine", "-t", "6",
                    "-c:a", "aac", "-f", "flv", str(clip)], check=True, timeout=60)
    pub = Publisher(clip, gateway.rtmp_url("live/radio"))
    try:
        gateway.wait_stream("live/radio", video=False, tracks=1)

        async def go() -> None:
            async with Chromium(exe, width=640, height=480) as b:
                await b.open(gateway.http_url("live/radio.html?player=jsmpeg"))
                await b.wait_for("window.player.audioFrames >= 20", timeout=20)
                t0 = await b.evaluate("window.player.jsmpeg.audioOut.context.currentTime")
                await asyncio.sleep(3.0)  # past the page's first check (2 s) for a stalled player
                t1 = await b.evaluate("window.player.jsmpeg.audioOut.context.currentTime")
                assert t1 - t0 > 2.0, (t0, t1)  # the sound plays
                assert await b.evaluate("window.player.frames") == 0
                assert await b.evaluate("document.getElementById('status').textContent") == \
                    "playing: jsmpeg"

        run(go(), timeout=60)
    finally:
        pub.stop()


def test_jsmpeg_page_resumes_after_the_publisher_restarts(gateway: RunningGateway, publish,
                                                          clips) -> None:
    """The publisher goes away and comes back on the same key: the page's player reconnects
    by itself (JSMpeg retries its WebSocket) and decodes pictures again."""
    exe = require_chromium()
    first = publish(clips["plain"], "live/back")

    async def go() -> None:
        async with Chromium(exe, width=640, height=480) as b:
            await b.open(gateway.http_url("live/back.html?player=jsmpeg"))
            await b.wait_for("window.player && window.player.frames >= 15", timeout=30)
            first.stop()
            await asyncio.sleep(1.0)
            before = await b.evaluate("window.player.frames")
            await asyncio.to_thread(publish, clips["plain"], "live/back")
            await b.wait_for(f"window.player.frames >= {before + 15}", timeout=30)

    run(go(), timeout=90)


def test_player_page_says_why_there_are_no_pictures(clips) -> None:
    """A refused play shows its reason on the page: JSMpeg only sees a failed WebSocket
    handshake (and retries), mpegts.js only an HTTP status, so the page asks once over HTTP."""
    exe = require_chromium()
    gen = _start_gateway(Config(host="127.0.0.1", rtmp_port=0, http_port=0,
                                transcode_capacity=0.01))  # no transcode fits
    gateway = next(gen)
    pub = Publisher(clips["plain"], gateway.rtmp_url("live/full"))
    try:
        gateway.wait_stream("live/full")

        async def go() -> dict[str, str]:
            seen = {}
            async with Chromium(exe, width=640, height=480) as b:
                for page, state in (("live/gone.html?player=jsmpeg", "waiting"),
                                    ("live/gone.html?player=flv", "error"),
                                    ("live/full.html?player=jsmpeg", "waiting")):
                    await b.open(gateway.http_url(page))
                    await b.wait_for(f"window.player && window.player.state === {state!r} && "
                                     "/[0-9]{3} /.test(document.getElementById('status').textContent)",
                                     timeout=20)
                    seen[page] = await b.evaluate("document.getElementById('status').textContent")
                # room again: JSMpeg's own retry (every 5 s) plays without a reload
                gateway.call(lambda: setattr(gateway.gw.ctx.transcoder, "capacity", 0.0))
                await b.wait_for("window.player.frames >= 15", timeout=30)
            return seen

        seen = run(go(), timeout=90)
        assert "503" in seen["live/full.html?player=jsmpeg"], seen
        assert "transcode capacity is in use" in seen["live/full.html?player=jsmpeg"], seen
        assert "404" in seen["live/gone.html?player=jsmpeg"], seen
        assert "404" in seen["live/gone.html?player=flv"], seen
    finally:
        pub.stop()
        next(gen, None)
