"""The export core every model goes through: eager module + samples -> signature -> ONNX/TorchScript -> parity.

`describe_network` runs the module eagerly on its samples and infers the signature (export.signature);
`export_network` writes each format to `<output>/<model>/1/`, atomically, and checks it against eager PyTorch.
Configs are built by the caller (export.generic for any model, export.esm2.repository for the ESM-2 pipeline) with
export.model_config.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonfleet.export.model_config import MODEL_FILENAMES, Format
from tritonfleet.export.onnx_export import OPSET, OnnxExporter
from tritonfleet.export.parity import (
    INVARIANT_PRECISIONS,
    SIMILARITY_GATES,
    InvarianceCase,
    ParityCase,
    as_outputs,
    check_invariance,
    check_parity,
    check_similarity,
    eager_runner,
    row_invariance_cases,
)
from tritonfleet.export.signature import (
    ExportError,
    Sample,
    Signature,
    as_tensors,
    infer_signature,
    normalize_samples,
    trace_example,
)

logger = logging.getLogger(__name__)

MODEL_VERSION = "1"
# fp32/fp16: the module as it is; int8: int8 linear layers (ONNX: per-row activation scales, batch invariant);
# bf16: CPU autocast (TorchScript only).
PRECISIONS = ("fp32", "fp16", "int8", "bf16")
# Formats whose int8 scales activations per tensor (over the whole batch): their int8 outputs depend on the batch.
# A repository-wide int8 ships them in fp32 (engine_precisions); asked for explicitly, the invariance gate refuses it.
PER_TENSOR_INT8_FORMATS = frozenset({"torchscript"})
# Batches the invariance figure of a precision that is never invariant (bf16, fp16) is measured on.
REPORTED_INVARIANCE_CASES = 2
# A precision for every format, or one per format ({"onnx": "int8", "torchscript": "fp32"}).
PrecisionSpec = str | Mapping[str, str]


def engine_precisions(precision: PrecisionSpec, formats: Sequence[str]) -> dict[str, str]:
    """The precision of each format: a mapping as given (formats it leaves out: fp32), or one precision for all,
    except that "int8" keeps the formats without a batch-invariant int8 (TorchScript) in fp32."""
    if not isinstance(precision, str):
        unknown = sorted(set(precision) - set(formats))
        if unknown:
            raise ExportError(f"precision given for {', '.join(unknown)}, not among the formats {', '.join(formats)}")
        chosen = {fmt: precision.get(fmt, "fp32") for fmt in formats}
    else:
        chosen = {fmt: precision for fmt in formats}
        if precision == "int8":
            chosen.update({fmt: "fp32" for fmt in formats if fmt in PER_TENSOR_INT8_FORMATS})
    bad = sorted({value for value in chosen.values() if value not in PRECISIONS})
    if bad:
        raise ExportError(f"precision {', '.join(bad)}: choose one of {', '.join(PRECISIONS)}")
    return chosen


def describe_precisions(precisions: Mapping[str, str]) -> str:
    """ "int8" when every format has it, else "onnx=int8,torchscript=fp32"."""
    values = set(precisions.values())
    if len(values) == 1:
        return values.pop()
    return ",".join(f"{fmt}={value}" for fmt, value in precisions.items())


# Builds an ONNX graph of the module itself (e.g. ESM-2's fused attention) instead of torch.onnx:
# builder(module, path, data_location=<file name for external weights>).
OnnxBuilder = Callable[..., Any]


@dataclass
class ExportReport:
    """What an export did, for the CLI summary and tests."""

    output: Path
    signature: Signature | None = None
    precision: str = "fp32"
    configs: list[Path] = field(default_factory=list)
    artifacts: list[Path] = field(default_factory=list)
    parity: dict[str, float] = field(default_factory=dict)
    similarity: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    # per format: its precision, its max abs difference alone vs in a batch, and whether it is batch invariant
    # (fp32/int8 passed the invariance gate; bf16/fp16 never are): a response cache may serve only invariant ones.
    precisions: dict[str, str] = field(default_factory=dict)
    invariance: dict[str, float] = field(default_factory=dict)
    batch_invariant: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class Network:
    """An eager module (CPU, eval mode), its samples as numpy and the signature inferred from them."""

    module: Any  # torch.nn.Module
    samples: tuple[Sample, ...]
    signature: Signature

    @property
    def example(self) -> Sample:
        """The inputs the exporters trace with."""
        return trace_example(self.signature.inputs, self.samples)


def describe_network(
    module: Any,
    samples: Sequence[Any],
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> Network:
    """Runs `module` eagerly on every sample and infers its signature.

    Args:
        module: a `torch.nn.Module`; it is moved to the CPU and put in eval mode.
        samples: input tuples (a single tensor per sample is allowed) of different shapes; the leading axis is the
            batch, other axes whose size varies across samples become dynamic.
        input_names, output_names: tensor names (default INPUT0.. / OUTPUT0..).
    """
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ExportError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if module.training:
        logger.info("putting the module in eval mode (Triton serves inference)")
    module = module.cpu().eval()
    normalized = normalize_samples(samples)
    results = []
    with torch.no_grad():
        for index, sample in enumerate(normalized):
            try:
                result = module(*(torch.from_numpy(array) for array in sample))
            except Exception as error:
                raise ExportError(f"the eager forward fails on sample {index}: {_first_line(error)}") from error
            results.append(as_tensors(as_outputs(result), f"on sample {index}, forward", "output"))
    signature = infer_signature(normalized, results, input_names, output_names)
    if len(normalized) == 1:
        logger.warning("one sample: only the batch axis is dynamic (give samples of other shapes for more)")
    logger.info("signature: %s", signature.describe())
    return Network(module, tuple(normalized), signature)


def _first_line(error: BaseException) -> str:
    """`Type: first line` of the innermost cause (exporters wrap the error that names the problem)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else 'no message'}"


def output_path(output: Path, model: str, filename: str) -> Path:
    """`<output>/<model>/<version>/<filename>`, its directory created."""
    path = output / model / MODEL_VERSION / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def export_network(
    network: Network,
    output: Path,
    models: Mapping[Format, str],
    report: ExportReport,
    parity_cases: Sequence[ParityCase] = (),
    onnx_exporter: OnnxExporter = "dynamo",
    max_dynamic_size: int | None = None,
    precision: PrecisionSpec = "fp32",
    onnx_builder: OnnxBuilder | None = None,
    invariance_cases: Sequence[InvarianceCase] | None = None,
) -> None:
    """Exports the network in every format of `models` ({format: model name}) and checks it on `parity_cases`:
    fp32/fp16 against eager within the dtype's tolerance, int8/bf16 with the similarity gate (export.parity); then
    batch invariance on `invariance_cases` (default: each row of the parity cases alone), enforced for fp32 and int8.
    `precision` is one for every format or a mapping per format (`engine_precisions`).

    Each file is written next to its final name and moved there only when every format has passed, so a failure
    leaves the repository as it was (model directories this call created are removed again).

    Raises:
        ExportError: a format cannot be exported (names the format, the exporter and the original error) or
            disagrees with eager PyTorch (ParityError, with the figures).
    """
    report.signature = network.signature
    precisions = engine_precisions(precision, list(models))
    report.precision = precision if isinstance(precision, str) else describe_precisions(precisions)
    report.precisions.update(precisions)
    for fmt, chosen in precisions.items():
        if isinstance(precision, str) and chosen != precision:
            logger.warning(
                "%s: its int8 (dynamic quantization) scales activations per tensor, so outputs would depend on the "
                "batch: exported in %s (ask for it explicitly with a per-format precision to see the gate refuse it)",
                fmt,
                chosen,
            )
    if invariance_cases is None:
        invariance_cases = row_invariance_cases(parity_cases)
    created = [output / model for model in models.values() if not (output / model).exists()]
    staged: list[tuple[Path, Path]] = []
    try:
        for fmt, model in models.items():
            path = output_path(output, model, MODEL_FILENAMES[fmt])
            staged.append((path.with_name(path.name + ".tmp"), path))
            _export_format(
                network,
                fmt,
                staged[-1][0],
                report,
                parity_cases,
                onnx_exporter,
                max_dynamic_size,
                precisions[fmt],
                onnx_builder,
                invariance_cases,
            )
    except BaseException:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
        for directory in created:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    for temporary, path in staged:
        os.replace(temporary, path)
        report.artifacts.append(path)


def _export_format(
    network: Network,
    fmt: Format,
    path: Path,
    report: ExportReport,
    parity_cases: Sequence[ParityCase],
    onnx_exporter: OnnxExporter,
    max_dynamic_size: int | None,
    precision: str,
    onnx_builder: OnnxBuilder | None,
    invariance_cases: Sequence[InvarianceCase],
) -> None:
    from tritonfleet.export.onnx_export import onnx_runner
    from tritonfleet.export.torchscript import export_torchscript, torchscript_runner

    if fmt == "onnx" and precision == "bf16":
        raise ExportError(
            "onnx: ONNX Runtime's CPU provider has no bfloat16 arithmetic; export bf16 with --formats torchscript"
        )
    started = time.perf_counter()
    # torch.export prints the partial graph of a failed export to stderr: kept for --verbose, not the user's screen
    exporter_output = io.StringIO()
    exporter = "torch.jit.trace"
    if fmt == "onnx":
        exporter = "graph builder" if onnx_builder is not None else f"{onnx_exporter} torch.onnx exporter"
    try:
        with contextlib.redirect_stderr(exporter_output):
            if fmt == "onnx":
                _write_onnx(network, path, onnx_exporter, max_dynamic_size, precision, onnx_builder)
            else:
                export_torchscript(network.module, network.example, network.samples, path, precision)
    except Exception as error:
        logger.debug("%s exporter output:\n%s", fmt, exporter_output.getvalue())
        if isinstance(error, ExportError):
            raise ExportError(f"{fmt} export ({exporter}): {error}") from error
        raise ExportError(f"{fmt} export failed ({exporter}): {_first_line(error)}; {_EXPORT_HINTS[fmt]}") from error
    report.seconds[f"{fmt}_export"] = time.perf_counter() - started
    if not parity_cases:
        logger.warning("parity check for %s skipped (no parity samples)", fmt)
        return
    started = time.perf_counter()
    candidate = onnx_runner(path) if fmt == "onnx" else torchscript_runner(path)
    reference, outputs = eager_runner(network.module), network.signature.outputs
    if precision in SIMILARITY_GATES:
        gate = check_similarity(f"{precision} {fmt}", reference, candidate, parity_cases, outputs)
        report.similarity[fmt] = gate.min_cosine
    else:
        report.parity[fmt] = check_parity(fmt, reference, candidate, parity_cases, outputs).worst
    report.seconds[f"{fmt}_parity"] = time.perf_counter() - started
    if not invariance_cases:
        logger.warning("batch invariance check for %s skipped (no batch of several samples)", fmt)
        return
    started = time.perf_counter()
    enforced = precision in INVARIANT_PRECISIONS
    # bf16/fp16 are never invariant: a figure from a couple of batches is enough (fp16 runs slowly on the CPU)
    cases = invariance_cases if enforced else invariance_cases[:REPORTED_INVARIANCE_CASES]
    invariance = check_invariance(f"{precision} {fmt}", candidate, cases, outputs, enforced=enforced)
    report.invariance[fmt] = invariance.worst
    report.batch_invariant[fmt] = enforced and invariance.invariant
    report.seconds[f"{fmt}_invariance"] = time.perf_counter() - started


def _write_onnx(
    network: Network,
    path: Path,
    onnx_exporter: OnnxExporter,
    max_dynamic_size: int | None,
    precision: str,
    onnx_builder: OnnxBuilder | None,
) -> None:
    """Writes the fp32 graph (the builder's or torch.onnx's), quantized when int8."""
    from tritonfleet.export.onnx_export import export_onnx

    data_location = MODEL_FILENAMES["onnx"] + ".data"  # weights over ~1.8 GB, beside the final model.onnx
    graph_path = path if precision != "int8" else path.with_name(path.name + ".fp32")
    if onnx_builder is not None:
        # the fp32 intermediate of an int8 export keeps its external weights apart, removed with it
        fp32_data = data_location if precision != "int8" else graph_path.name + ".data"
        onnx_builder(network.module, graph_path, data_location=fp32_data)
    else:
        export_onnx(
            network.module, network.signature, network.example, graph_path, onnx_exporter, OPSET, max_dynamic_size
        )
    if precision == "int8":
        from tritonfleet.export.quantize import quantize_onnx_int8

        try:
            quantize_onnx_int8(graph_path, path, data_location=data_location)
        finally:
            graph_path.unlink(missing_ok=True)
            graph_path.with_name(graph_path.name + ".data").unlink(missing_ok=True)


_EXPORT_HINTS: dict[str, str] = {
    "onnx": "try --onnx-exporter legacy, or --formats torchscript",
    "torchscript": "make forward traceable (tensor inputs and outputs, no data-dependent Python control flow), "
    "or use --formats onnx",
}
