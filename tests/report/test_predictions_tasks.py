"""predictions.csv of binary and multi-label models: the columns each adds, exact round trips,
and every reader error naming the file, line and problem."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

from reportgen.errors import ReportgenError
from reportgen.heads import Head
from reportgen.report.predictions import (
    format_predictions,
    prediction_set,
    read_predictions,
)

BINARY = Head("binary")
MULTILABEL = Head("multilabel")
LABEL_NAMES = ["cat", "dog, big", 'say "hi"']


def sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def _write(tmp_path: Path, text: str) -> Path:
    file = tmp_path / "predictions.csv"
    file.write_text(text, encoding="utf-8", newline="")
    return file


def test_binary_file_adds_p_positive_and_reads_back_exactly(tmp_path: Path) -> None:
    z = np.array([[2.0], [-1.5], [0.0], [-40.0]], dtype=np.float32)
    ps = prediction_set(
        ["a", "b", "c", "d"],
        [sha(i) for i in range(4)],
        [1, 1, -1, 0],
        ["healthy", "sick"],
        z,
        head=BINARY,
        metadata={"site": ["A", "B", "A", "B"]},
    )
    text = format_predictions(ps)
    header = text.splitlines()[0]
    assert header.endswith(",correct,p_positive,meta:site")
    assert ps.predictions.tolist() == [1, 0, 1, 0]  # p ≥ 0.5 ⟺ z ≥ 0
    np.testing.assert_allclose(ps.p_positive, expit(z[:, 0].astype(np.float64)), rtol=1e-15)
    assert ps.correct.tolist() == [1, 0, -1, 1]
    back = read_predictions(_write(tmp_path, text))
    assert back.task == "binary"
    np.testing.assert_array_equal(back.p_positive, ps.p_positive)
    np.testing.assert_array_equal(back.confidence, ps.confidence)
    assert back.metadata == {"site": ["A", "B", "A", "B"]}
    assert back.class_names == ["healthy", "sick"]


def _multilabel_set() -> tuple[object, np.ndarray]:
    z = np.array([[3.0, -2.0, 0.5], [-1.0, -1.0, -1.0], [0.2, 4.0, -3.0]], dtype=np.float32)
    truth = np.array([[1, 0, 1], [0, 0, 0], [-1, -1, -1]], dtype=np.int8)
    ps = prediction_set(
        ["x/1.png", "x/2.png", "x/3.png"],
        [sha(i) for i in range(3)],
        [-1, -1, -1],
        LABEL_NAMES,
        z,
        head=MULTILABEL,
        label_sets=truth,
        metadata={"site": ["A", "B", "C"]},
    )
    return ps, z


def test_multilabel_file_has_label_sets_and_one_probability_column_per_label(
    tmp_path: Path,
) -> None:
    ps, z = _multilabel_set()
    text = format_predictions(ps)  # type: ignore[arg-type]
    lines = text.splitlines()
    assert lines[0] == (
        'path,sha256,labels,predicted,exact_match,p:cat,"p:dog, big","p:say ""hi""",meta:site'
    )
    # row 1: labels {cat, say "hi"}, predicted {cat, say "hi"} (p = 0.62 ≥ 0.5): exact match
    assert lines[1].startswith(f'x/1.png,{sha(0)},"cat|say ""hi""","cat|say ""hi""",1,')
    assert lines[2].startswith(f"x/2.png,{sha(1)},,,1,")  # no labels, none predicted
    assert lines[3].startswith(f'x/3.png,{sha(2)},,"cat|dog, big",,')  # unlabelled
    back = read_predictions(_write(tmp_path, text))
    assert back.task == "multilabel" and back.class_names == LABEL_NAMES
    np.testing.assert_array_equal(back.probabilities, ps.probabilities)  # type: ignore[attr-defined]
    np.testing.assert_allclose(back.probabilities, expit(z.astype(np.float64)), rtol=1e-15)
    np.testing.assert_array_equal(back.label_sets, ps.label_sets)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(back.predicted_sets, ps.predicted_sets)  # type: ignore[attr-defined]
    assert back.correct.tolist() == [1, 1, -1]
    assert back.accuracy() == 1.0
    assert back.metadata == {"site": ["A", "B", "C"]}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (f"x/4.png,{sha(3)},cat,cat,1,0.9,0.1", "3 fields|7 fields, expected 9"),
        (f"x/4.png,{sha(3)},lion,cat,0,0.9,0.1,0.1,A", "labels names 'lion'"),
        (f"x/4.png,{sha(3)},cat,,1,0.9,0.1,0.1,A", "exact_match is 1 but labels 'cat'"),
        (f"x/4.png,{sha(3)},cat,cat,2,0.9,0.1,0.1,A", "exact_match '2' is not empty, 0 or 1"),
        (f"x/4.png,{sha(3)},cat,,,0.9,0.1,0.1,A", "unlabelled row .exact_match empty. lists"),
        (f"x/4.png,{sha(3)},,,1,1.5,0.1,0.1,A", "p:cat 1.5 is not a probability"),
        (f"x/4.png,{sha(3)},,,1,nan,0.1,0.1,A", "p:cat nan is not a probability"),
        (f"x/1.png,{sha(3)},,,1,0.1,0.1,0.1,A", "listed twice"),
        ("x/4.png,nothex,,,1,0.1,0.1,0.1,A", "sha256 'nothex'"),
    ],
)
def test_multilabel_reader_names_line_and_problem(tmp_path: Path, row: str, message: str) -> None:
    ps, _ = _multilabel_set()
    text = format_predictions(ps) + row + "\n"  # type: ignore[arg-type]
    with pytest.raises(ReportgenError, match=rf"predictions\.csv, line 5: .*({message})"):
        read_predictions(_write(tmp_path, text))


def test_multilabel_header_without_probability_columns_is_refused(tmp_path: Path) -> None:
    file = _write(tmp_path, "path,sha256,labels,predicted,exact_match,meta:site\n")
    with pytest.raises(ReportgenError, match="one p:<label> column per label"):
        read_predictions(file)


def test_binary_reader_refuses_a_third_class_and_a_bad_probability(tmp_path: Path) -> None:
    ps = prediction_set(["a"], [sha(0)], [1], ["no", "yes"], np.array([[1.0]]), head=BINARY)
    good = format_predictions(ps)
    bad_class = good + f"b,{sha(1)},2,two,1,yes,0.7,,,0.7\n"
    with pytest.raises(ReportgenError, match=r"line 3: a binary model's classes are 0 and 1"):
        read_predictions(_write(tmp_path, bad_class))
    bad_p = good + f"b,{sha(1)},1,yes,1,yes,0.7,0.7,1,1.7\n"
    with pytest.raises(ReportgenError, match=r"line 3: p_positive 1.7 is not a probability"):
        read_predictions(_write(tmp_path, bad_p))
