"""The transcoding planner: the one place that decides what happens to each track, driven only by
the matrix data (``matrix/*.toml``, see ``matrix/README.md``) so operators change behaviour by
editing data, never code. ``gateway matrix`` validates a matrix and prints its table."""

from __future__ import annotations

from .constraints import Constraint, Scalar
from .load import (
    CODECS_FILE,
    ENV_VAR,
    MATRIX_FILES,
    PROTOCOLS_FILE,
    TRANSCODES_FILE,
    MatrixError,
    find_matrix_dir,
    load_matrix,
)
from .model import (
    DEFAULT_COST,
    Codec,
    Matrix,
    PlaySide,
    Protocol,
    PublishSide,
    TranscodeStep,
)
from .plans import (
    COST_PIXEL_RATE,
    FIT_SLACK,
    Drop,
    PassThrough,
    Plan,
    TargetSpec,
    TrackPlan,
    Transcode,
    plan,
    transcode_cost,
)
from .publish import check_publish, negotiate_publish
from .render import MAYBE, NONE, cell, render_table, table

__all__ = [
    "CODECS_FILE",
    "COST_PIXEL_RATE",
    "DEFAULT_COST",
    "ENV_VAR",
    "FIT_SLACK",
    "MATRIX_FILES",
    "MAYBE",
    "NONE",
    "PROTOCOLS_FILE",
    "TRANSCODES_FILE",
    "Codec",
    "Constraint",
    "Drop",
    "Matrix",
    "MatrixError",
    "PassThrough",
    "Plan",
    "PlaySide",
    "Protocol",
    "PublishSide",
    "Scalar",
    "TargetSpec",
    "TrackPlan",
    "Transcode",
    "TranscodeStep",
    "cell",
    "check_publish",
    "find_matrix_dir",
    "load_matrix",
    "negotiate_publish",
    "plan",
    "render_table",
    "table",
    "transcode_cost",
]
