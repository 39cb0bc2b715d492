"""Generate docs/methods.md, docs/metrics.md and docs/attacks.md from the registries: ``python -m unlearnkit.docs``.

The docs are derived data: a test checks that the committed files match the registry.
"""
from __future__ import annotations

import dataclasses
import inspect
import sys
from pathlib import Path

from .registry import ATTACKS, METHODS, METRICS


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


def _attack_kind(cls: type) -> str:
    return "read-out" if getattr(cls, "readout", False) else cls.kind


def attacks_table() -> str:
    """One markdown table of every registered attack (``unlearnkit ls attacks --markdown``)."""
    lines = ["| attack | kind | paper | compute (what `budget` scales) | settings (defaults) |", "|---|---|---|---|---|"]
    for name in ATTACKS.names():
        cls, meta = ATTACKS.get(name), ATTACKS.meta[name]
        attack = cls()
        settings = ", ".join(f"{f.name}={getattr(attack, f.name)!r}" for f in dataclasses.fields(cls))
        cells = [f"`{name}`", _attack_kind(cls), meta.get("paper", ""), meta.get("cost", ""), settings]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def attacks_markdown() -> str:
    lines = ["# Robustness attacks (`unlearnkit audit`)", "",
             "Generated from the registry by `python -m unlearnkit.docs`; do not edit.", "",
             "`unlearnkit audit --model UNLEARNED --reference TARGET [--retain-model RETAIN] --forget F [--retain R]",
             "--attacks all|a,b --budget B --fail-above X --out audit.json` runs each attack on the unlearned model",
             "(and on the retain model, the honest floor), scores the held-out forget records and reports the",
             "recovery ratio (m_attacked - m_unlearned) / (m_target - m_unlearned) per metric. Settings:",
             "`attack_args={NAME: {SETTING: VALUE}}`. `--budget` multiplies every attack's compute as the table",
             "says (1 = the paper's setting). Read-out attacks read the knowledge from the model's internals and",
             "compare with what the model's outputs show. Times are for the tiny test model on one CPU thread",
             "unless stated; they grow with model size like a forward (+ backward) pass.", "",
             attacks_table()]
    for name in ATTACKS.names():
        cls, meta = ATTACKS.get(name), ATTACKS.meta[name]
        lines += [f"## `{name}`", "", _first_paragraph(cls), ""]
        for key in ("paper", "reference", "cost"):
            if meta.get(key):
                lines.append(f"- **{key}**: {meta[key]}")
        lines.append("")
    return "\n".join(lines)


def write_docs(folder: str | Path = "docs") -> list[Path]:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    files = [(out / "methods.md", methods_markdown()), (out / "metrics.md", metrics_markdown()),
             (out / "attacks.md", attacks_markdown())]
    for path, text in files:
        path.write_text(text, encoding="utf-8")
    return [p for p, _ in files]


if __name__ == "__main__":
    for p in write_docs(sys.argv[1] if len(sys.argv) > 1 else "docs"):
        print(f"wrote {p}")
