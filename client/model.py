"""What the client needs to know about a served model, read from the server and its pipeline (never guessed).

`ModelSpec.from_config` turns the model's configuration (Triton's JSON answer, read through the shared contract,
`tritonfleet.contract.model_config`) into its tensors by role, as the pipeline declaring them says
(`tritonfleet.contract.pipeline`; TorchScript models serve `__<index>` names, declared too), the feed kind (the
`esm2` ensemble takes sequences, the raw variants token ids), the `max_batch_size` and the hidden size D. Which
entry model a traffic class goes to is the pipeline's routing (`entry_model_name`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tritonfleet.client.errors import UnsupportedModelError
from tritonfleet.contract.model_config import ModelConfig, ServedModel, config_from_json
from tritonfleet.contract.pipeline import ModelRoles, Pipeline, Purpose, Role, get_pipeline, pipeline_for, pipelines

Feed = Literal["sequences", "tokens"]
OutputKind = Literal["EMBEDDING", "RESIDUE_EMBEDDINGS"]


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
        pipeline: the name of the pipeline declaring the model's tensors.
        roles: the model's tensors by role.
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
    pipeline: str = ""
    roles: ModelRoles | None = field(default=None, compare=False)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | ModelConfig, version: str = "") -> ModelSpec:
        """The spec from a model config: `get_model_config`'s answer (HTTP JSON or gRPC `as_json`) or a message.

        Raises:
            UnsupportedModelError: the model does not follow the ESM-2 tensor contract (docs/design.md).
        """
        served = ServedModel.from_config(config if isinstance(config, ModelConfig) else config_from_json(config))
        name = served.name or "?"
        pipeline = pipeline_for(served)
        if pipeline is None:
            raise UnsupportedModelError(
                f"model {name!r} has inputs {sorted(spec.name for spec in served.inputs)}; expected {_accepted_feeds()}"
                " (docs/pipelines.md)"
            )
        roles = pipeline.roles(served)
        if roles.has_input(Role.SEQUENCES):
            feed: Feed = "sequences"
        elif roles.has_input(Role.TOKEN_IDS) and roles.has_input(Role.ATTENTION_MASK):
            feed = "tokens"
        else:
            raise UnsupportedModelError(
                f"model {name!r} has inputs {sorted(spec.name for spec in served.inputs)}; expected {_accepted_feeds()}"
            )
        if not roles.has_output(Role.EMBEDDING):
            raise UnsupportedModelError(
                f"model {name!r} has no EMBEDDING output (outputs: {sorted(spec.name for spec in served.outputs)})"
            )
        if not served.batched:
            raise UnsupportedModelError(
                f"model {name!r} has max_batch_size {served.max_batch_size}; the ESM-2 contract needs a batching model"
            )
        embedding_dims = served.output(roles.output(Role.EMBEDDING)).dims
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
            roles.input_names(),
            roles.output_names(),
            served.max_batch_size,
            embedding_dims[0],
            budget,
            dict(served.parameters),
            pipeline.name,
            roles,
        )

    def output_name(self, kind: OutputKind) -> str:
        """The served name of an output (by its role), or UnsupportedModelError if the model lacks it."""
        if self.roles is None or not self.roles.has_output(Role(kind)):
            raise UnsupportedModelError(f"model {self.name!r} has no {kind} output")
        return self.roles.output(Role(kind))

    def input_name(self, role: Role) -> str:
        """The served name of the input of a role, or UnsupportedModelError if the model lacks it."""
        if self.roles is None or not self.roles.has_input(role):
            raise UnsupportedModelError(f"model {self.name!r} has no {role.value} input")
        return self.roles.input(role)

    def pipeline_declaration(self) -> Pipeline:
        return get_pipeline(self.pipeline)

    def describe(self) -> str:
        version = self.version or "latest"
        return (
            f"{self.name} (version {version}, feed {self.feed}, "
            f"max_batch_size {self.max_batch_size}, D {self.embedding_dim}"
            + (f", execution_token_budget {self.execution_token_budget}" if self.execution_token_budget else "")
            + ")"
        )


def _accepted_feeds() -> str:
    """What the installed pipelines' entry and network models take, e.g. "SEQUENCE (esm2 default entry) or
    INPUT_IDS + ATTENTION_MASK (esm2 network)"."""
    feeds = [
        f"{' + '.join(tensor.name for tensor in model.inputs)} ({pipeline.name} {purpose.value})"
        for pipeline in pipelines().values()
        for purpose in (Purpose.DEFAULT_ENTRY, Purpose.NETWORK)
        for model in pipeline.entries(purpose)[:1]
    ]
    return " or ".join(feeds) or "a model of an installed pipeline"


def entry_model_name(spec: ModelSpec, priority: str, kind: OutputKind) -> str:
    """The model a request of this priority class and output goes to: the one `spec`'s config advertises for the
    pair through its pipeline's route (config parameters such as `interactive_embedding_model`: EMBEDDING-only
    ensembles, safe for Triton's response cache), else `spec`'s own model (per-residue requests, raw networks,
    repositories without entry models)."""
    route = get_pipeline(spec.pipeline).route(priority, Role(kind)) if spec.pipeline else None
    name = spec.parameters.get(route.parameter, "").strip() if route else ""
    return name or spec.name
