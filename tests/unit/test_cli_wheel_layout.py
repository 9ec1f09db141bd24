"""What a wheel ships, checked without building one (tests/integration/test_wheel.py builds and installs it).

- every folder of the five stage folders (and cli/) with an importable name is a listed package: setuptools ships a
  folder's files only as a package, and warns about data folders that are not listed;
- the served python models' code is package data that imports nothing from tritonfleet (it runs on the stock NGC
  image), and the committed model_repository/ copies equal it;
- the console script and the export find their files through the package, not through the checkout.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tritonfleet.export.esm2 import files as served_files

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def _package_folders() -> dict[str, Path]:
    """{package name: folder} of every folder under the mapped stage folders whose path is importable."""
    found = {}
    for package, folder in SETUPTOOLS["package-dir"].items():
        root = ROOT / folder
        for path in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
            parts = path.relative_to(root).parts
            if "__pycache__" in parts or not all(part.isidentifier() for part in parts):
                continue  # folders like `multi-gpu` are plain data of their parent package
            if not any(child.is_file() for child in path.rglob("*") if "__pycache__" not in child.parts):
                continue
            found[".".join((package, *parts))] = path
    return found


def test_every_importable_folder_is_a_listed_package():
    listed = set(SETUPTOOLS["packages"])
    missing = sorted(set(_package_folders()) - listed)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"
    stale = sorted(name for name in listed if name not in _package_folders())
    assert not stale, f"listed packages with no folder: {stale}"


def _folder_of(package: str) -> Path:
    for prefix, folder in sorted(SETUPTOOLS["package-dir"].items(), key=lambda item: -len(item[0])):
        if package == prefix or package.startswith(prefix + "."):
            return ROOT / folder / Path(*package[len(prefix) :].strip(".").split(".") if package != prefix else ())
    raise AssertionError(f"{package} is under no package-dir")


def test_every_data_file_is_shipped():
    """Each non-Python file in a package folder matches a package-data pattern (else the wheel would lack it)."""
    shipped = set()
    for package, patterns in SETUPTOOLS["package-data"].items():
        for pattern in patterns:
            shipped.update(path for path in _folder_of(package).glob(pattern) if path.is_file())
    data = {
        path
        for folder in _package_folders().values()
        for path in folder.iterdir()
        if path.is_file() and path.suffix not in (".py", ".pyc")
    }
    for folder in _package_folders().values():  # files in non-importable subfolders (multi-gpu/, ...)
        for sub in folder.iterdir():
            if sub.is_dir() and not sub.name.isidentifier():
                data.update(path for path in sub.rglob("*") if path.is_file() and path.suffix != ".pyc")
    missing = sorted(str(path.relative_to(ROOT)) for path in data - shipped)
    assert not missing, f"add a [tool.setuptools.package-data] pattern for: {missing}"


def test_the_console_script_is_declared():
    scripts = PYPROJECT["project"]["scripts"]
    assert scripts["tritonfleet"] == "tritonfleet.cli:main"


@pytest.mark.parametrize("model", sorted(served_files.SERVED_CODE))
def test_served_code_is_package_data_inside_the_package(model):
    package_root = Path(served_files.__file__).resolve().parents[1]  # the tritonfleet.export folder
    for source in served_files.SERVED_CODE[model].values():
        assert source.is_file(), source
        assert package_root in source.resolve().parents or source.resolve().parent.parent == package_root.parent, (
            f"{source} is outside the installed packages"
        )


@pytest.mark.parametrize("model", ["esm2_tokenizer", "esm2_bls"])
def test_served_models_import_nothing_from_tritonfleet(model):
    source = served_files.SERVED_SOURCES / model / "model.py"
    tree = ast.parse(source.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "tritonfleet" not in imported
    # what the NGC image's python has, plus the files export copies beside model.py
    allowed = {"__future__", "asyncio", "collections", "dataclasses", "json", "math", "time", "typing", "numpy",
               "triton_python_backend_utils", "esm2_tokens", "esm2_tokenizer_model"}  # fmt: skip
    assert imported <= allowed, imported


@pytest.mark.parametrize("model", ["esm2_tokenizer", "esm2_bls"])
def test_committed_copies_equal_the_package_data(model):
    committed = ROOT / "model_repository" / model / "1" / "model.py"
    packaged = served_files.SERVED_SOURCES / model / "model.py"
    assert committed.read_bytes() == packaged.read_bytes(), (
        f"{committed.relative_to(ROOT)} differs from {packaged.relative_to(ROOT)} (the source): edit the source and "
        f"re-run `make export` (or copy it)"
    )


def test_export_needs_no_checkout_folder():
    """Nothing the export reads is located through the checkout's model_repository/."""
    for sources in served_files.SERVED_CODE.values():
        for source in sources.values():
            assert "model_repository" not in source.parts
