"""The README's usage example runs as written."""

import re
from pathlib import Path

import pyro

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    pyro.clear_param_store()
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    assert namespace["loss"] == namespace["loss"]  # a number, not NaN
    assert any(k.startswith("pyro_discrete/rebar/z/") for k in pyro.get_param_store().keys())
    pyro.clear_param_store()
