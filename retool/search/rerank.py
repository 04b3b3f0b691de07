"""``retool search rerank``: sample once, compare verifiers and selections offline, draw the curves.

A finished ``retool eval --out`` run holds N samples per problem. Each verifier scores every step
of every sample once; then every selection (``select.py``) is evaluated at n = 1, 2, 4, …, N by
subsampling (``scaling.py``), with bootstrap intervals over problems. The x-axis of the curves is
measured tokens per problem — the model's, the interpreter's and the verifier's, each reported —
not the number of samples relabelled as tokens.

Output under ``--out``: ``results.json`` (per verifier: AUROC of its final and minimum step
score for final correctness, the accuracy of each selection at N, the curves, and the paired
differences prm_last_max − avg and prm_last_vote − majority with their intervals) and
``report.md`` with one PNG per verifier.

Not here: scoring (``verifiers.py``), the selections themselves (``select.py``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from retool.evals.run_dir import EvalRun, load_run
from retool.prm.metrics import auroc
from retool.search.scaling import compare, scaling_curve
from retool.search.select import SELECTIONS, Candidate, select
from retool.search.verifiers import Verifier, build_verifier

DEFAULT_SELECTIONS = ("majority", "orm_max", "orm_vote", "prm_min_max", "prm_min_vote", "prm_last_max", "prm_last_vote")
PAIRS = (("prm_last_max", "avg"), ("prm_last_vote", "majority"))  # (method, baseline) differences reported


@dataclass(frozen=True)
class RerankConfig:
    run: str
    out: str
    verifiers: tuple[str, ...] = ("exec",)  # "exec" or paths of trained PRMs
    selections: tuple[str, ...] = DEFAULT_SELECTIONS
    subsets: int = 8  # random subsets per budget n
    resamples: int = 2000  # bootstrap resamples
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        unknown = [s for s in self.selections if s not in SELECTIONS]
        if unknown:
            raise ValueError(f"unknown selection(s) {', '.join(unknown)}; choose from {', '.join(SELECTIONS)}")
        if not self.verifiers:
            raise ValueError("rerank needs at least one verifier (exec, or a trained PRM's path)")


def candidates(run: EvalRun, verifier: Verifier, problem_texts: dict[str, str]) -> dict[str, list[Candidate]]:
    """Every sample of ``run`` scored by ``verifier``, grouped by problem."""
    out = {}
    for pid, group in run.by_problem().items():
        before = verifier.verifier_tokens
        scores = verifier.score(problem_texts.get(pid, ""), [s.trajectory for s in group])
        spent = (verifier.verifier_tokens - before) / len(group)
        out[pid] = [Candidate(s.answer, s.correct, tuple(sc), s.trajectory.num_model_tokens,
                              s.trajectory.num_tool_tokens, round(spent)) for s, sc in zip(group, scores)]
    return out


def verifier_report(table: dict[str, list[Candidate]], config: RerankConfig) -> dict[str, Any]:
    """One verifier's numbers: AUROC, accuracy at N, curves, paired differences. Problems with
    fewer than N samples (an infrastructure failure left one unscored) are left out and counted:
    a budget must mean the same on every problem."""
    full = max(len(group) for group in table.values())
    incomplete = sum(len(group) < full for group in table.values())
    table = {pid: group for pid, group in table.items() if len(group) == full}
    flat = [c for group in table.values() for c in group if c.step_scores]
    labels = [int(c.correct) for c in flat]
    methods = ("avg", *config.selections)
    n = min(len(group) for group in table.values())
    accuracy = {"avg": sum(c.correct for group in table.values() for c in group)
                / sum(len(group) for group in table.values())}
    for method in config.selections:
        accuracy[method] = sum(bool((chosen := select(method, group)) and chosen.correct)
                               for group in table.values()) / len(table)
    curve = scaling_curve(table, methods, subsets=config.subsets, seed=config.seed, resamples=config.resamples)
    pairs = {}
    for method, baseline in PAIRS:
        if method in methods and baseline in methods:
            diff, low, high = compare(table, method, baseline, n, subsets=config.subsets, seed=config.seed,
                                      resamples=config.resamples)
            pairs[f"{method}-{baseline}@{n}"] = {"diff": diff, "ci_low": low, "ci_high": high}
    tokens = {kind: sum(getattr(c, kind) for group in table.values() for c in group) / len(table)
              for kind in ("model_tokens", "tool_tokens", "verifier_tokens")}
    return {"auroc": {"last": auroc([c.step_scores[-1] for c in flat], labels),
                      "min": auroc([min(c.step_scores) for c in flat], labels)},
            "accuracy": accuracy, "differences": pairs, "tokens_per_problem": tokens,
            "problems": len(table), "problems_incomplete": incomplete,
            "curves": [asdict(point) for point in curve]}


def rerank(config: RerankConfig, tokenizer=None) -> dict[str, Any]:
    """Score, select and report; returns what ``results.json`` holds."""
    started = time.monotonic()
    run = load_run(config.run)
    if not run.samples:
        raise ValueError(f"{config.run} holds no graded samples")
    if tokenizer is None:
        from retool.models import load_tokenizer

        tokenizer = load_tokenizer(run.config.engine.model)
    from retool.protocol import get_dialect

    dialect = get_dialect(run.config.rollout.dialect)
    texts = _problem_texts(run)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    groups = run.by_problem()
    results: dict[str, Any] = {"run": str(config.run), "problems": len(groups),
                               "n": min(len(g) for g in groups.values()), "verifiers": {}}
    for spec in config.verifiers:
        verifier = build_verifier(spec, tokenizer, dialect, config.device)
        results["verifiers"][verifier.name] = verifier_report(candidates(run, verifier, texts), config)
    results["minutes"] = (time.monotonic() - started) / 60
    (out / "results.json").write_text(json.dumps(results, indent=2))
    _write_report(out, results)
    return results


def _problem_texts(run: EvalRun) -> dict[str, str]:
    """The problems' statements (an external text PRM reads them), where the benchmark loads."""
    try:
        from retool.datasets import load_benchmark

        return {p.id: p.problem for p in load_benchmark(run.config.benchmark)}
    except Exception:  # noqa: BLE001 - a constructed run: the verifiers on ids do not need the text
        return {}


def _write_report(out: Path, results: dict[str, Any]) -> None:
    lines = [f"# Reranking {results['run']}", "",
             f"{results['problems']} problems × {results['n']} samples; tokens per problem are measured "
             "(model + interpreter + verifier).", ""]
    for name, rep in results["verifiers"].items():
        auc = rep["auroc"]
        lines += [f"## {name}", "", f"AUROC for final correctness: last step {_fmt(auc['last'])}, "
                                    f"min step {_fmt(auc['min'])}", "",
                  "| selection | accuracy@N |", "|---|---:|"]
        lines += [f"| {m} | {a:.3f} |" for m, a in rep["accuracy"].items()]
        lines += ["", "| difference | value | 95% CI |", "|---|---:|---|"]
        lines += [f"| {k} | {v['diff']:+.3f} | [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}] |"
                  for k, v in rep["differences"].items()]
        png = _plot(out, name, rep["curves"])
        lines += ["", f"![{name}]({png})", ""]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _fmt(value: float | None) -> str:
    return "n/a (one class only)" if value is None else f"{value:.3f}"


def _plot(out: Path, name: str, curves: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(p["method"] for p in curves):
        pts = [p for p in curves if p["method"] == method]
        x = [p["model_tokens"] + p["tool_tokens"] + p["verifier_tokens"] for p in pts]
        ax.plot(x, [p["accuracy"] for p in pts], marker="o", label=method)
        ax.fill_between(x, [p["ci_low"] for p in pts], [p["ci_high"] for p in pts], alpha=0.12)
    ax.set_xscale("log")
    ax.set_xlabel("tokens per problem (model + interpreter + verifier)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"test-time scaling, verifier {name}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    file = f"scaling_{name.replace(':', '_').replace('/', '_')}.png"
    fig.savefig(out / file, dpi=120)
    plt.close(fig)
    return file
