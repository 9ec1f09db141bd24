"""`python -m client`: embed sequences or a whole FASTA file through a Triton server.

Exit codes: 0 done, 1 server or client failure, 2 bad usage or input (argparse errors, malformed FASTA, an invalid
sequence given to `embed`, an output or journal of another run in the way, a resume across a model version change),
75 server unavailable after every retry or a `--deadline-s` missed (re-run to resume), 130 interrupted (re-run to
resume). `embed-fasta` sends invalid records and repeated ids to OUT.rejected.tsv instead of failing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tritonfleet.client.bulk import embed_fasta
from tritonfleet.client.bulk_plan import DEFAULT_WINDOW, BulkOptions
from tritonfleet.client.config import DEFAULT_PORTS, PROTOCOLS, ClientConfig, RetryPolicy
from tritonfleet.client.embedding_client import EmbeddingClient
from tritonfleet.client.errors import (
    DeadlineExceededError,
    InvalidSequenceError,
    ServerUnavailableError,
    TritonFleetError,
)
from tritonfleet.client.fasta import FastaFormatError
from tritonfleet.client.journal import JournalMismatchError, output_format_for, parts_dir_for
from tritonfleet.client.long_sequences import DEFAULT_WINDOW_OVERLAP
from tritonfleet.client.writers import OUTPUT_FORMATS
from tritonfleet.contract.command_line import HelpFormatter, add_deprecated
from tritonfleet.contract.priorities import PRIORITY_CLASSES

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 75, 130
# Test hooks (BulkOptions.hold_after_chunks, release_file): embed-fasta writes this many chunks, then waits until
# the release file exists (or until interrupted), so tests interrupt or disturb a job that cannot have finished.
HOLD_ENV = "TRITONFLEET_BULK_HOLD_AFTER_CHUNKS"
RELEASE_ENV = "TRITONFLEET_BULK_RELEASE_FILE"


def build_parser(prog: str = "python -m client") -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    connection = common.add_argument_group("server")
    connection.add_argument(
        "--url",
        help="HOST:PORT, or https://HOST:PORT for TLS, e.g. a fleet behind an ingress (default 127.0.0.1:8000 for "
        "http, 127.0.0.1:8001 for grpc)",
    )
    connection.add_argument("--protocol", choices=PROTOCOLS, default="http")
    connection.add_argument("--tls", action="store_true", help="connect with TLS (implied by an https:// url)")
    connection.add_argument("--ca-file", type=Path, default=None, help="PEM CA bundle that verifies the server (TLS)")
    connection.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra request header on every call, e.g. 'authorization=Bearer TOKEN' (repeatable; gRPC metadata)",
    )
    connection.add_argument(
        "--grpc-channel-arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra gRPC channel argument, e.g. grpc.ssl_target_name_override=fleet.example (repeatable; integer "
        "values are passed as integers)",
    )
    connection.add_argument("--model", default="esm2", help="esm2 (ensemble), esm2_onnx or esm2_torchscript")
    connection.add_argument("--model-version", default="", help="model version (default: the server's choice)")
    connection.add_argument("--timeout", type=_positive_float, default=120.0, help="seconds per request")
    connection.add_argument("--retries", type=_positive_int, default=8, help="attempts per request, first included")
    connection.add_argument(
        "--retry-budget", type=_positive_float, default=180.0, help="seconds one request may spend retrying"
    )
    connection.add_argument(
        "--priority",
        choices=PRIORITY_CLASSES,
        default=None,
        help="interactive requests are served before bulk ones (default: interactive for embed and health, bulk "
        "for embed-fasta)",
    )
    connection.add_argument(
        "--deadline-s",
        type=_positive_float,
        default=None,
        metavar="S",
        help="seconds one request may take, retries included; the server refuses it once it cannot start in time "
        "(default: none)",
    )

    parser = argparse.ArgumentParser(
        prog=prog, description="ESM-2 embeddings from a Triton server.", formatter_class=HelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    health = commands.add_parser(
        "health", parents=[common], formatter_class=HelpFormatter, help="server liveness/readiness and the model's spec"
    )
    health.set_defaults(handler=_run_health, default_priority="interactive")

    embed = commands.add_parser(
        "embed", parents=[common], formatter_class=HelpFormatter, help="embed sequences given on the command line"
    )
    embed.add_argument("sequences", nargs="+", metavar="SEQUENCE")
    embed.add_argument("--json", action="store_true", help="print the embeddings as JSON")
    embed.add_argument("--residues", action="store_true", help="per-residue embeddings instead of the mean")
    embed.set_defaults(handler=_run_embed, default_priority="interactive")

    fasta = commands.add_parser(
        "embed-fasta",
        parents=[common],
        formatter_class=HelpFormatter,
        help="embed every record of a FASTA file (resumable)",
        description="Embed a FASTA file. Re-running the same command after an interruption resumes where it "
        "stopped. Rejected records are listed with reasons in OUT.rejected.tsv.",
    )
    fasta.add_argument("fasta", type=Path, metavar="IN.fasta")
    fasta.add_argument(
        "--output",
        dest="out",
        type=Path,
        default=None,
        metavar="OUT",
        help="output file (required): .npz, .parquet or .h5",
    )
    add_deprecated(fasta, "--out", "--output", dest="out", type=Path, metavar="OUT")
    fasta.add_argument(
        "--format",
        choices=OUTPUT_FORMATS,
        default=None,
        help="default: from OUT's suffix (.parquet, .h5/.hdf5, else npz); hdf5 is UniProt's per-protein layout, one "
        "dataset per FASTA id ('/' escaped as %%2F)",
    )
    fasta.add_argument("--concurrency", type=_positive_int, default=4, help="requests in flight")
    fasta.add_argument(
        "--long-sequences",
        choices=("skip", "chunk"),
        default="skip",
        help="over 1022 residues: skip (reject, listed in OUT.rejected.tsv) or chunk (windows of 1022 residues "
        "overlapping by --window-overlap, last window aligned to the end; the embedding is the residue-weighted "
        "mean of the window means)",
    )
    fasta.add_argument("--window-overlap", type=_non_negative_int, default=DEFAULT_WINDOW_OVERLAP)
    fasta.add_argument("--chunk-size", type=_positive_int, default=256, help="records per journal chunk")
    fasta.add_argument(
        "--window",
        type=_positive_int,
        default=DEFAULT_WINDOW,
        help="records read, length-sorted and chunked together; bounds memory (default %(default)s)",
    )
    fasta.add_argument(
        "--no-dedup",
        action="store_true",
        help="send every record, even one whose sequence an earlier record already has (default: each distinct "
        "sequence is computed once per job)",
    )
    fasta.add_argument(
        "--per-residue", action="store_true", help="per-residue embeddings [L, D] per id (HDF5 output only)"
    )
    fasta.add_argument("--overwrite", action="store_true", help="discard an output or journal from another run")
    fasta.add_argument("--no-progress", action="store_true", help="no progress bar")
    fasta.set_defaults(handler=_run_embed_fasta, default_priority="bulk")
    return parser


def config_from_args(args: argparse.Namespace, max_in_flight: int = 4) -> ClientConfig:
    url = args.url or f"127.0.0.1:{DEFAULT_PORTS[args.protocol]}"
    retry = RetryPolicy(max_attempts=args.retries, max_elapsed_s=args.retry_budget, retry_on_timeout=True)
    try:
        return _client_config(args, url, retry, max_in_flight)
    except ValueError as error:  # e.g. --ca-file without TLS
        raise argparse.ArgumentTypeError(str(error)) from None


def _client_config(args: argparse.Namespace, url: str, retry: RetryPolicy, max_in_flight: int) -> ClientConfig:
    return ClientConfig(
        url=url,
        protocol=args.protocol,
        model=args.model,
        version=args.model_version,
        timeout_s=args.timeout,
        max_in_flight=max_in_flight,
        retry=retry,
        priority=args.priority or args.default_priority,
        deadline_s=args.deadline_s,
        tls=args.tls,
        ca_file=str(args.ca_file) if args.ca_file else None,
        headers=tuple(_pair(text, "--header") for text in args.header),
        grpc_channel_args=tuple(_channel_arg(text) for text in args.grpc_channel_arg),
    )


def _pair(text: str, flag: str) -> tuple[str, str]:
    name, separator, value = text.partition("=")
    if not separator or not name.strip():
        raise argparse.ArgumentTypeError(f"{flag} takes NAME=VALUE, got {text!r}")
    return name.strip(), value


def _channel_arg(text: str) -> tuple[str, str | int]:
    name, value = _pair(text, "--grpc-channel-arg")
    try:
        return name, int(value)
    except ValueError:
        return name, value


def bulk_options_from_args(args: argparse.Namespace) -> BulkOptions:
    output_format = args.format or output_format_for(args.out)
    if args.window_overlap >= 1022:
        raise argparse.ArgumentTypeError("--window-overlap must be below 1022")
    hold = os.environ.get(HOLD_ENV)
    options = BulkOptions(
        fasta=args.fasta,
        output=args.out,
        output_format=output_format,
        concurrency=args.concurrency,
        long_sequences=args.long_sequences,
        window_overlap=args.window_overlap,
        chunk_size=args.chunk_size,
        overwrite=args.overwrite,
        priority=args.priority or args.default_priority,
        window=args.window,
        dedup=not args.no_dedup,
        per_residue=args.per_residue,
        hold_after_chunks=int(hold) if hold else None,
        release_file=Path(os.environ[RELEASE_ENV]) if os.environ.get(RELEASE_ENV) else None,
    )
    try:
        options.check()
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return options


def main(argv: Sequence[str] | None = None, prog: str = "python -m client") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.command == "embed-fasta" and args.out is None:
        parser.error("embed-fasta: the following argument is required: --output")
    try:
        return args.handler(args)
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    except (InvalidSequenceError, FastaFormatError, JournalMismatchError, FileNotFoundError) as error:
        _fail(str(error))
        return EXIT_USAGE
    except ServerUnavailableError as error:
        _fail(f"{error}\nthe server is unavailable; re-run the same command to retry (finished work is kept)")
        return EXIT_UNAVAILABLE
    except DeadlineExceededError as error:
        _fail(f"{error}\nthe server could not answer in time; re-run the same command to retry")
        return EXIT_UNAVAILABLE
    except TritonFleetError as error:
        _fail(str(error))
        return EXIT_FAILURE
    return EXIT_FAILURE  # pragma: no cover - parser.error exits


def _run_health(args: argparse.Namespace) -> int:
    with EmbeddingClient(config_from_args(args)) as client:
        live, ready = client.is_server_live(), client.is_server_ready()
        model_ready = client.is_model_ready()
        print(f"server {client.config.protocol}://{client.config.url}: live={live} ready={ready}")
        print(f"model {args.model}: ready={model_ready}")
        if model_ready:
            print(f"spec: {client.model_spec().describe()}")
    return EXIT_OK if live and ready and model_ready else EXIT_FAILURE


def _run_embed(args: argparse.Namespace) -> int:
    with EmbeddingClient(config_from_args(args)) as client:
        arrays = client.embed_residues(args.sequences) if args.residues else list(client.embed(args.sequences))
    if args.json:
        key = "residue_embeddings" if args.residues else "embedding"
        items = [
            {"index": i, "length": len(s.strip()), key: a.tolist()}
            for i, (s, a) in enumerate(zip(args.sequences, arrays))
        ]
        print(json.dumps(items))
        return EXIT_OK
    for index, (sequence, array) in enumerate(zip(args.sequences, arrays)):
        head = ", ".join(f"{value:+.4f}" for value in np.ravel(array)[:4])
        print(
            f"[{index}] length={len(sequence.strip())} shape={list(array.shape)} "
            f"norm={float(np.linalg.norm(array)):.4f} first=[{head}, ...]"
        )
    return EXIT_OK


def _run_embed_fasta(args: argparse.Namespace) -> int:
    options = bulk_options_from_args(args)
    config = config_from_args(args, max_in_flight=options.concurrency)
    progress = _ProgressBar(disabled=args.no_progress)
    try:
        summary = asyncio.run(embed_fasta(config, options, on_progress=progress.update))
    except KeyboardInterrupt:
        progress.close()
        _fail(f"interrupted; finished chunks are kept in {parts_dir_for(options.output)}: re-run the same command")
        return EXIT_INTERRUPTED
    finally:
        progress.close()
    if summary.already_complete:
        print(f"{summary.output} is already complete ({summary.records} records); nothing to do")
        return EXIT_OK
    print(
        f"{summary.records} records: {summary.embedded} embedded -> {summary.output}, "
        f"{summary.rejected} rejected -> {summary.rejected_path}"
        + (f"; {summary.repeats} repeated sequences computed once" if summary.repeats else "")
        + (f" (resumed: {summary.resumed_chunks} chunks were already done)" if summary.resumed_chunks else "")
    )
    return EXIT_OK


class _ProgressBar:
    """tqdm bar in sequences/s, created on the first update (the total is known only after reading the FASTA)."""

    def __init__(self, disabled: bool) -> None:
        self._disabled = disabled
        self._bar = None

    def update(self, done: int, total: int) -> None:
        if self._disabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=done, unit="seq", desc="embedding", dynamic_ncols=True)
            return
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value
