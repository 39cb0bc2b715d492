"""Comparison reports: the results of several runs side by side in one self-contained HTML page.

``unlearnkit compare runs/npo runs/grad_diff --out compare.html`` reads each run's ``results.json``
(schema v1, see :mod:`unlearnkit.report`) and writes one page with

* a table of every metric any run reports: one row per (run, model), labelled ``run/model``, the
  direction arrow of each metric, and the best value of each column marked among the *unlearned*
  models (reference models -- :data:`REFERENCE_MODELS` -- are shown but never ranked);
* forget quality vs model utility, with the Pareto front of the unlearned models;
* answer probability per split, training-loss curves and memorization curves.

Every model of every run is included, even when runs share the same reference models (the demo's
``target`` and ``retain``): a comparison never hides rows. Plots are PNGs embedded as data URIs,
so the page needs no network; a plot that no run has data for is skipped with a note in the page.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from . import report
from .errors import DataError, UnlearnkitError
from .report import _esc, _fmt, _num, plot_memorization
from .storage import write_text_atomic

REFERENCE_MODELS = frozenset({"base", "target", "retain"})
"""Model names treated as references (not ranked when marking the best value)."""
SPLIT_PROBS = ("forget_prob", "retain_prob", "holdout_prob", "real_authors_prob", "world_facts_prob")
BEST_MARK = "★"
_COLUMNS_PER_TABLE = 8
_OPEN_DIFF_ROWS = 15


@dataclass(frozen=True)
class Run:
    """One run: its label (folder name, unique in a comparison), results file and document."""

    label: str
    path: Path
    results: dict[str, Any]


@dataclass(frozen=True)
class Row:
    """One table row: a model of a run and its flat metric values."""

    run: str
    model: str
    values: Mapping[str, Any]

    @property
    def label(self) -> str:
        return f"{self.run}/{self.model}"

    @property
    def reference(self) -> bool:
        return self.model in REFERENCE_MODELS


@dataclass(frozen=True)
class CompareTable:
    """Rows = (run, model); columns = metrics. ``best[metric]`` holds the indices of best rows."""

    metrics: list[str]
    directions: dict[str, bool | None]
    rows: list[Row]
    best: dict[str, frozenset[int]]


# --------------------------------------------------------------------------- loading


def _results_file(path: str | os.PathLike) -> Path:
    """The results.json named by ``path`` (a run folder or the file itself); DataError if absent."""
    p = Path(path)
    if p.is_dir():
        if not (p / "results.json").is_file():
            raise DataError(f"run folder {p} has no results.json; pass a folder written by "
                            "`unlearnkit demo` / `unlearnkit eval --out`, or the results.json itself")
        return p / "results.json"
    if not p.exists():
        raise DataError(f"run not found: {p}; pass a run folder containing results.json, "
                        "or a results.json file")
    return p


def _label_path(file: Path) -> Path:
    """The path a run is named after: its folder for ``results.json``, else the file without suffix."""
    file = file.resolve()
    return file.parent if file.name == "results.json" else file.with_suffix("")


def unique_labels(paths: Sequence[Path]) -> list[str]:
    """Folder names, lengthened with parent folders where they clash, numbered if still equal."""
    parts = [[p for p in Path(path).parts if p != Path(path).anchor] or [str(path)] for path in paths]
    depth = [1] * len(parts)
    while True:
        labels = ["/".join(ps[-d:]) for ps, d in zip(parts, depth)]
        counts = Counter(labels)
        clash = [i for i, lab in enumerate(labels) if depth[i] < len(parts[i]) and any(
            labels[j] == lab and parts[j] != parts[i] for j in range(len(parts)))]  # same path: number it
        if not clash:
            break
        for i in clash:
            depth[i] += 1
    seen: Counter[str] = Counter()
    out = []
    for lab in labels:
        seen[lab] += 1
        out.append(lab if counts[lab] == 1 else f"{lab} #{seen[lab]}")
    return out


def load_runs(paths: Iterable[str | os.PathLike]) -> list[Run]:
    """Load each run (folder with results.json, or the file); errors name the offending path."""
    files = [_results_file(p) for p in paths]
    if not files:
        raise UnlearnkitError("nothing to compare: pass at least one run folder or results.json")
    docs = [report.load_results(f) for f in files]  # its errors name the file
    labels = unique_labels([_label_path(f) for f in files])
    return [Run(label, f, doc) for label, f, doc in zip(labels, files, docs)]


# --------------------------------------------------------------------------- table


def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[int]:
    """Indices (ascending) of the points no other point dominates, both coordinates maximised.

    ``q`` dominates ``p`` when ``q >= p`` in both coordinates and ``q > p`` in at least one; equal
    points do not dominate each other. Points with a None / NaN coordinate are never on the front.
    """
    clean = [(i, (x, y)) for i, (x, y) in enumerate(points) if _num(x) is not None and _num(y) is not None]

    def dominated(p: tuple[float, float]) -> bool:
        return any(q[0] >= p[0] and q[1] >= p[1] and q != p for _, q in clean)

    return [i for i, p in clean if not dominated(p)]


def _metric_order(runs: Sequence[Run]) -> list[str]:
    """Every metric any run reports: report.KEY_METRICS first, then in order of appearance."""
    seen = list(dict.fromkeys(m for run in runs for m in report._metric_names(run.results)))
    key = [m for m in report.KEY_METRICS if m in seen]
    return key + [m for m in seen if m not in key]


def _direction(runs: Sequence[Run], metric: str) -> bool | None:
    """The direction the runs agree on (runs without one are ignored); None if unknown or conflicting."""
    known = {d for run in runs if (d := report._direction(run.results, metric)) is not None}
    return known.pop() if len(known) == 1 else None


def _best_rows(rows: Sequence[Row], metric: str, direction: bool | None) -> frozenset[int]:
    """Rows holding the best value among >= 2 unlearned models with a value; empty if no direction."""
    if direction is None:
        return frozenset()
    values = [(i, v) for i, row in enumerate(rows)
              if not row.reference and (v := _num(row.values.get(metric))) is not None]
    if len(values) < 2:
        return frozenset()
    best = (max if direction else min)(v for _, v in values)
    return frozenset(i for i, v in values if math.isclose(v, best, rel_tol=1e-12, abs_tol=0.0))


def compare_table(runs: Sequence[Run]) -> CompareTable:
    """The comparison table: one row per (run, model), every metric, best values per column."""
    rows = [Row(run.label, name, scores) for run in runs for name, scores in report._models(run.results).items()]
    metrics = _metric_order(runs)
    directions = {m: _direction(runs, m) for m in metrics}
    best = {m: _best_rows(rows, m, directions[m]) for m in metrics}
    return CompareTable(metrics=metrics, directions=directions, rows=rows, best=best)


def _metric_info(runs: Sequence[Run], metric: str, direction: bool | None) -> dict[str, Any]:
    """Metadata of ``metric`` from the first run describing it, with the agreed direction."""
    infos = [i for run in runs if isinstance(i := (run.results.get("metrics") or {}).get(metric), Mapping)]
    return {**(infos[0] if infos else {}), "higher_is_better": direction}


def merged_results(runs: Sequence[Run]) -> dict[str, Any]:
    """One pseudo results document with models and training logs keyed ``run/model``.

    It lets report.py's helpers (colours, arrows, training curves) draw all runs in one figure.
    """
    table = compare_table(runs)
    return {
        "models": {row.label: row.values for row in table.rows},
        "metrics": {m: _metric_info(runs, m, table.directions[m]) for m in table.metrics},
        "training": {f"{run.label}/{name}": section for run in runs
                     for name, section in (run.results.get("training") or {}).items()},
        "per_example": {},
    }


# --------------------------------------------------------------------------- plots


def _point_groups(merged: Mapping[str, Any]) -> dict[tuple[float, float], list[str]]:
    """(forget quality, model utility) -> names of the models at exactly that point."""
    groups: dict[tuple[float, float], list[str]] = {}
    for name, scores in report._models(merged).items():
        fq, mu = _num(scores.get("forget_quality")), _num(scores.get("model_utility"))
        if fq is not None and mu is not None:
            groups.setdefault((fq, mu), []).append(name)
    return groups


def _is_reference(name: str) -> bool:
    """True for a ``run/model`` name whose model is a reference model."""
    return name.rsplit("/", 1)[-1] in REFERENCE_MODELS


def _draw_front(ax: Any, groups: Mapping[tuple[float, float], list[str]]) -> bool:
    """Dashed line through the Pareto front of the points holding an unlearned model; False if none."""
    points = [p for p, names in groups.items() if not all(map(_is_reference, names))]
    front = sorted(points[i] for i in pareto_front(points))
    if front:
        ax.plot(*zip(*front), linestyle="--", color="0.35", linewidth=1.2, zorder=2,
                marker="o", markersize=15, markerfacecolor="none", markeredgecolor="0.35",
                label="Pareto front (unlearned models)")
    return bool(front)


# label offsets in points (dx, dy, ha, va), tried in order until the label overlaps nothing
_LABEL_SPOTS = ((9, 7, "left", "bottom"), (9, -7, "left", "top"), (-9, 7, "right", "bottom"),
                (-9, -7, "right", "top"), (0, 12, "center", "bottom"), (0, -12, "center", "top"))


def _place(label: Any, spot: tuple[int, int, str, str]) -> None:
    """Put an annotation at one of the _LABEL_SPOTS."""
    dx, dy, ha, va = spot
    label.xyann = (dx, dy)
    label.set(ha=ha, va=va)


def _declutter(fig: Any, ax: Any, labels: Sequence[Any]) -> None:
    """Move each point label to the first spot inside the axes that overlaps no earlier label/point."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw_without_rendering()  # settle the constrained layout and the scales first
    frame, legend = ax.get_window_extent(), ax.get_legend()
    points = [ax.transData.transform(label.xy) for label in labels]
    placed = [legend.get_window_extent(renderer)] if legend else []
    for label in labels:
        for spot in (*_LABEL_SPOTS, _LABEL_SPOTS[0]):  # nowhere free: back to the first spot
            _place(label, spot)
            box = label.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            hits_point = any(box.expanded(1.05, 1.1).contains(*p) for p in points)
            if inside and not hits_point and not any(box.overlaps(b) for b in placed):
                break
        placed.append(box)


def plot_quality_utility(merged: Mapping[str, Any]) -> Any | None:
    """Scatter forget quality (x) vs model utility (y), points labelled, Pareto front drawn."""
    groups = _point_groups(merged)
    if not groups:
        return None
    colours = report._colours(merged)
    fig = report._figure(9.0, 5.6)
    ax = fig.add_subplot()
    labels = []
    for (fq, mu), names in sorted(groups.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        ref = all(map(_is_reference, names))
        ax.scatter(fq, mu, s=70, marker="s" if ref else "o", color=colours[names[0]], zorder=3,
                   edgecolor="black", linewidth=0.6)
        labels.append(ax.annotate("\n".join(map(report._label, names)), (fq, mu), fontsize=9, zorder=4,
                                  xytext=_LABEL_SPOTS[0][:2], textcoords="offset points"))
    has_front = _draw_front(ax, groups)
    log_x = report._spans_decades([fq for fq, _ in groups])
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(f"forget quality {report._arrow(merged, 'forget_quality')}" + (" (log scale)" if log_x else ""),
                  fontsize=11)
    ax.set_ylabel(f"model utility {report._arrow(merged, 'model_utility')}", fontsize=11)
    ax.set_title("Forget quality vs model utility (squares: reference models)", fontsize=12)
    ax.margins(0.2)
    ax.grid(alpha=0.3)
    if has_front:
        ax.legend(fontsize=9, loc="lower left")
    _declutter(fig, ax, labels)
    return fig


def _prob_panel(ax: Any, merged: Mapping[str, Any], key: str, colours: Mapping[str, Any]) -> None:
    """One split: a horizontal bar per run/model (names as tick labels, values at the bar ends)."""
    models = report._models(merged)
    values = [_num(scores.get(key)) for scores in models.values()]
    y = range(len(models))
    bars = ax.barh(y, [v or 0.0 for v in values], color=[colours[n] for n in models], height=0.75)
    ax.bar_label(bars, labels=[_fmt(v) for v in values], fontsize=9, padding=3)
    ax.set_yticks(y, [report._label(n) for n in models], fontsize=9)
    ax.yaxis.set_inverted(True)  # first run on top, like the table (not a toggle: axes share y)
    top = max([v for v in values if v is not None] + [1.0])
    ax.set_xlim(0, top * 1.18)
    ax.set_title(f"{key.removesuffix('_prob')} {report._arrow(merged, key)}".strip(), fontsize=11)
    ax.grid(axis="x", alpha=0.3)


def plot_probs(merged: Mapping[str, Any]) -> Any | None:
    """Answer probability per split: one panel per split (forget, retain, holdout, ...), one bar per model."""
    models = report._models(merged)
    keys = [k for k in SPLIT_PROBS if any(_num(m.get(k)) is not None for m in models.values())]
    if not keys:
        return None
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = report._figure(11.5, nrows * (0.28 * len(models) + 1.1))
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
    colours = report._colours(merged)
    for ax, key in zip(axes, keys):
        _prob_panel(ax, merged, key, colours)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    fig.suptitle("Mean answer probability per split", fontsize=12)
    fig.supxlabel("mean answer probability", fontsize=10)
    return fig


def plot_training(merged: Mapping[str, Any]) -> Any | None:
    """Training-loss curves: one panel per run/model with a per-step log (report.plot_training)."""
    return report.plot_training(merged)


# (title, plot, caption, note shown when no run has the data)
_PLOTS: tuple[tuple[str, Callable[[Mapping[str, Any]], Any], str, str], ...] = (
    ("forget quality vs model utility", plot_quality_utility,
     "Top-right is best. The dashed line joins the Pareto front of the unlearned models: no other "
     "unlearned model is at least as good on both axes. Points at the same place share one label.",
     "No model has both forget_quality and model_utility; evaluate with a reference (retain) model."),
    ("answer probability per split", plot_probs,
     "Mean answer probability on each split. After unlearning, forget should fall to the retain "
     "model's level while the other splits stay as high as the target model's.",
     "No run reports a per-split answer probability (forget_prob, retain_prob, ...)."),
    ("training loss", plot_training, "Every loss term logged during training, per step.",
     "No run has a training log."),
    ("memorization during training", plot_memorization,
     "Exact memorization M(f) ('em', solid) and forget answer probability ('forget_prob', dashed) "
     "as logged every few steps; steps without the value are skipped.",
     "No training log has 'em' or 'forget_prob' entries."),
)


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1300px;
padding:0 1em;color:#222;font-size:15px}
h1{margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}h3{margin:1.2em 0 .3em}
table{border-collapse:collapse;margin:.6em 0}
th,td{padding:.3em .7em;border-bottom:1px solid #e4e4e4;text-align:right;vertical-align:bottom}
th:first-child,td:first-child{text-align:left;white-space:nowrap}
table.metrics th{font-size:.85em;max-width:9em}table.metrics td{font-variant-numeric:tabular-nums}
table.meta td,table.meta th{text-align:left;vertical-align:top}
td.na{color:#aaa}td.best{background:#e6f4ea}th[title]{cursor:help;text-decoration:underline dotted}
tr.ref td:first-child{color:#666;font-style:italic}.tag{font-size:.75em;color:#888;font-style:normal}
.dir{color:#06c;font-weight:bold}.mark{color:#1a7f37}
.warning{background:#fff4e5;border-left:4px solid #f0a020;padding:.6em 1em}
.skipped{color:#666;background:#f6f6f6;padding:.5em 1em;border-left:4px solid #ccc}
figure{margin:1.2em 0}figure img{max-width:100%}figcaption{color:#555;font-size:.9em}
summary{cursor:pointer;font-weight:600;margin:.8em 0 .3em}.plot-error{color:#b00}code{font-size:.9em}
"""


def _run_summary_html(runs: Sequence[Run]) -> str:
    """Table of the compared runs: label, file, command, method, created, version, git, time."""
    head = "".join(f"<th>{h}</th>" for h in ("run", "results", "command", "method", "created",
                                               "unlearnkit", "git", "total time"))
    rows = []
    for run in runs:
        config = run.results.get("config") or {}
        doc, method = run.results, config.get("method")
        method = method.get("name") if isinstance(method, Mapping) else method
        if method is None and isinstance(config.get("unlearning_runs"), Mapping):  # a `bench tofu` folder
            method = ", ".join(sorted({str(r.get("method")) for r in config["unlearning_runs"].values()}))
        sha = doc.get("git")
        cells = [f"<b>{_esc(run.label)}</b>", f"<code>{_esc(run.path)}</code>",
                 f"<code>{_esc(doc.get('command') or 'not recorded')}</code>", _esc(method),
                 _esc(doc.get("created")), _esc(doc.get("unlearnkit")),
                 f"<code>{_esc(sha[:12])}</code>" if isinstance(sha, str) else "n/a",
                 _esc(report._fmt_seconds((doc.get("timing") or {}).get("total_s")))]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table class="meta"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and scalars are leaves)."""
    if not isinstance(obj, Mapping):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _config_diff_html(runs: Sequence[Run]) -> str:
    """Config keys whose values differ between the runs (nothing when there is one run)."""
    flat = [_flatten(run.results.get("config") or {}) for run in runs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    diff = [k for k in keys if len({json.dumps(f[k], default=str) if k in f else None for f in flat}) > 1]
    if len(runs) < 2 or not diff:
        return ""
    head = "".join(f"<th>{_esc(run.label)}</th>" for run in runs)
    body = "".join(f"<tr><th>{_esc(k)}</th>" + "".join(
        f"<td>{_esc(json.dumps(f[k], default=str)) if k in f else 'unset'}</td>" for f in flat) + "</tr>"
        for k in diff)
    table = f'<table class="meta"><thead><tr><th>key</th>{head}</tr></thead><tbody>{body}</tbody></table>'
    is_open = " open" if len(diff) <= _OPEN_DIFF_ROWS else ""  # a long list stays folded
    return f"<details{is_open}><summary>Config differences ({len(diff)} keys)</summary>{table}</details>"


def _metric_header(runs: Sequence[Run], metric: str, direction: bool | None) -> str:
    """Column header: metric name (breakable at '_') + arrow; description and version as tooltip."""
    info = _metric_info(runs, metric, direction)
    tip = [str(info.get("description") or ""), {True: "higher is better", False: "lower is better"}.get(
        direction, "no better direction"), f"version {info['version']}" if "version" in info else ""]
    name = "_<wbr>".join(_esc(part) for part in metric.split("_"))
    arrow = {True: "↑", False: "↓"}.get(direction, "")
    return f'<th title="{_esc(" · ".join(t for t in tip if t))}">{name} <span class="dir">{arrow}</span></th>'


def _cell(table: CompareTable, index: int, metric: str) -> str:
    """One value: formatted, n/a when missing, bold + marker when it is the column's best."""
    value = table.rows[index].values.get(metric)
    text, tip = _esc(_fmt(value)), _esc(value)
    if index in table.best[metric]:
        return f'<td class="best" title="{tip} (best)"><strong>{text}</strong> <span class="mark">{BEST_MARK}</span></td>'
    css = ' class="na"' if _num(value) is None and not isinstance(value, (str, int)) else ""
    return f'<td{css} title="{tip}">{text}</td>'


def _column_groups(metrics: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Split the columns into legible tables: the key metrics, then the rest in chunks."""
    key = [m for m in metrics if m in report.KEY_METRICS]
    rest = [m for m in metrics if m not in key]
    chunks = [rest[i:i + _COLUMNS_PER_TABLE] for i in range(0, len(rest), _COLUMNS_PER_TABLE)]
    titled = [(f"other metrics ({j}/{len(chunks)})" if len(chunks) > 1 else "other metrics", c)
              for j, c in enumerate(chunks, 1)]
    return ([("key metrics", key)] if key else []) + titled


def _table_html(runs: Sequence[Run], table: CompareTable, title: str, metrics: Sequence[str]) -> str:
    """One table: rows = run/model (reference models tagged), columns = ``metrics``."""
    head = "".join(_metric_header(runs, m, table.directions[m]) for m in metrics)
    body = []
    for i, row in enumerate(table.rows):
        tag = ' <span class="tag">reference</span>' if row.reference else ""
        css = ' class="ref"' if row.reference else ""
        cells = "".join(_cell(table, i, m) for m in metrics)
        body.append(f'<tr{css}><td title="{_esc(row.values.get("path") or "")}">{_esc(row.label)}{tag}</td>{cells}</tr>')
    return (f"<h3>{_esc(title)}</h3>"
            f'<table class="metrics"><thead><tr><th>run/model</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _metrics_html(runs: Sequence[Run], table: CompareTable) -> str:
    """Legend, collapse warning and the metric tables."""
    refs = ", ".join(sorted(REFERENCE_MODELS))
    legend = (f'<p><span class="dir">↑</span> higher is better, <span class="dir">↓</span> lower is better, '
              f"no arrow: no better direction. <strong>Bold</strong> {BEST_MARK}: best value of the column "
              f"among the unlearned models (reference models -- {refs} -- are not ranked; a column is "
              "ranked only when its direction is known and at least two unlearned models have a value). "
              "n/a: not reported. Hover a header for the metric's description.</p>")
    tables = [_table_html(runs, table, t, ms) for t, ms in _column_groups(table.metrics)]
    if not tables:
        tables = ["<p>No run reports any metric.</p>"]
    return "\n".join([legend, f'<p class="warning">⚠ {_esc(report.COLLAPSE_WARNING)}</p>', *tables])


def _plot_html(merged: Mapping[str, Any], title: str, make: Callable, caption: str, note: str) -> str:
    """A titled figure (report._html_plot), or a note that the plot was skipped and why."""
    figure = report._html_plot(merged, title, make, caption)
    return f"<h3>{_esc(title)}</h3>" + (figure or f'<p class="skipped">Skipped: {_esc(note)}</p>')


def render_compare_html(runs: Sequence[Run]) -> str:
    """The comparison page as one self-contained HTML string (no scripts, no external assets)."""
    runs = list(runs)
    if not runs:
        raise UnlearnkitError("nothing to compare: pass at least one run")
    merged, table = merged_results(runs), compare_table(runs)
    labels = ", ".join(run.label for run in runs)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>unlearnkit comparison: {_esc(labels)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>unlearnkit comparison</h1><p>{len(runs)} run(s), {len(table.rows)} model(s).</p>",
        "<h2>Runs</h2>", _run_summary_html(runs), _config_diff_html(runs),
        "<h2>Metrics</h2>", _metrics_html(runs, table),
        "<h2>Plots</h2>", *(_plot_html(merged, *spec) for spec in _PLOTS),
        "</body></html>", "",
    ])


def write_compare_html(runs: Sequence[Run], path: str | os.PathLike) -> Path:
    """Write ``render_compare_html(runs)`` to ``path`` atomically; returns the path."""
    return write_text_atomic(path, render_compare_html(runs))


__all__ = [
    "BEST_MARK", "REFERENCE_MODELS", "CompareTable", "Row", "Run", "compare_table", "load_runs",
    "merged_results", "pareto_front", "plot_memorization", "plot_probs", "plot_quality_utility",
    "plot_training", "render_compare_html", "unique_labels", "write_compare_html",
]
