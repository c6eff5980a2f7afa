"""The package's shape, kept by a test: dependencies point one way (protocols -> web / hub /
planner / transcode -> wire / codecs / media), no protocol imports another, only ``app.py``
wires, and no module keeps mutable state at module level (two gateways share nothing)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "gateway"

#: what a top-level part of the package may import from the others
ALLOWED: dict[str, set[str]] = {
    "media": set(),
    "codecs": {"media"},
    "wire": {"media", "codecs"},
    "planner": {"media", "codecs"},
    "hub": {"media", "codecs", "planner"},
    "transcode": {"media", "codecs", "wire", "planner", "hub", "config", "cpus"},
    "web": {"media", "hub", "planner", "transcode", "context", "static", "config"},
    "protocols": {"media", "codecs", "wire", "planner", "hub", "transcode", "web", "context",
                  "config"},
}
#: module-level state that is the process's, not a gateway's: the aioice patch of the one seam
PROCESS_WIDE = {("protocols/webrtc/seam.py", "_original_host_addresses")}


def _modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def _name(path: Path) -> list[str]:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path) -> set[str]:
    """Absolute names of the gateway modules ``path`` imports (type-only imports included)."""
    tree = ast.parse(path.read_text())
    here = _name(path)
    package = here if path.name == "__init__.py" else here[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = (package[:len(package) - node.level + 1] if node.level else [])
            mod = base + (node.module.split(".") if node.module else [])
            for alias in node.names:
                out.add(".".join([*mod, alias.name]))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("gateway.")}


def _part(name: str) -> str:
    return name.split(".")[1]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_dependencies_point_one_way(path: Path) -> None:
    here = _name(path)
    part = here[1] if len(here) > 1 else ""
    if part in ("app", "cli", "__main__", "testing", "") or part not in ALLOWED:
        return  # the composition root, its CLI and the test clients may import anything
    for name in _imports(path):
        other = _part(name)
        if other == part:
            if part == "protocols" and len(here) > 2 and len(name.split(".")) > 2:
                mine, theirs = here[2], name.split(".")[2]
                assert mine == theirs or theirs == "__init__", \
                    f"{'.'.join(here)} (protocol {mine}) imports protocol {theirs}: {name}"
            continue
        assert other in ALLOWED[part], f"{'.'.join(here)} ({part}) imports {name} ({other})"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_level_mutable_state(path: Path) -> None:
    """A module-level dict, list or set bound to a lowercase (private) name, or a ``global``
    statement: state one gateway would share with another in the same process."""
    tree = ast.parse(path.read_text())
    where = str(path.relative_to(ROOT))
    for node in tree.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        for t in targets:
            if not isinstance(t, ast.Name) or t.id.upper() == t.id or t.id.startswith("__"):
                continue  # CONSTANTS (tables nobody writes) and dunders
            mutable = isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp,
                                         ast.SetComp)) or (
                isinstance(value, ast.Call) and isinstance(value.func, (ast.Name, ast.Attribute))
                and (value.func.id if isinstance(value.func, ast.Name) else value.func.attr)
                in ("dict", "list", "set", "defaultdict", "WeakSet", "WeakKeyDictionary",
                    "WeakValueDictionary", "deque", "OrderedDict"))
            assert not mutable, f"{where}: module-level mutable {t.id}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            for name in node.names:
                assert (where, name) in PROCESS_WIDE, f"{where}: global {name}"
