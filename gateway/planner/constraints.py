"""The constraint language: rules on ``Track.params()`` names that codecs and protocols impose.

Matrix data is written in it, and plans are checked and adjusted with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, TypeAlias

from ..media import Track

Scalar: TypeAlias = bool | int | float | str

#: The constraint language is Track.params(); its default values give each parameter's type.
PARAM_EXAMPLES: Final[Mapping[str, object]] = MappingProxyType(
    {k: v for k, v in Track(kind="video", codec="").params().items() if k != "codec"}
)


def is_unknown(value: object) -> bool:
    """0 / "" in Track.params() mean "not known": unknown values never force a transcode."""
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    return value == 0 or value == ""


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(a: object, b: object) -> bool:
    """Equality that treats 29.97 and 30000/1001 as the same frame rate."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if is_number(a) and is_number(b):
        x, y = float(a), float(b)  # type: ignore[arg-type]
        return math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-9)
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
        """Whether ``value`` may be carried as-is (unknown values get the benefit of the doubt)."""
        if is_unknown(value):
            return True
        if self.allowed is not None and not any(_same(value, a) for a in self.allowed):
            return False
        number = is_number(value)
        if self.min is not None and (not number or value < self.min):  # type: ignore[operator]
            return False
        if self.max is not None and (not number or value > self.max):  # type: ignore[operator]
            return False
        if self.multiple_of is not None and (
            not number or float(value) % self.multiple_of != 0  # type: ignore[arg-type]
        ):
            return False
        return True

    def adjust(self, value: object) -> object:
        """Nearest value that satisfies the rule; ``None`` means "leave it to the encoder"."""
        if is_unknown(value):
            if self.allowed is not None and len(self.allowed) == 1:
                return self.allowed[0]
            return self.default
        if self.allowed is not None:
            match = next((a for a in self.allowed if _same(value, a)), None)
            if match is not None:
                value = match  # snap 30000/1001 to the canonical 29.97
            elif is_number(value) and all(is_number(a) for a in self.allowed):
                # nearest; on a tie the larger (don't lose frames or samples)
                value = min(
                    self.allowed, key=lambda a: (abs(a - value), -a)  # type: ignore[operator]
                )
            else:
                value = self.allowed[0]
        if is_number(value):
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
        parts: list[str] = []
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
