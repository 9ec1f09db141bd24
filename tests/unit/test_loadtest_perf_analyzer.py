"""perf_analyzer: the installer's decisions (scripts/install_perf_analyzer.py, no network: the download steps are not
run here) and how the runner (loadtest/perf_analyzer.py) reads what it installed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tritonfleet.loadtest.perf_analyzer import (
    InstallManifest,
    PerfAnalyzerNotInstalledError,
    load_manifest,
    perf_analyzer_command,
    write_wrapper,
)

INSTALLER_PATH = Path(__file__).resolve().parents[2] / "scripts" / "install_perf_analyzer.py"


@pytest.fixture(scope="module")
def installer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("install_perf_analyzer", INSTALLER_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_loader_needed_below_glibc_2_38_only(installer: ModuleType) -> None:
    assert installer.needs_private_loader((2, 36))  # Debian 12
    assert not installer.needs_private_loader((2, 38))
    assert not installer.needs_private_loader((2, 41))  # Debian 13


def test_host_glibc_version_is_parsed(installer: ModuleType) -> None:
    major, minor = installer.host_glibc_version()
    assert major >= 2 and minor >= 0


def test_apt_state_is_confined_to_the_private_folder(installer: ModuleType, tmp_path: Path) -> None:
    options = installer._apt_options(tmp_path)
    for key in ("Dir::Etc::SourceList", "Dir::Etc::SourceParts", "Dir::State::Lists", "Dir::Cache"):
        value = next(option.split("=", 1)[1] for option in options if option.startswith(f"-o{key}="))
        assert value.startswith(str(tmp_path)), key


def _fake_install(installer: ModuleType, tools_dir: Path, private_loader: bool) -> InstallManifest:
    layout = installer.Layout(tools_dir)
    layout.binary.parent.mkdir(parents=True)
    layout.binary.write_text("#!/bin/sh\n")
    if private_loader:
        layout.loader.parent.mkdir(parents=True)
        layout.loader.write_text("")
    manifest = InstallManifest(
        version=installer.PERF_ANALYZER_VERSION,
        uses_private_loader=private_loader,
        binary=str(layout.binary),
        loader=str(layout.loader) if private_loader else None,
        library_path=layout.library_path() if private_loader else [],
    )
    manifest.write(tools_dir)
    return manifest


def test_install_returns_at_once_when_already_installed(
    installer: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _fake_install(installer, tmp_path, private_loader=True)

    def no_download(*_args, **_kwargs):
        raise AssertionError("an installed perf_analyzer must not be downloaded again")

    monkeypatch.setattr(installer, "_download_wheel", no_download)
    assert installer.install(installer.Layout(tmp_path)) == expected


def test_the_runner_starts_the_binary_through_the_installed_loader(installer: ModuleType, tmp_path: Path) -> None:
    layout = installer.Layout(tmp_path)
    _fake_install(installer, tmp_path, private_loader=True)
    command = perf_analyzer_command(["-m", "esm2"], tmp_path)
    assert command[:2] == [str(layout.loader), "--library-path"]
    assert command[2].split(":")[0] == str(layout.sysroot / installer.LIB_DIR)
    assert command[3:] == [str(layout.binary), "-m", "esm2"]


def test_direct_binary_on_a_new_enough_glibc(installer: ModuleType, tmp_path: Path) -> None:
    _fake_install(installer, tmp_path, private_loader=False)
    assert perf_analyzer_command(["--version"], tmp_path) == [str(installer.Layout(tmp_path).binary), "--version"]


def test_a_broken_install_is_not_trusted(installer: ModuleType, tmp_path: Path) -> None:
    _fake_install(installer, tmp_path, private_loader=True)
    installer.Layout(tmp_path).loader.unlink()
    assert load_manifest(tmp_path) is None
    with pytest.raises(PerfAnalyzerNotInstalledError, match="run `make setup` or `python scripts/install_perf"):
        perf_analyzer_command(["--version"], tmp_path)


def test_install_errors_name_the_failed_step(
    installer: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(installer.PerfAnalyzerInstallError, match="no-such-tool is not available"):
        installer._run_step("probing", ["no-such-tool", "--version"])
    monkeypatch.setattr(installer.shutil, "which", lambda _name: None)
    with pytest.raises(installer.PerfAnalyzerInstallError, match="apt-get/dpkg are missing"):
        installer._install_private_loader(installer.Layout(tmp_path))


def test_the_wrapper_execs_the_installed_command_with_its_arguments(installer: ModuleType, tmp_path: Path) -> None:
    tools_dir = tmp_path / "tools dir"  # a space must survive the shell
    _fake_install(installer, tools_dir, private_loader=False)
    binary = installer.Layout(tools_dir).binary
    binary.write_text('#!/bin/sh\necho "pid $$"\nfor arg in "$@"; do echo "arg $arg"; done\n')
    binary.chmod(0o755)
    wrapper = write_wrapper(tmp_path / "bin" / "perf_analyzer", tools_dir)
    process = subprocess.Popen([str(wrapper), "-m", "esm2 onnx", "--concurrency-range", "4"],
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    output, _ = process.communicate(timeout=30)
    lines = output.splitlines()
    assert process.returncode == 0
    # One PID: a tool that started the wrapper (Model Analyzer) watches and kills perf_analyzer itself.
    assert lines[0] == f"pid {process.pid}"
    assert lines[1:] == ["arg -m", "arg esm2 onnx", "arg --concurrency-range", "arg 4"]


def test_no_wrapper_without_an_install(tmp_path: Path) -> None:
    with pytest.raises(PerfAnalyzerNotInstalledError):
        write_wrapper(tmp_path / "perf_analyzer", tmp_path / "nothing")
    assert not (tmp_path / "perf_analyzer").exists()
