"""Generate docs/methods.md and docs/metrics.md from the registries: ``python -m unlearnkit.docs``.

The docs are derived data: a test checks that the committed files match the registry.
"""
from __future__ import annotations

import dataclasses
import inspect
import sys
from pathlib import Path

from .registry import METHODS, METRICS


def _first_paragraph(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


def _needs_reference(method: object) -> str:
    """How a method uses the initial model: a live frozen copy, or only pre-computed log-probs."""
    if getattr(method, "needs_ref_model", False):
        return "live copy"
    return "log-probs (pre-computed)" if getattr(method, "ref_logp_views", ()) else "no"


def methods_table() -> str:
    """One markdown table of every registered method (``unlearnkit ls methods --markdown``)."""
    lines = ["| method | kind | paper | reference model | retain set | you supply | hyperparameters (defaults) |",
             "|---|---|---|---|---|---|---|"]
    for name in METHODS.names():
        cls, meta = METHODS.get(name), METHODS.meta[name]
        method = cls()
        hyper = ", ".join(f"{f.name}={getattr(method, f.name)!r}" for f in dataclasses.fields(cls))
        inputs = ", ".join(f"`method.{f}`" for f in meta.get("inputs", ())) or "-"
        cells = [f"`{name}`", meta.get("kind", "loss"), meta.get("paper", ""), _needs_reference(method),
                 "yes" if method.needs_retain else "no", inputs, hyper or "-"]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def methods_markdown() -> str:
    lines = ["# Methods", "", "Generated from the registry by `python -m unlearnkit.docs`; do not edit.", "",
             "Use a method with `unlearnkit unlearn --method NAME method.FIELD=VALUE ...`. *Loss* methods",
             "add a loss to the shared training loop; *procedure* methods edit the model (they may train",
             "copies of it on the way). This table is also printed by `unlearnkit ls methods --markdown`.", "",
             methods_table()]
    for name in METHODS.names():
        cls, meta = METHODS.get(name), METHODS.meta[name]
        lines += [f"## `{name}`", "", _first_paragraph(cls), ""]
        for key in ("paper", "reference"):
            if meta.get(key):
                lines.append(f"- **{key}**: {meta[key]}")
        fields = dataclasses.fields(cls)
        lines += ["", "| hyperparameter | default |", "|---|---|"] if fields else ["", "No hyperparameters."]
        for f in fields:
            default = f.default if f.default is not dataclasses.MISSING else "(computed)"
            lines.append(f"| `{f.name}` | `{default!r}` |")
        lines.append("")
    return "\n".join(lines)


def metrics_markdown() -> str:
    lines = ["# Metrics", "", "Generated from the registry by `python -m unlearnkit.docs`; do not edit.", "",
             "| name | higher is better | version | description |", "|---|---|---|---|"]
    for name in METRICS.names():
        meta = METRICS.meta[name]
        desc = (meta.get("description") or _first_paragraph(METRICS.get(name))).replace("|", "\\|")
        lines.append(f"| `{name}` | {meta.get('higher_is_better')} | {meta.get('version', 1)} | {desc} |")
    return "\n".join(lines) + "\n"


def write_docs(folder: str | Path = "docs") -> list[Path]:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    files = [(out / "methods.md", methods_markdown()), (out / "metrics.md", metrics_markdown())]
    for path, text in files:
        path.write_text(text, encoding="utf-8")
    return [p for p, _ in files]


if __name__ == "__main__":
    for p in write_docs(sys.argv[1] if len(sys.argv) > 1 else "docs"):
        print(f"wrote {p}")
