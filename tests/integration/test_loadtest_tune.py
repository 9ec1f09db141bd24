"""`make tune-smoke` end to end: NVIDIA Model Analyzer (local launch mode, the project's tritonserver launcher and
perf_analyzer wrapper) searches two configs of a tiny exported model, then its report, the interleaved re-check and
the summary. Checks what the run produced, never how fast it was."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet.contract.model_config import read_config
from tritonfleet.loadtest.tune import PRESETS, RESULTS_CSV

PROJECT_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_tune_smoke_searches_two_cpu_configs_and_leaves_no_server(tmp_path: Path) -> None:
    pytest.importorskip("model_analyzer", reason="Model Analyzer (the `tune` extra) is not installed")
    repository = tmp_path / "repository"
    export = _run(
        ["tritonfleet.export", "torch", "--factory", "examples.my_model:build", "--name", "pooler",
         "--input-names", "IDS,MASK", "--output-names", "EMBEDDING",
         "--input-roles", "TOKEN_IDS,ATTENTION_MASK", "--output-roles", "EMBEDDING", "--gpus", "none",
         "--formats", "onnx", "--output", str(repository)],
        timeout=300,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr[-3000:]
    output = tmp_path / "tune"

    tuned = _run(
        ["tritonfleet.loadtest.tune", "--preset", "smoke", "--model-repository", str(repository),
         "--model", "pooler_onnx", "--output", str(output)],
        timeout=480,
    )  # fmt: skip

    assert tuned.returncode == 0, tuned.stdout[-6000:] + tuned.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO((output / RESULTS_CSV).read_text())))
    assert len(rows) == 2, rows
    assert {row["Model Config Path"] for row in rows} == {"pooler_onnx_config_default", "pooler_onnx_config_0"}
    assert all(float(row["Throughput (infer/sec)"]) > 0 for row in rows), rows
    variants = sorted((output / "work" / "output_model_repository").glob("*/config.pbtxt"))
    assert len(variants) == 2
    for path in variants:
        kinds = {group.kind for group in read_config(path).instance_group}
        assert kinds == {mc.ModelInstanceGroup.KIND_CPU}, path
    variant = read_config(output / "work" / "output_model_repository" / "pooler_onnx_config_0")
    smoke = PRESETS["smoke"]["space"]
    assert variant.instance_group[0].count == smoke.instance_counts[0]
    assert variant.parameters["intra_op_thread_count"].string_value == str(smoke.thread_counts[0])

    summary = (output / "summary.md").read_text()
    assert "shipped default" in summary and "pooler_onnx_config_0" in summary
    assert list((output / "reports" / "summaries" / "pooler_onnx").glob("result_summary.*"))  # Model Analyzer's
    run = json.loads((output / "tune.json").read_text())
    assert run["winner"] in {"pooler_onnx_config_default", "pooler_onnx_config_0"}
    chosen = read_config(output / "best_repository" / "pooler_onnx")
    assert chosen.name == "pooler_onnx" and (output / "best_repository" / "pooler_onnx" / "1" / "model.onnx").is_file()

    listening = {conn.laddr.port for conn in psutil.net_connections(kind="tcp") if conn.status == psutil.CONN_LISTEN}
    assert not listening & set(run["ports"]), "a server still listens on Model Analyzer's ports"
    workdir = str(output / "work" / "server")
    leftovers = [p.pid for p in psutil.process_iter(["cmdline"]) if workdir in " ".join(p.info["cmdline"] or [])]
    assert not leftovers, f"tritonserver or stub processes left: {leftovers}"
