"""The transcoding planner: the one place that decides what happens to each track.

Everything it knows about protocols and codecs comes from the matrix data (``matrix/*.toml``,
documented in ``matrix/README.md``); the code only knows generic notions — kinds, codec lists,
per-session negotiation, transcode steps and constraints on ``Track.params()`` — so operators
change behaviour by editing data, never code.

Typical use::

    m = load_matrix()                       # once, at start-up
    p = plan(m, stream.tracks, "rtmp")      # or TargetSpec("webrtc", {"video": ["vp8", "h264"]})
    hub.attach(viewer, variant=p.variant_key())

``python -m gateway.planner [--matrix DIR] [--format text|tsv]`` validates a matrix directory
and prints the interop table it implies.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, TypeAlias

from gateway.media import Track

__all__ = [
    "ENV_VAR",
    "MATRIX_FILES",
    "Constraint",
    "Codec",
    "Drop",
    "Matrix",
    "MatrixError",
    "PassThrough",
    "Plan",
    "PlaySide",
    "Protocol",
    "PublishSide",
    "TargetSpec",
    "Transcode",
    "TrackPlan",
    "TranscodeStep",
    "cell",
    "check_publish",
    "find_matrix_dir",
    "load_matrix",
    "negotiate_publish",
    "plan",
    "render_table",
    "table",
]

ENV_VAR = "GATEWAY_MATRIX_DIR"
MATRIX_FILES = ("codecs.toml", "protocols.toml", "transcodes.toml")
CODECS_FILE, PROTOCOLS_FILE, TRANSCODES_FILE = MATRIX_FILES

#: Cell words that are not kind names.
NONE = "none"
MAYBE = "maybe"

# Source checkout: <repo>/gateway/planner.py -> <repo>/matrix. Installed wheel: package data.
_REPO_MATRIX = Path(__file__).resolve().parent.parent / "matrix"
_PACKAGE_MATRIX = Path(__file__).resolve().parent / "defaults" / "matrix"

# The constraint language is Track.params(); its default values give each parameter's type.
_PARAM_EXAMPLES: dict[str, object] = {
    k: v for k, v in Track(kind="video", codec="").params().items() if k != "codec"
}
# Track.params() names that differ from the Track field they come from.
_FIELD_FOR_PARAM = {"b_frames": "has_b_frames"}

Scalar: TypeAlias = bool | int | float | str


class MatrixError(ValueError):
    """Matrix data is missing or invalid; the message names the file and the key."""


# ---------------------------------------------------------------------------------------------
# Constraints
# ---------------------------------------------------------------------------------------------


def _unknown(value: object) -> bool:
    """0 / "" in Track.params() mean "not known": unknown values never force a transcode."""
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    return value == 0 or value == ""


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(a: object, b: object) -> bool:
    """Equality that treats 29.97 and 30000/1001 as the same frame rate."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if _number(a) and _number(b):
        return math.isclose(float(a), float(b), rel_tol=1e-4, abs_tol=1e-9)  # type: ignore[arg-type]
    return a == b


@dataclass(frozen=True, slots=True)
class Constraint:
    """One rule on one ``Track.params()`` name; a plain TOML value means ``in = [value]``."""

    param: str
    allowed: tuple[Scalar, ...] | None = None
    min: float | None = None
    max: float | None = None
    multiple_of: int | None = None
    default: Scalar | None = None

    def satisfied(self, value: object) -> bool:
        """True if ``value`` may be carried as-is (unknown values are given the benefit of the doubt)."""
        if _unknown(value):
            return True
        if self.allowed is not None and not any(_same(value, a) for a in self.allowed):
            return False
        if self.min is not None and (not _number(value) or value < self.min):  # type: ignore[operator]
            return False
        if self.max is not None and (not _number(value) or value > self.max):  # type: ignore[operator]
            return False
        if self.multiple_of is not None and (
            not _number(value) or float(value) % self.multiple_of != 0  # type: ignore[arg-type]
        ):
            return False
        return True

    def adjust(self, value: object) -> object:
        """Nearest value that satisfies the rule; ``None`` means "leave it to the encoder"."""
        if _unknown(value):
            if self.allowed is not None and len(self.allowed) == 1:
                return self.allowed[0]
            return self.default
        if self.allowed is not None:
            match = next((a for a in self.allowed if _same(value, a)), None)
            if match is not None:
                value = match  # snap 30000/1001 to the canonical 29.97
            elif _number(value) and all(_number(a) for a in self.allowed):
                # nearest; on a tie the larger (don't lose frames or samples)
                value = min(self.allowed, key=lambda a: (abs(a - value), -a))  # type: ignore[operator]
            else:
                value = self.allowed[0]
        if _number(value):
            whole = isinstance(value, int)
            if self.min is not None and value < self.min:  # type: ignore[operator]
                value = math.ceil(self.min) if whole else float(self.min)
            if self.max is not None and value > self.max:  # type: ignore[operator]
                value = math.floor(self.max) if whole else float(self.max)
            if self.multiple_of is not None:
                m = self.multiple_of
                down = int(value // m * m)  # type: ignore[operator]
                value = down if down > 0 else m
        return value

    def describe(self) -> str:
        parts = []
        if self.allowed is not None:
            parts.append(
                f"= {self.allowed[0]!r}" if len(self.allowed) == 1 else f"in {list(self.allowed)}"
            )
        if self.min is not None:
            parts.append(f">= {self.min}")
        if self.max is not None:
            parts.append(f"<= {self.max}")
        if self.multiple_of is not None:
            parts.append(f"multiple of {self.multiple_of}")
        return f"{self.param} " + ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Matrix model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Codec:
    """A codec's kind, the params of a typical source (for the table) and its encoder limits."""

    name: str
    kind: str
    typical: Mapping[str, Scalar]
    encode: tuple[Constraint, ...] = ()
    description: str = ""


@dataclass(frozen=True, slots=True)
class PublishSide:
    """What a protocol ingests for one kind; ``typical is None`` means it varies per session."""

    kind: str
    codecs: tuple[str, ...]
    typical: str | None
    negotiated: bool = False
    constraints: Mapping[str, tuple[Constraint, ...]] = field(default_factory=dict)

    def constraints_for(self, codec: str) -> tuple[Constraint, ...]:
        return self.constraints.get(codec, ())


@dataclass(frozen=True, slots=True)
class PlaySide:
    """What a protocol's viewers accept for one kind; ``codecs`` is also the transcode preference."""

    kind: str
    codecs: tuple[str, ...]
    negotiated: bool = False
    typical_offer: tuple[str, ...] | None = None
    constraints: Mapping[str, tuple[Constraint, ...]] = field(default_factory=dict)

    def constraints_for(self, codec: str) -> tuple[Constraint, ...]:
        return self.constraints.get(codec, ())

    @property
    def per_session(self) -> bool:
        """The client's choice varies per session and no typical offer pins it down."""
        return self.negotiated and self.typical_offer is None


@dataclass(frozen=True, slots=True)
class Protocol:
    name: str
    description: str
    publish: Mapping[str, PublishSide]
    play: Mapping[str, PlaySide]


@dataclass(frozen=True, slots=True)
class TranscodeStep:
    """One transcode the gateway can run, with the encoder defaults it starts from."""

    kind: str
    from_codec: str
    to_codec: str
    params: Mapping[str, Scalar]
    inherit: tuple[str, ...]
    description: str = ""
    #: CPU of one such transcode relative to a 720p30 H.264 -> MPEG-1 one; video scales it by
    #: the output's pixel rate. What ``transcode_capacity`` is counted in.
    cost: float = 1.0


@dataclass(frozen=True, eq=False)
class Matrix:
    """Validated matrix data; build it with :func:`load_matrix`."""

    source: Path
    kinds: tuple[str, ...]
    codecs: Mapping[str, Codec]
    protocols: Mapping[str, Protocol]  # in file order = table order
    steps: Mapping[tuple[str, str], TranscodeStep]

    @property
    def protocol_names(self) -> list[str]:
        return list(self.protocols)

    @property
    def publish_protocols(self) -> list[str]:
        return [n for n, p in self.protocols.items() if p.publish]

    @property
    def play_protocols(self) -> list[str]:
        return [n for n, p in self.protocols.items() if p.play]

    def protocol(self, name: str) -> Protocol:
        try:
            return self.protocols[name]
        except KeyError:
            raise ValueError(
                f"unknown protocol {name!r} (matrix {self.source} knows {self.protocol_names})"
            ) from None

    def step(self, from_codec: str, to_codec: str) -> TranscodeStep | None:
        return self.steps.get((from_codec, to_codec))

    def typical_track(self, codec: str) -> Track:
        """A Track as a typical publisher of ``codec`` sends it (drives :func:`table`)."""
        c = self.codecs[codec]
        return _track_from_params(c.kind, c.name, c.typical)


def _track_from_params(kind: str, codec: str, params: Mapping[str, object]) -> Track:
    fields = {_FIELD_FOR_PARAM.get(k, k): v for k, v in params.items()}
    return Track(kind=kind, codec=codec, **fields)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------


def _is_matrix_dir(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in MATRIX_FILES)


def find_matrix_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """Explicit path, then ``$GATEWAY_MATRIX_DIR``, then ``<repo>/matrix``, then package data.

    An explicit path or the environment variable is the operator's intent, so a bad one is an
    error rather than a silent fall-back to the defaults.
    """
    if path is not None:
        p = Path(path)
        if not p.is_dir():
            raise MatrixError(f"{p}: matrix directory does not exist")
        return p
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env)
        if not p.is_dir():
            raise MatrixError(f"{p}: matrix directory from ${ENV_VAR} does not exist")
        return p
    for candidate in (_REPO_MATRIX, _PACKAGE_MATRIX):
        if _is_matrix_dir(candidate):
            return candidate
    raise MatrixError(
        f"no matrix directory found: set ${ENV_VAR} or install the package data "
        f"(looked in {_REPO_MATRIX} and {_PACKAGE_MATRIX})"
    )


def load_matrix(path: str | os.PathLike[str] | None = None) -> Matrix:
    """Load and validate the matrix; any problem raises :class:`MatrixError`."""
    directory = find_matrix_dir(path)
    docs = {name: _read_toml(directory / name) for name in MATRIX_FILES}
    kinds, codecs = _parse_codecs(_Ctx(directory / CODECS_FILE), docs[CODECS_FILE])
    protocols = _parse_protocols(
        _Ctx(directory / PROTOCOLS_FILE), docs[PROTOCOLS_FILE], kinds, codecs
    )
    steps = _parse_transcodes(
        _Ctx(directory / TRANSCODES_FILE), docs[TRANSCODES_FILE], kinds, codecs
    )
    return Matrix(directory, kinds, codecs, protocols, steps)


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise MatrixError(f"{path}: missing matrix file") from None
    except tomllib.TOMLDecodeError as e:
        raise MatrixError(f"{path}: invalid TOML: {e}") from None


@dataclass(frozen=True, slots=True)
class _Ctx:
    """Error context: which file, so every message can say where to look."""

    path: Path

    def error(self, key: str, message: str) -> MatrixError:
        return MatrixError(f"{self.path}: {key}: {message}")

    def table(self, value: object, key: str) -> dict[str, object]:
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {type(value).__name__}")
        return value

    def keys(self, value: dict[str, object], key: str, allowed: Iterable[str]) -> None:
        allowed = set(allowed)
        extra = sorted(set(value) - allowed)
        if extra:
            where = f"{key}.{extra[0]}" if key else extra[0]
            raise self.error(where, f"unknown key (allowed here: {sorted(allowed)})")

    def string(self, value: object, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(key, f"expected a non-empty string, got {value!r}")
        return value

    def optional_string(self, body: dict[str, object], name: str, key: str) -> str:
        return self.string(body[name], f"{key}.{name}") if name in body else ""

    def boolean(self, value: object, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def strings(self, value: object, key: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self.error(key, f"expected a non-empty list of strings, got {value!r}")
        items = tuple(self.string(v, f"{key}[{i}]") for i, v in enumerate(value))
        dup = next((v for v in items if items.count(v) > 1), None)
        if dup is not None:
            raise self.error(key, f"{dup!r} listed twice")
        return items

    def codec(self, value: object, key: str, codecs: Mapping[str, Codec], kind: str | None) -> str:
        name = self.string(value, key)
        if name not in codecs:
            raise self.error(
                key, f"unknown codec {name!r} (declared in {CODECS_FILE}: {sorted(codecs)})"
            )
        if kind is not None and codecs[name].kind != kind:
            raise self.error(key, f"{name!r} is a {codecs[name].kind} codec, not {kind}")
        return name

    def param(self, value: object, key: str) -> str:
        if value not in _PARAM_EXAMPLES:
            raise self.error(
                key, f"unknown track parameter {value!r} (known: {sorted(_PARAM_EXAMPLES)})"
            )
        return value  # type: ignore[return-value]

    def param_list(self, value: object, key: str) -> tuple[str, ...]:
        """A possibly empty list of Track parameter names."""
        if not isinstance(value, list):
            raise self.error(key, f"expected a list of parameter names, got {value!r}")
        return tuple(self.param(p, f"{key}[{i}]") for i, p in enumerate(value))

    def scalar(self, value: object, key: str) -> Scalar:
        if not isinstance(value, (bool, int, float, str)):
            raise self.error(key, f"expected a string, number or boolean, got {value!r}")
        return value

    def typed(self, param: str, value: object, key: str) -> Scalar:
        """A value for a Track parameter, of that parameter's type (ints allowed for floats)."""
        example = _PARAM_EXAMPLES[param]
        if isinstance(example, bool):
            ok = isinstance(value, bool)
        elif isinstance(example, float):
            ok = _number(value)
        elif isinstance(example, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(example))
        if not ok:
            raise self.error(key, f"{param} must be {type(example).__name__}, got {value!r}")
        return value  # type: ignore[return-value]

    def constraint(self, param_key: object, value: object, key: str) -> Constraint:
        param = self.param(param_key, key)
        if not isinstance(value, dict):
            return Constraint(param, allowed=(self.typed(param, value, key),))
        self.keys(value, key, ("in", "min", "max", "multiple_of", "default"))
        if not value:
            raise self.error(key, "empty constraint")
        allowed = None
        if "in" in value:
            raw = value["in"]
            if not isinstance(raw, list) or not raw:
                raise self.error(f"{key}.in", f"expected a non-empty list, got {raw!r}")
            allowed = tuple(self.typed(param, v, f"{key}.in[{i}]") for i, v in enumerate(raw))
        bounds: dict[str, float | None] = {}
        for bound in ("min", "max"):
            raw = value.get(bound)
            if raw is not None and not _number(raw):
                raise self.error(f"{key}.{bound}", f"expected a number, got {raw!r}")
            bounds[bound] = raw  # type: ignore[assignment]
        lo, hi = bounds["min"], bounds["max"]
        if lo is not None and hi is not None and lo > hi:
            raise self.error(key, f"min {lo} is greater than max {hi}")
        multiple = value.get("multiple_of")
        if multiple is not None and (
            not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1
        ):
            raise self.error(f"{key}.multiple_of", f"expected a positive integer, got {multiple!r}")
        if (lo is not None or hi is not None or multiple is not None) and not _number(
            _PARAM_EXAMPLES[param]
        ):
            raise self.error(key, f"min/max/multiple_of need a numeric parameter, {param} is not")
        default = value.get("default")
        c = Constraint(param, allowed, lo, hi, multiple, None)
        if default is not None:
            default = self.typed(param, default, f"{key}.default")
            if not c.satisfied(default):
                raise self.error(f"{key}.default", f"{default!r} violates {c.describe()}")
            c = Constraint(param, allowed, lo, hi, multiple, default)
        return c

    def constraints(self, value: object, key: str) -> tuple[Constraint, ...]:
        table = self.table(value, key)
        return tuple(self.constraint(p, v, f"{key}.{p}") for p, v in table.items())


def _parse_codecs(ctx: _Ctx, doc: dict[str, object]) -> tuple[tuple[str, ...], dict[str, Codec]]:
    ctx.keys(doc, "", ("kinds", "codecs"))
    if "kinds" not in doc:
        raise ctx.error("kinds", "missing (list the track kinds, most significant first)")
    kinds = ctx.strings(doc["kinds"], "kinds")
    if "codecs" not in doc:
        raise ctx.error("codecs", "missing (declare at least one [codecs.<name>] table)")
    codecs: dict[str, Codec] = {}
    for name, raw in ctx.table(doc["codecs"], "codecs").items():
        key = f"codecs.{name}"
        body = ctx.table(raw, key)
        ctx.keys(body, key, ("kind", "description", "typical", "encode"))
        if "kind" not in body:
            raise ctx.error(f"{key}.kind", f"missing (one of {list(kinds)})")
        kind = ctx.string(body["kind"], f"{key}.kind")
        if kind not in kinds:
            raise ctx.error(f"{key}.kind", f"unknown kind {kind!r} (kinds = {list(kinds)})")
        if "typical" not in body:
            raise ctx.error(f"{key}.typical", "missing (parameters of a typical source)")
        typical = {
            ctx.param(p, f"{key}.typical.{p}"): ctx.typed(p, v, f"{key}.typical.{p}")
            for p, v in ctx.table(body["typical"], f"{key}.typical").items()
        }
        encode = ctx.constraints(body.get("encode", {}), f"{key}.encode")
        description = ctx.optional_string(body, "description", key)
        codecs[name] = Codec(name, kind, typical, encode, description)
    if not codecs:
        raise ctx.error("codecs", "no codecs declared")
    return kinds, codecs


def _parse_side(
    ctx: _Ctx,
    raw: object,
    key: str,
    kind: str,
    kinds: tuple[str, ...],
    codecs: Mapping[str, Codec],
    extra: tuple[str, ...],
) -> tuple[dict[str, object], tuple[str, ...], bool, dict[str, tuple[Constraint, ...]]]:
    """What publish and play sides share: codecs, negotiated and per-codec constraints."""
    if kind not in kinds:
        raise ctx.error(key, f"unknown kind {kind!r} (kinds = {list(kinds)})")
    side = ctx.table(raw, key)
    ctx.keys(side, key, ("codecs", "negotiated", "constraints", *extra))
    if "codecs" not in side:
        raise ctx.error(f"{key}.codecs", "missing")
    cs = tuple(
        ctx.codec(c, f"{key}.codecs[{i}]", codecs, kind)
        for i, c in enumerate(ctx.strings(side["codecs"], f"{key}.codecs"))
    )
    negotiated = ctx.boolean(side.get("negotiated", False), f"{key}.negotiated")
    constraints: dict[str, tuple[Constraint, ...]] = {}
    for codec, rules in ctx.table(side.get("constraints", {}), f"{key}.constraints").items():
        ckey = f"{key}.constraints.{codec}"
        ctx.codec(codec, ckey, codecs, None)
        if codec not in cs:
            raise ctx.error(ckey, f"{codec!r} is not in {key}.codecs {list(cs)}")
        constraints[codec] = ctx.constraints(rules, ckey)
    return side, cs, negotiated, constraints


def _member(
    ctx: _Ctx, value: object, key: str, codecs: Mapping[str, Codec], kind: str, cs: tuple[str, ...]
) -> str:
    name = ctx.codec(value, key, codecs, kind)
    if name not in cs:
        raise ctx.error(key, f"{name!r} is not in codecs {list(cs)}")
    return name


def _parse_protocols(
    ctx: _Ctx, doc: dict[str, object], kinds: tuple[str, ...], codecs: Mapping[str, Codec]
) -> dict[str, Protocol]:
    protocols: dict[str, Protocol] = {}
    for name, raw in doc.items():
        body = ctx.table(raw, name)
        ctx.keys(body, name, ("description", "publish", "play"))
        publish: dict[str, PublishSide] = {}
        for kind, raw_side in ctx.table(body.get("publish", {}), f"{name}.publish").items():
            key = f"{name}.publish.{kind}"
            side, cs, negotiated, constraints = _parse_side(
                ctx, raw_side, key, kind, kinds, codecs, ("typical",)
            )
            typical: str | None = None if negotiated else cs[0]
            if "typical" in side:
                typical = _member(ctx, side["typical"], f"{key}.typical", codecs, kind, cs)
            publish[kind] = PublishSide(kind, cs, typical, negotiated, constraints)
        play: dict[str, PlaySide] = {}
        for kind, raw_side in ctx.table(body.get("play", {}), f"{name}.play").items():
            key = f"{name}.play.{kind}"
            side, cs, negotiated, constraints = _parse_side(
                ctx, raw_side, key, kind, kinds, codecs, ("typical_offer",)
            )
            offer: tuple[str, ...] | None = None
            if "typical_offer" in side:
                okey = f"{key}.typical_offer"
                if not negotiated:
                    raise ctx.error(okey, "only meaningful with negotiated = true")
                offer = tuple(
                    _member(ctx, c, f"{okey}[{i}]", codecs, kind, cs)
                    for i, c in enumerate(ctx.strings(side["typical_offer"], okey))
                )
            play[kind] = PlaySide(kind, cs, negotiated, offer, constraints)
        if not publish and not play:
            raise ctx.error(name, "protocol has neither publish nor play")
        description = ctx.optional_string(body, "description", name)
        protocols[name] = Protocol(name, description, publish, play)
    if not protocols:
        raise ctx.error("(top level)", "no protocols defined")
    return protocols


#: A step's ``cost`` when transcodes.toml gives none (see ``TranscodeStep.cost``).
DEFAULT_COST: Final = {"video": 1.0, "audio": 0.02}


def _parse_transcodes(
    ctx: _Ctx, doc: dict[str, object], kinds: tuple[str, ...], codecs: Mapping[str, Codec]
) -> dict[tuple[str, str], TranscodeStep]:
    ctx.keys(doc, "", ("defaults", "transcode"))
    inherit_default: dict[str, tuple[str, ...]] = {k: () for k in kinds}
    for kind, raw in ctx.table(doc.get("defaults", {}), "defaults").items():
        key = f"defaults.{kind}"
        if kind not in kinds:
            raise ctx.error(key, f"unknown kind {kind!r} (kinds = {list(kinds)})")
        body = ctx.table(raw, key)
        ctx.keys(body, key, ("inherit",))
        inherit_default[kind] = ctx.param_list(body.get("inherit", []), f"{key}.inherit")
    raw_steps = doc.get("transcode", [])
    if not isinstance(raw_steps, list):
        raise ctx.error("transcode", "expected [[transcode]] entries (an array of tables)")
    steps: dict[tuple[str, str], TranscodeStep] = {}
    for n, raw in enumerate(raw_steps):
        key = f"transcode[{n}]"
        body = ctx.table(raw, key)
        ctx.keys(body, key,
                 ("from", "to", "params", "inherit", "enabled", "description", "cost"))
        for required in ("from", "to"):
            if required not in body:
                raise ctx.error(f"{key}.{required}", "missing")
        to = ctx.codec(body["to"], f"{key}.to", codecs, None)
        kind = codecs[to].kind
        key = f"{key} (to {to})"
        sources = body["from"]
        froms = (
            ctx.strings(sources, f"{key}.from")
            if isinstance(sources, list)
            else (ctx.string(sources, f"{key}.from"),)
        )
        for i, f in enumerate(froms):
            ctx.codec(f, f"{key}.from[{i}]", codecs, kind)
        params = {
            p: ctx.scalar(v, f"{key}.params.{p}")
            for p, v in ctx.table(body.get("params", {}), f"{key}.params").items()
        }
        for p, v in params.items():
            if p in _PARAM_EXAMPLES:
                ctx.typed(p, v, f"{key}.params.{p}")
        fit = params.get("max_pixels")
        if fit is not None and (kind != "video" or isinstance(fit, bool) or not isinstance(fit, int)
                                or fit <= 0):
            raise ctx.error(f"{key}.params.max_pixels",
                            f"expected a positive whole number of pixels (video only), got {fit!r}")
        if "inherit" in body:
            inherit = ctx.param_list(body["inherit"], f"{key}.inherit")
        else:
            inherit = inherit_default[kind]
        if not ctx.boolean(body.get("enabled", True), f"{key}.enabled"):
            continue
        description = ctx.optional_string(body, "description", key)
        cost = body.get("cost", DEFAULT_COST.get(kind, 1.0))
        if not _number(cost) or not 0 <= cost < 1000:  # type: ignore[operator]
            raise ctx.error(f"{key}.cost", f"expected a number from 0 to 1000, got {cost!r}")
        for f in froms:
            if (f, to) in steps:
                raise ctx.error(f"{key}.from", f"step {f} -> {to} is listed twice")
            steps[(f, to)] = TranscodeStep(kind, f, to, params, inherit, description,
                                           float(cost))  # type: ignore[arg-type]
    return steps


# ---------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------


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
        if _number(w) and _number(h) and _number(fps) and w and h and fps:
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
                f"client offered {list(offer)}, {proto.name} {kind} carries only {list(side.codecs)}",
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
        if not _unknown(value):
            # Track fields aren't type-checked: keep e.g. frame_rate a float in the plan
            params[name] = float(value) if isinstance(_PARAM_EXAMPLES[name], float) else value  # type: ignore[arg-type]
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
    if not isinstance(max_pixels, int) or not _number(w) or not _number(h) or w <= 0 or h <= 0:  # type: ignore[operator]
        return
    pixels = w * h  # type: ignore[operator]
    if pixels <= max_pixels * FIT_SLACK:  # 1280x721 is 1280x720 once even: no rescale for that
        return
    scale = math.sqrt(max_pixels / pixels)
    params["width"], params["height"] = max(2, int(w * scale)), max(2, int(h * scale))  # type: ignore[operator]


# ---------------------------------------------------------------------------------------------
# Publish side
# ---------------------------------------------------------------------------------------------


def negotiate_publish(
    matrix: Matrix, protocol: str, offers: Mapping[str, Sequence[str]]
) -> dict[str, str | None]:
    """Codec to accept per kind from a publisher's offer (e.g. WHIP): the protocol's order wins."""
    proto = matrix.protocol(protocol)
    chosen: dict[str, str | None] = {}
    for kind, offered in offers.items():
        side = proto.publish.get(kind)
        chosen[kind] = next((c for c in side.codecs if c in offered), None) if side else None
    return chosen


def check_publish(matrix: Matrix, protocol: str, tracks: Mapping[str, Track]) -> list[str]:
    """Why an ingest must refuse these tracks (empty list = acceptable)."""
    proto = matrix.protocol(protocol)
    problems: list[str] = []
    for kind, track in tracks.items():
        side = proto.publish.get(track.kind)
        if side is None:
            problems.append(f"{protocol} cannot publish {track.kind}")
            continue
        if track.codec not in side.codecs:
            problems.append(
                f"{protocol} publishes {track.kind} as {list(side.codecs)}, not {track.codec}"
            )
            continue
        params = track.params()
        problems += [
            f"{protocol} {track.codec}: {c.param}={params.get(c.param)!r} violates {c.describe()}"
            for c in side.constraints_for(track.codec)
            if not c.satisfied(params.get(c.param))
        ]
    return problems


# ---------------------------------------------------------------------------------------------
# The interop table
# ---------------------------------------------------------------------------------------------


def _word(matrix: Matrix, p: Plan) -> str:
    """The first kind (most significant first) that isn't passed through, else "none"."""
    for kind in matrix.kinds:
        t = p.get(kind)
        if t is not None and not isinstance(t, PassThrough):
            return kind
    return NONE


def _scenarios(
    matrix: Matrix, src: Protocol, dst: Protocol
) -> Iterator[tuple[dict[str, Track], TargetSpec]]:
    """Every publisher/viewer codec combination the negotiation allows.

    Clients of the same protocol are assumed to be configured alike (one SDK, one app), so a
    stream published and played over the same per-session protocol uses the same codec.
    """
    per_kind: list[list[tuple[str, str, tuple[str, ...] | None]]] = []
    for kind in matrix.kinds:
        pub = src.publish.get(kind)
        if pub is None:
            continue
        pub_opts = (pub.typical,) if pub.typical is not None else pub.codecs
        ply = dst.play.get(kind)
        play_opts: tuple[tuple[str, ...] | None, ...]
        if ply is None:
            play_opts = (None,)
        elif ply.typical_offer is not None:
            play_opts = (ply.typical_offer,)
        elif ply.negotiated:
            play_opts = tuple((c,) for c in ply.codecs)
        else:
            play_opts = (None,)
        pairs = [(kind, p, o) for p, o in itertools.product(pub_opts, play_opts)]
        if src is dst and pub.typical is None and ply is not None and ply.per_session:
            alike = [(k, p, o) for k, p, o in pairs if o == (p,)]
            pairs = alike or pairs
        per_kind.append(pairs)
    for combo in itertools.product(*per_kind):
        tracks = {kind: matrix.typical_track(codec) for kind, codec, _ in combo}
        offers = {kind: offer for kind, _, offer in combo if offer is not None}
        yield tracks, TargetSpec(dst.name, offers)


def cell(matrix: Matrix, src: str, dst: str) -> str:
    """One table cell: a kind name, "none", or "maybe" when it depends on the negotiation."""
    s, d = matrix.protocol(src), matrix.protocol(dst)
    words = {_word(matrix, plan(matrix, tracks, spec)) for tracks, spec in _scenarios(matrix, s, d)}
    return words.pop() if len(words) == 1 else MAYBE


def table(matrix: Matrix) -> dict[str, dict[str, str]]:
    """``table[publish_protocol][play_protocol]`` -> cell word, derived by planning typical streams."""
    return {
        src: {dst: cell(matrix, src, dst) for dst in matrix.play_protocols}
        for src in matrix.publish_protocols
    }


def render_table(matrix: Matrix, fmt: Literal["text", "tsv"] = "text") -> str:
    """The table as the seed's TSV shape, or aligned text with a legend."""
    t = table(matrix)
    cols = matrix.play_protocols
    rows = [["from\\to", *cols]] + [[src, *(t[src][c] for c in cols)] for src in t]
    if fmt == "tsv":
        return "".join("\t".join(r) + "\n" for r in rows)
    if fmt != "text":
        raise ValueError(f"unknown table format {fmt!r} (use 'text' or 'tsv')")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    words = [NONE, *matrix.kinds, MAYBE]
    pad = max(len(w) for w in words)
    legend = [f"{NONE.ljust(pad)}  every track passes through"]
    for i, kind in enumerate(matrix.kinds):
        rest = " (later kinds may be transcoded too)" if i < len(matrix.kinds) - 1 else ""
        before = "; earlier kinds pass through" if i else ""
        legend.append(f"{kind.ljust(pad)}  {kind} must be transcoded{before}{rest}")
    legend.append(f"{MAYBE.ljust(pad)}  depends on the codecs negotiated per session")
    notes = ["", "rows: publish protocol, columns: play protocol", *legend]
    return "\n".join(lines + notes) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Validate a matrix directory and print its table (for operators editing the data)."""
    ap = argparse.ArgumentParser(prog="python -m gateway.planner", description=main.__doc__)
    ap.add_argument("--matrix", help=f"matrix directory (default: ${ENV_VAR}, then the built-in one)")
    ap.add_argument("--format", choices=("text", "tsv"), default="text")
    args = ap.parse_args(argv)
    try:
        m = load_matrix(args.matrix)
    except MatrixError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"# matrix: {m.source}", file=sys.stderr)
    sys.stdout.write(render_table(m, args.format))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
