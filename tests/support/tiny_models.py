"""Tiny ONNX and TorchScript models with Triton configs, for tests of the local runtime (no ESM-2 needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

FEATURES = 4
OUTPUT0_WIDTH = 3


class TinyNet(torch.nn.Module):
    """Two inputs, two outputs: enough to exercise names, order, batching and dtypes."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.linear = torch.nn.Linear(FEATURES, OUTPUT0_WIDTH)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(OUTPUT0_WIDTH, FEATURES, generator=generator))
            self.linear.bias.copy_(torch.randn(OUTPUT0_WIDTH, generator=generator))

    def forward(self, input0: torch.Tensor, input1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.linear(input0 + input1), (input0 * input1).sum(-1, keepdim=True)


@dataclass(frozen=True)
class TinyModelNames:
    inputs: tuple[str, str]
    outputs: tuple[str, str]


ONNX_NAMES = TinyModelNames(("INPUT0", "INPUT1"), ("OUTPUT0", "OUTPUT1"))
TORCHSCRIPT_NAMES = TinyModelNames(("INPUT0__0", "INPUT1__1"), ("OUTPUT0__0", "OUTPUT1__1"))


def tiny_config(
    name: str,
    platform: str,
    names: TinyModelNames,
    max_batch_size: int = 16,
    dynamic_batching: bool = True,
    instance_kind: int = mc.ModelInstanceGroup.KIND_CPU,
    input_dtype: int = mc.TYPE_FP32,
    input_dims: tuple[int, ...] = (FEATURES,),
) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, platform=platform, max_batch_size=max_batch_size)
    for input_name in names.inputs:
        config.input.add(name=input_name, data_type=input_dtype, dims=list(input_dims))
    config.output.add(name=names.outputs[0], data_type=mc.TYPE_FP32, dims=[OUTPUT0_WIDTH])
    config.output.add(name=names.outputs[1], data_type=mc.TYPE_FP32, dims=[1])
    config.instance_group.add(kind=instance_kind, count=1)
    if dynamic_batching:
        config.dynamic_batching.max_queue_delay_microseconds = 20000
    return config


def write_model(repository: Path, config: mc.ModelConfig, artifact: Path | None = None) -> Path:
    """Write `<repository>/<name>/config.pbtxt` (text_format) and move the artifact into version 1."""
    model_dir = repository / config.name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
    if artifact is not None:
        filename = "model.onnx" if config.platform == "onnxruntime_onnx" else "model.pt"
        artifact.replace(model_dir / "1" / filename)
    return model_dir


def export_tiny_onnx(path: Path) -> Path:
    model = TinyNet().eval()
    example = (torch.randn(2, FEATURES), torch.randn(2, FEATURES))
    torch.onnx.export(
        model,
        example,
        str(path),
        input_names=list(ONNX_NAMES.inputs),
        output_names=list(ONNX_NAMES.outputs),
        dynamic_axes={name: {0: "batch"} for name in ONNX_NAMES.inputs + ONNX_NAMES.outputs},
        opset_version=17,
        dynamo=False,
    )
    return path


def export_tiny_torchscript(path: Path) -> Path:
    torch.jit.script(TinyNet().eval()).save(str(path))
    return path


def build_tiny_repository(repository: Path) -> Path:
    """`tiny_onnx` and `tiny_torchscript`, both dynamically batched on CPU."""
    repository.mkdir(parents=True, exist_ok=True)
    write_model(
        repository,
        tiny_config("tiny_onnx", "onnxruntime_onnx", ONNX_NAMES),
        export_tiny_onnx(repository / "tiny.onnx"),
    )
    write_model(
        repository,
        tiny_config("tiny_torchscript", "pytorch_libtorch", TORCHSCRIPT_NAMES),
        export_tiny_torchscript(repository / "tiny.pt"),
    )
    return repository


VOCABULARY = 10
EMBEDDING_WIDTH = 2


class TinyEmbedding(torch.nn.Module):
    """Token ids -> mean embedding; an out-of-range id makes the engine fail, as a bad request would."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.table = torch.nn.Parameter(torch.randn(VOCABULARY, EMBEDDING_WIDTH, generator=generator))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(ids, self.table).mean(dim=1)


def build_tiny_embedding_onnx(repository: Path, name: str = "tiny_embedding") -> Path:
    path = repository / f"{name}.onnx"
    torch.onnx.export(
        TinyEmbedding().eval(),
        (torch.zeros(2, 5, dtype=torch.int64),),
        str(path),
        input_names=["IDS"],
        output_names=["MEAN"],
        dynamic_axes={"IDS": {0: "batch", 1: "length"}, "MEAN": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return write_model(repository, _embedding_config(name, "onnxruntime_onnx", "IDS", "MEAN"), path)


def build_tiny_embedding_torchscript(repository: Path, name: str = "tiny_embedding_torchscript") -> Path:
    path = repository / f"{name}.pt"
    torch.jit.script(TinyEmbedding().eval()).save(str(path))
    return write_model(repository, _embedding_config(name, "pytorch_libtorch", "IDS__0", "MEAN__0"), path)


def _embedding_config(name: str, platform: str, input_name: str, output_name: str) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, platform=platform, max_batch_size=16)
    config.input.add(name=input_name, data_type=mc.TYPE_INT64, dims=[-1])
    config.output.add(name=output_name, data_type=mc.TYPE_FP32, dims=[EMBEDDING_WIDTH])
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    config.dynamic_batching.max_queue_delay_microseconds = 200000
    return config
