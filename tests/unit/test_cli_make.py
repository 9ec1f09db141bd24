"""Make targets that measure export into a build folder for this machine and never rewrite committed files; `make
export` is the canonical command; `make help` shows variables' values."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tritonfleet.export.esm2.repository import CANONICAL_ARGS

ROOT = Path(__file__).resolve().parents[2]
MEASURING = ("loadtest", "perf", "bench", "tune", "demo")
# -o: never remake the venv stamp here (a dry run must not install anything, and a real run only exports)
MAKE = ["make", "--no-print-directory", "-o", ".venv/.installed"]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def dry_run(*targets: str, **variables: str) -> list[list[str]]:
    assignments = [f"{name}={value}" for name, value in variables.items()]
    completed = subprocess.run(
        [*MAKE, "-n", *targets, *assignments], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    return [shlex.split(line) for line in completed.stdout.splitlines() if "tritonfleet" in line]


def _option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


@pytest.mark.parametrize("target", MEASURING)
def test_measuring_targets_export_into_the_build_folder(target):
    commands = dry_run(target)
    assert commands, f"make -n {target} runs no tritonfleet command"
    for command in commands:
        for flag in ("--output", "--model-repository"):
            value = _option(command, flag)
            assert value is None or not value.startswith("model_repository"), (target, command)
    exports = [c for c in commands if c[1:3] == ["export", "esm2"]]
    repositories = {_option(c, "--model-repository") for c in commands} - {None}
    if target != "demo":  # demo exports itself, into the same folder
        assert exports and _option(exports[0], "--output") == "build/model_repository"
        assert _option(exports[0], "--target") == "auto"
    assert repositories == {"build/model_repository"}


def test_make_export_is_the_canonical_command():
    (command,) = dry_run("export")
    assert command[1:] == ["export", *CANONICAL_ARGS]


def test_help_prints_values_not_variable_names():
    completed = subprocess.run([*MAKE, "help", "MODEL_SIZE=35M"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0
    assert "$(" not in completed.stdout and "35M" in completed.stdout


def _status() -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def test_the_measuring_export_step_leaves_git_status_clean(tmp_path):
    """The export step of loadtest/perf/bench/tune, run for real (configs only, to stay fast), changes nothing git
    sees: build/ is ignored and model_repository/ is not touched."""
    if not (ROOT / ".venv" / "bin" / "tritonfleet").exists() or not (ROOT / ".git").exists():
        pytest.skip("needs the project's .venv with the tritonfleet script, in a git checkout")
    before = _status()
    completed = subprocess.run(
        [*MAKE, "build-repository", "EXPORT_FLAGS=--configs-only", "TARGET=cpu:2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (ROOT / "build" / "model_repository" / "serving_target.json").is_file()
    assert _status() == before
