"""Browser-side player files the gateway serves under ``/_static/``, located at run time.

They come from npm (``package.json`` at the repository root; ``npm ci`` puts them in
``node_modules/``) and are never copied into the repository, so the gateway looks for them
instead of shipping them. See ``README.md`` beside this file for the search order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["ASSETS", "ASSET_ENV", "asset_candidates", "find_asset"]

# Served name -> paths relative to a ``node_modules`` directory, best first.
ASSETS: dict[str, tuple[str, ...]] = {
    # phoboslab's JSMpeg is not on npm; @cycjimmy/jsmpeg-player bundles it as a UMD script that
    # defines the same global ``JSMpeg`` with ``JSMpeg.Player(url, {canvas, ...})``.
    "jsmpeg.min.js": (
        "@cycjimmy/jsmpeg-player/dist/jsmpeg-player.umd.min.js",
        "@cycjimmy/jsmpeg-player/dist/jsmpeg-player.umd.js",
    ),
    # HTTP-FLV / WS-FLV / MPEG-TS playback through Media Source Extensions (global ``mpegts``).
    "mpegts.js": ("mpegts.js/dist/mpegts.js",),
}

# Served name -> environment variable holding the path of that one file.
ASSET_ENV: dict[str, str] = {
    "jsmpeg.min.js": "GATEWAY_JSMPEG",
    "mpegts.js": "GATEWAY_MPEGTS_JS",
}

# Where an image or a distribution package may have put them (npm -g, or copied by hand).
_GLOBAL_NODE_MODULES = (Path("/usr/local/lib/node_modules"), Path("/usr/lib/node_modules"))
_SHARE_DIRS = (Path("/usr/local/share/mediagateway/static"), Path("/usr/share/mediagateway/static"))


def _upward_node_modules(start: Path) -> Iterator[Path]:
    for directory in (start, *start.parents):
        candidate = directory / "node_modules"
        if candidate.is_dir():
            yield candidate


def asset_candidates(name: str) -> list[Path]:
    """Every path ``find_asset`` would try for ``name``, in order (for error messages)."""
    relative = ASSETS.get(name)
    if relative is None:
        return []
    paths: list[Path] = []
    env_file = os.environ.get(ASSET_ENV.get(name, ""), "")
    if env_file:
        paths.append(Path(env_file))
    assets_dir = os.environ.get("GATEWAY_ASSETS_DIR", "")
    if assets_dir:
        root = Path(assets_dir)
        paths.append(root / name)  # a flat directory of served files
        paths.extend(root / rel for rel in relative)  # or a node_modules tree itself
        paths.extend(root / "node_modules" / rel for rel in relative)  # or a project holding one
    roots: list[Path] = []
    for start in (Path(__file__).resolve().parent, Path.cwd()):
        for node_modules in _upward_node_modules(start):
            if node_modules not in roots:
                roots.append(node_modules)
    roots.extend(_GLOBAL_NODE_MODULES)
    for node_modules in roots:
        paths.extend(node_modules / rel for rel in relative)
    paths.extend(share / name for share in _SHARE_DIRS)
    return paths


def find_asset(name: str) -> Path | None:
    """First existing file for the served asset ``name`` (e.g. ``jsmpeg.min.js``), or None."""
    for path in asset_candidates(name):
        if path.is_file():
            return path
    return None
