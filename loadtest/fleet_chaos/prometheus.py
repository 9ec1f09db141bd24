"""A real Prometheus scraping the fleet's balancer with deploy/monitoring's rules."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from tritonfleet.deploy.local.server import start_in_own_session
from tritonfleet.loadtest.studies.serving import free_ports

PROJECT_ROOT = Path(__file__).resolve().parents[2]


RULES_DIR = PROJECT_ROOT / "deploy" / "monitoring" / "prometheus" / "rules"
BALANCER_JOB = "tritonfleet-balancer"  # the job name deploy/monitoring's fleet alerts select
ALERT = "FleetReplicaDown"


class Prometheus:
    """A real Prometheus (Debian's `prometheus`) scraping the balancer's exporter every second with the project's
    rules, evaluated every second."""

    def __init__(self, target: str, workdir: Path) -> None:
        self.binary = shutil.which("prometheus")
        self.workdir = workdir
        self.target = target
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        if self.binary is None:
            raise FileNotFoundError("prometheus not found: install Debian's prometheus (scripts/setup.sh does)")
        (port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{port}"
        config = self.workdir / "prometheus.yml"
        rules = sorted(str(path) for path in RULES_DIR.glob("*.yml"))
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": rules,
                    "scrape_configs": [{"job_name": BALANCER_JOB, "static_configs": [{"targets": [self.target]}]}],
                }
            )
        )
        # Own session, no stdin, log file closed here once handed over, and it dies with us (no orphan scraper).
        self._process = start_in_own_session(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            self.workdir / "prometheus.log",
            dict(os.environ),
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = (self.workdir / "prometheus.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"prometheus exited:\n{tail}")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.url + "/-/ready", timeout=2) as answer:
                if answer.status == 200:
                    return self
            time.sleep(0.2)
        raise RuntimeError("prometheus not ready after 60 s")

    def firing(self, alert: str = ALERT) -> list[dict[str, str]]:
        with urllib.request.urlopen(self.url + "/api/v1/alerts", timeout=5) as answer:
            alerts = json.loads(answer.read())["data"]["alerts"]
        return [a["labels"] for a in alerts if a["labels"].get("alertname") == alert and a["state"] == "firing"]

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=15)
            if self._process.poll() is None:
                self._process.kill()
