"""The source tree never stands in for an installed package.

``python -m pytest`` (and any ``python`` started in the repository root) puts the root on
``sys.path``, so a top-level folder that is a regular package would shadow an installed
distribution of the same import name — e.g. ``kernels/`` against the ``kernels`` distribution that
transformers depends on, which broke every diffusers model load.
"""

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

import diffrt
import diffrt.kernels

ROOT = Path(__file__).resolve().parents[1]


def _top_level_folders():
    return sorted(p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith((".", "_")) and p.name.isidentifier())


def _resolve_from_root(name: str):
    """Where ``import name`` lands for a Python started in the repository root (its cwd first on sys.path)."""
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.find_spec({name!r})\n"
        "print(json.dumps(None if spec is None else {'origin': spec.origin, "
        "'locations': list(spec.submodule_search_locations or [])}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _inside_repository(path) -> bool:
    if not path:
        return False
    p = Path(path).resolve()
    return p == ROOT or ROOT in p.parents


def test_no_top_level_folder_shadows_an_installed_distribution():
    installed = importlib.metadata.packages_distributions()  # import name -> distributions
    shadowed = []
    for name in _top_level_folders():
        if name not in installed:
            continue
        spec = _resolve_from_root(name)
        places = [spec["origin"], *spec["locations"]] if spec else []
        # A namespace portion (no __init__.py) yields to the installed regular package; a regular
        # package in the root would win, and its origin would lie inside the repository.
        if places and all(map(_inside_repository, places)):
            shadowed.append(f"{name}/ shadows the installed distribution {installed[name]} (resolves to {places})")
    assert not shadowed, "; ".join(shadowed)


@pytest.mark.parametrize("folder", ["kernels"])
def test_layout_folders_holding_modules_are_not_packages(folder):
    # kernels/ ships as diffrt.kernels; its __init__.py lives in python/diffrt/kernels/.
    assert (ROOT / folder).is_dir()
    assert not (ROOT / folder / "__init__.py").exists(), f"{folder}/__init__.py makes the folder importable as {folder!r}"


def test_tests_import_the_installed_diffrt():
    assert importlib.metadata.distribution("diffrt").version == diffrt.__version__
    package_dir = Path(diffrt.__file__).resolve().parent
    assert package_dir != ROOT / "diffrt", "diffrt was imported from the repository root, not the installed package"
    # The Triton kernels are the installed package's subpackage, never the top-level folder.
    assert Path(diffrt.kernels.__file__).resolve().parent.name == "kernels"
    assert diffrt.kernels.__name__ == "diffrt.kernels"
    assert hasattr(diffrt, "_C"), "the compiled extension is part of the installed package"

