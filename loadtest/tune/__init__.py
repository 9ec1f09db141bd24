"""Tune one model's Triton config for this machine with NVIDIA Model Analyzer, against the local runtime.

    python -m tritonfleet.loadtest.tune --model-repository model_repository --model esm2_onnx --p99-ms 1500
    python -m tritonfleet.loadtest.tune --preset smoke --model-repository REPO --model pooler_onnx --output DIR

`make tune` / `make tune-smoke`. Model Analyzer (the `tune` extra, `triton-model-analyzer`) runs in `local` launch
mode with the project's own tools: `triton_server_path` is a shim for `deploy.local.tritonserver_exec` (the binary,
backend directory and stub environment of `python -m deploy.local`), `perf_analyzer_path` a wrapper around the
project's perf_analyzer install, and perf_analyzer's `--input-data` is the project's protein workload. One run:

1. brute search over the model-config variants of `SearchSpace` (instance count x max_queue_delay x preferred batch
   sizes x backend thread count, each `KIND_CPU`) plus the shipped config, at each concurrency; objective: highest
   throughput whose p99 stays within `--p99-ms` (`model-analyzer profile`, bounded by `--profile-timeout-min`);
2. Model Analyzer's detailed reports for its best configs and the default (`model-analyzer report`);
3. its best `--candidates` re-measured against the shipped config on one server, interleaved round by round
   (A B C A B C ...), so a shared machine's load drifts hit every config alike; the winner comes from this
   same-run comparison, not from Model Analyzer's ranking alone;
4. the winner written as a ready repository (a copy of the input with the winner's config.pbtxt), the
   `python -m export` flags that reproduce it, and `summary.md`.

Everything lands under `--output` (default reports/tune/); `summary.md` is the one file meant to be committed.

The package, one module per job: `settings` (search space, windows, presets, output paths), `analyzer` (Model
Analyzer's YAML and running it), `ranking` (its results CSV, a config's knobs, export flags), `ab` (the interleaved
re-measurement and the choice), `run` (one run end to end), `summary` (summary.md, tune.json), `cli`.
"""

from tritonfleet.loadtest.studies.serving import free_ports, port_is_free
from tritonfleet.loadtest.tune.ab import Comparison, Decision, Remeasurement, choose, remeasure, summarize
from tritonfleet.loadtest.tune.analyzer import (
    INFERENCE_OUTPUT_FIELDS,
    default_variant,
    model_analyzer_executable,
    model_config_parameters,
    profile_config,
    report_config,
    run_model_analyzer,
    thread_parameter,
)
from tritonfleet.loadtest.tune.cli import PROGRAM, build_parser, main, settings_from_args
from tritonfleet.loadtest.tune.ranking import (
    RankedConfig,
    ResultRow,
    VariantSettings,
    export_command,
    export_flags,
    parse_results_csv,
    rank_configs,
)
from tritonfleet.loadtest.tune.run import TuneResult, prepare, tune, write_best_repository, write_comparison_csv
from tritonfleet.loadtest.tune.settings import (
    DEFAULT_OUTPUT,
    MIN_GAIN,
    PRESETS,
    RESULTS_CSV,
    RunPaths,
    SearchSpace,
    TuneError,
    TuneSettings,
    Windows,
)
from tritonfleet.loadtest.tune.summary import summary_markdown, write_outputs

__all__ = [
    "DEFAULT_OUTPUT", "INFERENCE_OUTPUT_FIELDS", "MIN_GAIN", "PRESETS", "PROGRAM", "RESULTS_CSV",
    "Comparison", "Decision", "RankedConfig", "Remeasurement", "ResultRow", "RunPaths", "SearchSpace", "TuneError",
    "TuneResult", "TuneSettings", "VariantSettings", "Windows", "build_parser", "choose", "default_variant",
    "export_command", "export_flags", "free_ports", "main", "model_analyzer_executable", "model_config_parameters",
    "parse_results_csv", "port_is_free", "prepare", "profile_config", "rank_configs", "remeasure", "report_config",
    "run_model_analyzer", "settings_from_args", "summarize", "summary_markdown", "thread_parameter", "tune",
    "write_best_repository", "write_comparison_csv", "write_outputs",
]  # fmt: skip
