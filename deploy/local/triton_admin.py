"""The calls the supervisor makes to Triton (health, repository index, served configs, load/unload, probe
inferences), over `tritonclient.http`.

Each call opens a client and closes it again. tritonclient.http is gevent-based, so a client must stay in the thread
that made it, and the supervisor calls from its scan and probe threads and from whoever asks `is_ready()`; a closed
connection also never holds up Triton's shutdown, which waits for open keep-alive connections.
"""

from __future__ import annotations

import contextlib
import http.client
import json
from collections.abc import Iterator, Sequence

import numpy as np
import tritonclient.http as httpclient
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from tritonfleet.contract.model_config import config_from_json, config_to_json

ModelVersion = tuple[str, str]


class TritonCallError(RuntimeError):
    """A call to Triton failed; `status` is the HTTP status Triton answered (None: no answer, e.g. a timeout)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TritonAdmin:
    """One tritonserver's HTTP endpoint (`host:port`, a scheme is dropped); `timeout_s` bounds each call unless a
    call names its own."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url.split("://", 1)[-1]
        self.timeout_s = timeout_s

    def is_ready(self) -> bool:
        """Triton's `/v2/health/ready` (False when it does not answer)."""
        try:
            with self._client() as client:
                return client.is_server_ready()
        except TritonCallError:
            return False

    def is_live(self) -> bool:
        try:
            with self._client() as client:
                return client.is_server_live()
        except TritonCallError:
            return False

    def ready_versions(self) -> set[ModelVersion]:
        """(model, version) of every READY model version in the repository index."""
        with self._client() as client:
            index = client.get_model_repository_index()
        return {(entry["name"], str(entry.get("version", ""))) for entry in index if entry.get("state") == "READY"}

    def served_config(self, model: str, version: str = "") -> mc.ModelConfig | None:
        """The config Triton serves the model (version) with; None when it has none (not loaded, unknown)."""
        try:
            with self._client() as client:
                return config_from_json(client.get_model_config(model, version))
        except TritonCallError:
            return None

    def unload(self, model: str) -> None:
        with self._client() as client:
            client.unload_model(model)

    def load(self, model: str, config: mc.ModelConfig | None = None, timeout_s: float | None = None) -> None:
        """Load `model`, with `config` as an override of its config.pbtxt when given."""
        override = None if config is None else json.dumps(config_to_json(config))
        with self._client(timeout_s) as client:
            client.load_model(model, config=override)

    def infer(self, model: str, inputs: Sequence[tuple[str, str, np.ndarray]], timeout_s: float) -> None:
        """One inference with (name, API data type, array) inputs; the outputs are not needed, only that it ran."""
        tensors = []
        for name, datatype, array in inputs:
            tensor = httpclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array, binary_data=False)
            tensors.append(tensor)
        with self._client(timeout_s) as client:
            client.infer(model, tensors)

    @contextlib.contextmanager
    def _client(self, timeout_s: float | None = None) -> Iterator[httpclient.InferenceServerClient]:
        timeout = timeout_s or self.timeout_s
        try:
            client = httpclient.InferenceServerClient(self.url, connection_timeout=timeout, network_timeout=timeout)
        except InferenceServerException as error:
            raise TritonCallError(f"bad Triton address {self.url!r}: {error.message()}") from error
        try:
            yield client
        except InferenceServerException as error:
            status = error.status()
            raise TritonCallError(
                error.message() or str(error), int(status) if status and status.isdigit() else None
            ) from error
        except (OSError, http.client.HTTPException) as error:  # refused, reset, timed out, cut off: no answer
            raise TritonCallError(f"no answer from {self.url} ({error!r}; timeout {timeout}s)") from error
        finally:
            client.close()
