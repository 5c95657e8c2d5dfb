"""Rendering: Jinja2 (autoescape on, always) to one self-contained HTML file; JSON; Markdown.

Images are encoded here (PNG for line art, JPEG for photographs) and embedded as data URIs. When
the HTML is over its size budget, photographs are re-encoded smaller and at lower quality first,
then line art is downscaled, until it fits (or the floor is reached), with a warning.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
import numpy as np
from PIL import Image

from reportgen.report.section import (
    Figure,
    Link,
    Picture,
    Section,
    Table,
    Text,
    Thumb,
    format_number,
)

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def templates_dir() -> Path:
    """Templates ship inside the wheel (reportgen/templates); in a checkout they sit at the top."""
    packaged = resources.files("reportgen").joinpath("templates")
    if packaged.is_dir():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[2] / "templates"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError("reportgen's templates are missing from the installation")


# --------------------------------------------------------------------------- image encoding


@dataclass(frozen=True)
class Encoding:
    """How pictures are encoded for one rendering attempt."""

    photo_quality: int = 85
    photo_scale: float = 1.0
    line_scale: float = 1.0

    def smaller(self) -> Encoding | None:
        if self.photo_quality > 60:
            return Encoding(self.photo_quality - 15, self.photo_scale, self.line_scale)
        if self.photo_scale > 0.5:
            return Encoding(self.photo_quality, round(self.photo_scale * 0.75, 3), self.line_scale)
        if self.line_scale > 0.5:
            return Encoding(self.photo_quality, self.photo_scale, round(self.line_scale * 0.75, 3))
        return None


def _resize(pixels: np.ndarray, scale: float) -> Image.Image:
    img = Image.fromarray(pixels)
    if scale < 1.0:
        w, h = img.size
        img = img.resize(
            (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS
        )
    return img


def encode_picture(pic: Picture, enc: Encoding) -> tuple[str, int, int]:
    """(data URI, width, height). Deterministic bytes: no metadata, fixed settings."""
    buf = io.BytesIO()
    if pic.kind == "photo":
        img = _resize(pic.pixels, enc.photo_scale).convert("RGB")
        settings: dict[str, Any] = {
            "format": "JPEG",
            "quality": enc.photo_quality,
            "subsampling": 0 if enc.photo_quality >= 85 else 2,
        }
        try:
            img.save(buf, optimize=True, **settings)
        except OSError:
            # Pillow sizes the optimising encoder's buffer at one byte per pixel; very noisy
            # pictures compress worse than that and fail. The plain encoder has no such limit.
            buf = io.BytesIO()
            img.save(buf, **settings)
        mime = "image/jpeg"
    else:
        img = _resize(pic.pixels, enc.line_scale)
        img.save(buf, format="PNG", optimize=True)
        mime = "image/png"
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f"data:{mime};base64,{data}", img.size[0], img.size[1]


# --------------------------------------------------------------------------- HTML


@dataclass(frozen=True)
class Headline:
    """A headline metric an analysis declared: a card in the run summary, a row in summary.md."""

    key: str
    label: str
    kind: str = "number"
    """number, percent, count or text (how the value is formatted)."""


def format_metric(value: Any, kind: str = "number") -> str:
    if value is None:
        return "n/a"
    if kind == "percent" and isinstance(value, int | float):
        return f"{100 * value:.1f} %"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format_number(value)
    return str(value)


_SOURCE_WORDS = {
    "manifest": "manifest",
    "hf": "Hugging Face dataset",
    "webdataset": "WebDataset shards",
}


def _data_source(d: dict[str, Any]) -> str:
    """Where the images came from: the folder, or the manifest / dataset / shards and root."""
    kind = _SOURCE_WORDS.get(str(d.get("source")))
    if kind is None or not d.get("source_file"):
        return str(d["root"])
    if d.get("source") == "manifest":
        return f"{kind} {d['source_file']} (paths under {d['root']})"
    return f"{kind} {d['source_file']}"


def _task_text(model: dict[str, Any]) -> str:
    """The task and where it came from (:mod:`reportgen.heads`)."""
    task = model.get("task", "multiclass")
    words = {
        "multiclass": "multiclass: softmax over the outputs, the most probable class predicted",
        "binary": "binary: one logit, p = sigmoid(z) the positive class' probability, "
        f"positive when p ≥ {model.get('threshold')}",
        "multilabel": "multi-label: p = sigmoid per label, a label predicted when p ≥ "
        f"{model.get('threshold')}",
    }
    source = model.get("task_source")
    return words.get(task, task) + (f" ({source})" if source else "")


def _class_names_text(task: str, d: dict[str, Any]) -> str:
    """Where the class names came from; for a binary model also which one is which, since
    sorted folder names decide it ('defect' sorts before 'ok')."""
    source = str(d.get("class_names_source") or "class folder names")
    names = d.get("class_names") or []
    if task != "binary" or len(names) != 2:
        return source
    order = " (sorted)" if source.startswith("class folder names") else ""
    how = (
        "" if source.startswith("data.labels") else "; data.labels: [negative, positive] sets them"
    )
    return (
        f"{source}{order}: negative (index 0) = {names[0]}, positive (index 1, the logit's "
        f"class) = {names[1]}{how}"
    )


def _accuracy_row(task: str, met: dict[str, Any], d: dict[str, Any]) -> tuple[str, str]:
    """Accuracy (single-label) or the exact-match ratio (multi-label) over the labelled images."""
    key, name = (
        ("exact_match", "exact match (label sets)")
        if task == "multilabel"
        else (
            "accuracy",
            "accuracy at the threshold" if task == "binary" else "accuracy (top-1)",
        )
    )
    value = met.get(key)
    text = (
        "n/a (unlabelled)"
        if value is None
        else f"{100 * value:.2f} % of {met['num_labelled']} labelled images"
        + (
            f" ({d['num_nonfinite_outputs']} with non-finite outputs left out)"
            if d.get("num_nonfinite_outputs")
            else ""
        )
    )
    return name, text


def overview_rows(summary: dict[str, Any], headlines: list[Headline]) -> list[tuple[str, str]]:
    """The run summary's key/value table (presentation of summary.json)."""
    m, d, met = summary["model"], summary["data"], summary["metrics"]
    task = m.get("task", "multiclass")
    classes = "labels" if task == "multilabel" else "classes"
    rows = [
        ("model", f"{m['arch']} ({m['num_classes']} {classes}, {m['in_channels']}-channel input)"),
        ("task", _task_text(m)),
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
        ("data", _data_source(d)),
        ("class names", _class_names_text(task, d)),
        *([("labels", d["labels_read_as"])] if d.get("labels_read_as") else []),
        *(
            [("metadata columns", ", ".join(d["metadata_columns"]))]
            if d.get("metadata_columns")
            else []
        ),
        (
            "images",
            f"{d['num_images']} read, {d['num_skipped']} skipped"
            + (f", {d['num_classes']} {classes}" if d["labelled"] else ", unlabelled"),
        ),
        _accuracy_row(task, met, d),
    ]
    rows += [(h.label, format_metric(met.get(h.key), h.kind)) for h in headlines]
    pre = summary.get("preprocessing") or {}
    if pre:
        rows.append(
            (
                "preprocessing",
                "; ".join(f"{k} {_short(v['value'])} ({v['source']})" for k, v in pre.items()),
            )
        )
    planned = summary["run"].get("planned_passes") or {}
    if planned:
        rows.append(("model passes planned", _planned_passes(planned)))
    batches = summary["run"].get("batches")
    if batches:
        rows.append(
            (
                "perturbation batches",
                f"{batches['forward']} per forward, {batches['backward']} per forward+backward, "
                f"{batches['memory_format'].replace('_', ' ')} layout ({batches['source']})",
            )
        )
    rows += [
        ("device", summary["run"]["device"]),
        ("seed", str(summary["run"]["seed"])),
        ("sections", ", ".join(f"{s['name']} ({s['status']})" for s in summary["sections"])),
    ]
    return rows


def _planned_passes(planned: dict[str, Any]) -> str:
    """summary.json's ``run.planned_passes`` in words: images through the model per section
    after the dataset pass (forward-only; forward+backward)."""
    parts = []
    for name, p in planned.items():
        if not p or not (p["forward"] or p["backward"]):
            continue
        kinds = [f"{p['forward']:,} forward"] if p["forward"] else []
        kinds += [f"{p['backward']:,} forward+backward"] if p["backward"] else []
        parts.append(f"{name}: " + " + ".join(kinds))
    return "; ".join(parts) or "none after the dataset pass"


def _short(value: Any) -> str:
    if isinstance(value, list):
        return (
            "["
            + ", ".join(format_number(v) if isinstance(v, float) else str(v) for v in value)
            + "]"
        )
    return str(value)


@dataclass
class ReportContext:
    """Everything the templates show. Plain data."""

    title: str
    summary: dict[str, Any]
    overview_rows: list[tuple[str, str]]
    headlines: list[Headline]
    sections: list[Section]
    skipped: list[dict[str, str]]
    config_yaml: str
    versions: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)
    template: str = "report.html.j2"
    """The page template (``compare.html.j2`` for ``reportgen compare``)."""


def make_environment(encoder: Callable[[Picture], tuple[str, int, int]]) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        autoescape=True,  # every template, whatever its name: file and class names are user input
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = format_number
    env.filters["metric"] = format_metric
    env.globals["encode"] = encoder
    env.tests["figure"] = lambda b: isinstance(b, Figure)
    env.tests["table"] = lambda b: isinstance(b, Table)
    env.tests["text"] = lambda b: isinstance(b, Text)
    env.tests["thumb"] = lambda c: isinstance(c, Thumb)
    env.tests["link"] = lambda c: isinstance(c, Link)
    env.tests["number"] = lambda c: isinstance(c, int | float) and not isinstance(c, bool)
    return env


def section_template(env: jinja2.Environment, name: str) -> str:
    specific = f"sections/{name}.html.j2"
    try:
        env.get_template(specific)
        return specific
    except jinja2.TemplateNotFound:
        return "sections/generic.html.j2"


def render_html_once(ctx: ReportContext, enc: Encoding, *, for_pdf: bool = False) -> str:
    cache: dict[int, tuple[str, int, int]] = {}

    def encoder(pic: Picture) -> tuple[str, int, int]:
        key = id(pic)
        if key not in cache:
            cache[key] = encode_picture(pic, enc)
        return cache[key]

    env = make_environment(encoder)
    templates = {s.name: section_template(env, s.name) for s in ctx.sections}
    css = (templates_dir() / "report.css").read_text(encoding="utf-8")
    if for_pdf:
        css += "\n" + (templates_dir() / "pdf.css").read_text(encoding="utf-8")
    return env.get_template(ctx.template).render(
        r=ctx,
        csp=CSP,
        css=markupsafe.Markup(css),  # our own stylesheet, not user data
        section_templates=templates,
        for_pdf=for_pdf,
    )


@dataclass(frozen=True)
class HtmlResult:
    html: str
    encoding: Encoding
    over_budget: bool


def render_html(ctx: ReportContext, budget_bytes: int, *, for_pdf: bool = False) -> HtmlResult:
    enc = Encoding()
    html = render_html_once(ctx, enc, for_pdf=for_pdf)
    while len(html.encode("utf-8")) > budget_bytes:
        nxt = enc.smaller()
        if nxt is None:
            return HtmlResult(html, enc, True)
        enc = nxt
        html = render_html_once(ctx, enc, for_pdf=for_pdf)
    return HtmlResult(html, enc, False)


# --------------------------------------------------------------------------- JSON, Markdown, files


def to_json(data: Any) -> str:
    return (
        json.dumps(
            data,
            indent=2,
            sort_keys=True,
            ensure_ascii=False,
            allow_nan=False,
            default=_json_default,
        )
        + "\n"
    )


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def clean_floats(obj: Any) -> Any:
    """NaN/inf are not JSON: they become null."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean_floats(v) for v in obj]
    return obj


def render_markdown(ctx: ReportContext) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        autoescape=False,  # Markdown, not HTML; user strings are escaped by the md filter
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = format_number
    env.filters["metric"] = format_metric
    env.filters["md"] = markdown_escape
    return env.get_template("summary.md.j2").render(r=ctx)


_MD_SPECIAL = str.maketrans({c: f"\\{c}" for c in "\\`*_{}[]()#+-.!|<>&"})


def markdown_escape(value: Any) -> str:
    """Escape Markdown and HTML syntax so user strings stay text in a PR comment."""
    return str(value).replace("\n", " ").translate(_MD_SPECIAL)
