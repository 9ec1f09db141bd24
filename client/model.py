"""What the client needs to know about a served ESM-2 model, read from the server (never hard-coded).

`ModelSpec.from_server_answers` turns model metadata + config into the served tensor names (TorchScript models
carry `__<index>` suffixes), the feed kind (the `esm2` ensemble takes sequences, the raw variants token ids), the
`max_batch_size` and the hidden size D.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from tritonfleet.client.errors import UnsupportedModelError

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
        embedding_dim: D, from the `EMBEDDING` output shape.
    """

    name: str
    version: str
    feed: Feed
    inputs: dict[str, str]
    outputs: dict[str, str]
    max_batch_size: int
    embedding_dim: int

    @classmethod
    def from_server_answers(cls, metadata: dict[str, Any], config: dict[str, Any], version: str = "") -> ModelSpec:
        """Builds the spec from `get_model_metadata` and `get_model_config` answers (HTTP or gRPC-as-JSON)."""
        name = str(metadata.get("name", config.get("name", "?")))
        config = config.get("config", config)  # gRPC as_json wraps the config
        inputs = {logical_tensor_name(t["name"]): t["name"] for t in metadata.get("inputs", [])}
        outputs = {logical_tensor_name(t["name"]): t["name"] for t in metadata.get("outputs", [])}
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
        max_batch_size = int(config.get("max_batch_size", 0))
        if max_batch_size < 1:
            raise UnsupportedModelError(
                f"model {name!r} has max_batch_size {max_batch_size}; the ESM-2 contract needs a batching model"
            )
        embedding_meta = next(t for t in metadata["outputs"] if t["name"] == outputs["EMBEDDING"])
        embedding_dim = int(embedding_meta["shape"][-1])
        return cls(name, version, feed, inputs, outputs, max_batch_size, embedding_dim)

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
            f"max_batch_size {self.max_batch_size}, D {self.embedding_dim})"
        )
