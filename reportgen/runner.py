"""The pipeline: load, one dataset pass, analyses, render. Owns the device, seeds and timings."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import platform
import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
import torch
import yaml

import reportgen
from reportgen import distributed
from reportgen.analyses import REGISTRY, Analysis, AnalysisContext, SkipSection
from reportgen.analyses.base import Collector, SetupContext
from reportgen.config import Config
from reportgen.dataset_pass import PassResult, dataset_pass
from reportgen.errors import ConfigError, ReportgenError
from reportgen.loading.images import DataFolder, ImageDataset, Preprocessor, scan_folder
from reportgen.loading.models import LoadedModel, check_layer_names, load_model
from reportgen.progress import Progress
from reportgen.render import (
    Encoding,
    ReportContext,
    clean_floats,
    render_html,
    render_html_once,
    render_markdown,
    to_json,
    write_all_atomic,
    write_atomic,
)
from reportgen.section import Section, format_number

log = logging.getLogger("reportgen")

EXIT_OK = 0
EXIT_SECTION_FAILED = 1
EXIT_INPUT_ERROR = 2
REQUIRED_METRICS = (
    "accuracy",
    "knn_agreement_feature",
    "knn_agreement_pixel",
    "tsne_trustworthiness",
)


@dataclass
class RunResult:
    out_dir: Path
    sections: list[Section]
    summary: dict[str, Any]
    timings: dict[str, Any]
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rank: int = 0
    """Under torchrun, this process' rank; only rank 0 writes outputs (the others' result is empty)."""

    @property
    def failed_outputs(self) -> list[str]:
        """Output formats that could not be rendered (e.g. the PDF), with the error."""
        return list(self.summary.get("output", {}).get("failed", []))

    @property
    def exit_code(self) -> int:
        failed = any(s.status == "failed" for s in self.sections) or self.failed_outputs
        return EXIT_SECTION_FAILED if failed else EXIT_OK


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"run.device: {spec} requested but no CUDA device is available; use --device cpu"
            )
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"run.device: {spec} does not exist ({torch.cuda.device_count()} CUDA device(s))"
            )
        return dev
    if spec == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("run.device: mps requested but not available; use --device cpu")
    return torch.device(spec)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    # Deterministic kernels where torch offers them; warn (not fail) where it does not.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    # TF32 matmuls/convs on Ampere+ differ from the CPU by ~1e-3 relative: with run.precision fp32
    # the maps must match a CPU run, so keep full fp32 (bf16 is an explicit opt-in).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def library_versions() -> dict[str, str]:
    import matplotlib
    import sklearn
    import torchvision

    return {
        "reportgen": reportgen.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "matplotlib": matplotlib.__version__,
        "python": platform.python_version(),
    }


def select_queries(
    result: PassResult, folder: DataFolder, spec: int | list[str], seed: int
) -> list[int]:
    """Query images (positions among readable images), deterministic for a seed.

    A count picks round-robin across classes (a seeded shuffle within each class); unlabelled data
    gets evenly spaced images. A list names images by their path relative to the data root.
    """
    n = len(result)
    if isinstance(spec, list):
        by_path = {folder.items[i].relpath: pos for pos, i in enumerate(result.item_index)}
        skipped = {p for p, _ in result.skipped}
        out = []
        for rel in spec:
            rel_norm = Path(rel).as_posix()
            if rel_norm in skipped:
                raise ConfigError(
                    f"data.queries: {rel} could not be read (see skipped files); choose another image"
                )
            if rel_norm not in by_path:
                from reportgen.errors import did_you_mean

                raise ConfigError(
                    f"data.queries: {rel} is not an image under {folder.root}{did_you_mean(rel_norm, by_path)}"
                )
            out.append(by_path[rel_norm])
        return out
    count = min(spec, n)
    if count == 0:
        return []
    rng = np.random.default_rng(seed)
    labels = result.labels.numpy()
    if folder.labelled:
        groups = {
            c: rng.permutation(np.flatnonzero(labels == c)).tolist()
            for c in sorted(set(labels.tolist()))
        }
        picks: list[int] = []
        depth = 0
        while len(picks) < count:
            for c in sorted(groups):
                if depth < len(groups[c]) and len(picks) < count:
                    picks.append(groups[c][depth])
            depth += 1
        return picks
    return np.linspace(0, n - 1, count).round().astype(int).tolist()


def manifest_sha256(manifest: list[tuple[str, int, str]]) -> str:
    h = hashlib.sha256()
    for rel, size, digest in sorted(manifest):
        h.update(f"{rel}\t{size}\t{digest}\n".encode())
    return h.hexdigest()


def _relative_paths(config: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Input paths inside the output folder (the demo's) recorded relative to it, so that the
    report does not change with the output folder's name."""
    for section, key in (
        ("model", "weights"),
        ("model", "checkpoint"),
        ("data", "root"),
        ("data", "labels"),
    ):
        value = config.get(section, {}).get(key)
        if isinstance(value, str):
            config[section][key] = _display_root(Path(value), out_dir)
    return config


def _display_root(root: Path, out_dir: Path) -> str:
    """The data root as recorded: relative to the output folder when inside it (the demo)."""
    try:
        return root.resolve().relative_to(out_dir.resolve()).as_posix()
    except ValueError:
        return str(root)


class _NotMainRank(Exception):
    """Raised inside a torchrun rank other than 0 once its shard of the pass is gathered."""


@dataclass
class Pipeline:
    config: Config
    progress: Progress
    warn: Callable[[str], None]
    timings: dict[str, Any] = field(default_factory=lambda: {"analyses": {}})
    dist: distributed.DistContext = distributed.SINGLE

    def prepare(self) -> tuple[AnalysisContext, list[tuple[str, Analysis]], dict[str, Section]]:
        """Load everything and run the dataset pass: the context every analysis gets.

        Returns the context, the enabled analyses in report order, and the sections already
        decided (skipped or failed before the pass).
        """
        cfg = self.config
        seed_everything(cfg.run.seed)
        # Under torchrun each process takes its own GPU (LOCAL_RANK) and joins the process group.
        device = resolve_device(
            distributed.rank_device(cfg.run.device, int(os.environ.get("LOCAL_RANK", "0")))
        )
        self.dist = distributed.init_from_env(device)
        if not self.dist.is_main:
            self.progress = Progress(quiet=True)

        t = perf_counter()
        model = load_model(cfg.model)
        check_layer_names(model, cfg)  # unknown layer names: an input error before any work
        model.module.to(device)
        if device.type == "cuda":
            model.module.to(memory_format=torch.channels_last)
        folder = scan_folder(cfg.data)
        pre = Preprocessor.from_config(cfg.preprocess, model.in_channels)
        dataset = ImageDataset(folder, pre)
        self.timings["load"] = perf_counter() - t

        analyses = [(name, REGISTRY[name]()) for name in REGISTRY if cfg.analyses[name].enabled]
        sections: dict[str, Section] = {}
        for name, analysis in analyses:
            reason = self._cannot_run(analysis, model)
            if reason:
                sections[name] = Section(name, analysis.title, status="skipped", reason=reason)
        setup = SetupContext(cfg, model, folder, device)
        collectors: dict[str, Collector] = {}
        for name, analysis in analyses:
            if name in sections:
                continue
            try:
                col = analysis.collector(setup, cfg.analyses[name])
            except ReportgenError:
                raise
            except Exception as exc:  # one analysis must not end the run
                sections[name] = self._failed(analysis, exc)
                continue
            if col is not None and self.dist.enabled and not distributed.can_merge(col):
                sections[name] = Section(
                    name,
                    analysis.title,
                    status="skipped",
                    reason="its collector cannot merge results across torchrun processes; run it in one process",
                )
            elif col is not None:
                collectors[name] = col

        t = perf_counter()
        if self.dist.enabled:
            shard = distributed.shard_indices(
                len(dataset), cfg.run.batch_size, self.dist.rank, self.dist.world_size
            )
            local = dataset_pass(
                cfg, model, dataset, device, collectors, self.progress, shard, allow_empty=True
            )
            merged = distributed.gather_pass(
                self.dist, local, collectors, dataset, cfg.run.batch_size, device
            )
            if merged is None:  # not rank 0: its share of the work is done
                self.timings["dataset_pass"] = perf_counter() - t
                raise _NotMainRank
            result = merged
        else:
            result = dataset_pass(cfg, model, dataset, device, collectors, self.progress)
        self.timings["dataset_pass"] = perf_counter() - t

        queries = select_queries(result, folder, cfg.data.queries, cfg.run.seed)
        ctx = AnalysisContext(
            config=cfg,
            model=model,
            folder=folder,
            dataset=dataset,
            preprocessor=pre,
            result=result,
            device=device,
            queries=queries,
            collected=collectors,
            progress=self.progress,
        )
        return ctx, analyses, sections

    def run(self) -> RunResult:
        try:
            return self._run()
        except _NotMainRank:
            return RunResult(
                Path(self.config.output.dir), [], {}, self.timings, rank=self.dist.rank
            )
        finally:
            distributed.shutdown(self.dist)

    def _run(self) -> RunResult:
        t_start = perf_counter()
        cfg = self.config
        out_dir = Path(cfg.output.dir)
        ctx, analyses, sections = self.prepare()
        pending = [(name, analysis) for name, analysis in analyses if name not in sections]
        for name, analysis in self.progress(
            pending, desc="analyses", total=len(pending), label=lambda item: item[0]
        ):
            t = perf_counter()
            sections[name] = self._run_one(analysis, ctx)
            self.timings["analyses"][name] = perf_counter() - t
        ordered = [sections[name] for name, _ in analyses]

        summary = build_summary(
            cfg,
            ctx.model,
            ctx.folder,
            ctx.result,
            ordered,
            ctx.device,
            out_dir,
            ctx.queries,
            world_size=self.dist.world_size,
        )
        t = perf_counter()
        files, warnings = write_outputs(cfg, summary, ordered, ctx, out_dir, self.warn)
        self.timings["render"] = perf_counter() - t
        self.timings["total"] = perf_counter() - t_start
        write_atomic(out_dir / "timings.json", to_json(self.timings))
        files.append(out_dir / "timings.json")
        return RunResult(out_dir, ordered, summary, self.timings, files, warnings)

    @staticmethod
    def _cannot_run(analysis: Analysis, model: LoadedModel) -> str | None:
        if (analysis.requires_hooks or analysis.requires_features) and not model.supports_hooks:
            kind = {"torchscript": "a TorchScript", "exported": "an exported (torch.export)"}.get(
                model.kind, "this"
            )
            return (
                f"needs layer hooks, which {kind} model does not support; "
                "load a state dict with --model/--weights for this section"
            )
        return None

    def _run_one(self, analysis: Analysis, ctx: AnalysisContext) -> Section:
        try:
            section = analysis.run(ctx, ctx.config.analyses[analysis.name])
        except SkipSection as exc:
            return Section(analysis.name, analysis.title, status="skipped", reason=str(exc))
        except ReportgenError as exc:
            return Section(analysis.name, analysis.title, status="failed", reason=str(exc))
        except Exception as exc:
            return self._failed(analysis, exc)
        return section

    def _failed(self, analysis: Analysis, exc: BaseException) -> Section:
        where = traceback.extract_tb(exc.__traceback__)
        origin = f" (at {Path(where[-1].filename).name}:{where[-1].lineno})" if where else ""
        self.warn(f"analysis {analysis.name} failed: {type(exc).__name__}: {exc}")
        log.debug("analysis %s failed", analysis.name, exc_info=exc)
        return Section(
            analysis.name,
            analysis.title,
            status="failed",
            reason=f"{type(exc).__name__}: {exc}{origin}",
        )


def build_summary(
    cfg: Config,
    model: LoadedModel,
    folder: DataFolder,
    result: PassResult,
    sections: list[Section],
    device: torch.device,
    out_dir: Path,
    queries: list[int],
    world_size: int = 1,
) -> dict[str, Any]:
    labels = result.labels
    known = (labels >= 0) & (labels < result.logits.shape[1])
    accuracy = (
        float((result.predictions.cpu()[known] == labels[known]).float().mean())
        if bool(known.any())
        else None
    )
    metrics: dict[str, Any] = dict.fromkeys(REQUIRED_METRICS)
    metrics["accuracy"] = accuracy
    metrics["num_labelled"] = int(known.sum())
    for s in sections:
        if s.status == "ok":
            metrics.update(s.metrics)
    versions = library_versions()
    summary = {
        "reportgen_version": reportgen.__version__,
        "model": {
            "arch": model.arch,
            "sha256": model.sha256,
            "checkpoint_file": model.source,
            "checkpoint_kind": model.kind,
            "num_classes": model.num_classes,
            "in_channels": model.in_channels,
            "feature_layer": result.feature_layer,
            "feature_dim": None if result.features is None else int(result.features.shape[1]),
        },
        "data": {
            "root": _display_root(folder.root, out_dir),
            "labelled": folder.labelled,
            "num_images": len(result),
            "num_classes": len(set(labels[labels >= 0].tolist())) if folder.labelled else None,
            "class_names": folder.class_names,
            "num_skipped": len(result.skipped),
            "skipped": [{"path": p, "reason": r} for p, r in result.skipped],
            "ignored": [{"path": p, "reason": r} for p, r in folder.ignored],
            "manifest_sha256": manifest_sha256(result.manifest),
            "queries": [folder.items[result.item_index[q]].relpath for q in queries],
        },
        "metrics": metrics,
        "sections": [
            {"name": s.name, "title": s.title, "status": s.status, "reason": s.reason}
            for s in sections
        ],
        "run": {
            "device": device_description(device),
            "world_size": world_size,
            "seed": cfg.run.seed,
            "precision": cfg.run.precision,
        },
        "provenance": {
            "config": _relative_paths(cfg.to_dict(for_provenance=True), out_dir),
            "seed": cfg.run.seed,
            "device": device_description(device),
            "versions": versions,
            "checkpoint_sha256": model.sha256,
            "manifest_sha256": manifest_sha256(result.manifest),
        },
    }
    return clean_floats(summary)


def _overview_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    m, d, met = summary["model"], summary["data"], summary["metrics"]
    rows = [
        ("model", f"{m['arch']} ({m['num_classes']} classes, {m['in_channels']}-channel input)"),
        (
            "checkpoint",
            f"{m['checkpoint_file'] or 'none'} ({m['checkpoint_kind'].replace('_', ' ')})",
        ),
        ("checkpoint SHA-256", m["sha256"] or "none"),
        (
            "features",
            f"{m['feature_layer']} ({m['feature_dim']} dimensions)"
            if m["feature_layer"]
            else "unavailable",
        ),
        ("data", d["root"]),
        (
            "images",
            f"{d['num_images']} read, {d['num_skipped']} skipped"
            + (f", {d['num_classes']} classes" if d["labelled"] else ", unlabelled"),
        ),
        (
            "accuracy (top-1)",
            "n/a (unlabelled)"
            if met["accuracy"] is None
            else f"{100 * met['accuracy']:.2f} % of {met['num_labelled']} labelled images",
        ),
        (
            "k-NN agreement, features / pixels",
            f"{format_number(met['knn_agreement_feature'])} / {format_number(met['knn_agreement_pixel'])}",
        ),
        ("t-SNE trustworthiness", format_number(met["tsne_trustworthiness"])),
        ("device", summary["run"]["device"]),
        ("seed", str(summary["run"]["seed"])),
        ("sections", ", ".join(f"{s['name']} ({s['status']})" for s in summary["sections"])),
    ]
    return rows


def write_outputs(
    cfg: Config,
    summary: dict[str, Any],
    sections: list[Section],
    ctx: AnalysisContext,
    out_dir: Path,
    warn: Callable[[str], None],
) -> tuple[list[Path], list[str]]:
    """Render every output in memory, then write them all atomically.

    Nothing in ``out_dir`` changes until every output rendered: a failure while rendering (the PDF,
    say) leaves an existing report.html / summary.json from an earlier run untouched.
    """
    warnings: list[str] = []
    report = ReportContext(
        title=cfg.output.title
        or f"{summary['model']['arch']} on {Path(summary['data']['root']).name or summary['data']['root']}",
        summary=summary,
        overview_rows=_overview_rows(summary),
        sections=sections,
        skipped=summary["data"]["skipped"],
        config_yaml=yaml.safe_dump(
            summary["provenance"]["config"], sort_keys=False, allow_unicode=True
        ),
        versions=summary["provenance"]["versions"],
    )
    budget = int(cfg.output.max_html_mb * 1024 * 1024)
    payloads: dict[Path, bytes | str] = {}
    encoding = Encoding()
    output: dict[str, Any] = {"html_budget_bytes": budget}
    if "html" in cfg.output.formats:
        html = render_html(report, budget)
        encoding = html.encoding
        html_bytes = len(html.html.encode("utf-8"))
        output.update(
            html_bytes=html_bytes,
            html_over_budget=html.over_budget,
            image_encoding=dataclasses.asdict(encoding),
        )
        if encoding != Encoding():
            msg = (
                f"report.html was over its {cfg.output.max_html_mb:g} MB budget: images re-encoded "
                f"(photo quality {encoding.photo_quality}, photo scale {encoding.photo_scale:g}, "
                f"line-art scale {encoding.line_scale:g}); final size {html_bytes / 1024 / 1024:.2f} MB"
            )
            if html.over_budget:
                msg += " — still over budget at the smallest setting"
            warn(msg)
            warnings.append(msg)
        payloads[out_dir / "report.html"] = html.html
    if "pdf" in cfg.output.formats:
        from reportgen.pdf import html_to_pdf

        # Same pictures as the HTML (already shrunk to its budget, if it had to be). A PDF that
        # cannot be rendered must not cost the user the HTML and summary already computed: it
        # is reported (exit code 1) and the rest is written. An interruption (KeyboardInterrupt)
        # still writes nothing, leaving an earlier report intact.
        try:
            pdf = html_to_pdf(render_html_once(report, encoding, for_pdf=True))
        except Exception as exc:
            msg = f"report.pdf could not be rendered: {type(exc).__name__}: {exc}"
            warn(msg)
            warnings.append(msg)
            output["failed"] = [msg]
        else:
            output["pdf_bytes"] = len(pdf)
            payloads[out_dir / "report.pdf"] = pdf
    summary["output"] = output
    payloads[out_dir / "summary.json"] = to_json(summary)
    payloads[out_dir / "summary.md"] = render_markdown(report)
    if cfg.output.save_arrays:
        payloads[out_dir / "arrays.npz"] = arrays_npz(ctx)
    write_all_atomic(payloads)
    if output.get("failed"):
        # An older report.pdf would no longer match the report beside it.
        (out_dir / "report.pdf").unlink(missing_ok=True)
    return list(payloads), warnings


def arrays_npz(ctx: AnalysisContext) -> bytes:
    import io

    res = ctx.result
    arrays: dict[str, np.ndarray] = {
        "dataset_ids": np.array(
            [ctx.folder.items[i].relpath for i in res.item_index], dtype=np.str_
        ),
        "logits": res.logits.float().cpu().numpy(),
        "labels": res.labels.numpy(),
    }
    if res.features is not None:
        arrays["features"] = res.features.float().cpu().numpy()
    arrays.update(ctx.arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def run_report(
    config: Config, *, progress: Progress | None = None, warn: Callable[[str], None] | None = None
) -> RunResult:
    """Run every enabled analysis and write the report into ``config.output.dir``."""
    return Pipeline(
        config, progress or Progress(quiet=True), warn or (lambda m: log.warning("%s", m))
    ).run()
