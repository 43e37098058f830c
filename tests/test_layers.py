"""The layers of architecture §3, pinned from the source: imports point down only, and one registry lists the stages.

    application   genie/*.py (world model, sampling, export, tokenize, evaluate, action atlas, quickstart, play, cli)
    stages | data tokenizer/  latent_actions/  dynamics/  |  data_pipelines/   (no imports between these four)
    core          genie/core/ (errors, atomic writes, config base, metrics, device, registry, training base)
                  and genie/nn/ (the network primitives)

Imports are read with `ast`, those inside functions included, so an upward import cannot hide in a
function body. `python tests/test_layers.py` prints the graph between the rooms.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE_PACKAGES = ("tokenizer", "latent_actions", "dynamics")
PACKAGES = ("genie", *STAGE_PACKAGES, "data_pipelines")
REGISTRY = "genie/core/registry.py"


def room(module: str) -> str:
    """'core', 'app', 'data_pipelines' or the stage package a project module belongs to."""
    top, _, rest = module.partition(".")
    if top == "genie":
        return "core" if rest.split(".")[0] in ("core", "nn") else "app"
    return top


def source_files() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in the file, at any depth (functions, classes, ifs)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this file's package
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found += [(f"{base}.{alias.name}" if alias.name != "*" else base, node.lineno) for alias in node.names]
    return [(name, line) for name, line in found if name.split(".")[0] in PACKAGES]


def edges() -> list[tuple[str, str, str, int]]:
    """(from room, to room, file, line) for every import between two different rooms."""
    out = []
    for path in source_files():
        src = room(module_name(path))
        for name, line in imported_modules(path):
            dst = room(name)
            if dst != src:
                out.append((src, dst, str(path.relative_to(ROOT)), line))
    return out


ALLOWED = {
    "core": set(),
    **{stage: {"core"} for stage in STAGE_PACKAGES},
    "data_pipelines": {"core"},
    "app": {"core", *STAGE_PACKAGES, "data_pipelines"},
}


def test_imports_point_down_only():
    upward = [f"{file}:{line}: {src} imports {dst}" for src, dst, file, line in edges() if dst not in ALLOWED[src]]
    assert not upward, "imports against the layering (architecture §3):\n" + "\n".join(upward)


def test_the_core_is_a_folder():
    """A newcomer reads the layer from the path: genie/core/ and genie/nn/ are the core, genie/*.py the application."""
    assert (ROOT / "genie/core/__init__.py").is_file() and (ROOT / "genie/nn/__init__.py").is_file()
    assert {room(module_name(p)) for p in (ROOT / "genie").glob("*.py")} == {"app"}


def _stage_names() -> set[str]:
    tree = ast.parse((ROOT / REGISTRY).read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Stage"]
    return {n.args[0].value for n in calls}


def test_only_the_registry_lists_the_stages():
    """No list, tuple, set or dict literal outside the registry names two stages or two stage packages."""
    names = _stage_names() | set(STAGE_PACKAGES)
    assert {"tokenizer", "lam", "dynamics"} <= names
    found = []
    for path in source_files():
        if path == ROOT / REGISTRY:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            items = node.keys if isinstance(node, ast.Dict) else node.elts if isinstance(node, (ast.List, ast.Tuple, ast.Set)) else []
            strings = {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}
            if len(strings & names) >= 2:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {sorted(strings & names)}")
    assert not found, "stage lists outside genie/core/registry.py:\n" + "\n".join(found)


def test_the_registry_names_importable_classes():
    from genie.core.registry import STAGES
    from genie.stages import stage_class

    for stage, spec in STAGES.items():
        assert (ROOT / spec.package / "__init__.py").is_file()
        for part in ("config", "model", "module"):
            assert getattr(spec, part).startswith(spec.package + "."), (stage, part)
            assert isinstance(stage_class(stage, part), type)


if __name__ == "__main__":  # the graph between the rooms, with the number of imports on each arrow
    counts = Counter((src, dst) for src, dst, _, _ in edges())
    for (src, dst), n in sorted(counts.items()):
        print(f"{src:15s} -> {dst:15s} {n:3d}{'   UPWARD' if dst not in ALLOWED[src] else ''}")
    sys.exit(0)
