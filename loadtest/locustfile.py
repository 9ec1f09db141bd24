"""Locust load test for the ESM-2 models on Triton: HTTP and gRPC users, a mixed interactive + bulk scenario, and
selectable load shapes.

    locust -f loadtest/locustfile.py --headless -H http://127.0.0.1:8000 --triton-grpc-url 127.0.0.1:8001 \
        -u 8 -r 4 -t 30s --load-shape ramp TritonHttpEmbedUser TritonGrpcEmbedUser
    locust -f loadtest/locustfile.py --headless -H http://127.0.0.1:8000 --triton-grpc-url 127.0.0.1:8001 \
        -u 12 -r 12 -t 120s --interactive-users 4 --bulk-users 8 TritonInteractiveUser TritonBulkUser

`python -m loadtest.run` wraps this (server start, reports, SLO exit code; `--scenario mixed` for the second form).
The embed users send one protein per request, drawn from a fixed-seed pool with the chosen length mix
(loadtest/workload.py), without a priority (the models' default level applies). The mixed scenario runs bulk users
(64-sequence requests of long proteins, length-sorted like embed-fasta's, priority bulk, back to back) beside
interactive users (one short protein, priority interactive, a random think time and an optional deadline); their
requests are named `<model> interactive` and `<model> bulk`, so Locust's statistics and the summary are per class.
Exact latencies (not Locust's 2-significant-digit buckets) are recorded and written with the counts to
`--summary-json` when the run ends; refusals (HTTP 503 / gRPC UNAVAILABLE: `rejections`; a queue budget or deadline
ran out: `expired`) are kept apart from errors.
"""

from __future__ import annotations

from locust import LoadTestShape, between, constant, events, stats, task

import argparse
import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import gevent

from tritonfleet.contract.pipeline import Purpose, get_pipeline
from tritonfleet.loadtest.shapes import SHAPES, ShapeSettings, users_at
from tritonfleet.loadtest.triton_user import (
    EXPIRED_SUFFIX,
    IN_FLIGHT,
    REJECTED_SUFFIX,
    TritonGrpcUser,
    TritonUser,
)
from tritonfleet.loadtest.workload import DEFAULT_SEED, percentile

stats.PERCENTILES_TO_REPORT = [0.50, 0.90, 0.95, 0.99, 0.999, 1.0]
stats.PERCENTILES_TO_STATISTICS = [0.50, 0.99]
MAX_RECORDED_LATENCIES = 2_000_000  # per run; bounds memory on very long soaks


@events.init_command_line_parser.add_listener
def _add_triton_options(parser) -> None:
    group = parser.add_argument_group("tritonfleet")
    group.add_argument(
        "--pipeline", default="esm2", help="the pipeline whose workload and models are loaded (default: %(default)s)"
    )
    group.add_argument("--triton-model", default="", help="model to load (default: the pipeline's default entry)")
    group.add_argument(
        "--url",
        default="grpc://127.0.0.1:8001",
        help="gRPC server of the gRPC users, grpc://HOST:PORT (HTTP users use Locust's --host)",
    )
    # Deprecated spelling of --url (one release); hidden, read by triton_user when given.
    group.add_argument("--triton-grpc-url", default="", help=argparse.SUPPRESS)
    group.add_argument("--triton-outputs", default="embedding", choices=["embedding", "all"])
    group.add_argument("--length-mix", default="swissprot", help="swissprot | short | fixed-N")
    group.add_argument("--sequence-pool", type=int, default=1024, help="distinct sequences generated up front")
    group.add_argument("--sequence-seed", type=int, default=DEFAULT_SEED)
    group.add_argument("--load-shape", default="none", choices=sorted(SHAPES), help="none uses -u/-r/-t as given")
    group.add_argument("--shape-duration", type=float, default=0.0, help="seconds; 0 = --run-time")
    group.add_argument("--summary-json", default="", help="write exact latencies + counts here at the end")
    group.add_argument("--triton-timeout-s", type=float, default=60.0, help="client-side limit per request")
    group.add_argument("--measure-after-s", type=float, default=0.0, help="warm-up left out of the throughput")
    mixed = parser.add_argument_group("tritonfleet mixed scenario (TritonInteractiveUser + TritonBulkUser)")
    mixed.add_argument("--mixed-protocol", choices=["http", "grpc"], default="grpc")
    mixed.add_argument("--interactive-users", type=int, default=2)
    mixed.add_argument("--interactive-length-mix", default="interactive", help="lengths of interactive requests")
    mixed.add_argument("--interactive-think-s", type=float, default=0.5, help="pause after each interactive answer")
    mixed.add_argument("--interactive-deadline-s", type=float, default=0.0, help="0: no deadline")
    mixed.add_argument(
        "--interactive-start-delay-s", type=float, default=0.0, help="let the bulk backlog form before starting"
    )
    mixed.add_argument("--bulk-users", type=int, default=4)
    mixed.add_argument("--bulk-batch", type=int, default=64, help="sequences per bulk request")
    mixed.add_argument("--bulk-length-mix", default="long", help="lengths of bulk requests")


OUTCOMES = ("successes", "errors", "rejections", "expired")


@dataclass
class _Group:
    """One protocol's or traffic class's counts, exact latencies of its successes and when they completed."""

    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    latencies_ms: list[float] = field(default_factory=list)
    completions: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, sequences)


@dataclass
class RunRecorder:
    """Exact latencies and counts per protocol and per traffic class, from Locust's request events (thread-safe).

    Throughput (`sequences_per_s`) counts the sequences answered between `measure_after_s` past the start and the
    moment the test began stopping, so a warm-up and the drain of in-flight requests stay out of it.
    """

    protocols: dict[str, _Group] = field(default_factory=lambda: defaultdict(_Group))
    classes: dict[str, _Group] = field(default_factory=lambda: defaultdict(_Group))
    started: float = field(default_factory=time.monotonic)
    stopping: float | None = None
    measure_after_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    recorded: int = 0

    def record(self, request_type: str, name: str, response_time: float, exception, context) -> None:
        context = context or {}
        outcome = _outcome(name, exception, context)
        traffic_class = context.get("class")
        now = time.monotonic()
        with self.lock:
            groups = [self.protocols[request_type]] + ([self.classes[traffic_class]] if traffic_class else [])
            keep = outcome == "successes" and self.recorded < MAX_RECORDED_LATENCIES
            for group in groups:
                group.counts["requests"] += 1
                group.counts[outcome] += 1
                if outcome == "successes":
                    sequences = int(context.get("sequences", 1))
                    group.counts["sequences"] += sequences
                    if keep:
                        group.latencies_ms.append(response_time)
                        group.completions.append((now, sequences))
            self.recorded += keep

    def summary(self) -> dict:
        end = time.monotonic()
        window = (self.started + self.measure_after_s, self.stopping or end)
        everything = _Group(
            counts=defaultdict(int, {key: sum(g.counts.get(key, 0) for g in self.protocols.values())
                                     for key in ("requests", *OUTCOMES, "sequences")}),
            latencies_ms=[v for g in self.protocols.values() for v in g.latencies_ms],
            completions=[c for g in self.protocols.values() for c in g.completions],
        )  # fmt: skip
        result = {
            "duration_s": end - self.started,
            "measured_s": window[1] - window[0],
            **_group_summary(everything, window),
            "by_protocol": {name: _group_summary(group, window) for name, group in self.protocols.items()},
        }
        if self.classes:
            result["by_class"] = {name: _group_summary(group, window) for name, group in self.classes.items()}
            for name, row in result["by_class"].items():
                row["unanswered"] = IN_FLIGHT.get(name, 0)
                row["latencies_ms"] = self.classes[name].latencies_ms  # so runs can be pooled (loadtest.priorities)
        result["unanswered"] = sum(IN_FLIGHT.values())
        return result


def _outcome(name: str, exception, context: dict) -> str:
    refusal = context.get("refusal")
    if refusal == "expired" or name.endswith(EXPIRED_SUFFIX):
        return "expired"
    if refusal == "rejected" or name.endswith(REJECTED_SUFFIX):
        return "rejections"
    return "errors" if exception is not None else "successes"


def _group_summary(group: _Group, window: tuple[float, float]) -> dict:
    start, end = window
    measured = sum(sequences for at, sequences in group.completions if start <= at <= end)
    return {
        **{key: group.counts.get(key, 0) for key in ("requests", *OUTCOMES, "sequences")},
        "measured_sequences": measured,
        "sequences_per_s": measured / (end - start) if end > start else 0.0,
        "latency_ms": {f"p{q}": percentile(group.latencies_ms, q) for q in (50, 90, 99)},
    }


RECORDER = RunRecorder()


@events.init.add_listener
def _configure(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options is None:
        return
    pipeline = get_pipeline(options.pipeline)
    for user_class in (TritonHttpEmbedUser, TritonGrpcEmbedUser, TritonInteractiveUser, TritonBulkUser):
        user_class.model = options.triton_model or pipeline.entry(Purpose.DEFAULT_ENTRY).name
        user_class.outputs = options.triton_outputs
        user_class.timeout_s = options.triton_timeout_s
    pool, seed = options.sequence_pool, options.sequence_seed
    items = pipeline.workload.items
    for user_class in (TritonHttpEmbedUser, TritonGrpcEmbedUser):
        user_class.sequences = items(pool, options.length_mix, seed)
    interactive, bulk = TritonInteractiveUser, TritonBulkUser
    interactive.sequences = items(pool, options.interactive_length_mix, seed)
    # Length-sorted, as embed-fasta sends its chunks: consecutive requests pad little, and users at different
    # offsets hit different buckets (equal-length bulk requests would keep the instances' executions in lockstep).
    bulk_pool = items(max(pool, options.bulk_batch), options.bulk_length_mix, seed + 1)
    bulk.sequences = sorted(bulk_pool, key=len)
    interactive.fixed_count, bulk.fixed_count = options.interactive_users, options.bulk_users
    interactive.protocol = bulk.protocol = options.mixed_protocol
    think = options.interactive_think_s
    interactive.wait_time = between(0.5 * think, 1.5 * think)  # random: users do not fall into step with the server
    interactive.deadline_s = options.interactive_deadline_s or None
    interactive.start_delay_s = options.interactive_start_delay_s
    bulk.batch = options.bulk_batch


@events.test_start.add_listener
def _reset_recorder(environment, **_kwargs) -> None:
    RECORDER.started = time.monotonic()
    RECORDER.measure_after_s = getattr(environment.parsed_options, "measure_after_s", 0.0) or 0.0


@events.test_stopping.add_listener
def _mark_stopping(**_kwargs) -> None:
    RECORDER.stopping = RECORDER.stopping or time.monotonic()


@events.request.add_listener
def _record(request_type, name, response_time, response_length, exception=None, context=None, **_kwargs) -> None:
    RECORDER.record(request_type, name, response_time, exception, context)


@events.quitting.add_listener
def _write_summary(environment, **_kwargs) -> None:
    path = getattr(environment.parsed_options, "summary_json", "")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(RECORDER.summary(), indent=2, default=float))


class TritonHttpEmbedUser(TritonUser):
    """Embeds one protein per request over HTTP (binary tensors), back-to-back (closed loop)."""

    wait_time = constant(0)

    @task
    def embed(self) -> None:
        self.embed_next_sequence()


class TritonGrpcEmbedUser(TritonGrpcUser):
    """Embeds one protein per request over gRPC, back-to-back (closed loop)."""

    wait_time = constant(0)

    @task
    def embed(self) -> None:
        self.embed_next_sequence()


class TritonInteractiveUser(TritonUser):
    """Mixed scenario: one short protein per request at priority interactive, a think time between requests."""

    abstract = False
    priority = "interactive"
    wait_time = constant(0.5)
    start_delay_s = 0.0

    def on_start(self) -> None:
        gevent.sleep(self.start_delay_s)

    @task
    def embed(self) -> None:
        self.embed_next_sequence()


class TritonBulkUser(TritonUser):
    """Mixed scenario: 64-sequence requests of long proteins at priority bulk, back to back."""

    abstract = False
    priority = "bulk"
    batch = 64
    wait_time = constant(0)

    @task
    def embed(self) -> None:
        self.embed_next_sequence()


class SelectableShape(LoadTestShape):
    """`--load-shape`: none (constant -u users), ramp, spike or soak, scaled to -u users and --shape-duration."""

    use_common_options = True  # the shape reads -u, -r and -t itself

    def tick(self):
        options = self.runner.environment.parsed_options
        duration = options.shape_duration or float(options.run_time or 60)
        settings = ShapeSettings(options.load_shape, duration, options.num_users or 1, options.spawn_rate or 1.0)
        return users_at(settings, self.get_run_time())
