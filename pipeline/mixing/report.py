"""A mixture's report: target and realized shares per task and per variant, sizes, caps and the nesting tree.

    print(format_mixture_report(mixture, sampler))     # flanpipe mixture default --steps 100000
    mixture_report_json(mixture, sampler)              # the same as JSON (--json)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import numpy as np

from pipeline.mixing.sampler import MixtureSampler
from pipeline.mixing.tree import Mixture, Node


def mixture_report_json(mixture: Mixture, sampler: MixtureSampler | None = None) -> dict[str, Any]:
    """Targets, realized shares (after the sampler's draws; None without), sizes, caps, tree, held-out tasks.

    Shares are fractions of the whole mixture; a member's variant shares are fractions of its own draws.
    """
    draws = sampler.draws if sampler is not None else 0
    per_task = sampler.counts if draws else np.zeros((len(mixture.leaves), 2, 2, 2), dtype=np.int64)
    realized = {leaf.name: float(per_task[k].sum() / draws) if draws else None
                for k, leaf in enumerate(mixture.leaves)}
    members = []
    for k, leaf in enumerate(mixture.leaves):
        own = per_task[k].sum()
        drawn = {"few_shot": per_task[k, :, 1].sum(), "options": per_task[k, :, :, 1].sum(),
                 "inversion": per_task[k, 1].sum()}
        members.append({
            "name": leaf.name, "target": leaf.share, "realized": realized[leaf.name], "n": leaf.n,
            "cap": leaf.cap, "weight": leaf.weight, "rate": leaf.rate,
            "templates": len(leaf.stats.templates), "inversion_templates": len(leaf.stats.inversion_templates),
            "variants": {name: {"target": target, "realized": float(drawn[name] / own) if own else None}
                         for name, target in asdict(leaf.variants).items()},
        })

    def tree(node: Node) -> dict[str, Any]:
        share = sum(realized[leaf.name] or 0.0 for leaf in node.walk() if leaf.stats is not None)
        return {
            "name": node.name, "kind": "task" if node.stats is not None else "mixture",
            "file": str(node.file) if node.file else None, "rule": node.rule,
            "rule_parameters": dict(node.rule_parameters), "weight": node.weight,
            "n": node.n, "cap": node.cap, "rate": node.rate, "target": node.share,
            "realized": share if draws else None, "children": [tree(child) for child in node.children],
        }

    return {
        "mixture": mixture.name,
        "file": str(mixture.root.file),
        "draws": draws,
        "seed": sampler.seed if sampler is not None else None,
        "batches": "homogeneous" if sampler is not None and sampler.homogeneous else "mixed",
        "members": members,
        "tree": tree(mixture.root),
        "held_out": list(mixture.held_out),
        "variants": asdict(mixture.root.variants),
    }


def format_mixture_report(mixture: Mixture, sampler: MixtureSampler | None = None) -> str:
    """`mixture_report_json` as a table of tasks (target vs realized) and the nesting tree."""
    report = mixture_report_json(mixture, sampler)

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{value:.2%}"

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    def variant(entry: dict[str, float | None]) -> str:
        return "-" if entry["target"] == 0 else f"{entry['target']:.0%} / {percent(entry['realized'])}"

    width = max(len("task"), *(len(m["name"]) for m in report["members"]))
    lines = [
        f"mixture {report['mixture']} ({report['file']}): {report['draws']:,} draws"
        + (f", seed {report['seed']}, {report['batches']} batches" if report["draws"] else ""),
        "",
        f"{'task':<{width}}  {'target':>7}  {'realized':>8}  {'n':>9}  {'cap':>9}  "
        f"{'few-shot':>15}  {'options':>15}  {'inversion':>15}",
    ]
    for m in report["members"]:
        lines.append(
            f"{m['name']:<{width}}  {percent(m['target']):>7}  {percent(m['realized']):>8}  {number(m['n']):>9}  "
            f"{number(m['cap']):>9}  " + "  ".join(f"{variant(v):>15}" for v in m["variants"].values())
        )
    lines += ["variant columns: target / realized share of the task's own draws; "
              "'-': share 0, or the variant does not apply to the task", ""]

    def tree_rows(node: dict[str, Any], prefix: str = "", branch: str = "") -> Iterator[tuple[str, dict]]:
        yield prefix + branch + node["name"], node
        inner = prefix + {"": "", "├─ ": "│  ", "└─ ": "   "}[branch]
        for i, child in enumerate(node["children"]):
            yield from tree_rows(child, inner, "└─ " if i == len(node["children"]) - 1 else "├─ ")

    rows = list(tree_rows(report["tree"]))
    width = max(len(label) for label, _ in rows)
    lines.append(f"{'tree':<{width}}  {'target':>7}  {'realized':>8}  {'of level':>8}  {'n':>9}  {'cap':>9}  rule")
    for label, node in rows:
        rule = " ".join([node["rule"] or ""] + [f"{k}={v:g}" for k, v in node["rule_parameters"].items()])
        lines.append(f"{label:<{width}}  {percent(node['target']):>7}  {percent(node['realized']):>8}  "
                     f"{percent(node['rate']):>8}  {number(node['n']):>9}  {number(node['cap']):>9}  {rule}".rstrip())
    if report["held_out"]:
        lines += ["", f"held out (evaluated, never trained on): {', '.join(report['held_out'])}"]
    return "\n".join(lines)
