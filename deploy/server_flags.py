"""The tritonserver flags this project sets, in one place.

`TritonServerFlags` renders a tritonserver command line. The local launcher (`deploy.local.server`) builds its
command from it (`local_flags`); the container manifests (compose, the Kubernetes Deployment, KServe's
ServingRuntime) spell their args out in YAML, and `tests/unit/test_deploy_server_flags.py` fails when they drift from
`container_flags(...)`. The flags that differ between places by design are listed here, each with its reason:
`CONTAINER_DIFFERENCES` (between manifests) and `LOCAL_DIFFERENCES` (the local launcher against the containers).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Triton's local response cache (`--cache-config local,size=BYTES`) for the models whose config enables it. Each
# server (each fleet replica, each pod) has its own, in its own memory.
DEFAULT_RESPONSE_CACHE_BYTES = 256 * 1024 * 1024
# Triton's grace period for in-flight requests after SIGTERM (Kubernetes' terminationGracePeriodSeconds is above it).
DEFAULT_EXIT_TIMEOUT_S = 30
ADMIN_KEY_HEADER = "triton-admin-key"
# Reload and shared-memory registration only for holders of the admin key (the infer-probe's --repair, operators).
RESTRICTED_APIS = ("model-repository", "shared-memory")
# The admin key as each manifest format refers to the TRITON_ADMIN_KEY environment variable.
KUBERNETES_ADMIN_KEY = "$(TRITON_ADMIN_KEY)"
COMPOSE_ADMIN_KEY = "${TRITON_ADMIN_KEY:?set TRITON_ADMIN_KEY}"

CONTAINER_DIFFERENCES: dict[str, str] = {
    "--model-repository": "where each platform mounts the repository (/models, $(MODEL_REPOSITORY), /mnt/models)",
    "--http-port": "KServe routes HTTP to containerPort 8080",
    "--grpc-port": "KServe's h2c route goes to port 9000",
    "--metrics-port": "Triton's default 8002 everywhere; compose leaves it implicit",
    "--allow-gpu-metrics": "off on CPU-only nodes (overlays/cpu); Triton's default (on) elsewhere",
}
LOCAL_DIFFERENCES: dict[str, str] = {
    **CONTAINER_DIFFERENCES,
    "--http-address": "the local launcher binds loopback unless --host says otherwise; containers bind every interface",
    "--grpc-address": "as --http-address",
    "--metrics-address": "as --http-address",
    "--model-control-mode": "none with --no-self-heal; explicit (every model loaded) otherwise, as in the containers",
    "--load-model": "only with explicit model control",
    "--backend-directory": "assembled from the nvidia-pytriton wheel; the NGC image has /opt/tritonserver/backends",
    "--cache-directory": "the wheel's caches/; the NGC image has /opt/tritonserver/caches",
    "--http-restricted-api": "no admin key locally: loopback only, and the supervisor and the fleet reload models "
    "through the repository API without one",
    "--grpc-restricted-protocol": "as --http-restricted-api",
    "--log-format": "the launcher reads Triton's default (glog) lines to report start-up errors",
    "--log-verbose": "a launcher flag (default 0); the containers keep Triton's default",
}


@dataclass(frozen=True)
class TritonServerFlags:
    """A tritonserver command line, field by field; `None` leaves a flag to Triton's default (not on the line).

    Attributes:
        host: `--http-address`, `--grpc-address` and `--metrics-address` at once.
        admin_key: restricts `RESTRICTED_APIS` (HTTP and gRPC) to requests carrying `triton-admin-key: <admin_key>`;
            a manifest passes a reference to its environment variable (`KUBERNETES_ADMIN_KEY`, `COMPOSE_ADMIN_KEY`).
        response_cache_bytes: 0 turns the response cache off.
    """

    model_repository: str
    model_control_mode: str = "explicit"
    load_models: tuple[str, ...] = ("*",)
    host: str | None = None
    http_port: int | None = 8000
    grpc_port: int | None = 8001
    metrics_port: int | None = 8002
    strict_readiness: bool = True
    exit_timeout_s: int = DEFAULT_EXIT_TIMEOUT_S
    allow_metrics: bool = True
    allow_cpu_metrics: bool = True
    allow_gpu_metrics: bool | None = None
    summary_latencies: bool = True
    response_cache_bytes: int = DEFAULT_RESPONSE_CACHE_BYTES
    cache_directory: str | None = None
    backend_directory: str | None = None
    admin_key: str | None = None
    log_format: str | None = "ISO8601"
    log_verbose: int | None = None

    def __post_init__(self) -> None:
        if self.model_control_mode not in ("none", "poll", "explicit"):
            raise ValueError(f"model_control_mode must be none, poll or explicit, got {self.model_control_mode!r}")
        if self.response_cache_bytes < 0:
            raise ValueError(f"response_cache_bytes must be >= 0, got {self.response_cache_bytes}")

    def args(self, overridden_by: Sequence[str] = ()) -> list[str]:
        """The flags as `--name=value`, without those that `overridden_by` (flags given by hand) sets itself."""
        mine = [*self._repository_args(), *self._address_args(), *self._lifecycle_args(), *self._metrics_args()]
        mine += [*self._cache_args(overridden_by), *self._security_args(), *self._log_args()]
        given = {flag_identity(arg) for arg in overridden_by if arg.startswith("--")}
        return [arg for arg in mine if flag_identity(arg) not in given]

    def _repository_args(self) -> list[str]:
        args = [f"--model-repository={self.model_repository}"]
        if self.backend_directory is not None:
            args.append(f"--backend-directory={self.backend_directory}")
        return args

    def _address_args(self) -> list[str]:
        args = []
        for endpoint, port in (("http", self.http_port), ("grpc", self.grpc_port), ("metrics", self.metrics_port)):
            if self.host is not None:
                args.append(f"--{endpoint}-address={self.host}")
            if port is not None:
                args.append(f"--{endpoint}-port={port}")
        return args

    def _lifecycle_args(self) -> list[str]:
        args = [f"--model-control-mode={self.model_control_mode}"]
        if self.model_control_mode == "explicit":
            args += [f"--load-model={name}" for name in self.load_models]
        return args + [
            f"--strict-readiness={_bool(self.strict_readiness)}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
        ]

    def _metrics_args(self) -> list[str]:
        args = [f"--allow-metrics={_bool(self.allow_metrics)}", f"--allow-cpu-metrics={_bool(self.allow_cpu_metrics)}"]
        if self.allow_gpu_metrics is not None:
            args.append(f"--allow-gpu-metrics={_bool(self.allow_gpu_metrics)}")
        if self.summary_latencies:
            args.append("--metrics-config=summary_latencies=true")
        return args

    def _cache_args(self, overridden_by: Sequence[str]) -> list[str]:
        # A cache configured by hand replaces the whole of ours, its directory included.
        if self.response_cache_bytes == 0 or any(arg.startswith("--cache-config") for arg in overridden_by):
            return []
        args = [] if self.cache_directory is None else [f"--cache-directory={self.cache_directory}"]
        return args + [f"--cache-config=local,size={self.response_cache_bytes}"]

    def _security_args(self) -> list[str]:
        if self.admin_key is None:
            return []
        restriction = f"{','.join(RESTRICTED_APIS)}:{ADMIN_KEY_HEADER}={self.admin_key}"
        return [f"--http-restricted-api={restriction}", f"--grpc-restricted-protocol={restriction}"]

    def _log_args(self) -> list[str]:
        args = [] if self.log_format is None else [f"--log-format={self.log_format}"]
        return args + ([] if self.log_verbose is None else [f"--log-verbose={self.log_verbose}"])


def container_flags(
    model_repository: str = "/models",
    http_port: int | None = 8000,
    grpc_port: int | None = 8001,
    admin_key: str = KUBERNETES_ADMIN_KEY,
    gpu_metrics: bool | None = None,
) -> TritonServerFlags:
    """The flags of a tritonserver in the NGC image (compose, Kubernetes, KServe): every model loaded, the repository
    API kept for admin-key holders, strict readiness, latency summaries, the response cache, ISO 8601 logs."""
    return TritonServerFlags(
        model_repository=model_repository,
        http_port=http_port,
        grpc_port=grpc_port,
        admin_key=admin_key,
        allow_gpu_metrics=gpu_metrics,
    )


def flag_identity(arg: str) -> str:
    """What makes two flags the same setting: the name, and for `--metrics-config` also its key (the flag repeats)."""
    name, _, value = arg.partition("=")
    if name == "--metrics-config" and value:
        return f"{name}={value.partition('=')[0]}"
    return name


def by_identity(args: Iterable[str]) -> dict[str, list[str]]:
    """`--name=value` flags grouped by `flag_identity` (values in order); a manifest's args, compared with a spec."""
    grouped: dict[str, list[str]] = {}
    for arg in args:
        grouped.setdefault(flag_identity(arg), []).append(arg)
    return grouped


def drift(actual: Iterable[str], expected: Iterable[str], allowed: Iterable[str] = ()) -> dict[str, tuple]:
    """Flags whose values differ between `actual` and `expected` (missing on one side included), except the flag
    names in `allowed`: {identity: (actual values, expected values)}; empty when they agree."""
    have, want = by_identity(actual), by_identity(expected)
    skip = set(allowed)
    return {
        key: (tuple(have.get(key, ())), tuple(want.get(key, ())))
        for key in sorted(set(have) | set(want))
        if key.partition("=")[0] not in skip and sorted(have.get(key, ())) != sorted(want.get(key, ()))
    }


def _bool(value: bool) -> str:
    return "true" if value else "false"


def main() -> int:
    """Prints the container flags (for pasting into a new manifest)."""
    print("\n".join(container_flags().args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
