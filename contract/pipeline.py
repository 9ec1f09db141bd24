"""What a pipeline must provide, declared in one place, and the registry the stages ask for pipelines.

A pipeline is a served network plus the models around it (preprocessing, entry ensembles, BLS). Its declaration
(`Pipeline`) names, without torch and without reading a repository:

- its tensor roles: every tensor name it serves, tagged with a `Role` (the load tools, the client and the export
  look tensors up by role, never by guessing from a name);
- its served models (`ModelBinding`): each model's name, purposes (default / interactive / bulk / per-residue entry,
  network, ...) and tensors; `routes` say which config parameter of the default entry names the model a traffic
  class goes to;
- its served python models as package data (`ServedCode`: importlib.resources locations, copied by the export);
- how its configs are built and its repository exported (`configs_hook`, `export_hook`: "module:function" strings
  imported on use, so the export's torch stays out of a client install) and its `tritonfleet export <name>`
  subcommand (`command_hook`: an `ExportCommand`);
- its workload (`Workload`: sample items for load tests and benchmarks) and request builder (`RequestBuilder`:
  items -> named numpy inputs of a served model, answers -> results by role).

Like PyTriton's `bind(inputs=[Tensor(...)], outputs=[...], config=ModelConfig(...))`, tensors are declared with
what they mean; like Model Navigator's per-framework `api/`, each pipeline is one plugin package. Plugins register
through the `tritonfleet.pipelines` entry-point group (value: a `Pipeline` or a callable returning one); ESM-2 is
built in (`tritonfleet.contract.esm2.pipeline`). docs/pipelines.md says what a second pipeline adds.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tritonfleet.contract.model_config import ServedModel

ENTRY_POINT_GROUP = "tritonfleet.pipelines"
# Pipelines of this package, found without entry points (an editable checkout whose metadata predates them).
BUILT_IN_PIPELINES: dict[str, str] = {"esm2": "tritonfleet.contract.esm2.pipeline:ESM2"}


class Role(str, enum.Enum):
    """What a tensor carries. Values are stable strings (reports, JSON)."""

    SEQUENCES = "SEQUENCES"  # BYTES [N, 1]: one raw item (e.g. a protein sequence) per row
    TOKEN_IDS = "TOKEN_IDS"  # INT [N, T]: token ids padded to a width
    ATTENTION_MASK = "ATTENTION_MASK"  # INT [N, T]: 1 for real tokens, 0 for padding
    EMBEDDING = "EMBEDDING"  # [N, D]: one pooled vector per item
    RESIDUE_EMBEDDINGS = "RESIDUE_EMBEDDINGS"  # [N, T, D]: one vector per token
    INPUT = "INPUT"  # an input of a bare network with no pipeline meaning (export torch)
    OUTPUT = "OUTPUT"  # an output of a bare network with no pipeline meaning


class Purpose(str, enum.Enum):
    """Why a served model exists."""

    DEFAULT_ENTRY = "default entry"  # what a client calls by default (all outputs)
    INTERACTIVE_ENTRY = "interactive entry"  # interactive traffic's pooled outputs
    BULK_ENTRY = "bulk entry"  # bulk / cached pooled outputs
    PER_RESIDUE_ENTRY = "per-residue entry"  # per-token outputs
    ALTERNATIVE_ENTRY = "alternative entry"  # the same answers by another route (e.g. BLS instead of an ensemble)
    PREPROCESSING = "preprocessing"  # e.g. the tokenizer
    NETWORK = "network"  # the exported network (one per format)
    INTERACTIVE_NETWORK = "interactive network"  # a copy of the network only interactive traffic reaches
    PACKED_NETWORK = "packed network"  # the network on packed (ragged, unpadded) batches


@dataclass(frozen=True)
class Tensor:
    """One tensor a pipeline serves: its name as served and its role (PyTriton's `Tensor`, with a role)."""

    name: str
    role: Role


@dataclass(frozen=True)
class ModelBinding:
    """One served model of a pipeline: name, purposes and its tensors as served (in config order)."""

    name: str
    purposes: tuple[Purpose, ...]
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    def serves(self, purpose: Purpose) -> bool:
        return purpose in self.purposes


@dataclass(frozen=True)
class Route:
    """Where requests of one traffic class asking for one output go: the model named by `parameter` in the default
    entry's config (absent or empty: the default entry itself)."""

    traffic: str  # a priority class: "interactive" or "bulk"
    output: Role
    parameter: str
    purpose: Purpose


@dataclass(frozen=True)
class ServedFile:
    """A file of a served python model, located as package data (works from a wheel and from a checkout)."""

    package: str
    resource: str  # '/'-separated path inside the package

    def read_bytes(self) -> bytes:
        return resources.files(self.package).joinpath(self.resource).read_bytes()

    def path(self) -> Path:
        """The file on disk (packages are installed unzipped)."""
        return package_path(self.package).joinpath(*self.resource.split("/"))


def package_path(package: str) -> Path:
    """The folder of an installed package, regular or namespace (a folder of package data without __init__.py)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"no package {package!r}")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class ServedCode:
    """The files the export copies into `<model>/1/`: {file name there: package data}."""

    model: str
    files: Mapping[str, ServedFile]


class Workload(Protocol):
    """Sample items for load tests and benchmarks (deterministic for a seed)."""

    def items(self, count: int, mix: str = ..., seed: int = ...) -> list[Any]: ...


class RequestBuilder(Protocol):
    """Items -> the named numpy inputs of one served model; its answers -> results by role."""

    def inputs(self, model: ModelRoles, items: Sequence[Any], **options: Any) -> dict[str, np.ndarray]: ...

    def results(self, model: ModelRoles, answers: Mapping[str, np.ndarray]) -> dict[Role, np.ndarray]: ...


class ExportCommand(Protocol):
    """A pipeline's `tritonfleet export <name>` subcommand: its own arguments, then a run with the export's shared
    serving options (output, target, batching, formats, parity) already parsed; returns the export's report."""

    summary: str  # one line in `tritonfleet export --help`
    description: str
    parity_default: int | None
    parity_help: str

    def add_arguments(self, parser: Any) -> None: ...

    def run(self, args: Any, serving: Any) -> Any: ...


@dataclass(frozen=True)
class RoleTensor:
    """A served model's tensor with its role: `name` as served, `declared` the pipeline's name for it."""

    name: str
    declared: str
    role: Role


@dataclass(frozen=True)
class ModelRoles:
    """A served model's tensors by role (from the pipeline's declaration, matched to the model's config)."""

    model: str
    pipeline: str
    inputs: tuple[RoleTensor, ...]
    outputs: tuple[RoleTensor, ...]

    def has_input(self, role: Role) -> bool:
        return any(tensor.role is role for tensor in self.inputs)

    def has_output(self, role: Role) -> bool:
        return any(tensor.role is role for tensor in self.outputs)

    def input(self, role: Role) -> str:
        """The served name of the model's one input of this role (KeyError naming the model otherwise)."""
        return _one(self.inputs, role, f"model {self.model!r} has no input of role {role.value}")

    def output(self, role: Role) -> str:
        return _one(self.outputs, role, f"model {self.model!r} has no output of role {role.value}")

    def input_names(self) -> dict[str, str]:
        """{declared name: served name} of the inputs."""
        return {tensor.declared: tensor.name for tensor in self.inputs}

    def output_names(self) -> dict[str, str]:
        return {tensor.declared: tensor.name for tensor in self.outputs}


def _one(tensors: tuple[RoleTensor, ...], role: Role, message: str) -> str:
    names = [tensor.name for tensor in tensors if tensor.role is role]
    if len(names) != 1:
        raise KeyError(message if not names else f"{message}: several ({', '.join(names)})")
    return names[0]


@dataclass(frozen=True)
class Pipeline:
    """A pipeline's declaration (see the module docstring). Needs numpy, protobuf and tritonclient only.

    Attributes:
        name: registry name (e.g. "esm2").
        description: one line for `--help` and reports.
        tensors: every tensor name the pipeline serves with its role; a format that renames tensors (TorchScript:
            `<NAME>__<index>`) is declared with the served names too, so lookups are exact.
        models: the served models.
        routes: entry routing by traffic class and output.
        served_code: the served python models' files (package data).
        configs_hook: "module:function" building the configs {model: ModelConfig} (export side, no torch).
        export_hook: "module:function" exporting a repository (export side; may import torch).
        command_hook: "module:attribute" of its `ExportCommand` (the `tritonfleet export <name>` subcommand).
        workload: sample items.
        requests: request builder.
    """

    name: str
    description: str
    tensors: tuple[Tensor, ...]
    models: tuple[ModelBinding, ...] = ()
    routes: tuple[Route, ...] = ()
    served_code: tuple[ServedCode, ...] = ()
    configs_hook: str = ""
    export_hook: str = ""
    command_hook: str = ""
    workload: Workload | None = None
    requests: RequestBuilder | None = None
    _roles: Mapping[str, Role] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        roles: dict[str, Role] = {}
        for tensor in (
            *self.tensors,
            *(tensor for model in self.models for tensor in (*model.inputs, *model.outputs)),
        ):
            if roles.setdefault(tensor.name, tensor.role) is not tensor.role:
                raise ValueError(f"pipeline {self.name!r}: tensor {tensor.name!r} has two roles")
        names = [model.name for model in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"pipeline {self.name!r}: a model is declared twice")
        object.__setattr__(self, "_roles", roles)

    def tensor_role(self, name: str) -> Role | None:
        """The declared role of a served tensor name (exact lookup), None when the pipeline does not serve it."""
        return self._roles.get(name)

    def model(self, name: str) -> ModelBinding:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(f"pipeline {self.name!r} declares no model {name!r} ({', '.join(m.name for m in self.models)})")

    def entries(self, purpose: Purpose) -> list[ModelBinding]:
        """The declared models serving a purpose, in declaration order."""
        return [model for model in self.models if model.serves(purpose)]

    def entry(self, purpose: Purpose) -> ModelBinding:
        """The first model serving a purpose."""
        found = self.entries(purpose)
        if not found:
            raise KeyError(f"pipeline {self.name!r} has no {purpose.value} model")
        return found[0]

    def route(self, traffic: str, output: Role) -> Route | None:
        return next((r for r in self.routes if r.traffic == traffic and r.output is output), None)

    def describes(self, served: ServedModel) -> bool:
        """Whether every tensor of a served model (a config) is one this pipeline declares."""
        return all(self.tensor_role(spec.name) is not None for spec in (*served.inputs, *served.outputs))

    def roles(self, served: ServedModel) -> ModelRoles:
        """The served model's tensors by role; KeyError naming the tensors the pipeline does not declare."""
        unknown = [spec.name for spec in (*served.inputs, *served.outputs) if self.tensor_role(spec.name) is None]
        if unknown:
            raise KeyError(f"pipeline {self.name!r} declares no tensor {', '.join(unknown)} (model {served.name!r})")
        return ModelRoles(
            served.name,
            self.name,
            tuple(self._role_tensor(spec.name) for spec in served.inputs),
            tuple(self._role_tensor(spec.name) for spec in served.outputs),
        )

    def _role_tensor(self, name: str) -> RoleTensor:
        """A served tensor with its role; its declared name is itself when `tensors` lists it, else the `tensors`
        entry of its role (a format's renaming: TorchScript's `INPUT_IDS__0` is `INPUT_IDS`)."""
        role = self._roles[name]
        if role in (Role.INPUT, Role.OUTPUT) or any(tensor.name == name for tensor in self.tensors):
            return RoleTensor(name, name, role)
        return RoleTensor(name, next((t.name for t in self.tensors if t.role is role), name), role)

    def served_files(self) -> dict[str, dict[str, ServedFile]]:
        """{model: {file name in <model>/1/: package data}}."""
        return {code.model: dict(code.files) for code in self.served_code}

    def hook(self, which: str) -> Callable[..., Any]:
        """The `configs_hook`, `export_hook` or `command_hook` object, imported now (the export's dependencies load
        here)."""
        target = {"configs": self.configs_hook, "export": self.export_hook, "command": self.command_hook}[which]
        if not target:
            raise LookupError(f"pipeline {self.name!r} has no {which} hook")
        return load_object(target)


def load_object(target: str) -> Any:
    """The object a "module:attribute" string names."""
    module_name, _, attribute = target.partition(":")
    value: Any = importlib.import_module(module_name)
    for part in attribute.split(".") if attribute else ():
        value = getattr(value, part)
    return value


# -- registry ------------------------------------------------------------------------------------------------------

_REGISTERED: dict[str, Pipeline] = {}


def register_pipeline(pipeline: Pipeline) -> None:
    """Adds a pipeline in-process (tests, notebooks); a plugin package uses the entry-point group instead."""
    _REGISTERED[pipeline.name] = pipeline


def _as_pipeline(value: Any, source: str) -> Pipeline:
    value = value() if callable(value) and not isinstance(value, Pipeline) else value
    if not isinstance(value, Pipeline):
        raise TypeError(f"{source} is not a tritonfleet Pipeline (got {type(value).__name__})")
    return value


@cache
def _installed() -> tuple[Pipeline, ...]:
    found = {name: _as_pipeline(load_object(target), target) for name, target in BUILT_IN_PIPELINES.items()}
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name not in found:
            found[entry_point.name] = _as_pipeline(entry_point.load(), f"entry point {entry_point.value}")
    return tuple(found.values())


def pipelines() -> dict[str, Pipeline]:
    """Every pipeline: built in, installed through the `tritonfleet.pipelines` entry points, registered here."""
    return {**{pipeline.name: pipeline for pipeline in _installed()}, **_REGISTERED}


def get_pipeline(name: str) -> Pipeline:
    known = pipelines()
    if name not in known:
        raise KeyError(f"no pipeline {name!r}; installed: {', '.join(sorted(known))}")
    return known[name]


def pipeline_for(served: ServedModel) -> Pipeline | None:
    """The pipeline a served model belongs to: one declaring the model by name, else the first whose declared
    tensors cover every tensor of the model (a renamed copy of a declared model), else the bare network its config
    declares (`tensor_roles`); None when none does."""
    candidates = list(pipelines().values())
    for pipeline in candidates:
        if any(model.name == served.name for model in pipeline.models) and pipeline.describes(served):
            return pipeline
    found = next((pipeline for pipeline in candidates if pipeline.describes(served)), None)
    if found is not None:
        return found
    from tritonfleet.contract.bare_network import declared_network  # it builds on this module

    return declared_network(served)


def roles_of(served: ServedModel) -> ModelRoles:
    """The served model's tensors by role, from the pipeline it belongs to; KeyError when no pipeline declares them."""
    pipeline = pipeline_for(served)
    if pipeline is None:
        names = ", ".join(spec.name for spec in (*served.inputs, *served.outputs))
        raise KeyError(f"no installed pipeline declares the tensors of model {served.name!r} ({names})")
    return pipeline.roles(served)
