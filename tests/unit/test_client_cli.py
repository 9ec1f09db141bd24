"""Command-line parsing (client.cli): defaults, derived settings and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from tritonfleet.client.cli import build_parser, bulk_options_from_args, config_from_args, main


def test_embed_defaults_to_http_on_port_8000_and_the_ensemble() -> None:
    args = build_parser().parse_args(["embed", "MKT", "GSH"])
    config = config_from_args(args)
    assert args.sequences == ["MKT", "GSH"]
    assert (config.url, config.protocol, config.model, config.version) == ("127.0.0.1:8000", "http", "esm2", "")


def test_grpc_defaults_to_port_8001_and_explicit_urls_win() -> None:
    assert config_from_args(build_parser().parse_args(["embed", "--protocol", "grpc", "M"])).url == "127.0.0.1:8001"
    args = build_parser().parse_args(["health", "--protocol", "grpc", "--url", "10.0.0.1:9000", "--model", "esm2_onnx"])
    config = config_from_args(args)
    assert (config.url, config.model) == ("10.0.0.1:9000", "esm2_onnx")


def test_retry_options_become_the_retry_policy() -> None:
    args = build_parser().parse_args(["embed", "--retries", "3", "--retry-budget", "7.5", "--timeout", "9", "M"])
    config = config_from_args(args)
    assert (config.retry.max_attempts, config.retry.max_elapsed_s, config.timeout_s) == (3, 7.5, 9.0)
    assert config.retry.retry_on_timeout


def test_embed_fasta_options_and_format_from_suffix() -> None:
    args = build_parser().parse_args(
        ["embed-fasta", "in.fa", "--output", "x.parquet", "--concurrency", "8", "--long-sequences", "chunk"]
    )
    options = bulk_options_from_args(args)
    assert (options.fasta, options.output, options.output_format) == (Path("in.fa"), Path("x.parquet"), "parquet")
    assert (options.concurrency, options.long_sequences, options.chunk_size) == (8, "chunk", 256)
    assert config_from_args(args, max_in_flight=options.concurrency).max_in_flight == 8
    npz = bulk_options_from_args(build_parser().parse_args(["embed-fasta", "in.fa", "--output", "x.out"]))
    assert (npz.output_format, npz.long_sequences) == ("npz", "skip")


@pytest.mark.parametrize(
    "argv",
    [
        ["embed-fasta", "in.fa", "--output", "o.npz", "--concurrency", "0"],
        ["embed-fasta", "in.fa", "--output", "o.npz", "--long-sequences", "truncate"],
        ["embed-fasta", "in.fa"],
        ["embed", "--protocol", "websocket", "M"],
        ["embed"],
        ["embed", "--timeout", "-1", "M"],
    ],
)
def test_bad_arguments_exit_with_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2


def test_window_overlap_must_leave_a_stride(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["embed-fasta", "in.fa", "--output", "o.npz", "--window-overlap", "1022"])
    assert caught.value.code == 2
    assert "--window-overlap must be below 1022" in capsys.readouterr().err


def test_invalid_sequence_is_refused_before_any_connection(capsys) -> None:
    # Nothing listens on port 1; the local check fails first, so the message names the sequence, not the server.
    code = main(["embed", "--url", "127.0.0.1:1", "--retries", "1", "MKT", "MK1"])
    captured = capsys.readouterr()
    assert code == 2
    assert "sequence 1: invalid residue '1' at position 3" in captured.err
