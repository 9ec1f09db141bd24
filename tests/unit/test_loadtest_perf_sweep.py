"""perf_analyzer input data and CSV parsing (no server, no perf_analyzer binary)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tritonfleet.contract import esm2_tokens as esm_tokenizer
from tritonfleet.contract.tensors import TensorSpec
from tritonfleet.loadtest.perf_sweep import (
    SweepConfig,
    build_input_data,
    markdown_table,
    parse_perf_csv,
    perf_analyzer_args,
)
from tritonfleet.loadtest.workload import ModelTarget, generate_sequences

ONNX = ModelTarget(
    name="esm2_onnx",
    platform="onnxruntime_onnx",
    backend="",
    max_batch_size=64,
    inputs=(TensorSpec("INPUT_IDS", "int64", (-1,)), TensorSpec("ATTENTION_MASK", "int64", (-1,))),
    outputs=(TensorSpec("EMBEDDING", "float32", (320,)),),
)
TOKENIZER = ModelTarget(
    name="esm2_tokenizer",
    platform="",
    backend="python",
    max_batch_size=64,
    inputs=(TensorSpec("SEQUENCE", "object", (1,)),),
    outputs=(TensorSpec("INPUT_IDS", "int64", (-1,)),),
)

# Verbatim layout of perf_analyzer 2.60 `-f` output (this project's machine, esm2_onnx over gRPC).
CONCURRENCY_CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
    "1,3.05085,10,1369,137972,44,163998,1716,4,203814,676589,718836,718836\n"
    "2,5.5,12,1400,150000,50,170000,1800,5,300000,700000,750000,800000\n"
)
REQUEST_RATE_CSV = (
    "Request Rate,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
    "Avg GPU Utilization,Avg GPU Power Usage,Max GPU Memory Usage,Total GPU Memory\n"
    "4.5,4.4,9,1200,1000,40,150000,1500,3,160000,180000,190000,210000,GPU-1:0.5;,GPU-1:70;,GPU-1:1e9;,GPU-1:8e10;\n"
    "\n"
    "Server Metrics,...\n"
)


def test_token_input_data_uses_valid_ids_and_bucket_shapes() -> None:
    sequences = generate_sequences(20, "swissprot")
    data = build_input_data(ONNX, sequences, esm_tokenizer.DEFAULT_BUCKETS)
    json.dumps(data)  # serialisable as perf_analyzer reads it
    assert len(data["data"]) == 20
    for sequence, step in zip(sequences, data["data"]):
        ids, mask = step["INPUT_IDS"], step["ATTENTION_MASK"]
        assert ids["shape"] == mask["shape"] == [esm_tokenizer.bucket_for(len(sequence) + 2)]
        assert len(ids["content"]) == ids["shape"][0]
        assert all(0 <= token < esm_tokenizer.VOCAB_SIZE for token in ids["content"])
        assert ids["content"][0] == esm_tokenizer.CLS_ID
        assert ids["content"][len(sequence) + 1] == esm_tokenizer.EOS_ID
        assert sum(mask["content"]) == len(sequence) + 2
        residue_ids = ids["content"][1 : len(sequence) + 1]
        assert residue_ids == [esm_tokenizer.TOKEN_TO_ID[c] for c in sequence]


def test_bytes_input_data_carries_the_sequence_text() -> None:
    data = build_input_data(TOKENIZER, ["MKTAYIAK"], esm_tokenizer.DEFAULT_BUCKETS)
    assert data == {"data": [{"SEQUENCE": {"content": ["MKTAYIAK"], "shape": [1]}}]}


def test_parse_concurrency_csv() -> None:
    points = parse_perf_csv(CONCURRENCY_CSV, "esm2_onnx", "grpc")
    assert [p.load for p in points] == [1.0, 2.0]
    first = points[0]
    assert first.mode == "concurrency" and first.throughput == pytest.approx(3.05085)
    assert first.p99_us == 718836 and first.server_queue_us == 137972 and first.server_compute_infer_us == 163998


def test_parse_request_rate_csv_ignores_gpu_columns_and_later_tables() -> None:
    points = parse_perf_csv(REQUEST_RATE_CSV, "esm2", "http")
    assert len(points) == 1
    assert points[0].mode == "request_rate" and points[0].load == 4.5 and points[0].p50_us == 160000


def test_parse_rejects_other_csv_and_accepts_empty() -> None:
    assert parse_perf_csv("", "m", "http") == []
    with pytest.raises(ValueError, match="not a perf_analyzer CSV"):
        parse_perf_csv("a,b\n1,2\n", "m", "http")


def test_markdown_table_converts_to_milliseconds() -> None:
    table = markdown_table(parse_perf_csv(CONCURRENCY_CSV, "esm2_onnx", "grpc"))
    assert "| esm2_onnx | grpc | concurrency | 1 | 3.1 | 203.81 | 718.84 | 137.97 | 165.76 | 1.38 |" in table
    assert not math.isnan(len(table))


def test_perf_analyzer_arguments_for_both_modes(tmp_path: Path) -> None:
    config = SweepConfig(http_url="http://127.0.0.1:8000", grpc_url="127.0.0.1:8001", models=("esm2",))
    concurrency = perf_analyzer_args(config, "esm2", "http", tmp_path / "d.json", tmp_path / "o.csv", "concurrency", 4)
    assert concurrency[:6] == ["-m", "esm2", "-u", "127.0.0.1:8000", "-i", "http"]
    assert concurrency[concurrency.index("--concurrency-range") + 1] == "4"
    assert "--measurement-interval" in concurrency
    rate = perf_analyzer_args(config, "esm2", "grpc", tmp_path / "d.json", tmp_path / "o.csv", "request_rate", 2.5, 16)
    assert rate[rate.index("-u") + 1] == "127.0.0.1:8001"
    assert rate[rate.index("--request-rate-range") + 1] == "2.5"
    assert rate[rate.index("--request-count") + 1] == "16" and "--measurement-interval" not in rate
