"""Peak RSS of `embed-fasta` at two input sizes: memory must be bounded by the window, not by the input.

Target (issue 18): peak RSS at 100,000 records <= peak RSS at 10,000 records + 50 MB (short sequences are fine).
Each size runs `python -m tritonfleet.client embed-fasta` in its own process against one server, and its peak RSS is
the kernel's `ru_maxrss` of that process (`os.wait4`), so nothing is sampled and no peak is missed.

    # full (coordinator): every record distinct, against a local server started on the repository
    python -m tritonfleet.loadtest.bulk_rss --model-repository model_repository --records 10000,100000
    # quick (~1-3 min on 2 cores): the same record counts, 1,000 distinct sequences (the client's per-job dedup
    # sends each once; every record still goes through reading, planning, the journal and the assembly)
    python -m tritonfleet.loadtest.bulk_rss --model-repository model_repository --quick
    # or against a running server
    python -m tritonfleet.loadtest.bulk_rss --url 127.0.0.1:8001 --protocol grpc --quick

Prints one line per size and the verdict, and writes the figures as JSON with `--json FILE`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

TARGET_EXTRA_MB = 50.0


def write_fasta(path: Path, records: int, distinct: int, seed: int = 0) -> Path:
    """`records` short proteins (20-60 residues); `distinct` > 0 cycles through that many distinct sequences."""
    rng = np.random.default_rng(seed)
    alphabet = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    pool_size = distinct or records
    with path.open("w") as handle:
        pool: list[str] = []
        for index in range(records):
            if index < pool_size:
                sequence = "".join(rng.choice(alphabet, size=int(rng.integers(20, 61))))
                if distinct:
                    pool.append(sequence)
            else:
                sequence = pool[index % pool_size]
            handle.write(f">rec{index:07d} short test protein\n{sequence}\n")
    return path


def measure(cli_args: Sequence[str]) -> tuple[int, float, float]:
    """Runs the CLI; returns (exit code, peak RSS in MB, seconds)."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "tritonfleet.client", *cli_args], stdout=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    process.stdout.close()
    return process.returncode, usage.ru_maxrss / 1024.0, time.monotonic() - started  # ru_maxrss: KiB on Linux


@contextlib.contextmanager
def server_url(args: argparse.Namespace) -> Iterator[str]:
    if args.url:
        yield args.url
        return
    from tritonfleet.deploy.local import local_server

    with local_server(args.model_repository) as server:
        yield server.grpc_url if args.protocol == "grpc" else server.http_url


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server (HOST:PORT)")
    where.add_argument("--model-repository", type=Path, help="start a local server on this repository")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="grpc")
    parser.add_argument("--records", default="10000,100000", help="comma-separated record counts")
    parser.add_argument("--distinct", type=int, default=0, help="distinct sequences (0: every record distinct)")
    parser.add_argument("--quick", action="store_true", help="--distinct 1000 (dedup sends each once)")
    parser.add_argument("--format", choices=("npz", "parquet", "hdf5"), default="npz")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    distinct = 1000 if args.quick and not args.distinct else args.distinct
    sizes = [int(text) for text in args.records.split(",")]
    suffix = {"npz": ".npz", "parquet": ".parquet", "hdf5": ".h5"}[args.format]
    results = []
    with tempfile.TemporaryDirectory(prefix="bulk-rss-") as scratch, server_url(args) as url:
        for size in sizes:
            fasta = write_fasta(Path(scratch) / f"in-{size}.fasta", size, distinct)
            output = Path(scratch) / f"out-{size}{suffix}"
            code, peak_mb, seconds = measure(
                ["embed-fasta", str(fasta), "--output", str(output), "--url", url, "--protocol", args.protocol]
                + ["--concurrency", str(args.concurrency), "--no-progress"]
            )
            results.append(
                {"records": size, "exit": code, "peak_rss_mb": round(peak_mb, 1), "seconds": round(seconds, 1)}
            )
            print(f"{size:>9,} records: exit {code}, peak RSS {peak_mb:7.1f} MB, {seconds:7.1f} s", flush=True)
    ok = all(r["exit"] == 0 for r in results)
    verdict = {}
    if len(results) >= 2 and ok:
        extra = results[-1]["peak_rss_mb"] - results[0]["peak_rss_mb"]
        verdict = {"extra_mb": round(extra, 1), "target_extra_mb": TARGET_EXTRA_MB, "met": extra <= TARGET_EXTRA_MB}
        print(
            f"peak RSS at {sizes[-1]:,} - at {sizes[0]:,} records: {extra:+.1f} MB "
            f"(target <= {TARGET_EXTRA_MB:.0f} MB): {'met' if verdict['met'] else 'NOT met'}"
        )
    if args.json:
        report = {
            "command": " ".join(["python -m tritonfleet.loadtest.bulk_rss", *(argv or sys.argv[1:])]),
            "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
            "distinct": distinct or "all",
            "format": args.format,
            "results": results,
            "verdict": verdict,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok and verdict.get("met", True) else 1


if __name__ == "__main__":
    sys.exit(main())
