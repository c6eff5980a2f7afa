"""Headless Debian Chromium driven over the DevTools protocol, for browser-player tests.

Why not Playwright/Puppeteer: their browser downloads cannot run here, while Debian's
``chromium`` package can, and CDP over an aiohttp WebSocket needs nothing else. Chromium picks
its own debugging port (``--remote-debugging-port=0`` + ``DevToolsActivePort``), so parallel
tests never race for a port, and each instance gets a throw-away profile.

Typical use (inside an async test, or through ``run``)::

    async with Chromium() as browser:
        await browser.open("http://127.0.0.1:8080/live/cam.html")
        await browser.wait_for("window.frames_drawn > 3", timeout=15)
        assert await browser.evaluate("1 + 1") == 2
        png = await browser.screenshot()

Tests skip cleanly with ``require_chromium()`` where Chromium is not installed
(``apt-get install -y chromium``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Self, TypeVar

import aiohttp

__all__ = ["CANDIDATES", "Chromium", "ChromiumError", "find_chromium", "require_chromium", "run"]

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

# What this machine's docs say headless Chromium needs: no sandbox as root, no GPU, and no
# background connections (the network is closed and refusals would slow everything down).
BASE_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--autoplay-policy=no-user-gesture-required",
    # WebRTC over loopback only: gather 127.0.0.1 host candidates (never the machine's LAN address)
    "--allow-loopback-in-peer-connection",
    # Players must keep running while "hidden" in headless mode.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
)

T = TypeVar("T")


class ChromiumError(RuntimeError):
    """Chromium did not start, a CDP command failed, or page JavaScript threw."""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary: ``$CHROMIUM`` first, then the usual names on PATH."""
    env = os.environ.get("CHROMIUM")
    if env and Path(env).exists():
        return env
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """The Chromium path, or skip the calling test with the reason (and the fix)."""
    import pytest

    path = find_chromium()
    if path is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium, or set $CHROMIUM)")
    return path


def run(coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
    """Run a coroutine to completion from a synchronous test."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Chromium:
    """One headless Chromium process and a CDP session on its first page."""

    def __init__(
        self,
        executable: str | None = None,
        *,
        width: int = 800,
        height: int = 600,
        args: tuple[str, ...] = (),
        start_timeout: float = 30.0,
    ) -> None:
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise ChromiumError("chromium not found (apt-get install -y chromium)")
        self.width = width
        self.height = height
        self.extra_args = args
        self.start_timeout = start_timeout
        self.console: list[str] = []  # console.* calls and uncaught exceptions, as text
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._profile: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiters: list[tuple[str, asyncio.Future[dict[str, Any]]]] = []
        self._listeners: list[Callable[[str, dict[str, Any]], None]] = []

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Launch Chromium and attach to its page target."""
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        cmd = [
            str(self.executable),
            *BASE_ARGS,
            f"--user-data-dir={self._profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--window-size={self.width},{self.height}",
            *self.extra_args,
            "about:blank",
        ]
        # Popen only forks; the waiting happens in _wait_port without blocking the loop.
        self._proc = subprocess.Popen(  # noqa: ASYNC220
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            self.port = await self._wait_port()
            self._session = aiohttp.ClientSession()
            page_ws = await self._page_ws_url()
            self._ws = await self._session.ws_connect(page_ws, max_msg_size=0, autoping=True)
            self._reader = asyncio.create_task(self._read())
            await self.send("Page.enable")
            await self.send("Runtime.enable")
            await self.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
            )
        except BaseException:
            await self.close()
            raise

    async def _wait_port(self) -> int:
        assert self._proc is not None and self._profile is not None
        marker = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise ChromiumError(f"chromium exited with {self._proc.returncode}: {err[-2000:]}")
            with contextlib.suppress(OSError, ValueError, IndexError):
                return int(marker.read_text().split()[0])
            await asyncio.sleep(0.05)
        raise ChromiumError(f"chromium did not open a DevTools port within {self.start_timeout}s")

    async def _page_ws_url(self) -> str:
        assert self._session is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, json.JSONDecodeError):
                async with self._session.get(f"http://127.0.0.1:{self.port}/json/list") as resp:
                    for target in await resp.json(content_type=None):
                        if target.get("type") == "page" and target.get("webSocketDebuggerUrl"):
                            return str(target["webSocketDebuggerUrl"])
            await asyncio.sleep(0.05)
        raise ChromiumError("no page target appeared")

    async def close(self) -> None:
        """Stop Chromium and remove its profile; safe to call twice."""
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.send("Browser.close"), 2)
            with contextlib.suppress(Exception):
                await self._ws.close()
            self._ws = None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
            self._reader = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._proc is not None:
            proc = self._proc
            self._proc = None
            if proc.poll() is None:
                proc.terminate()
                try:
                    await asyncio.to_thread(proc.wait, 5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    await asyncio.to_thread(proc.wait)
            if proc.stderr is not None:
                proc.stderr.close()
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None

    # -- CDP -----------------------------------------------------------------------------

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
                continue
            method = data.get("method", "")
            params = data.get("params", {})
            self._on_event(method, params)
        err = ChromiumError("DevTools connection closed")
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append(f"{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            desc = details.get("exception", {}).get("description") or details.get("text", "")
            self.console.append(f"exception: {desc}")
        for listener in list(self._listeners):
            listener(method, params)
        for waiter in list(self._waiters):
            name, fut = waiter
            if name == method and not fut.done():
                fut.set_result(params)
                self._waiters.remove(waiter)

    def on_event(self, listener: Callable[[str, dict[str, Any]], None]) -> None:
        """Call ``listener(method, params)`` for every CDP event (e.g. ``Network.*`` once enabled)."""
        self._listeners.append(listener)

    async def send(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        """One raw CDP command on the page session; returns its ``result``."""
        if self._ws is None:
            raise ChromiumError("not started")
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        try:
            reply = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(msg_id, None)
        if "error" in reply:
            raise ChromiumError(f"{method}: {reply['error']}")
        return dict(reply.get("result", {}))

    def _event(self, method: str) -> asyncio.Future[dict[str, Any]]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((method, fut))
        return fut

    # -- conveniences ---------------------------------------------------------------------

    async def open(self, url: str, timeout: float = 30.0) -> None:
        """Navigate and wait for the load event."""
        loaded = self._event("Page.loadEventFired")
        result = await self.send("Page.navigate", {"url": url}, timeout)
        if result.get("errorText"):
            raise ChromiumError(f"navigation to {url} failed: {result['errorText']}")
        await asyncio.wait_for(loaded, timeout)

    async def evaluate(self, expression: str, timeout: float = 30.0, *, user_gesture: bool = True) -> Any:
        """Value of a JavaScript expression (promises awaited, result returned by value).

        ``user_gesture``: run it as if the user had clicked (lets it start media); ``False`` to
        observe a page the way it is before anyone touches it.
        """
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True,
             "userGesture": user_gesture},
            timeout,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            desc = details.get("exception", {}).get("description") or details.get("text", "")
            raise ChromiumError(f"JavaScript error: {desc}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0, interval: float = 0.1, *,
                       user_gesture: bool = True) -> Any:
        """Poll ``expression`` until it is truthy; returns its value (``TimeoutError`` otherwise)."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < deadline:
            value = await self.evaluate(expression, user_gesture=user_gesture)
            if value:
                return value
            await asyncio.sleep(interval)
        raise TimeoutError(f"{expression!r} still {value!r} after {timeout}s; console: {self.console[-10:]}")

    async def click(self, x: float, y: float) -> None:
        """A real mouse click at viewport (x, y): a user activation, as the page sees it."""
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent",
                            {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    async def screenshot(self, path: str | Path | None = None) -> bytes:
        """PNG of the viewport (written to ``path`` too when given)."""
        result = await self.send("Page.captureScreenshot", {"format": "png"})
        png = base64.b64decode(result["data"])
        if path is not None:
            Path(path).write_bytes(png)
        return png

