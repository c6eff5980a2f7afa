"""The headless-Chromium helper works, and jsmpeg (from npm) plays ``TsMuxer`` output in it."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from aiohttp import web

from gateway.media import Frame, Track
from gateway.static import asset_candidates, find_asset
from gateway.wire.mpegts import TsDemuxer, TsMuxer

from browser import Chromium, ChromiumError, require_chromium, run

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"

PAGE = """<!doctype html><html><head><title>helper</title></head><body>
<canvas id="c" width="64" height="48"></canvas>
<script>
  var ctx = document.getElementById('c').getContext('2d');
  ctx.fillStyle = '#f00'; ctx.fillRect(0, 0, 64, 48);
  window.ready = true;
  console.log('hello from the page');
</script></body></html>"""


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


def test_evaluate_console_and_screenshot() -> None:
    executable = require_chromium()

    async def scenario() -> None:
        app = web.Application()

        async def index(request: web.Request) -> web.Response:
            return web.Response(text=PAGE, content_type="text/html")

        app.router.add_get("/", index)
        runner, port = await _serve(app)
        try:
            async with Chromium(executable, width=320, height=240) as browser:
                await browser.open(f"http://127.0.0.1:{port}/")
                assert await browser.evaluate("1 + 1") == 2
                assert await browser.evaluate("document.title") == "helper"
                assert await browser.evaluate("new Promise(r => setTimeout(() => r({a: [1, 'x']}), 50))") == {
                    "a": [1, "x"]
                }
                pixel = "Array.from(document.getElementById('c').getContext('2d').getImageData(1, 1, 1, 1).data)"
                assert await browser.evaluate(pixel) == [255, 0, 0, 255]
                assert await browser.wait_for("window.ready") is True
                with pytest.raises(ChromiumError, match="boom"):
                    await browser.evaluate("(() => { throw new Error('boom'); })()")
                with pytest.raises(TimeoutError):
                    await browser.wait_for("window.never", timeout=0.3)
                assert any("hello from the page" in line for line in browser.console)
                png = await browser.screenshot()
                assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 100
        finally:
            await runner.cleanup()

    run(scenario(), timeout=60)


JSMPEG_PAGE = """<!doctype html><html><body style="margin:0;background:#000">
<canvas id="video" width="320" height="240"></canvas>
<script src="/_static/jsmpeg.min.js"></script>
<script>
  window.decoded = 0;
  var canvas = document.getElementById('video');
  window.player = new JSMpeg.Player('ws://' + location.host + '/live.ts', {
    canvas: canvas, disableGl: true, audio: true, pauseWhenHidden: false,
    onVideoDecode: function() { window.decoded++; }
  });
  // Average brightness, spread and a hash of a pixel sample: "non-blank" and "changing".
  window.picture = function() {
    var d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    var n = 0, sum = 0, sq = 0, hash = 0;
    for (var i = 0; i < d.length; i += 4 * 13) {
      var v = d[i] + d[i + 1] + d[i + 2]; n++; sum += v; sq += v * v; hash = (hash * 31 + v) | 0;
    }
    var mean = sum / n;
    return {mean: mean, std: Math.sqrt(Math.max(0, sq / n - mean * mean)), hash: hash};
  };
</script></body></html>"""


def _mpeg1_frames(tmp_path: Path) -> list[Frame]:
    ts = tmp_path / "src.ts"
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", "testsrc=size=320x240:rate=30", "-f", "lavfi", "-i", "sine",
         "-t", "6", "-c:v", "mpeg1video", "-b:v", "800k", "-bf", "0", "-g", "30",
         "-c:a", "mp2", "-f", "mpegts", str(ts)],
        check=True, timeout=60,
    )  # fmt: skip
    demuxer = TsDemuxer()
    frames = demuxer.receive_data(ts.read_bytes()) + demuxer.flush()
    assert demuxer.errors == 0
    return frames


def test_jsmpeg_plays_tsmuxer_output(tmp_path: Path) -> None:
    """A viewer joining mid-stream at a keyframe sees non-blank, changing pictures."""
    executable = require_chromium()
    script = find_asset("jsmpeg.min.js")
    if script is None:
        tried = ", ".join(str(p) for p in asset_candidates("jsmpeg.min.js")[:3])
        pytest.skip(f"jsmpeg not installed (run `npm ci` at the repository root); tried {tried}, ...")
    frames = _mpeg1_frames(tmp_path)
    tracks: dict[str, Track] = {f.kind: f.track for f in frames}
    muxer = TsMuxer(tracks)
    chunks = [(f.dts, muxer.mux(f)) for f in frames]
    keys = [i for i, f in enumerate(frames) if f.kind == "video" and f.keyframe]
    join = keys[1]  # like a gateway viewer: header, then the GOP from its keyframe

    async def scenario() -> None:
        app = web.Application()

        async def index(request: web.Request) -> web.Response:
            return web.Response(text=JSMPEG_PAGE, content_type="text/html")

        async def asset(request: web.Request) -> web.FileResponse:
            return web.FileResponse(script)

        async def live(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.send_bytes(muxer.header())
            start, t0 = chunks[join][0], time.monotonic()
            for dts, data in chunks[join:]:
                delay = (dts - start) / 90000 - (time.monotonic() - t0)
                if delay > 0:
                    await asyncio.sleep(delay)
                if ws.closed:
                    break
                await ws.send_bytes(data)
            await ws.close()
            return ws

        app.router.add_get("/", index)
        app.router.add_get("/_static/jsmpeg.min.js", asset)
        app.router.add_get("/live.ts", live)
        runner, port = await _serve(app)
        try:
            async with Chromium(executable, width=320, height=240) as browser:
                await browser.open(f"http://127.0.0.1:{port}/")
                await browser.wait_for("window.decoded >= 10", timeout=20)
                pictures = []
                for _ in range(6):
                    pictures.append(await browser.evaluate("picture()"))
                    await asyncio.sleep(0.25)
                assert all(p["std"] > 20 for p in pictures), pictures  # testsrc is far from flat
                assert len({p["hash"] for p in pictures}) >= 3, pictures  # and it moves
                assert not [line for line in browser.console if line.startswith("exception")], browser.console
        finally:
            await runner.cleanup()

    run(scenario(), timeout=90)


def test_find_asset_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GATEWAY_JSMPEG", "GATEWAY_MPEGTS_JS", "GATEWAY_ASSETS_DIR"):
        monkeypatch.delenv(var, raising=False)
    assert find_asset("nope.js") is None and asset_candidates("nope.js") == []
    project = tmp_path / "project" / "sub"
    installed = tmp_path / "project" / "node_modules" / "mpegts.js" / "dist" / "mpegts.js"
    installed.parent.mkdir(parents=True)
    installed.write_text("// mpegts")
    project.mkdir()
    monkeypatch.chdir(project)
    assert installed in asset_candidates("mpegts.js")  # found upward from the CWD
    flat = tmp_path / "assets"
    flat.mkdir()
    (flat / "mpegts.js").write_text("// flat")
    monkeypatch.setenv("GATEWAY_ASSETS_DIR", str(flat))
    assert find_asset("mpegts.js") == flat / "mpegts.js"
    own = tmp_path / "my-mpegts.js"
    own.write_text("// mine")
    monkeypatch.setenv("GATEWAY_MPEGTS_JS", str(own))
    assert find_asset("mpegts.js") == own
    monkeypatch.setenv("GATEWAY_JSMPEG", str(tmp_path / "missing.js"))
    assert asset_candidates("jsmpeg.min.js")[0] == tmp_path / "missing.js"
    assert find_asset("jsmpeg.min.js") != tmp_path / "missing.js"  # a missing file is skipped
