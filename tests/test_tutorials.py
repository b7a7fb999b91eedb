"""The tutorials in docs/tutorials run as written, at a small size.

Each page's ```python blocks are executed in order in one namespace, as a reader would run
them. A page starts with its size knobs (``STEPS = 300``, ``NUM_SAMPLES = 100``), which are
rewritten to the small values in :data:`SMALL` so that every page runs in seconds; nothing
else in the code is changed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyro
import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"
TUTORIALS = DOCS / "tutorials"
PAGES = sorted(p for p in TUTORIALS.glob("*.md") if p.name != "index.md")

#: knob -> the value the tests use (the pages use larger ones)
SMALL = {"STEPS": 3, "NUM_SAMPLES": 4}
KNOB = re.compile(rf"^(?P<name>{'|'.join(SMALL)}) = (?P<value>\d+)(?P<rest>\s*(#.*)?)$", re.M)
BLOCK = re.compile(r"^```python\n(?P<code>.*?)^```\s*$", re.S | re.M)


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """``(first line number, code)`` of each python block of a page, in order."""
    text = page.read_text()
    return [
        (text.count("\n", 0, m.start("code")) + 1, m.group("code")) for m in BLOCK.finditer(text)
    ]


def shrink(code: str) -> str:
    return KNOB.sub(
        lambda m: f"{m.group('name')} = {SMALL[m.group('name')]}{m.group('rest')}", code
    )


def test_pages_found_and_listed() -> None:
    assert [p.stem for p in PAGES] == sorted(
        [
            "first_vae",
            "swapping_estimators",
            "per_site_and_surrogates",
            "mixture_of_experts",
            "diagnostics",
            "policy_gradients",
        ]
    )
    index = (TUTORIALS / "index.md").read_text()
    toctree = re.search(r"```\{toctree\}\n(.*?)```", index, re.S)
    assert toctree is not None, "docs/tutorials/index.md has no toctree"
    listed = [line.strip() for line in toctree.group(1).splitlines()]
    for page in PAGES:
        assert page.stem in listed, f"{page.name} is missing from the tutorials' toctree"
    assert "tutorials/index" in (DOCS / "index.md").read_text()


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_knobs(page: Path) -> None:
    blocks = python_blocks(page)
    assert blocks, f"{page.name} has no python blocks"
    first_line = blocks[0][1].splitlines()[0]
    assert first_line.startswith("STEPS = "), (
        f"{page.name}: the first line of the first python block must be the STEPS knob"
    )
    assert KNOB.match(first_line), f"{page.name}: {first_line!r} is not a knob the tests shrink"


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_tutorial_runs(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # Files a page writes (checkpoints) land in tmp_path; one intra-op thread, because the
    # steps are tiny and threads stall on a loaded machine (see tests/test_docs.py).
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pyro.clear_param_store()
    namespace: dict = {"__name__": f"tutorial_{page.stem}"}
    try:
        for line, code in python_blocks(page):
            # padding keeps the page's own line numbers in tracebacks
            source = "\n" * (line - 1) + shrink(code)
            # dont_inherit: the page runs without this module's __future__ imports
            exec(compile(source, str(page), "exec", dont_inherit=True), namespace)
    finally:
        pyro.clear_param_store()
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert out.strip(), f"{page.name} printed nothing"
    assert not re.search(r"\bnan\b", out, re.I), f"{page.name} printed NaN:\n{out}"
