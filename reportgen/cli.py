"""The command line. The only module that imports click; the work happens in the library.

Exit codes: 0 report written, every section ok or skipped; 1 report written but at least one
section failed, or the PDF could not be rendered; 2 bad input (config, checkpoint, data, layer
names, gates) - nothing written; 3 report written but a --fail-on gate failed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from reportgen.errors import ConfigError, ReportgenError
from reportgen.runtime.interrupts import interrupt_handlers
from reportgen.version import __version__

EXIT_INPUT_ERROR = 2


def fail_on_option(example: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--fail-on EXPR`` (repeatable), shared by ``run`` and ``compare``."""
    return click.option(
        "--fail-on",
        "fail_on",
        multiple=True,
        metavar="EXPR",
        help=f"A condition that must hold, e.g. '{example}' (repeatable; exit code 3 if not).",
    )


def _fail(exc: ReportgenError) -> NoReturn:
    # One line, whatever the library's message held (users grep logs; CI shows the last line).
    click.echo(f"reportgen: error: {' '.join(str(exc).split())}", err=True)
    sys.exit(exc.exit_code)


def _warn(message: str) -> None:
    click.echo(f"reportgen: warning: {message}", err=True)


def _finish(result: Any, quiet: bool) -> None:
    for s in result.sections:
        if s.status == "failed":
            click.echo(f"reportgen: section {s.name} failed: {s.reason}", err=True)
    for gate in getattr(result, "summary", {}).get("gates", []):
        if not gate["passed"]:
            value = gate["value"] if gate["value"] is not None else gate.get("reason")
            click.echo(f"reportgen: gate failed: {gate['expr']} ({value})", err=True)
    if not quiet and result.rank == 0:  # torchrun: only rank 0 writes (and reports) outputs
        names = ", ".join(p.name for p in result.files)
        click.echo(f"report written to {result.out_dir / 'report.html'} ({names})")
    sys.exit(result.exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="reportgen")
def cli() -> None:
    """Interpretability reports for CNN checkpoints: filters, neighbours, embeddings and more."""
    logging.basicConfig(level=logging.WARNING, format="reportgen: %(message)s")


@cli.command("run")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="YAML config; flags override it.",
)
@click.option("--model", "arch", help="torchvision model name or package.module:factory.")
@click.option("--weights", help="State dict (.pt/.pth/.safetensors); never runs code.")
@click.option(
    "--checkpoint", help="Whole model (pickle, TorchScript, .pt2); needs --trust-checkpoint."
)
@click.option(
    "--trust-checkpoint",
    is_flag=True,
    default=None,
    help="Allow --checkpoint files, which run code when loaded.",
)
@click.option(
    "--data",
    "data_root",
    help="Image folder (class sub-folders or flat), WebDataset shards, or a Hugging Face dataset.",
)
@click.option(
    "--manifest", help="CSV/TSV/JSONL/Parquet listing the images (path, label, metadata)."
)
@click.option(
    "--columns",
    help="Manifest column names, e.g. path=file_name,label=dx (data.columns).",
)
@click.option("--split", help="A Hugging Face dataset's split (validation, test ...).")
@click.option(
    "--task",
    type=click.Choice(["auto", "multiclass", "binary", "multilabel"]),
    help="What the outputs mean (model.task; default auto: one output = binary).",
)
@click.option(
    "--threshold",
    type=float,
    help="Probability at or above which a binary/multi-label prediction is positive (0.5).",
)
@click.option("--out", "out_dir", help="Output folder (default: report/).")
@click.option(
    "--analyses", help="Comma-separated analyses to run (default: all; see list-analyses)."
)
@click.option("--device", help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", type=click.IntRange(0, 2**64 - 1), help="Random seed (default 0).")
@click.option(
    "--max-images",
    type=click.IntRange(min=1),
    help="Use at most N images, spread evenly over the folder.",
)
@click.option("--format", "formats", help="Comma-separated outputs: html,pdf (default both).")
@click.option("--quiet", is_flag=True, default=None, help="No progress bars or messages.")
@click.option("--release", help="The model release this report describes (run.release).")
@click.option(
    "--baseline-weights", help="An older model's state dict to compare against (same pass)."
)
@click.option(
    "--baseline-model", "baseline_arch", help="The baseline's architecture (default: --model)."
)
@click.option(
    "--baseline-checkpoint", help="A whole-model baseline; needs --trust-baseline-checkpoint."
)
@click.option(
    "--trust-baseline-checkpoint",
    is_flag=True,
    default=None,
    help="Allow --baseline-checkpoint files, which run code when loaded.",
)
@fail_on_option("accuracy>=0.9")
def run_command(
    config_path: str | None,
    arch: str | None,
    weights: str | None,
    checkpoint: str | None,
    trust_checkpoint: bool | None,
    data_root: str | None,
    manifest: str | None,
    columns: str | None,
    split: str | None,
    task: str | None,
    threshold: float | None,
    out_dir: str | None,
    analyses: str | None,
    device: str | None,
    seed: int | None,
    max_images: int | None,
    formats: str | None,
    quiet: bool | None,
    release: str | None,
    baseline_weights: str | None,
    baseline_arch: str | None,
    baseline_checkpoint: str | None,
    trust_baseline_checkpoint: bool | None,
    fail_on: tuple[str, ...],
) -> None:
    """Write report.html, report.pdf, summary.json for a checkpoint and an image folder."""

    overrides = {
        "model.arch": arch,
        "model.weights": weights,
        "model.checkpoint": checkpoint,
        "model.trust_checkpoint": trust_checkpoint,
        "data.root": data_root,
        "data.manifest": manifest,
        "data.split": split,
        "model.task": task,
        "model.threshold": threshold,
        **_columns(columns),
        "output.dir": out_dir,
        "run.device": device,
        "run.seed": seed,
        "data.max_images": max_images,
        "output.formats": _split(formats) if formats else None,
        "run.quiet": quiet,
        "run.release": release,
        "baseline.weights": baseline_weights,
        "baseline.arch": baseline_arch,
        "baseline.checkpoint": baseline_checkpoint,
        "baseline.trust_checkpoint": trust_baseline_checkpoint,
    }
    with interrupt_handlers(notify=_warn):
        _run(config_path, overrides, analyses, fail_on)


def _run(
    config_path: str | None,
    overrides: dict[str, Any],
    analyses: str | None,
    fail_on: tuple[str, ...],
) -> None:
    from reportgen.api import load_config, run_report
    from reportgen.runtime.progress import Progress

    try:
        cfg = load_config(
            config_path,
            overrides,
            analyses=_split(analyses) if analyses is not None else None,
            extra_gates=list(fail_on),  # added to the config file's gates: every one must hold
        )
        result = run_report(cfg, progress=Progress(quiet=cfg.run.quiet), warn=_warn)
    except ReportgenError as exc:
        _fail(exc)
    _finish(result, cfg.run.quiet)


def _columns(value: str | None) -> dict[str, str]:
    """``--columns path=file_name,label=dx`` -> ``data.columns.*`` overrides."""
    out: dict[str, str] = {}
    for part in _split(value or ""):
        role, eq, name = part.partition("=")
        if not eq or role.strip() not in ("path", "label", "labels") or not name.strip():
            _fail(
                ConfigError(
                    f"--columns: {part!r} is not ROLE=COLUMN with ROLE path, label or labels "
                    "(e.g. --columns path=file_name,label=dx)"
                )
            )
        out[f"data.columns.{role.strip()}"] = name.strip()
    return out


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@cli.command("demo")
@click.option("--out", "out_dir", default="demo-report", show_default=True, help="Output folder.")
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="Device for the report (training is on the CPU).",
)
@click.option(
    "--task",
    type=click.Choice(["multiclass", "binary", "multilabel"]),
    default="multiclass",
    show_default=True,
    help="binary: one logit, 'is it a 3?'; multilabel: even / greater than 4 / prime.",
)
@click.option("--quiet", is_flag=True, help="No progress bars or messages.")
def demo_command(out_dir: str, device: str, task: str, quiet: bool) -> None:
    """Train a small CNN on scikit-learn's digits (no downloads) and report on it."""
    from reportgen.api import run_demo
    from reportgen.runtime.progress import Progress

    with interrupt_handlers(notify=_warn):
        try:
            result = run_demo(
                Path(out_dir),
                device=device,
                progress=Progress(quiet=quiet),
                warn=_warn,
                echo=None if quiet else click.echo,
                task=task,
            )
        except ReportgenError as exc:
            _fail(exc)
        _finish(result, quiet)


@cli.command("compare")
@click.argument("old_dir", type=click.Path(file_okay=False))
@click.argument("new_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, help="Output folder for the comparison report.")
@click.option("--format", "formats", help="Comma-separated outputs: html,pdf (default both).")
@fail_on_option("compare.negative_flip_rate<=0.01")
@click.option(
    "--allow-version-mismatch",
    is_flag=True,
    help="Compare folders written by different reportgen versions (a note says so).",
)
@click.option("--quiet", is_flag=True, help="No messages.")
def compare_command(
    old_dir: str,
    new_dir: str,
    out_dir: str,
    formats: str | None,
    fail_on: tuple[str, ...],
    allow_version_mismatch: bool,
    quiet: bool,
) -> None:
    """Compare two report folders written by `reportgen run` (OLD_DIR is the baseline)."""

    chosen = _split(formats) if formats else ["html", "pdf"]
    unknown = [f for f in chosen if f not in ("html", "pdf", "md")]
    if unknown or not {"html", "pdf"} & set(chosen):
        _fail(ReportgenError(f"--format: choose html and/or pdf (got {formats!r})"))
    with interrupt_handlers(notify=_warn):
        _compare(old_dir, new_dir, out_dir, chosen, fail_on, allow_version_mismatch, quiet)


def _compare(
    old_dir: str,
    new_dir: str,
    out_dir: str,
    chosen: list[str],
    fail_on: tuple[str, ...],
    allow_version_mismatch: bool,
    quiet: bool,
) -> None:
    from reportgen.api import compare_reports

    try:
        result = compare_reports(
            old_dir,
            new_dir,
            out_dir,
            formats=chosen,
            gates=list(fail_on),
            allow_version_mismatch=allow_version_mismatch,
            warn=_warn,
        )
    except ReportgenError as exc:
        _fail(exc)
    _finish(result, quiet)


@cli.command("history")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, help="Output folder for the history report.")
@click.option("--format", "formats", help="Comma-separated outputs: html,pdf (default both).")
@click.option(
    "--sort",
    type=click.Choice(["given", "name", "release"]),
    default="given",
    show_default=True,
    help="Release order: as given, by folder name, or by release label (numbers in order).",
)
@fail_on_option("history.accuracy_drop_from_best<=0.01")
@click.option("--quiet", is_flag=True, help="No messages.")
def history_command(
    dirs: tuple[str, ...],
    out_dir: str,
    formats: str | None,
    sort: str,
    fail_on: tuple[str, ...],
    quiet: bool,
) -> None:
    """One page over archived report folders (one per release, in order); no model is loaded."""
    from reportgen.api import history_report

    chosen = _split(formats) if formats else ["html", "pdf"]
    if any(f not in ("html", "pdf") for f in chosen) or not chosen:
        _fail(ReportgenError(f"--format: choose html and/or pdf (got {formats!r})"))
    with interrupt_handlers(notify=_warn):
        try:
            result = history_report(
                list(dirs), out_dir, formats=chosen, gates=list(fail_on), sort=sort, warn=_warn
            )
        except ReportgenError as exc:
            _fail(exc)
        _finish(result, quiet)


@cli.command("list-analyses")
def list_analyses_command() -> None:
    """The analyses, their config keys, defaults and allowed values."""
    # The registry, not the API: reading the declarations imports no torch.
    from reportgen.analyses import registered
    from reportgen.params import describe

    for name, cls in registered().items():
        click.echo(f"{name}: {cls.title}")
        for info in describe(cls.Params):
            rules = f"  ({info.rules})" if info.rules else ""
            click.echo(f"    {info.name}: {info.default!r}{rules}")


@cli.command("list-layers")
@click.option(
    "--model", "arch", required=True, help="torchvision model name or package.module:factory."
)
@click.option("--num-classes", type=click.IntRange(min=1), default=None)
def list_layers_command(arch: str, num_classes: int | None) -> None:
    """Every layer name of an architecture (for model.penultimate and analyses' layer lists)."""
    import torch

    from reportgen.loading.models import build_architecture

    try:
        with torch.device("meta"):
            model = build_architecture(arch, num_classes)
    except ReportgenError as exc:
        _fail(exc)
    for name, module in model.named_modules():
        if name:
            click.echo(f"{name}\t{type(module).__name__}")


def main() -> None:
    try:
        cli.main(prog_name="reportgen", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("reportgen: interrupted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        # A bad flag or value: the promised one line naming it, exit code 2 (not click's three).
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        click.echo(f"reportgen: error: {' '.join(exc.format_message().split())}{hint}", err=True)
        sys.exit(EXIT_INPUT_ERROR)
    except click.ClickException as exc:
        click.echo(f"reportgen: error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(EXIT_INPUT_ERROR)
