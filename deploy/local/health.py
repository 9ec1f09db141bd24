"""The supervisor's truthful readiness and liveness over HTTP, for a load balancer or a readiness probe."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tritonfleet.deploy.local.supervisor import ModelSupervisor

LOGGER = logging.getLogger(__name__)


class SupervisorHealthServer:
    """Serves the supervisor's readiness on `GET /ready` and liveness on `GET /live` (200 or 503, JSON status).

    One request at a time, in one thread: each check calls Triton through tritonclient.http, whose gevent-based
    clients belong to the thread that runs them (a thread per request would leave a gevent hub behind each time).
    """

    def __init__(self, supervisor: ModelSupervisor, host: str = "127.0.0.1", port: int = 0) -> None:
        self.supervisor = supervisor
        self._server = HTTPServer((host, port), _health_handler(supervisor))
        self._thread = threading.Thread(target=self._server.serve_forever, name="supervisor-health", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> SupervisorHealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _health_handler(supervisor: ModelSupervisor) -> type[BaseHTTPRequestHandler]:
    class HealthHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            checks = {"/ready": supervisor.is_ready, "/live": supervisor.is_live}
            check = checks.get(self.path.split("?", 1)[0])
            if check is None:
                self.send_error(404, "use /ready or /live")
                return
            healthy = check()
            payload = json.dumps({"ok": healthy, **supervisor.status()}).encode()
            self.send_response(200 if healthy else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
            LOGGER.debug("health endpoint: " + format, *args)

    return HealthHandler
