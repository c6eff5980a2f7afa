"""The publish side: which codec to accept from a negotiating publisher, and why to refuse one.

Ingests ask this instead of knowing protocol or codec names themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..media import Track
from .model import Matrix


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
    for track in tracks.values():
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
