"""The gateway's own pages in headless Chromium: publish the fake camera over WHIP, play it back
over WHEP in a <video>, and read the same stream with the FFmpeg CLI over HTTP-FLV.

Chromium runs with ``--allow-loopback-in-peer-connection`` (tests/browser.py) and the gateway
answers ICE checks only from loopback when its candidates are loopback (gateway/protocols/webrtc/seam.py),
so all media stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.protocols.webrtc.routes import SESSIONS
from gateway.protocols.webrtc.whep import WhepSession
from gateway.protocols.webrtc.whip import WhipSession

import flvcheck
from browser import Chromium, require_chromium
from conftest import RunningGateway

FAKE_MEDIA = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")


def test_browser_publishes_whip_plays_whep_and_ffmpeg_reads_flv(
        gateway: RunningGateway, tmp_path: Path) -> None:
    exe = require_chromium()
    key = "live/browser"

    async def main() -> None:
        async with Chromium(exe, args=FAKE_MEDIA) as publisher:
            await publisher.open(gateway.http_url(f"{key}/publish.html?autostart=1"))
            await publisher.wait_for(
                "window.whip.state === 'publishing' || window.whip.state === 'error'", timeout=20)
            state = await publisher.evaluate("JSON.stringify(window.whip)")
            assert '"state":"publishing"' in state, state
            await asyncio.to_thread(gateway.wait_stream, key, 20.0)
            whip = next(s for s in gateway.gw.http_runner.app[SESSIONS].values()
                        if isinstance(s, WhipSession))
            # Chromium offers H.264 and VP8: the gateway takes H.264 so FLV gets it as it is
            assert whip.codecs == {"video": "h264", "audio": "opus"}, whip.codecs
            decoders = gateway.gw.ctx.transcoder.counters.snapshot()["decoders_opened"]

            async with Chromium(exe) as viewer:
                await viewer.open(gateway.http_url(f"{key}.html"))
                await viewer.wait_for("document.getElementById('video').readyState >= 2",
                                      timeout=20)
                t0 = await viewer.evaluate("document.getElementById('video').currentTime")
                await asyncio.sleep(1.5)
                t1 = await viewer.evaluate("document.getElementById('video').currentTime")
                assert t1 > t0 + 0.5, f"video time did not advance ({t0} -> {t1})"
                size = await viewer.evaluate(
                    "[document.getElementById('video').videoWidth, "
                    "document.getElementById('video').videoHeight]")
                assert size[0] > 0 and size[1] > 0, size
                await viewer.screenshot(tmp_path / "whep.png")
                whep = next(s for s in gateway.gw.http_runner.app[SESSIONS].values()
                            if isinstance(s, WhepSession))
                assert whep.plan is not None and whep.plan.passthrough_all, whep.plan
                after = gateway.gw.ctx.transcoder.counters.snapshot()
                assert after["decoders_opened"] == decoders  # pure pass-through

                # the browser's HTTP-FLV player, the first viewer of the Opus -> AAC variant:
                # its FLV header must name the AAC still being coded (mpegts.js on MSE fails
                # on a kind that starts after the others: MediaError MediaMSEError, no sound)
                from gateway.static import find_asset
                if find_asset("mpegts.js") is not None:
                    await viewer.open(gateway.http_url(f"{key}.html?player=flv"))
                    await viewer.wait_for("video.webkitAudioDecodedByteCount > 0 && "
                                          "video.readyState >= 2 || window.player.error",
                                          timeout=20)
                    assert await viewer.evaluate("window.player.error") == ""
                    t0 = await viewer.evaluate("video.currentTime")
                    await asyncio.sleep(1.0)
                    assert await viewer.evaluate("video.currentTime") > t0 + 0.5
                    assert await viewer.evaluate("window.player.error") == ""

                out = tmp_path / "browser.flv"
                res = await asyncio.to_thread(flvcheck.capture, gateway.http_url(f"{key}.flv"),
                                              out, 3.0)
                assert res.returncode == 0, res.stderr
            p = flvcheck.probe(out)
            assert p.codecs == {"video": "h264", "audio": "aac"}, p.codecs
            assert len(p.video_dts) >= 30 and len(p.audio_dts) >= 50
            assert all(b > a for a, b in zip(p.video_dts, p.video_dts[1:], strict=False))
            await publisher.evaluate("window.unpublish()")
        await asyncio.sleep(0.3)

    asyncio.run(asyncio.wait_for(main(), 120))
    assert key not in gateway.gw.hub.streams


def test_play_page_flv_player(gateway: RunningGateway, publish, clips) -> None:  # type: ignore[no-untyped-def]
    """The same page with ?player=flv plays HTTP-FLV through mpegts.js from /_static/."""
    exe = require_chromium()
    from gateway.static import find_asset

    if find_asset("mpegts.js") is None:
        pytest.skip("mpegts.js is not installed (npm ci; see gateway/static/README.md)")
    publish(clips["plain"], "live/flvpage")

    async def main() -> None:
        async with Chromium(exe) as viewer:
            await viewer.open(gateway.http_url("live/flvpage.html?player=flv"))
            await viewer.wait_for("document.getElementById('video').readyState >= 2 || "
                                  "window.player.state === 'error'", timeout=20)
            assert await viewer.evaluate("window.player.error") == ""
            t0 = await viewer.evaluate("document.getElementById('video').currentTime")
            await asyncio.sleep(1.5)
            t1 = await viewer.evaluate("document.getElementById('video').currentTime")
            assert t1 > t0 + 0.5, f"video time did not advance ({t0} -> {t1})"

    asyncio.run(asyncio.wait_for(main(), 60))
