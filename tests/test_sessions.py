"""The session service is the one way every protocol starts a publisher or a viewer: a hook that
refuses a key refuses it on every protocol, each with its protocol's own error; the registry
lists every live session with its counters; the idle timeout is one mechanism."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import aiohttp
import pytest
from aiortc import VideoStreamTrack

from gateway.config import Config
from gateway.hub.sessions import Code, Refusal
from gateway.testing import WhepClient, WhipClient
from gateway.wire.rtmp import connection as rc

from conftest import FFMPEG, Publisher, RunningGateway, _start_gateway

SECRET = "live/secret"  # published over RTMP; nobody may play it
DENIED = "live/denied"  # nobody may publish it


def _authorize(calls: list[tuple[str, str, str]]):  # type: ignore[no-untyped-def]
    async def authorize(action: str, key: str, protocol: str, peer: str,
                        query: Mapping[str, str]) -> None:
        calls.append((action, key, protocol))
        if action == "play" and key == SECRET:
            raise Refusal(Code.FORBIDDEN, f"{key} is not for you")
        if action == "publish" and key == DENIED:
            raise Refusal(Code.FORBIDDEN, f"publishing {key} is not allowed")

    return authorize


@pytest.fixture
def guarded() -> Iterator[tuple[RunningGateway, list[tuple[str, str, str]]]]:
    calls: list[tuple[str, str, str]] = []
    config = Config(host="127.0.0.1", rtmp_port=0, http_port=0)
    for gw in _start_gateway(config, authorize=_authorize(calls)):
        yield gw, calls


def _rtmp_statuses(gateway: RunningGateway, key: str, action: str) -> list[rc.Status]:
    """Connect with the project's RTMP client, publish or play ``key``, collect statuses."""
    app, name = key.split("/", 1)
    conn = rc.ClientConnection()
    statuses: list[rc.Status] = []
    with socket.create_connection(("127.0.0.1", gateway.rtmp_port), timeout=10) as sock:
        conn.connect(app, gateway.rtmp_url(app))
        sock.sendall(conn.data_to_send())
        deadline = time.monotonic() + 10
        while not statuses and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, rc.ConnectResult):
                    conn.create_stream()
                elif isinstance(ev, rc.StreamCreated):
                    conn.publish(name) if action == "publish" else conn.play(name)
                elif isinstance(ev, rc.Status):
                    statuses.append(ev)
            sock.sendall(conn.data_to_send())
    return statuses


async def _http_status(method: str, url: str, **kw: object) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, **kw) as r:  # type: ignore[arg-type]
            return r.status, (await r.text()) if r.status >= 400 else ""


async def _ws_status(url: str) -> int:
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(url):
                return 101
        except aiohttp.WSServerHandshakeError as e:
            return e.status


def test_a_hook_refusing_a_key_refuses_it_on_every_protocol(
        guarded: tuple[RunningGateway, list[tuple[str, str, str]]], clips: dict[str, Path],
        tmp_path: Path) -> None:
    gateway, calls = guarded
    pub = Publisher(clips["plain"], gateway.rtmp_url(SECRET))
    try:
        gateway.wait_stream(SECRET)

        # RTMP play and publish: an error status naming the refusal, with the reason
        played = _rtmp_statuses(gateway, SECRET, "play")
        assert [(s.level, s.code) for s in played] == [("error", "NetStream.Play.Unauthorized")]
        assert "is not for you" in played[0].description
        published = _rtmp_statuses(gateway, DENIED, "publish")
        assert [(s.level, s.code) for s in published] == [
            ("error", "NetStream.Publish.Unauthorized")]
        assert "is not allowed" in published[0].description
        # ... which the FFmpeg CLI shows, and fails on
        r = subprocess.run([FFMPEG, "-hide_banner", "-v", "error", "-i", gateway.rtmp_url(SECRET),
                            "-t", "1", "-f", "null", "-"], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode != 0

        async def http_side() -> dict[str, object]:
            ts = tmp_path / "x.ts"
            ts.write_bytes(b"\x47" + bytes(187))
            return {
                "http-flv": await _http_status("GET", gateway.http_url(f"{SECRET}.flv")),
                "http-flv HEAD": (await _http_status("HEAD", gateway.http_url(f"{SECRET}.flv")))[0],
                "ws-flv": await _ws_status(gateway.ws_url(f"{SECRET}.flv")),
                "jsmpeg": await _ws_status(gateway.ws_url(f"{SECRET}.jsmpeg")),
                "ts POST": await _http_status("POST", gateway.http_url(f"{DENIED}.ts"),
                                              data=ts.read_bytes()),
                "ts WebSocket": await _ws_status(gateway.ws_url(f"{DENIED}.ts")),
            }

        got = asyncio.run(http_side())
        assert got["http-flv"] == (403, f"{SECRET} is not for you\n")
        assert got["http-flv HEAD"] == 403
        assert got["ws-flv"] == 403 and got["jsmpeg"] == 403
        assert got["ts POST"] == (403, f"publishing {DENIED} is not allowed\n")
        assert got["ts WebSocket"] == 403

        async def webrtc_side() -> tuple[str, str]:
            whep = WhepClient(gateway.http_url(f"{SECRET}/whep"))
            whip = WhipClient(gateway.http_url(f"{DENIED}/whip"), [VideoStreamTrack()])
            errors = []
            for client in (whep, whip):
                try:
                    await client.start()
                except Exception as e:  # SessionError(status, reason)
                    errors.append(f"{getattr(e, 'status', '?')} {e}")
                finally:
                    await client.close()
            return errors[0], errors[1]

        whep_error, whip_error = asyncio.run(webrtc_side())
        assert whep_error == f"403 {SECRET} is not for you", whep_error
        assert whip_error == f"403 publishing {DENIED} is not allowed", whip_error
    finally:
        pub.stop()
    # every protocol asked the one hook, named as the matrix names it
    asked = {(action, protocol) for action, key, protocol in calls}
    assert {("publish", "rtmp"), ("play", "rtmp"), ("publish", "h5"), ("play", "h5"),
            ("publish", "webrtc"), ("play", "webrtc")} <= asked, asked
    # nothing refused was started: no stream for the denied key, no viewer of the secret one
    assert DENIED not in gateway.gw.hub.streams
    assert not [s for s in gateway.gw.ctx.sessions.live.values() if s.role == "play"]


def test_the_registry_lists_publishers_and_viewers_with_their_counters(
        gateway: RunningGateway, publish, clips: dict[str, Path]) -> None:
    publish(clips["plain"], "live/reg")

    async def watch() -> list[dict[str, object]]:
        async with aiohttp.ClientSession() as http:
            async with http.get(gateway.http_url("live/reg.flv")) as r:
                await r.content.readexactly(200_000)
                return gateway.call(gateway.gw.ctx.sessions.stats)  # type: ignore[no-any-return]

    live = asyncio.run(watch())
    by_role = {s["role"]: s for s in live}
    assert set(by_role) == {"publish", "play"}, live
    pub, viewer = by_role["publish"], by_role["play"]
    assert (pub["protocol"], pub["key"]) == ("rtmp", "live/reg")
    assert pub["bytes_in"] > 100_000 and str(pub["peer"]).startswith("127.0.0.1:")
    assert (viewer["protocol"], viewer["key"]) == ("rtmp", "live/reg")
    assert viewer["bytes_out"] >= 200_000, viewer
    assert {"id", "started", "drops", "queue_bytes"} <= viewer.keys()
    # the viewer left: out of the registry
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if [s["role"] for s in gateway.call(gateway.gw.ctx.sessions.stats)] == ["publish"]:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(gateway.call(gateway.gw.ctx.sessions.stats))


def test_an_unknown_key_goes_to_on_missing_first(clips: dict[str, Path]) -> None:
    """``on_missing`` is where a CDN pull or a cluster lookup will answer; by default (None) an
    unknown key is not found, with the same 404 as before."""
    asked: list[tuple[str, str]] = []

    async def on_missing(key: str, protocol: str, peer: str, query: Mapping[str, str]) -> None:
        asked.append((key, protocol))
        return None

    config = Config(host="127.0.0.1", rtmp_port=0, http_port=0)
    for gateway in _start_gateway(config, on_missing=on_missing):
        status = asyncio.run(_http_status("GET", gateway.http_url("live/nobody.flv")))
        assert status == (404, "stream live/nobody not found\n")
        assert asked == [("live/nobody", "rtmp")]
