"""The miniature search experiment: best-of-N, step-level beam search and DVTS under one process
PRM, and budget forcing, at a size two CPU cores can run.

Same policy, verifier and held-out problems as the test-time scaling experiment
(``retool.search.experiment``: the shipped adapter after the multi-step SFT; the process PRM trained
on half A's Monte-Carlo step labels; half B judged). Its stages are rerun here when their outputs
are missing (about 40 minutes on 2 cores), then:

1. **Search** on half B with the process PRM, selection PRM-Last-Max, budgets ``N`` of
   ``PLAN["budgets"]`` (beam and DVTS with M = 2): one resumable ``retool eval --strategy`` run per
   strategy and budget; accuracy with bootstrap intervals against *measured* model tokens per problem;
   the beam's prefill ratio on the hf engine (prompt tokens computed ÷ distinct prefix tokens);
   replay mismatches.
2. **Budget forcing** on half B (``PLAN["forcing_samples"]`` samples per problem): three thinking caps
   and one "Wait" extension; answer-present rate and the most thinking tokens any trajectory spent
   beyond its cap.

Targets are fixed here, before the run (``PLAN``, ``TARGETS``); the report says what came out, misses
included. Writes ``evals/reports/search.json`` and ``.md`` with the curves.

Usage: ``python -m retool.search.search_experiment [--root runs/tts]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from retool.datasets import load_benchmark
from retool.engines.spec import EngineSpec
from retool.evals.harness import EVAL_ROLLOUT, EvalConfig, run_eval
from retool.evals.run_dir import load_run
from retool.grading import extract_answer_from_trajectory
from retool.protocol import get_dialect
from retool.search import experiment as tts
from retool.models import load_tokenizer
from retool.search.curves import curve_point, plot_curves
from retool.search.search_eval import SearchEvalConfig, read_records, run_search_eval, summarize

REPORT = Path("evals/reports/search")
# fixed before the run
# (cut from beam N ∈ {2, 4} and 2 forcing samples per problem when the first run measured ~0.2 searches'
# trajectories a second on 2 cores, before any result was read: the whole plan would have taken 85 min)
PLAN = {"budgets": {"best_of_n": [2, 4], "beam": [4], "dvts": [4]}, "m": 2, "selection": "prm_last_max",
        "caps": [32, 64, 128], "extend": 1, "extend_with": "Wait", "forcing_samples": 1, "max_tokens": 384,
        "max_tool_calls": 4, "concurrency": 16}
TARGETS = {"prefill_ratio_beam_max": 1.10, "answer_present_min": 0.95, "max_thinking_over_cap": 0}


def prepare(root: Path) -> tuple[str, Path]:
    """The policy and the process PRM of the scaling experiment (trained here if missing)."""
    from retool.prm.labels import LabelConfig, label_run

    a, _, _ = tts.write_problems(root, 10)
    model = tts.policy(root)
    prm = root / "prm_process" / "prm"
    if not prm.exists():
        tts.sample(model, a, root / "eval_a", 4, PLAN["max_tokens"])
        label_run(LabelConfig(str(root / "eval_a"), str(root / "labels"), mc=4, concurrency=16))
        tts.train_verifiers(root, root / "labels", model, objectives=("process",))
    return model, prm


def rollout_config():
    return replace(EVAL_ROLLOUT, max_total_tokens=PLAN["max_tokens"], max_tool_calls=PLAN["max_tool_calls"],
                   few_shot=False)


def run_searches(root: Path, runs: Path, model: str, prm: Path, engine, problems) -> dict[str, Any]:
    """Every strategy at every budget (``engine`` None: only read what finished, run nothing)."""
    from retool.prm.model import load_prm
    from retool.search.verifiers import PRMVerifier

    verifier = PRMVerifier(load_prm(prm), name="process") if engine is not None else None
    out: dict[str, Any] = {}
    for strategy, budgets in PLAN["budgets"].items():
        points = []
        for n in budgets:
            config = SearchEvalConfig(benchmark=str(root / "problems_b.jsonl"), strategy=strategy, verifier=str(prm),
                                      n=n, m=PLAN["m"], selection=PLAN["selection"], engine=EngineSpec(model=model),
                                      rollout=rollout_config(), out=str(runs / strategy / f"n{n}"),
                                      concurrency=PLAN["concurrency"])
            if engine is not None:
                run_search_eval(config, engine=engine, problems=problems, verifier=verifier)
            records = read_records(config.out)
            if not records:
                continue
            summary = summarize(records)
            costs = [r["cost"] for r in records]
            points.append({"n": n, "label": f"N={n}", **curve_point(records),
                           "pass@candidates": summary["pass@candidates"], "prefill_ratio": summary["prefill_ratio"],
                           "replays": sum(c["replays"] for c in costs),
                           "replay_mismatches": sum(c["replay_mismatches"] for c in costs)})
        if points:
            out[strategy] = {"points": points}
    return out


def run_forcing(root: Path, runs: Path, model: str, engine, problems) -> dict[str, Any]:
    settings = {f"cap{c}": {"max_thinking_tokens": c} for c in PLAN["caps"]}
    settings[f"extend{PLAN['extend']}"] = {"extend": PLAN["extend"], "extend_with": PLAN["extend_with"]}
    settings["none"] = {}
    results: dict[str, Any] = {}
    dialect = get_dialect(rollout_config().dialect)
    tokenizer = engine.tokenizer if engine is not None else load_tokenizer(model)
    for name, extra in settings.items():
        out = runs / "forcing" / name
        if engine is not None:
            run_eval(EvalConfig(benchmark=str(root / "problems_b.jsonl"), engine=EngineSpec(model=model),
                                rollout=replace(rollout_config(), **extra), k=PLAN["forcing_samples"], out=str(out),
                                concurrency=16), engine=engine, problems=problems, show_progress=False)
        elif not (out / "results.json").exists():
            continue  # report only: this setting did not finish
        samples = load_run(out).samples
        trajs = [s.trajectory for s in samples]
        cap = extra.get("max_thinking_tokens")
        thinking = [t.thinking_tokens if t.thinking_tokens is not None else t.num_model_tokens for t in trajs]
        present = [extract_answer_from_trajectory(t, tokenizer, dialect) is not None for t in trajs]
        results[name] = {"cap": cap, **extra, "samples": len(trajs),
                         **curve_point([{"correct": s.correct, "cost": {"model_tokens": s.trajectory.num_model_tokens}}
                                        for s in samples]),
                         "answer_present_rate": sum(present) / len(present),
                         "finished_with_answer": sum(t.finish_reason == "answer" for t in trajs) / len(trajs),
                         "forced_answer_share": sum(any(k == "answer" for *_, k in t.forced) for t in trajs) / len(trajs),
                         "extended_share": sum(any(k == "extend" for *_, k in t.forced) for t in trajs) / len(trajs),
                         "mean_thinking_tokens": sum(thinking) / len(thinking),
                         "max_thinking_over_cap": max(0, *(th - cap for th in thinking)) if cap is not None else None}
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="runs/tts", help="the scaling experiment's directory (policy, PRM)")
    parser.add_argument("--runs", default="runs/search", help="where this experiment's run directories go")
    parser.add_argument("--report", default=str(REPORT))
    parser.add_argument("--limit", type=int, default=None, help="only the first problems of half B (a smoke run)")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report from what has finished (runs nothing; unfinished settings left out)")
    args = parser.parse_args(argv)
    root, started = Path(args.root), time.monotonic()
    problems = load_benchmark(str(root / "problems_b.jsonl"), args.limit)
    if args.report_only:
        model, prm = tts.policy(root), root / "prm_process" / "prm"
        searches = run_searches(root, Path(args.runs), model, prm, None, problems)
        forcing = run_forcing(root, Path(args.runs), model, None, problems)
        timings = json.loads(Path(args.report).with_suffix(".json").read_text()).get("minutes", {}) \
            if Path(args.report).with_suffix(".json").exists() else {}
        write_report(Path(args.report), searches, forcing, timings, len(problems), model)
        return
    model, prm = prepare(root)
    prepared = time.monotonic()
    engine = EngineSpec(model=model).build(max_batch=64)
    try:
        searches = run_searches(root, Path(args.runs), model, prm, engine, problems)
        searched = time.monotonic()
        forcing = run_forcing(root, Path(args.runs), model, engine, problems)
    finally:
        engine.close()
    minutes = {"prepare": (prepared - started) / 60, "search": (searched - prepared) / 60,
               "forcing": (time.monotonic() - searched) / 60}
    write_report(Path(args.report), searches, forcing, minutes, len(problems), model)


def write_report(report: Path, searches: dict, forcing: dict, minutes: dict, problems: int, model: str) -> None:
    beam = searches.get("beam", {}).get("points", [])
    beam4 = next((p for p in beam if p["n"] == 4), beam[-1] if beam else None)
    ratio = beam4["prefill_ratio"] if beam4 else None
    capped = {k: v for k, v in forcing.items() if v["cap"] is not None}
    present = min(v["answer_present_rate"] for v in capped.values()) if capped else None
    over = max(v["max_thinking_over_cap"] for v in capped.values()) if capped else None
    replays = sum(p["replays"] for s in searches.values() for p in s["points"])
    mismatches = sum(p["replay_mismatches"] for s in searches.values() for p in s["points"])

    def judged(target: str, value, ok) -> dict[str, Any]:
        return {"target": target, "value": value, "met": None if value is None else bool(ok(value))}

    targets = [
        judged(f"beam prefill ratio ≤ {TARGETS['prefill_ratio_beam_max']}", ratio,
               lambda v: v <= TARGETS["prefill_ratio_beam_max"]),
        judged("every trajectory's thinking tokens ≤ its cap", over, lambda v: v <= TARGETS["max_thinking_over_cap"]),
        judged(f"answer present ≥ {TARGETS['answer_present_min']:.0%} under every cap", present,
               lambda v: v >= TARGETS["answer_present_min"]),
    ]
    data = {"strategies": searches, "prefill_ratio_beam": ratio,
            "replay": {"replays": replays, "mismatches": mismatches,
                       "mismatch_rate": mismatches / replays if replays else None},
            "budget_forcing": {"caps": forcing, "answer_present_rate": present, "max_thinking_over_cap": over},
            "targets": targets, "plan": PLAN, "problems": problems, "model": model,
            "minutes": {k: round(v, 2) for k, v in minutes.items()},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "command": "python -m retool.search.search_experiment"}
    report.parent.mkdir(parents=True, exist_ok=True)
    report.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    plots = report.parent / report.name
    plot_curves(plots / "strategies.png", {k: v["points"] for k, v in searches.items()},
                "search under the process PRM (PRM-Last-Max)")
    if forcing:
        points = [{**v, "label": name} for name, v in forcing.items()]
        plot_curves(plots / "budget_forcing.png", {"cap": sorted([p for p in points if p["cap"]], key=lambda p: p["cap"]),
                                                   "uncapped": [p for p in points if not p["cap"]]},
                    "budget forcing: accuracy against thinking", x="mean_thinking_tokens",
                    xlabel="mean thinking tokens (measured)")
    lines = ["# Search and budget forcing on the embedded model (miniature)", "",
             f"Policy `{model}`; {problems} held-out problems (half B of the test-time scaling experiment); verifier "
             f"the process PRM trained on half A's step labels; selection {PLAN['selection']}. Time: "
             + ", ".join(f"{k} {v:.1f} min" for k, v in minutes.items()) + f" on {os.cpu_count()} CPUs.", "",
             "## Targets (fixed before the run)", "", "| target | value | met |", "|---|---:|---|"]
    lines += [f"| {t['target']} | {_num(t['value'])} | {'not measured' if t['met'] is None else 'yes' if t['met'] else 'no'} |"
              for t in targets]
    lines += ["", "## Strategies: accuracy against measured tokens per problem", "",
              "| strategy | N | problems | accuracy | 95% CI | pass@candidates | model tokens | all tokens | cells | "
              "replayed cells | prefill ratio | wall s |", "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in searches.items():
        for p in s["points"]:
            lines.append(f"| {name} | {p['n']} | {p['problems']} | {p['accuracy']:.3f} | [{p['ci'][0]:.3f}, {p['ci'][1]:.3f}] | "
                         f"{p['pass@candidates']:.3f} | {p['model_tokens']:.0f} | {p['all_tokens']:.0f} | "
                         f"{p['cells']:.2f} | {p['replayed_cells']:.2f} | {_num(p['prefill_ratio'])} | {p['wall_s']:.1f} |")
    lines += ["", f"Replays: {replays}, mismatches: {mismatches}.", "", "## Budget forcing", "",
              "| setting | accuracy | 95% CI | answer present | forced share | extended share | mean thinking | "
              "max over cap |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for name, v in forcing.items():
        lines.append(f"| {name} | {v['accuracy']:.3f} | [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}] | "
                     f"{v['answer_present_rate']:.3f} | {v['forced_answer_share']:.3f} | {v['extended_share']:.3f} | "
                     f"{v['mean_thinking_tokens']:.1f} | {_num(v['max_thinking_over_cap'])} |")
    lines += ["", "## Curves", "", f"![strategies]({report.name}/strategies.png)", "",
              f"![budget forcing]({report.name}/budget_forcing.png)"]
    report.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
