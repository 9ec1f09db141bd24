"""Packed vs padded batches on CPU, in one run: does packing sequences without padding pay at the CPU plan?

    python -m tritonfleet.loadtest.packed_study --quick             # < 3 min: 8M, 48 proteins, batch 1 and 8
    python -m tritonfleet.loadtest.packed_study --output reports/packed.md   # full: 8M and 35M, batch 1/4/8/16

ESM-2 with random weights, the export's fused ONNX graph and its packed twin (export/esm2/packed.py) built from the
same module, in the CPU plan's precision and thread layout (`export.devices.plan_devices("none")`: N engines x T
intra-op threads, side by side, as the served instances run). The Swiss-Prot-like length mix arrives in random
order and is cut into consecutive batches of B sequences (what a dynamic batcher forms from waiting requests):
padded = each batch padded to its longest sequence's bucket (as the tokenizer pads, `DEFAULT_BUCKETS`); packed = the
same batch back to back, with either attention form of the packed graph (one padded MultiHeadAttention, as GPU plans
export it; or a loop over the sequences, as CPU repositories export it). Every engine embeds every batch; the rate
is the whole mix's, best of `--repeats`, variants alternating; the packed EMBEDDING is checked against the padded.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tritonfleet.contract.command_line import HelpFormatter
from tritonfleet.contract.engines import Engine, open_engine
from tritonfleet.contract.esm2_tokens import DEFAULT_BUCKETS, encode_batch
from tritonfleet.export.esm2.packed import EMBEDDING, SEQUENCE_ENDS, TOKENS_INPUT, pack_sequences
from tritonfleet.loadtest.bench.engines import SideBySideRun, run_side_by_side

QUICK = {"sizes": "8M", "sequences": 32, "batch_sizes": "1,8", "repeats": 1}
FULL = {"sizes": "8M,35M", "sequences": 256, "batch_sizes": "1,4,8,16", "repeats": 2}


# The variants compared: the padded network, and the packed graph with each attention form (export/esm2/packed.py).
VARIANTS = ("padded", "packed, padded attention", "packed, per-sequence attention")


@dataclass(frozen=True)
class Rate:
    seq_per_s: float  # wall clock: on a machine shared with other work it measures the neighbours too
    seq_per_cpu_s: float  # sequences per CPU-second of this process (its engines' threads only)


@dataclass(frozen=True)
class Point:
    size: str
    precision: str
    batch_size: int
    rates: dict[str, Rate]  # by VARIANTS name
    padding_fraction: float  # padded tokens / real tokens of the padded batches
    max_abs_diff: float  # packed vs padded EMBEDDING, every sequence, both packed forms

    def ratio(self, variant: str) -> float:
        """variant / padded, by CPU time."""
        return self.rates[variant].seq_per_cpu_s / self.rates["padded"].seq_per_cpu_s


# A batch's arrays, in the order the engines take them. run_side_by_side counts a batch's sequences by its first
# array's rows: a packed batch gives its sequence ends first.
PADDED_INPUTS = ("INPUT_IDS", "ATTENTION_MASK")
PACKED_INPUTS = (SEQUENCE_ENDS, TOKENS_INPUT)


@dataclass(frozen=True)
class Embedder:
    """An engine as `run_side_by_side` calls it: the arrays of `inputs`, in that order -> EMBEDDING."""

    engine: Engine
    inputs: tuple[str, ...]

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        return self.engine.run(dict(zip(self.inputs, arrays)), [EMBEDDING])[EMBEDDING]


def padded_batch(batch: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return encode_batch(batch, DEFAULT_BUCKETS)


def packed_batch(batch: list[str]) -> tuple[np.ndarray, np.ndarray]:
    packed = pack_sequences(batch)
    return packed.ends, packed.tokens


def padding_fraction(batches: list[list[str]]) -> float:
    real = sum(len(protein) + 2 for batch in batches for protein in batch)
    padded = sum(padded_batch(batch)[0].size for batch in batches)
    return padded / real - 1.0


def build_models(size: str, precision: str, folder: Path) -> dict[str, Path]:
    """The fused network (padded batches, the CPU plans' per-sequence layout) and both packed graphs of one
    random-weight module, int8 quantized like the export."""
    from functools import partial

    from tritonfleet.export.esm2.model import build_esm2
    from tritonfleet.export.esm2.onnx_graph import build_esm2_onnx
    from tritonfleet.export.esm2.packed import build_packed_esm2_onnx

    module = build_esm2(random_init=size)
    builders = (
        partial(build_esm2_onnx, attention="per_sequence"),  # the network as CPU plans ship it
        partial(build_packed_esm2_onnx, attention="padded"),
        partial(build_packed_esm2_onnx, attention="per_sequence"),
    )
    paths = {}
    for index, (variant, builder) in enumerate(zip(VARIANTS, builders)):
        path = folder / f"{size}_{index}.onnx"
        if precision == "int8":
            from tritonfleet.export.quantize import quantize_onnx_int8

            fp32 = path.with_name(path.name + ".fp32")
            builder(module, fp32)
            quantize_onnx_int8(fp32, path)
            fp32.unlink()
        else:
            builder(module, path)
        paths[variant] = path
    return paths


def measure(size: str, precision: str, sequences: list[str], batch_sizes: list[int], repeats: int, plan) -> list[Point]:
    instances, threads = plan.cpu_instances, plan.cpu_threads
    points = []
    with tempfile.TemporaryDirectory(prefix="packed-study-") as tmp:
        paths = build_models(size, precision, Path(tmp))
        engines = {
            v: [
                Embedder(open_engine(path, "onnx", threads=threads), PADDED_INPUTS if v == "padded" else PACKED_INPUTS)
                for _ in range(instances)
            ]
            for v, path in paths.items()
        }
        try:
            for batch_size in batch_sizes:
                batches = [sequences[i : i + batch_size] for i in range(0, len(sequences), batch_size)]
                padded = [padded_batch(batch) for batch in batches]
                packed = [packed_batch(batch) for batch in batches]
                inputs = {v: padded if v == "padded" else packed for v in VARIANTS}
                for variant in VARIANTS:  # first-run allocations out of the timing
                    run_side_by_side(engines[variant], inputs[variant][:instances])
                runs: dict[str, list[SideBySideRun]] = {v: [] for v in VARIANTS}
                for _ in range(repeats):  # variants alternate, so that a noisy neighbour hits each
                    for variant in VARIANTS:
                        runs[variant].append(run_side_by_side(engines[variant], inputs[variant], keep_outputs=True))
                difference = max(
                    float(np.abs(a - b).max())
                    for variant in VARIANTS[1:]
                    for a, b in zip(runs["padded"][-1].outputs, runs[variant][-1].outputs)
                )
                count = len(sequences)
                rates = {
                    v: Rate(count / min(run.elapsed_s for run in timed), count / min(run.cpu_s for run in timed))
                    for v, timed in runs.items()
                }
                point = Point(size, precision, batch_size, rates, padding_fraction(batches), difference)
                print(
                    f"{size} {precision} batch {batch_size}: "
                    + ", ".join(f"{v} {r.seq_per_cpu_s:.2f} seq/CPU-s" for v, r in rates.items())
                    + f"; padding {point.padding_fraction:.0%}",
                    flush=True,
                )
                points.append(point)
        finally:
            for embedder in (embedder for group in engines.values() for embedder in group):
                embedder.engine.close()
    return points


def render(points: list[Point], header_lines: list[str], plan, sequences: list[str], minutes: float) -> str:
    lengths = np.array([len(protein) for protein in sequences])
    lines = [
        "# Packed vs padded batches on CPU",
        "",
        *header_lines,
        f"- Plan: {plan.cpu_instances} engine(s) x {plan.cpu_threads or 'default'} intra-op thread(s) side by side "
        f"(the CPU plan's instances); {len(sequences)} proteins, Swiss-Prot-like lengths (median "
        f"{int(np.median(lengths))}, mean {lengths.mean():.0f}, max {lengths.max()}), random order, consecutive "
        f"batches; {minutes:.1f} min.",
        "- padded: each batch padded to its longest sequence's bucket; packed: the same batch back to back "
        "(export/esm2/packed.py); ESM-2 random weights, fused ONNX graphs from one module.",
        "",
        "- seq/CPU-s: sequences per CPU-second of the study's process (its engines' threads only); the x figures "
        "are against padded, on it. Wall seq/s is also shown: on a machine shared with other work it measures the "
        "neighbours too.",
        "",
        "| size | precision | batch | padded tokens | padded seq/CPU-s | packed, padded attention | packed, "
        "per-sequence attention | wall seq/s (padded / packed padded / packed per-seq) | max abs diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        padded, packed, per_sequence = (p.rates[v] for v in VARIANTS)
        lines.append(
            f"| {p.size} | {p.precision} | {p.batch_size} | {p.padding_fraction:.0%} | {padded.seq_per_cpu_s:.2f} | "
            f"{packed.seq_per_cpu_s:.2f} ({p.ratio(VARIANTS[1]):.2f}x) | {per_sequence.seq_per_cpu_s:.2f} "
            f"({p.ratio(VARIANTS[2]):.2f}x) | {padded.seq_per_s:.1f} / {packed.seq_per_s:.1f} / "
            f"{per_sequence.seq_per_s:.1f} | {p.max_abs_diff:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, prog: str = "python -m tritonfleet.loadtest.packed_study") -> int:
    from tritonfleet.contract.esm2.workload import generate_sequences
    from tritonfleet.export.devices import default_precision, plan_devices
    from tritonfleet.loadtest.studies.header import ReportHeader, command_line

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"small settings (< 3 min): {QUICK}")
    parser.add_argument("--sizes", help=f"ESM-2 sizes, random weights (default {FULL['sizes']})")
    parser.add_argument("--sequences", type=int, help=f"proteins in the mix (default {FULL['sequences']})")
    parser.add_argument("--batch-sizes", help=f"sequences per execution (default {FULL['batch_sizes']})")
    parser.add_argument("--repeats", type=int, help=f"timed passes, best kept (default {FULL['repeats']})")
    parser.add_argument("--precision", default="auto", help="fp32, int8 or auto (the CPU plan's default)")
    parser.add_argument("--output", type=Path, help="write the markdown report here (e.g. reports/packed.md)")
    args = parser.parse_args(argv)
    settings = {**(QUICK if args.quick else FULL)}
    for key in settings:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    plan = plan_devices("none")
    precision = default_precision(plan) if args.precision == "auto" else args.precision
    sequences = generate_sequences(int(settings["sequences"]), "swissprot")
    batch_sizes = [int(value) for value in str(settings["batch_sizes"]).split(",")]
    started = time.perf_counter()
    points = []
    for size in str(settings["sizes"]).split(","):
        points += measure(size, precision, sequences, batch_sizes, int(settings["repeats"]), plan)
    header = ReportHeader.collect(command_line(prog, argv))
    text = render(points, header.markdown(), plan, sequences, (time.perf_counter() - started) / 60)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
