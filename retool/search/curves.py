"""Accuracy against *measured* tokens per problem: one point per budget, each a whole search run.

Users of the anchors report that their "tokens per question" curves are really "samples per
question": here the x-axis is what the searches spent, read from their cost records — model tokens
sampled (pruned branches included), and all tokens (model + interpreter + verifier). Each point
carries a bootstrap interval over problems.

``run_budget_curve`` runs ``retool eval --strategy`` once per budget (``OUT/n4``, ``OUT/n8``, …;
each resumable on its own) and writes ``OUT/curve.json`` and ``OUT/curve.png``. ``plot_curves``
draws any set of such curves on one figure (the search experiment's strategies, budget-forcing
caps). Not here: subsampling one run into a curve (``scaling.py``, for independent samples only).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from retool.search.scaling import bootstrap_ci
from retool.search.search_eval import SearchEvalConfig, read_records, run_search_eval


def curve_point(records: Sequence[dict[str, Any]], resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Accuracy (with its interval) and mean measured tokens per problem of one run's searches."""
    if not records:
        raise ValueError("no finished searches to make a point of")
    mean, low, high = bootstrap_ci([float(r["correct"]) for r in records], resamples, seed)
    costs = [r["cost"] for r in records]

    def per_problem(*keys: str) -> float:
        return sum(sum(c.get(k, 0) for k in keys) for c in costs) / len(costs)

    return {"problems": len(records), "accuracy": mean, "ci": [low, high],
            "model_tokens": per_problem("model_tokens"),
            "all_tokens": per_problem("model_tokens", "tool_tokens", "verifier_tokens"),
            "cells": per_problem("cells"), "replayed_cells": per_problem("replayed_cells"),
            "wall_s": per_problem("wall_s")}


def run_budget_curve(config: SearchEvalConfig, budgets: Sequence[int], engine=None, problems=None,
                     verifier=None) -> dict[str, Any]:
    """The search at each budget ``n`` (in ``OUT/n{n}``), then the curve over them."""
    if not config.out:
        raise ValueError("a budget curve needs an output directory (--out)")
    if not budgets or any(n < 1 for n in budgets):
        raise ValueError(f"budgets must be positive numbers of candidates, got {list(budgets)}")
    root = Path(config.out)
    points = []
    for n in sorted(set(budgets)):
        run = replace(config, n=n, out=str(root / f"n{n}"))
        summary = run_search_eval(run, engine=engine, problems=problems, verifier=verifier)
        points.append({"n": n, **curve_point(read_records(run.out)), "prefill_ratio": summary["prefill_ratio"]})
    curve = {"strategy": config.strategy, "verifier": config.verifier, "points": points}
    (root / "curve.json").write_text(json.dumps(curve, indent=2))
    plot_curves(root / "curve.png", {config.strategy: points}, f"{config.strategy} ({config.verifier})")
    return curve


def plot_curves(path: Path, curves: Mapping[str, Sequence[Mapping[str, Any]]], title: str,
                x: str = "model_tokens", xlabel: str = "model tokens per problem (measured)") -> Path:
    """Accuracy with its interval against ``x``, one line per curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in curves.items():
        if not points:
            continue
        xs = [p[x] for p in points]
        ys = [p["accuracy"] for p in points]
        err = [[p["accuracy"] - p["ci"][0] for p in points], [p["ci"][1] - p["accuracy"] for p in points]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
        for p, xv, yv in zip(points, xs, ys):
            if "label" in p:
                ax.annotate(str(p["label"]), (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (95% bootstrap CI)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
