"""The PDF: WeasyPrint fetches nothing but data: URIs, and poppler sees the expected, non-blank pages."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import make_config, write_image_folder
from PIL import Image

from reportgen.api import run_report
from reportgen.report.pdf import ForbiddenURL, html_to_pdf

PAGE = "<!DOCTYPE html><html><head><title>t</title>{head}</head><body><p>x</p>{body}</body></html>"
PIXEL_GIF = "data:image/gif;base64,R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw=="


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A local TCP port that records whether anything connected to it."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.2)
    yield srv
    srv.close()


def connected(srv: socket.socket) -> bool:
    try:
        conn, _ = srv.accept()
    except TimeoutError:
        return False
    conn.close()
    return True


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(path)
    return path


def references(secret: Path, port: int) -> dict[str, tuple[str, str]]:
    """name -> (head, body) of a page that tries to load something from outside."""
    file_url, http_url = secret.as_uri(), f"http://127.0.0.1:{port}/x"
    return {
        "img file://": ("", f'<img src="{file_url}" alt="">'),
        "img http": ("", f'<img src="{http_url}.png" alt="">'),
        "img relative": ("", f'<img src="{secret.name}" alt="">'),
        "img absolute path": ("", f'<img src="{secret}" alt="">'),
        "stylesheet link": (f'<link rel="stylesheet" href="{http_url}.css">', ""),
        "css @import": (f'<style>@import url("{file_url}");</style>', ""),
        "css background": ("", f'<div style="background-image: url({http_url}.png)">x</div>'),
        "css relative url": ("", '<div style="background-image: url(bg.png)">x</div>'),
        "font-face": (
            f"<style>@font-face {{ font-family: f; src: url({http_url}.ttf); }}"
            " p { font-family: f; }</style>",
            "",
        ),
        "object": ("", f'<object data="{file_url}" type="image/png"></object>'),
        "attachment": ("", f'<a rel="attachment" href="{file_url}">a</a>'),
        "svg image": (
            "",
            "<img alt='' src=\"data:image/svg+xml;utf8,<svg xmlns='http://www.w3.org/2000/svg' "
            f"width='8' height='8'><image href='{file_url}' width='8' height='8'/></svg>\">",
        ),
    }


@pytest.mark.parametrize("case", list(references(Path("/x/secret.png"), 1)))
def test_anything_but_data_uris_is_refused(
    case: str, secret: Path, listener: socket.socket
) -> None:
    head, body = references(secret, listener.getsockname()[1])[case]
    with pytest.raises(ForbiddenURL, match="may only embed data: URIs"):
        html_to_pdf(PAGE.format(head=head, body=body))
    assert not connected(listener), "WeasyPrint opened a connection"


def test_a_refused_file_is_not_embedded(secret: Path, tmp_path: Path) -> None:
    """Even if a fetch error were swallowed, the local file's pixels must not reach the PDF."""
    html = PAGE.format(head="", body=f'<img src="{secret.as_uri()}" alt="">')
    with pytest.raises(ForbiddenURL):
        html_to_pdf(html)
    # The same picture as a data URI does produce an image object: the check below is meaningful.
    with_data = html_to_pdf(PAGE.format(head="", body=f'<img src="{PIXEL_GIF}" alt="">'))
    assert b"/Subtype /Image" in with_data


def test_data_uris_and_links_are_fine() -> None:
    body = f'<img src="{PIXEL_GIF}" alt=""><a href="#x">in</a><a href="https://example.org/">out</a><p id="x">t</p>'
    pdf = html_to_pdf(PAGE.format(head="", body=body))
    assert pdf.startswith(b"%PDF-")


def test_pdf_is_deterministic_and_undated() -> None:
    html = PAGE.format(head="", body="<h1>same</h1>")
    a, b = html_to_pdf(html), html_to_pdf(html)
    assert a == b
    assert b"/CreationDate" not in a and b"/ModDate" not in a
    assert re.search(rb"/ID \[", a), "the trailer carries a (content-derived) /ID"


# --------------------------------------------------------------------------- the report's PDF


@pytest.fixture(scope="module")
def report_pdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from tiny_models import tiny_net

    root = tmp_path_factory.mktemp("pdf")
    write_image_folder(root / "images")
    torch.save(tiny_net(3).state_dict(), root / "tiny.pt")
    cfg = make_config(
        root,
        {"model.weights": str(root / "tiny.pt"), "output.formats": ["pdf"]},
        analyses=["filters", "neighbors", "embedding"],
    )
    run_report(cfg)
    assert not (root / "out" / "report.html").exists()  # pdf only, as asked
    return root / "out" / "report.pdf"


def pdf_pages(pdf: Path) -> int:
    info = subprocess.run(["pdfinfo", str(pdf)], check=True, capture_output=True, text=True)
    fields = dict(line.split(":", 1) for line in info.stdout.splitlines() if ":" in line)
    assert fields["Page size"].strip().startswith("595.276 x 841.89"), fields["Page size"]  # A4
    return int(fields["Pages"])


def pdf_text(pdf: Path, page: int) -> str:
    return subprocess.run(
        ["pdftotext", "-layout", "-f", str(page), "-l", str(page), str(pdf), "-"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def test_report_pdf_pages_toc_and_running_header(report_pdf: Path) -> None:
    pages = pdf_pages(report_pdf)
    # Page 1: summary and contents; then one chapter per page at least: 3 sections + provenance.
    assert pages >= 5
    first = pdf_text(report_pdf, 1)
    toc = dict(re.findall(r"\d+\. ([A-Z][^.\n]*?)\s*\.{3,}\s*(\d+)", first))
    assert len(toc) == 5 and list(toc)[:2] == ["Run summary", "First-layer filters"], toc
    assert toc["Run summary"] == "1"
    # The TOC's page numbers are right: the provenance chapter (the last, with the resolved
    # config; it may take a few pages) starts on the page the TOC names.
    provenance = int(toc["Provenance"])
    assert provenance <= pages and "Provenance" in pdf_text(report_pdf, provenance)
    assert "Provenance" not in pdf_text(report_pdf, provenance - 1)
    numbers = [int(n) for n in toc.values()]
    assert numbers == sorted(numbers) and len(set(numbers[1:])) == len(numbers) - 1
    # Each chapter starts on the page the TOC names, at the top, under the running header.
    for title, number in toc.items():
        if title == "Run summary":
            continue
        text = pdf_text(report_pdf, int(number))
        assert "tiny_models.py:tiny_net" in text.splitlines()[0]  # running header: the model
        assert title[:30] in " ".join(text.split()), (title, number)
        assert f"page {number} of {pages}" in text


def test_no_page_is_blank(report_pdf: Path, tmp_path: Path) -> None:
    pages = pdf_pages(report_pdf)
    subprocess.run(
        ["pdftoppm", "-png", "-r", "30", str(report_pdf), str(tmp_path / "p")], check=True
    )
    pngs = sorted(tmp_path.glob("p-*.png"))
    assert len(pngs) == pages
    for png in pngs:
        gray = np.asarray(Image.open(png).convert("L"))
        h = gray.shape[0]
        body = gray[int(h * 0.09) : int(h * 0.91)]  # between the running header and the footer
        inked = float((body < 200).mean())
        assert inked > 0.002, f"{png.name} looks blank ({inked:.4f} inked)"


def test_pdf_size_recorded(report_pdf: Path) -> None:
    summary = json.loads((report_pdf.parent / "summary.json").read_text())
    assert summary["output"]["pdf_bytes"] == report_pdf.stat().st_size
