"""The exec launcher Model Analyzer uses as `triton_server_path` (deploy/local/tritonserver_exec.py): argument and
environment handling, without starting a server (TRITONFLEET_SERVER_EXEC_DRY_RUN prints what would be exec'd)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tritonfleet.deploy.local.runtime import TritonRuntime
from tritonfleet.deploy.local.server import LocalTritonServer
from tritonfleet.deploy.local.tritonserver_exec import (
    DEFAULT_EXIT_TIMEOUT_S,
    DRY_RUN_VARIABLE,
    WORKDIR_VARIABLE,
    exec_plan,
    server_options,
    write_shim,
)

# What Model Analyzer 1.58 passes in local mode: separate words, then its `triton_server_flags`.
MODEL_ANALYZER_ARGV = [
    "--model-repository", "/models", "--strict-model-config", "false", "--http-port", "18000",
    "--grpc-port", "18001", "--metrics-port", "18002", "--model-control-mode", "explicit",
    "--metrics-interval-ms", "1000",
]  # fmt: skip


@pytest.fixture(scope="module")
def runtime() -> TritonRuntime:
    return TritonRuntime.discover()


def _flag(command: list[str], name: str) -> list[str]:
    return [arg.split("=", 1)[1] for arg in command if arg.startswith(f"--{name}=")]


def test_model_analyzer_flags_become_server_options_and_the_rest_passes_through_in_order() -> None:
    options, backend_directory = server_options(MODEL_ANALYZER_ARGV)
    assert options.model_repository == Path("/models")
    assert (options.http_port, options.grpc_port, options.metrics_port) == (18000, 18001, 18002)
    assert options.model_control_mode == "explicit"
    assert options.load_models == ()  # Model Analyzer loads its variants itself
    assert options.exit_timeout_s == DEFAULT_EXIT_TIMEOUT_S  # inside Model Analyzer's 5 s before SIGKILL
    assert options.extra_args == ("--strict-model-config", "false", "--metrics-interval-ms", "1000")
    assert options.host == "127.0.0.1" and backend_directory is None


def test_equals_form_and_repeated_load_model() -> None:
    options, _ = server_options(
        ["--model-repository=/m", "--http-port=1", "--load-model=a", "--load-model", "b", "--exit-timeout-secs=9"]
    )
    assert options.http_port == 1 and options.load_models == ("a", "b") and options.exit_timeout_s == 9


def test_a_model_repository_is_required() -> None:
    with pytest.raises(SystemExit):
        server_options(["--http-port", "1"])


def test_same_command_as_the_project_launcher(runtime: TritonRuntime, tmp_path: Path) -> None:
    plan = exec_plan(MODEL_ANALYZER_ARGV, runtime, tmp_path)
    backends = tmp_path / "backends"
    assert plan.command[0] == str(runtime.server_binary)
    assert _flag(plan.command, "backend-directory") == [str(backends)]
    assert (backends / "python" / "libtriton_python.so").is_file()
    assert (backends / "onnxruntime" / "model.py").is_file()
    assert not any(arg.startswith("--load-model") for arg in plan.command)
    # python -m deploy.local (LocalTritonServer) builds its command with the same function and options.
    options, _ = server_options(MODEL_ANALYZER_ARGV)
    own_backends = [f"--backend-directory={backends}" if arg.startswith("--backend-directory=") else arg
                    for arg in LocalTritonServer(options, runtime).command()]  # fmt: skip
    assert plan.command == own_backends


def test_the_environment_puts_this_venv_first_and_drops_another_ones(
    runtime: TritonRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIRTUAL_ENV", "/elsewhere/venv")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere/site-packages")
    monkeypatch.setenv("PYTHONHOME", "/elsewhere")
    monkeypatch.setenv("PATH", "/elsewhere/bin:/usr/bin")
    env = exec_plan(MODEL_ANALYZER_ARGV, runtime, tmp_path).environment
    # The python stub embeds the interpreter that `python3` on PATH names: this venv's must come first.
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert env["VIRTUAL_ENV"] == sys.prefix and "PYTHONHOME" not in env
    assert "PYTHONPATH" not in env  # the venv's python3 first on PATH decides what the stub imports
    assert env["LD_LIBRARY_PATH"].split(":")[:2] == runtime.library_path().split(":")[:2]


def test_a_given_backend_directory_is_where_the_backends_are_assembled(runtime: TritonRuntime, tmp_path: Path) -> None:
    plan = exec_plan([*MODEL_ANALYZER_ARGV, "--backend-directory", str(tmp_path / "mine")], runtime, tmp_path / "w")
    assert _flag(plan.command, "backend-directory") == [str(tmp_path / "mine")]
    assert (tmp_path / "mine" / "python" / "triton_python_backend_stub").is_file()


def test_the_shim_runs_the_launcher_with_the_arguments_as_given(tmp_path: Path) -> None:
    shim = write_shim(tmp_path / "bin" / "tritonserver")
    assert os.access(shim, os.X_OK)
    env = {**os.environ, DRY_RUN_VARIABLE: "1", WORKDIR_VARIABLE: str(tmp_path / "work")}
    completed = subprocess.run(
        [str(shim), *MODEL_ANALYZER_ARGV, "--http-address", "0.0.0.0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    plan = json.loads(completed.stdout)
    assert _flag(plan["command"], "http-port") == ["18000"]
    assert _flag(plan["command"], "backend-directory") == [str(tmp_path / "work" / "backends")]
    # Extra flags follow the launcher's own, so a repeated one given by the caller wins (tritonserver keeps the last).
    assert plan["command"][-2:] == ["--http-address", "0.0.0.0"]
    assert plan["environment"]["PATH"].split(":")[0] == str(Path(sys.executable).parent)
