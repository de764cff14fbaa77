"""The README's Python examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})


def test_ci_runs_the_readmes_setup_and_test_commands():
    # The README's set-up is one install command and one test command; CI runs exactly those (with
    # the triton extra added), so a missing install step fails CI before it fails a user.
    section = README.read_text().split("## Install and test", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
    assert commands == ['pip install torch==2.13.0 ".[test]"', "python -m pytest"], commands
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'pip install -q torch==2.13.0 "${repo}[test,triton]"' in ci
    assert "\npython -m pytest\n" in ci


def _layout_section() -> str:
    return README.read_text().split("## Layout\n", 1)[1].split("\n## ", 1)[0]


def test_readme_layout_names_every_top_level_folder_and_nothing_else():
    root = README.parent
    listed = {line.split()[0].rstrip("/") for line in
              re.search(r"```\n(.*?)```", _layout_section(), flags=re.S).group(1).splitlines() if line.strip()}
    tracked = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in
               {"build", "python", "diffrt-out", "diffrt-demo", "runs"}}
    files = {"CMakeLists.txt", "pyproject.toml"}
    python = {p for p in listed if p.startswith("python/")}
    assert listed - python - files == tracked, (listed, tracked)
    assert python == {"python/" + p.name for p in (root / "python").iterdir() if p.is_dir()}


def test_readme_layer_table_holds_every_module_of_the_package():
    package = README.parent / "python" / "diffrt"
    rows = re.findall(r"^\| (`.*?) \|", _layout_section(), flags=re.M)
    named = [m for row in rows for m in re.findall(r"`([\w.]+)`", row.split(" | ")[0])]
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in package.iterdir() if (p / "__init__.py").exists()} | {"_C"}
    assert sorted(named) == sorted(modules), (named, modules)
