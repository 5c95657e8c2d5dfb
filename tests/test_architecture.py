"""The house rules: no import circle, a light CLI, and an analysis added in one module plus one
registry line gets validated parameters, a layer check before the pass, a section and a metric."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_config, write_image_folder

import reportgen.analyses
import reportgen.pipeline.execute
from reportgen.analyses.audit import AuditAnalysis, AuditParams
from reportgen.api import run_report
from reportgen.contract import Analysis, AnalysisContext, Metric, Needs, PassResult, Result
from reportgen.errors import ConfigError, LayerError
from reportgen.loading.folders import DataFolder, ImageItem
from reportgen.loading.images import ImageDataset, Preprocessor
from reportgen.loading.types import LoadedModel
from reportgen.params import AnalysisParams, between, layer_ref, rule
from reportgen.report.section import Table

PACKAGE = Path(reportgen.analyses.__file__).resolve().parent.parent


def import_graph() -> dict[str, set[str]]:
    """Module -> reportgen modules it imports (module level and inside functions alike;
    imports under ``if TYPE_CHECKING:`` left out, as they never run)."""
    modules: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("").as_posix().replace("/", ".")
        modules[rel.removesuffix(".__init__")] = path

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip |= {id(n) for child in node.body for n in ast.walk(child)}
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        # ``from reportgen import methods`` then ``methods.knn.knn(...)``: the attribute names
        # the module loaded on first use (reportgen.runtime.lazy), still a dependency.
        lazy_packages = {
            (a.asname or a.name): f"reportgen.{a.name}"
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and node.module == "reportgen"
            and id(node) not in skip
            for a in node.names
        }
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            names: list[str] = []
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in lazy_packages
            ):
                names = [f"{lazy_packages[node.value.id]}.{node.attr}"]
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "lazy_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names = [str(node.args[0].value)]  # imported on first use: still a dependency
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base]) if base else ".".join(parts)
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            for name in names:
                target = resolve(name)
                if target and target != mod and name.startswith("reportgen"):
                    graph[mod].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle() -> None:
    graph = import_graph()
    assert len(graph) > 30  # the walk found the package
    assert find_cycle(graph) is None


LAYERS = [
    "reportgen.cli",
    "reportgen.api",
    "reportgen.pipeline",
    "reportgen.compare",
    "reportgen.analyses",
    "reportgen.contract",
    "reportgen.methods",
    "reportgen.loading",
    "reportgen.config",
    "reportgen.params",
    "reportgen.runtime",
    "reportgen.report",
    "reportgen.heads",
    "reportgen.errors",
]
"""pyproject's import-linter layers, top first (the test also sees lazy imports it cannot)."""


def _layer(module: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            return i
    return None


def test_no_import_points_upward_lazy_ones_included() -> None:
    graph = import_graph()
    upward = [
        (src, dst)
        for src, targets in graph.items()
        for dst in targets
        if (a := _layer(src)) is not None and (b := _layer(dst)) is not None and b < a
    ]
    assert upward == []
    # The lazily bound compute dependencies are in the graph (so the checks above see them).
    assert "reportgen.loading.models" in graph["reportgen.analyses.filters"]
    assert "reportgen.methods.knn" in graph["reportgen.analyses.neighbors"]


def test_layers_match_import_linter() -> None:
    import tomllib

    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    assert [c["layers"] for c in contracts if c["type"] == "layers"] == [LAYERS]


def test_nothing_imports_the_package_init() -> None:
    """``reportgen/__init__`` holds the public names for users; the package's own modules import
    from the module that defines a name (``reportgen.version``), never from the package root."""
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "reportgen" and not node.level:
                bad = [a.name for a in node.names if a.name not in subpackages | modules]
                offenders += [f"{path.name}: {name}" for name in bad]
            if isinstance(node, ast.Import) and any(a.name == "reportgen" for a in node.names):
                offenders.append(f"{path.name}: import reportgen")
    assert offenders == []


def test_the_top_level_keeps_the_shell_and_the_contract() -> None:
    """The layers are packages; the top level has the shell (cli, api, demo), the declarations
    (config, params, errors) and the version. No module grows past one screenful of screens."""
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 10, top
    longest = max(
        PACKAGE.rglob("*.py"), key=lambda p: len(p.read_text(encoding="utf-8").splitlines())
    )
    assert len(longest.read_text(encoding="utf-8").splitlines()) <= 600, longest


def test_circle_detection_sees_an_added_circle() -> None:
    # The checker itself: config importing the registry (as it once did) closes a circle.
    graph = import_graph()
    graph["reportgen.config"].add("reportgen.analyses")
    cycle = find_cycle(graph)
    assert cycle is not None and "reportgen.config" in cycle and "reportgen.analyses" in cycle


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["run", "--help"], ["list-analyses"]])
def test_cli_help_does_not_import_torch(args: list[str]) -> None:
    code = (
        "import sys\n"
        "from reportgen.cli import cli\n"
        f"try:\n    cli.main({args!r}, prog_name='reportgen')\n"
        "except SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "reportgen" in done.stdout or "filters: First-layer filters" in done.stdout


# --------------------------------------------------------------------------- a toy analysis


@dataclass(frozen=True)
class ToyParams(AnalysisParams):
    layer: str = field(default="auto", metadata=layer_ref(auto="auto"))
    scale: float = field(default=1.0, metadata=rule(between(0, 10)))


class ToyAnalysis(Analysis[ToyParams]):
    name = "toy"
    title = "Toy: mean logit"
    Params = ToyParams
    needs = Needs(queries=True)
    metrics = (Metric("toy_mean_logit", "toy mean logit", headline=True),)
    order = 95

    def run(self, ctx: AnalysisContext, p: ToyParams) -> Result:
        value = float(ctx.pass_result.logits.mean()) * p.scale
        section = self.section("The mean logit over the dataset, scaled.")
        section.add(Table(caption="toy", columns=["value"], rows=[[value]]))
        return Result(section, arrays={"toy": np.array([value])}, metrics={"toy_mean_logit": value})


@pytest.fixture
def with_toy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(reportgen.analyses.REGISTRY, "toy", ToyAnalysis)  # the one registry line


def test_toy_analysis_gets_a_section_metric_and_checks(
    tmp_path: Path, tiny_weights: Path, with_toy: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_image_folder(tmp_path / "images")
    base = {"model.weights": str(tiny_weights), "output.save_arrays": True}
    with pytest.raises(ConfigError, match=r"analyses\.toy\.scale: must be between 0 and 10"):
        make_config(tmp_path, {**base, "analyses.toy.scale": 11}, analyses=["toy"])
    with pytest.raises(ConfigError, match=r"analyses\.toy\.sclae.*did you mean 'scale'"):
        make_config(tmp_path, {**base, "analyses.toy.sclae": 1}, analyses=["toy"])

    # A wrong layer name is an input error before the dataset pass runs.
    def no_pass(*_a: object, **_k: object) -> None:
        raise AssertionError("the dataset pass ran")

    bad = make_config(tmp_path, {**base, "analyses.toy.layer": "conv7"}, analyses=["toy"])
    with monkeypatch.context() as m:
        m.setattr(reportgen.pipeline.execute, "dataset_pass", no_pass)
        with pytest.raises(LayerError, match=r"analyses\.toy\.layer: layer 'conv7'.*conv1"):
            run_report(bad)

    cfg = make_config(tmp_path, {**base, "analyses.toy.layer": "conv2", "analyses.toy.scale": 2.0})
    result = run_report(cfg)
    assert result.exit_code == 0
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    logits = np.load(out / "arrays.npz")["logits"]
    assert summary["metrics"]["toy_mean_logit"] == pytest.approx(2.0 * float(logits.mean()))
    assert np.load(out / "arrays.npz")["toy"].tolist() == [summary["metrics"]["toy_mean_logit"]]
    assert [s["name"] for s in summary["sections"]][-2:] == ["slices", "toy"]
    html = (out / "report.html").read_text()
    assert 'id="section-toy"' in html and "toy mean logit" in html
    assert "toy mean logit" in (out / "summary.md").read_text()


def test_toy_analysis_skipped_for_unmet_need(
    tmp_path: Path, tiny_weights: Path, with_toy: None
) -> None:
    write_image_folder(tmp_path / "images")
    cfg = make_config(
        tmp_path, {"model.weights": str(tiny_weights), "data.queries": 0}, analyses=["toy"]
    )
    result = run_report(cfg)
    (section,) = result.sections
    assert (section.status, section.reason) == ("skipped", "no query images (data.queries is 0)")
    assert result.summary["metrics"]["toy_mean_logit"] is None


def test_undeclared_metric_fails_the_section(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Loose(ToyAnalysis):
        name = "loose"

        def run(self, ctx: AnalysisContext, p: ToyParams) -> Result:
            return Result(self.section(), metrics={"not_declared": 1})

    monkeypatch.setitem(reportgen.analyses.REGISTRY, "loose", Loose)
    write_image_folder(tmp_path / "images")
    cfg = make_config(tmp_path, {"model.weights": str(tiny_weights)}, analyses=["loose"])
    (section,) = run_report(cfg).sections
    assert section.status == "failed" and "not_declared" in (section.reason or "")


def test_an_analysis_needing_metadata_is_left_out_quietly_without_it(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Needs(metadata=True)`` on data without metadata columns: not a skipped section in every
    folder report, but left out, and listed in summary.json's ``run.left_out``."""

    class NeedsMetadata(ToyAnalysis):
        name = "by_site"
        needs = Needs(metadata=True)
        metrics = ()

        def run(self, ctx: AnalysisContext, p: ToyParams) -> Result:
            raise AssertionError("ran without metadata")

    monkeypatch.setitem(reportgen.analyses.REGISTRY, "by_site", NeedsMetadata)
    write_image_folder(tmp_path / "images")
    cfg = make_config(tmp_path, {"model.weights": str(tiny_weights)})
    cfg = dataclasses.replace(
        cfg,
        analyses={
            n: dataclasses.replace(a, enabled=n in ("by_site", "filters"))
            for n, a in cfg.analyses.items()
        },
    )
    result = run_report(cfg)
    assert result.exit_code == 0
    assert [s.name for s in result.sections] == ["filters"]
    assert result.summary["run"]["left_out"] == {"by_site": "the data has no metadata columns"}


# --------------------------------------------------------------------------- a fake pass result


def fake_context(tmp_path: Path) -> AnalysisContext:
    """A context from a hand-made pass result: no model forward, no dataset pass."""
    rng = np.random.default_rng(0)
    root = write_image_folder(tmp_path / "images", {"a": 6, "b": 6})
    paths = sorted(root.rglob("*.png"))
    items = [
        ImageItem(p, p.relative_to(root).as_posix(), 0 if "/a/" in p.as_posix() else 1, 1)
        for p in paths
    ]
    folder = DataFolder(root, items, ["a", "b"], True, [])
    labels = torch.tensor([it.label for it in items])
    centres = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
    features = centres[labels] + torch.from_numpy(rng.normal(0, 0.3, (12, 2))).float()
    logits = features.clone()
    logits[0] = torch.tensor([0.0, 5.0])  # one confident mistake: image 0 is an 'a'
    pass_result = PassResult(
        item_index=list(range(12)),
        features=features,
        feature_layer="fake",
        logits=logits,
        labels=labels,
        pixels=torch.from_numpy(rng.integers(0, 255, (12, 3, 8, 8), dtype=np.uint8)),
    )
    model = LoadedModel(torch.nn.Identity(), "fake", "state_dict", None, None, 2, 3)
    pre = Preprocessor.from_config(make_config(tmp_path).preprocess, 3)
    return AnalysisContext(
        model=model,
        folder=folder,
        dataset=ImageDataset(folder, pre),
        preprocessor=pre,
        pass_result=pass_result,
        device=torch.device("cpu"),
        queries=[0, 6],
        pixel_size=8,
    )


def test_analyses_run_on_a_fake_pass_result(tmp_path: Path) -> None:
    ctx = fake_context(tmp_path)
    toy = ToyAnalysis().run(ctx, ToyParams())
    assert toy.metrics["toy_mean_logit"] == pytest.approx(float(ctx.pass_result.logits.mean()))
    audit = AuditAnalysis().run(ctx, AuditParams(k=3, show=2, thumb_size=16))
    assert audit.section.status == "ok"
    # Accuracy 11/12 with one mistake at confidence softmax([0, 5])[1].
    confident = audit.section.blocks
    assert any(isinstance(b, Table) and b.caption == "Most confident mistakes" for b in confident)
    assert audit.metrics["mean_confidence"] == pytest.approx(
        float(torch.softmax(ctx.pass_result.logits, 1).max(1).values.mean())
    )
