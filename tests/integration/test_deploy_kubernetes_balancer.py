"""The Kubernetes balancer configuration (deploy/kubernetes/balancer.py, DNS-discovery mode with a canary track) on a
real HAProxy 2.6 in front of two real tritonservers, with a small DNS server on loopback standing in for the
cluster's DNS (the headless Services' A records): stable name -> 127.0.0.1, canary name -> 127.0.0.2.

Checked: the server-template slots fill from DNS (replica1 and canary1 UP, spare slots in maintenance), the weights
are the rendered ones, inference through the front works, and a replica whose DNS record disappears (a pod leaving
the headless Service) leaves rotation.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.support.tiny_models import build_tiny_embedding_onnx
from tritonfleet.deploy.fleet.haproxy import haproxy_binary
from tritonfleet.deploy.kubernetes import balancer

pytestmark = pytest.mark.integration

MODEL = "tiny_embedding"
STABLE_NAME = "tritonfleet-triton.test.svc.cluster.local"
CANARY_NAME = "tritonfleet-triton-canary.test.svc.cluster.local"
DEADLINE_S = 30.0


class LoopbackDns:
    """A minimal authoritative DNS server over UDP: A records from a mutable table, empty answers otherwise."""

    def __init__(self, records: dict[str, str]):
        self.records = dict(records)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> LoopbackDns:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            answer = self.answer(query)
            if answer:
                self.sock.sendto(answer, peer)

    def answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        ident, flags, qdcount = struct.unpack("!HHH", query[:6])
        if qdcount != 1:
            return None
        labels, offset = [], 12
        while offset < len(query) and query[offset]:
            length = query[offset]
            labels.append(query[offset + 1 : offset + 1 + length].decode().lower())
            offset += 1 + length
        question_end = offset + 5
        qtype, _qclass = struct.unpack("!HH", query[offset + 1 : question_end])
        name = ".".join(labels)
        address = self.records.get(name)
        rcode = 0 if address or name in (STABLE_NAME, CANARY_NAME) else 3  # NXDOMAIN for unknown names
        answers = b""
        if address and qtype == 1:
            answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(address)
        header = struct.pack("!HHHHHH", ident, 0x8400 | (flags & 0x0100) | rcode, 1, 1 if answers else 0, 0, 0)
        return header + query[12:question_end] + answers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def wait_for(predicate, what: str, process: subprocess.Popen) -> str:
    deadline = time.monotonic() + DEADLINE_S
    text = ""
    while time.monotonic() < deadline:
        assert process.poll() is None, "haproxy exited"
        try:
            text = scrape(METRICS_PORT)
        except (OSError, urllib.error.URLError):
            text = ""
        if predicate(text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {DEADLINE_S} s; metrics:\n{text[-3000:]}")


METRICS_PORT = free_port()


def status(server: str, state: str) -> str:
    return f'haproxy_server_status{{proxy="triton_http",server="{server}",state="{state}"}} 1'


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, triton_server_factory):
    """Two real tritonservers on the same ports, one on 127.0.0.1 (stable), one on 127.0.0.2 (canary)."""
    repository = tmp_path_factory.mktemp("balancer") / "repository"
    repository.mkdir()
    build_tiny_embedding_onnx(Path(repository), name=MODEL)
    http_port, grpc_port = free_port(), free_port()
    servers = [
        triton_server_factory(
            repository, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=free_port(), exit_timeout_s=5
        )
        for host in ("127.0.0.1", "127.0.0.2")
    ]
    return http_port, grpc_port, servers


def test_dns_discovery_fills_the_stable_and_canary_slots_with_their_weights(replicas, tmp_path):
    try:
        binary = haproxy_binary()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    http_port, grpc_port, _ = replicas
    front_http, front_grpc = free_port(), free_port()
    with LoopbackDns({STABLE_NAME: "127.0.0.1", CANARY_NAME: "127.0.0.2"}) as dns:
        text = balancer.render(
            balancer.CANARY_WEIGHT,
            stable_service=STABLE_NAME,
            canary_service=CANARY_NAME,
            http_port=front_http,
            grpc_port=front_grpc,
            metrics_port=METRICS_PORT,
            bind_host="127.0.0.1",
            stats_socket=None,
            nameservers=(f"127.0.0.1:{dns.port}",),
            hold_valid_s=1,
            replica_http_port=http_port,
            replica_grpc_port=grpc_port,
        )  # the committed configuration, with loopback names, ports and resolver
        config = tmp_path / "haproxy.cfg"
        config.write_text(text)
        process = subprocess.Popen(
            [binary, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            metrics = wait_for(
                lambda t: status("replica1", "UP") in t and status("canary1", "UP") in t,
                "replica1 and canary1 UP through DNS",
                process,
            )
            assert status("replica2", "MAINT") in metrics, "spare slots wait for DNS records in maintenance"
            assert 'haproxy_server_uweight{proxy="triton_http",server="replica1"} 100' in metrics
            assert f'haproxy_server_uweight{{proxy="triton_http",server="canary1"}} {balancer.CANARY_WEIGHT}' in metrics

            client = httpclient.InferenceServerClient(f"127.0.0.1:{front_http}", network_timeout=30)
            try:
                ids = np.array([[1, 2, 3]], dtype=np.int64)
                tensor = httpclient.InferInput("IDS", list(ids.shape), "INT64")
                tensor.set_data_from_numpy(ids)
                assert client.infer(MODEL, [tensor]).as_numpy("MEAN") is not None
            finally:
                client.close()

            # The canary pod leaves its headless Service: its DNS record goes, and so does its slot.
            del dns.records[CANARY_NAME]
            wait_for(
                lambda t: status("canary1", "MAINT") in t, "canary1 out of rotation after its record went", process
            )
            assert status("replica1", "UP") in scrape(METRICS_PORT)
        finally:
            process.terminate()
            process.wait(timeout=30)
