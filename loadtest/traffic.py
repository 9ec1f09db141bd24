"""Traffic the way users send it, for studies against one server: bulk `embed-fasta` jobs and library callers,
interactive users of the project's client, and the server's own counts of what it answered and refused."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from tritonfleet.contract.esm2_tokens import random_proteins
from tritonfleet.contract.pipeline import Purpose, get_pipeline
from tritonfleet.loadtest.workload import generate_sequences

INTERACTIVE_LENGTHS = (50, 300)
BULK_MIX = "long"


def write_fasta(path: Path, count: int, seed: int) -> Path:
    sequences = generate_sequences(count, BULK_MIX, seed=seed)
    path.write_text("".join(f">bulk_{seed}_{index}\n{sequence}\n" for index, sequence in enumerate(sequences)))
    return path


def start_fasta_job(url: str, fasta: Path, out: Path) -> subprocess.Popen:
    """One `embed-fasta` job with its defaults (priority bulk, its concurrency and chunking)."""
    command = [
        sys.executable,
        "-m",
        "tritonfleet.client",
        "embed-fasta",
        str(fasta),
        "--url",
        url,
        "--output",
        str(out),
    ]
    log = (out.parent / f"{out.stem}.log").open("wb")
    return subprocess.Popen([*command, "--no-progress"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_fasta_job(process: subprocess.Popen, limit_s: float) -> int | None:
    """Ctrl-C (the job stops after its in-flight requests, journal intact), SIGKILL past `limit_s`."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    return process.returncode


def library_callers(url: str, callers: int, batch: int, stop_at: float, seed: int, results) -> None:
    """In its own process: `callers` threads, each embedding `batch` long proteins per call (priority bulk) until
    the wall clock passes `stop_at` (the call in flight then finishes)."""
    from tritonfleet.client import ClientConfig, EmbeddingClient

    errors: list[str] = []

    def caller(number: int) -> None:
        rng_seed = seed * 1000 + number
        with EmbeddingClient(ClientConfig(url=url, priority="bulk")) as client:
            calls = 0
            while time.time() < stop_at:
                sequences = generate_sequences(batch, BULK_MIX, seed=rng_seed + 7919 * calls)
                calls += 1
                try:
                    client.embed(sequences)
                except Exception as error:  # reported, not raised: the phase goes on
                    errors.append(f"{type(error).__name__}: {str(error)[:200]}")

    threads = [threading.Thread(target=caller, args=(number,)) for number in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(errors)


class InteractiveUsers:
    """Threads of the project's client with its defaults, one fresh protein per request."""

    def __init__(self, url: str, users: int, think_s: float, seed: int) -> None:
        self.url, self.users, self.think_s, self.seed = url, users, think_s, seed
        self.stop = threading.Event()
        self.records: list[tuple[float, float, str]] = []  # (end time, latency ms, outcome)
        self.entry = ""
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> InteractiveUsers:
        self._threads = [threading.Thread(target=self._user, args=(number,)) for number in range(self.users)]
        for thread in self._threads:
            thread.start()
        return self

    def _user(self, number: int) -> None:
        from tritonfleet.client import ClientConfig, EmbeddingClient

        rng = np.random.default_rng(self.seed * 100 + number)
        pause = random.Random(self.seed * 100 + number)
        with EmbeddingClient(ClientConfig(url=self.url)) as client:
            self.entry = client.entry_spec("EMBEDDING").name
            while not self.stop.is_set():
                (protein,) = random_proteins(1, rng, *INTERACTIVE_LENGTHS)
                started = time.perf_counter()
                try:
                    client.embed([protein])
                    outcome = "ok"
                except Exception as error:
                    outcome = type(error).__name__
                ended = time.time()
                with self._lock:
                    self.records.append((ended, (time.perf_counter() - started) * 1000, outcome))
                self.stop.wait(pause.uniform(0.5, 1.5) * self.think_s)

    def finish(self, limit_s: float) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=limit_s)


ENTRY_PURPOSES = (
    Purpose.DEFAULT_ENTRY, Purpose.INTERACTIVE_ENTRY, Purpose.BULK_ENTRY, Purpose.PER_RESIDUE_ENTRY,
    Purpose.ALTERNATIVE_ENTRY,
)  # fmt: skip


def entry_models(pipeline: str = "esm2") -> set[str]:
    """The models a pipeline's clients send sequences to (ESM-2: its ensembles and the BLS model)."""
    declared = get_pipeline(pipeline)
    return {model.name for purpose in ENTRY_PURPOSES for model in declared.entries(purpose)}


def entry_counts(http_url: str) -> dict[str, int]:
    """Sequences answered so far by each loaded entry model, from Triton's statistics."""
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(http_url) as client:
        stats = client.get_inference_statistics()["model_stats"]
        ready = {model["name"] for model in client.get_model_repository_index() if model.get("state") == "READY"}
    entries = ready & entry_models()
    return {model["name"]: int(model["inference_count"]) for model in stats if model["name"] in entries}


def rejections(metrics_url: str) -> dict[str, int]:
    """Triton's REJECTED failures per model (queue full or queue-wait budget expired)."""
    counts: dict[str, int] = {}
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith("nv_inference_request_failure{") and 'reason="REJECTED"' in line:
            model = line.split('model="', 1)[1].split('"', 1)[0]
            counts[model] = counts.get(model, 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts
