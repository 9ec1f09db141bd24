"""Install NVIDIA perf_analyzer from its PyPI wheel into a private folder, on hosts whose glibc is older than it needs.

    python scripts/install_perf_analyzer.py [--tools-dir .tools/perf_analyzer] [--version 2.60.0] [--force]

`make setup` (scripts/setup.sh) runs it; it is idempotent and returns at once once done. The PyPI `perf-analyzer`
wheel is tagged manylinux_2_38 (its binary needs GLIBC_2.38 and GLIBCXX_3.4.32). On a host whose glibc is >= 2.38
the binary runs directly. On older hosts (Debian 12 has glibc 2.36) the binary runs unchanged through Debian
trixie's dynamic loader and libraries, unpacked into the same folder:

    <tools>/wheel/perf_analyzer/bin/perf_analyzer      the binary from the wheel
    <tools>/sysroot/usr/lib/x86_64-linux-gnu/            trixie's libc6, libstdc++6, libgcc-s1
    <tools>/apt/                                         private apt lists/cache (never the system's)
    <tools>/install.json                                 what was installed: read by tritonfleet.loadtest.perf_analyzer

Nothing is installed system-wide. The project runs perf_analyzer through `python -m loadtest.perf_analyzer run`.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tritonfleet.loadtest.perf_analyzer import DEFAULT_TOOLS_DIR, InstallManifest, load_manifest

PERF_ANALYZER_VERSION = "2.60.0"
WHEEL_PLATFORM = "manylinux_2_38_x86_64"
REQUIRED_GLIBC = (2, 38)
TRIXIE_PACKAGES = ("libc6", "libstdc++6", "libgcc-s1")
DEBIAN_MIRROR = os.environ.get("TRITONFLEET_DEBIAN_MIRROR", "http://deb.debian.org/debian")
LIB_DIR = "usr/lib/x86_64-linux-gnu"


class PerfAnalyzerInstallError(RuntimeError):
    """perf_analyzer could not be installed; the message says which step failed and what to do."""


@dataclass(frozen=True)
class Layout:
    """Where the pieces of the private installation go."""

    root: Path = DEFAULT_TOOLS_DIR

    @property
    def wheel_dir(self) -> Path:
        return self.root / "wheel"

    @property
    def binary(self) -> Path:
        return self.wheel_dir / "perf_analyzer" / "bin" / "perf_analyzer"

    @property
    def sysroot(self) -> Path:
        return self.root / "sysroot"

    @property
    def loader(self) -> Path:
        return self.sysroot / LIB_DIR / "ld-linux-x86-64.so.2"

    @property
    def apt_dir(self) -> Path:
        return self.root / "apt"

    def library_path(self) -> list[str]:
        return [str(self.sysroot / LIB_DIR), "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"]


def host_glibc_version() -> tuple[int, int]:
    """The host's glibc version as (major, minor); (0, 0) when it is not glibc."""
    name, version = platform.libc_ver()
    if name != "glibc" or not version:
        try:
            version = os.confstr("CS_GNU_LIBC_VERSION").split()[-1]  # e.g. "glibc 2.36"
        except (ValueError, OSError, AttributeError, IndexError):
            return (0, 0)
    parts = version.split(".")
    try:
        return (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)
    except ValueError:
        return (0, 0)


def needs_private_loader(glibc: tuple[int, int] | None = None) -> bool:
    """True when the host glibc is too old to run the manylinux_2_38 binary directly."""
    return (glibc or host_glibc_version()) < REQUIRED_GLIBC


def _run_step(description: str, command: Sequence[str], cwd: Path | None = None, timeout: float = 600) -> None:
    try:
        completed = subprocess.run(
            list(command), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
    except FileNotFoundError as error:
        raise PerfAnalyzerInstallError(f"{description}: {command[0]} is not available ({error})") from error
    except subprocess.TimeoutExpired as error:
        raise PerfAnalyzerInstallError(
            f"{description}: timed out after {timeout:.0f} s: {' '.join(command)}"
        ) from error
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout).strip()[-2000:]
        raise PerfAnalyzerInstallError(
            f"{description} failed (exit {completed.returncode}): {' '.join(command)}\n{tail}"
        )


def _download_wheel(layout: Layout, version: str) -> None:
    with tempfile.TemporaryDirectory(prefix="perf_analyzer_wheel_") as download_dir:
        _run_step(
            "downloading the perf-analyzer wheel from PyPI",
            [
                sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
                "--only-binary=:all:", "--platform", WHEEL_PLATFORM, f"perf-analyzer=={version}", "-d", download_dir,
            ],
        )  # fmt: skip
        wheels = sorted(Path(download_dir).glob("perf_analyzer-*.whl"))
        if not wheels:
            raise PerfAnalyzerInstallError(f"pip downloaded no perf_analyzer wheel into {download_dir}")
        if layout.wheel_dir.exists():
            shutil.rmtree(layout.wheel_dir)
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extractall(layout.wheel_dir)
    if not layout.binary.is_file():
        raise PerfAnalyzerInstallError(f"the wheel has no perf_analyzer/bin/perf_analyzer (looked at {layout.binary})")
    layout.binary.chmod(0o755)


def _apt_options(apt_dir: Path) -> list[str]:
    """apt options that confine lists, caches and sources to `apt_dir`: the system's apt state is never touched."""
    return [
        f"-oDir::Etc::SourceList={apt_dir / 'sources.list'}",
        f"-oDir::Etc::SourceParts={apt_dir / 'sources.list.d'}",
        f"-oDir::Etc::Preferences={apt_dir / 'preferences'}",
        f"-oDir::Etc::PreferencesParts={apt_dir / 'preferences.d'}",
        f"-oDir::State::Lists={apt_dir / 'lists'}",
        f"-oDir::Cache={apt_dir / 'cache'}",
        "-oAPT::Architecture=amd64",
        "-oAPT::Sandbox::User=root",
        "-oAcquire::Retries=3",
        "-oDebug::NoLocking=true",
    ]


def _trixie_sources_line() -> str:
    keyrings = [Path("/usr/share/keyrings/debian-archive-trixie-stable.gpg"),
                Path("/usr/share/keyrings/debian-archive-trixie-automatic.gpg")]  # fmt: skip
    present = [str(keyring) for keyring in keyrings if keyring.is_file()]
    signed_by = f"[signed-by={','.join(present)}] " if present else ""
    return f"deb {signed_by}{DEBIAN_MIRROR} trixie main\n"


def _install_private_loader(layout: Layout) -> None:
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise PerfAnalyzerInstallError(
            f"host glibc {'.'.join(map(str, host_glibc_version()))} < 2.38 and apt-get/dpkg are missing: run "
            "perf_analyzer on a host with glibc >= 2.38 or provide Debian's apt tools"
        )
    apt_dir = layout.apt_dir
    for sub in ("sources.list.d", "preferences.d", "lists/partial", "cache/archives/partial", "debs"):
        (apt_dir / sub).mkdir(parents=True, exist_ok=True)
    (apt_dir / "sources.list").write_text(_trixie_sources_line())
    (apt_dir / "preferences").write_text("")
    options = _apt_options(apt_dir)
    _run_step("apt-get update (private trixie source list)", ["apt-get", "-q", *options, "update"], timeout=600)
    debs = apt_dir / "debs"
    for stale in debs.glob("*.deb"):
        stale.unlink()
    _run_step("apt-get download of trixie's loader libraries",
              ["apt-get", "-q", *options, "download", *TRIXIE_PACKAGES], cwd=debs)  # fmt: skip
    if layout.sysroot.exists():
        shutil.rmtree(layout.sysroot)
    layout.sysroot.mkdir(parents=True)
    for deb in sorted(debs.glob("*.deb")):
        _run_step(f"dpkg -x {deb.name}", ["dpkg", "-x", str(deb), str(layout.sysroot)])
    if not layout.loader.exists():
        raise PerfAnalyzerInstallError(f"trixie's libc6 did not provide {layout.loader}")


def install(layout: Layout | None = None, version: str = PERF_ANALYZER_VERSION, force: bool = False) -> InstallManifest:
    """Install perf_analyzer under `layout.root` (idempotent); raise PerfAnalyzerInstallError with the cause."""
    layout = layout or Layout()
    existing = load_manifest(layout.root)
    if existing and existing.version == version and not force:
        return existing
    if platform.machine() not in ("x86_64", "AMD64"):
        raise PerfAnalyzerInstallError(f"the perf-analyzer wheel is x86_64 only; this machine is {platform.machine()}")
    layout.root.mkdir(parents=True, exist_ok=True)
    _download_wheel(layout, version)
    private_loader = needs_private_loader()
    if private_loader:
        _install_private_loader(layout)
    manifest = InstallManifest(
        version=version,
        uses_private_loader=private_loader,
        binary=str(layout.binary),
        loader=str(layout.loader) if private_loader else None,
        library_path=layout.library_path() if private_loader else [],
    )
    probe = subprocess.run(
        manifest.command_prefix() + ["--version"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    if probe.returncode != 0 and "perf_analyzer" not in (probe.stdout + probe.stderr).lower():
        raise PerfAnalyzerInstallError(f"perf_analyzer installed but does not start:\n{probe.stderr[-2000:]}")
    manifest.write(layout.root)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/install_perf_analyzer.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--tools-dir", type=Path, default=DEFAULT_TOOLS_DIR, help="private install folder")
    parser.add_argument("--version", default=PERF_ANALYZER_VERSION)
    parser.add_argument("--force", action="store_true", help="reinstall even when already installed")
    options = parser.parse_args(argv)
    try:
        manifest = install(Layout(options.tools_dir.resolve()), options.version, options.force)
    except PerfAnalyzerInstallError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    loader = f" via trixie loader {manifest.loader}" if manifest.uses_private_loader else ""
    print(f"perf_analyzer {manifest.version}: {manifest.binary}{loader}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
