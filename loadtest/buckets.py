"""Length-bucket report: padded-token waste and how well Triton's dynamic batcher can batch, per bucket choice.

Length mix: UniProtKB/Swiss-Prot-like, a log-normal with median 300 residues and mean ~360 (Swiss-Prot release 41
notes: 44,986,459 residues in 122,564 entries = 367 per entry; protein lengths are well known to be right-skewed,
roughly log-normal, with a median near 300). Sequences over 1022 residues (~2 %) are dropped: the server rejects them.

Two effects pull against each other. Each request is padded to its bucket (waste), and Triton batches only requests
of the same shape, so with exact-length padding (no buckets) almost no two requests share a shape and batches of 1
run. The offline part estimates both; `--repository` adds a live run: it serves an exported repository twice (our
buckets vs exact-length padding), sends the same requests through the `esm2` ensemble, and reads the mean batch size
the network model formed (inference_count / execution_count from Triton's statistics).

    python -m tritonfleet.loadtest.buckets [--repository <exported repo>] [--output reports/buckets.md]
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tritonfleet.contract.esm2_tokens import (
    DEFAULT_BUCKETS,
    MAX_RESIDUES,
    MAX_TOKENS,
    RUN_OVERHEAD_TOKENS_GPU,
    SPECIAL_TOKENS_PER_SEQUENCE,
    plan_shared_widths,
    random_proteins,
)
from tritonfleet.contract.model_config import read_config, write_config
from tritonfleet.loadtest.server_stats import average_batch, inference_statistics, statistics_delta

MEDIAN_RESIDUES = 300.0
MEAN_RESIDUES = 362.0
LOG_MEAN = math.log(MEDIAN_RESIDUES)
LOG_SIGMA = math.sqrt(2.0 * math.log(MEAN_RESIDUES / MEDIAN_RESIDUES))  # log-normal: mean = median * exp(s^2/2)
EXACT_LENGTH = tuple(range(SPECIAL_TOKENS_PER_SEQUENCE + 1, MAX_TOKENS + 1))  # "no buckets": every length its own


def sample_lengths(count: int, seed: int = 0) -> np.ndarray:
    """Residue counts from the Swiss-Prot-like log-normal, truncated to [1, MAX_RESIDUES]."""
    rng = np.random.default_rng(seed)
    lengths = np.empty(0, dtype=np.int64)
    while lengths.size < count:
        draw = np.rint(rng.lognormal(LOG_MEAN, LOG_SIGMA, size=2 * count)).astype(np.int64)
        lengths = np.concatenate([lengths, draw[(draw >= 1) & (draw <= MAX_RESIDUES)]])
    return lengths[:count]


def padded_lengths(token_lengths: np.ndarray, buckets: Sequence[int]) -> np.ndarray:
    return np.asarray(buckets)[np.searchsorted(buckets, token_lengths, side="left")]


@dataclass(frozen=True)
class BucketStats:
    """Offline figures of one bucket choice."""

    label: str
    buckets: tuple[int, ...]
    waste: float  # padded tokens / all tokens computed, each request padded to its own bucket
    expected_batch: float  # mean batch size Triton forms from `window` queued requests in random order

    @property
    def count(self) -> int:
        return len(self.buckets)


def analyse(
    label: str,
    buckets: Sequence[int],
    lengths: np.ndarray,
    window: int,
    max_batch: int = 64,
    run_overhead_tokens: int = 0,
) -> BucketStats:
    """Padding waste per request, and the mean batch size Triton's dynamic batcher forms from queues of `window`.

    Triton's batcher takes queued requests in arrival order and closes a batch at the first request whose shape
    differs, so a batch is a run of consecutive same-width requests (capped at `max_batch`). With
    `run_overhead_tokens` each window (one tokenizer execute()) is first re-padded by `plan_shared_widths`.
    """
    tokens = lengths + SPECIAL_TOKENS_PER_SEQUENCE
    padded = padded_lengths(tokens, buckets)
    if run_overhead_tokens:
        usable = (len(padded) // window) * window
        tokens, padded = tokens[:usable], padded[:usable].copy()
        for start in range(0, usable, window):
            group = [int(width) for width in padded[start : start + window]]
            padded[start : start + window] = plan_shared_widths(group, [1] * window, run_overhead_tokens)
    waste = float((padded - tokens).sum() / padded.sum())
    return BucketStats(label, tuple(buckets), waste, mean_run_batch(padded, window, max_batch))


def mean_run_batch(shapes: np.ndarray, window: int, max_batch: int = 64) -> float:
    """Mean batch size when each window of queued requests is cut into runs of equal consecutive shapes."""
    usable = (len(shapes) // window) * window
    batches = 0
    for group in shapes[:usable].reshape(-1, window):
        run_starts = np.flatnonzero(np.diff(group) != 0) + 1
        run_lengths = np.diff(np.concatenate([[0], run_starts, [window]]))
        batches += int(np.ceil(run_lengths / max_batch).sum())
    return usable / batches


def optimal_buckets(lengths: np.ndarray, count: int, step: int = 16) -> tuple[int, ...]:
    """`count` buckets (multiples of `step`, the last MAX_TOKENS) minimising padded tokens (dynamic programming)."""
    tokens = lengths + SPECIAL_TOKENS_PER_SEQUENCE
    candidates = sorted({*range(step, MAX_TOKENS, step), MAX_TOKENS})
    histogram = np.bincount(tokens, minlength=MAX_TOKENS + 1).astype(np.float64)
    cumulative_count = np.cumsum(histogram)
    cumulative_tokens = np.cumsum(histogram * np.arange(MAX_TOKENS + 1))

    def cost(low: int, high: int) -> float:  # padding of lengths in (low, high] padded to high
        n = cumulative_count[high] - cumulative_count[low]
        return high * n - (cumulative_tokens[high] - cumulative_tokens[low])

    size = len(candidates)
    best = np.full((count + 1, size), np.inf)
    choice = np.zeros((count + 1, size), dtype=np.int64)
    for j, high in enumerate(candidates):
        best[1, j] = cost(0, high)
    for k in range(2, count + 1):
        for j in range(size):
            for i in range(j):
                value = best[k - 1, i] + cost(candidates[i], candidates[j])
                if value < best[k, j]:
                    best[k, j], choice[k, j] = value, i
    result, j = [], size - 1
    for k in range(count, 0, -1):
        result.append(candidates[j])
        j = choice[k, j]
    return tuple(sorted(result))


@dataclass(frozen=True)
class LiveStats:
    label: str
    order: str
    requests: int
    seconds: float
    mean_batch: float
    executions: int


def measure_live(
    repository: Path,
    buckets: Sequence[int],
    lengths: np.ndarray,
    concurrency: int,
    label: str,
    run_overhead_tokens: int = 0,
    model: str = "esm2",
) -> list[LiveStats]:
    """Serves a copy of `repository` with the given tokenizer buckets; sends the sequences to `model` (the `esm2`
    ensemble or the `esm2_bls` pipeline) through the project's client in random order, then sorted by length (what
    a bulk client can do), and reports the batches the network model formed each time."""
    import tritonclient.grpc as grpcclient

    from tritonfleet.client import ClientConfig, EmbeddingClient
    from tritonfleet.deploy.local import local_server

    rng = np.random.default_rng(1)
    sequences = [random_proteins(1, rng, int(length), int(length))[0] for length in lengths]
    results = []
    with tempfile.TemporaryDirectory(prefix="bucket-report-") as workdir:
        copy = Path(workdir) / "repository"
        shutil.copytree(repository, copy)
        for tokenizing_model in ("esm2_tokenizer", "esm2_bls"):
            config = read_config(copy / tokenizing_model)
            config.parameters["length_buckets"].string_value = ",".join(map(str, buckets))
            config.parameters["run_overhead_tokens"].string_value = str(run_overhead_tokens)
            write_config(config, copy / tokenizing_model)
        network = read_config(copy / "esm2").ensemble_scheduling.step[-1].model_name
        with local_server(copy) as server, grpcclient.InferenceServerClient(server.grpc_url) as statistics_client:
            config = ClientConfig(url=server.grpc_url, protocol="grpc", model=model, max_in_flight=concurrency)
            with EmbeddingClient(config) as client:
                client.model_spec()  # read once, outside the measurement
                for order, batch in (("random", sequences), ("sorted by length", sorted(sequences, key=len))):
                    before = inference_statistics(statistics_client, network)
                    started = time.perf_counter()
                    with ThreadPoolExecutor(max_workers=concurrency) as pool:
                        list(pool.map(lambda sequence: client.embed([sequence]), batch))
                    seconds = time.perf_counter() - started
                    delta = statistics_delta(before, inference_statistics(statistics_client, network))[network]
                    executions = delta["execution_count"]
                    mean_batch = average_batch({network: delta}, [network])
                    results.append(LiveStats(label, order, len(batch), seconds, mean_batch, executions))
    return results


def render(stats: list[BucketStats], live: list[LiveStats], lengths: np.ndarray, window: int) -> str:
    lines = [
        "# Length buckets for the ESM-2 tokenizer",
        "",
        "Generated by `python -m tritonfleet.loadtest.buckets` (loadtest/buckets.py).",
        "",
        f"Length mix: {len(lengths)} residue counts from a log-normal with median {MEDIAN_RESIDUES:.0f} and mean "
        f"{MEAN_RESIDUES:.0f} (UniProtKB/Swiss-Prot-like: release 41 notes give 367 residues per entry on average; "
        f"protein lengths are right-skewed, median near 300), truncated to 1..{MAX_RESIDUES}. Sample: median "
        f"{np.median(lengths):.0f}, mean {lengths.mean():.0f}, p90 {np.percentile(lengths, 90):.0f}, "
        f"p99 {np.percentile(lengths, 99):.0f}.",
        "",
        "*Waste* = padded tokens / tokens computed when each request is padded to its bucket (with run merging:",
        "to the width `plan_shared_widths` gives its run). *Expected batch* = mean batch size when a queue of "
        f"{window} single-sequence requests in random order is cut into batches the way Triton's dynamic batcher",
        "does: in arrival order, closing a batch at the first request of another shape.",
        "",
        "| bucket set | buckets | waste | expected batch |",
        "|---|---:|---:|---:|",
    ]
    for item in stats:
        shown = ",".join(map(str, item.buckets)) if item.count <= 16 else f"every length 3..{MAX_TOKENS}"
        lines.append(f"| {item.label} | {item.count} ({shown}) | {item.waste:.1%} | {item.expected_batch:.1f} |")
    if live:
        lines += [
            "",
            "## Live: Triton's own batch sizes",
            "",
            "The same sequences sent one per request through the `esm2` ensemble (or, where the row says so, the",
            "`esm2_bls` pipeline); mean batch size of the network model = inference_count / execution_count from",
            "Triton's statistics (CPU, 8M random weights, concurrent clients).",
            "",
            "| bucket set | request order | requests | executions | mean batch | wall s |",
            "|---|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {item.label} | {item.order} | {item.requests} | {item.executions} | {item.mean_batch:.2f} "
            f"| {item.seconds:.1f} |"
            for item in live
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--window", type=int, default=16, help="requests per tokenizer execute() for the estimate")
    parser.add_argument("--repository", type=Path, help="an exported repository (with weights) for the live run")
    parser.add_argument("--live-requests", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--output", type=Path, default=Path("reports/buckets.md"))
    args = parser.parse_args(argv)

    lengths = sample_lengths(args.samples)
    powers_of_two = (32, 64, 128, 256, 512, MAX_TOKENS)
    stats = [
        analyse("no buckets (exact length)", EXACT_LENGTH, lengths, args.window),
        analyse("powers of two", powers_of_two, lengths, args.window),
        analyse("tritonfleet DEFAULT_BUCKETS", DEFAULT_BUCKETS, lengths, args.window),
    ]
    stats.extend(
        analyse(f"optimal {count}", optimal_buckets(lengths, count), lengths, args.window)
        for count in (4, 6, 8, 10, 12, 16)
    )
    merged = f"DEFAULT_BUCKETS + run merging ({RUN_OVERHEAD_TOKENS_GPU}, GPU default)"
    stats += [
        analyse(
            merged,
            DEFAULT_BUCKETS,
            lengths,
            args.window,
            run_overhead_tokens=RUN_OVERHEAD_TOKENS_GPU,
        ),
    ]
    live = []
    if args.repository:
        live_lengths = sample_lengths(args.live_requests, seed=1)
        live += measure_live(
            args.repository, DEFAULT_BUCKETS, live_lengths, args.concurrency, merged, RUN_OVERHEAD_TOKENS_GPU
        )
        live += measure_live(args.repository, DEFAULT_BUCKETS, live_lengths, args.concurrency, "DEFAULT_BUCKETS")
        live += measure_live(args.repository, EXACT_LENGTH, live_lengths, args.concurrency, "no buckets")
        live += measure_live(
            args.repository,
            DEFAULT_BUCKETS,
            live_lengths,
            args.concurrency,
            "DEFAULT_BUCKETS via esm2_bls",
            0,
            "esm2_bls",
        )
    text = render(stats, live, lengths, args.window)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
