"""ESM-2 protein embeddings: the eager wrapper (model.py), its recipe (recipe.py) and the served pipeline around the
exported network (repository.py: tokenizer, BLS and ensemble models).

`export_esm2(output, ...)` is the in-process form of `python -m export esm2 ...` for the other stages (demo, tests,
benchmarks); importing this package loads no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tritonfleet.export.esm2.sizes import ESM2_SIZES, RANDOM_INIT_SIZES, Esm2Size

if TYPE_CHECKING:
    from tritonfleet.export.network import ExportReport


def export_esm2(
    output: Path,
    *,
    random_init: str | None = "8M",
    checkpoint: str | None = None,
    seed: int = 0,
    precision: str = "auto",
    onnx_graph: str = "fused",
    gpus: str = "none",
    **options: Any,
) -> ExportReport:
    """Exports the ESM-2 repository into `output` (random weights of `random_init` unless `checkpoint` is given).

    `precision` "auto" is the command line's default (int8 on a CPU plan with VNNI, else fp32; fp32 when int8
    fails its quality gate on these weights); `options` are
    `RepositoryOptions` fields (devices, batching, formats, parity_samples, configs_only, ...).
    """
    from tritonfleet.export.devices import plan_devices
    from tritonfleet.export.esm2.recipe import Esm2Recipe
    from tritonfleet.export.esm2.repository import RepositoryOptions, export_with_precision

    options.setdefault("devices", plan_devices(gpus))
    recipe = Esm2Recipe(
        checkpoint=checkpoint, random_init=None if checkpoint else random_init, seed=seed, onnx_graph=onnx_graph
    )
    return export_with_precision(recipe, RepositoryOptions(output=Path(output), **options), precision)


__all__ = ["ESM2_SIZES", "RANDOM_INIT_SIZES", "Esm2Size", "export_esm2"]
