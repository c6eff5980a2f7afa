"""Build the PyAV step for one planner ``Transcode``: the only place params meet codec settings.

Imported lazily by variants (it pulls in PyAV). Params are the planner's (matrix defaults,
inherited source values, then constraints); anything unknown here is ignored with a debug log
so an operator's extra matrix key cannot break a running gateway.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from .. import planner
from ..media import Track
from .audio import AudioTranscoder
from .step import Counters, Step
from .video import Threading, VideoTranscoder

__all__ = ["DEFAULT_THREADING", "make_step"]

log = logging.getLogger(__name__)

#: One decoder and one encoder thread per step: a variant already gives each step a thread.
DEFAULT_THREADING = Threading()

_VIDEO_PARAMS = frozenset(
    {"bitrate", "gop", "b_frames", "profile", "frame_rate", "width", "height", "preset"})
_AUDIO_PARAMS = frozenset({"bitrate", "sample_rate", "channels"})


def _num(params: Mapping[str, object], name: str) -> float:
    value = params.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return value


def make_step(t: planner.Transcode, source: Track, threading: Threading | None = None,
              counters: Counters | None = None) -> Step:
    """Step that turns ``source`` frames into ``t.to_codec`` frames with ``t.params``, counting
    its codecs' work in ``counters`` (its owner's; the step's own if None).

    ``b_frames`` is honoured only as "not required": outputs never have B-frames, because the
    gateway's low-latency targets cannot take them and it keeps ``dts == pts``.
    """
    params = t.params
    if t.from_codec != source.codec:
        log.warning("transcode planned from %s but the track is %s; decoding %s",
                    t.from_codec, source.codec, source.codec)
    if t.kind == "audio":
        _note_unknown(params, _AUDIO_PARAMS, t)
        return AudioTranscoder(
            source, t.to_codec,
            sample_rate=int(_num(params, "sample_rate")),
            channels=int(_num(params, "channels")),
            bitrate=int(_num(params, "bitrate")),
            counters=counters,
        )
    if t.kind == "video":
        _note_unknown(params, _VIDEO_PARAMS, t)
        profile = params.get("profile")
        preset = params.get("preset")
        return VideoTranscoder(
            source, t.to_codec,
            width=int(_num(params, "width")),
            height=int(_num(params, "height")),
            frame_rate=float(_num(params, "frame_rate")),
            bitrate=int(_num(params, "bitrate")),
            gop=int(_num(params, "gop")),
            profile=profile if isinstance(profile, str) else "",
            preset=preset if isinstance(preset, str) else "",
            threading=threading or DEFAULT_THREADING,
            counters=counters,
        )
    raise ValueError(f"no transcode step for kind {t.kind!r}")


def _note_unknown(params: Mapping[str, object], known: frozenset[str],
                  t: planner.Transcode) -> None:
    extra = sorted(set(params) - known)
    if extra:
        log.debug("%s: params %s are not used by the PyAV step", t, extra)
