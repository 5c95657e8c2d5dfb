"""The composition root: the one place that puts the analyses, the configuration and the
pipeline together. The CLI and library users call these functions.

``load_config`` hands the registered analyses' parameter schemas to :mod:`reportgen.config`
(which knows no analysis), ``run_report`` hands the registry to the pipeline (which imports no
analysis), and ``run_demo`` trains the demo model and reports on it through the same path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reportgen.analyses import registered
from reportgen.compare.history_report import HistoryRun, write_history
from reportgen.compare.report import CompareRun, compare_reports
from reportgen.config import Config
from reportgen.config import load_config as _load_config
from reportgen.contract import Analysis
from reportgen.pipeline.execute import Pipeline, RunResult
from reportgen.pipeline.plan import config_gates
from reportgen.runtime.progress import Progress

__all__ = [
    "CompareRun",
    "HistoryRun",
    "RunResult",
    "compare_reports",
    "history_report",
    "load_config",
    "registered_analyses",
    "run_demo",
    "run_report",
]


def history_report(
    dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    formats: Sequence[str] = ("html", "pdf"),
    gates: Sequence[str] = (),
    sort: str = "given",
    warn: Callable[[str], None] = lambda _m: None,
) -> HistoryRun:
    """One page over archived report folders (``reportgen history``); no model is loaded.

    Folders written before summary.json recorded its headline metrics get the headline metrics
    the installed analyses declare."""
    fallback = [
        (m.key, m.label, m.kind)
        for cls in registered().values()
        for m in getattr(cls, "metrics", ())
        if m.headline
    ]
    if sort not in ("given", "name", "release"):
        from reportgen.errors import ConfigError

        raise ConfigError(f"--sort: {sort!r} is not given, name or release")
    return write_history(
        dirs,
        out_dir,
        formats=formats,
        gates=gates,
        sort=sort,  # type: ignore[arg-type]
        fallback_headlines=fallback,
        warn=warn,
    )


def registered_analyses() -> dict[str, type[Analysis]]:
    """The registered analyses, name -> class, in report order (their ``order``)."""
    return registered()


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    analyses: list[str] | None = None,
    extra_gates: Sequence[str] = (),
) -> Config:
    """Load and validate a configuration (a YAML file and/or dotted-key overrides).

    ``analyses`` restricts the run to those analysis names (the ``--analyses`` flag);
    ``extra_gates`` are added to the configuration's gates (the ``--fail-on`` flags).
    """
    registry = registered_analyses()
    schemas = {name: cls.Params for name, cls in registry.items()}
    config = _load_config(
        path, overrides, schemas=schemas, analyses=analyses, extra_gates=extra_gates
    )
    config_gates(config, registry)  # an unknown metric is an input error before any work
    return config


def pipeline(
    config: Config,
    *,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> Pipeline:
    """The pipeline for ``config`` with every registered analysis (``.prepare()`` / ``.run()``)."""
    import logging

    log = logging.getLogger("reportgen")
    return Pipeline(
        config,
        registered_analyses(),
        progress or Progress(quiet=True),
        warn or (lambda m: log.warning("%s", m)),
    )


def run_report(
    config: Config, *, progress: Progress | None = None, warn: Callable[[str], None] | None = None
) -> RunResult:
    """Run every enabled analysis and write the report into ``config.output.dir``."""
    return pipeline(config, progress=progress, warn=warn).run()


def run_demo(
    out_dir: Path,
    *,
    device: str = "auto",
    per_class: int | None = None,
    epochs: int = 15,
    formats: list[str] | None = None,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
    echo: Callable[[str], None] | None = None,
    analyses: list[str] | None = None,
    task: str = "multiclass",
) -> RunResult:
    """Train the demo CNN on scikit-learn's digits (no downloads) and report on it; ``task``:
    ``binary`` (is it a 3?) or ``multilabel`` (even, greater than 4, prime) instead."""
    from reportgen.demo import prepare_demo
    from reportgen.pipeline.environment import resolve_device

    resolve_device(device)  # --device cuda without a GPU: an input error before anything is written
    config_path, trained = prepare_demo(
        out_dir,
        per_class=per_class,
        epochs=epochs,
        progress=progress,
        task=task,  # type: ignore[arg-type]
    )
    if echo is not None:
        what = "exact-match" if task == "multilabel" else ""
        echo(
            f"trained the demo CNN on scikit-learn's digits ({task}): "
            f"{100 * trained.test_accuracy:.1f} % held-out {what} accuracy "
            f"({100 * trained.train_accuracy:.1f} % on the training split)".replace("  ", " ")
        )
    overrides: dict[str, Any] = {"run.device": device, "output.dir": str(out_dir)}
    if formats is not None:
        overrides["output.formats"] = formats
    cfg = load_config(config_path, overrides, analyses=analyses)
    return run_report(cfg, progress=progress, warn=warn)
