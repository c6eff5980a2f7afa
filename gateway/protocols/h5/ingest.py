"""MPEG-TS ingest (the ``h5`` protocol): TS bytes from an HTTP POST body or a WebSocket.

Demuxing runs in a worker thread (``run_in_executor``), one chunk at a time, so the event loop
only moves bytes, and awaiting each chunk gives TCP back-pressure to a too-fast publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

from ...hub.stream import Stream
from ...media import Frame
from ...wire.mpegts import SUPPORTED, TsDemuxer, TsError

log = logging.getLogger(__name__)


class TsIngest:
    """Feeds one publisher's TS bytes to the hub; ``IngestError`` text is the reason to log."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.demuxer = TsDemuxer()
        self.bytes_in = 0
        self._warned: set[tuple[int, str]] = set()
        self._failed = False
        # held while the demuxer works: a session cancelled (its client gone) while a chunk is
        # demuxed in the worker thread must not flush the demuxer under it
        self._lock = threading.Lock()

    async def feed(self, data: bytes) -> None:
        self.bytes_in += len(data)
        demuxed = asyncio.get_running_loop().run_in_executor(None, self._demux, data)
        try:
            frames = await asyncio.shield(demuxed)
        except asyncio.CancelledError:
            # the session is being torn down (its publisher closed right after its last piece):
            # the thread demuxes this piece anyway, in a few ms; its frames are not lost
            with contextlib.suppress(Exception):
                self._push(await demuxed)
            raise
        self._push(frames)

    def feed_now(self, data: bytes) -> None:
        """Demux a small last piece on the caller's thread: no await, so a session that is
        being closed cannot be cancelled between the piece and ``finish``."""
        self.bytes_in += len(data)
        self._push(self._demux(data))

    def _demux(self, data: bytes) -> list[Frame]:
        with self._lock:
            try:
                return self.demuxer.receive_data(data)
            except TsError:
                self._failed = True  # the refusal names everything; no "ignored" after it
                raise

    def finish(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # a chunk is still being demuxed for a vanished publisher: its tail is lost
        try:
            self._push(self.demuxer.flush())
        except TsError:
            pass
        finally:
            self._lock.release()

    def _push(self, frames: list[Frame]) -> None:
        for pid, (stream_type, what) in self.demuxer.unsupported.items():
            if (pid, what) not in self._warned and not self._failed:
                # the operator must learn why a track the publisher sends never shows up
                self._warned.add((pid, what))
                log.warning("%s: MPEG-TS PID %d (stream type 0x%02x) carries %s, which the "
                            "gateway does not take; ignored (it takes %s)", self.stream.key, pid,
                            stream_type, what, SUPPORTED)
        stream = self.stream
        if stream.ended:
            return
        if stream.announced != self.demuxer.announced:
            stream.expect(self.demuxer.announced)
        for f in frames:
            stream.push(f)


__all__ = ["TsIngest", "TsError"]
