"""The miniature ReTool experiment: does tool-integrated RL help, at a size a laptop can run?

On the synthetic tool-necessary problems of ``coldstart_data/synth`` with the embedded
SmolLM2-135M, four models are compared on the held-out split (greedy, one sample each):

* ``base``: the model as shipped (with the one-shot demonstration, its best setting);
* ``sft``: cold-start SFT on code-integrated traces (``training/recipes/mini_sft_code.yaml``);
* ``sft_rl``: that model after tool-integrated DAPO (``mini_rl_tool.yaml``);
* ``text_sft_rl``: SFT on text-only traces + text-only DAPO with the same budget
  (``mini_sft_text.yaml``, ``mini_rl_text.yaml``).

Between SFT and RL, a probe (``select_rl_problems``) picks the RL problems: the code SFT model
answers 64 training problems it was not trained on, and RL draws only from the problem families
it solves sometimes but not always (both RL arms, the same problems). Without it, most groups are
all-right or all-wrong, and the few informative ones move phrasing that other families share.

Each stage is skipped when its ``final/`` model exists and resumes from its checkpoint otherwise,
so an interrupted experiment is continued by running the command again. Writes
``evals/reports/miniature_retool.json`` (held-out accuracies as fractions, wall times, commands)
and ``miniature_retool.md`` with training curves.

Usage: ``python -m retool.training.miniature [--root runs/miniature] [--heldout-limit 64]``.
Not here: the trainers (``sft``, ``grpo``), the harness (``retool.evals``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from retool.engines.base import SamplingParams
from retool.engines.spec import EngineSpec
from retool.evals.harness import EvalConfig, run_eval
from retool.models import BASE_MODEL
from retool.rollout import RolloutConfig
from retool.training.plot import compare_runs
from retool.training.recipe import RLRecipe, SFTRecipe, load_recipe
from retool.training.rl import run_rl
from retool.training.sft import run_sft

RECIPES = Path("training/recipes")
HELDOUT = "coldstart_data/synth/heldout.jsonl"
TRAIN = Path("coldstart_data/synth/code.jsonl")  # text.jsonl holds the same problems with text traces
PROBE_SIZE = 64  # the last problems of TRAIN: SFT reads the first 128, so the probe is unseen by it
STAGES = (("sft_code", "mini_sft_code.yaml", SFTRecipe), ("sft_text", "mini_sft_text.yaml", SFTRecipe),
          ("rl_tool", "mini_rl_tool.yaml", RLRecipe), ("rl_text", "mini_rl_text.yaml", RLRecipe))
# name in the report -> (model dir or None for the embedded base, tools, few-shot)
EVALS = {"base": (None, True, True), "sft": ("sft_code", True, False), "sft_rl": ("rl_tool", True, False),
         "text_sft_rl": ("rl_text", False, False)}


def greedy_eval(benchmark: str, model: str, out: Path, max_tokens: int, max_tool_calls: int, few_shot: bool = False,
                limit: int | None = None) -> EvalConfig:
    """The one evaluation setting of the experiment (probe and held-out alike): greedy, one sample."""
    rollout = RolloutConfig(max_total_tokens=max_tokens, max_tool_calls=max_tool_calls, few_shot=few_shot,
                            sampling=SamplingParams(temperature=0.0, seed=0))
    return EvalConfig(benchmark=benchmark, engine=EngineSpec(model=model), rollout=rollout, k=1, limit=limit,
                      out=str(out), concurrency=16)


def mixed_families(records: list[dict], solved: dict[str, bool]) -> tuple[dict[str, float], list[str]]:
    """(pass rate per family, the families with a pass rate strictly between 0 and 1)."""
    outcomes: dict[str, list[bool]] = {}
    for r in records:
        outcomes.setdefault(r["family"], []).append(solved[r["id"]])
    pass_rate = {family: sum(v) / len(v) for family, v in sorted(outcomes.items())}
    return pass_rate, sorted(f for f, rate in pass_rate.items() if 0 < rate < 1)


def select_rl_problems(root: Path, max_tokens: int, max_tool_calls: int) -> tuple[Path, float]:
    """DAPO's point that only groups with mixed rewards teach anything, applied before RL: the code
    SFT model answers the probe (greedy); problem families it solves always or never are dropped, and
    RL draws from the training problems of the others. Both RL arms get this same problem set."""
    out, summary = root / "rl_problems.jsonl", root / "rl_problems.json"
    if out.exists() and summary.exists():
        return out, 0.0
    started = time.monotonic()
    records = [json.loads(line) for line in TRAIN.read_text().splitlines() if line.strip()]
    train, probe = records[:-PROBE_SIZE], records[-PROBE_SIZE:]
    probe_file = root / "probe.jsonl"
    probe_file.write_text("".join(json.dumps(r) + "\n" for r in probe))
    config = greedy_eval(str(probe_file), str(root / "sft_code" / "final"), root / "eval" / "probe", max_tokens,
                         max_tool_calls)
    solved = {row["id"]: row["correct"] > 0 for row in run_eval(config, show_progress=True).per_problem}
    pass_rate, keep = mixed_families(probe, solved)
    chosen = [r for r in train if r["family"] in keep]
    out.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    summary.write_text(json.dumps({"probe_pass_rate": pass_rate, "kept_families": keep,
                                   "rl_problems": len(chosen)}, indent=2) + "\n")
    return out, (time.monotonic() - started) / 60


def train_stages(root: Path, max_tokens: int, max_tool_calls: int) -> dict[str, float]:
    minutes = {}
    for name, recipe_file, kind in STAGES:
        out = root / name
        if (out / "final").is_dir():
            continue
        overrides = {"output_dir": str(out)}
        if kind is RLRecipe:
            problems, probe_minutes = select_rl_problems(root, max_tokens, max_tool_calls)
            if probe_minutes:
                minutes["probe"] = probe_minutes
            overrides["model"] = str(root / ("sft_code" if name == "rl_tool" else "sft_text") / "final")
            overrides["data"] = [str(problems)]
        minutes[name] = run_stage(name, RECIPES / recipe_file, kind, overrides)
    return minutes


def run_stage(name: str, recipe_file: Path, kind: type[SFTRecipe] | type[RLRecipe], overrides: dict) -> float:
    """One training stage of an experiment, from its recipe with ``overrides``; its minutes. A stage
    stopped by Ctrl-C raises ``KeyboardInterrupt`` (its checkpoint is saved: rerunning resumes)."""
    recipe = load_recipe(recipe_file, kind, **overrides)
    started = time.monotonic()
    result = run_sft(recipe) if kind is SFTRecipe else run_rl(recipe)
    if result.interrupted:
        raise KeyboardInterrupt(f"stopped during {name}; run the command again to resume")
    return (time.monotonic() - started) / 60


def evaluate(root: Path, limit: int, max_tokens: int, max_tool_calls: int) -> tuple[dict[str, float], dict[str, float]]:
    accuracy, minutes = {}, {}
    for name, (stage, tools, few_shot) in EVALS.items():
        model = BASE_MODEL if stage is None else str(root / stage / "final")
        config = greedy_eval(HELDOUT, model, root / "eval" / name, max_tokens, max_tool_calls if tools else 0,
                             few_shot=few_shot, limit=limit)
        started = time.monotonic()
        result = run_eval(config, show_progress=True)
        minutes[f"eval_{name}"] = (time.monotonic() - started) / 60
        accuracy[name] = result.metrics["avg@1"]
    return accuracy, minutes


def write_report(root: Path, report_dir: Path, accuracy: dict[str, float], minutes: dict[str, float],
                 limit: int) -> Path:
    report_dir.mkdir(parents=True, exist_ok=True)
    commands = ["bash scripts/setup.sh", "python -m retool.training.miniature"] + [
        f"retool {'sft' if kind is SFTRecipe else 'rl'} --recipe {RECIPES / f}" for _, f, kind in STAGES]
    selection_file = root / "rl_problems.json"
    selection = json.loads(selection_file.read_text()) if selection_file.exists() else None
    payload = {**{k: round(v, 4) for k, v in accuracy.items()},
               "heldout": {"file": HELDOUT, "problems": limit, "sampling": "greedy, 1 sample"},
               "rl_problem_selection": selection,
               "wall_minutes": {k: round(v, 2) for k, v in minutes.items()},
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
               "commands": commands}
    (report_dir / "miniature_retool.json").write_text(json.dumps(payload, indent=2) + "\n")
    figures = report_dir / "miniature_retool"
    rl_runs = {"tool DAPO (c)": root / "rl_tool", "text DAPO (d)": root / "rl_text"}
    sft_runs = {"code SFT (b)": root / "sft_code", "text SFT": root / "sft_text"}
    plots = [compare_runs(rl_runs, "accuracy", figures / "rl_train_accuracy.png"),
             compare_runs(rl_runs, "reward/mean", figures / "rl_reward.png"),
             compare_runs(rl_runs, "tools/calls_per_answer", figures / "rl_tool_calls.png"),
             compare_runs(sft_runs, "sft/loss", figures / "sft_loss.png")]
    rows = "\n".join(f"| {name} | {accuracy[name]:.3f} |" for name in EVALS)
    lines = [
        "# Miniature ReTool (CPU, SmolLM2-135M, synthetic tool-necessary problems)", "",
        f"Held-out accuracy on the first {limit} problems of `{HELDOUT}` (greedy, one sample):", "",
        "| model | accuracy |", "|---|---|", rows, "",
        "(a) base = the embedded model with the one-shot demonstration; (b) sft = code-integrated SFT; "
        "(c) sft_rl = (b) + tool-integrated DAPO; (d) text_sft_rl = text SFT + text DAPO, same budget.", "",
        *([f"RL problems (probe of {PROBE_SIZE} unseen training problems, code SFT model, greedy): pass rate per "
           "family " + ", ".join(f"{f} {r:.2f}" for f, r in selection["probe_pass_rate"].items())
           + f"; RL draws from {selection['rl_problems']} training problems of "
           + ", ".join(selection["kept_families"]) + ".", ""] if selection else []),
        "Wall time (minutes, this machine): " + ", ".join(f"{k} {v:.1f}" for k, v in minutes.items())
        + " (total_all_stages sums the stages; a stage skipped by this invocation keeps the time of the one "
          "that ran it)", "",
        "Reproduce:", "", "```", *commands[1:], "```", "",
        *[f"![{p.stem}](miniature_retool/{p.name})" for p in plots], "",
    ]
    (report_dir / "miniature_retool.md").write_text("\n".join(lines))
    return report_dir / "miniature_retool.json"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="runs/miniature", help="where the four runs and the evaluations go")
    parser.add_argument("--report-dir", default="evals/reports")
    parser.add_argument("--heldout-limit", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--max-tool-calls", type=int, default=2)
    args = parser.parse_args(argv)
    root = Path(args.root)
    timings_file = root / "timings.json"
    minutes = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    started = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    minutes.update(train_stages(root, args.max_tokens, args.max_tool_calls))
    timings_file.write_text(json.dumps(minutes))
    accuracy, eval_minutes = evaluate(root, args.heldout_limit, args.max_tokens, args.max_tool_calls)
    minutes.update(eval_minutes)
    minutes["total_this_invocation"] = (time.monotonic() - started) / 60
    minutes["total_all_stages"] = sum(v for k, v in minutes.items() if not k.startswith("total"))
    timings_file.write_text(json.dumps(minutes))
    path = write_report(root, Path(args.report_dir), accuracy, minutes, args.heldout_limit)
    print(json.dumps({k: accuracy[k] for k in EVALS}), "→", path)


if __name__ == "__main__":
    main()
