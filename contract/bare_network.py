"""A bare network (`tritonfleet export torch`) as a one-network pipeline: its exported models, and its tensors' roles
when the export was told them (`--input-roles` / `--output-roles`, written to the config parameter `tensor_roles`), so
the load tools address its token ids and mask by role like any pipeline's, never by their names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tritonfleet.contract.model_config import ServedModel
from tritonfleet.contract.pipeline import ModelBinding, Pipeline, Purpose, Role, Tensor

# "IDS=TOKEN_IDS,MASK=ATTENTION_MASK,EMBEDDING=EMBEDDING" (served names), written by the export of a bare network.
TENSOR_ROLES_PARAMETER = "tensor_roles"


def network_pipeline(
    name: str, models: Mapping[str, tuple[Sequence[str], Sequence[str]]], roles: Mapping[str, Role] | None = None
) -> Pipeline:
    """A bare network (`tritonfleet export torch`) as a one-network pipeline, built from the exported signature:
    {model: (served input names, served output names)} per exported format; tensors have the roles `roles` gives
    them (served name -> Role), else INPUT and OUTPUT. No workload or request builder (the samples are the user's)."""
    roles = roles or {}

    def tensors(names: Sequence[str], default: Role) -> tuple[Tensor, ...]:
        return tuple(Tensor(tensor, roles.get(tensor, default)) for tensor in names)

    bindings = tuple(
        ModelBinding(model, (Purpose.NETWORK,), tensors(inputs, Role.INPUT), tensors(outputs, Role.OUTPUT))
        for model, (inputs, outputs) in models.items()
    )
    return Pipeline(name, f"the bare network {name}", (), bindings)


def format_tensor_roles(roles: Mapping[str, Role]) -> str:
    """The `tensor_roles` config parameter: "NAME=ROLE,..." in the given order."""
    return ",".join(f"{name}={role.value}" for name, role in roles.items())


def parse_tensor_roles(text: str) -> dict[str, Role]:
    """Inverse of `format_tensor_roles`; ValueError naming a bad entry or role."""
    roles = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, separator, role = entry.partition("=")
        if not separator or not name or role not in Role.__members__:
            choices = ", ".join(Role.__members__)
            raise ValueError(f"tensor role {entry!r}: expected NAME=ROLE with ROLE one of {choices}")
        roles[name] = Role[role]
    return roles


def declared_network(served: ServedModel) -> Pipeline | None:
    """The one-network pipeline a served config declares itself (its `tensor_roles` parameter, written by the export
    of a bare network), or None when it declares none."""
    text = served.parameters.get(TENSOR_ROLES_PARAMETER, "").strip()
    if not text:
        return None
    names = ([spec.name for spec in served.inputs], [spec.name for spec in served.outputs])
    return network_pipeline(served.name, {served.name: names}, parse_tensor_roles(text))
