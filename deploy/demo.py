"""The main job, end to end: export ESM-2, serve it on the local tritonserver, embed a real protein.

    tritonfleet demo [--random-init 8M | --checkpoint facebook/esm2_t33_650M_UR50D] [--model-repository DIR]

Offline the default is RANDOM weights of the exact ESM-2 8M architecture (no downloads here): the served numbers
then prove the pipeline (served == eager PyTorch), not biology. With `--checkpoint` the real model is exported.
The precision is the export's default (`--precision auto`: int8 on a CPU with VNNI, else fp32); the served embedding
is checked against eager fp32 with that precision's gate (fp32: max abs diff <= 1e-4; int8/bf16: cosine >= 0.999).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from tritonfleet.client import ClientConfig, EmbeddingClient
from tritonfleet.contract.command_line import HelpFormatter, add_deprecated, warn_python_m
from tritonfleet.deploy.local import local_server
from tritonfleet.export.esm2 import export_esm2
from tritonfleet.export.parity import MIN_COSINE_POOLED

# Human ubiquitin (UniProt P0CG48, first 76 residues: one ubiquitin unit).
UBIQUITIN = "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG"


PROGRAM = "tritonfleet demo"


def parse_args(argv: list[str] | None, prog: str = PROGRAM) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument(
        "--random-init", default="8M", help="ESM-2 size of the random weights, used without --checkpoint (default: 8M)"
    )
    add_deprecated(weights, "--model-size", "--random-init", dest="random_init")
    weights.add_argument("--checkpoint", help="HF id or local dir of a real ESM-2 checkpoint")
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument(
        "--target",
        default=None,
        help="export --target: cpu:CORES, gpu:IDS, gpu:all or auto (default: cpu:N, this machine's usable cores)",
    )
    add_deprecated(parser, "--gpus", "--target", dest="gpus")
    parser.add_argument("--precision", default="auto", help="export --precision: auto, fp32, int8, bf16, fp16")
    parser.add_argument("--sequence", default=UBIQUITIN, help="protein to embed (default: human ubiquitin)")
    return parser.parse_args(argv)


def export_repository(args: argparse.Namespace) -> str:
    """Exports the repository; returns the precision it was exported in."""
    from tritonfleet.export.devices import legacy_target, plan_target, resolve_target, usable_cores

    weights = f"checkpoint {args.checkpoint}" if args.checkpoint else f"random {args.random_init} weights"
    text = args.target or legacy_target(getattr(args, "gpus", None), None) or f"cpu:{usable_cores()}"
    target, chosen_by_auto = resolve_target(text)
    print(
        f"exporting ESM-2 ({weights}, target {target}{' (auto)' if chosen_by_auto else ''}) into "
        f"{args.model_repository} ...",
        flush=True,
    )
    report = export_esm2(
        args.model_repository,
        random_init=None if args.checkpoint else args.random_init,
        checkpoint=args.checkpoint,
        precision=args.precision,
        devices=plan_target(target),
    )
    for variant, difference in report.parity.items():
        print(f"  parity {variant}: max abs diff {difference:.2e}", flush=True)
    for variant, cosines in report.similarity.items():
        figures = ", ".join(f"{name} {value:.5f}" for name, value in cosines.items())
        print(f"  quality gate {variant}: min cosine vs eager fp32 {figures}", flush=True)
    return report.precision


def main(argv: list[str] | None = None, prog: str = PROGRAM) -> int:
    args = parse_args(argv, prog)
    precision = export_repository(args)
    started = time.perf_counter()
    # Served as `python -m deploy.local` serves: with the supervisor that reloads a model whose stub dies.
    with local_server(args.model_repository, model_control_mode="explicit", self_heal=True) as server:
        print(
            f"tritonserver ready in {time.perf_counter() - started:.1f} s — HTTP {server.http_url}, "
            f"gRPC {server.grpc_url}, metrics {server.metrics_url} (self-healing on)",
            flush=True,
        )
        embeddings = {}
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            with EmbeddingClient(ClientConfig(url=url, protocol=protocol, model="esm2")) as client:
                embeddings[protocol] = client.embed([args.sequence])[0]
    vector = embeddings["http"]
    print(f"sequence ({len(args.sequence)} residues): {args.sequence}")
    print(
        f"embedding: {vector.shape[0]}-d float32, L2 norm {np.linalg.norm(vector):.4f}, first values "
        + np.array2string(vector[:6], precision=4, separator=", ")
    )
    same = np.array_equal(embeddings["http"], embeddings["grpc"])
    print(f"HTTP and gRPC embeddings bitwise equal: {same}")
    eager = eager_embedding(args)
    difference = float(np.abs(vector - eager).max())
    cosine = float(vector @ eager / (np.linalg.norm(vector) * np.linalg.norm(eager)))
    print(f"vs eager fp32 PyTorch: max abs diff {difference:.2e}, cosine {cosine:.6f}")
    passed = difference <= 1e-4 if precision == "fp32" else cosine >= MIN_COSINE_POOLED
    print(f"served precision: {precision}")
    gate = "max abs diff <= 1e-4" if precision == "fp32" else f"cosine >= {MIN_COSINE_POOLED}"
    print(f"gate ({gate}): {'passed' if passed else 'FAILED'}")
    if not args.checkpoint:
        print(
            "NOTE: RANDOM WEIGHTS (offline default) - the numbers show the pipeline works, not protein biology; "
            "use --checkpoint facebook/esm2_t33_650M_UR50D on a machine that can download it"
        )
    return 0 if same and passed else 1


def eager_embedding(args: argparse.Namespace) -> np.ndarray:
    """The same embedding from the eager PyTorch module the export started from."""
    import torch

    from tritonfleet.contract.esm2_tokens import encode_batch
    from tritonfleet.export.esm2.model import build_esm2

    model = build_esm2(checkpoint=args.checkpoint, random_init=None if args.checkpoint else args.random_init)
    input_ids, attention_mask = encode_batch([args.sequence])
    with torch.no_grad():
        embedding, _ = model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
    return embedding[0].numpy()


if __name__ == "__main__":
    warn_python_m(__spec__.name if __spec__ else None, "demo")
    sys.exit(main())
