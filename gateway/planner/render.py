"""The interop table (publish protocol x play protocol), derived by planning typical streams.

What ``gateway matrix`` prints, so operators see what their matrix edits lead to.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Final, Literal

from ..media import Track
from .model import Matrix, Protocol
from .plans import PassThrough, Plan, TargetSpec, plan

#: Cell words that are not kind names.
NONE: Final = "none"
MAYBE: Final = "maybe"


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
            alike: list[tuple[str, str, tuple[str, ...] | None]] = [
                (k, p, o) for k, p, o in pairs if o == (p,)
            ]
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
    """``table[publish_protocol][play_protocol]`` -> cell word, from planning typical streams."""
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
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
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
