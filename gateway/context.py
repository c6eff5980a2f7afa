"""What every session needs from the running gateway: config, hub, matrix."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config
from .hub.stream import Hub
from .planner import Matrix


@dataclass
class Context:
    config: Config
    hub: Hub
    matrix: Matrix
