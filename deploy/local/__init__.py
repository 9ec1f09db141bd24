"""Local Triton without containers: the PyPI tritonserver plus our Python-based `onnxruntime`/`pytorch` backends."""

from deploy.local.runtime import RuntimeNotFoundError, TritonRuntime
from deploy.local.server import LocalTritonServer, PortInUseError, ServerOptions, TritonStartError

__all__ = [
    "LocalTritonServer",
    "PortInUseError",
    "RuntimeNotFoundError",
    "ServerOptions",
    "TritonRuntime",
    "TritonStartError",
]
