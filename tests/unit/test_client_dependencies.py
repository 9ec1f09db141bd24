"""The thin client stays thin: importing it (and its command line) loads only the shared contract of the project and
none of the heavy stacks the other stages need, so `pip install 'tritonfleet[client]'` is enough to use it."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY_MODULES = ("torch", "transformers", "onnx", "onnxruntime", "locust", "tqdm", "pyarrow")
CHECK = """
import json, sys
import tritonfleet.client
import tritonfleet.client.cli
print(json.dumps(sorted(sys.modules)))
"""


def test_the_client_imports_only_the_contract_and_no_heavy_stack() -> None:
    completed = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    loaded = set(json.loads(completed.stdout))
    project = {name for name in loaded if name.startswith("tritonfleet.")}
    assert {name.split(".")[1] for name in project} == {"client", "contract"}, sorted(project)
    assert not loaded & set(HEAVY_MODULES), sorted(loaded & set(HEAVY_MODULES))
