"""Loads a user's model factory `MODULE:CALLABLE` (e.g. `my_model:build`) and checks what it returns.

`CALLABLE()` returns `(module, samples)`: a `torch.nn.Module` and a non-empty list of samples, each a tuple of input
tensors (or one tensor). MODULE is imported like `python -m` would, with the current directory on the path.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from tritonfleet.export.signature import ExportError


def load_factory(spec: str) -> Callable[[], Any]:
    """The callable named by `MODULE:CALLABLE` (CALLABLE may be dotted: `pkg.models:Net.build`)."""
    module_name, separator, attribute_path = spec.partition(":")
    if not separator or not module_name or not attribute_path:
        raise ExportError(f"--factory must look like MODULE:CALLABLE (e.g. my_model:build), got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name or module_name.startswith(f"{error.name}."):
            raise ExportError(
                f"module {module_name!r} not found: run from the directory that holds {module_name.split('.')[0]}.py "
                "or add it to PYTHONPATH"
            ) from None
        raise ExportError(f"importing {module_name!r} failed: ModuleNotFoundError: {error}") from error
    except Exception as error:
        raise ExportError(f"importing {module_name!r} failed: {type(error).__name__}: {error}") from error
    target: Any = module
    for part in attribute_path.split("."):
        if not hasattr(target, part):
            public = sorted(name for name in vars(target) if not name.startswith("_"))
            raise ExportError(
                f"{getattr(target, '__name__', module_name)!r} has no attribute {part!r} "
                f"(it has: {', '.join(public[:12]) or 'nothing public'})"
            )
        target = getattr(target, part)
    if not callable(target):
        raise ExportError(f"{spec} is a {type(target).__name__}, not a callable")
    return target


def call_factory(factory: Callable[[], Any], spec: str) -> tuple[Any, Any]:
    """Calls the factory and checks it returned `(module, samples)` (the samples are checked by export.signature)."""
    import torch

    try:
        result = factory()
    except Exception as error:
        raise ExportError(f"{spec}() raised {type(error).__name__}: {error}") from error
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise ExportError(
            f"{spec}() must return (module, samples), got {_describe(result)}; e.g. `return Net().eval(), "
            "[(torch.randn(2, 8),), (torch.randn(3, 8),)]`"
        )
    module, samples = result
    if not isinstance(module, torch.nn.Module):
        raise ExportError(
            f"{spec}() must return (module, samples): the module is a {_describe(module)}, not an nn.Module"
        )
    if not isinstance(samples, (list, tuple)) or not samples:
        raise ExportError(
            f"{spec}() must return (module, samples): samples must be a non-empty list of input tuples (or "
            f"tensors), got {_describe(samples)}"
        )
    return module, samples


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__
