"""``retool eval``: k samples per problem, each in its own sandbox session, graded as they finish.

Every finished sample is appended to ``OUT/trajectories.jsonl`` at once (and flushed), so an
interrupted run — Ctrl-C, a crash, a full disk — loses at most the samples in flight; running
the same command again skips what is there. A partial last line (the process died mid-write) is
dropped on resume and that sample is redone. A run directory remembers its settings
(``config.json``); resuming with different sampling settings is refused rather than mixed.

A sample stopped by an infrastructure failure (the sandbox, the engine or the host failed:
``infra_error``) is neither scored nor written: the result counts it (``metrics["infra_failures"]``)
and running the command again retries it.

Not here: the metrics (``metrics.py``), tool analytics (``analytics.py``), the report and plots
(``report.py``, notebooks too), grading (``retool.grading``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retool.datasets import Problem, load_benchmark
from retool.engines.base import Engine, SamplingParams
from retool.engines.spec import EngineSpec
from retool.evals.analytics import tool_analytics
from retool.evals.metrics import avg_at_k, majority_answer, mean, pass_at_k
from retool.grading import ScoredSample, Verdict, is_equivalent, score
from retool.rollout import Rollout, RolloutConfig
from retool.sandbox.spec import SandboxSpec
from retool.seeds import derive_seed
from retool.trajectory import Trajectory

log = logging.getLogger(__name__)

# ReTool's evaluation sampling (temperature 1.0, top-p 0.7) with seed 0 and a 4096-token budget:
# ``retool eval``'s deliberate difference from the library's greedy, 1024-token default
EVAL_ROLLOUT = RolloutConfig(max_total_tokens=4096, sampling=SamplingParams(temperature=1.0, top_p=0.7, seed=0))


@dataclass(frozen=True)
class EvalConfig:
    benchmark: str
    engine: EngineSpec = EngineSpec()
    sandbox: SandboxSpec = SandboxSpec()
    rollout: RolloutConfig = EVAL_ROLLOUT
    k: int = 32
    limit: int | None = None
    out: str | None = None
    notebooks: bool = False
    concurrency: int = 16  # trajectories in flight, each holding one sandbox session

    def sample_defining(self) -> dict[str, Any]:
        """The settings that change what a sample is: a run directory is resumed only with these."""
        r, s = self.rollout, self.rollout.sampling
        return {"benchmark": self.benchmark, "model": self.engine.model, "dialect": r.dialect,
                "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "seed": s.seed,
                "max_total_tokens": r.max_total_tokens, "max_tool_calls": r.max_tool_calls, "few_shot": r.few_shot}


@dataclass
class EvalResult:
    config: EvalConfig
    metrics: dict[str, float]
    per_problem: list[dict[str, Any]]
    analytics: dict[str, Any]
    samples: list[ScoredSample] = field(repr=False, default_factory=list)

    def to_json(self) -> dict[str, Any]:
        config = asdict(self.config)
        config["engine"]["api_key"] = None  # a secret: never written to a report
        return {"config": config, "metrics": self.metrics, "analytics": self.analytics,
                "per_problem": self.per_problem}


# -- storage -------------------------------------------------------------------------------------


def sample_to_json(s: ScoredSample) -> dict[str, Any]:
    return {"problem_id": s.problem_id, "sample": s.sample, "answer": s.answer, "gold": s.gold,
            "correct": s.correct, "method": s.verdict.method, "reward": s.reward, "trajectory": s.trajectory.to_dict()}


def sample_from_json(d: dict[str, Any], problems: dict[str, Problem] | None = None) -> ScoredSample:
    """A stored sample; its problem is the benchmark's own when known (else one carrying the gold)."""
    problem = (problems or {}).get(d["problem_id"]) or Problem(d["problem_id"], "", d["gold"])
    verdict = Verdict(d["answer"], bool(d["correct"]), d.get("method", "stored"))
    return ScoredSample(problem, int(d["sample"]), Trajectory.from_dict(d["trajectory"]), verdict,
                        float(d.get("reward", 1.0 if verdict.correct else -1.0)))


def load_samples(path: Path, problems: dict[str, Problem] | None = None) -> list[ScoredSample]:
    """Finished samples in ``path``; a broken line (a crash mid-write) is dropped, and the file
    rewritten without it, so appending continues cleanly."""
    if not path.exists():
        return []
    samples, broken = [], 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            samples.append(sample_from_json(json.loads(line), problems))
        except (ValueError, KeyError, TypeError) as exc:
            broken += 1
            log.warning("%s line %d is unreadable (%s); that sample will be redone", path, number, exc)
    if broken:
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(sample_to_json(s)) + "\n" for s in samples))
        tmp.replace(path)
    return samples


def check_resumable(out: Path, config: EvalConfig) -> None:
    check_settings(out, config.sample_defining(), "a run")


def check_settings(out: Path, current: dict[str, Any], holds: str) -> None:
    """``out/config.json`` records ``current`` on first use; later uses must match it (``holds``
    names what the directory holds, for the message)."""
    saved_path = out / "config.json"
    if saved_path.exists():
        saved = json.loads(saved_path.read_text())
        changed = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
        if changed:
            detail = ", ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"{out} holds {holds} with other settings ({detail}); use another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        saved_path.write_text(json.dumps(current, indent=2))


# -- running -------------------------------------------------------------------------------------


def run_eval(config: EvalConfig, engine: Engine | None = None, problems: list[Problem] | None = None,
             show_progress: bool = True) -> EvalResult:
    """Run (or resume) an evaluation; returns the graded result and writes ``config.out``."""
    problems = problems if problems is not None else load_benchmark(config.benchmark, limit=config.limit)
    out = Path(config.out) if config.out else None
    with _exclusive(out):
        return _run_locked(config, engine, problems, out, show_progress)


@contextlib.contextmanager
def _exclusive(out: Path | None):
    """One writer per run directory: a second ``retool eval`` on the same ``--out`` would redo and
    duplicate the samples the first one is working on."""
    if out is None:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{out} is being written by another retool eval; wait for it or use another --out") from None
        yield


def _run_locked(config: EvalConfig, engine: Engine | None, problems: list[Problem], out: Path | None,
                show_progress: bool) -> EvalResult:
    done: list[ScoredSample] = []
    if out is not None:
        check_resumable(out, config)
        by_id = {p.id: p for p in problems}
        done = [s for s in load_samples(out / "trajectories.jsonl", by_id) if s.sample < config.k]
    owns_engine = engine is None
    if engine is None:
        engine = config.engine.build(max_batch=min(config.concurrency, 64))
    try:
        with config.sandbox.pool(size=config.concurrency) as pool:
            new, infra = asyncio.run(_sample_all(config, engine, pool, problems, done, out, show_progress))
    finally:
        if owns_engine:
            engine.close()
    result = summarize(config, problems, done + new)
    result.metrics["infra_failures"] = len(infra)
    if out is not None:
        from retool.evals.report import write_report

        write_report(out, result, engine.tokenizer)
        if config.notebooks:
            from retool.evals.report import write_notebooks

            write_notebooks(out / "notebooks", result.samples, engine.tokenizer, config.rollout.dialect)
    return result


async def _sample_all(config, engine, pool, problems, done, out, show_progress) -> tuple[list[ScoredSample], list[str]]:
    rollout = Rollout(engine, pool, config.rollout)
    finished = {(s.problem_id, s.sample) for s in done}
    todo = [(p, s) for p in problems for s in range(config.k) if (p.id, s) not in finished]
    prompts = {p.id: rollout.prompt_ids(p.problem) for p in problems}
    sink = (out / "trajectories.jsonl").open("a") if out is not None else None
    infra: list[str] = []
    gate = asyncio.Semaphore(config.concurrency)
    new: list[ScoredSample] = []
    progress = _Progress(len(todo) + len(done), sum(s.correct for s in done), len(done), show_progress)

    async def one(problem: Problem, sample: int) -> None:
        async with gate:
            traj = await rollout.run_one(prompts[problem.id], {"problem_id": problem.id, "sample": sample},
                                         index=derive_seed("eval", problem.id, sample))  # a sample keeps its seed whatever --limit
        if traj.infra_failure:  # not the model's doing: not scored, not kept, retried on resume
            infra.append(traj.finish_detail or "infra_error")
            progress.skip()
            return
        graded = score(problem, sample, traj, engine.tokenizer, rollout.dialect)
        new.append(graded)
        if sink is not None:
            sink.write(json.dumps(sample_to_json(graded)) + "\n")
            sink.flush()
        progress.advance(graded.correct)

    try:
        with progress:
            await asyncio.gather(*(one(p, s) for p, s in todo))
    finally:
        if sink is not None:
            sink.close()
    if infra:
        log.warning("%d sample(s) stopped by infrastructure failures were not scored (first: %s); "
                    "run the same command again to retry them", len(infra), infra[0])
    return new, infra


class _Progress:
    """A rich progress bar showing the running accuracy (or nothing, for tests)."""

    def __init__(self, total: int, correct: int, completed: int, enabled: bool) -> None:
        self.correct, self.completed, self.bar = correct, completed, None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            self.task = self.bar.add_task(self._label(), total=total, completed=completed)

    def _label(self) -> str:
        return f"accuracy {self.correct / self.completed:.3f}" if self.completed else "sampling"

    def advance(self, correct: bool) -> None:
        self.correct += correct
        self.completed += 1
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=self._label())

    def skip(self) -> None:
        """A sample that will not be scored (an infrastructure failure): it no longer counts."""
        if self.bar is not None:
            self.bar.update(self.task, total=self.bar.tasks[0].total - 1, description=self._label())

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()


# -- metrics ---------------------------------------------------------------------------------------


def summarize(config: EvalConfig, problems: list[Problem], samples: list[ScoredSample]) -> EvalResult:
    by_problem: dict[str, list[ScoredSample]] = {p.id: [] for p in problems}
    for s in sorted(samples, key=lambda s: (s.problem_id, s.sample)):
        if s.problem_id in by_problem:
            by_problem[s.problem_id].append(s)
    per_problem, avgs, passes, majs = [], [], [], []
    for problem in problems:
        group = by_problem[problem.id]
        if not group:
            continue
        n, c = len(group), sum(s.correct for s in group)
        majority = majority_answer([s.answer for s in group], is_equivalent)
        maj_correct = is_equivalent(majority, problem.answer)
        row = {"id": problem.id, "gold": problem.answer, "samples": n, "correct": c, "avg": avg_at_k([s.correct for s in group]),
               f"pass@{n}": pass_at_k(n, c, n), "pass@1": pass_at_k(n, c, 1), "majority": majority,
               "maj_correct": maj_correct, "answers": [s.answer for s in group]}
        per_problem.append(row)
        avgs.append(row["avg"])
        passes.append(pass_at_k(n, c, min(config.k, n)))
        majs.append(float(maj_correct))
    k = config.k
    metrics = {f"avg@{k}": mean(avgs), f"pass@{k}": mean(passes), f"maj@{k}": mean(majs),
               "problems": len(per_problem), "samples": len(samples)}
    return EvalResult(config, metrics, per_problem, tool_analytics(samples), samples)
