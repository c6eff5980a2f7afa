"""The matrix model: what the validated ``matrix/*.toml`` data says, as frozen dataclasses.

Only :mod:`.load` builds it; planning and the table only read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final

from ..media import Track
from .constraints import Constraint, Scalar

# Track.params() names that differ from the Track field they come from.
_FIELD_FOR_PARAM: Final[Mapping[str, str]] = MappingProxyType({"b_frames": "has_b_frames"})

#: A step's ``cost`` when transcodes.toml gives none (see ``TranscodeStep.cost``).
DEFAULT_COST: Final[Mapping[str, float]] = MappingProxyType({"video": 1.0, "audio": 0.02})


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
    """What a protocol's viewers accept for one kind; ``codecs`` is also the transcode order."""

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

