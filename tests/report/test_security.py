"""Hostile class, file and config names: shown as text everywhere, nothing in the page is active."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import class_image, make_config
from markupsafe import escape
from PIL import Image
from playwright.sync_api import Browser
from test_browser import LoadedPage, browser, open_report  # noqa: F401  (browser: a fixture)

from reportgen.api import run_report
from reportgen.report.render import CSP

pytestmark = pytest.mark.browser

SCRIPT = "<script>alert(1)</script>"  # has a "/", so only possible as a label (config string)
IMG = '"><img src=x onerror=alert(1)>'
ENTITY = "&amp;lt;b&gt; 'q' \"dq\""
LABELS = [SCRIPT, IMG, ENTITY]
FOLDERS = ["0", IMG, ENTITY]  # "0" is class 0 by number; the others match their label
FILE_NAMES = ["<svg onload=alert(1)>", "' onmouseover='alert(1)", "&lt;i&gt;&#x3C;"]
BROKEN = "<iframe src=javascript:alert(1)>.png"  # not an image: ends up in the skipped list


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from tiny_models import tiny_net

    root = tmp_path_factory.mktemp("hostile")
    for ci, folder in enumerate(FOLDERS):
        d = root / "images" / folder
        d.mkdir(parents=True)
        for i in range(5):
            name = f"{FILE_NAMES[i % len(FILE_NAMES)]}{i}.png"
            Image.fromarray(class_image(ci, i)).save(d / name, format="PNG")
    (root / "images" / IMG / BROKEN).write_bytes(b"<script>alert(1)</script>")
    torch.save(tiny_net(3).state_dict(), root / "tiny.pt")
    cfg = make_config(
        root,
        {
            "model.weights": str(root / "tiny.pt"),
            "data.labels": LABELS,
            "output.formats": ["html", "pdf"],
        },
    )
    run_report(cfg)
    return root / "out"


@pytest.fixture(scope="module")
def loaded(browser: Browser, hostile_run: Path) -> Iterator[LoadedPage]:  # noqa: F811
    yield from open_report(browser, hostile_run / "report.html")


def test_page_loads_cleanly(loaded: LoadedPage) -> None:
    assert loaded.problems == []


def test_hostile_names_show_up_as_text(loaded: LoadedPage) -> None:
    text = loaded.page.inner_text("body")
    for label in LABELS:
        assert label in text, label
    assert f"{IMG}/{BROKEN}" in text  # the skipped file, by its full relative path
    for name in FILE_NAMES:
        assert name in text, name


def test_nothing_in_the_dom_is_active(loaded: LoadedPage) -> None:
    found = loaded.page.evaluate(
        """() => {
        const all = [...document.querySelectorAll('*')];
        return {
            tags: [...new Set(all.map(e => e.tagName.toLowerCase()))],
            handlers: all.flatMap(e => [...e.attributes].map(a => a.name))
                         .filter(n => n.toLowerCase().startsWith('on')),
            urls: all.flatMap(e => ['src', 'href', 'action', 'data', 'srcset', 'formaction']
                         .map(n => e.getAttribute(n)).filter(v => v !== null)),
            metas: [...document.querySelectorAll('meta')].map(m => m.outerHTML),
        };
    }"""
    )
    active = {"script", "iframe", "object", "embed", "svg", "form", "base", "link", "frame"}
    assert not active & set(found["tags"]), found["tags"]
    assert found["handlers"] == []
    assert all(u.startswith(("data:image/", "#")) for u in found["urls"]), [
        u[:60] for u in found["urls"] if not u.startswith(("data:image/", "#"))
    ]
    assert any("Content-Security-Policy" in m for m in found["metas"])


def test_csp_comes_before_any_user_content(hostile_run: Path) -> None:
    html = (hostile_run / "report.html").read_text()
    head = html.split("<title>")[0]
    assert f'<meta http-equiv="Content-Security-Policy" content="{escape(CSP)}">' in head
    assert "<script" not in html.lower()
    # Parsed as a browser would (the DOM test covers the live page): no tag or handler attribute.
    found: list[str] = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.extend(name for name, _ in attrs if name.startswith("on"))
            if tag in {"script", "iframe", "svg", "object", "embed"}:
                found.append(tag)

    Tags().feed(html)
    assert found == []


def test_summary_markdown_stays_inert(hostile_run: Path) -> None:
    md = (hostile_run / "summary.md").read_text()
    assert set(re.findall(r"(?<!\\)<(/?\w+)", md)) <= {"details", "/details", "summary", "/summary"}
    assert "1 skipped file(s)" in md


def test_summary_json_keeps_names_verbatim(hostile_run: Path) -> None:
    summary = json.loads((hostile_run / "summary.json").read_text())
    assert summary["data"]["class_names"] == LABELS
    assert [s["path"] for s in summary["data"]["skipped"]] == [f"{IMG}/{BROKEN}"]


def test_pdf_rendered_with_hostile_names(hostile_run: Path) -> None:
    assert (hostile_run / "report.pdf").read_bytes().startswith(b"%PDF-")
