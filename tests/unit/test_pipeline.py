"""The pipeline protocol (tritonfleet.contract.pipeline) and ESM-2 as its first plugin: registry, role lookup, the
declaration against the configs the export builds, request building. No server, no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tritonfleet.contract.bare_network import network_pipeline, parse_tensor_roles
from tritonfleet.contract.esm2.pipeline import ESM2, NETWORK_MODELS, interactive_network
from tritonfleet.contract.esm2_tokens import encode_batch
from tritonfleet.contract.model_config import ServedModel, model_configs
from tritonfleet.contract.pipeline import (
    ENTRY_POINT_GROUP,
    Pipeline,
    Purpose,
    Role,
    Tensor,
    get_pipeline,
    pipeline_for,
    pipelines,
    register_pipeline,
    roles_of,
)
from tritonfleet.contract.tensors import TensorSpec
from tritonfleet.export.devices import plan_devices
from tritonfleet.export.esm2.recipe import Esm2Recipe
from tritonfleet.export.esm2.repository import RepositoryOptions, build_configs

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def _served(name: str, inputs: list[tuple[str, str]], outputs: list[tuple[str, str]]) -> ServedModel:
    def specs(entries):
        return tuple(TensorSpec(tensor, dtype, (-1,)) for tensor, dtype in entries)

    return ServedModel(name, "", "", 8, specs(inputs), specs(outputs))


# -- registry ------------------------------------------------------------------------------------------------------


def test_esm2_is_built_in_and_declared_as_an_entry_point():
    assert get_pipeline("esm2") is ESM2 and pipelines()["esm2"] is ESM2
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"][ENTRY_POINT_GROUP]["esm2"] == "tritonfleet.contract.esm2.pipeline:ESM2"


def test_unknown_pipelines_are_named_in_the_error():
    with pytest.raises(KeyError, match="installed: .*esm2"):
        get_pipeline("no-such-pipeline")


def test_a_registered_pipeline_is_found_and_claims_its_own_models():
    text = Pipeline(
        "text-test",
        "a text encoder (test)",
        (Tensor("TEXT", Role.SEQUENCES), Tensor("POOLED", Role.EMBEDDING)),
    )
    register_pipeline(text)
    assert get_pipeline("text-test") is text
    served = _served("encoder", [("TEXT", "object")], [("POOLED", "float32")])
    assert pipeline_for(served) is text
    assert roles_of(served).output(Role.EMBEDDING) == "POOLED"
    assert pipeline_for(_served("esm2", [("SEQUENCE", "object")], [("EMBEDDING", "float32")])) is ESM2


def test_declaring_one_tensor_with_two_roles_is_refused():
    with pytest.raises(ValueError, match="two roles"):
        Pipeline("bad", "", (Tensor("X", Role.TOKEN_IDS), Tensor("X", Role.ATTENTION_MASK)))


def test_the_pipeline_declaration_imports_no_export_stack():
    check = (
        "import sys, tritonfleet.contract.pipeline as p; p.get_pipeline('esm2'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'transformers') "
        "or m.startswith(('tritonfleet.export', 'tritonfleet.loadtest', 'tritonfleet.client'))))"
    )
    completed = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


# -- role lookup ---------------------------------------------------------------------------------------------------


def test_roles_are_looked_up_in_the_declaration_including_torchscript_names():
    torchscript = _served(
        "esm2_torchscript",
        [("INPUT_IDS__0", "int64"), ("ATTENTION_MASK__1", "int64")],
        [("EMBEDDING__0", "float32"), ("RESIDUE_EMBEDDINGS__1", "float32")],
    )
    roles = roles_of(torchscript)
    assert roles.pipeline == "esm2"
    assert (roles.input(Role.TOKEN_IDS), roles.input(Role.ATTENTION_MASK)) == ("INPUT_IDS__0", "ATTENTION_MASK__1")
    assert roles.output(Role.RESIDUE_EMBEDDINGS) == "RESIDUE_EMBEDDINGS__1"
    assert roles.input_names() == {"INPUT_IDS": "INPUT_IDS__0", "ATTENTION_MASK": "ATTENTION_MASK__1"}
    assert not roles.has_input(Role.SEQUENCES)


def test_names_that_merely_look_like_a_role_get_none():
    # The old load tools took any input containing "MASK" for the mask; a declaration knows its names exactly.
    lookalike = _served("m", [("MY_MASK", "int64"), ("IDS", "int64")], [("EMBEDDINGS", "float32")])
    assert pipeline_for(lookalike) is None
    with pytest.raises(KeyError, match="no installed pipeline declares"):
        roles_of(lookalike)
    assert ESM2.tensor_role("INPUT_IDS__5") is None


def test_purposes_and_routes():
    assert ESM2.entry(Purpose.DEFAULT_ENTRY).name == "esm2"
    assert ESM2.entry(Purpose.PER_RESIDUE_ENTRY).name == "esm2"
    assert ESM2.entry(Purpose.INTERACTIVE_ENTRY).name == "esm2_interactive"
    assert ESM2.entry(Purpose.BULK_ENTRY).name == "esm2_embedding"
    assert [model.name for model in ESM2.entries(Purpose.NETWORK)] == ["esm2_onnx", "esm2_torchscript"]
    assert ESM2.route("interactive", Role.EMBEDDING).parameter == "interactive_embedding_model"
    assert ESM2.route("bulk", Role.EMBEDDING).purpose is Purpose.BULK_ENTRY
    assert ESM2.route("interactive", Role.RESIDUE_EMBEDDINGS) is None  # per-residue requests stay on the entry


def test_a_bare_network_is_a_one_network_pipeline():
    bare = network_pipeline("net", {"net_onnx": (["X"], ["Y"]), "net_torchscript": (["X__0"], ["Y__0"])})
    assert [model.name for model in bare.entries(Purpose.NETWORK)] == ["net_onnx", "net_torchscript"]
    roles = bare.roles(_served("net_torchscript", [("X__0", "float32")], [("Y__0", "float32")]))
    assert roles.input(Role.INPUT) == "X__0" and roles.output(Role.OUTPUT) == "Y__0"
    assert parse_tensor_roles("IDS=TOKEN_IDS, MASK=ATTENTION_MASK") == {
        "IDS": Role.TOKEN_IDS,
        "MASK": Role.ATTENTION_MASK,
    }
    with pytest.raises(ValueError, match="NAME=ROLE"):
        parse_tensor_roles("IDS=IDS")


# -- the ESM-2 declaration against the configs the export writes -------------------------------------------------


def _exported_configs(target: str) -> dict[str, ServedModel]:
    options = RepositoryOptions(output=Path("unused"), devices=plan_devices(target))
    return {
        name: ServedModel.from_config(config)
        for name, config in build_configs(Esm2Recipe(random_init="8M"), options).items()
    }


@pytest.mark.parametrize("target", ["none", "0"])
def test_every_exported_model_is_declared_with_exactly_its_config_tensors(target):
    for name, served in _exported_configs(target).items():
        binding = ESM2.model(name)
        assert [tensor.name for tensor in binding.inputs] == [spec.name for spec in served.inputs], name
        assert [tensor.name for tensor in binding.outputs] == [spec.name for spec in served.outputs], name
        roles = ESM2.roles(served)
        assert [tensor.role for tensor in roles.inputs] == [tensor.role for tensor in binding.inputs]


def test_the_committed_repository_matches_the_declaration():
    for name, config in model_configs(ROOT / "model_repository"):
        served = ServedModel.from_config(config)
        assert pipeline_for(served) is ESM2, name
        binding = ESM2.model(name)
        assert {t.name: t.role for t in binding.inputs} == {t.name: t.role for t in ESM2.roles(served).inputs}
        assert {t.name: t.role for t in binding.outputs} == {t.name: t.role for t in ESM2.roles(served).outputs}


def test_network_tensors_follow_the_export_naming():
    from tritonfleet.export.model_config import served_names

    signature = Esm2Recipe(random_init="8M").signature
    for fmt, model in NETWORK_MODELS.items():
        binding = ESM2.model(model)
        assert [t.name for t in binding.inputs] == served_names(signature.inputs, fmt)
        assert [t.name for t in binding.outputs] == served_names(signature.outputs, fmt)
        assert ESM2.model(interactive_network(model)).inputs == binding.inputs


def test_served_code_is_package_data_equal_to_the_committed_copies():
    for model, files in ESM2.served_files().items():
        for filename, served in files.items():
            assert served.read_bytes() == served.path().read_bytes()
            committed = ROOT / "model_repository" / model / "1" / filename
            if filename == "model.py":
                assert committed.read_bytes() == served.read_bytes()


def test_hooks_name_importable_export_functions():
    from tritonfleet.export.esm2 import export_esm2
    from tritonfleet.export.esm2.command import COMMAND

    assert ESM2.hook("configs") is build_configs
    assert ESM2.hook("export") is export_esm2
    assert ESM2.hook("command") is COMMAND


# -- workload and request builder --------------------------------------------------------------------------------


def test_the_workload_is_deterministic_proteins():
    first = ESM2.workload.items(5, "short", seed=3)
    assert first == ESM2.workload.items(5, "short", seed=3)
    assert all(1 <= len(protein) <= 300 and protein.isalpha() for protein in first)


def test_requests_are_built_by_role_for_sequence_and_token_models():
    proteins = ["MKTAYIAKQR", "GSHM"]
    ensemble = ESM2.roles(_served("esm2", [("SEQUENCE", "object")], [("EMBEDDING", "float32")]))
    inputs = ESM2.requests.inputs(ensemble, proteins)
    assert list(inputs) == ["SEQUENCE"] and inputs["SEQUENCE"].shape == (2, 1)
    assert inputs["SEQUENCE"][1, 0] == b"GSHM"
    network = ESM2.roles(
        _served(
            "esm2_torchscript", [("INPUT_IDS__0", "int64"), ("ATTENTION_MASK__1", "int64")], [("EMBEDDING__0", "f4")]
        )
    )
    inputs = ESM2.requests.inputs(network, proteins, buckets=(16, 1024))
    ids, mask = encode_batch(proteins, (16, 1024))
    np.testing.assert_array_equal(inputs["INPUT_IDS__0"], ids)
    np.testing.assert_array_equal(inputs["ATTENTION_MASK__1"], mask)
    answers = {"EMBEDDING__0": np.ones((2, 4), np.float32)}
    assert list(ESM2.requests.results(network, answers)) == [Role.EMBEDDING]
