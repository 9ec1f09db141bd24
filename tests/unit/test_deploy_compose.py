"""deploy/compose: the compose-spec JSON schema (vendored in check-jsonschema), then the project's own rules."""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy/compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
TRITON_SERVICES = ("triton", "triton-cpu")


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose_spec_schema() -> dict:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema (dev extra) ships the compose-spec schema")
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


def test_compose_file_matches_the_compose_spec_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = compose_spec_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_schema_validation_catches_a_typo():
    jsonschema = pytest.importorskip("jsonschema")
    schema = compose_spec_schema()
    broken = compose()
    broken["services"]["triton"]["shm_sise"] = "1gb"
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert any("shm_sise" in e.message for e in validator.iter_errors(broken))


@pytest.mark.parametrize("service", TRITON_SERVICES)
def test_triton_service(service):
    spec = compose()["services"][service]
    assert spec["image"] == IMAGE
    command = spec["command"]
    assert command[0] == "tritonserver"
    assert "--model-control-mode=explicit" in command and "--load-model=*" in command
    assert any(a.startswith("--http-restricted-api=model-repository,shared-memory:triton-admin-key=") for a in command)
    assert any(
        a.startswith("--grpc-restricted-protocol=model-repository,shared-memory:triton-admin-key=") for a in command
    )
    assert spec["shm_size"] == "1gb"
    assert sorted(spec["ports"]) == ["127.0.0.1:8000:8000", "127.0.0.1:8001:8001", "127.0.0.1:8002:8002"]
    health = spec["healthcheck"]
    assert "http://127.0.0.1:8000/v2/health/ready" in health["test"]
    assert health["start_period"] == "300s"
    assert "triton" in spec["networks"]["default"]["aliases"]


@pytest.mark.parametrize("service", TRITON_SERVICES)
def test_repository_is_the_projects_model_repository_read_only(service):
    mounts = {m["target"]: m for m in compose()["services"][service]["volumes"]}
    repository = mounts["/models"]
    assert repository["read_only"] is True
    assert (COMPOSE_DIR / repository["source"]).resolve() == ROOT / "model_repository"
    probe = mounts["/opt/tritonfleet/probe"]
    assert (COMPOSE_DIR / probe["source"] / "infer_probe.py").resolve().is_file()


def test_gpu_and_cpu_profiles():
    services = compose()["services"]
    assert services["triton"]["profiles"] == ["gpu"]
    devices = services["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert services["triton-cpu"]["profiles"] == ["cpu"]
    assert "deploy" not in services["triton-cpu"]
    assert "profiles" not in services["prometheus"] and "profiles" not in services["grafana"]


def test_monitoring_services_mount_the_shared_configuration():
    services = compose()["services"]
    for name, expected in (
        ("prometheus", ("prometheus/prometheus.yml", "prometheus/rules")),
        ("grafana", ("grafana/provisioning", "grafana/dashboards")),
    ):
        sources = {(COMPOSE_DIR / m["source"]).resolve() for m in services[name]["volumes"] if isinstance(m, dict)}
        for relative in expected:
            path = ROOT / "deploy/monitoring" / relative
            assert path in sources and path.exists()
    assert ":" in services["prometheus"]["image"] and not services["prometheus"]["image"].endswith(":latest")
    assert ":" in services["grafana"]["image"] and not services["grafana"]["image"].endswith(":latest")


def _compose_cli() -> list[str] | None:
    for candidate in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(candidate[0]) is None:
            continue
        probe = subprocess.run([*candidate, "version"], capture_output=True, text=True, timeout=30, check=False)
        if probe.returncode == 0:
            return candidate
    return None


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_docker_compose_config_accepts_the_file(profile):
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose plugin / docker-compose here; the schema test above still ran")
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE), "--profile", profile, "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"TRITON_ADMIN_KEY": "test", "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    assert result.returncode == 0, result.stderr
