"""The dependency picture of docs/design.md, read from the imports: a star with `contract` at the bottom; `export`,
`deploy` and `client` independent of each other; `loadtest` and `deploy/demo.py` on top; `cli` importing stages
only by name, when a command runs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("contract", "export", "deploy", "client", "loadtest", "cli")
# stage -> the stages it may import (statically, anywhere in the module)
ALLOWED = {
    "contract": set(),
    "export": {"contract"},
    "deploy": {"contract"},
    "client": {"contract"},
    "loadtest": {"contract", "export", "deploy", "client"},
    "cli": {"contract"},
}
ON_TOP = {ROOT / "deploy" / "demo.py": {"contract", "export", "deploy", "client"}}  # the main job drives every stage


def imported_stages(path: Path) -> set[str]:
    stages = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        stages.update(name.split(".")[1] for name in names if name.startswith("tritonfleet.") and "." in name)
    return stages


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_imports_only_what_the_picture_allows(stage):
    offenders = {}
    for path in sorted((ROOT / stage).rglob("*.py")):
        allowed = ON_TOP.get(path, ALLOWED[stage] | {stage})
        extra = imported_stages(path) - allowed
        if extra:
            offenders[str(path.relative_to(ROOT))] = sorted(extra)
    assert not offenders, f"imports outside docs/design.md's picture: {offenders}"


def test_the_served_python_models_import_no_stage():
    for path in (ROOT / "export" / "esm2" / "served").rglob("*.py"):
        assert not imported_stages(path), path
