"""Display strings for names that are not UTF-8 and for lone surrogates."""

from __future__ import annotations

import json
import os

import pytest

from reportgen.report.figures import figure_to_picture, new_figure
from reportgen.report.text import display_name, safe_data, safe_text


def test_undecodable_bytes_are_shown_as_hex_escapes() -> None:
    name = os.fsdecode(b"caf\xe9/\xff\xfeimg.png")  # what os.listdir gives for these bytes
    assert display_name(name) == "caf\\xe9/\\xff\\xfeimg.png"
    # Each escape names the byte on disk: the reference is the bytes themselves.
    raw = os.fsencode(name)
    assert raw == b"caf\xe9/\xff\xfeimg.png"
    expected = "".join(chr(b) if b < 0x80 else f"\\x{b:02x}" for b in raw)
    assert display_name(name) == expected


def test_other_lone_surrogates_and_control_characters() -> None:
    assert safe_text("title \ud800 end") == "title \\ud800 end"
    assert safe_text("two\nlines\tand é ✓") == "two\nlines\tand é ✓"  # kept for captions
    assert display_name("a\nb\tc\x7f.png") == "a\\x0ab\\x09c\\x7f.png"  # one printable line
    assert safe_text(42) == "42"
    plain = "ordinary/name.png"
    assert safe_text(plain) is plain  # no copy for the common case


@pytest.mark.parametrize(
    "text", ["title \ud800", os.fsdecode(b"img\xff.png"), "mixed \udcff and \ud83d"]
)
def test_safe_text_always_encodes_and_renders(text: str) -> None:
    with pytest.raises(UnicodeEncodeError):
        text.encode("utf-8")  # the raw string breaks HTML, JSON files and PDFs ...
    raw = new_figure(2.0, 1.0)
    raw.suptitle(text)
    with pytest.raises((TypeError, UnicodeEncodeError)):
        figure_to_picture(raw)  # ... and matplotlib's text rendering
    shown = safe_text(text)
    shown.encode("utf-8")
    json.dumps({"title": shown}, ensure_ascii=False).encode("utf-8")
    fig = new_figure(2.0, 1.0)
    fig.suptitle(shown)
    picture = figure_to_picture(fig)  # matplotlib renders it
    assert picture.pixels.ndim == 3


def test_safe_data_makes_a_summary_serialisable_as_strict_json() -> None:
    name = os.fsdecode(b"im\xff.png")
    summary = {"data": {"skipped": [{"path": name, "reason": "x"}], name: (1, "\ud800")}, "n": 3}
    with pytest.raises(UnicodeEncodeError):
        json.dumps(summary, ensure_ascii=False).encode("utf-8")
    text = json.dumps(safe_data(summary), ensure_ascii=False)
    text.encode("utf-8")
    assert json.loads(text) == {
        "data": {
            "skipped": [{"path": "im\\xff.png", "reason": "x"}],
            "im\\xff.png": [1, "\\ud800"],
        },
        "n": 3,
    }
