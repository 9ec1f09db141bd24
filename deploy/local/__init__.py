"""Local Triton without containers: the PyPI tritonserver plus our Python-based `onnxruntime`/`pytorch` backends."""

from tritonfleet.deploy.local.runtime import RuntimeNotFoundError, TritonRuntime
from tritonfleet.deploy.local.server import (
    LocalTritonServer,
    PortInUseError,
    ServerOptions,
    TritonStartError,
    local_server,
)

__all__ = [
    "LocalTritonServer",
    "PortInUseError",
    "RuntimeNotFoundError",
    "ServerOptions",
    "TritonRuntime",
    "TritonStartError",
    "local_server",
]
