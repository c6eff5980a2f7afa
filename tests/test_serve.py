"""``gateway serve`` as operators run it: stopped by a signal to its whole process group."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO

import pytest

from conftest import Publisher


def _start(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, int, BinaryIO]:
    log = open(tmp_path / "gateway.log", "w+b")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1",
                             "--rtmp-port", "0", "--http-port", "0"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group, like a service
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        log.seek(0)
        m = re.search(rb"gateway listening: rtmp=[^:]+:(\d+) http=[^:]+:(\d+)", log.read())
        if m:
            return proc, int(m.group(1)), int(m.group(2)), log
        assert proc.poll() is None, "gateway exited at start"
        time.sleep(0.1)
    raise AssertionError("gateway did not start")


def _alive_in_group(pgid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "stat=,pid=,args=", "-g", str(pgid)],
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip() and not line.strip().startswith("Z")]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_whole_group_stops_the_gateway_cleanly(clips, tmp_path: Path,
                                                               sig: signal.Signals) -> None:
    """systemd (KillMode=control-group), `timeout` and Ctrl-C signal every process of the
    group at once, the transcode processes too. The gateway must still stop in order: its
    streams end, its transcode processes exit with it, and nothing is logged as a failure."""
    proc, rtmp_port, http_port, log = _start(tmp_path)
    pub = Publisher(clips["plain"], f"rtmp://127.0.0.1:{rtmp_port}/live/cam")
    viewer = None
    try:
        deadline = time.monotonic() + 20  # a jsmpeg viewer, so a transcode is running
        got = b""
        while len(got) < 50_000:
            assert time.monotonic() < deadline, got[:200]
            if viewer is None:
                try:
                    viewer = socket.create_connection(("127.0.0.1", http_port), timeout=5)
                except OSError:
                    time.sleep(0.2)
                    continue
                viewer.sendall(b"GET /live/cam.jsmpeg HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                chunk = viewer.recv(65536)
            except TimeoutError:
                log.seek(0)
                raise AssertionError(log.read().decode()[-3000:] + repr(got[:300])) from None
            if b" 404 " in chunk[:20]:  # not live yet
                viewer.close()
                viewer, got = None, b""
                time.sleep(0.2)
                continue
            got += chunk
        children = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True)
        assert len(children.stdout.split()) >= 2, children.stdout  # the gateway + codec processes
        os.killpg(proc.pid, sig)
        assert proc.wait(20) == 0
    finally:
        pub.stop()
        if viewer is not None:
            viewer.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    deadline = time.monotonic() + 5  # no codec process outlives the gateway (zombies aside:
    while _alive_in_group(proc.pid):  # an orphan's exit status waits for PID 1 to reap it)
        assert time.monotonic() < deadline, _alive_in_group(proc.pid)
        time.sleep(0.1)
    log.seek(0)
    text = log.read().decode(errors="replace")
    assert "shutting down" in text, text[-3000:]
    for bad in ("Traceback", "died while coding", "transcoder failed", "lost:", "ERROR"):
        assert bad not in text, text[-3000:]


def test_a_running_h5_publisher_does_not_hold_the_shutdown(tmp_path: Path) -> None:
    """The FFmpeg CLI still uploading MPEG-TS (a long POST) when the gateway is stopped: the
    upload ends with its stream, at once. It used to be read on until the publisher's idle
    timeout (10 s: aiohttp waits for running handlers), then logged as an idle publisher."""
    proc, _, http_port, log = _start(tmp_path)
    pub = subprocess.Popen(
        ["ffmpeg", "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-f",
         "lavfi", "-i", "sine", "-t", "60", "-c:v", "mpeg1video", "-c:a", "mp2", "-f", "mpegts",
         f"http://127.0.0.1:{http_port}/live/up.ts"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while b"live/up: published" not in (log.seek(0) or log.read()):
            assert time.monotonic() < deadline and pub.poll() is None
            time.sleep(0.1)
        time.sleep(1)
        began = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(20) == 0
        took = time.monotonic() - began
        assert pub.wait(10) != 0  # its upload was cut off
    finally:
        pub.kill()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    log.seek(0)
    text = log.read().decode(errors="replace")
    assert "no data from the publisher" not in text, text[-2000:]
    assert took < 5, (took, text[-2000:])
