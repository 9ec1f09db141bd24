"""A small, strict kustomize renderer for the manifests in deploy/kubernetes (offline validation needs no binary).

It supports exactly the subset these kustomizations use and refuses anything else, so it can never silently render
something different from `kubectl kustomize`: `resources` (files and Kustomization folders), `components`
(kind Component), `configMapGenerator` with `files` and `generatorOptions.disableNameSuffixHash: true`, and
`patches` holding inline or file JSON 6902 operations (`add`, `remove`, `replace`, `test`) selected by kind and name.
Order as in kustomize: resources, then components, then this folder's generators, then its patches. Files must stay
inside their kustomization folder (kustomize's load restrictor). Tests compare the output with `kubectl kustomize`
where kubectl is installed.

    python -m deploy.kubernetes.kustomize deploy/kubernetes/overlays/gpu > gpu.yaml
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {
    "Kustomization": {
        "apiVersion",
        "kind",
        "resources",
        "components",
        "patches",
        "configMapGenerator",
        "generatorOptions",
    },
    "Component": {"apiVersion", "kind", "resources", "patches", "configMapGenerator", "generatorOptions"},
}
PATCH_OPS = {"add", "remove", "replace", "test"}


class KustomizeError(ValueError):
    """A kustomization this renderer cannot render faithfully, or a patch that does not apply."""


def load_kustomization(folder: Path) -> dict[str, Any]:
    for name in KUSTOMIZATION_FILES:
        path = folder / name
        if path.is_file():
            data = yaml.safe_load(path.read_text()) or {}
            kind = data.get("kind", "Kustomization")
            if kind not in SUPPORTED_FIELDS:
                raise KustomizeError(f"{path}: unsupported kind {kind!r}")
            unknown = set(data) - SUPPORTED_FIELDS[kind]
            if unknown:
                raise KustomizeError(f"{path}: unsupported fields {sorted(unknown)}")
            return data
    raise KustomizeError(f"{folder}: no kustomization file")


def render(folder: Path | str) -> list[dict[str, Any]]:
    """Render a Kustomization folder into its list of Kubernetes objects."""
    folder = Path(folder).resolve()
    kustomization = load_kustomization(folder)
    if kustomization.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{folder}: a Component cannot be rendered on its own")
    return _build(folder, kustomization, [])


def _build(folder: Path, kustomization: dict[str, Any], objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    objects = list(objects)
    for entry in kustomization.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            objects.extend(render(path))
        elif path.is_file():
            objects.extend(_load_objects(folder, path))
        else:
            raise KustomizeError(f"{folder}: resource {entry!r} not found")
    for entry in kustomization.get("components", []):
        component_folder = (folder / entry).resolve()
        component = load_kustomization(component_folder)
        if component.get("kind") != "Component":
            raise KustomizeError(f"{component_folder}: listed under components but is not kind Component")
        objects = _build(component_folder, component, objects)
    objects.extend(_generate_config_maps(folder, kustomization))
    for patch in kustomization.get("patches", []):
        objects = _apply_patch(folder, patch, objects)
    _check_unique(folder, objects)
    return objects


def _inside(folder: Path, path: Path) -> Path:
    path = path.resolve()
    if folder != path and folder not in path.parents:
        raise KustomizeError(f"{path} is outside {folder} (kustomize's load restrictor refuses it)")
    return path


def _load_objects(folder: Path, path: Path) -> list[dict[str, Any]]:
    _inside(folder, path)
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for doc in documents:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise KustomizeError(f"{path}: every document needs apiVersion and kind")
    return documents


def _generate_config_maps(folder: Path, kustomization: dict[str, Any]) -> list[dict[str, Any]]:
    generators = kustomization.get("configMapGenerator", [])
    options = kustomization.get("generatorOptions", {})
    if generators and options.get("disableNameSuffixHash") is not True:
        raise KustomizeError(f"{folder}: configMapGenerator needs generatorOptions.disableNameSuffixHash: true here")
    unknown_options = set(options) - {"disableNameSuffixHash", "labels"}
    if unknown_options:
        raise KustomizeError(f"{folder}: unsupported generatorOptions {sorted(unknown_options)}")
    maps = []
    for generator in generators:
        unknown = set(generator) - {"name", "files"}
        if unknown:
            raise KustomizeError(f"{folder}: unsupported configMapGenerator fields {sorted(unknown)}")
        data = {}
        for entry in generator.get("files", []):
            key, _, source = entry.rpartition("=")
            path = _inside(folder, folder / source)
            data[key or path.name] = path.read_text()
        metadata: dict[str, Any] = {"name": generator["name"]}
        if options.get("labels"):
            metadata["labels"] = dict(options["labels"])
        maps.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    return maps


def _apply_patch(folder: Path, patch: dict[str, Any], objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    unknown = set(patch) - {"target", "patch", "path"}
    target = patch.get("target", {})
    if unknown or set(target) - {"kind", "name"} or not target.get("kind") or not target.get("name"):
        raise KustomizeError(f"{folder}: only patches with target.kind and target.name are supported: {patch}")
    if ("patch" in patch) == ("path" in patch):
        raise KustomizeError(f"{folder}: a patch needs exactly one of patch/path")
    text = patch["patch"] if "patch" in patch else _inside(folder, folder / patch["path"]).read_text()
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        raise KustomizeError(f"{folder}: only JSON 6902 patches (a list of operations) are supported")
    matched = False
    result = []
    for obj in objects:
        if obj["kind"] == target["kind"] and obj["metadata"]["name"] == target["name"]:
            matched = True
            obj = copy.deepcopy(obj)
            for operation in operations:
                obj = apply_json6902(obj, operation)
        result.append(obj)
    if not matched:
        raise KustomizeError(f"{folder}: patch target {target} matches no object")
    return result


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer must start with '/': {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _child(container: Any, key: str, path: str) -> Any:
    if isinstance(container, list):
        if not key.isdigit() or int(key) >= len(container):
            raise KustomizeError(f"{path}: index {key!r} out of range")
        return container[int(key)]
    if isinstance(container, dict):
        if key not in container:
            raise KustomizeError(f"{path}: no member {key!r}")
        return container[key]
    raise KustomizeError(f"{path}: cannot descend into a scalar")


def apply_json6902(document: Any, operation: dict[str, Any]) -> Any:
    """Apply one RFC 6902 operation (add, remove, replace, test) in place and return the document."""
    op, path = operation.get("op"), operation.get("path", "")
    if op not in PATCH_OPS:
        raise KustomizeError(f"unsupported JSON 6902 op {op!r}")
    parts = _pointer(path)
    parent = document
    for key in parts[:-1]:
        parent = _child(parent, key, path)
    last = parts[-1]
    if op == "test":
        if _child(parent, last, path) != operation["value"]:
            raise KustomizeError(f"{path}: test failed, expected {operation['value']!r}")
    elif op == "remove":
        _child(parent, last, path)
        del parent[int(last) if isinstance(parent, list) else last]
    elif op == "replace":
        _child(parent, last, path)
        parent[int(last) if isinstance(parent, list) else last] = copy.deepcopy(operation["value"])
    elif isinstance(parent, list):  # add into a list
        index = len(parent) if last == "-" else int(last)
        if index > len(parent):
            raise KustomizeError(f"{path}: index out of range")
        parent.insert(index, copy.deepcopy(operation["value"]))
    elif isinstance(parent, dict):  # add to an object (creates or replaces the member)
        parent[last] = copy.deepcopy(operation["value"])
    else:
        raise KustomizeError(f"{path}: cannot add into a scalar")
    return document


def _check_unique(folder: Path, objects: list[dict[str, Any]]) -> None:
    seen = set()
    for obj in objects:
        key = (obj["apiVersion"].split("/")[0], obj["kind"], obj["metadata"]["name"])
        if key in seen:
            raise KustomizeError(f"{folder}: duplicate object {key}")
        seen.add(key)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m deploy.kubernetes.kustomize <kustomization folder>", file=sys.stderr)
        return 2
    yaml.safe_dump_all(render(args[0]), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
