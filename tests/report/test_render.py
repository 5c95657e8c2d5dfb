"""Rendering: escaping, image encoding, the size budget and atomic writes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config, write_image_folder
from report_fixtures import HOSTILE, context, noise

import reportgen.report.pdf
from reportgen.api import run_report
from reportgen.report.render import (
    Encoding,
    encode_picture,
    markdown_escape,
    render_html,
    render_markdown,
)
from reportgen.report.section import Figure, Picture, Section, Table, Text, Thumb
from reportgen.runtime.writes import write_all_atomic, write_atomic


def hostile_section() -> Section:
    thumb = Thumb(Picture(noise(8, 8), "photo"), label=HOSTILE, alt=HOSTILE)
    return Section(
        "demo",
        HOSTILE,
        how_to_read=HOSTILE,
        blocks=[
            Figure(Picture(noise(16, 16)), caption=HOSTILE, alt=HOSTILE),
            Table(HOSTILE, [HOSTILE, "n"], [[thumb, 1.5], [HOSTILE, None]]),
            Text(HOSTILE, "warning"),
        ],
    )


def test_every_user_string_is_escaped_in_html() -> None:
    html = render_html(context([hostile_section()], arch=HOSTILE), 10**9).html
    assert "<script" not in html.lower()
    assert "onerror=alert(1)>" not in html  # only the escaped form: onerror=alert(1)&gt;
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&amp;amp;" in html  # an entity in a name is shown, not interpreted
    assert "&#34;&gt;&lt;img" in html


def test_markdown_summary_escapes_hostile_names() -> None:
    md = render_markdown(context([hostile_section()], arch=HOSTILE))
    # The only raw (unescaped) tags are our own <details>/<summary>.
    tags = set(re.findall(r"(?<!\\)<(/?\w+)", md))
    assert tags <= {"details", "/details", "summary", "/summary"}, tags
    assert "](" not in md.replace("\\](", "")  # no live links either
    assert "\\<script\\>" in md
    assert "\\&amp;" in md
    assert len(md.encode()) < 4000


def test_markdown_escape_keeps_text_inert() -> None:
    assert markdown_escape("[x](javascript:1)") == "\\[x\\]\\(javascript:1\\)"
    assert markdown_escape("a\nb") == "a b"
    assert markdown_escape("<b>") == "\\<b\\>"


def test_photos_are_jpeg_line_art_is_png_and_bytes_are_stable() -> None:
    pixels = noise(40, 30)
    photo, w, h = encode_picture(Picture(pixels, "photo"), Encoding())
    line, _, _ = encode_picture(Picture(pixels, "line"), Encoding())
    assert photo.startswith("data:image/jpeg;base64,") and (w, h) == (30, 40)
    assert line.startswith("data:image/png;base64,")
    assert encode_picture(Picture(pixels.copy(), "photo"), Encoding()) == (photo, w, h)
    small, w2, h2 = encode_picture(Picture(pixels, "photo"), Encoding(60, 0.5, 1.0))
    assert (w2, h2) == (15, 20) and len(small) < len(photo)


def test_encoding_steps_reach_a_floor() -> None:
    enc: Encoding | None = Encoding()
    steps = 0
    while enc is not None:
        last, enc = enc, enc.smaller()
        steps += 1
    assert steps < 20
    assert last.photo_quality < 85 and last.photo_scale <= 0.5 and last.line_scale <= 0.5


def test_size_budget_shrinks_images_first() -> None:
    big = Section("demo", "Big").add(
        Figure(Picture(noise(300, 300), "photo"), caption="photo", alt="photo"),
        Figure(Picture(noise(200, 200, 1), "line"), caption="line", alt="line"),
    )
    full = render_html(context([big]), 10**9)
    assert full.encoding == Encoding() and not full.over_budget
    full_size = len(full.html.encode())
    fitted = render_html(context([big]), int(full_size * 0.6))
    assert not fitted.over_budget
    assert len(fitted.html.encode()) <= full_size * 0.6
    assert fitted.encoding.photo_quality < 85  # photos give way first
    hopeless = render_html(context([big]), 1000)
    assert hopeless.over_budget and hopeless.encoding.smaller() is None


def test_write_atomic_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.html"
    write_atomic(target, "one")
    write_atomic(target, b"two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_write_all_atomic_failure_keeps_every_old_file(tmp_path: Path) -> None:
    a, b = tmp_path / "report.html", tmp_path / "summary.json"
    a.write_text("old html")
    b.write_text("old json")
    bad: Any = object()  # not bytes: fails while staging the second file
    with pytest.raises(TypeError):
        write_all_atomic({a: "new html", b: bad})
    assert a.read_text() == "old html" and b.read_text() == "old json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "summary.json"]


# --------------------------------------------------------------------------- through the pipeline


@pytest.fixture
def tiny_setup(tmp_path: Path, tiny_weights: Path) -> Path:
    write_image_folder(tmp_path / "images")
    return tmp_path


FAST = ["filters", "neighbors"]


def test_tiny_budget_warns_and_reports_final_size(tiny_setup: Path, tiny_weights: Path) -> None:
    cfg = make_config(
        tiny_setup,
        {"model.weights": str(tiny_weights), "output.max_html_mb": 0.001},
        analyses=FAST,
    )
    result = run_report(cfg)
    assert len(result.warnings) == 1
    assert "over its 0.001 MB budget" in result.warnings[0]
    assert "final size" in result.warnings[0]
    out = json.loads((tiny_setup / "out" / "summary.json").read_text())["output"]
    html = (tiny_setup / "out" / "report.html").read_bytes()
    assert out["html_bytes"] == len(html)
    assert out["html_over_budget"] is True  # nothing this small can hold a report
    assert out["image_encoding"]["photo_quality"] < 85


def test_failed_pdf_leaves_previous_report_intact(
    tiny_setup: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tiny_setup / "out"
    overrides = {"model.weights": str(tiny_weights), "output.formats": ["html", "pdf"]}
    run_report(make_config(tiny_setup, overrides, analyses=FAST))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "timings.json"}
    assert {"report.html", "report.pdf", "summary.json", "summary.md"} <= set(before)

    def interrupt(html: str) -> bytes:
        raise KeyboardInterrupt  # Ctrl-C while the PDF renders

    monkeypatch.setattr(reportgen.report.pdf, "html_to_pdf", interrupt)
    # A different seed changes the report, so a partial replacement would show.
    changed = {**overrides, "run.seed": 7}
    with pytest.raises(KeyboardInterrupt):
        run_report(make_config(tiny_setup, changed, analyses=FAST))
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "timings.json"}
    assert after == before
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]

    monkeypatch.undo()
    run_report(make_config(tiny_setup, changed, analyses=FAST))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["provenance"]["seed"] == 7
    assert (out / "report.html").read_bytes() != before["report.html"]
    assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-"


def test_pdf_error_keeps_what_was_computed(
    tiny_setup: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PDF that cannot be rendered costs neither the HTML nor summary.json: exit code 1."""
    out = tiny_setup / "out"
    overrides = {"model.weights": str(tiny_weights), "output.formats": ["html", "pdf"]}
    run_report(make_config(tiny_setup, overrides, analyses=FAST))
    assert (out / "report.pdf").exists()

    def broken(html: str) -> bytes:
        raise OSError("cannot load library 'libpango-1.0-0'")

    monkeypatch.setattr(reportgen.report.pdf, "html_to_pdf", broken)
    warnings: list[str] = []
    result = run_report(
        make_config(tiny_setup, {**overrides, "run.seed": 7}, analyses=FAST), warn=warnings.append
    )
    assert result.exit_code == 1
    assert all(s.status == "ok" for s in result.sections)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["provenance"]["seed"] == 7
    assert "libpango" in summary["output"]["failed"][0]
    assert any("report.pdf could not be rendered" in w for w in warnings)
    assert (out / "report.html").exists() and (out / "summary.md").exists()
    assert not (out / "report.pdf").exists()  # the old PDF no longer matches: removed
