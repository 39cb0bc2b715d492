"""Results that describe themselves: ``results.json`` (schema v1) and a self-contained ``report.html``.

``results.json`` carries what is needed to read and reproduce a run: unlearnkit version, git sha,
command, config, metric metadata (direction, version, description), per-model scores, per-example
arrays, split sizes, per-step training logs and timing. NaN/inf never reach the file (they become
``null``), so any JSON reader can load it. ``report.html`` is one file with no external assets: the
plots are PNGs (matplotlib, Agg) embedded as base64 data URIs.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import html
import io
import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Sequence

import numpy as np

from . import __version__
from .errors import UnlearnkitError
from .storage import write_text_atomic

SCHEMA_VERSION = 1
KEY_METRICS = (
    "forget_prob", "retain_prob", "holdout_prob", "forget_truth_ratio",
    "forget_rouge", "retain_rouge", "forget_quality", "model_utility",
)
COLLAPSE_WARNING = (
    "A collapsed model can score a high forget quality: "
    "read forget quality together with the retain-set scores."
)
_SPLIT_ORDER = ("forget", "retain", "holdout")
_NA = "n/a"


# --------------------------------------------------------------------------- results.json


def git_sha() -> str | None:
    """``git rev-parse HEAD`` of the repository holding this package, or None. Never raises."""
    here = Path(__file__).resolve().parent
    if "site-packages" in here.parts:  # an installed copy: an enclosing repo would be someone else's
        return None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
            timeout=5, stdin=subprocess.DEVNULL,
        )
    except Exception:  # no git binary, timeout, odd environment: the sha is optional
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", sha) else None


def to_jsonable(obj: Any) -> Any:
    """Plain-JSON copy of ``obj``: numpy/torch scalars and arrays to lists, NaN/inf to None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "tolist"):  # numpy arrays, torch tensors
        return to_jsonable(obj.tolist())
    return str(obj)  # Path, Enum, ...: readable rather than a crash at the end of a long run


def build_results(
    *,
    models: Mapping[str, Mapping[str, Any]],
    metric_info: Mapping[str, Mapping[str, Any]],
    per_example: Mapping[str, Mapping[str, Any]] | None = None,
    config: Mapping[str, Any] | None = None,
    command: str | None = None,
    splits: Mapping[str, int] | None = None,
    training: Mapping[str, Any] | None = None,
    timing: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Assemble a schema-v1 results document (already JSON-clean: NaN/inf are None).

    ``models`` maps model name -> flat ``{metric: float | None, "path": str}``; ``metric_info``
    maps metric name -> ``{"higher_is_better": bool | None, "version": int, "description": str}``.
    """
    from .runtime import environment

    if not isinstance(models, Mapping) or not all(isinstance(m, Mapping) for m in models.values()):
        raise TypeError("models must map model name -> {metric name: value}")
    doc = {
        "schema_version": SCHEMA_VERSION,
        "unlearnkit": __version__,
        "git": git_sha(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "config": config or {},
        "metrics": metric_info,
        "models": models,
        "per_example": per_example or {},
        "splits": splits or {},
        "training": training or {},
        "timing": timing or {},
        "environment": environment(),
    }
    return to_jsonable(doc)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically; NaN/inf become null so the file is always valid."""
    text = json.dumps(to_jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False)
    return write_text_atomic(path, text + "\n")


def _check_schema(obj: Any, path: Path) -> None:
    """Raise UnlearnkitError unless ``obj`` looks like a results document this version can read."""
    if not isinstance(obj, dict) or "schema_version" not in obj:
        raise UnlearnkitError(
            f"{path} is not an unlearnkit results file (no 'schema_version' key); "
            "pass the results.json written by an evaluation run"
        )
    if obj["schema_version"] != SCHEMA_VERSION:
        raise UnlearnkitError(
            f"{path} has schema_version {obj['schema_version']!r}, but unlearnkit {__version__} "
            f"reads schema_version {SCHEMA_VERSION}; use the unlearnkit version that wrote it"
        )
    if not isinstance(obj.get("models"), dict):
        raise UnlearnkitError(f"{path}: 'models' must be an object of model name -> metrics")


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read a results.json (or a run directory holding one); clear UnlearnkitError when it can't."""
    path = Path(path)
    if path.is_dir() and (path / "results.json").is_file():
        path = path / "results.json"
    if not path.is_file():
        raise UnlearnkitError(
            f"results file not found: {path}; pass the results.json of a run (or its directory)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UnlearnkitError(f"cannot read {path}: {exc}") from exc
    try:
        obj = json.loads(text, parse_constant=lambda _c: None)  # NaN/Infinity from other writers
    except json.JSONDecodeError as exc:
        raise UnlearnkitError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "re-run the evaluation that wrote it"
        ) from exc
    _check_schema(obj, path)
    return obj


# --------------------------------------------------------------------------- shared helpers


def _num(value: Any) -> float | None:
    """``value`` as a finite float, else None (null, NaN, strings and bools are not scores)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value: Any) -> str:
    """Format one cell: 3 decimals in [0.01, 1000), else 3 significant digits in e-notation."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(value)
    num = _num(value)
    if num is None:
        return _NA
    return f"{num:.3f}" if num == 0 or 0.01 <= abs(num) < 1000 else f"{num:.2e}"


def _fmt_seconds(seconds: Any) -> str:
    """``312.4`` -> ``5 min 12 s``."""
    s = _num(seconds)
    if s is None:
        return _NA
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _models(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The ``models`` section, keeping only well-formed entries."""
    models = results.get("models") or {}
    return {str(k): v for k, v in models.items() if isinstance(v, Mapping)}


def _metric_names(results: Mapping[str, Any]) -> list[str]:
    """Metrics reported by at least one model: described ones first (in order), then the rest."""
    models = _models(results).values()
    seen = [k for m in models for k in m if k != "path"]
    ordered = [k for k in (results.get("metrics") or {}) if k in seen] + seen
    return list(dict.fromkeys(ordered))


def _direction(results: Mapping[str, Any], metric: str) -> bool | None:
    """``higher_is_better`` for ``metric`` from the metadata (None when unknown / not ordered)."""
    info = (results.get("metrics") or {}).get(metric)
    return info.get("higher_is_better") if isinstance(info, Mapping) else None


def _arrow(results: Mapping[str, Any], metric: str) -> str:
    """``↑`` when higher is better, ``↓`` when lower is better, empty otherwise."""
    return {True: "↑", False: "↓"}.get(_direction(results, metric), "")


def _esc(value: Any) -> str:
    """HTML-escape anything (None shown as n/a)."""
    return html.escape(_NA if value is None else str(value), quote=True)


# --------------------------------------------------------------------------- plots


def _figure(width: float, height: float) -> Any:
    """A pyplot-free Figure: no global figure registry, nothing to close, no GUI backend."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png_data_uri(fig: Any) -> str:
    """Render ``fig`` to PNG (Agg) and return it as a ``data:image/png;base64,`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    fig.clear()
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _label(name: str) -> str:
    """A model name safe for matplotlib text: no mathtext, not hidden from legends by a ``_``."""
    name = str(name).replace("$", r"\$")
    return " " + name if name.startswith("_") else name


def _colours(results: Mapping[str, Any]) -> dict[str, Any]:
    """One colour per model name, the same in every plot."""
    from matplotlib import colormaps

    names = [*_models(results), *(results.get("per_example") or {}), *(results.get("training") or {})]
    palette = colormaps["tab10"].colors
    return {n: palette[i % len(palette)] for i, n in enumerate(dict.fromkeys(map(str, names)))}


def _prob_keys(models: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``*_prob`` metrics with a value somewhere, forget / retain / holdout first."""
    keys = [k for m in models.values() for k, v in m.items() if k.endswith("_prob") and _num(v) is not None]
    keys = list(dict.fromkeys(keys))
    rank = {f"{s}_prob": i for i, s in enumerate(_SPLIT_ORDER)}
    return sorted(keys, key=lambda k: (rank.get(k, len(rank)), keys.index(k)))


def plot_probs(results: Mapping[str, Any]) -> Any | None:
    """Grouped bars: mean answer probability per split (x) for each model (before / after)."""
    models, keys = _models(results), _prob_keys(_models(results))
    if not keys:
        return None
    colours, width = _colours(results), 0.8 / len(models)
    fig = _figure(max(5.5, 1.2 * len(keys) * max(1, len(models) / 2) + 2.5), 3.6)
    ax, x = fig.add_subplot(), np.arange(len(keys))
    for i, (name, scores) in enumerate(models.items()):
        values = [_num(scores.get(k)) for k in keys]
        heights = [0.0 if v is None else v for v in values]
        bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, heights, width * 0.95,
                      label=_label(name), color=colours[name])
        ax.bar_label(bars, labels=[_NA if v is None else f"{v:.2f}" for v in values],
                     fontsize=7, padding=2)
    ax.set_xticks(x, [k.removesuffix("_prob") for k in keys])
    top = max((_num(m.get(k)) or 0.0) for m in models.values() for k in keys)
    ax.set_ylim(0, 1.1 if top <= 1 else top * 1.1)
    ax.set_ylabel("mean answer probability")
    ax.set_title("Answer probability per split, per model (before / after unlearning)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return fig


def _spans_decades(values: list[float]) -> bool:
    """True when all values are positive and span at least two orders of magnitude."""
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 100


def plot_quality_utility(results: Mapping[str, Any]) -> Any | None:
    """Scatter: forget quality (x) vs model utility (y), one labelled point per model."""
    points = [(n, _num(m.get("forget_quality")), _num(m.get("model_utility")))
              for n, m in _models(results).items()]
    points = [(n, fq, mu) for n, fq, mu in points if fq is not None and mu is not None]
    if not points:
        return None
    colours = _colours(results)
    fig = _figure(5.5, 4.0)
    ax = fig.add_subplot()
    for name, fq, mu in points:
        ax.scatter(fq, mu, s=60, color=colours[name], zorder=3, edgecolor="black", linewidth=0.5)
        ax.annotate(_label(name), (fq, mu), xytext=(6, 6), textcoords="offset points", fontsize=8)
    log_x = _spans_decades([fq for _, fq, _ in points])
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(f"forget quality {_arrow(results, 'forget_quality')}" + (" (log scale)" if log_x else ""))
    ax.set_ylabel(f"model utility {_arrow(results, 'model_utility')}")
    ax.set_title("Forget quality vs model utility")
    missing = [_label(n) for n in _models(results) if n not in {p[0] for p in points}]
    if missing:
        ax.text(0.01, 0.01, "not shown (null score): " + ", ".join(missing), transform=ax.transAxes,
                fontsize=7, color="0.4", va="bottom")
    ax.margins(0.15)
    ax.grid(alpha=0.3)
    return fig


def _per_example(results: Mapping[str, Any], key: str) -> dict[str, np.ndarray]:
    """model -> finite per-example values of ``key`` (models without any are left out)."""
    out = {}
    for name, arrays in (results.get("per_example") or {}).items():
        if isinstance(arrays, Mapping) and isinstance(arrays.get(key), (list, tuple)):
            values = np.array([v for v in map(_num, arrays[key]) if v is not None], dtype=float)
            if values.size:
                out[str(name)] = values
    return out


def plot_truth_ratio(results: Mapping[str, Any]) -> Any | None:
    """Violins (with every example as a jittered dot) of the per-example forget truth ratio."""
    data = _per_example(results, "forget_truth_ratio")
    if not data:
        return None
    colours, pos = _colours(results), np.arange(1, len(data) + 1)
    fig = _figure(max(4.5, 1.5 * len(data) + 2), 3.6)
    ax = fig.add_subplot()
    spread = [i for i, v in enumerate(data.values()) if v.size >= 2 and np.ptp(v) > 0]
    if spread:  # a violin needs at least two distinct values (kernel density estimate)
        values = list(data.values())
        parts = ax.violinplot([values[i] for i in spread], positions=pos[spread], widths=0.8,
                              showmedians=True, showextrema=False)
        for body, i in zip(parts["bodies"], spread):
            body.set_facecolor(colours[list(data)[i]])
            body.set_alpha(0.35)
    rng = np.random.default_rng(0)
    for p, (name, v) in zip(pos, data.items()):
        ax.scatter(p + rng.uniform(-0.08, 0.08, v.size), v, s=9, color=colours[name], alpha=0.8, zorder=3)
    ax.set_xticks(pos, [_label(n) for n in data])
    ax.set_ylabel(f"forget truth ratio {_arrow(results, 'forget_truth_ratio')}")
    ax.set_title("Per-example forget truth ratio")
    ax.grid(axis="y", alpha=0.3)
    return fig


def _training_logs(results: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    """model -> its non-empty per-step log (list of dicts)."""
    out = {}
    for name, section in (results.get("training") or {}).items():
        log = section.get("log") if isinstance(section, Mapping) else None
        rows = [r for r in log if isinstance(r, Mapping)] if isinstance(log, list) else []
        if rows:
            out[str(name)] = rows
    return out


def _plot_log(ax: Any, name: str, log: list[Mapping[str, Any]]) -> None:
    """One line per logged loss term (keys containing 'loss') against the step."""
    terms = list(dict.fromkeys(k for row in log for k in row if "loss" in k))
    steps = [i + 1 if (s := _num(row.get("step"))) is None else s for i, row in enumerate(log)]
    for term in terms:
        ys = [np.nan if (v := _num(row.get(term))) is None else v for row in log]
        ax.plot(steps, ys, label=term, linewidth=1.3, marker="." if len(log) <= 40 else None)
    if not terms:
        ax.text(0.5, 0.5, "no loss terms logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(_label(name), fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if terms:
        ax.legend(fontsize=7)


def plot_training(results: Mapping[str, Any]) -> Any | None:
    """Training curves: one panel per model with a per-step log, one line per loss term."""
    logs = _training_logs(results)
    if not logs:
        return None
    ncols = min(3, len(logs))
    nrows = math.ceil(len(logs) / ncols)
    fig = _figure(4.6 * ncols, 3.3 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, log) in zip(axes, logs.items()):
        _plot_log(ax, name, log)
    for ax in axes[len(logs):]:
        ax.set_visible(False)
    fig.suptitle("Training loss per logged term")
    return fig


MEMORIZATION_KEYS = ("em", "forget_prob")  # training-log keys of the memorization curves


def _memorization_series(log: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the records that carry ``key`` (other records are skipped)."""
    points = [(_num(r.get("step")), _num(r.get(key))) for r in log]
    points = [(s, v) for s, v in points if s is not None and v is not None]
    return [s for s, _ in points], [v for _, v in points]


def plot_memorization(results: Mapping[str, Any]) -> Any | None:
    """Memorization during training: logged ``em`` (solid) and ``forget_prob`` (dashed) vs step."""
    colours, styles = _colours(results), {"em": "-", "forget_prob": "--"}
    series = [(name, key, *_memorization_series(log, key))
              for name, log in _training_logs(results).items() for key in MEMORIZATION_KEYS]
    series = [s for s in series if s[2]]
    if not series:
        return None
    fig = _figure(9.0, 4.4)
    ax = fig.add_subplot()
    for name, key, steps, values in series:
        ax.plot(steps, values, linestyle=styles[key], color=colours[name], linewidth=1.6,
                marker="o" if len(steps) <= 30 else None, markersize=4, label=f"{_label(name)}: {key}")
    ax.set_xlabel("step", fontsize=11)
    ax.set_ylabel("exact memorization (em) / forget answer prob", fontsize=10)
    ax.set_title("Memorization during training", fontsize=12)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


# --------------------------------------------------------------------------- report.html

_PLOTS: tuple[tuple[str, Callable[[Mapping[str, Any]], Any], str], ...] = (
    ("answer probability per split", plot_probs,
     "After unlearning, the forget bar should fall to the level of the retain model (never trained "
     "on the forget set) while the retain bars stay as high as the target model's."),
    ("forget quality vs model utility", plot_quality_utility,
     "Top-right is best. Models with a null score are left out."),
    ("per-example forget truth ratio", plot_truth_ratio,
     "Each dot is one forget-set example; the violin shows their spread."),
    ("training curves", plot_training, "Every loss term logged during training, per step."),
    ("memorization during training", plot_memorization,
     "Tirumala et al.'s exact memorization M(f) of the training / forget set (em, solid; logged every "
     "train.track_em_every steps) and the forget-set answer probability checked for early stopping (dashed)."),
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
padding:0 1em;color:#222}
h1{margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}
th,td{padding:.25em .8em;border-bottom:1px solid #e4e4e4;text-align:right}
th:first-child,td:first-child{text-align:left}
table.meta th{color:#666;font-weight:normal}table.meta td{text-align:left}
td.na{color:#aaa}th[title]{cursor:help;text-decoration:underline dotted}
.dir{color:#06c;font-weight:bold}
.warning{background:#fff4e5;border-left:4px solid #f0a020;padding:.6em 1em}
figure{margin:1.2em 0}figure img{max-width:100%}figcaption{color:#555;font-size:.9em}
.plot-error{color:#b00}pre{background:#f6f6f6;padding:.8em;overflow:auto}
"""


def _meta_rows(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, html) pairs for the report header."""
    sha = results.get("git")
    git = f'<code title="{_esc(sha)}">{_esc(sha[:12])}</code>' if isinstance(sha, str) else _NA
    timing = results.get("timing") or {}
    order = sorted(timing, key=lambda k: k != "total_s")
    splits = results.get("splits") or {}
    return [
        ("command", f"<code>{_esc(results.get('command') or 'not recorded')}</code>"),
        ("unlearnkit", _esc(results.get("unlearnkit"))),
        ("git", git),
        ("created", _esc(results.get("created"))),
        ("splits", " · ".join(f"{_esc(k)} {_esc(v)}" for k, v in splits.items()) or _NA),
        ("timing", " · ".join(f"{_esc(k.removesuffix('_s'))} {_esc(_fmt_seconds(timing[k]))}"
                              for k in order) or _NA),
    ]


def _html_header(results: Mapping[str, Any]) -> str:
    """Title plus the table of what produced these results."""
    rows = "".join(f"<tr><th>{label}</th><td>{value}</td></tr>" for label, value in _meta_rows(results))
    return f'<h1>unlearnkit report</h1>\n<table class="meta">{rows}</table>'


def _metric_th(results: Mapping[str, Any], metric: str) -> str:
    """Row header: metric name + direction arrow, description as a tooltip."""
    info = (results.get("metrics") or {}).get(metric)
    info = info if isinstance(info, Mapping) else {}
    hib = info.get("higher_is_better")
    tip = [str(info.get("description") or "")]
    tip += [{True: "higher is better", False: "lower is better"}.get(hib, "")]
    tip += [f"version {info['version']}" if "version" in info else ""]
    title = " · ".join(t for t in tip if t)
    attr = f' title="{_esc(title)}"' if title else ""
    return f'<th{attr}>{_esc(metric)} <span class="dir">{_arrow(results, metric)}</span></th>'


def _html_metrics_table(results: Mapping[str, Any]) -> str:
    """Rows = metrics, columns = models; null / NaN cells shown as n/a."""
    models = _models(results)
    head = "".join(f'<th title="{_esc(m.get("path") or "")}">{_esc(n)}</th>' for n, m in models.items())
    body = []
    for metric in _metric_names(results):
        cells = []
        for scores in models.values():
            value = scores.get(metric)
            css = ' class="na"' if _num(value) is None and not isinstance(value, (str, int)) else ""
            cells.append(f'<td{css} title="{_esc(value)}">{_esc(_fmt(value))}</td>')
        body.append(f"<tr>{_metric_th(results, metric)}{''.join(cells)}</tr>")
    return (f'<table class="metrics"><thead><tr><th>metric</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _html_plot(results: Mapping[str, Any], title: str, make: Callable, caption: str) -> str:
    """One ``<figure>``; a plot that fails becomes a visible note instead of losing the report."""
    try:
        fig = make(results)
        if fig is None:
            return ""
        uri = _png_data_uri(fig)
    except Exception as exc:  # a report at the end of a long run must still be written
        warnings.warn(f"report plot '{title}' failed: {exc!r}", stacklevel=2)
        return f'<p class="plot-error">Plot "{_esc(title)}" could not be drawn: {_esc(repr(exc))}</p>'
    return (f'<figure><img src="{uri}" alt="{_esc(title)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def _html_details(results: Mapping[str, Any]) -> str:
    """Collapsible config and metric metadata, as JSON."""
    parts = []
    for key in ("config", "metrics"):
        text = json.dumps(to_jsonable(results.get(key) or {}), indent=2, ensure_ascii=False)
        parts.append(f"<details><summary>{key}</summary><pre>{_esc(text)}</pre></details>")
    return "\n".join(parts)


def render_html(results: Mapping[str, Any]) -> str:
    """The whole report as one self-contained HTML string (no scripts, no external assets)."""
    if not isinstance(results, Mapping) or not isinstance(results.get("models"), Mapping):
        raise UnlearnkitError("results must be a results document with a 'models' object")
    plots = "\n".join(_html_plot(results, *spec) for spec in _PLOTS)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>unlearnkit report: {_esc(results.get('command') or 'results')}</title>",
        f"<style>{_CSS}</style></head><body>",
        _html_header(results),
        "<h2>Metrics</h2>", _html_metrics_table(results),
        f'<p class="warning">⚠ {_esc(COLLAPSE_WARNING)}</p>',
        "<h2>Plots</h2>", plots or "<p>No plottable values.</p>",
        "<h2>Details</h2>", _html_details(results),
        "</body></html>", "",
    ])


def write_html(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``render_html(results)`` to ``path`` atomically; returns the path."""
    return write_text_atomic(path, render_html(results))


# --------------------------------------------------------------------------- text summary


def _summary_rows(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (metric + arrow, one formatted cell per model) of the key metrics."""
    models = _models(results)
    present = _metric_names(results)
    metrics = [k for k in KEY_METRICS if k in present] or present  # custom metrics: show them all
    rows = [[f"{k} {_arrow(results, k)}".rstrip(), *(_fmt(m.get(k)) for m in models.values())]
            for k in metrics]
    return ["metric", *models], rows


def summary_table(results: Mapping[str, Any]) -> str:
    """The key metrics per model as a plain aligned text table (metrics as rows)."""
    header, rows = _summary_rows(results)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first, rest = cells[0].ljust(widths[0]), (c.rjust(w) for c, w in zip(cells[1:], widths[1:]))
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _rich_table(results: Mapping[str, Any]) -> Any:
    """The same table as :func:`summary_table`, as a rich Table (names are not markup)."""
    from rich.table import Table
    from rich.text import Text

    header, rows = _summary_rows(results)
    table = Table(title="unlearnkit results", title_justify="left")
    table.add_column(Text(header[0]), justify="left", style="bold")
    for name in header[1:]:
        table.add_column(Text(name), justify="right")
    for row in rows:
        table.add_row(*(Text(c) for c in row))
    return table


def print_summary(results: Mapping[str, Any], *, file: IO[str] | None = None) -> None:
    """Print the summary: a rich table on a terminal, the plain text table otherwise."""
    file = sys.stdout if file is None else file
    if getattr(file, "isatty", lambda: False)():
        from rich.console import Console

        Console(file=file).print(_rich_table(results))
        return
    text = summary_table(results) + "\n"
    encoding = getattr(file, "encoding", None) or "utf-8"
    file.write(text.encode(encoding, "replace").decode(encoding))  # e.g. arrows on an ASCII pipe


# --------------------------------------------------------------------------- audit page (issue 6)

_AUDIT_SIDES = (("unlearned", "#d62728"), ("retain", "#7f7f7f"))


def _audit_metric_names(doc: Mapping[str, Any]) -> list[str]:
    """Every metric some attack reported a ratio for, the audit's forget metrics first."""
    names = list(doc.get("metrics") or {})
    for row in (doc.get("attacks") or {}).values():
        for side, _ in _AUDIT_SIDES:
            names += [m for m in (row.get(side) or {}).get("recovery") or {} if m not in names]
    return names


def _audit_bars(ax: Any, doc: Mapping[str, Any], names: list[str]) -> None:
    """Each attack's largest recovery ratio over its metrics: unlearned model vs retain model."""
    attacks, x = doc["attacks"], np.arange(len(names))
    for j, (side, colour) in enumerate(_AUDIT_SIDES):
        values = [_num((attacks[n].get(side) or {}).get("recovery_ratio")) for n in names]
        bars = ax.bar(x + (j - 0.5) * 0.4, [0.0 if v is None else v for v in values], 0.38, color=colour,
                      label=f"{side} model")
        ax.bar_label(bars, labels=["n/a" if v is None else f"{v:.2f}" for v in values], fontsize=7, padding=2)
    if fail := _num((doc.get("config") or {}).get("fail_above")):
        ax.axhline(fail, color="black", ls="--", lw=1, label=f"--fail-above {fail:g}")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("recovery ratio (largest metric)")
    ax.set_title("How much forgotten knowledge each attack brings back", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _audit_heatmap(fig: Any, ax: Any, doc: Mapping[str, Any], names: list[str], metrics: list[str]) -> None:
    """Attacks x metrics: the unlearned model's recovery ratio per metric (blank = not measured)."""
    grid = np.array([[_num(((doc["attacks"][n].get("unlearned") or {}).get("recovery") or {}).get(m)) or np.nan
                      for m in metrics] for n in names], dtype=float)  # (attacks, metrics)
    image = ax.imshow(grid.T, cmap="Reds", vmin=0.0, vmax=max(1.0, float(np.nanmax(grid, initial=0.0))), aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(i, j, f"{v:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(np.arange(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_yticks(np.arange(len(metrics)), metrics, fontsize=8)
    ax.set_title("Unlearned model: recovery ratio per metric", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8)


def plot_audit(doc: Mapping[str, Any]) -> Any | None:
    """The audit's picture: per-attack recovery (unlearned vs retain model) and per-metric detail."""
    names, metrics = list(doc.get("attacks") or {}), _audit_metric_names(doc)
    if not names or not metrics:
        return None
    fig = _figure(max(6.5, 0.8 * len(names) + 3.0), 3.4 + 0.35 * len(metrics) + 1.2)
    top, bottom = fig.subplots(2, 1, height_ratios=[3.4, 0.35 * len(metrics) + 1.2])
    _audit_bars(top, doc, names)
    _audit_heatmap(fig, bottom, doc, names, metrics)
    return fig


def _audit_table(doc: Mapping[str, Any]) -> str:
    """Rows = attacks: kind, cost, per metric the unlearned model's value and ratio, the retain model's ratio."""
    metrics = _audit_metric_names(doc)
    head = "".join(f"<th>{_esc(m)}<br>unlearned · ratio · retain ratio</th>" for m in metrics)
    body = []
    for name, row in (doc.get("attacks") or {}).items():
        unl, ret = row.get("unlearned") or {}, row.get("retain") or {}
        cells = [f"<td>{_esc(_fmt((unl.get('metrics') or {}).get(m)))} · "
                 f"<b>{_esc(_fmt((unl.get('recovery') or {}).get(m)))}</b> · "
                 f"{_esc(_fmt((ret.get('recovery') or {}).get(m)) if ret else _NA)}</td>" for m in metrics]
        body.append(f"<tr><th title=\"{_esc(row.get('cost'))}\">{_esc(name)}</th><td>{_esc(row.get('kind'))}</td>"
                    f"<td>{_esc(_fmt_seconds(unl.get('seconds')))}</td>{''.join(cells)}</tr>")
    return (f'<table class="metrics"><thead><tr><th>attack</th><th>kind</th><th>time</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _audit_models_table(doc: Mapping[str, Any]) -> str:
    models = doc.get("models") or {}
    metrics = list(doc.get("metrics") or {})
    rows = "".join(f"<tr><th>{_esc(who)}</th>" + "".join(
        f"<td>{_esc(_fmt((m.get('metrics') or {}).get(k)))}</td>" for k in metrics) + "</tr>"
        for who, m in models.items())
    head = "".join(f'<th title="{_esc((doc.get("metrics") or {}).get(k))}">{_esc(k)}</th>' for k in metrics)
    return f'<table class="metrics"><thead><tr><th>model</th>{head}</tr></thead><tbody>{rows}</tbody></table>'


def render_audit_html(doc: Mapping[str, Any]) -> str:
    """The audit (``audit.json``) as one self-contained HTML page."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("attacks"), Mapping):
        raise UnlearnkitError("an audit document must have an 'attacks' object (unlearnkit audit --out)")
    worst, passed = doc.get("max_recovery_ratio"), doc.get("passed")
    verdict = {True: "PASSED", False: "FAILED", None: "no gate (--fail-above not set)"}[passed]
    split = doc.get("split") or {}
    costs = "".join(f"<li><b>{_esc(n)}</b>: {_esc(r.get('cost'))}</li>" for n, r in doc["attacks"].items())
    skipped = "".join(f"<li><b>{_esc(n)}</b> was not run: {_esc(why)}</li>" for n, why in (doc.get("skipped") or {}).items())
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>unlearnkit audit</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>unlearnkit robustness audit</h1>",
        f"<p>Largest recovery ratio on the unlearned model: <b>{_esc(_fmt(worst))}</b> — {_esc(verdict)}. "
        f"Recovery = (m_attacked − m_unlearned) / (m_target − m_unlearned): 0 = nothing came back, 1 = the "
        f"target model's value. The retain model (never saw the forget set) is the honest floor. Attackers "
        f"trained on {_esc(split.get('attack_train'))} forget records; recovery is measured on the other "
        f"{_esc(split.get('eval'))}.</p>",
        "<h2>Models before any attack</h2>", _audit_models_table(doc),
        "<h2>Recovery per attack</h2>", _html_plot(doc, "recovery per attack", plot_audit,
                                                   "Top: each attack's largest recovery ratio, unlearned model (red) "
                                                   "vs retain model (grey, the honest floor). Bottom: per metric."),
        _audit_table(doc), f'<ul class="warning">{skipped}</ul>' if skipped else "",
        "<h2>What each attack costs</h2>", f"<ul>{costs}</ul>",
        "<h2>Details</h2>", f"<details><summary>audit.json</summary><pre>"
        f"{_esc(json.dumps(to_jsonable(doc), indent=2, ensure_ascii=False))}</pre></details>",
        "</body></html>", "",
    ])


def write_audit_html(doc: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``render_audit_html(doc)`` to ``path`` atomically; returns the path."""
    return write_text_atomic(path, render_audit_html(doc))
