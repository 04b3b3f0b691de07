"""PNG curves of a training run, drawn from its ``metrics.jsonl`` (see ``retool.training.run_log``).

Why from the JSONL file and not TensorBoard: it is the run's durable record, needs no server and
is the same on a laptop and a cluster. ``plot_run`` writes one figure per group of metrics
(``GROUPS``), one subplot per metric present, plus ``other.png`` for every remaining numeric key;
``compare_runs`` overlays one metric across several labelled runs (for experiment reports).

Reading is forgiving: a malformed line (a crash mid-write, a hand edit) is skipped and counted
in one warning, never fatal; if a step appears twice (a resumed run whose log was not truncated)
the later value wins. A missing or empty log is an error naming the file.

Deliberately not here: smoothing, dashboards, reading TensorBoard event files, deciding what a
trainer logs.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from retool.training.run_log import METRICS_FILE

logger = logging.getLogger(__name__)

# (figure name, key patterns); a pattern ending in "/*" takes every key under that prefix.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reward", ("reward/mean", "accuracy", "eval/accuracy")),
    ("policy", ("entropy", "kl", "clip_frac", "loss/policy", "grad_norm")),
    ("tools", ("tools/*", "truncation_rate", "zero_adv_group_share")),
    ("tokens", ("tokens/*",)),
    ("time", ("time/*",)),
    ("critic", ("loss/value", "value/clip_frac")),
    ("sft", ("sft/loss", "lr")),
)
_NOT_METRICS = ("step", "time")


class NoMetricsError(FileNotFoundError):
    """The run has no ``metrics.jsonl``, or it holds no usable line."""


@dataclass
class RunMetrics:
    """Every numeric series of one run: ``series[key][step] = value`` (steps in order)."""

    path: Path
    series: dict[str, dict[int, float]] = field(default_factory=dict)
    skipped_lines: int = 0

    def points(self, key: str) -> tuple[list[int], list[float]]:
        by_step = self.series[key]
        steps = sorted(by_step)
        return steps, [by_step[s] for s in steps]


def read_metrics(run_dir: Path) -> RunMetrics:
    """Parse ``run_dir/metrics.jsonl``; malformed lines are skipped and counted, not fatal."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise NoMetricsError(f"no training metrics at {path} (is {run_dir} a run directory?)")
    metrics = RunMetrics(path=path)
    lines = 0
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip():
                continue
            lines += 1
            try:
                record = json.loads(line)
                step = record["step"]
                if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step):
                    raise ValueError(step)
            except (ValueError, KeyError, TypeError):
                metrics.skipped_lines += 1
                continue
            for key, value in record.items():
                if key in _NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if math.isfinite(value):
                    metrics.series.setdefault(key, {})[int(step)] = float(value)
    if metrics.skipped_lines:
        logger.warning("skipped %d malformed line(s) of %d in %s", metrics.skipped_lines, lines, path)
    if not metrics.series:
        raise NoMetricsError(f"{path} holds no metric values ({lines} line(s), {metrics.skipped_lines} malformed)")
    return metrics


def plot_run(run_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Write ``<group>.png`` for each group with data (and ``other.png``); return the paths."""
    metrics = read_metrics(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dir) / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    remaining = set(metrics.series)
    written = []
    for name, patterns in GROUPS:
        keys = _matching(patterns, remaining)
        if keys:
            remaining -= set(keys)
            written.append(_figure(metrics, keys, name, out_dir / f"{name}.png"))
    if remaining:
        written.append(_figure(metrics, sorted(remaining), "other", out_dir / "other.png"))
    return written


def compare_runs(runs: Mapping[str, Path], key: str, out: Path) -> Path:
    """One metric of several runs on one axis, labelled; runs without the metric are left out."""
    if not runs:
        raise ValueError("compare_runs needs at least one run")
    curves = []
    for label, run_dir in runs.items():
        metrics = read_metrics(run_dir)
        if key in metrics.series:
            curves.append((label, *metrics.points(key)))
        else:
            logger.warning("run %r (%s) has no %r; left out of the comparison", label, run_dir, key)
    if not curves:
        raise ValueError(f"none of the runs {', '.join(map(repr, runs))} logged {key!r}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, steps, values in curves:
        ax.plot(steps, values, label=label, **_style(len(steps)))
    ax.set_title(key)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return _save(plt, fig, out)


def _matching(patterns: tuple[str, ...], keys: set[str]) -> list[str]:
    found: list[str] = []
    for pattern in patterns:
        if "*" in pattern:
            hits = sorted(k for k in keys if fnmatch(k, pattern))
        else:
            hits = [pattern] if pattern in keys else []
        found += [k for k in hits if k not in found]
    return found


def _figure(metrics: RunMetrics, keys: list[str], title: str, out: Path) -> Path:
    plt = _pyplot()
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.2 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        steps, values = metrics.points(key)
        ax.plot(steps, values, **_style(len(steps)))
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.suptitle(f"{title} — {metrics.path.parent.name}")
    return _save(plt, fig, out)


def _style(points: int) -> dict:
    return {"marker": "o", "markersize": 3} if points <= 50 else {"linewidth": 1.2}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
