"""report.html in a real browser: Debian's headless Chromium, driven by Playwright, network blocked.

Chromium is a system dependency (``make system-deps`` installs it), like poppler and Java: these
tests run everywhere the suite runs, with no skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config, write_image_folder
from playwright.sync_api import Browser, Page, Route, sync_playwright

from reportgen.api import run_report

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI containers run as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    # Anything that slips past the route below goes to a closed port instead of the internet.
    "--proxy-server=127.0.0.1:9",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@dataclass
class LoadedPage:
    page: Page
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return self.console_errors + self.page_errors + self.failed + self.blocked


def open_report(browser: Browser, html_file: Path) -> Iterator[LoadedPage]:
    """Load ``html_file`` with every other request aborted, recording what went wrong."""
    context = browser.new_context(java_script_enabled=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    loaded = LoadedPage(page)
    own_url = html_file.resolve().as_uri()

    def guard(route: Route) -> None:
        if route.request.url == own_url:
            route.continue_()
        else:
            loaded.blocked.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    page.on(
        "console", lambda m: loaded.console_errors.append(m.text) if m.type == "error" else None
    )
    page.on("pageerror", lambda e: loaded.page_errors.append(str(e)))
    page.on("requestfailed", lambda r: loaded.failed.append(f"{r.url}: {r.failure}"))
    page.goto(own_url, wait_until="load")
    try:
        yield loaded
    finally:
        context.close()


def images_state(page: Page) -> list[dict[str, Any]]:
    return page.eval_on_selector_all(
        "img",
        """imgs => imgs.map(i => ({
            src: i.src.slice(0, 30), complete: i.complete, width: i.naturalWidth,
            alt: i.getAttribute('alt')}))""",
    )


def broken_toc_links(page: Page) -> list[str]:
    return page.eval_on_selector_all(
        "nav.toc a",
        """links => links.filter(a => {
            const href = a.getAttribute('href');
            return !href.startsWith('#') || !document.getElementById(decodeURIComponent(href.slice(1)));
        }).map(a => a.getAttribute('href'))""",
    )


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from tiny_models import tiny_net

    root = tmp_path_factory.mktemp("browser")
    write_image_folder(root / "images")
    (root / "images" / "circle" / "broken.png").write_bytes(b"not a png")  # a skipped-files table
    torch.save(tiny_net(3).state_dict(), root / "tiny.pt")
    cfg = make_config(root, {"model.weights": str(root / "tiny.pt")})
    run_report(cfg)
    return root / "out" / "report.html"


@pytest.fixture(scope="module")
def loaded(browser: Browser, report_html: Path) -> Iterator[LoadedPage]:
    yield from open_report(browser, report_html)


# --------------------------------------------------------------------------- tests


def test_report_loads_without_errors(loaded: LoadedPage) -> None:
    assert loaded.problems == []
    assert loaded.page.title().endswith("on images")


def test_every_image_decodes(loaded: LoadedPage) -> None:
    imgs = images_state(loaded.page)
    assert len(imgs) > 20  # filters, neighbour thumbnails, embedding maps, ...
    bad = [i for i in imgs if not i["complete"] or i["width"] == 0]
    assert bad == []
    assert all(i["src"].startswith("data:image/") for i in imgs)
    assert all(i["alt"] is not None for i in imgs)


def test_every_toc_link_resolves(loaded: LoadedPage) -> None:
    count = loaded.page.eval_on_selector_all("nav.toc a", "links => links.length")
    assert count >= 5
    assert broken_toc_links(loaded.page) == []


def test_skipped_files_and_provenance_are_shown(loaded: LoadedPage) -> None:
    text = loaded.page.inner_text("body")
    assert "circle/broken.png" in text
    for needle in ("checkpoint SHA-256", "dataset manifest SHA-256", "Resolved configuration"):
        assert needle in text


def test_the_harness_sees_what_it_should(browser: Browser, tmp_path: Path) -> None:
    """A page breaking the rules is caught: blocked network, CSP-refused script, broken image."""
    bad = tmp_path / "bad.html"
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    bad.write_text(
        f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<title>bad</title></head><body><img src="https://example.org/x.png" alt="">'
        '<img src="data:image/png;base64,AAAA" alt=""><script>document.title = "ran"</script>'
        '<nav class="toc"><a href="#nowhere">x</a></nav></body></html>'
    )
    for page in open_report(browser, bad):
        assert page.console_errors, "CSP violations appear as console errors"
        assert page.page.title() == "bad", "the inline script must not run"
        assert [i for i in images_state(page.page) if i["width"] == 0]
        assert broken_toc_links(page.page) == ["#nowhere"]
