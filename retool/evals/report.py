"""``results.json``, ``report.md`` and its PNG plots for a finished evaluation.

Plots (matplotlib, headless): accuracy per problem, the distribution of response lengths (model
tokens), and of tool calls per response. The report holds the headline metrics, the tool
analytics and the per-problem table; ``write_notebooks`` writes one notebook per sample.
Nothing here grades or samples.
"""

from __future__ import annotations

import json
from pathlib import Path

from retool.protocol import get_dialect
from retool.transcript import new_notebook_of, trajectory_cells


def write_report(out: Path, result, tokenizer=None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result.to_json(), indent=2))
    plots = _plots(out, result)
    cfg = result.config
    r, s = cfg.rollout, cfg.rollout.sampling
    lines = [f"# {cfg.benchmark}: {cfg.engine.model or 'embedded default'}", ""]
    lines += [f"k = {cfg.k}, temperature {s.temperature}, top-p {s.top_p}, max total tokens {r.max_total_tokens}, "
              f"max tool calls {r.max_tool_calls}, dialect `{r.dialect}`, sandbox `{cfg.sandbox.backend}`, "
              f"seed {s.seed}", ""]
    lines += ["| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in result.metrics.items()]
    lines += ["", "## Tool use", "", "| statistic | value |", "|---|---:|"]
    for key, value in result.analytics.items():
        shown = f"{value:.3f}" if isinstance(value, float) else (
            ", ".join(f"{k}: {v}" for k, v in value.items()) if isinstance(value, dict) else str(value))
        lines.append(f"| {key} | {shown} |")
    lines += ["", "## Per problem", "", "| id | gold | correct / samples | majority | maj correct |", "|---|---|---:|---|---|"]
    for row in result.per_problem:
        lines.append(f"| {row['id']} | {row['gold']} | {row['correct']} / {row['samples']} | {row['majority']} | "
                     f"{'yes' if row['maj_correct'] else 'no'} |")
    lines += [""] + [f"![{name}]({name})" for name in plots]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _plots(out: Path, result) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    rows = result.per_problem
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.3), 3.5))
    ax.bar(range(len(rows)), [r["avg"] for r in rows], color="#4C72B0")
    ax.set_xticks(range(len(rows)), [r["id"] for r in rows], rotation=90, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"accuracy (avg@{result.config.k})")
    ax.set_title("Accuracy per problem")
    names.append(_save(fig, out / "per_problem_accuracy.png"))

    trajs = [s.trajectory for s in result.samples]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist([t.num_model_tokens for t in trajs], bins=30, color="#55A868")
    ax.set_xlabel("model tokens per response")
    ax.set_ylabel("responses")
    ax.set_title("Response length")
    names.append(_save(fig, out / "response_lengths.png"))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    calls = [len(t.tool_calls) for t in trajs]
    ax.hist(calls, bins=range(0, max(calls, default=0) + 2), align="left", rwidth=0.8, color="#C44E52")
    ax.set_xlabel("tool calls per response")
    ax.set_ylabel("responses")
    ax.set_title("Tool calls")
    names.append(_save(fig, out / "tool_calls.png"))
    return names


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def trajectory_notebook(sample, tokenizer, dialect_name: str):
    from nbformat.v4 import new_markdown_cell

    header = new_markdown_cell(f"**{sample.problem_id}** (sample {sample.sample}) — answer `{sample.answer}`, "
                               f"gold `{sample.gold}`, {'correct' if sample.correct else 'wrong'}")
    return new_notebook_of([header, *trajectory_cells(sample.trajectory, tokenizer, get_dialect(dialect_name))])


def write_notebooks(folder: Path, samples, tokenizer, dialect_name: str) -> None:
    import nbformat

    folder.mkdir(parents=True, exist_ok=True)
    for sample in samples:
        name = f"{sample.problem_id}-{sample.sample}.ipynb".replace("/", "_")
        nbformat.write(trajectory_notebook(sample, tokenizer, dialect_name), folder / name)
