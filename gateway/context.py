"""What every protocol needs from the running gateway: config, hub, matrix, transcoder and the
session service."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config
from .hub.sessions import Sessions
from .hub.stream import Hub
from .planner import Matrix
from .transcode.transcoder import Transcoder


@dataclass
class Context:
    config: Config
    hub: Hub
    matrix: Matrix
    transcoder: Transcoder
    sessions: Sessions
