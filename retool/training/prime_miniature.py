"""The miniature PRIME experiment: outcome-only DAPO against PRIME, at a size a laptop can run.

Both arms start from the miniature ReTool's code SFT model and draw from its RL problems (the
families the SFT model solves sometimes but not always: ``miniature.select_rl_problems``), with the
same steps, prompts and samples per step, budgets, learning rate, clip range and reward:

* ``dapo``: the miniature ReTool's tool-integrated DAPO stage itself (``mini_rl_tool.yaml``; its run
  is shared with ``python -m retool.training.miniature``);
* ``prime``: ``mini_rl_prime.yaml``, PRIME on the PPO trainer (implicit PRM in the critic's place,
  πref = the SFT model, PRM updated before its rewards are read, process and outcome weighted 5/5).

Targets, fixed before the run (``TARGETS``):

* non-inferiority: PRIME's held-out accuracy ≥ DAPO's − 2 points (greedy, one sample, every problem
  of the held-out file); the paired bootstrap interval of the difference is reported with it;
* the implicit PRM, after training, orders right above wrong answers within held-out groups: the
  pairwise accuracy of Σ r (its final-step score) ≥ 0.60 over groups holding both kinds. The groups:
  ``group_size`` samples of PRIME's final policy (temperature 1) on held-out problems; a tie
  counts half, and before training every pair is a tie (πφ = πref gives Σ r = 0): 0.5;
* zero gradient on interpreter tokens through the PRIME path: a test
  (``tests/test_training.py::test_prime_puts_exactly_zero_gradient_on_interpreter_positions_in_policy_and_prm``);
* the whole experiment ≤ 60 minutes on 2 CPU cores.

Each stage is skipped when its output exists (and an RL stage resumes from its checkpoint), so an
interrupted run continues when the command is run again. Writes ``evals/reports/prime_miniature.json``
(``dapo``, ``prime``, ``pairwise_accuracy``, ``steps``, ``minutes`` and the details) and ``.md`` with
the reward and accuracy curves of both arms.

Usage: ``python -m retool.training.prime_miniature [--root runs/miniature] [--heldout-limit N]``.
Not here: the trainers (``grpo``, ``prime_trainer``), the evaluation harness (``retool.evals``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from retool.datasets import load_benchmark
from retool.evals.harness import run_eval
from retool.training.miniature import HELDOUT, RECIPES, greedy_eval, run_stage, select_rl_problems
from retool.training.plot import compare_runs
from retool.training.recipe import RLRecipe, SFTRecipe, load_recipe

TARGETS = {"non_inferiority_margin": 0.02, "pairwise_accuracy": 0.60, "minutes": 60.0}
ARMS = {"dapo": ("rl_tool", "mini_rl_tool.yaml"), "prime": ("rl_prime", "mini_rl_prime.yaml")}
PAIRWISE_PROBLEMS = 64  # held-out problems whose sampled groups the implicit PRM ranks
PAIRWISE_SEED_STEP = 10_000  # the sampling seed's "step" for those groups (no training step has it)


class Timings:
    """Minutes per stage, saved after each one (an interrupted experiment keeps what it measured);
    a stage measured once keeps its time when a later invocation only resumes or skips it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.minutes: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}

    def record(self, stage: str, minutes: float) -> None:
        self.minutes.setdefault(stage, minutes)
        self.path.write_text(json.dumps(self.minutes, indent=2))


def train(root: Path, max_tokens: int, max_tool_calls: int, timings: Timings) -> None:
    """SFT, the probe and both RL arms (each skipped when its output exists)."""
    if not (root / "sft_code" / "final").is_dir():
        timings.record("sft_code", run_stage("sft_code", RECIPES / "mini_sft_code.yaml", SFTRecipe,
                                             {"output_dir": str(root / "sft_code")}))
    problems, probe_minutes = select_rl_problems(root, max_tokens, max_tool_calls)
    if probe_minutes:
        timings.record("probe", probe_minutes)
    for arm, (stage, recipe_file) in ARMS.items():
        if (root / stage / "final").is_dir():
            continue
        timings.record(f"rl_{arm}", run_stage(stage, RECIPES / recipe_file, RLRecipe, {
            "output_dir": str(root / stage), "model": str(root / "sft_code" / "final"), "data": [str(problems)]}))


def evaluate(root: Path, limit: int | None, max_tokens: int, max_tool_calls: int) -> tuple[dict[str, Any], dict[str, float]]:
    """Held-out accuracy of both arms' final models, and each problem's outcome (for the paired CI)."""
    results, minutes = {}, {}
    for arm, (stage, _) in ARMS.items():
        config = greedy_eval(HELDOUT, str(root / stage / "final"), root / "eval" / stage, max_tokens, max_tool_calls,
                             limit=limit)
        started = time.monotonic()
        result = run_eval(config, show_progress=True)
        minutes[f"eval_{arm}"] = (time.monotonic() - started) / 60
        results[arm] = {"accuracy": result.metrics["avg@1"],
                        "per_problem": {row["id"]: float(row["correct"] > 0) for row in result.per_problem}}
    return results, minutes


def pairwise_accuracy(root: Path, problems_limit: int = PAIRWISE_PROBLEMS) -> dict[str, Any]:
    """The trained implicit PRM on held-out groups sampled from PRIME's final policy: the pairwise
    accuracy of its final-step score (σ(Σ r)) over groups with both right and wrong answers."""
    import torch

    from retool.models import load_model
    from retool.prm.model import load_prm
    from retool.search.verifiers import PRMVerifier
    from retool.training.prime import pairwise_ranking_accuracy
    from retool.training.rl_rollout import sample

    cache = root / "eval" / "prime_pairwise.json"
    if cache.exists():
        return json.loads(cache.read_text())
    started = time.monotonic()
    stage, recipe_file = ARMS["prime"]
    recipe = load_recipe(RECIPES / recipe_file, RLRecipe, output_dir=str(root / stage),
                         model=str(root / stage / "final"), data=[HELDOUT])
    problems = load_benchmark(HELDOUT)[:problems_limit]
    policy, tokenizer = load_model(str(root / stage / "final"))
    verifier = PRMVerifier(load_prm(root / stage / "prm"), batch_size=8)
    k, chunk = recipe.group_size, recipe.prompts_per_step
    scores, correct = [], []
    with recipe.sandbox.pool(size=chunk * k) as pool:
        for i in range(0, len(problems), chunk):
            batch = sample(policy, tokenizer, pool, problems[i:i + chunk], recipe, PAIRWISE_SEED_STEP + i)
            policy.eval()
            for g in range(0, len(batch.samples), k):
                group = batch.samples[g:g + k]
                if any(s.trajectory.infra_failure for s in group):
                    continue
                finals = verifier.score("", [s.trajectory for s in group])
                scores += [f[-1] if f else 0.5 for f in finals]
                correct += [s.correct for s in group]
    s, y = torch.tensor(scores), torch.tensor(correct)
    groups = [(s[j:j + k], y[j:j + k]) for j in range(0, len(scores), k)]
    mixed = [(gs, gy) for gs, gy in groups if 0 < int(gy.sum()) < k]
    pairs = sum(int(gy.sum()) * (k - int(gy.sum())) for _, gy in mixed)
    value = (pairwise_ranking_accuracy(torch.cat([gs for gs, _ in mixed]), torch.cat([gy for _, gy in mixed]), k)
             if mixed else None)
    out = {"pairwise_accuracy": value, "groups": len(groups), "groups_with_both": len(mixed), "pairs": pairs,
           "pairwise_accuracy_all_groups": pairwise_ranking_accuracy(s, y, k) if groups else None,
           "sample_accuracy": float(y.float().mean()) if len(y) else None,
           "problems": len(problems), "group_size": k, "minutes": (time.monotonic() - started) / 60}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out, indent=2))
    return out


def write_report(root: Path, report_dir: Path, results: dict[str, Any], pairwise: dict[str, Any],
                 minutes: dict[str, float], limit: int | None) -> Path:
    from retool.search.scaling import bootstrap_ci, paired_bootstrap

    report_dir.mkdir(parents=True, exist_ok=True)
    ids = sorted(results["dapo"]["per_problem"])
    a = [results["prime"]["per_problem"][i] for i in ids]
    b = [results["dapo"]["per_problem"][i] for i in ids]
    diff = paired_bootstrap(a, b)
    ci = {arm: bootstrap_ci([results[arm]["per_problem"][i] for i in ids]) for arm in ARMS}
    steps = load_recipe(RECIPES / ARMS["prime"][1], RLRecipe).steps
    total = sum(v for k, v in minutes.items() if not k.startswith("total"))
    margin, floor = TARGETS["non_inferiority_margin"], TARGETS["pairwise_accuracy"]
    met = {"non_inferiority": results["prime"]["accuracy"] >= results["dapo"]["accuracy"] - margin,
           "pairwise_accuracy": pairwise["pairwise_accuracy"] is not None and pairwise["pairwise_accuracy"] >= floor,
           "minutes": total <= TARGETS["minutes"]}
    figures = report_dir / "prime_miniature"
    runs = {"DAPO (outcome only)": root / ARMS["dapo"][0], "PRIME": root / ARMS["prime"][0]}
    plots = [compare_runs(runs, "reward/mean", figures / "reward.png"),
             compare_runs(runs, "accuracy", figures / "train_accuracy.png"),
             compare_runs(runs, "tokens/model_mean", figures / "model_tokens.png")]
    prime_log = [json.loads(x) for x in (root / ARMS["prime"][0] / "metrics.jsonl").read_text().splitlines() if x.strip()]
    prm_curve = [{"step": x["step"], **{k: round(x[k], 4) for k in ("prm/loss", "prm/pairwise_acc_before",
                                                                     "prm/pairwise_acc_after", "prime/process_outcome_corr")
                                        if k in x}} for x in prime_log if "prm/loss" in x]
    payload = {
        "dapo": round(results["dapo"]["accuracy"], 4), "prime": round(results["prime"]["accuracy"], 4),
        "pairwise_accuracy": None if pairwise["pairwise_accuracy"] is None else round(pairwise["pairwise_accuracy"], 4),
        "steps": steps, "minutes": round(total, 1),
        "targets": TARGETS, "met": met,
        "prime_minus_dapo": {"mean": round(diff[0], 4), "ci95": [round(diff[1], 4), round(diff[2], 4)]},
        "ci95": {arm: [round(c[1], 4), round(c[2], 4)] for arm, c in ci.items()},
        "heldout": {"file": HELDOUT, "problems": len(ids), "sampling": "greedy, 1 sample"},
        "pairwise": pairwise, "prm_training": prm_curve,
        "wall_minutes": {k: round(v, 2) for k, v in minutes.items()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "commands": ["python -m retool.training.prime_miniature",
                     f"retool rl --recipe {RECIPES / ARMS['dapo'][1]}", f"retool rl --recipe {RECIPES / ARMS['prime'][1]}"],
    }
    (report_dir / "prime_miniature.json").write_text(json.dumps(payload, indent=2) + "\n")

    def yes(flag: bool) -> str:
        return "**met**" if flag else "**missed**"

    pw = pairwise["pairwise_accuracy"]
    lines = [
        "# Miniature PRIME vs DAPO (CPU, SmolLM2-135M, synthetic tool-necessary problems)", "",
        f"Both arms: the miniature ReTool's code SFT model, its RL problems, {steps} steps of 4 prompts × 4 samples, "
        "the interpreter in every rollout, ±1 outcome reward, policy lr 2e-5. PRIME adds the implicit PRM "
        "(lr 4e-5, β 0.05, πref = SFT, update before reading, token granularity, coefficients 5/5).", "",
        f"Held-out accuracy on {len(ids)} problems of `{HELDOUT}` (greedy, one sample):", "",
        "| arm | accuracy | 95% CI |", "|---|---:|---|",
        *[f"| {arm} | {results[arm]['accuracy']:.3f} | [{ci[arm][1]:.3f}, {ci[arm][2]:.3f}] |" for arm in ARMS], "",
        f"PRIME − DAPO: {diff[0]:+.3f} (paired bootstrap 95% CI [{diff[1]:+.3f}, {diff[2]:+.3f}]).", "",
        "Targets (fixed before the run):", "",
        "| target | result | |", "|---|---|---|",
        f"| PRIME ≥ DAPO − {margin * 100:.0f} points | {results['prime']['accuracy']:.3f} vs "
        f"{results['dapo']['accuracy']:.3f} | {yes(met['non_inferiority'])} |",
        f"| implicit PRM pairwise accuracy on held-out groups ≥ {floor:.2f} | "
        f"{'n/a' if pw is None else f'{pw:.3f}'} over {pairwise['groups_with_both']} groups with both kinds "
        f"({pairwise['pairs']} pairs; {pairwise['groups']} groups of {pairwise['group_size']}) | "
        f"{yes(met['pairwise_accuracy'])} |",
        "| zero gradient on interpreter tokens (policy and PRM) | a test: `tests/test_training.py::"
        "test_prime_puts_exactly_zero_gradient_on_interpreter_positions_in_policy_and_prm` | see CI |",
        f"| ≤ {TARGETS['minutes']:.0f} minutes on this machine | {total:.1f} | {yes(met['minutes'])} |", "",
        "The implicit PRM during training (per step: BCE loss, pairwise accuracy on the step's own groups "
        "before and after its update, correlation of Σ r with the outcome):", "",
        "| step | prm/loss | before | after | corr |", "|---:|---:|---:|---:|---:|",
        *[f"| {x['step']} | {x.get('prm/loss', float('nan')):.3f} | {x.get('prm/pairwise_acc_before', float('nan')):.3f} | "
          f"{x.get('prm/pairwise_acc_after', float('nan')):.3f} | {x.get('prime/process_outcome_corr', float('nan')):.3f} |"
          for x in prm_curve], "",
        "Wall time (minutes): " + ", ".join(f"{k} {v:.1f}" for k, v in minutes.items()) + " (a stage this invocation "
        "skipped keeps the time of the one that ran it).", "",
        "Reproduce:", "", "```", *payload["commands"], "```", "",
        *[f"![{p.stem}](prime_miniature/{p.name})" for p in plots], "",
    ]
    (report_dir / "prime_miniature.md").write_text("\n".join(lines))
    return report_dir / "prime_miniature.json"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="runs/miniature", help="the miniature ReTool's runs (shared)")
    parser.add_argument("--report-dir", default="evals/reports")
    parser.add_argument("--heldout-limit", type=int, default=None, help="default: every held-out problem")
    parser.add_argument("--pairwise-problems", type=int, default=PAIRWISE_PROBLEMS)
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--max-tool-calls", type=int, default=2)
    args = parser.parse_args(argv)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    timings = Timings(root / "prime_timings.json")
    started = time.monotonic()
    train(root, args.max_tokens, args.max_tool_calls, timings)
    results, eval_minutes = evaluate(root, args.heldout_limit, args.max_tokens, args.max_tool_calls)
    for stage, value in eval_minutes.items():
        timings.record(stage, value)
    pairwise = pairwise_accuracy(root, args.pairwise_problems)
    timings.record("pairwise", pairwise["minutes"])
    minutes = {**timings.minutes, "total_this_invocation": (time.monotonic() - started) / 60}
    path = write_report(root, Path(args.report_dir), results, pairwise, minutes, args.heldout_limit)
    print(json.dumps({arm: results[arm]["accuracy"] for arm in ARMS} | {"pairwise": pairwise["pairwise_accuracy"]}),
          "→", path)


if __name__ == "__main__":
    main()
