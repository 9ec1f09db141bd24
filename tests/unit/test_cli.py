"""`tritonfleet <command>`: every job behind one console script, the same flag meaning the same thing everywhere, old
spellings still working with a warning, and exports that name the machine they are for (`--target`)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from tritonfleet import cli
from tritonfleet.contract.command_line import HelpFormatter, MissingToolError, server_urls
from tritonfleet.contract.esm2.pipeline import ONNX_MODEL
from tritonfleet.contract.model_config import read_config
from tritonfleet.export.__main__ import main as export_main
from tritonfleet.export.devices import (
    TARGET_FILENAME,
    ServingTarget,
    parse_target,
    plan_target,
    resolve_target,
)
from tritonfleet.export.esm2.repository import CANONICAL_ARGS

ROOT = Path(__file__).resolve().parents[2]
# Commands whose parser belongs to another area and does not yet show every default (tritonfleet still dispatches
# to them); named in /tmp/team/messages.md for their owners.
DEFAULTS_PENDING = {"embed", "embed-fasta", "health", "engines", "fleet", "fleet-chaos"}
# Commands whose main takes no `prog` yet, so their usage line names their module.
PROG_PENDING = DEFAULTS_PENDING


def installed_commands() -> list[str]:
    return [command.name for command in cli.COMMANDS if cli.available(command)]


def test_overview_lists_every_job(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("export", "serve", "demo", "embed", "embed-fasta", "health", "loadtest", "perf", "bench", "tune"):
        assert f"  {name} " in out
    assert cli.main([]) == 2  # no command: the overview, and a usage error status


def test_unknown_command_is_one_line_with_status_2(capsys):
    assert cli.main(["exprot"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tritonfleet: error: unknown command 'exprot'")


def test_commands_whose_module_is_absent_are_refused_in_one_line(capsys, monkeypatch):
    ghost = cli.Command("ghost", "tritonfleet.no_such_module:main", "x", "serve")
    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, ghost))
    assert cli.main(["ghost"]) == 2
    assert "not part of this install" in capsys.readouterr().err
    assert "ghost" not in cli.usage()


@pytest.mark.parametrize("name", installed_commands())
def test_every_help_works_and_shows_defaults(name, capsys, monkeypatch):
    """`tritonfleet NAME --help` exits 0 through argparse; its parser shows each option's default (where it has
    one) and is named `tritonfleet NAME`."""
    parsers: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.print_help

    def record(self, file=None):
        parsers.append(self)
        return original(self, file)

    monkeypatch.setattr(argparse.ArgumentParser, "print_help", record)
    command = cli.find(name)
    if name in DEFAULTS_PENDING:
        try:
            cli.load(command)
        except (ImportError, AttributeError) as error:
            pytest.skip(f"{command.target}: not ready in this tree ({error})")
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ")
    (parser,) = parsers
    if name not in PROG_PENDING:
        assert out.startswith(f"usage: tritonfleet {name}"), out.splitlines()[0]
    if name in DEFAULTS_PENDING:
        return
    assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter), name
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or not HelpFormatter._has_default(action):
            continue
        shown = formatter._format_action(action)
        assert "default" in shown, f"tritonfleet {name} {action.option_strings}: no default shown"


def test_export_help_names_the_command_and_the_target(capsys):
    with pytest.raises(SystemExit):
        cli.main(["export", "esm2", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: tritonfleet export esm2")
    assert "--target" in out and "gpu:all" in out and "(default: auto)" in out
    assert "--gpus" not in out and "--cpu-cores" not in out  # deprecated spellings are hidden


def test_missing_external_tool_is_one_line(capsys, monkeypatch):
    def needs_a_tool(argv, prog):
        raise MissingToolError("haproxy not found on PATH:\n  apt-get install haproxy")

    monkeypatch.setattr(cli, "load", lambda command: needs_a_tool)
    assert cli.main(["perf"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tritonfleet perf: error: haproxy not found on PATH: apt-get install haproxy"]


def test_missing_perf_analyzer_is_named_in_one_line(tmp_path, capsys):
    assert cli.main(["perf-analyzer", "--tools-dir", str(tmp_path), "path"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "perf_analyzer is not installed" in err[0]


def test_console_script_and_python_m_form_agree():
    """The installed script (editable here) runs the same main as `python -m tritonfleet.cli`."""
    script = Path(sys.executable).with_name("tritonfleet")
    if not script.exists():
        pytest.skip("the tritonfleet script is not installed in this environment (re-run make setup)")
    via_script = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, check=True)
    via_module = subprocess.run(
        [sys.executable, "-m", "tritonfleet.cli", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert via_script.stdout == via_module.stdout


# --- old spellings: still working for one release, with a warning -------------------------------------------------


@pytest.mark.parametrize(
    ("module", "command"),
    [("export", "export"), ("deploy.local", "serve"), ("client", "embed"), ("loadtest.run", "loadtest")],
)
def test_checkout_python_m_forms_still_work_and_warn(module, command):
    completed = subprocess.run(
        [sys.executable, "-m", module, *(["torch"] if module == "export" else []), "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert f"`python -m {module}` is deprecated" in completed.stderr and f"tritonfleet {command}" in completed.stderr
    installed = subprocess.run(
        [sys.executable, "-m", f"tritonfleet.{module}", *(["torch"] if module == "export" else []), "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert installed.returncode == 0 and "deprecated" not in installed.stderr  # the installed form stays quiet


def _configs(output: Path, *flags: str) -> dict[str, mc.ModelConfig]:
    args = [*CANONICAL_ARGS[: CANONICAL_ARGS.index("--output")], "--output", str(output), "--configs-only", *flags]
    assert export_main(args) == 0
    return {path.parent.name: read_config(path) for path in output.glob("*/config.pbtxt")}


def test_deprecated_device_flags_mean_the_target_they_spelled(tmp_path, capsys):
    with pytest.warns(DeprecationWarning):
        gpu = _configs(tmp_path / "gpu", "--gpus", "0,1")
    assert list(gpu[ONNX_MODEL].instance_group[0].gpus) == [0, 1]
    assert json.loads((tmp_path / "gpu" / TARGET_FILENAME).read_text())["target"] == "gpu:0,1"
    with pytest.warns(DeprecationWarning):
        cpu = _configs(tmp_path / "cpu", "--gpus", "none", "--cpu-cores", "4")
    assert json.loads((tmp_path / "cpu" / TARGET_FILENAME).read_text())["target"] == "cpu:4"
    assert cpu[ONNX_MODEL].instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert "--gpus 0,1 is deprecated" in capsys.readouterr().err


def test_loadtest_and_perf_accept_old_and_new_server_flags(capsys):
    from tritonfleet.loadtest import run

    parser = run.build_parser()
    new = parser.parse_args(["--url", "http://h:1", "--url", "grpc://h:2", "--output", "out"])
    assert run.target_urls(new, ("http", "grpc")) == {"http": "h:1", "grpc": "h:2"} and new.output == Path("out")
    with pytest.warns(DeprecationWarning):
        old = parser.parse_args(["--host", "http://h:1", "--grpc-url", "h:2", "--report-dir", "out"])
    assert run.target_urls(old, ("http", "grpc")) == {"http": "h:1", "grpc": "h:2"} and old.output == Path("out")
    assert "--report-dir is deprecated" in capsys.readouterr().err


def test_bench_and_demo_take_random_init():
    from tritonfleet.deploy import demo
    from tritonfleet.loadtest.bench.__main__ import build_parser

    assert build_parser().parse_args(["--random-init", "35M"]).random_init == "35M"
    with pytest.warns(DeprecationWarning):
        assert build_parser().parse_args(["--model-size", "35M"]).random_init == "35M"
    with pytest.warns(DeprecationWarning):
        assert demo.parse_args(["--model-size", "35M"]).random_init == "35M"


def test_server_urls_resolve_schemes_and_defaults():
    assert server_urls(None, ("http", "grpc")) == {"http": "127.0.0.1:8000", "grpc": "127.0.0.1:8001"}
    assert server_urls(["h:9"], ("grpc",)) == {"grpc": "h:9"}
    assert server_urls(["https://h:9/"], ("http",)) == {"http": "h:9"}
    with pytest.raises(argparse.ArgumentTypeError, match="prefix each url"):
        server_urls(["h:9"], ("http", "grpc"))
    with pytest.raises(argparse.ArgumentTypeError, match="scheme"):
        server_urls(["ftp://h:9"], ("http",))


# --- serving target --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("cpu:4", ServingTarget("cpu", cores=4)),
        ("gpu:0,1", ServingTarget("gpu", gpus=(0, 1))),
        ("GPU:all", ServingTarget("gpu")),
    ],
)
def test_targets_parse_and_print_back(text, target):
    assert parse_target(text) == target
    assert parse_target(str(target)) == target


@pytest.mark.parametrize("text", ["cpu", "cpu:0", "cpu:x", "gpu:", "gpu:0,0", "tpu:1", "4"])
def test_bad_targets_are_refused(text):
    with pytest.raises(ValueError, match="--target"):
        parse_target(text)


def test_auto_is_this_machine_and_says_so():
    assert resolve_target("auto", device_count=lambda: 2) == (ServingTarget("gpu", gpus=(0, 1)), True)
    target, chosen_by_auto = resolve_target("auto", device_count=lambda: 0)
    assert target.kind == "cpu" and target.cores >= 1 and chosen_by_auto
    assert resolve_target("cpu:3") == (ServingTarget("cpu", cores=3), False)


def test_gpu_all_configs_list_no_device(tmp_path):
    """KIND_GPU without `gpus`: Triton places the instances on every GPU the serving machine shows."""
    plan = plan_target(parse_target("gpu:all"), instances_per_gpu=2)
    assert plan.every_gpu and "every visible GPU" in plan.describe()
    configs = _configs(tmp_path, "--target", "gpu:all", "--instances-per-gpu", "2")
    (group,) = configs[ONNX_MODEL].instance_group
    assert group.kind == mc.ModelInstanceGroup.KIND_GPU and group.count == 2 and not group.gpus


def test_the_target_is_written_down_in_the_repository(tmp_path, capsys):
    _configs(tmp_path / "explicit", "--target", "cpu:3")
    record = json.loads((tmp_path / "explicit" / TARGET_FILENAME).read_text())
    assert record["target"] == "cpu:3" and record["chosen_by"] == "--target" and "CPU: 6 instance(s)" in record["plan"]
    assert "--target auto chose" not in capsys.readouterr().err
    _configs(tmp_path / "auto", "--target", "auto")
    record = json.loads((tmp_path / "auto" / TARGET_FILENAME).read_text())
    assert record["chosen_by"].startswith("auto")
    assert f"--target auto chose {record['target']}" in capsys.readouterr().err


def test_bad_target_is_one_line_with_status_2(tmp_path, capsys):
    args = [*CANONICAL_ARGS[: CANONICAL_ARGS.index("--output")], "--output", str(tmp_path / "r"), "--configs-only"]
    assert export_main([*args, "--target", "gpu:zero"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--target" in errors[0]
    assert not (tmp_path / "r").exists()


def test_serve_reads_the_target_back(tmp_path):
    from tritonfleet.contract.serving_target import describe_for_this_machine, read_serving_target

    assert read_serving_target(tmp_path) is None
    _configs(tmp_path, "--target", "cpu:3")
    record = read_serving_target(tmp_path)
    assert record is not None and record["target"] == "cpu:3"
    line = describe_for_this_machine(record)
    assert line.startswith("serving target: cpu:3 (CPU: 6 instance(s)") and "\n" not in line


def test_a_missing_extra_is_named(capsys, monkeypatch):
    """A command whose package is installed but whose dependency is not: one line naming the extra to install."""
    import importlib

    real_import = importlib.import_module

    def without_psutil(name, *args):
        if name == "tritonfleet.deploy.local.__main__":
            raise ModuleNotFoundError("No module named 'psutil'", name="psutil")
        return real_import(name, *args)

    monkeypatch.setattr(cli.importlib, "import_module", without_psutil)
    assert cli.main(["serve", "--help"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "psutil" in err[0] and "pip install 'tritonfleet[deploy]'" in err[0]


def test_the_committed_target_is_what_the_canonical_command_writes(tmp_path):
    committed = ROOT / "model_repository" / TARGET_FILENAME
    _configs(tmp_path)  # the canonical arguments, configs only
    assert committed.read_text() == (tmp_path / TARGET_FILENAME).read_text(), "regenerate with `make export`"
    assert json.loads(committed.read_text())["chosen_by"] == "--target"  # never the exporting machine's guess


@pytest.mark.parametrize(
    ("flags", "target"),
    [
        (["--gpus", "none", "--cpu-cores", "4"], "cpu:4"),
        (["--cpu-cores", "4", "--gpus", "none"], "cpu:4"),
        (["--gpus", "0,1", "--cpu-cores", "4"], "gpu:0,1"),  # --cpu-cores never applied to GPU plans
        (["--target", "cpu:2", "--gpus", "3"], "gpu:3"),  # the later flag wins
    ],
)
def test_old_device_flag_combinations_keep_their_meaning(tmp_path, flags, target):
    args = ["esm2", "--random-init", "8M", "--precision", "fp32", "--output", str(tmp_path), "--configs-only"]
    with pytest.warns(DeprecationWarning):
        assert export_main([*args, *flags]) == 0
    assert json.loads((tmp_path / TARGET_FILENAME).read_text())["target"] == target
