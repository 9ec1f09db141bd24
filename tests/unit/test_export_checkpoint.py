"""`--checkpoint` with a local directory written by `save_pretrained` (the layout of the facebook/esm2_* repos)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import EsmForMaskedLM

from tritonfleet.contract.esm2.pipeline import ONNX_MODEL
from tritonfleet.contract.esm2_tokens import encode_batch
from tritonfleet.contract.model_config import CONFIG_FILENAME, read_config
from tritonfleet.export.__main__ import main
from tritonfleet.export.esm2.model import build_esm2, esm2_config
from tritonfleet.export.esm2.recipe import Esm2Recipe


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A masked-LM checkpoint (what the hub holds: weights under `esm.`, plus the LM head) with random weights."""
    directory = tmp_path_factory.mktemp("esm2_checkpoint") / "esm2_t6_8M_local"
    torch.manual_seed(123)
    model = EsmForMaskedLM(esm2_config("8M")).eval()
    model.save_pretrained(directory)
    return directory, model


def test_loaded_wrapper_reproduces_the_checkpoint_hidden_states(checkpoint):
    directory, masked_lm = checkpoint
    wrapper = build_esm2(checkpoint=directory)
    input_ids, attention_mask = (torch.from_numpy(array) for array in encode_batch(["MKTAYIAKQR", "ACDEFGHIKLMNPQ"]))
    with torch.no_grad():
        hidden = masked_lm.esm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        embedding, residues = wrapper(input_ids, attention_mask)
    mask = attention_mask.unsqueeze(-1).float()
    np.testing.assert_allclose(residues.numpy(), (hidden * mask).numpy(), atol=1e-5)
    residue_positions = [slice(1, 11), slice(1, 15)]
    for row, positions in enumerate(residue_positions):
        np.testing.assert_allclose(embedding[row].numpy(), hidden[row, positions].mean(0).numpy(), atol=1e-5)


def test_wrapper_differs_from_an_unrelated_random_init(checkpoint):
    directory, _ = checkpoint
    loaded = build_esm2(checkpoint=directory).state_dict()
    random = build_esm2(random_init="8M", seed=0).state_dict()
    assert any(not torch.equal(loaded[key], random[key]) for key in loaded)


def test_recipe_and_configs_describe_the_checkpoint_without_its_path(checkpoint, tmp_path):
    directory, _ = checkpoint
    recipe = Esm2Recipe(checkpoint=str(directory))
    assert recipe.hidden_size == 320 and not recipe.is_random
    assert recipe.weights_source == f"checkpoint {directory.name}"
    assert (
        main(["esm2", "--checkpoint", str(directory), "--gpus", "none", "--output", str(tmp_path), "--configs-only"])
        == 0
    )
    config = read_config(tmp_path / ONNX_MODEL / CONFIG_FILENAME)
    assert config.parameters["weights_source"].string_value == f"checkpoint {directory.name}"
    assert str(directory.parent) not in (tmp_path / ONNX_MODEL / CONFIG_FILENAME).read_text()
