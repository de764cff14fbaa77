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
