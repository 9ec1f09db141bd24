"""The fleet's loopback control API (JSON over HTTP) and its client, used by `tritonfleet fleet ctl ...`.

    GET  /status                                     replicas, ports, balancer state, versions, canaries
    POST /drain    {"replica": "r1"}                 POST /undrain {"replica": "r1"}
    POST /update   {"model": "m", "version": "3"}    rolling update, one replica at a time
    POST /rollback {"model": "m"}
    POST /canary   {"model": "m", "version": "3", "weight": 10, ...CanaryPolicy fields}
    POST /scale    {"replicas": 3}

Operations run one at a time; each answer is `{"ok": true, ...}` or `{"ok": false, "error": "..."}` (HTTP 400/500).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tritonfleet.deploy.fleet.fleet import Fleet


class ControlServer:
    def __init__(self, fleet: Fleet, host: str, port: int) -> None:
        self.fleet = fleet
        handler = _handler_for(fleet)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fleet-control", daemon=True)

    def start(self) -> ControlServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler_for(fleet: Fleet) -> type[BaseHTTPRequestHandler]:
    from tritonfleet.deploy.fleet.fleet import CanaryPolicy, FleetError

    def operation(path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path == "/drain":
            fleet.drain(body["replica"], wait=bool(body.get("wait", True)))
            return {}
        if path == "/undrain":
            fleet.undrain(body["replica"])
            return {}
        if path == "/update":
            fleet.rolling_update(body["model"], str(body["version"]))
            return {"versions": fleet.versions}
        if path == "/rollback":
            return {"version": fleet.rollback(body["model"])}
        if path == "/canary":
            fields = {f.name for f in dataclasses.fields(CanaryPolicy)}
            policy = dataclasses.replace(
                fleet.options.canary, **{k: v for k, v in body.items() if k in fields and v is not None}
            )
            report = fleet.canary(body["model"], str(body["version"]), float(body["weight"]), policy)
            return {"canary": dataclasses.asdict(report)}
        if path == "/scale":
            return {"replicas": fleet.scale_to(int(body["replicas"]))}
        raise KeyError(path)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # the fleet logs its own events
            pass

        def _answer(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload, default=str).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/status":
                self._answer(200, {"ok": True, **fleet.status()})
            else:
                self._answer(404, {"ok": False, "error": f"unknown path {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                self._answer(200, {"ok": True, **operation(self.path, body)})
            except KeyError as error:
                self._answer(400, {"ok": False, "error": f"missing or unknown field/path: {error}"})
            except (FleetError, ValueError) as error:
                self._answer(400, {"ok": False, "error": str(error)})
            except Exception as error:  # noqa: BLE001 - reported to the caller, the fleet goes on
                self._answer(500, {"ok": False, "error": f"{type(error).__name__}: {error}"})

    return Handler


class ControlClient:
    """Calls a running fleet's control API (`http://127.0.0.1:<control-port>`)."""

    def __init__(self, url: str, timeout_s: float = 900.0) -> None:
        self.url = url if "://" in url else f"http://{url}"
        self.timeout_s = timeout_s

    def call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            headers={"Content-Type": "application/json"},
            method="GET" if body is None else "POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return json.loads(error.read() or b'{"ok": false, "error": "no answer body"}')
        except OSError as error:
            return {"ok": False, "error": f"no fleet control API at {self.url} ({error})"}
