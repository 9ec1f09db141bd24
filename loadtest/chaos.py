"""`python -m tritonfleet.loadtest.chaos`: SIGKILL a model-instance stub under load; report recovery time and failures.

What it does:
1. Serves an ESM-2 repository on a local tritonserver with self-healing on (`deploy/local/supervisor.py`); without
   `--model-repository` it serves model_repository/ when its weights are exported, else exports ESM-2 8M with random
   weights into a temporary folder first.
2. Runs closed-loop load through the project's client (`client.EmbeddingClient`, with its retry policy) from
   `--concurrency` threads, each embedding one protein per request.
3. After `--warmup-s`, SIGKILLs the `--victim` model's stub (default `esm2_onnx`, the engine behind the `esm2`
   ensemble) and keeps the load running until the service is whole again plus `--settle-s`.
4. Prints: time to detection and to full recovery (supervisor ready and a request started after the repair
   succeeded), requests sent/succeeded/failed with the errors the client raised, and latency per phase.

The client is used as shipped: its retry policy already treats the answers of a model under repair ("has no
available versions", "Stub process ... is not healthy") as transient (client/errors.py). Exit status: 0 when
recovered within `--recovery-target-s` with no user-visible failure, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tritonfleet.client import ClientConfig, EmbeddingClient
from tritonfleet.contract.command_line import HelpFormatter
from tritonfleet.deploy.local import LocalTritonServer
from tritonfleet.deploy.local.stubs import list_stub_processes
from tritonfleet.loadtest.studies import exported_repository, serve

LOGGER = logging.getLogger("tritonfleet.loadtest.chaos")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROTEINS = (
    "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALRPDEDRL",
    "GSHMLEDPVDAFQERLSRVRAPTHLAELLDQEVTELTRQLSRH",
    "MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHFDLSHGSAQVKGHGKKVADALTNAVAHVDDMPNALSALSDLHAHKL",
)


@dataclass(frozen=True)
class ChaosOptions:
    """One chaos run.

    Attributes:
        model_repository: an exported ESM-2 repository (None: export one with random weights into a temp dir).
        victim: model whose stub is killed.
        protocol: client protocol.
        concurrency: client threads, each with one request outstanding.
        warmup_s: load before the kill.
        settle_s: load after full recovery.
        recovery_target_s: the objective (the run fails above it).
        give_up_s: stop waiting for recovery after this long.
    """

    model_repository: Path | None = None
    victim: str = "esm2_onnx"
    protocol: str = "grpc"
    concurrency: int = 4
    warmup_s: float = 5.0
    settle_s: float = 3.0
    recovery_target_s: float = 5.0
    give_up_s: float = 60.0


@dataclass
class RequestOutcome:
    started: float
    finished: float
    error: str | None = None


@dataclass
class LoadRecorder:
    outcomes: list[RequestOutcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: RequestOutcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)

    def snapshot(self) -> list[RequestOutcome]:
        with self.lock:
            return list(self.outcomes)


def _default_repository() -> Path | None:
    committed = PROJECT_ROOT / "model_repository"
    return committed if (committed / "esm2_onnx" / "1" / "model.onnx").exists() else None


def _embed_loop(client, recorder: LoadRecorder, stop: threading.Event, worker: int) -> None:
    count = 0
    while not stop.is_set():
        sequence = PROTEINS[(worker + count) % len(PROTEINS)]
        count += 1
        started = time.monotonic()
        try:
            client.embed([sequence])
            recorder.add(RequestOutcome(started, time.monotonic()))
        except Exception as error:  # noqa: BLE001 - every failure the user would see is counted
            recorder.add(RequestOutcome(started, time.monotonic(), f"{type(error).__name__}: {error}"))


def _victim_stub(server: LocalTritonServer, model: str) -> int:
    stubs = [stub for stub in list_stub_processes(server.pid or 0) if stub.model == model and stub.serving]
    if not stubs:
        raise SystemExit(f"no running stub for model {model!r}; models with stubs: {_stub_models(server)}")
    return stubs[0].pid


def _stub_models(server: LocalTritonServer) -> list[str]:
    return sorted({stub.model for stub in list_stub_processes(server.pid or 0)})


def _percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"p50 {statistics.median(ordered) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms"


def run(options: ChaosOptions) -> int:
    with contextlib.ExitStack() as stack:
        repository = options.model_repository or _default_repository()
        if repository is None:
            print("exporting an ESM-2 8M repository with random weights (about 1.5 minutes) ...", flush=True)
            repository = stack.enter_context(exported_repository("tritonfleet-chaos-"))
        print(f"starting tritonserver on {repository} with self-healing ...", flush=True)
        server = stack.enter_context(serve(repository, model_control_mode="explicit", self_heal=True))
        return _kill_under_load(options, server)


def _kill_under_load(options: ChaosOptions, server: LocalTritonServer) -> int:
    supervisor = server.supervisor
    assert supervisor is not None, "the server was started without self-healing"
    url = server.grpc_url if options.protocol == "grpc" else server.http_url
    config = ClientConfig(url=url, protocol=options.protocol, model="esm2", timeout_s=30.0)
    recorder = LoadRecorder()
    stop = threading.Event()
    with EmbeddingClient(config) as client:
        client.embed([PROTEINS[0]])  # fetch the model spec once, outside the measurement
        workers = [
            threading.Thread(target=_embed_loop, args=(client, recorder, stop, index))
            for index in range(options.concurrency)
        ]
        for worker in workers:
            worker.start()
        try:
            time.sleep(options.warmup_s)
            stub_pid = _victim_stub(server, options.victim)
            repairs_before = len(supervisor.repairs)
            killed_at = time.monotonic()
            os.kill(stub_pid, signal.SIGKILL)
            print(f"SIGKILL -> {options.victim} stub (pid {stub_pid}) under load", flush=True)
            detected_at = recovered_at = None
            while time.monotonic() - killed_at < options.give_up_s:
                now = time.monotonic()
                if detected_at is None and (supervisor.broken_models or len(supervisor.repairs) > repairs_before):
                    detected_at = now
                repaired = [r for r in supervisor.repairs[repairs_before:] if r.succeeded]
                if repaired and supervisor.is_ready():
                    repair_done = now - (time.time() - repaired[-1].finished_at)
                    if any(o.error is None and o.started >= repair_done for o in recorder.snapshot()):
                        recovered_at = now
                        break
                time.sleep(0.02)
            time.sleep(options.settle_s)
        finally:
            stop.set()
            for worker in workers:
                worker.join(timeout=60)
    return _report(options, recorder.snapshot(), killed_at, detected_at, recovered_at, supervisor.repairs)


def _report(options, outcomes, killed_at, detected_at, recovered_at, repairs) -> int:
    before = [o for o in outcomes if o.finished < killed_at]
    during = [o for o in outcomes if o.finished >= killed_at and (recovered_at is None or o.started < recovered_at)]
    after = [o for o in outcomes if recovered_at is not None and o.started >= recovered_at]
    failures = [o for o in outcomes if o.error is not None]
    print("\n== chaos report ==")
    print(f"victim: {options.victim}   protocol: {options.protocol}   concurrency: {options.concurrency}")
    if detected_at is not None:
        print(f"detected by the supervisor: {detected_at - killed_at:.2f} s after SIGKILL")
    if recovered_at is None:
        print(f"NOT RECOVERED within {options.give_up_s:.0f} s")
    else:
        print(f"full recovery: {recovered_at - killed_at:.2f} s after SIGKILL (target < {options.recovery_target_s} s)")
    for repair in repairs:
        duration = f"{repair.duration_s:.2f} s" if repair.duration_s is not None else "-"
        print(
            f"repair: {repair.model} ok={repair.succeeded} attempts={repair.attempts} took {duration} ({repair.reason})"
        )
    print(f"requests: {len(outcomes)} answered, {len(outcomes) - len(failures)} ok, {len(failures)} failed")
    for phase, group in (("before", before), ("during", during), ("after", after)):
        latencies = [o.finished - o.started for o in group if o.error is None]
        failed = sum(o.error is not None for o in group)
        print(f"  {phase:>6}: {len(group):5d} requests, {failed} failed; {_percentiles(latencies)}")
    for message, count in Counter((o.error or "")[:160] for o in failures).most_common(5):
        print(f"  {count:5d} x {message}")
    passed = recovered_at is not None and recovered_at - killed_at < options.recovery_target_s and not failures
    print("verdict:", "PASS" if passed else "FAIL", "(recovery < target and 0 user-visible failures)")
    return 0 if passed else 1


def parse_args(argv: list[str] | None = None, prog: str = "python -m tritonfleet.loadtest.chaos") -> ChaosOptions:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=None, help="default: model_repository/ if exported")
    parser.add_argument("--victim", default="esm2_onnx", help="model whose stub is killed")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--settle-s", type=float, default=3.0)
    parser.add_argument("--recovery-target-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    return ChaosOptions(
        model_repository=args.model_repository,
        victim=args.victim,
        protocol=args.protocol,
        concurrency=args.concurrency,
        warmup_s=args.warmup_s,
        settle_s=args.settle_s,
        recovery_target_s=args.recovery_target_s,
    )


def main(argv: list[str] | None = None, prog: str = "python -m tritonfleet.loadtest.chaos") -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(parse_args(argv, prog))


if __name__ == "__main__":
    sys.exit(main())
