"""Run NVIDIA perf_analyzer as `scripts/install_perf_analyzer.py` installed it (`make setup` runs that script).

The installer writes `.tools/perf_analyzer/install.json` (an `InstallManifest`): the binary from the PyPI
`perf-analyzer` wheel and, on hosts whose glibc is older than the 2.38 the wheel needs, Debian trixie's dynamic
loader and library path to run it through. `tritonfleet perf-analyzer run -- <perf_analyzer args>` (or
`run_perf_analyzer([...])`) is the one way the rest of the project calls perf_analyzer.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tritonfleet.contract.command_line import HelpFormatter, MissingToolError, warn_python_m

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOOLS_DIR = PROJECT_ROOT / ".tools" / "perf_analyzer"
MANIFEST_NAME = "install.json"
INSTALLER = "scripts/install_perf_analyzer.py"


class PerfAnalyzerNotInstalledError(MissingToolError):
    """No usable perf_analyzer installation; the message says how to install it."""


@dataclass(frozen=True)
class InstallManifest:
    """What the installer put where, stored as JSON in `<tools dir>/install.json`."""

    version: str
    uses_private_loader: bool
    binary: str
    loader: str | None = None
    library_path: list[str] = field(default_factory=list)

    def write(self, tools_dir: Path) -> Path:
        path = tools_dir / MANIFEST_NAME
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    def command_prefix(self) -> list[str]:
        """The argv that starts perf_analyzer, before its own arguments."""
        if self.uses_private_loader and self.loader:
            return [self.loader, "--library-path", ":".join(self.library_path), self.binary]
        return [self.binary]


def load_manifest(tools_dir: Path = DEFAULT_TOOLS_DIR) -> InstallManifest | None:
    """The installation in `tools_dir`, or None when it is missing or its files are gone."""
    try:
        manifest = InstallManifest(**json.loads((tools_dir / MANIFEST_NAME).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if not Path(manifest.binary).is_file() or (manifest.loader and not Path(manifest.loader).exists()):
        return None
    return manifest


def perf_analyzer_command(args: Sequence[str], tools_dir: Path = DEFAULT_TOOLS_DIR) -> list[str]:
    """The argv that runs perf_analyzer with `args`.

    Raises:
        PerfAnalyzerNotInstalledError: nothing usable is installed in `tools_dir`.
    """
    manifest = load_manifest(tools_dir)
    if manifest is None:
        raise PerfAnalyzerNotInstalledError(
            f"perf_analyzer is not installed in {tools_dir}: run `make setup` or "
            f"`python {INSTALLER} --tools-dir {tools_dir}`"
        )
    return manifest.command_prefix() + list(args)


def run_perf_analyzer(
    args: Sequence[str], timeout: float = 600, capture: bool = True, tools_dir: Path = DEFAULT_TOOLS_DIR
) -> subprocess.CompletedProcess[str]:
    """Run perf_analyzer with `args`; the caller checks returncode (perf_analyzer exits non-zero on unstable runs)."""
    return subprocess.run(
        perf_analyzer_command(args, tools_dir), capture_output=capture, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def write_wrapper(path: Path, tools_dir: Path = DEFAULT_TOOLS_DIR) -> Path:
    """An executable shell script at `path` that runs perf_analyzer with its arguments, for tools that need the path
    of a binary (Model Analyzer's `perf_analyzer_path`). It `exec`s, so the PID such a tool watches (CPU use, timeout
    kill) is perf_analyzer itself.

    Raises:
        PerfAnalyzerNotInstalledError: nothing usable is installed in `tools_dir`.
    """
    prefix = perf_analyzer_command([], tools_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"#!/bin/sh\n# Written by tritonfleet.loadtest.perf_analyzer.write_wrapper from {tools_dir / MANIFEST_NAME}\n"
        f'exec {shlex.join(prefix)} "$@"\n',
        encoding="utf-8",
    )
    path.chmod(0o755)
    return path


def main(argv: Sequence[str] | None = None, prog: str = "python -m tritonfleet.loadtest.perf_analyzer") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--tools-dir", type=Path, default=DEFAULT_TOOLS_DIR, help="the installer's folder")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("path", help="print the command prefix that runs perf_analyzer")
    wrapper_parser = commands.add_parser("write-wrapper", help="write an executable script that runs perf_analyzer")
    wrapper_parser.add_argument("wrapper_path", type=Path)
    run_parser = commands.add_parser("run", help="run perf_analyzer: `run -- <perf_analyzer args>`")
    run_parser.add_argument("perf_analyzer_args", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    try:
        if options.command == "path":
            print(" ".join(perf_analyzer_command([], options.tools_dir)))
            return 0
        if options.command == "write-wrapper":
            print(write_wrapper(options.wrapper_path, options.tools_dir))
            return 0
        args = list(options.perf_analyzer_args)
        if args[:1] == ["--"]:
            args = args[1:]
        return run_perf_analyzer(args, timeout=24 * 3600, capture=False, tools_dir=options.tools_dir).returncode
    except PerfAnalyzerNotInstalledError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    warn_python_m(__spec__.name if __spec__ else None, "perf-analyzer")
    sys.exit(main())
