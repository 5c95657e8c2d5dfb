"""The "Changes against the baseline" chapter and the Markdown of a comparison."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from report_fixtures import HOSTILE, context

from reportgen.compare.folders import folder_thumbnails
from reportgen.compare.markdown import compare_markdown
from reportgen.compare.metrics import (
    CompareResult,
    ExplanationMaps,
    build_compare,
    compare_summary,
)
from reportgen.compare.present import compare_section, confusion_difference_figure
from reportgen.report.gates import evaluate_gates, known_metric_names, parse_gates
from reportgen.report.predictions import prediction_set
from reportgen.report.render import render_html
from reportgen.report.section import Figure, Table, Text, Thumb

LABELS = [0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 1, 2]
OLD = [0, 0, 1, 1, 1, 2, 2, 0, 2, 0, 0, 1]
NEW = [0, 1, 1, 1, 0, 2, 2, 2, 2, 2, 1, 2]
NAMES = ["cat", HOSTILE, "dog"]


def sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def result(labels: list[int] = LABELS, **kw: object) -> CompareResult:
    n = len(labels)
    paths = [f"img{i}.png" for i in range(n)]
    shas = [sha(i) for i in range(n)]

    def probs(preds: list[int], base: float) -> np.ndarray:
        p = np.full((n, 3), 0.1)
        for i, c in enumerate(preds):
            p[i, c] = base + 0.01 * i
        return p / p.sum(axis=1, keepdims=True)

    old = prediction_set(paths, shas, labels, NAMES, probs(OLD, 0.7), probabilities=True)
    new = prediction_set(paths, shas, labels, NAMES, probs(NEW, 0.5), probabilities=True)
    return build_compare(old, new, **kw)  # type: ignore[arg-type]


def thumbs_for(paths: Sequence[str]) -> list[np.ndarray | None]:
    return [np.full((8, 8, 3), int(p[3:].split(".")[0]) * 10, np.uint8) for p in paths]


def tables(section: object) -> dict[str, Table]:
    return {b.caption: b for b in section.blocks if isinstance(b, Table)}  # type: ignore[attr-defined]


def test_headline_flips_galleries_and_per_class() -> None:
    r = result(notes=["The data manifests differ: only 12 images are compared."])
    s = compare_section(r, thumbnails=thumbs_for, show=2)
    assert s.name == "compare" and s.title == "Changes against the baseline"
    first = s.blocks[0]
    assert isinstance(first, Text) and first.kind == "warning" and "manifests differ" in first.text
    t = tables(s)
    head = t["Headline: baseline → new on 12 matched images"]
    rows = {row[0]: row[1:] for row in head.rows}
    assert rows["accuracy (12 labelled images)"][:2] == ["58.33 %", "58.33 %"]
    assert str(rows["accuracy (12 labelled images)"][2]).startswith("+0.00 pp (95 % CI ")
    assert rows["McNemar exact test, p"][2] == "1.0000"
    assert rows["negative flips (right → wrong)"][2] == "3 (25.00 %)"
    assert rows["positive flips (wrong → right)"][2] == "3 (25.00 %)"
    assert rows["linear CKA of the penultimate features"][2] == (
        "left out: penultimate features of both models were not given"
    )
    # Galleries: the 2 most confident of each kind, with both predictions and confidences.
    neg = t["Negative flips: right before, wrong now (most confident new prediction first); 2 of 3"]
    cells = neg.rows[0]
    assert all(isinstance(c, Thumb) for c in cells)
    assert [c.alt for c in cells] == ["img9.png", "img4.png"]  # type: ignore[union-attr]
    p9 = r.new.confidence[9]
    assert cells[0].label == (  # type: ignore[union-attr]
        f"label cat; baseline cat ({r.old.confidence[9]:.2f}) → new dog ({p9:.2f})"
    )
    assert (
        "Positive flips: wrong before, right now (most confident old prediction first); 2 of 3" in t
    )
    per_class = t["Per class, sorted by the largest change of recall or precision"]
    assert [row[0] for row in per_class.rows] == [c.name for c in r.per_class]
    assert {row[0] for row in per_class.rows} == set(NAMES)
    figures = [b for b in s.blocks if isinstance(b, Figure)]
    assert [f.alt for f in figures] == ["Confusion-matrix difference heat-map"]
    left = t["Parts left out of the comparison"]
    assert {row[0] for row in left.rows} == {
        "representation (linear CKA, k-NN overlap)",
        "explanation maps",
        "first-layer filters",
    }


def test_galleries_fall_back_to_text_without_images() -> None:
    r = result()
    s = compare_section(r, show=3)
    neg = tables(s)[
        "Negative flips: right before, wrong now (most confident new prediction first); 3 of 3"
    ]
    assert neg.columns == ["image", "what changed"]
    assert [row[0] for row in neg.rows] == ["img9.png", "img4.png", "img1.png"]

    def some_missing(paths: Sequence[str]) -> list[np.ndarray | None]:
        return [None if p == "img4.png" else np.zeros((4, 4, 3), np.uint8) for p in paths]

    s2 = compare_section(r, thumbnails=some_missing, show=3)
    neg2 = tables(s2)[
        "Negative flips: right before, wrong now (most confident new prediction first); 3 of 3"
    ]
    assert neg2.columns == ["image", "what changed"]  # never a gallery with holes


def test_representation_explanations_filters_and_unlabelled() -> None:
    rng = np.random.default_rng(0)
    feats_old, feats_new = rng.normal(size=(12, 4)), rng.normal(size=(12, 6))
    maps = ExplanationMaps(
        [1, 4],
        {"gradcam": rng.random((2, 8, 8)), "gradient": rng.random((2, 8, 8))},
        {"gradcam": rng.random((2, 8, 8))},
    )
    w = rng.normal(size=(6, 3, 3, 3))
    r = result(features_old=feats_old, features_new=feats_new, maps=maps, filters=(w, w * 2), k=3)
    s = compare_section(r, thumbnails=thumbs_for, show=4)
    t = tables(s)
    moved = t["Neighbourhoods that changed most: lowest k-NN overlap (k = 3) first"]
    ov = r.knn_overlap_per_image
    assert ov is not None
    assert (
        [c.alt for c in moved.rows[0]]
        == [  # type: ignore[union-attr]
            f"img{i}.png" for i in np.argsort(ov, kind="stable")[:4]
        ]
    )
    alts = [b.alt for b in s.blocks if isinstance(b, Figure)]
    assert alts == [
        "Confusion-matrix difference heat-map",
        "Explanation maps of both models side by side",
        "First-layer filters of both models",
    ]
    notes = [b.text for b in s.blocks if isinstance(b, Text)]
    assert "Explanations, gradient: the new model has no gradient maps." in notes
    head = {row[0]: row[3] for row in t["Headline: baseline → new on 12 matched images"].rows}
    assert head["first-layer filter cosine (mean)"] == "1"  # w and 2w point the same way

    unl = result(labels=[-1] * 12)
    s3 = compare_section(unl, thumbnails=thumbs_for)
    t3 = tables(s3)
    changed = sum(o != n for o, n in zip(OLD, NEW, strict=True))
    assert any(c.startswith("Changed predictions (unlabelled)") for c in t3)
    assert "unlabelled" in s3.how_to_read and "prediction changed" in s3.how_to_read
    head3 = {row[0]: row[3] for row in t3["Headline: baseline → new on 12 matched images"].rows}
    assert head3["predictions changed (unlabelled: counted as negative flips)"] == (
        f"{changed} ({100 * changed / 12:.2f} %)"
    )
    assert not any(isinstance(b, Figure) for b in s3.blocks)


def test_confusion_difference_keeps_the_most_changed_classes() -> None:
    k = 40
    old = np.diag(np.full(k, 5))
    new = old.copy()
    new[3, 3], new[3, 7] = 1, 4  # class 3 and 7 change
    new[20, 20], new[20, 21] = 4, 1
    pic, shown, present = confusion_difference_figure(old, new, [f"c{i}" for i in range(k)], 5)
    assert (shown, present) == (5, 40)
    assert pic.pixels.dtype == np.uint8 and pic.pixels.ndim == 3


def test_hostile_names_are_escaped_in_the_html() -> None:
    r = result(notes=[f"only in the baseline: {HOSTILE}"])
    html = render_html(context([compare_section(r)]), 10**9).html
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Changes against the baseline" in html


def test_markdown_gates_first_then_deltas_escaped() -> None:
    r = result(notes=[f"class {HOSTILE} only in the baseline"])
    summary = compare_summary(r)
    gates = evaluate_gates(
        parse_gates(
            ["accuracy>=0.9", "compare.negative_flip_rate<=0.5", "compare.linear_cka>=0.5"],
            known_metric_names(["accuracy"]),
        ),
        {"accuracy": 0.5},
        summary,
    )
    md = compare_markdown(summary, gates)
    lines = md.splitlines()
    assert lines[0] == "**Gates: 2 of 3 failed**"
    assert lines[4] == "| accuracy\\>=0\\.9 | 0.5000 | **FAIL** |"
    assert lines[5] == "| compare\\.negative\\_flip\\_rate\\<=0\\.5 | 0.2500 | pass |"
    assert "compare\\.linear\\_cka has no value" in lines[6] and lines[6].endswith("**FAIL** |")
    assert md.index("| accuracy | 58.33 % | 58.33 % | +0.00 pp") > md.index("Gates")
    assert "| negative flips | | | 3 (25.00 %) |" in md
    assert set(re.findall(r"(?<!\\)<(/?\w+)", md)) == set()  # no raw tag
    assert "\\<script\\>" in md
    assert compare_markdown(summary).startswith("| | baseline | new | change |")
    unl = compare_markdown(compare_summary(result(labels=[-1] * 12)))
    assert "| predictions changed (unlabelled) | | |" in unl and "accuracy" not in unl


def test_folder_thumbnails_check_the_bytes(tmp_path: Path) -> None:
    img = np.zeros((300, 200, 3), np.uint8)
    img[:, :100] = 255
    Image.fromarray(img).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not an image")
    digest = hashlib.sha256((tmp_path / "a.png").read_bytes()).hexdigest()
    bad = hashlib.sha256(b"not an image").hexdigest()
    thumbs = folder_thumbnails(tmp_path, {"a.png": digest, "b.png": bad, "c.png": digest}, size=50)
    a, b, c = thumbs(["a.png", "b.png", "c.png"])
    assert a is not None and a.dtype == np.uint8 and max(a.shape[:2]) <= 50
    assert a[0, 0].tolist() == [255, 255, 255] and a[0, -1].tolist() == [0, 0, 0]
    assert b is None and c is None  # not an image; missing
    changed = folder_thumbnails(tmp_path, {"a.png": bad})
    assert changed(["a.png"]) == [None]  # bytes differ from what was compared


def test_discovered_clusters_say_whether_the_failure_is_new() -> None:
    """A failing cluster the change brought (6 negative flips, none back: McNemar p 0.031) is a
    warning; one the baseline failed as well is a note that does not call it new."""
    n = 12
    labels = [i % 3 for i in range(n)]
    paths, shas = [f"img{i}.png" for i in range(n)], [sha(i) for i in range(n)]
    new_preds = [(c + 1) % 3 if i < 6 or i >= 10 else c for i, c in enumerate(labels)]
    old_preds = [(c + 1) % 3 if i >= 10 else c for i, c in enumerate(labels)]
    site = {"site": ["A"] * 6 + ["B"] * 6}
    sets = [
        prediction_set(
            paths,
            shas,
            labels,
            NAMES,
            np.eye(3)[p] * 0.8 + 0.2 / 3,
            probabilities=True,
            metadata=site,
        )
        for p in (old_preds, new_preds)
    ]
    brought = np.arange(n) < 6
    old_weakness = np.arange(n) >= 10
    r = build_compare(*sets, discovered={"D1": brought, "D2": old_weakness})
    section = compare_section(r)
    texts = [b for b in section.blocks if isinstance(b, Text)]
    d1 = next(t for t in texts if t.text.startswith("D1:"))
    d2 = next(t for t in texts if t.text.startswith("D2:"))
    assert d1.kind == "warning" and "this change made the model fail there" in d1.text
    assert "100.00 %" in d1.text and "0.00 %" in d1.text and "McNemar p 0.031" in d1.text
    assert d2.kind == "note" and "not shown to be new" in d2.text
    table = next(t for c, t in tables(section).items() if c.startswith("Was this failure"))
    assert [row[:2] for row in table.rows] == [["D1", 6], ["D2", 2]]
    # The PR-sized Markdown: the worst subgroup under the size bound is left out, the clusters
    # carry their verdict.
    md = compare_markdown(compare_summary(r))
    assert "worst subgroup" not in md  # 6 images per site: under 20, never "the worst"
    assert (
        "| failing cluster D1 (6 images) | 100.00 % | 0.00 % | -100.00 pp (McNemar p 0.0312): "
        "**this change made the model fail there** |" in md
    )
    assert "| failing cluster D2 (2 images) | 0.00 % | 0.00 % | +0.00 pp" in md
    assert "not shown to be new |" in md
