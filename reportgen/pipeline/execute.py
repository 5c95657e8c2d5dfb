"""Running a report: load, plan, one dataset pass, the analyses, the outputs.

Owns the stage order, the timings, failure capture (one analysis failing is one failed section)
and torchrun (every rank runs its share of the pass; rank 0 runs the rest).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
import torch

from reportgen.compare.present import SECTION_NAME, TITLE
from reportgen.config import Config, validate_preprocess
from reportgen.contract import (
    Analysis,
    AnalysisContext,
    Collector,
    PassResult,
    Result,
    SetupContext,
    SkipSection,
)
from reportgen.errors import ReportgenError
from reportgen.heads import Head
from reportgen.loading.folders import DataFolder
from reportgen.loading.images import ImageDataset, Preprocessor
from reportgen.loading.models import load_model
from reportgen.loading.sources import check_uniform_size, open_source
from reportgen.loading.types import LoadedModel
from reportgen.pipeline import cost, distributed
from reportgen.pipeline.baseline import compare_with_baseline, load_baseline
from reportgen.pipeline.calibration import Throughput, calibrate
from reportgen.pipeline.checks import (
    chance_level,
    check_label_count,
    check_model,
    check_outputs,
    input_size,
    token_layout,
)
from reportgen.pipeline.dataset_pass import dataset_pass
from reportgen.pipeline.environment import resolve_device, seed_everything
from reportgen.pipeline.metadata import SOURCE_LABELS, Resolved, apply_metadata
from reportgen.pipeline.outputs import arrays_npz, predictions_text, write_outputs
from reportgen.pipeline.plan import (
    Plan,
    check_spatial_layers,
    check_task_gates,
    config_gates,
    make_plan,
)
from reportgen.pipeline.queries import select_queries
from reportgen.pipeline.summary import TASK_HEADLINES, build_summary
from reportgen.pipeline.task import (
    TaskChoice,
    baseline_head,
    data_task,
    model_task,
    with_class_names,
)
from reportgen.report.gates import evaluate_gates, gates_failed
from reportgen.report.render import Headline, clean_floats, to_json
from reportgen.report.section import Section
from reportgen.runtime.interrupts import raise_if_interrupted
from reportgen.runtime.outdir import (
    check_apart_from_inputs,
    prepare_output_dir,
    remove_stale_outputs,
)
from reportgen.runtime.progress import Progress
from reportgen.runtime.writes import write_atomic

log = logging.getLogger("reportgen")

EXIT_OK = 0
EXIT_SECTION_FAILED = 1
EXIT_INPUT_ERROR = 2
EXIT_GATE_FAILED = 3


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
    def gates(self) -> list[dict[str, Any]]:
        return list(self.summary.get("gates", []))

    @property
    def exit_code(self) -> int:
        """3 when a gate failed (the CI signal wins), else 1 when a section or output failed."""
        if gates_failed(self.gates):
            return EXIT_GATE_FAILED
        failed = any(s.status == "failed" for s in self.sections) or self.failed_outputs
        return EXIT_SECTION_FAILED if failed else EXIT_OK


@dataclass
class Prepared:
    """Everything after the dataset pass: the shared context, the plan and the collectors."""

    context: AnalysisContext
    plan: Plan
    collectors: dict[str, Collector]
    baseline: LoadedModel | None = None

    def context_for(self, name: str) -> AnalysisContext:
        """The context one analysis gets (with its own collector)."""
        return dataclasses.replace(self.context, collector=self.collectors.get(name))


class _NotMainRank(Exception):
    """Raised inside a torchrun rank other than 0 once its shard of the pass is gathered."""


@dataclass
class Pipeline:
    config: Config
    registry: Mapping[str, type[Analysis]]
    """Analysis name -> class, in report order (handed in by :mod:`reportgen.api`)."""
    progress: Progress
    warn: Callable[[str], None]
    timings: dict[str, Any] = field(default_factory=lambda: {"analyses": {}})
    dist: distributed.DistContext = distributed.SINGLE
    _classes_trusted: bool = True
    _positional_mismatch: bool = False
    """False when the class folders cannot be the model's outputs (targets: the prediction)."""
    left_out: dict[str, str] = field(default_factory=dict)
    """Analyses left out of the report quietly (data that cannot give them), with the reason."""
    warnings: list[str] = field(default_factory=list)
    """Things the reader must know (wrong-looking inputs, approximations): stderr, the top of the
    report and summary.json's ``warnings``."""
    resolved: Resolved | None = None
    task: TaskChoice | None = None
    """The model's task and where it came from (set by ``prepare``, before any work)."""
    throughput: Throughput = field(
        default_factory=lambda: Throughput(16, 8, "contiguous", None, "configured")
    )
    """The perturbation sections' batch sizes and the model's layout (set by ``prepare``)."""

    _told: int = 0

    def _warn(self, message: str) -> None:
        """Record a warning; it reaches stderr once the inputs proved usable (an input error
        before that is the one line the user sees)."""
        if message not in self.warnings:
            self.warnings.append(message)

    def _tell(self) -> None:
        for message in self.warnings[self._told :]:
            self.warn(message)
        self._told = len(self.warnings)

    def prepare(self) -> Prepared:
        """Load everything, plan, and run the dataset pass: the context every analysis gets."""
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
        plan = make_plan(cfg, model, self.registry)  # layer names: input errors before any work
        choice = model_task(cfg, model)  # a task the model cannot have: an input error now
        self.resolved = apply_metadata(cfg, model, choice.head)
        for message in self.resolved.warnings:
            self._warn(message)
        effective = self.resolved.config
        # Metadata values meet the same checks as config values, before any work, and the
        # message names the file and key they came from.
        validate_preprocess(
            effective.preprocess, self.resolved.preprocess_sources, model.in_channels
        )
        baseline = load_baseline(cfg)
        for m in (m for m in (model, baseline) if m is not None):
            m.module.to(device)
            if device.type == "cuda":
                m.module.to(memory_format=torch.channels_last)
        folder = open_source(effective.data)
        self.task = choice = data_task(cfg, choice, folder)
        head = choice.head
        check_task_gates(config_gates(cfg, self.registry), head, choice.source)
        folder = with_class_names(folder, head)
        for message in choice.notes:
            self._warn(message)
        check_label_count(model, effective.data.labels, self.config.data.labels, head)
        pre = Preprocessor.from_config(effective.preprocess, model.in_channels)
        # One size, or what to set: before work.
        check_uniform_size(folder, pre.resize, pre.crop)
        check_model(self._warn, self.config, model, folder, pre)
        if baseline is not None:
            # The baseline gets the model's checks, on the inputs made for the model.
            check_model(
                self._warn, self.config, baseline, folder, pre, "baseline", model.in_channels
            )
            base_head = baseline_head(head, model, baseline)
            if base_head.classes(baseline.num_classes) != head.classes(model.num_classes):
                self._warn(
                    f"baseline: it has {baseline.num_classes} outputs but the model has "
                    f"{model.num_classes}: the comparison pairs classes by index, so classes "
                    "past the shorter head have no counterpart; check that the two models "
                    "predict the same classes"
                )
        layout = token_layout(model, pre)
        if pre.crop and layout is None:  # a transformer's token outputs are read on their grid
            check_spatial_layers(cfg, model, self.registry, (pre.crop, pre.crop))
        self._check_classes(model, folder, head)
        dataset = ImageDataset(folder, pre)
        self.timings["load"] = perf_counter() - t
        raise_if_interrupted()
        t = perf_counter()
        size = input_size(folder, pre)
        self.throughput = calibrate(
            model.module,
            None if size is None else (model.in_channels, *size),
            device,
            cfg.run.memory_format,
        )
        self.timings["calibration"] = perf_counter() - t

        collectors = self._collectors(plan, SetupContext(model, folder, device, layout, head))
        t = perf_counter()
        heads = (head, None if baseline is None else baseline_head(head, model, baseline))
        pass_result = self._dataset_pass(model, dataset, device, collectors, baseline, heads)
        self.timings["dataset_pass"] = perf_counter() - t
        raise_if_interrupted()
        check_outputs(self._warn, pass_result, folder)
        self._check_accuracy(pass_result, folder)
        self._tell()

        queries = select_queries(pass_result, folder, cfg.data, cfg.run.seed)
        context = AnalysisContext(
            model=model,
            folder=folder,
            dataset=dataset,
            preprocessor=pre,
            pass_result=pass_result,
            device=device,
            queries=queries,
            seed=cfg.run.seed,
            batch_size=cfg.run.batch_size,
            precision=cfg.run.precision,
            pixel_size=cfg.preprocess.pixel_size,
            progress=self.progress,
            token_layout=layout,
            labels_are_model_classes=self._classes_trusted,
            max_labels_per_query=cfg.data.max_labels_per_query,
            max_query_rows=cfg.data.queries if isinstance(cfg.data.queries, int) else None,
            forward_batch=self.throughput.forward_batch,
            backward_batch=self.throughput.backward_batch,
        )
        return Prepared(context, plan, collectors, baseline)

    def _check_classes(self, model: LoadedModel, folder: DataFolder, head: Head) -> None:
        """Can the class folders be the model's outputs? Say so loudly when they cannot."""
        if not folder.labelled:
            return
        folders = len(folder.class_folders)
        k = head.classes(model.num_classes)
        outputs = "classes (negative, positive)" if head.task == "binary" else "outputs"
        if folder.empty_classes:
            self._warn(
                "class folder(s) with no readable image: "
                + ", ".join(folder.empty_classes[:5])
                + " (they keep their class index, so later classes do not shift)"
            )
        what = "class folders" if folder.source == "folder" else "label names"
        source = self.resolved.class_names_source if self.resolved is not None else ""
        positional = source.startswith("class folder names") or (
            source == SOURCE_LABELS and bool(folder.class_folders)
        )
        if folders > k:
            self._classes_trusted = False  # labels past the outputs cannot be model classes
            self._warn(
                f"{folders} {what} but the model has {k} {outputs}: images of the {what} "
                f"after the first {k} cannot be scored, and they cannot be the model's classes; "
                "set data.labels (the model's class names in output order). Occlusion and "
                "saliency explain the predicted class."
            )
        elif positional and folders != k:
            self._positional_mismatch = True
            self._warn(
                f"{folders} {what}, numbered in sorted order, but the model has {k} "
                f"{outputs} and no data.labels maps them to the outputs: accuracy, calibration and "
                f"the other label checks are only right if the {what} are exactly the model's "
                f"first {folders} classes in that order; set data.labels to say which they are"
            )

    def _check_accuracy(self, pass_result: PassResult, folder: DataFolder) -> None:
        """Accuracy (a binary model's AUROC) at chance level usually means the folders are not
        the model's classes (:func:`chance_level`)."""
        message = chance_level(pass_result, folder) if self._classes_trusted else None
        if message is None:
            return
        if self._positional_mismatch:
            message += "; until then occlusion and saliency explain the predicted class"
            self._classes_trusted = False
        self._warn(message)

    def _collectors(self, plan: Plan, setup: SetupContext) -> dict[str, Collector]:
        collectors: dict[str, Collector] = {}
        for name, analysis in plan.runnable:
            try:
                col = analysis.collector(setup, self.config.analyses[name])
            except ReportgenError:
                raise
            except Exception as exc:  # one analysis must not end the run
                plan.decided[name] = self._failed(analysis, exc)
                continue
            if col is not None and self.dist.enabled and not distributed.can_merge(col):
                plan.decided[name] = Section(
                    name,
                    analysis.title,
                    status="skipped",
                    reason="its collector cannot merge results across torchrun processes; run it in one process",
                )
            elif col is not None:
                collectors[name] = col
        return collectors

    def _dataset_pass(
        self,
        model: Any,
        dataset: ImageDataset,
        device: torch.device,
        collectors: dict[str, Collector],
        baseline: LoadedModel | None,
        heads: tuple[Head, Head | None],
    ) -> PassResult:
        cfg = self.config
        head, base_head = heads

        def run(shard: list[int] | None = None) -> PassResult:
            return dataset_pass(
                cfg,
                model,
                dataset,
                device,
                collectors,
                self.progress,
                shard,
                allow_empty=shard is not None,
                baseline=baseline,
                head=head,
                baseline_head=base_head,
            )

        if not self.dist.enabled:
            return run()
        local = run(
            distributed.shard_indices(
                len(dataset),
                cfg.run.batch_size,
                self.dist.rank,
                self.dist.world_size,
                distributed.item_groups(dataset.folder.items, dataset.folder.source),
            )
        )
        merged = distributed.gather_pass(
            self.dist, local, collectors, dataset, cfg.run.batch_size, device
        )
        if merged is None:  # not rank 0: its share of the work is done
            raise _NotMainRank
        return merged

    def run(self) -> RunResult:
        # Checked (and locked) before any work: a folder that cannot take the report fails now.
        if self.config.data.root:
            check_apart_from_inputs(
                self.config.output.dir, [("data.root", self.config.data.root)], may_contain=True
            )
        out = prepare_output_dir(self.config.output.dir) if self._is_main_process() else None
        try:
            return self._run()
        except _NotMainRank:
            return RunResult(
                Path(self.config.output.dir), [], {}, self.timings, rank=self.dist.rank
            )
        finally:
            distributed.shutdown(self.dist)
            if out is not None:
                out.release()

    @staticmethod
    def _is_main_process() -> bool:
        return int(os.environ.get("RANK", "0")) == 0

    def _run(self) -> RunResult:
        t_start = perf_counter()
        cfg = self.config
        out_dir = Path(cfg.output.dir)
        prepared = self.prepare()
        plan = prepared.plan
        sections = dict(plan.decided)
        metrics: dict[str, Any] = {}
        arrays: dict[str, np.ndarray] = {}
        records: dict[str, Any] = {}
        folder = prepared.context.folder
        for name, analysis in list(plan.analyses):
            if (
                analysis.needs.metadata
                and not folder.metadata
                and f"analyses.{name}" not in self.config.explicit
            ):
                # Not asked for by name and nothing to show: left out, not a skipped section
                # in every folder-based report.
                plan.analyses.remove((name, analysis))
                self.left_out[name] = "the data has no metadata columns"
        pending = plan.runnable
        costs = cost.plan_costs(pending, prepared.context_for, self.config.analyses)
        self.timings["plan"] = {n: cost.as_record(c) for n, c in costs.items()}
        self.timings["passes"] = {}
        self.progress.message("plan: " + cost.describe_plan(costs))
        n_images = len(prepared.context.pass_result.labels)
        pass_s = self.timings["dataset_pass"]
        first_rate = n_images / pass_s if pass_s else None
        counting = prepared.context.model.supports_hooks
        for name, analysis in self.progress(
            pending, desc="analyses", total=len(pending), label=lambda item: item[0]
        ):
            raise_if_interrupted()
            t = perf_counter()
            with cost.count_passes(prepared.context.model.module, counting) as counted:
                sections[name], result = self._run_one(analysis, prepared.context_for(name))
            if result is not None:
                metrics.update(result.metrics)
                arrays.update(result.arrays)
                if result.record is not None:
                    records[name] = result.record
                for message in result.warnings:
                    self._warn(message)
                self._tell()
            self.timings["analyses"][name] = perf_counter() - t
            if counting:
                self.timings["passes"][name] = counted.record()
                if counted.incremental:
                    self.timings.setdefault("incremental_copies", {})[name] = counted.incremental
            left = cost.eta_seconds(costs, self.timings["analyses"], first_rate)
            if left is not None and len(self.timings["analyses"]) < len(pending):
                self.progress.message(
                    f"{name}: {self.timings['analyses'][name]:.1f} s; about {left:.0f} s left"
                )
        ordered = [sections[name] for name, _ in plan.analyses]
        for shown in prepared.context.changed_files:
            self._warn(
                f"{shown} changed or was deleted during the run (its bytes are not the ones "
                "the dataset pass read): it is left out of the per-image sections that re-read "
                "it; re-run the report"
            )
        self._tell()

        ctx = prepared.context
        compare: dict[str, Any] | None = None
        if prepared.baseline is not None:
            t = perf_counter()
            compare_section, compare = self._compare(ctx, prepared.baseline)
            ordered.insert(0, compare_section)  # right after the run summary
            self.timings["compare"] = perf_counter() - t
        summary = build_summary(
            cfg,
            ctx.model,
            ctx.folder,
            ctx.pass_result,
            ordered,
            metrics,
            [m.key for cls in self.registry.values() for m in cls.metrics],
            ctx.device,
            out_dir,
            ctx.queries,
            world_size=self.dist.world_size,
            resolved=self.resolved,
            warnings=self.warnings,
            task=self.task,
        )
        summary["run"]["planned_passes"] = {n: cost.as_record(c) for n, c in costs.items()}
        summary["run"]["left_out"] = dict(self.left_out)
        summary["run"]["batches"] = {
            "forward": self.throughput.forward_batch,
            "backward": self.throughput.backward_batch,
            "memory_format": self.throughput.memory_format,
            "source": "configured" if self.throughput.source == "configured" else "measured",
        }
        for name, record in records.items():
            summary.setdefault(name, clean_floats(record))
        if compare is not None:
            summary["compare"] = clean_floats(compare)
        gates = config_gates(cfg, self.registry)
        if gates:
            summary["gates"] = clean_floats(
                evaluate_gates(gates, summary["metrics"], summary.get("compare"))
            )
        headlines = [
            *TASK_HEADLINES.get(ctx.head.task, ()),
            *(
                Headline(m.key, m.label, m.kind)
                for _, analysis in plan.analyses
                for m in analysis.metrics
                if m.headline
            ),
        ]
        # What the analyses declared as headline metrics, for `reportgen history`'s trends.
        summary["headlines"] = [{"key": h.key, "label": h.label, "kind": h.kind} for h in headlines]
        t = perf_counter()
        raise_if_interrupted()
        files, warnings = write_outputs(
            cfg,
            summary,
            ordered,
            headlines,
            lambda: arrays_npz(ctx.pass_result, ctx.folder, arrays),
            out_dir,
            self.warn,
            predictions=predictions_text(ctx.pass_result, ctx.folder),
        )
        self.timings["render"] = perf_counter() - t
        self.timings["total"] = perf_counter() - t_start
        write_atomic(out_dir / "timings.json", to_json(self.timings))
        files.append(out_dir / "timings.json")
        # The folder describes exactly this run: reportgen's own files it did not write go.
        remove_stale_outputs(out_dir, files)
        return RunResult(out_dir, ordered, summary, self.timings, files, warnings)

    def _compare(
        self, ctx: AnalysisContext, baseline: LoadedModel
    ) -> tuple[Section, dict[str, Any] | None]:
        """The comparison with the baseline; a failure here is one failed section."""
        try:
            return compare_with_baseline(ctx, baseline, self.config)
        except Exception as exc:
            self.warn(f"the comparison with the baseline failed: {type(exc).__name__}: {exc}")
            return Section(SECTION_NAME, TITLE, status="failed", reason=failure(exc)), None

    def _run_one(self, analysis: Analysis, ctx: AnalysisContext) -> tuple[Section, Result | None]:
        try:
            result = analysis.run(ctx, self.config.analyses[analysis.name])
            undeclared = set(result.metrics) - {m.key for m in analysis.metrics}
            if undeclared:
                raise RuntimeError(
                    f"reported metrics it does not declare: {', '.join(sorted(undeclared))}"
                )
        except SkipSection as exc:
            return Section(analysis.name, analysis.title, status="skipped", reason=str(exc)), None
        except ReportgenError as exc:
            return Section(analysis.name, analysis.title, status="failed", reason=str(exc)), None
        except Exception as exc:
            return self._failed(analysis, exc), None
        return result.section, result

    def _failed(self, analysis: Analysis, exc: BaseException) -> Section:
        self.warn(f"analysis {analysis.name} failed: {type(exc).__name__}: {exc}")
        log.debug("analysis %s failed", analysis.name, exc_info=exc)
        return Section(analysis.name, analysis.title, status="failed", reason=failure(exc))


def failure(exc: BaseException) -> str:
    """A failed section's reason: the error and where it was raised (file:line)."""
    where = traceback.extract_tb(exc.__traceback__)
    origin = f" (at {Path(where[-1].filename).name}:{where[-1].lineno})" if where else ""
    return f"{type(exc).__name__}: {exc}{origin}"
