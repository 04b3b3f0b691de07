"""Automatic step labels through the sandbox (Math-Shepherd / OmegaPRM), for process reward models.

For each step prefix of each trajectory of a ``retool eval --out`` run, ``mc`` continuations are
sampled with the run's own policy (engine, dialect, sampling), each in a branch whose interpreter
state is the prefix's cells replayed (``retool.search.replay``), and graded like the run. The
label of step k is the value of the prefix that ends with it:

* ``soft``: the share of correct samples, the trajectory's own outcome counting as one more;
* ``hard``: 1 if any of them is correct.

So a correct trajectory needs no rollouts at all (every prefix led to a correct answer once:
``source = "outcome"``; ``mc_correct`` rolls out anyway, for sharper soft labels), and the last
step's label is the outcome itself. ``method = "binary"`` is OmegaPRM's search for the first bad
step of a wrong trajectory: assuming a prefix that cannot be completed stays so, it evaluates
O(log K) prefixes instead of K−1; steps before the first bad one get hard 1, it and later ones 0,
and a soft value only where measured (``source = "inferred"`` elsewhere).

A branch that the sandbox or the engine fails, or whose replay came out differently than recorded
(randomness, the clock), is dropped, never counted as wrong; the stats report the replay mismatch
rate. Output (``OUT/labels.jsonl``, one trajectory per line, flushed as each finishes, so a rerun
resumes; ``OUT/stats.json``): rollouts per label, positive rate by step index, mismatches.

Not here: training on the labels (``retool.prm.train``), what a step is (``retool.search.steps``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retool.engines.base import Engine
from retool.engines.spec import EngineSpec
from retool.evals.harness import check_settings
from retool.evals.run_dir import load_run
from retool.grading import ScoredSample, score
from retool.rollout import Rollout
from retool.sandbox.spec import SandboxSpec
from retool.search.replay import ReplaySession
from retool.search.steps import StepSpan, boundaries, prefix, steps
from retool.seeds import derive_seed
from retool.trajectory import Trajectory

log = logging.getLogger(__name__)
METHODS = ("linear", "binary")


@dataclass(frozen=True)
class LabelConfig:
    run: str  # a finished ``retool eval --out`` directory
    out: str
    mc: int = 4  # continuations per evaluated prefix
    method: str = "linear"  # linear: every prefix; binary: OmegaPRM's search for the first bad step
    mc_correct: bool = False  # roll out prefixes of correct trajectories too (else their labels are the outcome)
    engine: EngineSpec | None = None  # None: the run's own engine
    sandbox: SandboxSpec | None = None  # None: the run's own backend (replays must match what it recorded)
    concurrency: int = 8  # continuations in flight, each holding a sandbox session while it runs code
    limit: int | None = None  # only the first N trajectories (in file order)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown labelling method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.mc < 1 or self.concurrency < 1:
            raise ValueError("mc and concurrency must be at least 1")

    def defining(self) -> dict[str, Any]:
        return {"run": str(Path(self.run).resolve()), "mc": self.mc, "method": self.method,
                "mc_correct": self.mc_correct}


@dataclass(frozen=True)
class StepLabel:
    step: int  # 0-based step index
    boundary: int  # position of the step's last token in prompt_ids + ids: where a PRM is read
    soft: float | None  # share of correct samples from this prefix (own outcome included); None: not measured
    hard: int  # 1: some sample from this prefix was correct
    rollouts: int  # continuations that were graded (dropped ones not counted)
    correct: int  # of those, correct
    source: str  # "mc" (measured), "outcome" (the trajectory's own result), "inferred" (binary search),
    # "dropped" (every continuation failed for reasons not the model's: the outcome stands in)

    @property
    def target(self) -> float:
        """What a PRM is trained towards: the soft value where measured, else the hard one."""
        return float(self.hard) if self.soft is None else self.soft


@dataclass
class LabeledTrajectory:
    problem_id: str
    sample: int
    correct: bool
    answer: str | None
    trajectory: Trajectory
    labels: list[StepLabel]
    mismatches: int = 0  # branches dropped because a replayed cell differed
    dropped: int = 0  # branches dropped for any infrastructure failure (mismatches included)
    replayed: int = 0  # branches that replayed their prefix (ran code)

    def to_json(self) -> dict[str, Any]:
        return {"problem_id": self.problem_id, "sample": self.sample, "correct": self.correct, "answer": self.answer,
                "labels": [asdict(label) for label in self.labels], "mismatches": self.mismatches,
                "dropped": self.dropped, "replayed": self.replayed, "trajectory": self.trajectory.to_dict()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "LabeledTrajectory":
        return cls(d["problem_id"], int(d["sample"]), bool(d["correct"]), d.get("answer"),
                   Trajectory.from_dict(d["trajectory"]), [StepLabel(**label) for label in d["labels"]],
                   int(d.get("mismatches", 0)), int(d.get("dropped", 0)), int(d.get("replayed", 0)))


@dataclass
class _Tally:
    rollouts: int = 0
    correct: int = 0
    mismatches: int = 0
    dropped: int = 0
    replayed: int = 0


@dataclass
class Labeller:
    """Labels one run's trajectories with one engine and one sandbox pool."""

    rollout: Rollout
    pool: Any
    config: LabelConfig
    gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(8))
    evaluated: list[tuple[str, int, int]] = field(default_factory=list)  # (problem, sample, prefix k) as rolled out

    async def continuations(self, sample: ScoredSample, spans: list[StepSpan], k: int) -> _Tally:
        """``mc`` graded continuations of ``prefix(traj, k)``, each with its own seed and sandbox."""
        self.evaluated.append((sample.problem_id, sample.sample, k))
        tally = _Tally()

        async def one(j: int) -> None:
            branch = prefix(sample.trajectory, k, spans)
            session = ReplaySession.of(self.pool, branch)
            async with self.gate:
                try:
                    done = await self.rollout.run_one(
                        branch.prompt_ids, session=session, traj=branch,
                        index=derive_seed("prm-label", sample.problem_id, sample.sample, k, j))
                finally:
                    await asyncio.to_thread(session.close)
            tally.replayed += session.replayed or session.mismatch is not None
            if done.infra_failure:
                tally.dropped += 1
                tally.mismatches += session.mismatch is not None
                return
            graded = score(sample.problem, sample.sample, done, self.rollout.tokenizer, self.rollout.dialect)
            tally.rollouts += 1
            tally.correct += graded.correct

        await asyncio.gather(*(one(j) for j in range(self.config.mc)))
        return tally

    async def label(self, sample: ScoredSample) -> LabeledTrajectory:
        traj = sample.trajectory
        spans = steps(traj)
        points = boundaries(traj, spans)
        own = int(sample.correct)
        out = LabeledTrajectory(sample.problem_id, sample.sample, sample.correct, sample.answer, traj, [])
        measured: dict[int, _Tally] = {}

        async def measure(k: int) -> _Tally:
            tally = await self.continuations(sample, spans, k)
            out.mismatches += tally.mismatches
            out.dropped += tally.dropped
            out.replayed += tally.replayed
            measured[k] = tally
            return tally

        K = len(spans)
        if sample.correct and not self.config.mc_correct:
            pass  # every prefix led to a correct answer once: the outcome is the label
        elif self.config.method == "linear" or sample.correct:
            await asyncio.gather(*(measure(k) for k in range(1, K)))
        else:  # binary: the first k whose prefix cannot be completed (lo completes, hi does not)
            lo, hi = 0, K
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if (await measure(mid)).correct > 0:
                    lo = mid
                else:
                    hi = mid
            first_bad = hi
        for k in range(1, K + 1):
            tally = measured.get(k)
            if k == K or (tally is None and (sample.correct or self.config.method == "linear")):
                soft, hard, source = float(own), own, "outcome"
            elif tally is None:  # binary search: inferred from the first bad step
                soft, hard, source = None, int(k < first_bad), "inferred"
            elif tally.rollouts == 0:  # every branch was dropped (infrastructure, replay mismatch)
                soft, hard, source = None, own, "dropped"
            else:
                hits = tally.correct + own
                soft, hard, source = hits / (tally.rollouts + 1), int(hits > 0), "mc"
            out.labels.append(StepLabel(k - 1, points[k - 1], soft, hard, tally.rollouts if tally else 0,
                                        tally.correct if tally else 0, source))
        return out


def label_run(config: LabelConfig, engine: Engine | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Label (or resume labelling) ``config.run`` into ``config.out``; returns the stats."""
    run = load_run(config.run)
    out = Path(config.out)
    check_settings(out, config.defining(), "labels made")
    path = out / "labels.jsonl"
    done = load_labels(path)
    seen = {(d.problem_id, d.sample) for d in done}
    samples = run.samples[: config.limit] if config.limit else run.samples
    todo = [s for s in samples if (s.problem_id, s.sample) not in seen]
    owns = engine is None
    if engine is None:
        engine = (config.engine or run.config.engine).build(max_batch=min(config.concurrency, 64))
    sandbox = config.sandbox or run.config.sandbox
    try:
        with sandbox.pool(size=config.concurrency) as pool:
            labeller = Labeller(Rollout(engine, pool, run.config.rollout), pool, config,
                                asyncio.Semaphore(config.concurrency))
            new = asyncio.run(_label_all(labeller, todo, path, show_progress))
    finally:
        if owns:
            engine.close()
    stats = label_stats(done + new)
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    return stats


async def _label_all(labeller: Labeller, todo: list[ScoredSample], path: Path, show_progress: bool
                     ) -> list[LabeledTrajectory]:
    from rich.progress import Progress

    new: list[LabeledTrajectory] = []
    with path.open("a") as sink, Progress(disable=not show_progress) as progress:
        task = progress.add_task("labelling steps", total=len(todo))

        async def one(sample: ScoredSample) -> None:
            labeled = await labeller.label(sample)
            sink.write(json.dumps(labeled.to_json()) + "\n")
            sink.flush()
            new.append(labeled)
            progress.advance(task)

        await asyncio.gather(*(one(s) for s in todo))
    return new


def load_labels(path: str | Path) -> list[LabeledTrajectory]:
    """The labelled trajectories in ``path``; a line cut off by a crash is dropped (and redone)."""
    path = Path(path)
    if not path.exists():
        return []
    rows, good = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows.append(LabeledTrajectory.from_json(json.loads(line)))
            good.append(line)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s line %d is unreadable (%s); that trajectory will be labelled again", path, number, exc)
    if len(good) != len(path.read_text().splitlines()):
        path.write_text("".join(line + "\n" for line in good))
    return rows


def label_stats(rows: list[LabeledTrajectory]) -> dict[str, Any]:
    """What the labelling cost and found."""
    labels = [label for row in rows for label in row.labels]
    rollouts = sum(label.rollouts for label in labels)
    by_step: dict[int, list[int]] = {}
    for label in labels:
        by_step.setdefault(label.step, []).append(label.hard)
    replayed = sum(row.replayed for row in rows)
    mismatches = sum(row.mismatches for row in rows)
    return {"trajectories": len(rows), "correct_trajectories": sum(row.correct for row in rows),
            "labels": len(labels), "rollouts": rollouts,
            "rollouts_per_label": rollouts / len(labels) if labels else 0.0,
            "positive_rate": sum(label.hard for label in labels) / len(labels) if labels else 0.0,
            "positive_rate_by_step": {str(k): sum(v) / len(v) for k, v in sorted(by_step.items())},
            "sources": {s: sum(label.source == s for label in labels) for s in ("mc", "outcome", "inferred", "dropped")},
            "branches_replayed": replayed, "replay_mismatches": mismatches,
            "replay_mismatch_rate": mismatches / replayed if replayed else 0.0,
            "branches_dropped": sum(row.dropped for row in rows)}
