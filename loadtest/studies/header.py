"""One report header for every study: the command that made the report, the machine it ran on, when, and the
source revision it ran from."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tritonfleet.export.devices import usable_cores

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _lscpu_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if value:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model(lscpu_output: str | None = None) -> str:
    """The CPU model as `lscpu` names it (then /proc/cpuinfo, then `platform`); `lscpu_output` for a given text."""
    if lscpu_output is None and shutil.which("lscpu"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            lscpu_output = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    if name := _lscpu_fields(lscpu_output or "").get("Model name"):
        return name
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_revision(root: Path = PROJECT_ROOT) -> str:
    """The checkout's short commit, `+dirty` when it has changes; "unknown" outside a checkout (a wheel install)."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)

    try:
        revision = git("rev-parse", "--short", "HEAD")
        if revision.returncode != 0:
            return "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return revision.stdout.strip() + ("+dirty" if dirty else "")


def machine_description() -> dict:
    """The machine as the reports describe it: CPU, cores, Python, OS, GPUs and the engines' versions."""
    description = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "python": platform.python_version(),
        "os": platform.platform(),
        "gpus": [],
    }
    try:
        import onnxruntime
        import torch

        description["torch"] = torch.__version__
        description["onnxruntime"] = onnxruntime.__version__
        if torch.cuda.is_available():
            description["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return description


@dataclass(frozen=True)
class ReportHeader:
    """What every report says first. `machine` is the description's one-line form."""

    command: str
    machine: str
    date: str
    revision: str
    details: dict = field(default_factory=dict, compare=False)

    @classmethod
    def collect(cls, command: str, machine: str | None = None) -> ReportHeader:
        """This run's header (`machine` replaces the standard one-line description, e.g. with tool versions)."""
        details = machine_description()
        if machine is None:
            machine = f"{details['cpu_model']}, {details['usable_cores']} usable core(s), {details['os']}, " + (
                f"Python {details['python']}"
            )
        return cls(command, machine, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), git_revision(), details)

    @property
    def day(self) -> str:
        return self.date.split(" ", 1)[0]

    def markdown(self, date_note: str = "") -> list[str]:
        """The header as markdown list items (`date_note` ends the date line, e.g. "; wall time 480 s")."""
        return [
            f"- Machine: {self.machine}",
            f"- Command: `{self.command}`",
            f"- Date: {self.date}; revision {self.revision}{date_note}",
        ]

    def dated(self) -> str:
        """The date and revision in parentheses, for a report that names its command in a sentence."""
        return f"({self.day}, revision {self.revision})"


def command_line(prog: str, argv: Sequence[str] | None = None) -> str:
    """The command a report names: `prog` and its arguments (`argv`, else this process's), quoted as a shell reads
    them."""
    return " ".join([prog, *map(shlex.quote, sys.argv[1:] if argv is None else argv)])


def write_report(directory: Path, name: str, markdown: str, data: dict | None = None) -> Path:
    """`directory/name.md` (and `name.json` with `data`); the markdown's path."""
    directory.mkdir(parents=True, exist_ok=True)
    report = directory / f"{name}.md"
    report.write_text(markdown)
    if data is not None:
        (directory / f"{name}.json").write_text(json.dumps(data, indent=2, default=float))
    return report
