"""Planning: per source track, pass-through, transcode (with encoder params) or drop.

The one place that decides what happens to a track a viewer gets, and what that costs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from ..media import Track
from .constraints import PARAM_EXAMPLES, Constraint, is_number, is_unknown
from .model import DEFAULT_COST, Matrix, Protocol, TranscodeStep


def _fmt_params(params: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()))


@dataclass(frozen=True, slots=True)
class PassThrough:
    """The track is carried as published: no decode, no encode."""

    kind: str
    codec: str

    def key(self) -> tuple[object, ...]:
        return ("pass", self.kind, self.codec)

    def __str__(self) -> str:
        return f"{self.kind}: {self.codec} pass-through"


@dataclass(frozen=True, slots=True)
class Transcode:
    """The track is decoded and re-encoded; ``params`` are the encoder settings (don't mutate)."""

    kind: str
    from_codec: str
    to_codec: str
    params: dict[str, object] = field(default_factory=dict, hash=False)

    def key(self) -> tuple[object, ...]:
        params = tuple(sorted(self.params.items()))
        return ("transcode", self.kind, self.from_codec, self.to_codec, params)

    def __str__(self) -> str:
        return f"{self.kind}: {self.from_codec} -> {self.to_codec} ({_fmt_params(self.params)})"


@dataclass(frozen=True, slots=True)
class Drop:
    """The target cannot carry the track at all; the viewer gets the other tracks only."""

    kind: str
    reason: str

    def key(self) -> tuple[object, ...]:
        return ("drop", self.kind)

    def __str__(self) -> str:
        return f"{self.kind}: dropped ({self.reason})"


TrackPlan: TypeAlias = PassThrough | Transcode | Drop


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """A play target with the codecs the client offered per kind, in the client's order.

    Kinds without an offer accept everything the protocol can carry.
    """

    protocol: str
    offers: Mapping[str, Sequence[str]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "offers", {k: tuple(v) for k, v in self.offers.items()})


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with each source track (keyed by kind) for one kind of viewer."""

    protocol: str
    tracks: Mapping[str, TrackPlan] = field(hash=False)

    def __getitem__(self, kind: str) -> TrackPlan:
        return self.tracks[kind]

    def get(self, kind: str) -> TrackPlan | None:
        return self.tracks.get(kind)

    @property
    def passthrough_all(self) -> bool:
        return all(isinstance(t, PassThrough) for t in self.tracks.values())

    @property
    def transcodes(self) -> list[Transcode]:
        return [t for t in self.tracks.values() if isinstance(t, Transcode)]

    @property
    def drops(self) -> list[Drop]:
        return [t for t in self.tracks.values() if isinstance(t, Drop)]

    def variant_key(self) -> tuple[object, ...]:
        """Equal for viewers that can share one pipeline.

        The protocol is deliberately not part of it: an rtmp and a miniprogram viewer that both
        need AAC at the same settings share the encoder; only packaging differs.
        """
        return tuple(self.tracks[k].key() for k in sorted(self.tracks))

    def __str__(self) -> str:
        body = "; ".join(str(t) for t in self.tracks.values()) or "no tracks"
        return f"plan for {self.protocol}: {body}"


#: The pixel rate a video step's ``cost`` is given for: 720p30.
COST_PIXEL_RATE: Final = 1280 * 720 * 30


def transcode_cost(matrix: Matrix, t: Transcode) -> float:
    """What one transcode of a plan counts against ``transcode_capacity``: the step's ``cost``,
    for video scaled by the output's pixel rate (a 1080p30 output is 2.25 of a 720p30 one)."""
    step = matrix.steps.get((t.from_codec, t.to_codec))
    cost = step.cost if step is not None else DEFAULT_COST.get(t.kind, 1.0)
    if t.kind == "video":
        w, h, fps = (t.params.get(k) for k in ("width", "height", "frame_rate"))
        if is_number(w) and is_number(h) and is_number(fps) and w and h and fps:
            cost *= w * h * fps / COST_PIXEL_RATE  # type: ignore[operator]
    return cost


def plan(matrix: Matrix, source_tracks: Mapping[str, Track], target: str | TargetSpec) -> Plan:
    """Decide, per source track, pass-through, transcode (with encoder params) or drop."""
    spec = target if isinstance(target, TargetSpec) else TargetSpec(target)
    proto = matrix.protocol(spec.protocol)
    tracks: dict[str, TrackPlan] = {}
    for kind, track in source_tracks.items():
        if track.kind != kind:
            raise ValueError(f"source_tracks[{kind!r}] is a {track.kind} track")
        tracks[kind] = _plan_track(matrix, proto, track, spec.offers.get(kind))
    return Plan(proto.name, tracks)


def _plan_track(
    matrix: Matrix, proto: Protocol, track: Track, offer: Sequence[str] | None
) -> TrackPlan:
    kind = track.kind
    side = proto.play.get(kind)
    if side is None:
        return Drop(kind, f"{proto.name} cannot carry {kind}")
    if offer is None:
        accepted = side.codecs
    else:
        # The protocol's order is the gateway's preference; the offer only filters.
        accepted = tuple(c for c in side.codecs if c in offer)
        if not accepted:
            return Drop(
                kind,
                f"client offered {list(offer)}, "
                f"{proto.name} {kind} carries only {list(side.codecs)}",
            )
    source = track.params()
    if track.codec in accepted and all(
        c.satisfied(source.get(c.param)) for c in side.constraints_for(track.codec)
    ):
        return PassThrough(kind, track.codec)
    why: list[str] = []
    for to in accepted:
        step = matrix.step(track.codec, to)
        if step is None:
            why.append(f"no {track.codec} -> {to} transcode")
            continue
        rules = (*matrix.codecs[to].encode, *side.constraints_for(to))
        params = _output_params(step, source, rules)
        broken = [c.describe() for c in rules if not c.satisfied(params.get(c.param))]
        if broken:
            why.append(f"{track.codec} -> {to} cannot meet {', '.join(broken)}")
            continue
        return Transcode(kind, track.codec, to, params)
    return Drop(kind, "; ".join(why))


def _output_params(
    step: TranscodeStep, source: Mapping[str, object], rules: Sequence[Constraint]
) -> dict[str, object]:
    params: dict[str, object] = dict(step.params)
    for name in step.inherit:
        value = source.get(name)
        if not is_unknown(value):
            # Track fields aren't type-checked: keep e.g. frame_rate a float in the plan
            if isinstance(PARAM_EXAMPLES[name], float):
                value = float(value)  # type: ignore[arg-type]
            params[name] = value
    _fit(params, params.pop("max_pixels", None))
    for rule in rules:
        value = rule.adjust(params.get(rule.param))
        if value is not None:
            params[rule.param] = value
    return params


#: How far over ``max_pixels`` a size may be and still be left alone (rounding, not a bigger
#: picture: the even-size constraint then takes it under).
FIT_SLACK: Final = 1.02


def _fit(params: dict[str, object], max_pixels: object) -> None:
    """Scale ``width`` x ``height`` down, keeping the aspect, to at most ``max_pixels``: a
    1080p source coded for jsmpeg becomes 720p (and a portrait 1080x1920 one 720x1280). The
    encode constraints (even sizes) round the result afterwards."""
    w, h = params.get("width"), params.get("height")
    if not isinstance(max_pixels, int) or not is_number(w) or not is_number(h):
        return
    if w <= 0 or h <= 0:  # type: ignore[operator]
        return
    pixels = w * h  # type: ignore[operator]
    if pixels <= max_pixels * FIT_SLACK:  # 1280x721 is 1280x720 once even: no rescale for that
        return
    scale = math.sqrt(max_pixels / pixels)
    width, height = int(w * scale), int(h * scale)  # type: ignore[operator]
    params["width"], params["height"] = max(2, width), max(2, height)
