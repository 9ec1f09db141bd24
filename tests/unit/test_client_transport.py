"""Reaching a fleet behind an ingress: https URLs, a CA file, extra headers and gRPC channel arguments
(client.config, client.transport). The plumbing is checked against real loopback TLS servers (a stdlib HTTPS server
and a grpcio server answering KServe's ServerLive), not against tritonclient internals."""

from __future__ import annotations

import asyncio
import http.server
import shutil
import ssl
import subprocess
import threading
from concurrent import futures
from pathlib import Path

import pytest

from tritonfleet.client import AsyncEmbeddingClient, ClientConfig, EmbeddingClient
from tritonfleet.client.cli import build_parser, config_from_args
from tritonfleet.client.transport import connection_options, grpc_channel_args


def test_an_https_url_turns_tls_on_and_loses_its_scheme() -> None:
    config = ClientConfig(url="https://fleet.example:443/", headers={"authorization": "Bearer t"})
    assert (config.url, config.tls, config.headers) == ("fleet.example:443", True, (("authorization", "Bearer t"),))
    assert ClientConfig(url="http://127.0.0.1:8000").url == "127.0.0.1:8000"
    assert not ClientConfig(url="http://127.0.0.1:8000").tls
    with pytest.raises(ValueError, match="ca_file needs tls"):
        ClientConfig(url="127.0.0.1:8000", ca_file="/ca.pem")
    with pytest.raises(ValueError, match="host:port"):
        ClientConfig(url="ftp://x:1")
    hash(config)  # still a frozen, hashable value


def test_each_tritonclient_client_gets_the_same_tls_settings() -> None:
    http = ClientConfig(url="https://f:443", ca_file="/ca.pem")
    assert connection_options(http) == {
        "connection_timeout": 60.0,
        "network_timeout": 60.0,
        "ssl": True,
        "ssl_options": {"ca_certs": "/ca.pem"},
    }
    grpc = ClientConfig(url="https://f:443", protocol="grpc", ca_file="/ca.pem")
    assert connection_options(grpc) == {"channel_args": None, "ssl": True, "root_certificates": "/ca.pem"}
    assert connection_options(grpc, asyncio_client=True) == connection_options(grpc)
    plain = ClientConfig(url="f:8000")
    assert "ssl" not in connection_options(plain) and "ssl" not in connection_options(plain, asyncio_client=True)


def test_channel_arguments_keep_tritonclients_unlimited_message_sizes_unless_overridden() -> None:
    assert grpc_channel_args(ClientConfig(protocol="grpc", url="f:1")) is None
    config = ClientConfig(
        protocol="grpc",
        url="f:1",
        grpc_channel_args=[("grpc.ssl_target_name_override", "fleet"), ("grpc.max_receive_message_length", 99)],
    )
    args = dict(grpc_channel_args(config))
    assert args["grpc.ssl_target_name_override"] == "fleet"
    assert args["grpc.max_receive_message_length"] == 99
    assert args["grpc.max_send_message_length"] == 2**31 - 1


def test_the_command_line_takes_headers_channel_arguments_and_a_ca_file() -> None:
    args = build_parser().parse_args(
        ["health", "--url", "https://fleet:443", "--protocol", "grpc", "--ca-file", "/ca.pem"]
        + ["--header", "authorization=Bearer a=b", "--grpc-channel-arg", "grpc.keepalive_time_ms=1000"]
    )
    config = config_from_args(args)
    assert config.tls and config.ca_file == "/ca.pem" and config.url == "fleet:443"
    assert config.headers == (("authorization", "Bearer a=b"),)
    assert config.grpc_channel_args == (("grpc.keepalive_time_ms", 1000),)


# -- real TLS servers on loopback ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (it is its own CA)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)]
        + ["-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture
def https_server(certificate):
    """A loopback HTTPS server answering KServe's /v2/health/live with 200, recording request headers."""
    cert, key = certificate
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            seen.append({name.lower(): value for name, value in self.headers.items()})
            self.send_response(200 if self.path == "/v2/health/live" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_https_with_a_ca_file_and_headers_reaches_the_server_sync_and_asyncio(https_server, certificate) -> None:
    url, seen = https_server
    config = ClientConfig(url=url, ca_file=str(certificate[0]), headers={"authorization": "Bearer secret"})
    with EmbeddingClient(config) as client:
        assert client.is_server_live()

    async def live() -> bool:
        async with AsyncEmbeddingClient(config) as client:
            return await client.is_server_live()

    assert asyncio.run(live())
    assert len(seen) == 2 and all(headers.get("authorization") == "Bearer secret" for headers in seen)


def test_https_without_the_ca_refuses_an_unknown_certificate(https_server) -> None:
    url, seen = https_server
    with EmbeddingClient(ClientConfig(url=url)) as client:  # system CAs only: the self-signed server is not trusted
        assert not client.is_server_live()
    assert seen == []


def test_grpc_over_tls_sends_headers_as_metadata(certificate) -> None:
    grpc = pytest.importorskip("grpc")
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    cert, key = certificate
    seen: list[dict[str, str]] = []

    class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
        def ServerLive(self, request, context):  # noqa: N802 - the service's naming
            seen.append(dict(context.invocation_metadata()))
            return service_pb2.ServerLiveResponse(live=True)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        config = ClientConfig(
            url=f"https://127.0.0.1:{port}",
            protocol="grpc",
            ca_file=str(cert),
            headers={"authorization": "Bearer g"},
            grpc_channel_args=[("grpc.primary_user_agent", "tritonfleet-test")],
        )
        with EmbeddingClient(config) as client:
            assert client.is_server_live()

        async def live() -> bool:
            async with AsyncEmbeddingClient(config) as client:
                return await client.is_server_live()

        assert asyncio.run(live())
    finally:
        server.stop(grace=None)
    assert len(seen) == 2 and all(metadata.get("authorization") == "Bearer g" for metadata in seen)
    assert all("tritonfleet-test" in metadata.get("user-agent", "") for metadata in seen)
