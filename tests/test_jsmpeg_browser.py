"""A real browser plays the gateway's jsmpeg page: headless Chromium shows changing pictures."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from pathlib import Path

import av
import numpy as np

from browser import Chromium, require_chromium, run
from conftest import RunningGateway


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
