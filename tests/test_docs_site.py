"""The documentation site works without a network: no page loads a remote script, stylesheet
or font, MathJax is served from ``_static``, and (where Chromium is installed) the math is
really typeset by a browser that cannot resolve any host.

The site is built with the project's own ``docs/conf.py`` (``sphinx-build -c docs``, same
extensions, theme and static files) from one page with inline math, display math and a wide
table: a few seconds, where the full site with its API pages takes fifteen.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]

PAGE = r"""# Offline site check

Inline math, $\mathbb E_{q(b \mid \theta)}[f(b)]$, and a display:

$$
\mathcal L_K(x) = \mathbb E\Big[\log \frac1K \sum_{k=1}^K \frac{p(x, z_k)}{q(z_k \mid x)}\Big]
$$

| estimator | gradient estimate | unbiased | ms / step | steps |
|---|---|---|---:|---:|
| REBAR | $[f(b) - \eta f(\sigma_\lambda(\tilde z))] \partial_\theta \log q(b)$ | yes | 8.7 | 13k |
"""

# Elements whose URL the browser fetches on its own when it renders the page.
FETCHED = {"script": "src", "img": "src", "iframe": "src", "source": "src", "embed": "src"}


class _Resources(HTMLParser):
    """Collects the URLs a page makes the browser fetch (scripts, stylesheets, images)."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.stylesheets: list[str] = []
        self.fetched: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "link" and {"stylesheet", "preload", "icon"} & set(a.get("rel", "").split()):
            self.stylesheets.append(a.get("href", ""))
            self.fetched.append(a.get("href", ""))
        elif tag in FETCHED and a.get(FETCHED[tag]):
            self.fetched.append(a[FETCHED[tag]])
            if tag == "script":
                self.scripts.append(a["src"])


def _resources(page: Path) -> _Resources:
    parser = _Resources()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def _is_remote(url: str) -> bool:
    # "https://cdn..." and the scheme-relative "//cdn..." both leave the machine.
    parts = urlsplit(url)
    return bool(parts.scheme not in ("", "file") or parts.netloc)


def _local_file(page: Path, url: str) -> Path:
    return (page.parent / urlsplit(url).path).resolve()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("docs_src")
    out = tmp_path_factory.mktemp("docs_html")
    (src / "index.md").write_text(PAGE, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
        + ["-c", str(ROOT / "docs"), str(src), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_pages_fetch_nothing_remote(site: Path) -> None:
    pages = sorted(site.glob("**/*.html"))
    assert pages, "the build wrote no page"
    for page in pages:
        for url in _resources(page).fetched:
            assert not _is_remote(url), f"{page.name} loads {url} from the network"
            assert _local_file(page, url).is_file(), f"{page.name} loads {url}: not in the site"


def test_stylesheets_are_local_and_include_the_table_rules(site: Path) -> None:
    sheets = _resources(site / "index.html").stylesheets
    assert any(Path(urlsplit(s).path).name == "tables.css" for s in sheets), sheets
    remote_in_css = re.compile(r"""(@import\s+(url\()?|url\()\s*['"]?\s*(https?:)?//""")
    for css in site.glob("_static/**/*.css"):
        match = remote_in_css.search(css.read_text(encoding="utf-8", errors="replace"))
        assert match is None, f"{css.relative_to(site)} fetches {match.group(0)}..."


def test_mathjax_is_served_from_static(site: Path) -> None:
    page = site / "index.html"
    mathjax = [s for s in _resources(page).scripts if "mathjax" in s.lower()]
    assert len(mathjax) == 1, _resources(page).scripts
    script = _local_file(page, mathjax[0])
    assert script.is_relative_to(site / "_static" / "mathjax")
    assert script.stat().st_size > 100_000  # the real bundle, not a stub
    # The CommonHTML output loads its fonts, and the TeX input its extensions, next to it.
    fonts = site / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2"
    assert (fonts / "MathJax_Main-Regular.woff").is_file()
    assert (site / "_static" / "mathjax" / "input" / "tex" / "extensions").is_dir()
    # The math is left in the page for MathJax (not rendered to images at build time).
    assert r"\(\mathbb E_{q(b \mid \theta)}[f(b)]\)" in page.read_text(encoding="utf-8")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Chromium (apt: chromium)")
def test_math_is_typeset_by_a_browser_without_network(site: Path) -> None:
    proc = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            # Every host name fails to resolve: a page that needed the network would stay raw.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--virtual-time-budget=10000",
            "--dump-dom",
            (site / "index.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = proc.stdout
    assert proc.returncode == 0 and "</html>" in dom, proc.stderr[-2000:]
    # Three formulas (inline, display, in the table) become MathJax containers, and no TeX
    # delimiter is left as text.
    assert dom.count("<mjx-container") == 3, dom[-2000:]
    assert r"\(" not in dom and r"\[" not in dom
