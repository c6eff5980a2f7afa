"""Reading ``matrix/*.toml`` and validating it into a :class:`~.model.Matrix`.

Bad data fails loudly here, with a message naming the file and the key, never later in a plan.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .constraints import PARAM_EXAMPLES, Constraint, Scalar, is_number
from .model import (
    DEFAULT_COST,
    Codec,
    Matrix,
    PlaySide,
    Protocol,
    PublishSide,
    TranscodeStep,
)

ENV_VAR = "GATEWAY_MATRIX_DIR"
MATRIX_FILES = ("codecs.toml", "protocols.toml", "transcodes.toml")
CODECS_FILE, PROTOCOLS_FILE, TRANSCODES_FILE = MATRIX_FILES

# Source checkout: <repo>/gateway/planner/load.py -> <repo>/matrix. Installed wheel: package data.
_GATEWAY_DIR = Path(__file__).resolve().parent.parent
_REPO_MATRIX = _GATEWAY_DIR.parent / "matrix"
_PACKAGE_MATRIX = _GATEWAY_DIR / "defaults" / "matrix"


class MatrixError(ValueError):
    """Matrix data is missing or invalid; the message names the file and the key."""


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
        if value not in PARAM_EXAMPLES:
            raise self.error(
                key, f"unknown track parameter {value!r} (known: {sorted(PARAM_EXAMPLES)})"
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
        example = PARAM_EXAMPLES[param]
        if isinstance(example, bool):
            ok = isinstance(value, bool)
        elif isinstance(example, float):
            ok = is_number(value)
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
            if raw is not None and not is_number(raw):
                raise self.error(f"{key}.{bound}", f"expected a number, got {raw!r}")
            bounds[bound] = raw
        lo, hi = bounds["min"], bounds["max"]
        if lo is not None and hi is not None and lo > hi:
            raise self.error(key, f"min {lo} is greater than max {hi}")
        multiple = value.get("multiple_of")
        if multiple is not None and (
            not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1
        ):
            raise self.error(f"{key}.multiple_of", f"expected a positive integer, got {multiple!r}")
        if (lo is not None or hi is not None or multiple is not None) and not is_number(
            PARAM_EXAMPLES[param]
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
            if p in PARAM_EXAMPLES:
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
        if not is_number(cost) or not 0 <= cost < 1000:  # type: ignore[operator]
            raise ctx.error(f"{key}.cost", f"expected a number from 0 to 1000, got {cost!r}")
        for f in froms:
            if (f, to) in steps:
                raise ctx.error(f"{key}.from", f"step {f} -> {to} is listed twice")
            steps[(f, to)] = TranscodeStep(kind, f, to, params, inherit, description,
                                           float(cost))  # type: ignore[arg-type]
    return steps
