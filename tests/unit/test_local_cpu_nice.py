"""`cpu_nice`: the local Python-based backends lower the OS priority of bulk network instances (every thread of the
stub process), so the interactive-only copy runs first whenever both want a core."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

SCRIPT = """
import json, os, threading
from tritonfleet.contract.model_config import ServedModel
from tritonfleet.deploy.local.backends.contract import ModelContractError, apply_cpu_nice

def model(value):
    return ServedModel("m", "", "python", 1, (), (), {} if value is None else {"cpu_nice": value})

started = threading.Event()
waiting = threading.Event()
worker = threading.Thread(target=lambda: (started.set(), waiting.wait(60)))
worker.start(); started.wait(60)  # a thread that exists before: it must be lowered too
before = os.getpriority(os.PRIO_PROCESS, 0)
none = apply_cpu_nice(model(None))
applied = apply_cpu_nice(model("5"))
tids = [int(t) for t in os.listdir("/proc/self/task")]
after = {tid: os.getpriority(os.PRIO_PROCESS, tid) for tid in tids}
errors = []
for bad in ("-3", "25", "x"):
    try:
        apply_cpu_nice(model(bad))
    except ModelContractError as error:
        errors.append(str(error))
waiting.set(); worker.join()
print(json.dumps({"before": before, "none": none, "applied": applied, "after": list(after.values()), "errors": errors}))
"""


def test_cpu_nice_lowers_every_thread_of_the_instance_process():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=120)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    expected = min(19, report["before"] + 5)
    assert report["none"] is None and report["applied"] == expected
    assert len(report["after"]) >= 2 and set(report["after"]) == {expected}
    assert len(report["errors"]) == 3 and all("cpu_nice" in error for error in report["errors"])
