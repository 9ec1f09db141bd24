"""The perf_analyzer installer's decisions (no network: the download steps are not run here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tritonfleet.loadtest import perf_analyzer
from tritonfleet.loadtest.perf_analyzer import (
    InstallManifest,
    PerfAnalyzerLayout,
    _apt_options,
    install,
    load_manifest,
    needs_private_loader,
    perf_analyzer_command,
)


def test_loader_needed_below_glibc_2_38_only() -> None:
    assert needs_private_loader((2, 36))  # Debian 12
    assert not needs_private_loader((2, 38))
    assert not needs_private_loader((2, 41))  # Debian 13


def test_host_glibc_version_is_parsed() -> None:
    major, minor = perf_analyzer.host_glibc_version()
    assert major >= 2 and minor >= 0


def test_apt_state_is_confined_to_the_private_folder(tmp_path: Path) -> None:
    options = _apt_options(tmp_path)
    for key in ("Dir::Etc::SourceList", "Dir::Etc::SourceParts", "Dir::State::Lists", "Dir::Cache"):
        value = next(option.split("=", 1)[1] for option in options if option.startswith(f"-o{key}="))
        assert value.startswith(str(tmp_path)), key


def _fake_install(layout: PerfAnalyzerLayout, private_loader: bool) -> InstallManifest:
    layout.binary.parent.mkdir(parents=True)
    layout.binary.write_text("#!/bin/sh\n")
    if private_loader:
        layout.loader.parent.mkdir(parents=True)
        layout.loader.write_text("")
    manifest = InstallManifest(
        version=perf_analyzer.PERF_ANALYZER_VERSION,
        uses_private_loader=private_loader,
        binary=str(layout.binary),
        loader=str(layout.loader) if private_loader else None,
        library_path=[str(layout.sysroot / perf_analyzer.LIB_DIR), "/lib/x86_64-linux-gnu"] if private_loader else [],
    )
    layout.manifest.write_text(json.dumps(manifest.__dict__))
    return manifest


def test_install_returns_at_once_when_already_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = PerfAnalyzerLayout(tmp_path)
    expected = _fake_install(layout, private_loader=True)

    def no_download(*_args, **_kwargs):
        raise AssertionError("an installed perf_analyzer must not be downloaded again")

    monkeypatch.setattr(perf_analyzer, "_download_wheel", no_download)
    assert install(layout) == expected
    command = perf_analyzer_command(["-m", "esm2"], layout)
    assert command[:2] == [str(layout.loader), "--library-path"]
    assert command[2].split(":")[0] == str(layout.sysroot / perf_analyzer.LIB_DIR)
    assert command[3:] == [str(layout.binary), "-m", "esm2"]


def test_direct_binary_on_a_new_enough_glibc(tmp_path: Path) -> None:
    layout = PerfAnalyzerLayout(tmp_path)
    _fake_install(layout, private_loader=False)
    assert perf_analyzer_command(["--version"], layout) == [str(layout.binary), "--version"]


def test_a_broken_install_is_not_trusted(tmp_path: Path) -> None:
    layout = PerfAnalyzerLayout(tmp_path)
    _fake_install(layout, private_loader=True)
    layout.loader.unlink()
    assert load_manifest(layout) is None


def test_install_errors_name_the_failed_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(perf_analyzer.PerfAnalyzerInstallError, match="no-such-tool is not available"):
        perf_analyzer._run_step("probing", ["no-such-tool", "--version"])
    monkeypatch.setattr(perf_analyzer.shutil, "which", lambda _name: None)
    with pytest.raises(perf_analyzer.PerfAnalyzerInstallError, match="apt-get/dpkg are missing"):
        perf_analyzer._install_private_loader(PerfAnalyzerLayout(tmp_path))
