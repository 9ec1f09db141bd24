"""The service a user would otherwise write by hand: FastAPI + eager PyTorch + a thread pool (benchmark baseline d).

One model replica per device, requests assigned round-robin, each replica runs on one pool thread (so a replica
never runs two batches at once), a batch endpoint of at most 64 sequences, JSON in and out. No cross-request
batching: that is exactly what Triton's dynamic batcher adds.

    TRITONFLEET_BASELINE_SIZE=8M TRITONFLEET_BASELINE_DEVICES=auto \
        uvicorn loadtest.handwritten_service:app --host 127.0.0.1 --port 8080

POST /embed {"sequences": ["MKT...", ...]} -> {"embeddings": [[...D floats...], ...]}
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field

from tritonfleet.loadtest.devices import select_devices

MAX_SEQUENCES_PER_REQUEST = 64


class EmbedRequest(BaseModel):
    """The batch endpoint's body: 1 to 64 protein sequences."""

    sequences: list[str] = Field(min_length=1, max_length=MAX_SEQUENCES_PER_REQUEST)


@dataclass
class Replica:
    """One eager model on one device."""

    device: str
    model: object
    precision: str = "fp32"

    def embed(self, sequences: list[str]) -> np.ndarray:
        import torch

        from tritonfleet.contract.esm2_tokens import encode_batch

        input_ids, attention_mask = encode_batch(sequences)
        with torch.inference_mode():
            ids = torch.from_numpy(input_ids).to(self.device)
            mask = torch.from_numpy(attention_mask).to(self.device)
            embedding, _ = self.model(ids, mask)
        return embedding.float().cpu().numpy()


def build_replicas(size: str, devices: list[str], precision: str = "fp32") -> list[Replica]:
    import torch

    from tritonfleet.export.esm2.model import build_esm2

    replicas = []
    for device in devices:
        dtype = torch.float16 if precision == "fp16" and device.startswith("cuda") else torch.float32
        model = build_esm2(random_init=size, dtype=dtype).to(device)
        replicas.append(Replica(device, model, "fp16" if dtype == torch.float16 else "fp32"))
    return replicas


class RoundRobin:
    """Thread-safe round-robin over replicas."""

    def __init__(self, replicas: list[Replica]) -> None:
        if not replicas:
            raise ValueError("at least one replica is required")
        self._cycle = itertools.cycle(replicas)
        self._lock = threading.Lock()

    def next(self) -> Replica:
        with self._lock:
            return next(self._cycle)


def create_app(size: str = "8M", devices_spec: str = "auto", precision: str = "fp32", threads: int = 0):
    import torch
    from fastapi import FastAPI, HTTPException

    if threads > 0:
        torch.set_num_threads(threads)
    devices = select_devices(devices_spec)
    replicas = build_replicas(size, devices, precision)
    router = RoundRobin(replicas)
    # One worker per replica: with round-robin assignment each replica then runs one batch at a time.
    executors = {id(replica): ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"replica-{replica.device}")
                 for replica in replicas}  # fmt: skip
    app = FastAPI(title="hand-written ESM-2 embedding service (baseline)")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "devices": devices, "precision": precision}

    @app.post("/embed")
    async def embed(request: EmbedRequest) -> dict:
        replica = router.next()
        loop = asyncio.get_running_loop()
        try:
            embeddings = await loop.run_in_executor(executors[id(replica)], replica.embed, request.sequences)
        except ValueError as error:  # the tokenizer's InvalidSequenceError is a ValueError
            raise HTTPException(status_code=400, detail=str(error)) from error
        return {"embeddings": embeddings.tolist()}

    return app


def _app_from_environment():
    return create_app(
        size=os.environ.get("TRITONFLEET_BASELINE_SIZE", "8M"),
        devices_spec=os.environ.get("TRITONFLEET_BASELINE_DEVICES", "auto"),
        precision=os.environ.get("TRITONFLEET_BASELINE_PRECISION", "fp32"),
        threads=int(os.environ.get("TRITONFLEET_BASELINE_THREADS", "0")),
    )


def __getattr__(name: str):
    # `uvicorn loadtest.handwritten_service:app` builds the app on first access, not on import.
    if name == "app":
        app = _app_from_environment()
        globals()["app"] = app
        return app
    raise AttributeError(name)
