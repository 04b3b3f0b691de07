"""The miniature test-time scaling experiment: do step labels from the sandbox make a verifier that
picks better answers than voting, at a size two CPU cores can run?

The policy is the shipped tool-integrated adapter (``retool-smollm2-135m-tir``) after a short
code SFT on the multi-step family (``coldstart_data/multistep``: two or three dependent cells),
which the shipped adapter never saw and solves 0 times in 36 samples
(``training/recipes/tts_sft_multistep.yaml``, 128 multi-step + 64 single-cell traces). The
problems are held-out only (never trained on by the policy): the synthetic families it solves
sometimes but not always, and the multi-step family.
They are split by a hash of the id into half A (the verifiers' training data) and half B (where
they are judged), so no verifier sees a problem it is scored on.

0. ``retool sft`` of the policy (``tts_sft_multistep.yaml``);
1. ``retool eval`` on A and on B: N samples per problem (ReTool's sampling, T 1.0, top-p 0.7);
2. ``retool prm label`` on A: Monte-Carlo step labels (``mc`` continuations per prefix);
3. ``retool prm train`` three times on A's labels: process (PRM), outcome (ORM), implicit (PRIME);
4. ``retool search rerank`` on B with those three and the execution heuristic.

The targets are fixed here, before the run (``TARGETS``), and the report says which were met.
Every stage is skipped when its output exists (the harness, the labeller and the trainer resume),
so an interrupted run continues where it stopped. Writes ``evals/reports/test_time_scaling.json``
and ``.md`` (with the curves).

Usage: ``python -m retool.search.experiment [--root runs/tts] [--per-family 12] [--n 4]``.
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

from retool.engines.spec import EngineSpec
from retool.evals.harness import EVAL_ROLLOUT, EvalConfig, run_eval
from retool.evals.run_dir import load_run
from retool.models import EMBEDDED_DEFAULT, load_tokenizer
import hashlib
from retool.prm.labels import LabelConfig, label_run
from retool.prm.model import load_prm
from retool.prm.train import train_prm
from retool.protocol import get_dialect
from retool.search.rerank import RerankConfig, candidates, verifier_report
from retool.search.verifiers import ExecutionHeuristic, PRMVerifier
from retool.training.recipe import PRMRecipe

REPORT = Path("evals/reports/test_time_scaling")
SOURCES = {"coldstart_data/synth/heldout.jsonl": ("combinatorics", "factor", "counting", "arithmetic"),
           "coldstart_data/multistep/heldout.jsonl": None}  # None: every family of the file
MULTISTEP = "coldstart_data/multistep/heldout.jsonl"
SELECTIONS = ("majority", "orm_max", "orm_vote", "prm_min_max", "prm_min_vote", "prm_last_max", "prm_last_vote")
# fixed before the run (the targets); the report states met / missed for each
TARGETS = {"prm_auroc_min": 0.80, "prm_auroc_over_exec": 0.05, "max_over_avg": 0.10, "vote_over_majority": 0.03,
           "process_vs_orm_multistep": -0.01}


def write_problems(root: Path, per_family: int) -> tuple[Path, Path, set[str]]:
    """Halves A and B of the chosen held-out problems; the ids of the multi-step ones."""
    rows, multistep = [], set()
    for source, families in SOURCES.items():
        counts: dict[str, int] = {}
        for line in Path(source).read_text().splitlines():
            row = json.loads(line)
            family = row.get("family") or row["id"].rsplit("-", 1)[0]
            if (families is None or family in families) and counts.get(family, 0) < per_family:
                counts[family] = counts.get(family, 0) + 1
                rows.append(row)
                if source == MULTISTEP:
                    multistep.add(row["id"])
    a, b = root / "problems_a.jsonl", root / "problems_b.jsonl"
    root.mkdir(parents=True, exist_ok=True)
    a.write_text("".join(json.dumps(r) + "\n" for r in rows if not _half_b(r["id"])))
    b.write_text("".join(json.dumps(r) + "\n" for r in rows if _half_b(r["id"])))
    return a, b, multistep


SFT_RECIPE = Path("training/recipes/tts_sft_multistep.yaml")
SFT_MIX = (("coldstart_data/multistep/code.jsonl", 128), ("coldstart_data/synth/code.jsonl", 64))


def policy(root: Path, max_steps: int = -1) -> str:
    """The experiment's policy: the shipped adapter after the multi-step SFT (stage 0)."""
    from retool.training.recipe import SFTRecipe, load_recipe
    from retool.training.sft import run_sft

    final = root / "sft" / "final"
    if not final.exists():
        data = root / "sft_data.jsonl"
        rows = [line for path, head in SFT_MIX for line in Path(path).read_text().splitlines()[-head:]]
        data.write_text("".join(line + "\n" for line in rows))
        recipe = load_recipe(SFT_RECIPE, SFTRecipe, output_dir=str(root / "sft"), data=[str(data)], max_steps=max_steps)
        result = run_sft(recipe)
        if result.final_dir is None:
            raise SystemExit("the SFT stage was stopped; run the same command to resume")
    return str(final)


def _half_b(problem_id: str) -> bool:
    """The split into halves, by an unsalted hash of the id (as the first run of the experiment made it)."""
    return int.from_bytes(hashlib.sha256(problem_id.encode()).digest()[:8], "big") / 2 ** 64 < 0.5


def sample(model: str, benchmark: Path, out: Path, n: int, max_tokens: int) -> None:
    rollout = replace(EVAL_ROLLOUT, max_total_tokens=max_tokens, max_tool_calls=4, few_shot=False)
    run_eval(EvalConfig(benchmark=str(benchmark), engine=EngineSpec(model=model), rollout=rollout, k=n,
                        out=str(out), concurrency=16))


def train_verifiers(root: Path, labels: Path, model: str, max_steps: int = -1, implicit_steps: int = -1,
                    objectives: tuple[str, ...] = ("process", "outcome", "implicit")) -> dict[str, Any]:
    settings = {"process": {"train_blocks": 2}, "outcome": {"train_blocks": 2}, "implicit": {"train_blocks": 1}}
    metrics = {}
    for objective in objectives:
        extra = settings[objective]
        out = root / f"prm_{objective}"
        if not (out / "prm").exists():
            train_prm(PRMRecipe(objective=objective, model=model, labels=[str(labels)], output_dir=str(out),
                                max_length=768, epochs=2,
                                max_steps=implicit_steps if objective == "implicit" and implicit_steps > 0 else max_steps, batch_size=4, learning_rate=1e-4 if objective != "implicit"
                                else 3e-5, val_fraction=0.2, eval_steps=25, save_steps=25, report_to=["tensorboard"],
                                **extra))
        metrics[objective] = json.loads((out / "eval.json").read_text())
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="runs/tts")
    parser.add_argument("--report", default=str(REPORT), help="where the report goes (.json and .md are added)")
    parser.add_argument("--per-family", type=int, default=12, help="held-out problems per family")
    parser.add_argument("--n", type=int, default=4, help="samples per problem")
    parser.add_argument("--mc", type=int, default=4, help="continuations per step prefix")
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--sft-max-steps", type=int, default=-1, help="cap the SFT stage (a smoke run)")
    parser.add_argument("--prm-max-steps", type=int, default=-1, help="cap each verifier's training (a smoke run)")
    parser.add_argument("--implicit-max-steps", type=int, default=16,
                        help="cap the implicit PRM's training: two 135M models per step, ~20 s a step on 2 cores")
    args = parser.parse_args(argv)
    root = Path(args.root)
    timings = root / "timings.json"  # stage minutes, summed over resumed runs (a skipped stage keeps its time)
    minutes: dict[str, float] = json.loads(timings.read_text()) if timings.exists() else {}

    def lap(name: str, since: float) -> float:
        spent = (time.monotonic() - since) / 60
        minutes[name] = round(minutes.get(name, 0.0) + spent if spent >= 0.5 else minutes.get(name, spent), 2)
        root.mkdir(parents=True, exist_ok=True)
        timings.write_text(json.dumps(minutes))
        return time.monotonic()

    a, b, multistep = write_problems(root, args.per_family)
    t = time.monotonic()
    model = policy(root, args.sft_max_steps)
    t = lap("sft", t)
    for half, path in (("a", a), ("b", b)):
        sample(model, path, root / f"eval_{half}", args.n, args.max_tokens)
    t = lap("sampling", t)
    stats = label_run(LabelConfig(str(root / "eval_a"), str(root / "labels"), mc=args.mc, concurrency=16))
    t = lap("labelling", t)
    train_metrics = train_verifiers(root, root / "labels", model, args.prm_max_steps, args.implicit_max_steps)
    t = lap("training", t)

    run = load_run(root / "eval_b")
    tokenizer = load_tokenizer(model)
    dialect = get_dialect(run.config.rollout.dialect)
    config = RerankConfig(str(root / "eval_b"), str(root / "rerank"), ("exec",), SELECTIONS, subsets=8, resamples=2000)
    verifiers = {"exec": ExecutionHeuristic(tokenizer, dialect)}
    for objective in ("process", "outcome", "implicit"):
        verifiers[objective] = PRMVerifier(load_prm(root / f"prm_{objective}" / "prm"), name=objective)
    reports, tables = {}, {}
    for name, verifier in verifiers.items():
        tables[name] = candidates(run, verifier, {})
        reports[name] = verifier_report(tables[name], config)
    lap("reranking", t)
    minutes["total"] = round(sum(v for k, v in minutes.items() if k != "total"), 2)
    multi = {name: verifier_report({p: c for p, c in table.items() if p in multistep}, config)["accuracy"]
             for name, table in tables.items() if any(p in multistep for p in table)}
    write_report(root, args, reports, multi, stats, train_metrics, minutes, Path(args.report))


def write_report(root: Path, args, reports: dict, multi: dict, stats: dict, train_metrics: dict, minutes: dict,
                 report: Path = REPORT) -> None:
    prm, orm, imp, exe = (reports[k] for k in ("process", "outcome", "implicit", "exec"))
    acc = {"avg": prm["accuracy"]["avg"], "majority": prm["accuracy"]["majority"],
           "prm_last_max": prm["accuracy"]["prm_last_max"], "prm_last_vote": prm["accuracy"]["prm_last_vote"],
           "prm_min_max": prm["accuracy"]["prm_min_max"], "orm_max": orm["accuracy"]["orm_max"],
           "implicit_last_max": imp["accuracy"]["prm_last_max"], "exec_max": exe["accuracy"]["prm_last_max"]}
    auroc = {"prm": prm["auroc"]["last"], "orm": orm["auroc"]["last"], "implicit": imp["auroc"]["last"],
             "exec": exe["auroc"]["last"]}
    n = args.n
    d_max = prm["differences"].get(f"prm_last_max-avg@{n}", {})
    d_vote = prm["differences"].get(f"prm_last_vote-majority@{n}", {})
    ms = (multi.get("process", {}).get("prm_last_max"), multi.get("outcome", {}).get("orm_max"))
    targets = [
        _verdict("PRM-Last AUROC ≥ 0.80", auroc["prm"], lambda v: v >= TARGETS["prm_auroc_min"]),
        _verdict("PRM-Last AUROC ≥ exec + 0.05", None if auroc["prm"] is None or auroc["exec"] is None
                 else auroc["prm"] - auroc["exec"], lambda v: v >= TARGETS["prm_auroc_over_exec"]),
        _verdict(f"prm_last_max@{n} − avg@{n} ≥ +0.10, CI above 0", d_max.get("diff"),
                 lambda v: v >= TARGETS["max_over_avg"] and d_max["ci_low"] > 0, d_max),
        _verdict(f"prm_last_vote@{n} − maj@{n} ≥ +0.03", d_vote.get("diff"),
                 lambda v: v >= TARGETS["vote_over_majority"], d_vote),
        _verdict("multi-step: process PRM best-of-N ≥ ORM's − 0.01", None if None in ms else ms[0] - ms[1],
                 lambda v: v >= TARGETS["process_vs_orm_multistep"]),
    ]
    problems = sum(1 for _ in open(root / "problems_b.jsonl"))
    data = {"n": n, "auroc": auroc, "accuracy": acc, "problems": problems, "minutes": minutes["total"],
            "targets": targets, "differences": {"prm_last_max-avg": d_max, "prm_last_vote-majority": d_vote},
            "multistep_accuracy": multi, "verifiers": reports, "labels": stats, "training": train_metrics,
            "wall_minutes": minutes, "settings": vars(args), "machine": {"cpus": os.cpu_count(),
                                                                        "platform": platform.platform()},
            "command": "python -m retool.search.experiment"}
    report.parent.mkdir(parents=True, exist_ok=True)
    report.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    from retool.search.rerank import _plot

    plots = report.parent / report.name
    plots.mkdir(exist_ok=True)
    images = [_plot(plots, name, rep["curves"]) for name, rep in reports.items()]
    lines = ["# Test-time scaling on the embedded model (miniature OpenR)", "",
             f"Policy `{EMBEDDED_DEFAULT}` + multi-step SFT; {problems} held-out problems judged (half B), N = {n} samples each; "
             f"verifiers trained on half A's Monte-Carlo step labels (mc = {args.mc}). Wall time "
             f"{minutes['total']:.1f} min on {os.cpu_count()} CPUs.", "",
             "## Targets (fixed before the run)", "", "| target | value | met |", "|---|---:|---|"]
    lines += [f"| {t['target']} | {_num(t['value'])} | {t['met']} |" for t in targets]
    lines += ["", "## Accuracy on half B", "", "| selection | accuracy |", "|---|---:|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in acc.items()]
    lines += ["", "## AUROC of the last step's score for final correctness", "", "| verifier | AUROC |", "|---|---:|"]
    lines += [f"| {k} | {_num(v)} |" for k, v in auroc.items()]
    lines += ["", "## Multi-step family", "", "| verifier | " + " | ".join(SELECTIONS) + " |",
              "|---|" + "---:|" * len(SELECTIONS)]
    lines += [f"| {name} | " + " | ".join(f"{a.get(s, 0):.3f}" for s in SELECTIONS) + " |" for name, a in multi.items()]
    lines += ["", "## Labels", "", f"{stats['labels']} step labels from {stats['trajectories']} trajectories, "
              f"{stats['rollouts']} rollouts ({stats['rollouts_per_label']:.2f} per label), replay mismatch rate "
              f"{stats['replay_mismatch_rate']:.3f}.", "", "## Curves", ""]
    lines += [f"![{img}]({report.name}/{img})" for img in images]
    report.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _verdict(target: str, value: float | None, ok, detail: dict | None = None) -> dict[str, Any]:
    met = "not measurable" if value is None else ("yes" if ok(value) else "no")
    out = {"target": target, "value": value, "met": met}
    if detail:
        out["ci"] = [detail.get("ci_low"), detail.get("ci_high")]
    return out


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}" if value < 0 else f"{value:.3f}"


if __name__ == "__main__":
    main()
