"""Locate the tritonserver runtime shipped in the `nvidia-pytriton` wheel and assemble a backend directory.

The wheel carries `tritonserver` (2.51 = release 24.10), its shared libraries, `libtriton_python.so` and one python
backend stub per interpreter version, but no ONNX Runtime or LibTorch backend. Triton's "Python-based backend"
feature fills that gap: when `libtriton_<name>.so` is absent, `<backend-dir>/<name>/model.py` serves models whose
platform maps to backend `<name>`, so the production repository loads unchanged.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

PYTHON_BASED_BACKENDS_DIR = Path(__file__).resolve().parent / "backends"
# Our Python-based backends; each is a folder with model.py importing `tritonfleet.deploy.local.backends`.
PYTHON_BASED_BACKENDS = ("onnxruntime", "pytorch")


class RuntimeNotFoundError(RuntimeError):
    """The tritonserver runtime (from the nvidia-pytriton wheel) is not installed or incomplete."""


@dataclass(frozen=True)
class TritonRuntime:
    """Paths of the tritonserver runtime inside the installed `nvidia-pytriton` wheel."""

    server_binary: Path
    libraries_dir: Path
    python_backend_dir: Path
    python_stub: Path

    @classmethod
    def discover(cls) -> TritonRuntime:
        """Find the runtime for the running interpreter, with a clear error naming what is missing."""
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeNotFoundError(
                "the 'nvidia-pytriton' package is not installed; run `make setup` (it ships the tritonserver binary)"
            )
        package_dir = Path(next(iter(spec.submodule_search_locations)))
        server_dir = package_dir / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        runtime = cls(
            server_binary=server_dir / "bin" / "tritonserver",
            libraries_dir=package_dir.parent / "nvidia_pytriton.libs",
            python_backend_dir=server_dir / "backends" / "python",
            python_stub=server_dir / "python_backend_stubs" / version / "triton_python_backend_stub",
        )
        for path in (runtime.server_binary, runtime.libraries_dir, runtime.python_backend_dir, runtime.python_stub):
            if not path.exists():
                raise RuntimeNotFoundError(f"incomplete tritonserver runtime: {path} is missing (Python {version})")
        return runtime

    def library_path(self) -> str:
        """LD_LIBRARY_PATH for the server and the stub.

        The running interpreter's own libpython comes first so the stub embeds the same Python as this
        virtualenv (the stub links `libpython3.X.so.1.0`, which would otherwise resolve to the system one).
        """
        entries = [sysconfig.get_config_var("LIBDIR"), str(self.libraries_dir)]
        return ":".join(entry for entry in entries if entry)

    def assemble_backend_directory(self, destination: Path) -> Path:
        """Build `<destination>/{python,onnxruntime,pytorch}` as Triton's --backend-directory.

        `python/` holds libtriton_python.so, the utils and the stub of this interpreter; each Python-based backend
        gets its model.py (Triton looks for the stub next to it first, then falls back to `python/`).
        """
        destination.mkdir(parents=True, exist_ok=True)
        python_dir = destination / "python"
        python_dir.mkdir(exist_ok=True)
        for source in (
            self.python_backend_dir / "libtriton_python.so",
            self.python_backend_dir / "triton_python_backend_utils.py",
            self.python_stub,
        ):
            _copy(source, python_dir / source.name)
        for backend in PYTHON_BASED_BACKENDS:
            backend_dir = destination / backend
            backend_dir.mkdir(exist_ok=True)
            _copy(PYTHON_BASED_BACKENDS_DIR / backend / "model.py", backend_dir / "model.py")
        return destination


def _copy(source: Path, target: Path) -> None:
    # Copies, not symlinks: Triton resolves a backend library's real path and refuses one outside --backend-directory.
    if target.exists() or target.is_symlink():
        target.unlink()
    shutil.copy2(source, target)
