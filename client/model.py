"""What the client needs to know about a served ESM-2 model, read from the server (never hard-coded).

`ModelSpec.from_config` turns the model's configuration (Triton's JSON answer, read through the shared contract,
`tritonfleet.contract.model_config`) into the served tensor names (TorchScript models carry `__<index>` suffixes),
the feed kind (the `esm2` ensemble takes sequences, the raw variants token ids), the `max_batch_size` and the
hidden size D.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tritonfleet.client.errors import UnsupportedModelError
from tritonfleet.contract.model_config import ModelConfig, ServedModel, config_from_json

Feed = Literal["sequences", "tokens"]
OutputKind = Literal["EMBEDDING", "RESIDUE_EMBEDDINGS"]

_INDEX_SUFFIX = re.compile(r"__\d+$")


def logical_tensor_name(served_name: str) -> str:
    """The contract name of a served tensor: `INPUT_IDS__0` -> `INPUT_IDS`, `EMBEDDING` -> `EMBEDDING`."""
    return _INDEX_SUFFIX.sub("", served_name)


@dataclass(frozen=True)
class ModelSpec:
    """A served model as the client uses it.

    Attributes:
        name: model name.
        version: requested version ("" = the server's choice).
        feed: "sequences" (BYTES `SEQUENCE`) or "tokens" (INT64 `INPUT_IDS` + `ATTENTION_MASK`).
        inputs: contract name -> served name.
        outputs: contract name -> served name.
        max_batch_size: from the model config; requests are split to this size.
        embedding_dim: D, the last dimension of the `EMBEDDING` output.
        execution_token_budget: the config parameter `execution_token_budget` (sequences x padded length one
            execution may hold; requests are split to respect it), None when the model does not set it.
        parameters: the config's `parameters` as strings (precision, pipeline, ...).
    """

    name: str
    version: str
    feed: Feed
    inputs: dict[str, str]
    outputs: dict[str, str]
    max_batch_size: int
    embedding_dim: int
    execution_token_budget: int | None = None
    parameters: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | ModelConfig, version: str = "") -> ModelSpec:
        """The spec from a model config: `get_model_config`'s answer (HTTP JSON or gRPC `as_json`) or a message.

        Raises:
            UnsupportedModelError: the model does not follow the ESM-2 tensor contract (docs/design.md).
        """
        served = ServedModel.from_config(config if isinstance(config, ModelConfig) else config_from_json(config))
        name = served.name or "?"
        inputs = {logical_tensor_name(spec.name): spec.name for spec in served.inputs}
        outputs = {logical_tensor_name(spec.name): spec.name for spec in served.outputs}
        if "SEQUENCE" in inputs:
            feed: Feed = "sequences"
        elif {"INPUT_IDS", "ATTENTION_MASK"} <= inputs.keys():
            feed = "tokens"
        else:
            raise UnsupportedModelError(
                f"model {name!r} has inputs {sorted(inputs.values())}; expected SEQUENCE (ensemble) or "
                "INPUT_IDS + ATTENTION_MASK (raw variant), see docs/design.md"
            )
        if "EMBEDDING" not in outputs:
            raise UnsupportedModelError(f"model {name!r} has no EMBEDDING output (outputs: {sorted(outputs.values())})")
        if not served.batched:
            raise UnsupportedModelError(
                f"model {name!r} has max_batch_size {served.max_batch_size}; the ESM-2 contract needs a batching model"
            )
        embedding_dims = served.output(outputs["EMBEDDING"]).dims
        if len(embedding_dims) != 1 or embedding_dims[0] < 1:
            raise UnsupportedModelError(f"model {name!r}: EMBEDDING has dims {list(embedding_dims)}, expected [D]")
        budget_text = served.parameters.get("execution_token_budget", "").strip()
        try:
            budget = int(budget_text) if budget_text else None
        except ValueError:
            raise UnsupportedModelError(
                f"model {name!r}: parameter execution_token_budget must be an integer, got {budget_text!r}"
            ) from None
        if budget is not None and budget < 1:
            raise UnsupportedModelError(f"model {name!r}: execution_token_budget must be >= 1, got {budget}")
        return cls(
            name,
            version,
            feed,
            inputs,
            outputs,
            served.max_batch_size,
            embedding_dims[0],
            budget,
            dict(served.parameters),
        )

    def output_name(self, kind: OutputKind) -> str:
        """The served name of an output, or UnsupportedModelError if the model lacks it."""
        try:
            return self.outputs[kind]
        except KeyError:
            raise UnsupportedModelError(f"model {self.name!r} has no {kind} output") from None

    def describe(self) -> str:
        version = self.version or "latest"
        return (
            f"{self.name} (version {version}, feed {self.feed}, "
            f"max_batch_size {self.max_batch_size}, D {self.embedding_dim}"
            + (f", execution_token_budget {self.execution_token_budget}" if self.execution_token_budget else "")
            + ")"
        )


# Config parameters of an entry model (export/esm2/repository.py) naming where `embed()` requests of each traffic class
# go: EMBEDDING-only ensembles, safe for Triton's response cache (its key ignores the requested outputs).
ENTRY_MODEL_PARAMETERS: dict[tuple[str, str], str] = {
    ("interactive", "EMBEDDING"): "interactive_embedding_model",
    ("bulk", "EMBEDDING"): "embedding_model",
}


def entry_model_name(spec: ModelSpec, priority: str, kind: OutputKind) -> str:
    """The model a request of this priority class and output goes to: the one `spec`'s config advertises for the
    pair, else `spec`'s own model (per-residue requests, raw networks, repositories without entry models)."""
    parameter = ENTRY_MODEL_PARAMETERS.get((priority, kind))
    name = spec.parameters.get(parameter, "").strip() if parameter else ""
    return name or spec.name
