"""Architecture checks (issue 20): the layer contracts of pyproject.toml's [tool.importlinter] hold (run by the real
`lint-imports`), and each shared idea has one home: one thread-parameter table, one serving plan, one `open_engine`,
tensor roles from the pipeline (never guessed from a tensor name), and no module over `MAX_LINES` lines outside a
short allow-list that gives a reason per entry."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import sysconfig
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("cli", "contract", "export", "deploy", "client", "loadtest")
# Code that runs inside Triton's python stub on the stock NGC image: it may not import tritonfleet, so it keeps its
# own small copies (tests/unit/test_cli_layers.py checks it imports no stage).
SERVED = ROOT / "export" / "esm2" / "served"

MAX_LINES = 400
# Modules allowed over MAX_LINES: path -> why. Prune an entry once its module is split (a test below says when).
LONG_MODULES: dict[str, str] = {}

THREAD_KEYS = {"intra_op_thread_count", "inter_op_thread_count", "INTRA_OP_THREAD_COUNT", "INTER_OP_THREAD_COUNT"}
THREAD_TABLE_HOME = "contract/engine_formats.py"
TABLE_NAMES = {"THREAD_PARAMETERS", "ENGINE_OF_PLATFORM", "PLATFORMS"}
LITERAL_TABLES = (ast.Dict, ast.Tuple, ast.List)
SERVING_PLAN_HOME = "contract/serving_plan.py"
# Where a config's plan fields are read and written: the serving plan (instances, threads) and its batching part.
PLAN_FIELD_HOMES = {SERVING_PLAN_HOME: "the serving plan", "contract/batching_plan.py": "its batching and priorities"}
PLAN_FIELDS = {"instance_group", "dynamic_batching", "preferred_batch_size", "max_queue_delay_microseconds"}
# Other readers of those fields, each with its reason (keep it short).
PLAN_FIELD_READERS = {
    "contract/model_config.py": "instance_count(): the served-model view's instance total (could become "
    "ServingPlan.from_config(config).instance_count)",
}
ENGINE_HOME = "contract/engines.py"
# Where tensor roles are declared (the pipeline protocol and the ESM-2 plugin): the one place that maps names to roles.
ROLE_HOMES = ("contract/pipeline.py", "contract/esm2/")
# A tensor's role guessed from its name, instead of asked from the pipeline (tritonfleet.contract.pipeline.Role).
ROLE_GUESSES = (
    re.compile(r"""["'](MASK|SEQUENCE|EMBEDDING|INPUT_IDS|ATTENTION_MASK)["']\s+(not\s+)?in\s"""),
    re.compile(r"""\.startswith\(["'](EMBEDDING|INPUT|MASK)"""),
    re.compile(r"""\bname\.upper\(\)"""),
    re.compile(r"""\.upper\(\)\.startswith\("""),
    re.compile(r"""__\\d\+?\$"""),  # stripping TorchScript's `__<i>` suffix to guess the logical name
)


def source_files() -> list[Path]:
    """The package's python modules (the six stage folders), without the code served on the NGC image."""
    files = []
    for stage in STAGES:
        files.extend(p for p in sorted((ROOT / stage).rglob("*.py")) if SERVED not in p.parents)
    return [p for p in files if "__pycache__" not in p.parts]


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@cache
def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


# -- layers (import-linter) ------------------------------------------------------------------------------------------


def lint_imports(config: Path, packages: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports CONFIG` against a plain `tritonfleet/` folder of links to the stage folders: grimp cannot see
    through the editable install's import hook (a namespace package mapped onto the checkout's folders)."""
    pytest.importorskip("importlinter", reason="import-linter (dev extra) missing")
    package = packages / "tritonfleet"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").touch()
    for stage in STAGES:
        link = package / stage
        if not link.exists():
            link.symlink_to(ROOT / stage, target_is_directory=True)
    command = [str(Path(sysconfig.get_path("scripts")) / "lint-imports"), str(config), "--no-cache"]
    env = {"PYTHONPATH": str(packages), "PATH": str(Path(sys.executable).parent), "NO_COLOR": "1"}
    return subprocess.run(command, cwd=packages, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_the_layer_contracts_hold(tmp_path):
    result = lint_imports(ROOT / "pyproject.toml", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and "KEPT" in result.stdout


def test_the_layer_contract_catches_a_stage_importing_its_sibling(tmp_path):
    """Without its ignore list (deploy/demo.py drives export and client), the layers contract must break: the
    contract is live, not vacuous."""
    config = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    without_ignores = re.sub(r"\nignore_imports = \[.*?\n\]\n", "\n", config, flags=re.DOTALL)
    assert without_ignores != config
    (tmp_path / "pyproject.toml").write_text(without_ignores, encoding="utf-8")
    result = lint_imports(tmp_path / "pyproject.toml", tmp_path / "packages")
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "tritonfleet.deploy.demo" in result.stdout


def test_the_checks_cover_every_stage_the_wheel_installs():
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    package_dir = pyproject["tool"]["setuptools"]["package-dir"]
    assert {name.removeprefix("tritonfleet.") for name in package_dir} == set(STAGES)


# -- one home per idea -----------------------------------------------------------------------------------------------


def test_one_thread_parameter_table():
    """Triton's thread parameter keys are spelled once (the engine format table); no other module keeps a
    THREAD_PARAMETERS / ENGINE_OF_PLATFORM / PLATFORMS table of its own."""
    spelled, tables = {}, {}
    for path in source_files():
        for node in ast.walk(tree(path)):
            if isinstance(node, ast.Constant) and node.value in THREAD_KEYS:
                spelled.setdefault(relative(path), set()).add(node.value)
        for node in tree(path).body:  # module-level literal tables
            if not isinstance(node, (ast.Assign, ast.AnnAssign)) or not isinstance(node.value, LITERAL_TABLES):
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [target.id for target in targets if isinstance(target, ast.Name) and target.id in TABLE_NAMES]
            if names:
                tables.setdefault(relative(path), []).extend(names)
    assert set(spelled) == {THREAD_TABLE_HOME}, f"thread parameter keys spelled outside {THREAD_TABLE_HOME}: {spelled}"
    assert set(tables) <= {THREAD_TABLE_HOME}, f"tables outside {THREAD_TABLE_HOME}: {tables}"


def test_one_serving_plan():
    """One ServingPlan class; a config's instance groups and dynamic batching are read and written through it."""
    classes, touches = [], {}
    for path in source_files():
        for node in ast.walk(tree(path)):
            if isinstance(node, ast.ClassDef) and node.name == "ServingPlan":
                classes.append(relative(path))
            if isinstance(node, ast.Attribute) and node.attr in PLAN_FIELDS:
                touches.setdefault(relative(path), set()).add(node.attr)
    assert classes == [SERVING_PLAN_HOME]
    elsewhere = {path: fields for path, fields in touches.items() if path not in PLAN_FIELD_HOMES | PLAN_FIELD_READERS}
    assert not elsewhere, f"config plan fields handled outside {sorted(PLAN_FIELD_HOMES)}: {elsewhere}"
    assert set(PLAN_FIELD_READERS) <= set(touches), "PLAN_FIELD_READERS names a module that no longer reads them"


def test_one_open_engine():
    """One `open_engine`; nothing else opens an ONNX Runtime session or loads a TorchScript module."""
    definitions, openers = [], {}
    for path in source_files():
        for node in ast.walk(tree(path)):
            if isinstance(node, ast.FunctionDef) and node.name == "open_engine":
                definitions.append(relative(path))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                function = node.func
                jit_load = (
                    function.attr == "load"
                    and isinstance(function.value, ast.Attribute)
                    and function.value.attr == "jit"
                )
                if function.attr == "InferenceSession" or jit_load:
                    openers.setdefault(relative(path), []).append(node.lineno)
    assert definitions == [ENGINE_HOME]
    assert set(openers) <= {ENGINE_HOME}, f"engines opened outside {ENGINE_HOME}: {openers}"


def test_no_tensor_role_guessed_from_a_name():
    guesses = []
    for path in source_files():
        if relative(path).startswith(ROLE_HOMES):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if any(pattern.search(line) for pattern in ROLE_GUESSES):
                guesses.append(f"{relative(path)}:{number}: {line.strip()}")
    assert not guesses, "roles guessed from names (ask tritonfleet.contract.pipeline):\n" + "\n".join(guesses)


# -- module size -----------------------------------------------------------------------------------------------------


def line_counts() -> dict[str, int]:
    return {relative(path): len(path.read_text(encoding="utf-8").splitlines()) for path in source_files()}


def test_no_module_over_the_limit_outside_the_allow_list():
    long = {path: lines for path, lines in line_counts().items() if lines > MAX_LINES and path not in LONG_MODULES}
    assert not long, f"modules over {MAX_LINES} lines (split them by job, or add a reason to LONG_MODULES): {long}"


def test_the_allow_list_names_only_modules_still_over_the_limit():
    counts = line_counts()
    stale = {path: counts.get(path, "gone") for path in LONG_MODULES if counts.get(path, 0) <= MAX_LINES}
    assert not stale, f"LONG_MODULES entries no longer needed (remove them): {stale}"
