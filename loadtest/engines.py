"""Engine study: in-process CPU speed of every ESM-2 engine variant the export offers, against eager PyTorch (SDPA)
of the same size, on the same inputs, with the same threads.

    tritonfleet engines [--sizes 8M 35M] [--threads 1 2] [--output reports/engines.md]

Each variant is the file `export_esm2` writes (so each passed its quality gate at export), loaded as the local
runtime loads it: ONNX Runtime sessions (intra-op threads = T, inter-op 1, all graph optimizations), TorchScript
under torch.inference_mode with torch.set_num_threads(T). Inputs are full rows of L tokens (<cls> + residues +
<eos>, no padding), batch B. Variants run interleaved, round by round, so that load from other processes hits them
alike; the figure is the median over rounds of the mean latency; seq/s = B / latency. RANDOM weights: speed does not
depend on them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tritonfleet.contract.command_line import HelpFormatter
from tritonfleet.contract.engines import EngineOptions, open_engine
from tritonfleet.contract.esm2_tokens import encode_batch, random_proteins
from tritonfleet.loadtest.bench.report import machine_description
from tritonfleet.loadtest.studies.header import command_line

# variant -> (export_esm2 arguments, format): every file a user can get from `python -m export esm2`. TorchScript
# has no int8 here: its dynamic int8 scales activations per tensor (not batch invariant), so an int8 export ships
# TorchScript in fp32; ONNX int8 is per-row (export.quantize).
VARIANTS: dict[str, tuple[dict, str]] = {
    "torchscript fp32": ({"precision": "fp32", "formats": ("torchscript",)}, "torchscript"),
    "torchscript bf16": ({"precision": "bf16", "formats": ("torchscript",)}, "torchscript"),
    "onnx exported fp32": ({"precision": "fp32", "formats": ("onnx",), "onnx_graph": "exported"}, "onnx"),
    "onnx fused fp32": ({"precision": "fp32", "formats": ("onnx",), "onnx_graph": "fused"}, "onnx"),
    "onnx exported int8": ({"precision": "int8", "formats": ("onnx",), "onnx_graph": "exported"}, "onnx"),
    "onnx fused int8": ({"precision": "int8", "formats": ("onnx",), "onnx_graph": "fused"}, "onnx"),
}
EAGER = "eager fp32 (SDPA)"
# For comparison only, not shipped: ONNX Runtime's dynamic int8 (one activation scale per tensor, so a sequence's
# vectors depend on its batch-mates; the export's invariance gate refuses it), quantized from the fused fp32 file.
PER_TENSOR_INT8 = "onnx fused int8 per-tensor (not shipped)"


@dataclass(frozen=True)
class Measurement:
    size: str
    threads: int
    length: int
    batch: int
    variant: str
    seq_per_s: float


def build_runners(size: str, threads: int, workdir: Path, refused: dict[str, str]) -> dict[str, Callable]:
    """{variant: run(ids, mask)} for eager and every variant that passes its gate for this size."""
    from tritonfleet.export.esm2 import export_esm2
    from tritonfleet.export.esm2.model import build_esm2
    from tritonfleet.export.parity import ParityError, eager_runner
    from tritonfleet.export.signature import ExportError

    runners: dict[str, Callable] = {EAGER: eager_runner(build_esm2(random_init=size), inference_mode=True)}
    for variant, (arguments, fmt) in VARIANTS.items():
        output = workdir / f"{size}-{variant.replace(' ', '-')}"
        if f"{size} {variant}" in refused:
            continue
        if not output.exists():
            try:
                export_esm2(output, random_init=size, **arguments)
            except (ParityError, ExportError) as error:
                refused[f"{size} {variant}"] = str(error)
                continue
        model = (
            output / "esm2_onnx" / "1" / "model.onnx"
            if fmt == "onnx"
            else output / "esm2_torchscript" / "1" / "model.pt"
        )
        runners[variant] = _open(model, fmt, threads)
    fused_fp32 = workdir / f"{size}-onnx-fused-fp32" / "esm2_onnx" / "1" / "model.onnx"
    if fused_fp32.is_file():
        from tritonfleet.export.quantize import quantize_onnx_int8_per_tensor

        per_tensor = workdir / f"{size}-per-tensor-int8.onnx"
        if not per_tensor.exists():
            quantize_onnx_int8_per_tensor(fused_fp32, per_tensor)
        runners[PER_TENSOR_INT8] = _open(per_tensor, "onnx", threads)
    return runners


def _open(model: Path, fmt: str, threads: int) -> Callable:
    """The file as the local runtime opens it: ONNX Runtime with `threads` intra-op and 1 inter-op thread,
    TorchScript with torch's (process-wide) `threads` under torch.inference_mode."""
    options = EngineOptions(inter_threads=1) if fmt == "onnx" else EngineOptions()
    return open_engine(model, fmt, threads, options=options)


def measure(
    runners: dict[str, Callable], size: str, threads: int, length: int, batch: int, rounds: int, round_s: float
) -> list[Measurement]:
    ids, mask = encode_batch(random_proteins(batch, np.random.default_rng(length), length - 2, length - 2), None)
    latencies: dict[str, list[float]] = {variant: [] for variant in runners}
    for run in runners.values():
        run(ids, mask)  # warm-up: allocations for this shape
    for _ in range(rounds):
        for variant, run in runners.items():
            calls, started = 0, time.perf_counter()
            while calls == 0 or time.perf_counter() - started < round_s:
                run(ids, mask)
                calls += 1
            latencies[variant].append((time.perf_counter() - started) / calls)
    return [
        Measurement(size, threads, length, batch, variant, batch / statistics.median(values))
        for variant, values in latencies.items()
    ]


def render(results: list[Measurement], refused: dict[str, str], command: str, seconds: float) -> str:
    machine = machine_description()
    variants = [EAGER, *(name for name in (*VARIANTS, PER_TENSOR_INT8) if any(r.variant == name for r in results))]
    index = {(r.size, r.threads, r.length, r.batch, r.variant): r.seq_per_s for r in results}
    keys = sorted({(r.size, r.threads, r.length, r.batch) for r in results}, key=lambda k: (len(k[0]), k[0], *k[1:]))
    lines = [
        "# ESM-2 engine variants on this CPU: speed against eager PyTorch",
        "",
        f"Generated by `{command}` (loadtest/engines.py) in {seconds / 60:.1f} min.",
        "",
        f"Machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores; Python {machine['python']}, torch "
        f"{machine.get('torch')}, onnxruntime {machine.get('onnxruntime')}. RANDOM weights (speed does not depend on "
        f"them). Load average at the end: {os.getloadavg()[0]:.2f}.",
        "",
        "Each cell: seq/s (ratio to eager fp32 PyTorch with SDPA attention, same size, length, batch and threads). "
        "Rows of L tokens without padding; median of interleaved rounds. Every variant is the file `python -m export "
        "esm2` writes, which passed its quality gate at export (fp32: max abs diff <= 1e-4; int8/bf16: pooled cosine "
        ">= 0.999 and per-residue >= 0.99 vs eager fp32; fp32/int8: a sequence's outputs alone vs inside padded mixed "
        "batches within 1e-5). ONNX int8 = per-row (per-token) activation scales, integer MatMuls (batch invariant); "
        f"`{PER_TENSOR_INT8}` = ONNX Runtime's dynamic int8, one activation scale per batch, for comparison only "
        "(refused by the invariance gate).",
        "",
        "| size | threads | L | batch | " + " | ".join(variants) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(variants),
    ]
    for key in keys:
        eager = index[(*key, EAGER)]
        cells = []
        for variant in variants:
            value = index.get((*key, variant))
            if value is None:
                cells.append("refused" if any(k.startswith(f"{key[0]} {variant}") for k in refused) else "—")
            else:
                cells.append(f"{value:.1f}" if variant == EAGER else f"{value:.1f} ({value / eager:.2f}x)")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | " + " | ".join(cells) + " |")
    if refused:
        lines += ["", "## Refused by their quality gate", ""]
        lines += [f"- {variant}: {message}" for variant, message in refused.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, prog: str = "tritonfleet engines") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["8M", "35M"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--lengths", nargs="+", type=int, default=[128, 384, 1022])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--max-tokens", type=int, default=4096, help="skip batches above this many tokens")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-seconds", type=float, default=0.5)
    parser.add_argument("--output", type=Path, default=Path("reports/engines.md"))
    args = parser.parse_args(argv)
    import torch

    started = time.perf_counter()
    results: list[Measurement] = []
    refused: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="engines-") as workdir:
        for size in args.sizes:
            for threads in args.threads:
                torch.set_num_threads(threads)
                runners = build_runners(size, threads, Path(workdir), refused)
                for length in args.lengths:
                    for batch in args.batches:
                        if batch > 1 and batch * length > args.max_tokens:
                            continue
                        rows = measure(runners, size, threads, length, batch, args.rounds, args.round_seconds)
                        results += rows
                        print(f"{size} t={threads} L={length} B={batch}: "
                              + ", ".join(f"{r.variant} {r.seq_per_s:.1f}" for r in rows), flush=True)  # fmt: skip
    command = command_line(prog, argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(results, refused, command.strip(), time.perf_counter() - started), encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
