"""The files of an ESM-2 repository besides its configs and weights: the served python models' code (package data,
located by the pipeline declaration), warmup inputs, the ensembles' empty version directories, and the interactive
network copy's hard links to the target network's weights. All deterministic."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path
from typing import Any

from tritonfleet.contract.esm2.pipeline import (
    EMBEDDING_MODEL,
    ENSEMBLE_MODEL,
    ESM2,
    INTERACTIVE_MODEL,
    NETWORK_MODELS,
    SERVED_PACKAGE,
    TOKENIZER_MODEL,
    interactive_network,
)
from tritonfleet.contract.esm2_tokens import encode_batch
from tritonfleet.contract.pipeline import package_path
from tritonfleet.export.model_config import WARMUP_DIRNAME
from tritonfleet.export.network import MODEL_VERSION

# The served python models' code ships as package data (export/esm2/served/<model>/model.py; it imports nothing
# from tritonfleet, as it runs on the stock NGC image), located by the pipeline declaration (importlib.resources);
# every export copies it to <model>/1/, with the ESM-2 sequence rules it imports (tritonfleet.contract.esm2_tokens).
# The committed model_repository/ holds byte-equal copies.
SERVED_SOURCES = package_path(SERVED_PACKAGE)
SERVED_CODE: dict[str, dict[str, Path]] = {
    model: {name: served.path() for name, served in files.items()} for model, files in ESM2.served_files().items()
}

# Human ubiquitin (UniProt P0CG48, first 76 residues): a real protein for warmup requests.
WARMUP_PROTEIN = "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG"
# (token length, batch size) of the warmup samples of the exported networks.
NETWORK_WARMUPS: tuple[tuple[int, int], ...] = ((128, 1), (384, 8))


def link_interactive_weights(output: Path, options: Any) -> list[Path]:
    """The interactive network copy's version directory: hard links to the target network's files (a copy where
    links are impossible), so the repository holds the weights once. Nothing when the target has no weights yet."""
    if not options.devices.interactive_instances:
        return []
    target = NETWORK_MODELS[options.ensemble_target]
    source_dir = output / target / MODEL_VERSION
    target_dir = output / interactive_network(target) / MODEL_VERSION
    written = []
    for source in sorted(source_dir.glob("*")) if source_dir.is_dir() else []:
        if not source.is_file():
            continue
        destination = target_dir / source.name
        destination.parent.mkdir(parents=True, exist_ok=True)
        temporary = destination.with_name(destination.name + ".tmp")
        temporary.unlink(missing_ok=True)
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)
        os.replace(temporary, destination)
        written.append(destination)
    return written


def _write_bytes_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def write_support_files(output: Path, options: Any) -> list[Path]:
    """Tokenizer code copies, warmup input files and the ensemble's empty version directory (all deterministic)."""
    written = []
    ensembles = [ENSEMBLE_MODEL, EMBEDDING_MODEL] + (
        [INTERACTIVE_MODEL] if options.devices.interactive_instances else []
    )
    for ensemble in ensembles:  # Triton needs a version dir, even for an ensemble
        (output / ensemble / MODEL_VERSION).mkdir(parents=True, exist_ok=True)
    for model, sources in SERVED_CODE.items():
        version_dir = output / model / MODEL_VERSION
        for target_name, source in sources.items():
            target = version_dir / target_name
            if target.exists() and target.read_bytes() == source.read_bytes():
                continue  # already current (the committed copies in the canonical repository stay untouched)
            _write_bytes_atomically(target, source.read_bytes())
            written.append(target)
    sequence = WARMUP_PROTEIN.encode("ascii")
    tokenizer_warmup = output / TOKENIZER_MODEL / WARMUP_DIRNAME / "sequence"
    _write_bytes_atomically(tokenizer_warmup, struct.pack("<I", len(sequence)) + sequence)  # BYTES wire format
    written.append(tokenizer_warmup)
    networks = [NETWORK_MODELS[fmt] for fmt in options.formats]
    if options.devices.interactive_instances:
        networks.append(interactive_network(NETWORK_MODELS[options.ensemble_target]))
    for model in networks:
        for tokens, _ in NETWORK_WARMUPS:
            repeats = (tokens - 2) // len(WARMUP_PROTEIN) + 1
            protein = (WARMUP_PROTEIN * repeats)[: tokens - 2 - tokens // 8]  # leave some padding
            input_ids, attention_mask = encode_batch([protein], buckets=(tokens,))
            for base, array in (("input_ids", input_ids), ("attention_mask", attention_mask)):
                path = output / model / WARMUP_DIRNAME / f"{base}_{tokens}"
                _write_bytes_atomically(path, array[0].astype("<i8").tobytes())
                written.append(path)
    return written
