"""The wheel as a user gets it: built from this checkout, installed (not editable) with `[export,deploy,cpu]` into a
fresh virtualenv, and run from a folder outside the checkout: `tritonfleet export esm2 --random-init 8M`, `export
torch`, `serve`, `embed`, `embed-fasta`, `health`, and a missing external tool named in one line.

About 2-3 minutes: the install takes most of it (pip's cache and index make it local; TORCH_SPEC as in
scripts/setup.sh installs the CPU torch first, so no CUDA wheels are pulled).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import venv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")
INSTALL_TIMEOUT_S = 600
STARTUP_TIMEOUT_S = 240
PROTEIN = "MKTAYIAKQRQISFVKSHFSRQ"
SOURCE_IGNORED = (".git", ".venv", ".tools", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "reports",
                  "*.onnx", "*.pt", "warmup")  # fmt: skip

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, dict[str, str]]]:
    """(bin folder of the fresh venv, a working folder outside the checkout, an environment without the checkout)."""
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    # Built from a copy: setuptools' in-tree build/lib would otherwise carry stale files into the wheel, and the
    # checkout stays untouched (no build/ or egg-info written there).
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*SOURCE_IGNORED))
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source)],
        cwd=base,
        env=dict(os.environ),
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    assert "is absent from the `packages` configuration" not in built.stdout + built.stderr
    (wheel,) = dist.glob("tritonfleet-*.whl")
    environment = base / "venv"
    venv.EnvBuilder(with_pip=True).create(environment)
    bin_dir = environment / "bin"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for requirement in (TORCH_SPEC, f"{wheel}[export,deploy,cpu]"):
        installed = _run([*pip, requirement], cwd=base, env=env, timeout=INSTALL_TIMEOUT_S)
        assert installed.returncode == 0, f"pip install {requirement}:\n{installed.stderr[-3000:]}"
    work = base / "elsewhere"
    work.mkdir()
    yield bin_dir, work, env


def test_the_package_comes_from_the_wheel_not_the_checkout(user):
    bin_dir, work, env = user
    located = _run(
        [str(bin_dir / "python"), "-c", "import tritonfleet.export as e, tritonfleet.cli; print(e.__file__)"],
        cwd=work,
        env=env,
    )
    assert located.returncode == 0, located.stderr
    assert Path(located.stdout.strip()).is_relative_to(bin_dir.parent) and ROOT not in Path(located.stdout).parents
    overview = _run([str(bin_dir / "tritonfleet"), "--help"], cwd=work, env=env)
    assert overview.returncode == 0 and "embed-fasta" in overview.stdout


def test_a_missing_external_tool_is_one_line(user):
    bin_dir, work, env = user
    result = _run([str(bin_dir / "tritonfleet"), "perf-analyzer", "path"], cwd=work, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "perf_analyzer is not installed" in result.stderr


def test_export_torch_from_a_user_file(user):
    bin_dir, work, env = user
    (work / "user_model.py").write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Linear(4, 3).eval(), [(torch.randn(2, 4),), (torch.randn(3, 4),)]\n"
    )
    result = _run(
        [str(bin_dir / "tritonfleet"), "export", "torch", "--factory", "user_model:build", "--name", "lin",
         "--formats", "onnx", "--target", "cpu:1", "--output", "torch_repository"],
        cwd=work,
        env={**env, "PYTHONPATH": str(work)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (work / "torch_repository" / "lin_onnx" / "1" / "model.onnx").is_file()
    assert json.loads((work / "torch_repository" / "serving_target.json").read_text())["target"] == "cpu:1"


def _ready_addresses(process: subprocess.Popen) -> tuple[str, str]:
    """(HTTP, gRPC) from the `tritonserver ready` line, waiting at most STARTUP_TIMEOUT_S."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(line)
        if line.startswith("tritonserver ready"):
            words = line.split()
            return words[words.index("HTTP") + 1], words[words.index("gRPC") + 1]
        if process.poll() is not None and lines.empty():
            break
    raise AssertionError("tritonfleet serve did not become ready:\n" + "".join(seen[-40:]))


def test_export_serve_embed_from_outside_the_checkout(user):
    bin_dir, work, env = user
    tritonfleet = str(bin_dir / "tritonfleet")
    exported = _run(
        [tritonfleet, "export", "esm2", "--random-init", "8M", "--target", "cpu:2", "--formats", "onnx",
         "--parity-samples", "1", "--output", "repository"],
        cwd=work,
        env=env,
        timeout=600,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr[-3000:]
    repository = work / "repository"
    for model in ("esm2_tokenizer", "esm2_bls"):  # the served python models' code came from the package
        assert (repository / model / "1" / "model.py").read_bytes() == (
            ROOT / "export" / "esm2" / "served" / model / "model.py"
        ).read_bytes()
    assert json.loads((repository / "serving_target.json").read_text())["target"] == "cpu:2"

    server = subprocess.Popen(
        [tritonfleet, "serve", "--model-repository", "repository", "--http-port", "0", "--grpc-port", "0",
         "--metrics-port", "0"],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        http, grpc = _ready_addresses(server)
        embedded = _run([tritonfleet, "embed", PROTEIN, "--url", http, "--json"], cwd=work, env=env)
        assert embedded.returncode == 0, embedded.stderr
        (item,) = json.loads(embedded.stdout)
        assert len(item["embedding"]) == 320 and np.isfinite(item["embedding"]).all()
        health = _run([tritonfleet, "health", "--url", grpc, "--protocol", "grpc"], cwd=work, env=env)
        assert health.returncode == 0 and "ready=True" in health.stdout, health.stdout + health.stderr
        (work / "in.fasta").write_text(f">a\n{PROTEIN}\n>b\nGSHMLE\n>bad\nMK123\n")
        bulk = _run(
            [tritonfleet, "embed-fasta", "in.fasta", "--output", "out.npz", "--url", grpc, "--protocol", "grpc",
             "--no-progress"],
            cwd=work, env=env,
        )  # fmt: skip
        assert bulk.returncode == 0, bulk.stderr
        with np.load(work / "out.npz") as result:
            vectors = {key: result[key] for key in result.files}
        assert any(array.shape[-1] == 320 for array in vectors.values())
        assert "bad" in (work / "out.npz.rejected.tsv").read_text()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
    assert server.returncode == 0
