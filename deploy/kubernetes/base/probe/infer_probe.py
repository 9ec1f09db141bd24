#!/usr/bin/env python3
"""Liveness probe that runs one real inference against the local tritonserver (standard library only).

Why: Triton 24.10 does not restart a crashed python-backend stub, and `/v2/health/ready` keeps answering 200 while
every request to that model fails with HTTP 500 "Stub process ... is not healthy". A kubelet exec probe running this
script turns that state into a container restart. The NGC image ships python3 but not tritonclient, so this file
speaks the KServe v2 JSON protocol with urllib and nothing else.

Exit codes (what the kubelet sees):
  0  the server is live and the model answered (or is merely overloaded: 503/429 queue-full is not a reason to kill)
  1  the server is not live, or the model failed (5xx other than 503, bad response, timeout, connection refused)
  2  bad usage

With `--repair` (explicit model-control mode only) a failing model is reloaded once through the repository API and
probed again; only if it still fails does the probe report failure and the container restart. The model reloaded is
the one named in "Stub process '<model>_<group>_<instance>' is not healthy" (a composing step of an ensemble), else
the probed model. A plain `load` of an unchanged model is a no-op in 24.10 (it does not bring a dead stub back), so
the load carries the served config with one extra `parameters` entry (a timestamp): Triton then loads a fresh copy
in the background and swaps it in without unloading. The restricted-API header is `--admin-header` with the value
of `$TRITON_ADMIN_KEY`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request

DEFAULT_SEQUENCE = "MKTAYIAKQRQISFVKSHFSRQ"
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


def check_live(base_url: str, timeout_s: float) -> None:
    try:
        status, _ = _request(f"{base_url}/v2/health/live", timeout_s)
    except OSError as error:
        raise ProbeError(f"server not reachable: {error}") from error
    if status != 200:
        raise ProbeError(f"/v2/health/live answered {status}")


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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    base_url = args.url.rstrip("/")
    try:
        body = json.loads(args.body) if args.body else default_body(args.input, args.output, args.sequence)
    except ValueError as error:
        print(f"probe: --body is not JSON: {error}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        check_live(base_url, args.timeout)
        try:
            outcome = check_inference(base_url, args.model, body, args.timeout)
        except ProbeError as first_failure:
            if not args.repair:
                raise
            target = broken_model(str(first_failure), args.model)
            print(f"probe: {first_failure}; reloading {target!r}", file=sys.stderr)
            reload_model(base_url, target, args.admin_header, os.environ.get("TRITON_ADMIN_KEY"), args.reload_timeout)
            outcome = check_inference(base_url, args.model, body, args.timeout)
            outcome = f"{outcome} after reload"
    except ProbeError as error:
        print(f"probe: FAIL {error}", file=sys.stderr)
        return 1
    print(f"probe: {outcome} ({args.model}, {time.monotonic() - started:.2f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
