"""Repeated sequences in bulk and interactive traffic: Triton's response cache vs the client's per-job dedup.

    python -m tritonfleet.loadtest.bulk_study            # ~12 min on 2 cores -> reports/bulk.md
    python -m tritonfleet.loadtest.bulk_study --quick    # ~2 min smoke run -> reports/bulk_quick.md

A FASTA where `repeat_fraction` of the records repeat an earlier record's sequence (new ids) is embedded by one
`embed-fasta` job with its defaults, on a fresh server per condition (a cold cache each time):

- neither: the server started without a response cache (`--response-cache-mb 0`), `embed-fasta --no-dedup`;
- server cache alone: the launcher's default cache, `--no-dedup` (every record is sent; repeats are answered by
  Triton's cache on the EMBEDDING-only entry model `embed-fasta` reaches, esm2_embedding);
- client dedup alone: no server cache, `embed-fasta` with its default per-job dedup (each distinct sequence sent once);
- both: the shipped defaults.

Every condition's vectors must equal the others' for every id. Then the interactive side: the project's client with
its defaults (interactive, routed to esm2_interactive) sends one protein again and again on a server with the default
cache: p50 of the repeats (cache hits) against p50 of fresh proteins (computed). The cache of a fleet is per
replica: each tritonserver holds its own (a repeat reaching another replica is computed there once more).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tritonfleet.contract.command_line import HelpFormatter
from tritonfleet.contract.esm2_tokens import random_proteins
from tritonfleet.loadtest.run import PROJECT_ROOT
from tritonfleet.loadtest.studies import ReportHeader, export_esm2_repository, exported_precision, scratch_folder, serve
from tritonfleet.loadtest.studies.header import command_line, write_report
from tritonfleet.loadtest.workload import generate_sequences, percentile

TARGET_SPEEDUP = 1.3  # cache alone and dedup alone vs neither, at least
TARGET_REPEAT_P50_MS = 3.0
# (name, server cache on, client dedup on)
CONDITIONS: tuple[tuple[str, bool, bool], ...] = (
    ("neither", False, False),
    ("server cache alone", True, False),
    ("client dedup alone", False, True),
    ("both (defaults)", True, True),
)


@dataclass(frozen=True)
class BulkStudyConfig:
    records: int = 2000
    repeat_fraction: float = 0.3
    length_mix: str = "swissprot"
    interactive_repeats: int = 200
    interactive_fresh: int = 50
    rounds: int = 2  # conditions run forward, then backward, ...; seconds are the mean over rounds
    model_size: str = "8M"
    precision: str = "auto"
    report_dir: Path = PROJECT_ROOT / "reports"
    name: str = "bulk"
    seed: int = 18

    def with_quick_settings(self) -> BulkStudyConfig:
        return dataclasses.replace(
            self,
            records=240,
            length_mix="short",
            interactive_repeats=50,
            rounds=1,
            interactive_fresh=10,
            name=f"{self.name}_quick",
        )


@dataclass
class ConditionResult:
    name: str
    server_cache: bool
    client_dedup: bool
    seconds: float
    exit_code: int
    requests: int  # sequences the server's entry models answered (cache hits included)
    cache_hits: int
    executions: int  # network executions
    rounds: tuple[float, ...] = ()  # seconds of each round


def pooled(name: str, rows: Sequence[ConditionResult]) -> ConditionResult:
    """One condition over its rounds: mean seconds, the worst exit code, the last round's server counts."""
    return dataclasses.replace(
        rows[-1],
        seconds=sum(row.seconds for row in rows) / len(rows),
        exit_code=max(row.exit_code for row in rows),
        rounds=tuple(round(row.seconds, 2) for row in rows),
    )


def repeated_fasta(path: Path, config: BulkStudyConfig) -> tuple[Path, int]:
    """A FASTA of `records` records, `repeat_fraction` of them repeating an earlier record's sequence (new ids),
    spread through the file; returns the path and the number of distinct sequences."""
    distinct = round(config.records * (1 - config.repeat_fraction))
    sequences = generate_sequences(distinct, config.length_mix, seed=config.seed)
    rng = random.Random(config.seed)
    records = list(sequences)
    for _ in range(config.records - distinct):
        position = rng.randrange(1, len(records) + 1)
        records.insert(position, rng.choice(records[:position]))  # a repeat of an earlier record
    path.write_text("".join(f">rec{index}\n{sequence}\n" for index, sequence in enumerate(records)))
    return path, len(set(records))


def server_counts(http_url: str) -> tuple[int, int, int]:
    """(sequences answered by entry models, cache hits, network executions) from Triton's statistics."""
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(http_url) as client:
        requests = hits = executions = 0
        for model in client.get_inference_statistics()["model_stats"]:
            config = client.get_model_config(model["name"], model["version"])
            if config.get("platform") == "ensemble":
                cached = int(model["inference_stats"]["cache_hit"]["count"])
                requests += int(model["inference_count"]) + cached  # inference_count leaves cache hits out
                hits += cached
            elif config.get("platform") == "onnxruntime_onnx":
                executions += int(model["execution_count"])
    return requests, hits, executions


def run_condition(
    name: str, repository: Path, fasta: Path, out: Path, server_cache: bool, client_dedup: bool
) -> ConditionResult:
    print(f"== {name}", flush=True)
    options = {} if server_cache else {"response_cache_bytes": 0}
    with serve(repository, **options) as server:
        command = [sys.executable, "-m", "tritonfleet.client", "embed-fasta", str(fasta), "--url", server.http_url]
        command += ["--output", str(out), "--no-progress", "--overwrite"] + ([] if client_dedup else ["--no-dedup"])
        started = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if completed.returncode != 0:
            print(completed.stdout[-2000:], completed.stderr[-2000:], file=sys.stderr)
        requests, hits, executions = server_counts(server.http_url)
    print(f"   {seconds:.1f} s, {requests} requests, {hits} cache hits, {executions} executions", flush=True)
    return ConditionResult(name, server_cache, client_dedup, seconds, completed.returncode, requests, hits, executions)


def read_vectors(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {str(record_id): vector for record_id, vector in zip(data["ids"], data["embeddings"])}


def compare_outputs(paths: Sequence[Path]) -> tuple[bool, float, int]:
    """(every id in every output with bit-identical vectors, largest difference, ids compared)."""
    outputs = [read_vectors(path) for path in paths if path.is_file()]
    if len(outputs) != len(paths) or not outputs:
        return False, math.nan, 0
    reference = outputs[0]
    same, largest = True, 0.0
    for other in outputs[1:]:
        if other.keys() != reference.keys():
            return False, math.nan, len(reference)
        for record_id, vector in reference.items():
            difference = float(np.max(np.abs(other[record_id] - vector))) if vector.size else 0.0
            largest = max(largest, difference)
            same = same and np.array_equal(other[record_id], vector)
    return same, largest, len(reference)


def interactive_repeats(repository: Path, config: BulkStudyConfig) -> dict[str, float | str]:
    """p50 of one protein sent again and again (cache hits after the first) and of fresh proteins, through the
    client's defaults on a server with the default cache."""
    from tritonfleet.client import ClientConfig, EmbeddingClient

    rng = np.random.default_rng(config.seed)
    (protein,) = random_proteins(1, rng, 50, 300)
    repeats, fresh = [], []
    with serve(repository) as server, EmbeddingClient(ClientConfig(url=server.http_url)) as client:
        entry = client.entry_spec("EMBEDDING").name
        first = client.embed([protein])
        for _ in range(config.interactive_repeats):
            started = time.perf_counter()
            again = client.embed([protein])
            repeats.append((time.perf_counter() - started) * 1000)
            if not np.array_equal(again, first):
                raise AssertionError("a cached interactive answer differs from the computed one")
        for other in random_proteins(config.interactive_fresh, rng, 50, 300):
            started = time.perf_counter()
            client.embed([other])
            fresh.append((time.perf_counter() - started) * 1000)
    return {"entry_model": entry, "repeat_p50_ms": percentile(repeats, 50), "fresh_p50_ms": percentile(fresh, 50)}


def run_study(config: BulkStudyConfig, work_dir: Path) -> tuple[BulkStudyConfig, dict]:
    repository = export_esm2_repository(
        work_dir / "repository", config.model_size, precision=config.precision, formats=("onnx",), parity_samples=0
    )
    config = dataclasses.replace(config, precision=exported_precision(repository))
    fasta, distinct = repeated_fasta(work_dir / "repeats.fasta", config)
    # An unmeasured first job: the first server and job of a run pay for cold file caches and imports.
    warmup = dataclasses.replace(config, records=min(config.records, 60), seed=config.seed + 1)
    run_condition("warm-up (not measured)", repository, repeated_fasta(work_dir / "warmup.fasta", warmup)[0],
                  work_dir / "warmup.npz", True, True)  # fmt: skip
    runs: dict[str, list[ConditionResult]] = {name: [] for name, _, _ in CONDITIONS}
    outputs = []
    for round_number in range(1, config.rounds + 1):
        order = CONDITIONS if round_number % 2 else tuple(reversed(CONDITIONS))
        for name, server_cache, client_dedup in order:
            out = work_dir / f"{name.split()[0]}_{round_number}.npz"
            runs[name].append(run_condition(name, repository, fasta, out, server_cache, client_dedup))
            outputs.append(out)
    results = [pooled(name, rows) for name, rows in runs.items()]
    identical, largest, compared = compare_outputs(outputs)
    return config, {
        "records": config.records,
        "distinct": distinct,
        "conditions": [dataclasses.asdict(result) for result in results],
        "identical": identical,
        "largest_difference": largest,
        "ids_compared": compared,
        "interactive": interactive_repeats(repository, config),
    }


def verdicts(study: dict) -> dict[str, float | bool]:
    seconds = {row["name"]: row["seconds"] for row in study["conditions"]}
    neither = seconds.get("neither", math.nan)
    cache = neither / seconds.get("server cache alone", math.nan)
    dedup = neither / seconds.get("client dedup alone", math.nan)
    repeat_p50 = float(study["interactive"]["repeat_p50_ms"])
    return {
        "cache_speedup": cache,
        "dedup_speedup": dedup,
        "cache_target_met": cache >= TARGET_SPEEDUP,
        "dedup_target_met": dedup >= TARGET_SPEEDUP,
        "identical": bool(study["identical"]),
        "repeat_p50_ms": repeat_p50,
        "repeat_target_met": repeat_p50 <= TARGET_REPEAT_P50_MS,
        "all_jobs_succeeded": all(row["exit_code"] == 0 for row in study["conditions"]),
    }


def render_markdown(config: BulkStudyConfig, study: dict, command: str) -> str:
    result = verdicts(study)
    header = ReportHeader.collect(command)
    machine = header.details
    neither = next((row["seconds"] for row in study["conditions"] if row["name"] == "neither"), math.nan)
    interactive = study["interactive"]
    lines = [
        "# Bulk jobs with repeated sequences: Triton's response cache and the client's dedup",
        "",
        f"Command: `{command}` {header.dated()}. Machine: {machine['cpu_model']}, "
        f"{machine['usable_cores']} usable cores, no GPU. Repository: `python -m export esm2 --random-init "
        f"{config.model_size}` defaults (ONNX only, {config.precision}), one local server per condition (a cold "
        "cache each time).",
        "",
        f"Input: {study['records']} FASTA records (`{config.length_mix}` length mix), {config.repeat_fraction:.0%} of "
        f"them repeating an earlier record's sequence under a new id ({study['distinct']} distinct sequences). One "
        "`embed-fasta` job with its defaults per condition; time is the job's wall clock (interpreter start "
        f"included), the mean over {config.rounds} round(s) run in alternating order (per-round seconds in the "
        "JSON). Server counts from Triton's statistics (last round): sequences answered by the entry models (cache "
        "hits included), cache hits, network executions (warmup executions included).",
        "",
        "| condition | server cache | client dedup | seconds | speedup vs neither | entry requests | cache hits | "
        "network executions | exit |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines.extend(
        f"| {row['name']} | {'on' if row['server_cache'] else 'off'} | {'on' if row['client_dedup'] else 'off'} | "
        f"{row['seconds']:.1f} | {neither / row['seconds']:.2f}x | {row['requests']} | {row['cache_hits']} | "
        f"{row['executions']} | {row['exit_code']} |"
        for row in study["conditions"]
    )
    lines += [
        "",
        f"Outputs: {'identical' if study['identical'] else 'NOT identical'} across the conditions for all "
        f"{study['ids_compared']} ids (largest difference {study['largest_difference']:.1e}).",
        "",
        f"Interactive repeats (the client's defaults, entry model `{interactive['entry_model']}`): p50 "
        f"{interactive['repeat_p50_ms']:.2f} ms for a protein sent again ({config.interactive_repeats} repeats, "
        f"cache hits, answers equal to the computed one) vs {interactive['fresh_p50_ms']:.1f} ms for fresh proteins "
        f"({config.interactive_fresh}).",
        "",
        "| target (issue 18) | measured | met |",
        "|---|---:|---|",
        f"| server cache alone >= {TARGET_SPEEDUP}x neither | {result['cache_speedup']:.2f}x | "
        f"{'yes' if result['cache_target_met'] else 'NO'} |",
        f"| client dedup alone >= {TARGET_SPEEDUP}x neither | {result['dedup_speedup']:.2f}x | "
        f"{'yes' if result['dedup_target_met'] else 'NO'} |",
        f"| identical vectors | {'yes' if result['identical'] else 'no'} | {'yes' if result['identical'] else 'NO'} |",
        f"| repeated interactive sequence p50 <= {TARGET_REPEAT_P50_MS:g} ms | {result['repeat_p50_ms']:.2f} ms | "
        f"{'yes' if result['repeat_target_met'] else 'NO'} |",
        "",
        "Where the cache lives: `response_cache { enable: true }` is set on the EMBEDDING-only entry models "
        "(`esm2_embedding`, `esm2_interactive`), never on `esm2`: Triton's cache key is the model, version and "
        "input names and bytes, not the requested outputs, so on `esm2` an `embed()` followed by `embed_residues()` "
        "of one sequence returned the first response, without RESIDUE_EMBEDDINGS "
        "(`tests/integration/test_traffic_plan.py` pins it). Cached answers equal computed ones because the CPU plan "
        "runs one sequence per execution (GPU plans cache only batch-invariant engines; bf16 never). Each server, "
        "each fleet replica included, has its own cache in its own memory (`python -m deploy.local "
        "--response-cache-mb`, default 256): a repeat that the balancer sends to another replica is computed once "
        "there too; the client's dedup works within one job whatever the replica.",
    ]
    return "\n".join(lines) + "\n"


def build_parser(prog: str = "python -m tritonfleet.loadtest.bulk_study") -> argparse.ArgumentParser:
    defaults = BulkStudyConfig()
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke-sized run (about 2 minutes)")
    parser.add_argument("--records", type=int, default=None, help=f"FASTA records (default {defaults.records})")
    parser.add_argument("--precision", default=defaults.precision, help="export precision (default: %(default)s)")
    parser.add_argument("--report-dir", type=Path, default=defaults.report_dir)
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="where the repository and outputs go (default: temp)"
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "python -m tritonfleet.loadtest.bulk_study") -> int:
    args = build_parser(prog).parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    config = BulkStudyConfig(report_dir=args.report_dir, precision=args.precision)
    if args.quick:
        config = config.with_quick_settings()
    if args.records is not None:
        config = dataclasses.replace(config, records=args.records)
    command = command_line(prog, argv)
    with scratch_folder("bulk-study-", keep=args.work_dir) as work_dir:
        config, study = run_study(config, work_dir)
    markdown = render_markdown(config, study, command.strip())
    report = write_report(config.report_dir, config.name, markdown, {"verdicts": verdicts(study), **study})
    print(report.read_text())
    return 0 if verdicts(study)["all_jobs_succeeded"] else 1


if __name__ == "__main__":
    sys.exit(main())
