"""The slices analysis: per-subgroup and per-cluster numbers against a pandas group-by on
predictions.csv, Holm against a hand loop, and a planted failing subgroup (a fifth of the digits
colour-inverted, on which the demo model fails) found as the worst and only flagged slice, both
from a metadata column and — without the column — as the one failing cluster of the features;
no false alarm on the plain digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_context
from PIL import Image
from scipy.stats import binomtest, fisher_exact

from reportgen.analyses.common import TSNE_MAP
from reportgen.analyses.slices import SlicesAnalysis
from reportgen.api import load_config, run_report
from reportgen.demo import prepare_demo
from reportgen.methods.slicing import holm, quantile_bins, wilson
from reportgen.report.section import Figure


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slices")
    prepare_demo(root / "demo", per_class=80, epochs=30)  # ~99 % on plain digits
    flat = root / "flat"
    flat.mkdir()
    rng = np.random.default_rng(0)
    rows = ["path,label,inverted,site,age"]
    files = sorted((root / "demo" / "data").rglob("*.png"))
    for i, f in enumerate(files):
        img = np.asarray(Image.open(f))
        inverted = i % 5 == 0
        Image.fromarray(255 - img if inverted else img).save(flat / f.name)
        site = "ABC"[int(rng.integers(0, 3))]
        rows.append(
            f"{f.name},{f.parent.name},{'yes' if inverted else 'no'},{site},{int(rng.integers(20, 90))}"
        )
    (root / "val.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    bare = [",".join(row.split(",")[:2]) for row in rows]  # path,label: no metadata
    (root / "bare.csv").write_text("\n".join(bare) + "\n", encoding="utf-8")
    return root


def _run(root: Path, name: str, analyses: list[str] | None = None, **over: object) -> dict:
    cfg = load_config(
        root / "demo" / "config.yaml",
        {
            "output.dir": str(root / name),
            "output.formats": ["html"],
            "run.quiet": True,
            **over,
        },
        analyses=analyses or ["slices"],
    )
    result = run_report(cfg)
    assert result.exit_code == 0
    return json.loads((root / name / "summary.json").read_text(encoding="utf-8"))


def test_holm_against_a_hand_loop_and_wilson_closed_form() -> None:
    p = [0.01, 0.04, 0.03, 0.005, 0.5]
    m = len(p)
    order = np.argsort(p)
    expected = np.empty(m)
    best = 0.0
    for rank, i in enumerate(order):
        best = max(best, min(1.0, (m - rank) * p[i]))
        expected[i] = best
    assert holm(p) == pytest.approx(expected.tolist())
    lo, hi = wilson(8, 10)  # type: ignore[misc]
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    assert quantile_bins(np.array([1.0, 2, 3, 4, 5, 6, 7, 8]), 4)[0] == "[1, 2.75)"
    assert quantile_bins(np.array([1.0, 2, 3, 4, 5, 6, 7, 8]), 4)[-1] == "[6.25, 8]"


def test_the_planted_subgroup_is_the_worst_and_only_flag(planted: Path) -> None:
    s = _run(
        planted,
        "declared",
        **{"data.manifest": str(planted / "val.csv"), "data.root": str(planted / "flat")},
    )
    slices = s["slices"]["declared"]
    worst = slices[0]
    assert (worst["column"], worst["value"]) == ("inverted", "yes")
    assert worst["flagged"]
    assert [x["column"] for x in slices if x["flagged"]] == ["inverted"]  # site is random
    assert s["metrics"]["slices_flagged"] == 1
    assert s["metrics"]["slices_worst_accuracy"] == worst["accuracy"]
    # The numbers against a group-by of predictions.csv done here.
    df = pd.read_csv(planted / "declared" / "predictions.csv", keep_default_na=False)
    for x in slices:
        if x["column"] not in ("inverted", "site"):
            continue
        member = df[f"meta:{x['column']}"] == x["value"]
        correct = df["correct"].astype(int)
        assert x["n"] == int(member.sum())
        assert x["accuracy"] == pytest.approx(correct[member].mean(), abs=1e-12)
        assert x["rest_accuracy"] == pytest.approx(correct[~member].mean(), abs=1e-12)
        k, n = int(correct[member].sum()), int(member.sum())
        rk, rn = int(correct[~member].sum()), int((~member).sum())
        assert x["p"] == pytest.approx(fisher_exact([[k, n - k], [rk, rn - rk]]).pvalue)
        assert x["ci95"] == pytest.approx(list(wilson(k, n)))  # type: ignore[arg-type]
    # The numeric age column is cut into 4 quantile bins.
    assert len({x["value"] for x in slices if x["column"] == "age"}) == 4
    html = (planted / "declared" / "report.html").read_text(encoding="utf-8")
    assert "significantly worse than the rest" in html
    assert "with the Grad-CAM of the (wrong) predicted class" in html
    # The cost plan is what the section did: one Grad-CAM pass per mistake shown, one probe.
    timings = json.loads((planted / "declared" / "timings.json").read_text(encoding="utf-8"))
    assert timings["plan"]["slices"] == timings["passes"]["slices"] == {"forward": 1, "backward": 8}
    # The report leads with it: a run warning ("Read this first") and a summary card.
    assert s["warnings"][0].startswith("subgroup inverted = yes: accuracy")
    assert html.index("subgroup inverted = yes") < html.index('id="section-slices"')
    # Discovery finds the same images as a cluster and names the column over-represented in it.
    assert s["metrics"]["slices_discovered_flagged"] == 1
    top = s["slices"]["discovered"][0]
    assert top["id"] == "D1" and top["flagged"]
    over = top["over_represented"][0]
    assert (over["column"], over["value"]) == ("inverted", "yes") and over["share"] >= 0.8
    assert s["warnings"][1].startswith("failing cluster D1 found in feature space")
    assert "most over-represented: inverted = yes" in s["warnings"][1]


def test_a_gate_on_slice_metrics_exits_3(planted: Path) -> None:
    cfg = load_config(
        planted / "demo" / "config.yaml",
        {
            "output.dir": str(planted / "gated"),
            "output.formats": ["html"],
            "run.quiet": True,
            "data.manifest": str(planted / "val.csv"),
            "data.root": str(planted / "flat"),
        },
        analyses=["slices"],
        extra_gates=["slices_flagged==0"],
    )
    assert run_report(cfg).exit_code == 3


def test_no_false_alarm_without_a_failing_subgroup(planted: Path) -> None:
    # The plain demo folder: no metadata, so no declared part (said in one line); discovery runs
    # and flags nothing, so nothing leads the report.
    s = _run(planted, "plain")
    sec = next(x for x in s["sections"] if x["name"] == "slices")
    assert sec["status"] == "ok"
    assert s["slices"]["declared"] == [] and "no metadata columns" in s["slices"]["declared_absent"]
    assert s["metrics"]["slices_flagged"] is None and s["warnings"] == []
    assert s["metrics"]["slices_discovered_flagged"] == 0
    assert s["slices"]["discovered"] and not any(x["flagged"] for x in s["slices"]["discovered"])
    assert s["run"]["left_out"] == {}
    html = (planted / "plain" / "report.html").read_text(encoding="utf-8")
    assert "Not shown: the data has no metadata columns" in html
    assert "No cluster is significantly and at least 10 points worse" in html
    timings = json.loads((planted / "plain" / "timings.json").read_text(encoding="utf-8"))
    assert timings["plan"]["slices"] == timings["passes"]["slices"] == {"forward": 0, "backward": 0}
    # Metadata without a failing subgroup (random sites on the uninverted images) flags nothing.
    lines = (planted / "val.csv").read_text(encoding="utf-8").splitlines()
    kept = [lines[0]] + [ln for ln in lines[1:] if ",no," in ln]
    (planted / "plain.csv").write_text("\n".join(kept) + "\n", encoding="utf-8")
    s = _run(
        planted,
        "nofail",
        **{
            "data.manifest": str(planted / "plain.csv"),
            "data.root": str(planted / "flat"),
            "analyses.slices.columns": ["site"],
        },
    )
    assert s["metrics"]["slices_flagged"] == 0
    assert not any(x["flagged"] for x in s["slices"]["declared"])
    assert s["metrics"]["slices_discovered_flagged"] == 0


def test_discovery_finds_the_planted_slice_without_the_column(planted: Path) -> None:
    """The inverted fifth, with no column naming it, is the top-ranked and only flagged
    cluster (precision ≥ 0.8, recall ≥ 0.5), and the report leads with it."""
    data = {"data.manifest": str(planted / "bare.csv"), "data.root": str(planted / "flat")}
    s = _run(planted, "bare", **data)
    found = s["slices"]["discovered"]
    assert [x["flagged"] for x in found].count(True) == 1 and found[0]["flagged"]
    assert s["metrics"]["slices_discovered_flagged"] == 1
    assert s["metrics"]["slices_flagged"] is None  # no metadata: no declared subgroups
    arrays = np.load(planted / "bare" / "arrays.npz", allow_pickle=False)
    members = np.isin(arrays["slices_clusters"], found[0]["clusters"])
    inverted = np.array([i % 5 == 0 for i in range(len(members))])  # the fixture's rows, in order
    assert list(arrays["dataset_ids"]) == sorted(arrays["dataset_ids"])
    precision = inverted[members].mean()
    recall = (inverted & members).sum() / inverted.sum()
    assert precision >= 0.8 and recall >= 0.5, (precision, recall)
    # The report leads with it: "Read this first" and the summary card, before the section.
    assert s["warnings"][0].startswith("failing cluster D1 found in feature space")
    html = (planted / "bare" / "report.html").read_text(encoding="utf-8")
    card = html.index("failing clusters found in feature space")
    assert html.index("failing cluster D1 found") < card < html.index('id="section-slices"')
    assert "a hypothesis for a person to name" in html
    assert "the first two principal components of the scored images" in html  # no t-SNE ran
    # With the embedding section's t-SNE map shared, the outline is drawn on it.
    cfg = load_config(
        planted / "demo" / "config.yaml",
        {"output.dir": str(planted / "unused"), "run.quiet": True, **data},
        analyses=["embedding", "slices"],
    )
    ctx = make_context(cfg)
    tsne = np.random.default_rng(0).normal(size=(len(members), 2)).astype(np.float32)
    ctx.share_array(TSNE_MAP, tsne)
    result = SlicesAnalysis().run(ctx, cfg.analyses["slices"])  # type: ignore[arg-type]
    assert result.record is not None
    assert result.record["discovered"][0]["clusters"] == found[0]["clusters"]
    captions = [b.caption for b in result.section.blocks if isinstance(b, Figure)]
    assert len(captions) == 1 and "t-SNE map of every image" in captions[0]
    # A gate on it exits 3.
    cfg = load_config(
        planted / "demo" / "config.yaml",
        {
            "output.dir": str(planted / "bare-gated"),
            "output.formats": ["html"],
            "run.quiet": True,
            **data,
        },
        analyses=["slices"],
        extra_gates=["slices_discovered_flagged==0"],
    )
    assert run_report(cfg).exit_code == 3


def test_discovered_numbers_against_a_group_by(planted: Path) -> None:
    """Each discovered cluster's numbers from predictions.csv and arrays.npz, here: size,
    accuracy, rest, Wilson interval, Fisher p, Holm over the clusters tested (a joined slice
    carries its clusters' largest), and the accuracy its class mix predicts (a hand loop)."""
    if not (planted / "bare" / "summary.json").exists():
        _run(
            planted,
            "bare",
            **{"data.manifest": str(planted / "bare.csv"), "data.root": str(planted / "flat")},
        )
    s = json.loads((planted / "bare" / "summary.json").read_text(encoding="utf-8"))
    df = pd.read_csv(planted / "bare" / "predictions.csv", keep_default_na=False)
    cluster = np.load(planted / "bare" / "arrays.npz", allow_pickle=False)["slices_clusters"]
    df["cluster"] = cluster
    correct = df["correct"].astype(int)
    min_size = s["slices"]["min_size"]
    pvalues = {}
    for c, group in df.groupby("cluster"):
        if len(group) >= min_size:
            k, n = int(correct[group.index].sum()), len(group)
            rk, rn = int(correct.sum()) - k, len(df) - n
            pvalues[c] = fisher_exact([[k, n - k], [rk, rn - rk]]).pvalue
    holm_ref = dict(zip(pvalues, holm(list(pvalues.values())), strict=True))
    assert s["slices"]["discovery"]["tested"] == len(pvalues)
    assert sorted(c for x in s["slices"]["discovered"] for c in x["clusters"]) == sorted(
        set(cluster.tolist())
    )
    for x in s["slices"]["discovered"]:
        member = df["cluster"].isin(x["clusters"])
        k, n = int(correct[member].sum()), int(member.sum())
        rk, rn = int(correct[~member].sum()), int((~member).sum())
        assert x["n"] == n and x["correct"] == k
        assert x["accuracy"] == pytest.approx(k / n, abs=1e-12)
        assert x["rest_accuracy"] == pytest.approx(rk / rn, abs=1e-12)
        assert x["ci95"] == pytest.approx(list(wilson(k, n)))  # type: ignore[arg-type]
        assert x["p"] == pytest.approx(fisher_exact([[k, n - k], [rk, rn - rk]]).pvalue)
        if x["p_holm"] is not None:
            assert x["p_holm"] == pytest.approx(max(holm_ref[c] for c in x["clusters"]))
        expected = 0.0
        for label, group in df[member].groupby("label"):
            elsewhere = correct[~member & (df["label"] == label)]
            acc = elsewhere.mean() if len(elsewhere) else correct[group.index].mean()
            expected += len(group) * acc
        assert x["expected_accuracy"] == pytest.approx(expected / n, abs=1e-12)


def test_compare_says_which_subgroup_a_change_hurt(planted: Path, tmp_path: Path) -> None:
    """Per-subgroup deltas in `reportgen compare` and in a baseline inside the run, equal to a
    group-by of the two predictions.csv files, the worst regression first."""
    import torch

    from reportgen.api import compare_reports

    weights = torch.load(planted / "demo" / "model.pt", weights_only=True)
    gen = torch.Generator().manual_seed(0)
    noisy = {
        k: v + 0.15 * v.std() * torch.randn(v.shape, generator=gen)
        if v.is_floating_point() and v.numel() > 1
        else v
        for k, v in weights.items()
    }
    torch.save(noisy, tmp_path / "noisy.pt")
    data = {"data.manifest": str(planted / "val.csv"), "data.root": str(planted / "flat")}
    old = _run(planted, "cmp-old", **data)
    new = _run(planted, "cmp-new", **data, **{"model.weights": str(tmp_path / "noisy.pt")})
    assert old["metrics"]["accuracy"] != new["metrics"]["accuracy"]
    run = compare_reports(
        planted / "cmp-old", planted / "cmp-new", tmp_path / "c", formats=["html"]
    )
    c = run.summary["compare"]
    a = pd.read_csv(planted / "cmp-old" / "predictions.csv", keep_default_na=False)
    b = pd.read_csv(planted / "cmp-new" / "predictions.csv", keep_default_na=False)
    assert list(a["path"]) == list(b["path"])
    for d in c["slices"]:
        m = b[f"meta:{d['column']}"] == d["value"] if d["column"] != "age" else None
        if m is None:
            continue
        assert d["n"] == int(m.sum())
        assert d["accuracy_baseline"] == pytest.approx(
            a["correct"].astype(int)[m].mean(), abs=1e-12
        )
        assert d["accuracy"] == pytest.approx(b["correct"].astype(int)[m].mean(), abs=1e-12)
        neg = ((a["correct"].astype(int) == 1) & (b["correct"].astype(int) == 0))[m].sum()
        assert d["negative_flips"] == int(neg)
    big = [d for d in c["slices"] if d["n"] >= 20]
    assert [d["accuracy_delta"] for d in big] == sorted(d["accuracy_delta"] for d in big)
    assert c["slices_worst_delta"] == big[0]["accuracy_delta"]
    # The new model's failing clusters (its slices section's D1 …): both models on their images.
    found = [x for x in new["slices"]["discovered"] if x["flagged"]]
    assert found, "the inverted fifth should fail the noisy model too"
    cluster = np.load(planted / "cmp-new" / "arrays.npz", allow_pickle=False)["slices_clusters"]
    assert [d["id"] for d in c["discovered_clusters"]] == [x["id"] for x in found]
    ca, cb = a["correct"].astype(int), b["correct"].astype(int)
    for d, x in zip(c["discovered_clusters"], found, strict=True):
        m = np.isin(cluster, x["clusters"]) & (b["correct"] != "").to_numpy()
        assert d["n"] == x["n"] == int(m.sum())
        assert d["accuracy"] == pytest.approx(x["accuracy"], abs=1e-12)
        assert d["accuracy_baseline"] == pytest.approx(ca[m].mean(), abs=1e-12)
        neg, pos = int(((ca == 1) & (cb == 0))[m].sum()), int(((ca == 0) & (cb == 1))[m].sum())
        assert (d["negative_flips"], d["positive_flips"]) == (neg, pos)
        flips = neg + pos
        assert d["mcnemar_p"] == pytest.approx(binomtest(neg, flips).pvalue if flips else 1.0)
    # The same subgroups from a baseline inside the run.
    inrun = _run(
        planted,
        "cmp-inrun",
        **data,
        **{
            "model.weights": str(tmp_path / "noisy.pt"),
            "baseline.weights": str(planted / "demo" / "model.pt"),
        },
    )
    assert [(d["column"], d["value"], d["accuracy_delta"]) for d in inrun["compare"]["slices"]] == [
        (d["column"], d["value"], d["accuracy_delta"]) for d in c["slices"]
    ]
    assert inrun["compare"]["discovered_clusters"] == c["discovered_clusters"]
    html = (tmp_path / "c" / "report.html").read_text(encoding="utf-8")
    assert "Which subgroup did this change hurt?" in html
    assert "Was this failure already there?" in html
    md = (tmp_path / "c" / "summary.md").read_text(encoding="utf-8")
    w = big[0]
    name = f"{w['column']} = {w['value']}"  # plain names: nothing to escape
    assert (
        f"| worst subgroup: {name} ({w['n']} images) | {100 * w['accuracy_baseline']:.2f} %" in md
    )
    assert "| failing cluster D1 (" in md
    assert "D1: the baseline got" in html


def test_history_shows_subgroups_over_the_releases(planted: Path, tmp_path: Path) -> None:
    from reportgen.api import history_report

    data = {"data.manifest": str(planted / "val.csv"), "data.root": str(planted / "flat")}
    runs = [_run(planted, f"h{i}", **data, **{"run.release": f"r{i}"}) for i in range(2)]
    h = history_report([planted / "h0", planted / "h1"], tmp_path / "H", formats=["html"])
    sa = h.summary["history"]["slice_accuracy"]
    for i, s in enumerate(runs):
        own = {f"{x['column']} = {x['value']}": x["accuracy"] for x in s["slices"]["declared"]}
        got = dict(zip(sa["subgroups"], sa["accuracy"][i], strict=True))
        assert got == own
    assert "Subgroups over the releases" in (tmp_path / "H" / "report.html").read_text()
