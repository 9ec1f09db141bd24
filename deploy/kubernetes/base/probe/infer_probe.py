#!/usr/bin/env python3
"""Inference probe: one real inference at interactive priority against the local tritonserver (standard library only).

Why: Triton 24.10 does not restart a crashed python-backend stub, and `/v2/health/ready` keeps answering 200 while
every request to that model fails with HTTP 500 "Stub process ... is not healthy". The NGC image ships python3 but
not tritonclient, so this file speaks the KServe v2 JSON protocol with urllib and nothing else.

The request carries `priority` 1 (interactive: served before bulk work, so a busy pod answers it) and a Triton
`timeout` equal to `--timeout`, so it never waits behind a bulk job. The probe never restarts anything: in
Kubernetes it runs in a sidecar (`--watch`) whose readiness (`--check-status`) takes a pod whose model fails out
of the Services (and so out of the balancer), while the Triton container's own probes stay Triton's
`/v2/health/live` (liveness) and `/v2/health/ready` (readiness).

Modes:
  one-shot (default)        check once, exit 0 (ok or merely overloaded: 503/429 is back-pressure) or 1 (failed)
  --watch SECONDS           check every SECONDS while the server reports ready, write --status-file each time,
                            until SIGTERM (exit 0)
  --check-status            exit 0 when --status-file says ok and is younger than --max-age seconds, else 1
Exit code 2: bad usage.

With `--repair` (explicit model-control mode only) a failing model is reloaded once through the repository API and
probed again. The model reloaded is the one named in "Stub process '<model>_<group>_<instance>' is not healthy" (a
composing step of an ensemble), else the probed model. A plain `load` of an unchanged model is a no-op in 24.10 (it
does not bring a dead stub back), so the load carries the served config with one extra `parameters` entry (a
timestamp): Triton then loads a fresh copy in the background and swaps it in without unloading. The restricted-API
header is `--admin-header` with the value of `$TRITON_ADMIN_KEY`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request

DEFAULT_SEQUENCE = "MKTAYIAKQRQISFVKSHFSRQ"
INTERACTIVE_PRIORITY = 1  # contract/priorities.py: "interactive" is Triton priority level 1 (served first)
OVERLOADED = (429, 503)
RELOAD_PARAMETER = "tritonfleet_reload"
_DEAD_STUB = re.compile(r"Stub process '(?P<instance>[^']+)' is not healthy")


class ProbeError(Exception):
    """A failed check, with the reason printed to the kubelet's probe output."""


def broken_model(message: str, default: str) -> str:
    """The model whose stub died, from Triton's error text ('esm2_tokenizer_0_0' -> 'esm2_tokenizer')."""
    match = _DEAD_STUB.search(message)
    if not match:
        return default
    return re.sub(r"_\d+_\d+$", "", match.group("instance")) or default


def _request(url: str, timeout_s: float, body: bytes | None = None, headers: dict[str, str] | None = None):
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    request.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - loopback URL from args
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def default_body(input_name: str, output_name: str, sequence: str) -> dict:
    """An inference request with one BYTES sequence (shape [1, 1]: batch of one) asking for one output."""
    return {
        "inputs": [{"name": input_name, "shape": [1, 1], "datatype": "BYTES", "data": [sequence]}],
        "outputs": [{"name": output_name}],
    }


def with_request_parameters(body: dict, priority: int, timeout_s: float) -> dict:
    """The request with Triton's `priority` level and `timeout` (microseconds in the queue) set, unless given."""
    parameters = dict(body.get("parameters") or {})
    if priority > 0:
        parameters.setdefault("priority", priority)
    parameters.setdefault("timeout", max(1, int(timeout_s * 1_000_000)))
    return {**body, "parameters": parameters}


def check_health(base_url: str, timeout_s: float, which: str = "live") -> None:
    try:
        status, _ = _request(f"{base_url}/v2/health/{which}", timeout_s)
    except OSError as error:
        raise ProbeError(f"server not reachable: {error}") from error
    if status != 200:
        raise ProbeError(f"/v2/health/{which} answered {status}")


def check_live(base_url: str, timeout_s: float) -> None:
    check_health(base_url, timeout_s, "live")


def check_inference(base_url: str, model: str, body: dict, timeout_s: float) -> str:
    """Run one inference; return 'ok' or 'overloaded', raise ProbeError on a failure that warrants a restart."""
    payload = json.dumps(body).encode()
    try:
        status, raw = _request(f"{base_url}/v2/models/{model}/infer", timeout_s, payload)
    except OSError as error:  # timeouts and refused connections
        raise ProbeError(f"inference on {model!r} did not complete: {error}") from error
    if status in OVERLOADED:
        return "overloaded"
    text = raw.decode(errors="replace")[:300]
    if status != 200:
        raise ProbeError(f"inference on {model!r} answered {status}: {text}")
    try:
        outputs = json.loads(raw)["outputs"]
    except (ValueError, KeyError, TypeError) as error:
        raise ProbeError(f"inference on {model!r} returned no outputs: {text}") from error
    wanted = {output["name"] for output in body.get("outputs", [])}
    names = {output.get("name") for output in outputs}
    if not outputs or not wanted <= names or any(not output.get("data") for output in outputs):
        raise ProbeError(f"inference on {model!r} returned incomplete outputs {sorted(n for n in names if n)}")
    return "ok"


def reload_model(base_url: str, model: str, header: str, key: str | None, timeout_s: float) -> None:
    """Force a background reload of `model`: load it with its served config plus a fresh `parameters` entry."""
    try:
        status, raw = _request(f"{base_url}/v2/models/{model}/config", timeout_s)
        if status != 200:
            raise ProbeError(f"config of {model!r} answered {status}: {raw.decode(errors='replace')[:300]}")
        config = json.loads(raw)
        config.setdefault("parameters", {})[RELOAD_PARAMETER] = {"string_value": str(time.time())}
        body = json.dumps({"parameters": {"config": json.dumps(config)}}).encode()
        headers = {header: key} if key else {}
        status, raw = _request(f"{base_url}/v2/repository/models/{model}/load", timeout_s, body, headers)
    except (OSError, ValueError) as error:
        raise ProbeError(f"reload of {model!r} did not complete: {error}") from error
    if status != 200:
        raise ProbeError(f"reload of {model!r} answered {status}: {raw.decode(errors='replace')[:300]}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="tritonserver HTTP base URL")
    parser.add_argument("--model", default="esm2", help="model to run (default: the esm2 ensemble)")
    parser.add_argument("--input", default="SEQUENCE", help="BYTES input name")
    parser.add_argument("--output", default="EMBEDDING", help="output that must come back")
    parser.add_argument("--sequence", default=DEFAULT_SEQUENCE, help="protein sequence to embed")
    parser.add_argument("--body", help="a full KServe v2 JSON request instead of --input/--output/--sequence")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP call")
    parser.add_argument("--repair", action="store_true", help="reload a failing model once before giving up")
    parser.add_argument("--reload-timeout", type=float, default=120.0, help="seconds allowed for the reload")
    parser.add_argument("--admin-header", default="triton-admin-key", help="restricted-API header name")
    parser.add_argument(
        "--priority",
        type=int,
        default=INTERACTIVE_PRIORITY,
        help="Triton priority level of the request (1 = interactive, served first; 0 = the model's default)",
    )
    parser.add_argument("--watch", type=float, metavar="SECONDS", help="check every SECONDS until SIGTERM")
    parser.add_argument("--status-file", help="where --watch writes its last result and --check-status reads it")
    parser.add_argument("--check-status", action="store_true", help="exit 0 if --status-file is ok and fresh")
    parser.add_argument("--max-age", type=float, default=120.0, help="seconds a status stays fresh")
    args = parser.parse_args(argv)
    if (args.watch is not None or args.check_status) and not args.status_file:
        parser.error("--watch and --check-status need --status-file")
    if args.watch is not None and args.watch <= 0:
        parser.error("--watch needs a positive number of seconds")
    if args.watch is not None and args.check_status:
        parser.error("--watch and --check-status are separate commands")
    return args


def probe_once(args: argparse.Namespace, base_url: str, body: dict, require_ready: bool = False) -> str:
    """One check (live, optionally ready, inference, repair); returns the outcome or raises ProbeError."""
    check_live(base_url, args.timeout)
    if require_ready:  # still loading (or shutting down): no inference, and above all no repair
        check_health(base_url, args.timeout, "ready")
    try:
        return check_inference(base_url, args.model, body, args.timeout)
    except ProbeError as first_failure:
        if not args.repair:
            raise
        target = broken_model(str(first_failure), args.model)
        print(f"probe: {first_failure}; reloading {target!r}", file=sys.stderr, flush=True)
        reload_model(base_url, target, args.admin_header, os.environ.get("TRITON_ADMIN_KEY"), args.reload_timeout)
        return f"{check_inference(base_url, args.model, body, args.timeout)} after reload"


def write_status(path: str, ok: bool, detail: str) -> None:
    """Replace the status file atomically: {"ok": bool, "time": unix seconds, "detail": text}."""
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as handle:
        json.dump({"ok": ok, "time": time.time(), "detail": detail}, handle)
    os.replace(handle.name, path)


def check_status(path: str, max_age_s: float) -> int:
    try:
        with open(path) as handle:
            status = json.load(handle)
        ok, written = bool(status["ok"]), float(status["time"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"probe: FAIL no usable status in {path}: {error}", file=sys.stderr)
        return 1
    age = time.time() - written
    if age > max_age_s:
        print(f"probe: FAIL status is {age:.0f}s old (the watcher is stuck or gone)", file=sys.stderr)
        return 1
    if not ok:
        print(f"probe: FAIL {status.get('detail', '')}", file=sys.stderr)
        return 1
    print(f"probe: ok ({status.get('detail', '')}, {age:.0f}s ago)")
    return 0


def watch(args: argparse.Namespace, base_url: str, body: dict) -> int:
    """Probe every --watch seconds until SIGTERM/SIGINT; PID 1 in a container needs the explicit handler."""
    stopping = False

    def stop(signum, frame):  # noqa: ARG001 - signal handler signature
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    write_status(args.status_file, False, "no check yet")
    while not stopping:
        started = time.monotonic()
        try:
            outcome = probe_once(args, base_url, body, require_ready=True)
            write_status(args.status_file, True, f"{outcome} ({args.model})")
        except ProbeError as error:
            print(f"probe: FAIL {error}", file=sys.stderr, flush=True)
            write_status(args.status_file, False, str(error))
        deadline = started + args.watch
        while not stopping and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.check_status:
        return check_status(args.status_file, args.max_age)
    base_url = args.url.rstrip("/")
    try:
        body = json.loads(args.body) if args.body else default_body(args.input, args.output, args.sequence)
    except ValueError as error:
        print(f"probe: --body is not JSON: {error}", file=sys.stderr)
        return 2
    body = with_request_parameters(body, args.priority, args.timeout)
    if args.watch is not None:
        return watch(args, base_url, body)
    started = time.monotonic()
    try:
        outcome = probe_once(args, base_url, body)
    except ProbeError as error:
        print(f"probe: FAIL {error}", file=sys.stderr)
        return 1
    print(f"probe: {outcome} ({args.model}, {time.monotonic() - started:.2f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
