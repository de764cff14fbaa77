"""diffrt's import graph follows its layers (the import-linter contracts in pyproject.toml).

Lowest first: _C → ops → schedules / denoiser → sampling → models → data / images → train →
pipelines / integrations → eval → info → cli. A module imports only from its own layer or below,
sibling modules form no cycle, a private module is imported only inside its own package, and a
private name is imported only from a private module.

The contracts are checked on a copy of the source tree laid out as the wheel lays it out, with
``site`` disabled, so an editable install's import hooks cannot change what is analysed.
"""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

importlinter = pytest.importorskip("importlinter", reason="import-linter is in the [test] extra")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "diffrt"


def _wheel_tree(dest: Path) -> Path:
    """python/diffrt with kernels/ merged into diffrt/kernels, as pyproject's wheel.packages maps it."""
    shutil.copytree(PACKAGE, dest / "diffrt", ignore=shutil.ignore_patterns("__pycache__", "*.so", "weights"))
    for source in (ROOT / "kernels").glob("*.py"):
        shutil.copy(source, dest / "diffrt" / "kernels" / source.name)
    return dest


def _lint_imports(tree: Path) -> subprocess.CompletedProcess:
    site_packages = str(Path(importlinter.__file__).resolve().parents[1])
    code = ("import sys\nfrom importlinter.cli import lint_imports\n"
            f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True))\n")
    env = {"PYTHONPATH": f"{tree}:{site_packages}", "PATH": "/usr/bin:/bin", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-S", "-c", code], cwd=tree, env=env, capture_output=True, text=True, timeout=120)


def test_the_import_graph_keeps_every_contract(tmp_path):
    result = _lint_imports(_wheel_tree(tmp_path))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("importer, line, contract", [
    ("ops/_checks.py", "from ..pipelines import ImagenEditorPipeline", "layers"),
    ("models/clip.py", "from ..train import Trainer", "layers"),
    ("schedules.py", "from .sampling import ddim_sample", "layers"),
    ("data/world.py", "from ..pipelines import _common", "private"),
])
def test_an_import_against_the_layers_is_caught(tmp_path, importer, line, contract):
    tree = _wheel_tree(tmp_path)
    path = tree / "diffrt" / importer
    path.write_text(path.read_text() + f"\n{line}  # injected\n")
    result = _lint_imports(tree)
    assert result.returncode != 0, result.stdout[-3000:]
    assert "BROKEN" in result.stdout and "injected" not in result.stderr, result.stdout[-3000:]


def _private_name_imports():
    """(file, line, module, name) for every ``from M import _name`` where M is not a private module."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            module = "." * node.level + (node.module or "")
            if module.rsplit(".", 1)[-1].startswith("_") and not module.endswith("__"):
                continue  # a private module's helpers are meant for its package (the contract checks who)
            for alias in node.names:
                name = alias.name
                if name.startswith("_") and not name.startswith("__"):
                    if node.module is None and (path.parent / f"{name}.py").exists() or name == "_C":
                        continue  # `from . import _module`: a module, covered by the private-modules contract
                    found.append((str(path.relative_to(ROOT)), node.lineno, module, name))
    return found


def test_no_module_imports_another_modules_private_name():
    assert _private_name_imports() == []
