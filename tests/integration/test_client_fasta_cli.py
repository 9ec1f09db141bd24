"""`python -m client embed-fasta` against a real local tritonserver: complete, resumable, restart-proof.

Every subprocess and loop here is bounded in time; servers bind 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tritonfleet.client import ClientConfig, EmbeddingClient, RetryPolicy
from tritonfleet.client.cli import HOLD_ENV, RELEASE_ENV
from tritonfleet.client.journal import load_hdf5, load_output, parts_dir_for, rejected_path_for
from tritonfleet.contract.esm2_tokens import random_proteins
from tritonfleet.deploy.local import PortInUseError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 600


def write_fasta(path: Path, records: list[tuple[str, str]], width: int = 60) -> Path:
    with path.open("w") as handle:
        for record_id, sequence in records:
            handle.write(f">{record_id} test record\n")
            for start in range(0, max(len(sequence), 1), width):
                handle.write(sequence[start : start + width] + "\n")
    return path


def run_cli(args: list[str], timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tritonfleet.client", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def start_cli(
    args: list[str], hold_after_chunks: int | None = None, release_file: Path | None = None
) -> subprocess.Popen[str]:
    """Starts embed-fasta; with `hold_after_chunks`, the job writes that many chunks and then waits (until
    `release_file` exists, or until interrupted): a test can interrupt it knowing it cannot have finished."""
    env = dict(os.environ, PYTHONFAULTHANDLER="1")  # SIGABRT dumps every thread's stack (stderr_after_exit)
    if hold_after_chunks is not None:
        env[HOLD_ENV] = str(hold_after_chunks)
    if release_file is not None:
        env[RELEASE_ENV] = str(release_file)
    return subprocess.Popen(
        [sys.executable, "-m", "tritonfleet.client", *args],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_take_sigint,
    )


def _take_sigint() -> None:
    """In the job, before exec: SIGINT back to its default action, so Python installs its Ctrl-C handler. A test run
    started as a background job of a non-interactive shell (`cmd &`, nohup) inherits SIGINT ignored, and the job
    would then ignore the test's Ctrl-C as such a shell means it to."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stderr_after_exit(process: subprocess.Popen[str], limit_s: float) -> str:
    """The process's stderr once it has exited; past `limit_s` it is made to dump every thread's stack
    (PYTHONFAULTHANDLER, set by `start_cli`) and killed, and the test fails with what it printed."""
    try:
        return process.communicate(timeout=limit_s)[1]
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate(timeout=30)
        pytest.fail(f"embed-fasta did not exit within {limit_s:g} s of the signal; its stderr:\n{stderr[-8000:]}")


def wait_for_chunks(parts_dir: Path, count: int, process: subprocess.Popen[str], timeout_s: float = 300) -> int:
    """Waits until `count` journal chunks exist (or the process ended); returns how many exist."""
    deadline = time.monotonic() + timeout_s
    done = 0
    while time.monotonic() < deadline and process.poll() is None:
        done = len(list(parts_dir.glob("chunk-*.npz"))) if parts_dir.exists() else 0
        if done >= count:
            break
        time.sleep(0.05)
    return done


@pytest.fixture(scope="module")
def mixed_fasta(tmp_path_factory) -> tuple[Path, list[tuple[str, str]], dict[str, str]]:
    """500 records: mostly valid proteins, plus empty, invalid-residue and too-long ones at known places."""
    rng = np.random.default_rng(3)
    sequences = random_proteins(500, rng, min_length=8, max_length=120)
    records = [(f"prot_{index:04d}", sequence) for index, sequence in enumerate(sequences)]
    bad = {
        7: ("", "sequence is empty"),
        123: ("MKTAYIAKQRJ", "invalid residue 'J' at position 11"),
        250: ("A" * 1100, "sequence is too long: 1100 residues"),
        251: ("MKT*", "invalid residue '*' at position 4"),
        499: ("GSH-MLE", "invalid residue '-' at position 4"),
    }
    for position, (sequence, _) in bad.items():
        records[position] = (records[position][0], sequence)
    path = write_fasta(tmp_path_factory.mktemp("fasta") / "mixed.fasta", records)
    return path, records, {records[position][0]: reason for position, (_, reason) in bad.items()}


@pytest.fixture(scope="module")
def reference_output(esm2_server, mixed_fasta, tmp_path_factory) -> Path:
    """An uninterrupted run over the mixed FASTA."""
    fasta, _, _ = mixed_fasta
    output = tmp_path_factory.mktemp("reference") / "reference.npz"
    result = run_cli(
        ["embed-fasta", str(fasta), "--output", str(output), "--url", esm2_server.grpc_url, "--protocol", "grpc"]
        + ["--chunk-size", "32", "--concurrency", "2", "--no-progress"]
    )
    assert result.returncode == 0, result.stderr
    return output


def test_every_record_is_embedded_or_rejected_with_a_reason(esm2_server, mixed_fasta, reference_output) -> None:
    _, records, bad_reasons = mixed_fasta
    ids, embeddings, windows = load_output(reference_output)
    expected_ids = [record_id for record_id, _ in records if record_id not in bad_reasons]
    assert ids == expected_ids
    assert embeddings.shape == (len(expected_ids), embeddings.shape[1]) and np.isfinite(embeddings).all()
    assert windows.tolist() == [1] * len(expected_ids)
    rejected_lines = rejected_path_for(reference_output).read_text().splitlines()
    assert rejected_lines[0] == "position\tid\tlength\treason"
    rejected = {line.split("\t")[1]: line.split("\t")[3] for line in rejected_lines[1:]}
    assert rejected.keys() == bad_reasons.keys()
    for record_id, reason in bad_reasons.items():
        assert reason in rejected[record_id]
    assert not parts_dir_for(reference_output).exists()
    # Spot-check against direct client calls (batch composition differs, so compare to float tolerance).
    by_id = dict(records)
    sample = expected_ids[::97]
    with EmbeddingClient(ClientConfig(url=esm2_server.http_url)) as client:
        direct = client.embed([by_id[record_id] for record_id in sample])
    np.testing.assert_allclose(embeddings[[ids.index(r) for r in sample]], direct, atol=1e-5)


def test_re_running_a_finished_job_does_nothing(esm2_server, mixed_fasta, reference_output) -> None:
    fasta, _, _ = mixed_fasta
    before = reference_output.read_bytes()
    result = run_cli(["embed-fasta", str(fasta), "--output", str(reference_output), "--url", esm2_server.http_url])
    assert result.returncode == 0, result.stderr
    assert "already complete" in result.stdout
    assert reference_output.read_bytes() == before


@pytest.mark.parametrize(
    ("interruption", "suffix"),
    [(signal.SIGKILL, ".npz"), (signal.SIGINT, ".npz"), (signal.SIGKILL, ".h5")],
    ids=["sigkill", "ctrl-c", "sigkill-hdf5"],
)
def test_interrupting_midway_then_rerunning_gives_the_uninterrupted_output(
    esm2_server, mixed_fasta, reference_output, tmp_path, interruption, suffix
) -> None:
    fasta, _, _ = mixed_fasta
    output = tmp_path / f"resumed{suffix}"
    args = ["embed-fasta", str(fasta), "--output", str(output), "--url", esm2_server.grpc_url, "--protocol", "grpc"]
    args += ["--chunk-size", "32", "--concurrency", "2", "--no-progress"]
    # The job writes 4 of its 16 chunks, then waits: the signal always lands in the middle of the job.
    process = start_cli(args, hold_after_chunks=4)
    try:
        done = wait_for_chunks(parts_dir_for(output), 4, process)
        exited_before_the_signal = process.poll()
    finally:
        process.send_signal(interruption)
        stderr = stderr_after_exit(process, 60)
    assert exited_before_the_signal is None, f"the job exited ({exited_before_the_signal}) before the signal: {stderr}"
    assert done == 4, f"the job ended before writing 4 chunks: {stderr}"
    if interruption == signal.SIGINT:
        assert process.returncode == 130 and "re-run the same command" in stderr
    else:
        assert process.returncode == -signal.SIGKILL
    assert not output.exists()
    assert len(list(parts_dir_for(output).glob("chunk-*.npz"))) == 4

    result = run_cli(args)
    assert result.returncode == 0, result.stderr
    assert "resumed: 4 chunks were already done" in result.stdout
    assert_same_output(output, reference_output)


def test_streaming_hdf5_with_a_small_window_gzip_repeats_and_repeated_ids(
    esm2_server, mixed_fasta, reference_output, tmp_path
) -> None:
    """A window of 100 records over 650 (gzip input): every distinct sequence computed once, repeats take its vector,
    repeated ids go to the rejects file, `/` in ids is escaped; the same job with dedup off gives the same vectors."""
    _, records, bad_reasons = mixed_fasta
    rng = np.random.default_rng(5)
    sources = [int(i) for i in rng.choice(len(records), size=148, replace=False)]
    extra = [(f"copy/{n}", records[i][1]) for n, i in enumerate(sources)]  # 30 % of the input repeats a sequence
    extra += [(records[10][0], "MKTAYIAKQR"), (records[20][0], records[21][1])]  # repeated ids: the first wins
    fasta = tmp_path / "repeats.fasta.gz"
    with gzip.open(fasta, "wt") as handle:
        for record_id, sequence in records + extra:
            handle.write(f">{record_id}\n{sequence}\n")
    output = tmp_path / "repeats.h5"
    common = ["--url", esm2_server.grpc_url, "--protocol", "grpc", "--chunk-size", "32", "--no-progress"]
    result = run_cli(["embed-fasta", str(fasta), "--output", str(output), "--window", "100", *common])
    assert result.returncode == 0, result.stderr

    ids, arrays, _ = load_hdf5(output)
    valid_sources = [i for i in sources if records[i][0] not in bad_reasons]
    expected = [r for r, _ in records if r not in bad_reasons] + [f"copy/{sources.index(i)}" for i in valid_sources]
    assert ids == expected and len(set(ids)) == len(ids)
    assert f"{len(valid_sources)} repeated sequences computed once" in result.stdout
    by_id = dict(zip(ids, arrays))
    reference_ids, reference_embeddings, _ = load_output(reference_output)
    reference = dict(zip(reference_ids, reference_embeddings))
    for record_id in reference_ids:
        np.testing.assert_allclose(by_id[record_id], reference[record_id], atol=1e-5)
    for n, i in enumerate(sources):
        if records[i][0] not in bad_reasons:  # a repeat takes the very vector of its first occurrence
            np.testing.assert_array_equal(by_id[f"copy/{n}"], by_id[records[i][0]])
    rejected = rejected_path_for(output).read_text().splitlines()[1:]
    reasons = {line.split("\t")[1]: line.split("\t")[3] for line in rejected}
    assert "repeated id" in reasons[records[10][0]] and "repeated id" in reasons[records[20][0]]
    assert {line.split("\t")[1] for line in rejected} >= set(bad_reasons)
    assert len(rejected) == len(bad_reasons) + 2 + (len(sources) - len(valid_sources))
    with h5py_file(output) as handle:
        assert handle["copy%2F0"].attrs["id"] == "copy/0"
        assert handle.attrs["model"] == "esm2" and handle.attrs["precision"] and handle.attrs["model_version"]

    undeduplicated = tmp_path / "no-dedup.npz"
    result = run_cli(["embed-fasta", str(fasta), "--output", str(undeduplicated), "--no-dedup", *common])
    assert result.returncode == 0, result.stderr
    assert "repeated sequences" not in result.stdout
    plain_ids, plain_embeddings, _ = load_output(undeduplicated)
    assert plain_ids == ids
    np.testing.assert_allclose(plain_embeddings, np.asarray(arrays), atol=1e-5)


def test_per_residue_hdf5_matches_the_clients_per_residue_embeddings(esm2_server, tmp_path) -> None:
    rng = np.random.default_rng(11)
    sequences = random_proteins(12, rng, min_length=5, max_length=60)
    records = [(f"r{i}", s) for i, s in enumerate(sequences)] + [("again", sequences[3])]
    fasta = write_fasta(tmp_path / "small.fasta", records)
    output = tmp_path / "residues.h5"
    result = run_cli(
        ["embed-fasta", str(fasta), "--output", str(output), "--url", esm2_server.http_url, "--per-residue"]
        + ["--chunk-size", "5", "--window", "8", "--no-progress"]
    )
    assert result.returncode == 0, result.stderr
    ids, arrays, _ = load_hdf5(output)
    assert ids == [record_id for record_id, _ in records]
    with EmbeddingClient(ClientConfig(url=esm2_server.http_url)) as client:
        direct = client.embed_residues(sequences)
    for array, want in zip(arrays, [*direct, direct[3]]):
        assert array.shape == want.shape
        np.testing.assert_allclose(array, want, atol=1e-5)
    with h5py_file(output) as handle:
        assert handle.attrs["layout"] == "per-residue"


def test_resuming_after_a_model_version_change_refuses_and_keeps_the_work(esm2_server, mixed_fasta, tmp_path) -> None:
    fasta, _, _ = mixed_fasta
    output = tmp_path / "versioned.npz"
    args = ["embed-fasta", str(fasta), "--output", str(output), "--url", esm2_server.http_url, "--no-progress"]
    args += ["--chunk-size", "32"]
    process = start_cli(args, hold_after_chunks=2)
    try:
        assert wait_for_chunks(parts_dir_for(output), 2, process) == 2
    finally:
        process.kill()
        process.communicate(timeout=60)
    # As if the job had started before a rollout: its journal names an older version of the network.
    manifest_path = parts_dir_for(output) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    step = sorted(manifest["composing_versions"])[-1]
    manifest["composing_versions"][step] = "0"
    manifest_path.write_text(json.dumps(manifest))
    result = run_cli(args)
    assert result.returncode == 2
    assert "never mixes two model versions" in result.stderr and f"{step} 0" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert len(list(parts_dir_for(output).glob("chunk-*.npz"))) == 2 and not output.exists()


@contextlib.contextmanager
def h5py_file(path: Path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "r") as handle:
        yield handle


def test_long_sequences_can_be_embedded_by_windows(esm2_server, tmp_path) -> None:
    rng = np.random.default_rng(9)
    long_protein, short_protein = random_proteins(2, rng, min_length=1500, max_length=1500)[0], "MKTAYIAKQR"
    fasta = write_fasta(tmp_path / "long.fasta", [("long", long_protein), ("short", short_protein)])
    output = tmp_path / "long.npz"
    result = run_cli(
        ["embed-fasta", str(fasta), "--output", str(output), "--url", esm2_server.http_url, "--no-progress"]
        + ["--long-sequences", "chunk", "--window-overlap", "200"]
    )
    assert result.returncode == 0, result.stderr
    ids, embeddings, windows = load_output(output)
    assert ids == ["long", "short"] and windows.tolist() == [2, 1]
    with EmbeddingClient(ClientConfig(url=esm2_server.http_url)) as client:
        window_vectors = client.embed([long_protein[:1022], long_protein[-1022:]])
        short_vector = client.embed([short_protein])[0]
    np.testing.assert_allclose(embeddings[0], window_vectors.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(embeddings[1], short_vector, atol=1e-5)


def test_a_malformed_fasta_is_refused_before_any_work(tmp_path) -> None:
    fasta = tmp_path / "bad.fasta"
    fasta.write_text("MKT\n>a\nGSH\n")
    result = run_cli(["embed-fasta", str(fasta), "--output", str(tmp_path / "o.npz"), "--url", "127.0.0.1:1"])
    assert result.returncode == 2
    assert "sequence data before the first '>' header" in result.stderr
    assert not (tmp_path / "o.npz").exists() and not parts_dir_for(tmp_path / "o.npz").exists()


def test_a_server_restart_during_the_run_is_survived_by_retries(
    esm2_repository, triton_server_factory, mixed_fasta, reference_output, tmp_path
) -> None:
    fasta, _, _ = mixed_fasta
    server = triton_server_factory(esm2_repository, http_port=0, grpc_port=0, metrics_port=0)
    ports = {name: getattr(server.options, name) for name in ("http_port", "grpc_port", "metrics_port")}
    output = tmp_path / "restarted.npz"
    args = ["embed-fasta", str(fasta), "--output", str(output), "--url", server.http_url, "--no-progress"]
    args += ["--chunk-size", "16", "--concurrency", "2", "--retries", "100", "--retry-budget", "400"]
    # Long-lived sync clients with pooled connections to the first server must keep working after the restart.
    retry = RetryPolicy(max_attempts=50, max_delay_s=2, max_elapsed_s=300)
    sync_clients = [
        EmbeddingClient(ClientConfig(url=server.http_url, protocol="http", retry=retry)),
        EmbeddingClient(ClientConfig(url=server.grpc_url, protocol="grpc", retry=retry)),
    ]
    before = [client.embed(["MKTAYIAKQR"]) for client in sync_clients]
    release = tmp_path / "release"
    # The job writes 3 chunks, then waits for `release`: the server stops while the job is certainly unfinished.
    process = start_cli(args, hold_after_chunks=3, release_file=release)
    try:
        assert wait_for_chunks(parts_dir_for(output), 3, process) == 3, "the run ended before the restart"
        server.stop()
        chunks_at_stop = len(list(parts_dir_for(output).glob("chunk-*.npz")))
        release.touch()  # the job goes on against the stopped server: its requests fail and are retried
        restarted = start_with_same_ports(triton_server_factory, esm2_repository, ports)
        after = [client.embed(["MKTAYIAKQR"]) for client in sync_clients]
        stdout, stderr = process.communicate(timeout=CLI_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)
        for client in sync_clients:
            client.close()
    for old_vector, new_vector in zip(before, after):
        np.testing.assert_array_equal(old_vector, new_vector)
    assert restarted.is_running()
    assert process.returncode == 0, stderr
    assert chunks_at_stop < 32, "all 32 chunks were done before the server stopped; nothing was tested"
    ids, embeddings, _ = load_output(output)
    reference_ids, reference_embeddings, _ = load_output(reference_output)
    assert ids == reference_ids
    # Chunking differs from the reference run (16 vs 32 records), so batches pad differently: float tolerance.
    np.testing.assert_allclose(embeddings, reference_embeddings, atol=1e-5)


def start_with_same_ports(factory, repository: Path, ports: dict[str, int], timeout_s: float = 120):
    """Starts a server on the previous server's ports, waiting (bounded) for the kernel to release them."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return factory(repository, **ports)
        except PortInUseError:  # noqa: PERF203 - retrying is the point
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def assert_same_output(got: Path, want: Path) -> None:
    got_ids, got_embeddings, got_windows = load_output(got)
    want_ids, want_embeddings, want_windows = load_output(want)
    assert got_ids == want_ids
    np.testing.assert_array_equal(got_windows, want_windows)
    np.testing.assert_array_equal(got_embeddings, want_embeddings)
    assert rejected_path_for(got).read_text() == rejected_path_for(want).read_text()
