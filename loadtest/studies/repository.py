"""Exported repositories for studies: export ESM-2 (or any PyTorch factory) into a throwaway folder, or copy an
existing repository there, so a study never writes into the committed `model_repository/`."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def scratch_folder(prefix: str, keep: Path | str | None = None) -> Iterator[Path]:
    """A folder for one study's files: `keep` (created, left in place) or a temporary one removed on exit."""
    if keep is not None:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as temporary:
        yield Path(temporary)


def export_esm2_repository(destination: Path, size: str = "8M", **options: Any) -> Path:
    """ESM-2 with random weights of `size` exported into `destination`; `options` are `export_esm2`'s (precision,
    formats, parity_samples, devices, batching, ...)."""
    from tritonfleet.export.esm2 import export_esm2

    export_esm2(Path(destination), random_init=size, **options)
    return Path(destination)


def export_factory_repository(
    destination: Path,
    factory: str = "examples.my_model:build",
    name: str = "pooler",
    *,
    input_names: tuple[str, ...] | None = None,
    output_names: tuple[str, ...] | None = None,
    **options: Any,
) -> Path:
    """The module of a `MODULE:CALLABLE` factory (as `tritonfleet export torch --factory`) exported into
    `destination`; `options` are `TorchExportOptions` fields (formats, devices, onnx_exporter, parity_samples...)."""
    from tritonfleet.export.factory import call_factory, load_factory
    from tritonfleet.export.generic import TorchExportOptions, export_torch

    module, samples = call_factory(load_factory(factory), factory)
    export_options = TorchExportOptions(
        name=name, output=Path(destination), input_names=input_names, output_names=output_names, **options
    )
    export_torch(module, samples, export_options)
    return Path(destination)


def copy_repository(source: Path, destination: Path) -> Path:
    """A copy of `source` (without caches) at `destination`, to serve or edit without touching the original."""
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__"))
    return destination


@contextlib.contextmanager
def exported_repository(
    prefix: str = "tritonfleet-study-", *, size: str = "8M", keep: Path | str | None = None, **options: Any
) -> Iterator[Path]:
    """An ESM-2 repository exported into a throwaway folder (`keep`: a folder that stays), removed on exit.

    Example:
        with exported_repository(formats=("onnx",), parity_samples=0) as repository, serve(repository) as server:
            ...
    """
    with scratch_folder(prefix, keep) as folder:
        yield export_esm2_repository(folder / "repository", size, **options)


def exported_precision(repository: Path, model: str | None = None) -> str:
    """The precision an export chose for `model` (default: ESM-2's ONNX network; its config's `precision`
    parameter): what "auto" became."""
    from tritonfleet.contract.esm2.pipeline import ONNX_MODEL
    from tritonfleet.contract.model_config import CONFIG_FILENAME, read_config

    model = model or ONNX_MODEL
    return read_config(Path(repository) / model / CONFIG_FILENAME).parameters["precision"].string_value
