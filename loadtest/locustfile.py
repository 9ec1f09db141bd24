"""Locust load test for the ESM-2 models on Triton: an HTTP user and a gRPC user, selectable load shapes.

    locust -f loadtest/locustfile.py --headless -H http://127.0.0.1:8000 --triton-grpc-url 127.0.0.1:8001 \
        -u 8 -r 4 -t 30s --load-shape ramp TritonHttpEmbedUser TritonGrpcEmbedUser

`python -m loadtest.run` wraps this (server start, reports, SLO exit code). Every user sends one protein per request,
drawn from a fixed-seed pool with the chosen length mix (loadtest/workload.py). Exact latencies (not Locust's
2-significant-digit buckets) are recorded and written with the counts to `--summary-json` when the run ends;
rejections (HTTP 503 / gRPC UNAVAILABLE) are kept apart from errors.
"""

from __future__ import annotations

from locust import LoadTestShape, constant, events, stats, task

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tritonfleet.loadtest.shapes import SHAPES, ShapeSettings, users_at
from tritonfleet.loadtest.triton_user import REJECTED_SUFFIX, TritonGrpcUser, TritonUser
from tritonfleet.loadtest.workload import DEFAULT_SEED, generate_sequences, percentile

stats.PERCENTILES_TO_REPORT = [0.50, 0.90, 0.95, 0.99, 0.999, 1.0]
stats.PERCENTILES_TO_STATISTICS = [0.50, 0.99]
MAX_RECORDED_LATENCIES = 2_000_000  # per run; bounds memory on very long soaks


@events.init_command_line_parser.add_listener
def _add_triton_options(parser) -> None:
    group = parser.add_argument_group("tritonfleet")
    group.add_argument("--triton-model", default="esm2", help="model to load (default: the esm2 ensemble)")
    group.add_argument("--triton-grpc-url", default="127.0.0.1:8001", help="gRPC address for the gRPC user")
    group.add_argument("--triton-outputs", default="embedding", choices=["embedding", "all"])
    group.add_argument("--length-mix", default="swissprot", help="swissprot | short | fixed-N")
    group.add_argument("--sequence-pool", type=int, default=1024, help="distinct sequences generated up front")
    group.add_argument("--sequence-seed", type=int, default=DEFAULT_SEED)
    group.add_argument("--load-shape", default="none", choices=sorted(SHAPES), help="none uses -u/-r/-t as given")
    group.add_argument("--shape-duration", type=float, default=0.0, help="seconds; 0 = --run-time")
    group.add_argument("--summary-json", default="", help="write exact latencies + counts here at the end")


@dataclass
class RunRecorder:
    """Exact latencies and counts per protocol, from Locust's request events (thread-safe for greenlets too)."""

    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    counts: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, request_type: str, name: str, response_time: float, exception, context) -> None:
        with self.lock:
            counts = self.counts[request_type]
            counts["requests"] += 1
            if name.endswith(REJECTED_SUFFIX):
                counts["rejections"] += 1
            elif exception is not None:
                counts["errors"] += 1
            else:
                counts["successes"] += 1
                counts["sequences"] += int((context or {}).get("sequences", 1))
                if sum(len(v) for v in self.latencies_ms.values()) < MAX_RECORDED_LATENCIES:
                    self.latencies_ms[request_type].append(response_time)

    def summary(self) -> dict:
        duration = time.monotonic() - self.started
        by_protocol = {}
        for protocol, counts in self.counts.items():
            values = self.latencies_ms.get(protocol, [])
            by_protocol[protocol] = {
                **counts,
                "sequences_per_s": counts["sequences"] / duration if duration > 0 else 0.0,
                "latency_ms": {f"p{q}": percentile(values, q) for q in (50, 90, 99)},
            }
        everything = [v for values in self.latencies_ms.values() for v in values]
        totals = {key: sum(c.get(key, 0) for c in self.counts.values())
                  for key in ("requests", "successes", "errors", "rejections", "sequences")}  # fmt: skip
        return {
            "duration_s": duration,
            **totals,
            "sequences_per_s": totals["sequences"] / duration if duration > 0 else 0.0,
            "latency_ms": {f"p{q}": percentile(everything, q) for q in (50, 90, 99)},
            "by_protocol": by_protocol,
        }


RECORDER = RunRecorder()


@events.init.add_listener
def _configure(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options is None:
        return
    for user_class in (TritonHttpEmbedUser, TritonGrpcEmbedUser):
        user_class.model = options.triton_model
        user_class.outputs = options.triton_outputs
        user_class.sequences = generate_sequences(options.sequence_pool, options.length_mix, options.sequence_seed)


@events.test_start.add_listener
def _reset_recorder(**_kwargs) -> None:
    RECORDER.started = time.monotonic()


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


class SelectableShape(LoadTestShape):
    """`--load-shape`: none (constant -u users), ramp, spike or soak, scaled to -u users and --shape-duration."""

    use_common_options = True  # the shape reads -u, -r and -t itself

    def tick(self):
        options = self.runner.environment.parsed_options
        duration = options.shape_duration or float(options.run_time or 60)
        settings = ShapeSettings(options.load_shape, duration, options.num_users or 1, options.spawn_rate or 1.0)
        return users_at(settings, self.get_run_time())
