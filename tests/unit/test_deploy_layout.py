"""deploy/ holds no model configuration: compose, Kubernetes and KServe all serve model_repository/ unchanged.

Model configuration is Triton's `config.pbtxt` (written by `python -m export`) and the artifacts next to it; the only
exception is deploy/local, whose Python-based backends and test fixtures are part of the local runtime.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
EXEMPT = {DEPLOY / "local"}
MODEL_FILES = {"config.pbtxt", "model.onnx", "model.pt", "model.plan", "model.savedmodel"}
# ModelConfig fields: in a manifest they would mean a second, drifting copy of the repository's configs.
MODEL_CONFIG_FIELDS = re.compile(
    r"\b(max_batch_size|instance_group|dynamic_batching|max_queue_delay_microseconds|"
    r"preferred_batch_size|input_map|output_map|ensemble_scheduling|model_warmup)\b"
)


def deploy_files() -> list[Path]:
    files = []
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        if any(exempt == path or exempt in path.parents for exempt in EXEMPT):
            continue
        files.append(path)
    return files


def test_there_are_deploy_files_to_check():
    names = {p.relative_to(DEPLOY).parts[0] for p in deploy_files()}
    assert {"compose", "kubernetes", "kserve", "monitoring"} <= names


def test_no_model_files_outside_deploy_local():
    offenders = [str(p.relative_to(ROOT)) for p in deploy_files() if p.name in MODEL_FILES]
    assert not offenders


def walk(node, found: list[str]) -> None:
    """Keys matching ModelConfig fields, and strings embedding pbtxt (`max_batch_size: 8`), anywhere in a document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if MODEL_CONFIG_FIELDS.fullmatch(str(key)):
                found.append(str(key))
            walk(value, found)
    elif isinstance(node, list):
        for item in node:
            walk(item, found)
    elif isinstance(node, str):
        found.extend(m.group(1) for m in re.finditer(MODEL_CONFIG_FIELDS.pattern + r"\s*[:{]", node))


def test_no_model_config_fields_outside_deploy_local():
    offenders = []
    for path in deploy_files():
        if path.suffix in {".yaml", ".yml"}:
            documents = list(yaml.safe_load_all(path.read_text()))
        elif path.suffix == ".json":
            documents = [json.loads(path.read_text())]
        else:
            continue
        found: list[str] = []
        walk(documents, found)
        if found:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(set(found))}")
    assert not offenders, f"model configuration belongs in model_repository/: {offenders}"


def test_the_field_check_finds_an_embedded_config():
    found: list[str] = []
    walk({"data": {"config.pbtxt": 'name: "m"\nmax_batch_size: 8\n'}, "instance_group": []}, found)
    assert sorted(found) == ["instance_group", "max_batch_size"]


def test_every_deployment_points_at_the_model_repository():
    compose = (DEPLOY / "compose/compose.yaml").read_text()
    assert "source: ../../model_repository" in compose and "--model-repository=/models" in compose
    base = (DEPLOY / "kubernetes/base/triton/deployment.yaml").read_text()
    assert "--model-repository=$(MODEL_REPOSITORY)" in base
    kserve = (DEPLOY / "kserve/servingruntime.yaml").read_text()
    assert "--model-repository=/mnt/models" in kserve
    for path in (DEPLOY / "kserve").glob("inferenceservice*.yaml"):
        assert re.search(r"storageUri: \S+/model_repository\b", path.read_text()), path.name
