"""ESM-2 declared as a pipeline (`tritonfleet.contract.pipeline.Pipeline`): its tensors and their roles, its served
models and their purposes, entry routing, the served python models' files, its export hooks, workload and request
builder. Importable with the client install (numpy, protobuf, tritonclient): the export hooks are strings.

The export (export/esm2/repository.py) names its models and tensors from here; the client routes traffic classes
to entry models with `ROUTES`; the load tools build requests by role. tests/unit/test_pipeline.py checks that every
config the export builds has exactly the tensors (and roles) declared here.
"""

from __future__ import annotations

from tritonfleet.contract.esm2.workload import Esm2Requests, Esm2Workload
from tritonfleet.contract.pipeline import ModelBinding, Pipeline, Purpose, Role, Route, ServedCode, ServedFile, Tensor

PIPELINE_NAME = "esm2"

# Served models (docs/design.md draws the repository).
ENSEMBLE_MODEL = "esm2"
TOKENIZER_MODEL = "esm2_tokenizer"
BLS_MODEL = "esm2_bls"
EMBEDDING_MODEL = "esm2_embedding"
INTERACTIVE_MODEL = "esm2_interactive"
ONNX_MODEL = "esm2_onnx"
TORCHSCRIPT_MODEL = "esm2_torchscript"
INTERACTIVE_SUFFIX = "_interactive"
PACKED_SUFFIX = "_packed"  # export/esm2/packed.py: the ONNX network on packed (ragged) batches, GPU plans
NETWORK_MODELS: dict[str, str] = {"onnx": ONNX_MODEL, "torchscript": TORCHSCRIPT_MODEL}

# Config parameters of the default entry (`esm2`) naming the EMBEDDING-only entry of each traffic class.
EMBEDDING_MODEL_PARAMETER = "embedding_model"
INTERACTIVE_EMBEDDING_MODEL_PARAMETER = "interactive_embedding_model"

# Tensors: the names the contract uses (ensembles, ONNX, the tokenizer) ...
SEQUENCE = Tensor("SEQUENCE", Role.SEQUENCES)
INPUT_IDS = Tensor("INPUT_IDS", Role.TOKEN_IDS)
ATTENTION_MASK = Tensor("ATTENTION_MASK", Role.ATTENTION_MASK)
EMBEDDING = Tensor("EMBEDDING", Role.EMBEDDING)
RESIDUE_EMBEDDINGS = Tensor("RESIDUE_EMBEDDINGS", Role.RESIDUE_EMBEDDINGS)
NETWORK_INPUTS = (INPUT_IDS, ATTENTION_MASK)
NETWORK_OUTPUTS = (EMBEDDING, RESIDUE_EMBEDDINGS)


def torchscript_tensors(tensors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """... and as the LibTorch backend serves them: `<NAME>__<index>` by forward position."""
    return tuple(Tensor(f"{tensor.name}__{index}", tensor.role) for index, tensor in enumerate(tensors))


def network_tensors(fmt: str) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """(inputs, outputs) of the network exported in `fmt`."""
    if fmt == "torchscript":
        return torchscript_tensors(NETWORK_INPUTS), torchscript_tensors(NETWORK_OUTPUTS)
    return NETWORK_INPUTS, NETWORK_OUTPUTS


def interactive_network(network: str) -> str:
    """The interactive-only copy of a network: `esm2_onnx` -> `esm2_onnx_interactive`."""
    return network + INTERACTIVE_SUFFIX


def _models() -> tuple[ModelBinding, ...]:
    sequences = (SEQUENCE,)
    models = [
        ModelBinding(ENSEMBLE_MODEL, (Purpose.DEFAULT_ENTRY, Purpose.PER_RESIDUE_ENTRY), sequences, NETWORK_OUTPUTS),
        ModelBinding(INTERACTIVE_MODEL, (Purpose.INTERACTIVE_ENTRY,), sequences, (EMBEDDING,)),
        ModelBinding(EMBEDDING_MODEL, (Purpose.BULK_ENTRY,), sequences, (EMBEDDING,)),
        ModelBinding(BLS_MODEL, (Purpose.ALTERNATIVE_ENTRY,), sequences, NETWORK_OUTPUTS),
        ModelBinding(TOKENIZER_MODEL, (Purpose.PREPROCESSING,), sequences, NETWORK_INPUTS),
    ]
    for fmt, network in NETWORK_MODELS.items():
        inputs, outputs = network_tensors(fmt)
        models.append(ModelBinding(network, (Purpose.NETWORK,), inputs, outputs))
        models.append(ModelBinding(interactive_network(network), (Purpose.INTERACTIVE_NETWORK,), inputs, outputs))
    # Ragged INPUT_IDS in (the sequence ends come as Triton's batch input, not a request tensor), EMBEDDING out.
    models.append(ModelBinding(ONNX_MODEL + PACKED_SUFFIX, (Purpose.PACKED_NETWORK,), (INPUT_IDS,), (EMBEDDING,)))
    return tuple(models)


ROUTES: tuple[Route, ...] = (
    Route("interactive", Role.EMBEDDING, INTERACTIVE_EMBEDDING_MODEL_PARAMETER, Purpose.INTERACTIVE_ENTRY),
    Route("bulk", Role.EMBEDDING, EMBEDDING_MODEL_PARAMETER, Purpose.BULK_ENTRY),
)

# The served python models' code (it imports nothing from tritonfleet: it runs on the stock NGC image), with the
# ESM-2 sequence rules it imports, copied by every export into <model>/1/.
SERVED_PACKAGE = "tritonfleet.export.esm2.served"
_TOKENIZER_CODE = ServedFile(SERVED_PACKAGE, f"{TOKENIZER_MODEL}/model.py")
_TOKENS_CODE = ServedFile("tritonfleet.contract", "esm2_tokens.py")
SERVED_CODE: tuple[ServedCode, ...] = (
    ServedCode(TOKENIZER_MODEL, {"model.py": _TOKENIZER_CODE, "esm2_tokens.py": _TOKENS_CODE}),
    ServedCode(
        BLS_MODEL,
        {
            "model.py": ServedFile(SERVED_PACKAGE, f"{BLS_MODEL}/model.py"),
            "esm2_tokenizer_model.py": _TOKENIZER_CODE,
            "esm2_tokens.py": _TOKENS_CODE,
        },
    ),
)

ESM2 = Pipeline(
    name=PIPELINE_NAME,
    description="ESM-2 protein embeddings: sequences -> pooled and per-residue embeddings",
    tensors=(SEQUENCE, *NETWORK_INPUTS, *NETWORK_OUTPUTS),
    models=_models(),
    routes=ROUTES,
    served_code=SERVED_CODE,
    configs_hook="tritonfleet.export.esm2.repository:build_configs",
    export_hook="tritonfleet.export.esm2:export_esm2",
    command_hook="tritonfleet.export.esm2.command:COMMAND",
    workload=Esm2Workload(),
    requests=Esm2Requests(),
)
