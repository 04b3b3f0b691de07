"""Search at test time over tool-integrated steps: best-of-N, step-level beam search, DVTS.

A search step is one call of ``Rollout.step`` (reasoning up to a code cell and its output, or the
final segment), so a verifier scores exactly what the PRM was trained on, and every branch carries
its interpreter state: a child continues in its parent's live session (the first child inherits
it) or in a ``ReplaySession`` of the parent's cells, started only if the child runs code.

* ``best_of_n``: N independent samples, scored, one selected (``select.py``).
* ``dvts``: N/M independent subtrees, each a width-1 beam with M children per step.
* ``beam``: N/M beams; each active prefix is expanded with M children by one step; finished
  children are kept as candidates; of the unfinished ones the N/M best by the verifier's score of
  their last step survive; until N candidates have finished or ``max_steps`` rounds ran (the
  survivors are then finished by sampling to the end).

Each returns a ``SearchResult``: the finished candidates with their step scores, the selected
one, and a cost record (model tokens sampled, interpreter tokens, cells run and replayed,
verifier tokens, wall time). Not here: MCTS (``mcts.py``), the verifiers.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass, field

from retool.engines import prefill
from retool.search.replay import ReplaySession
from retool.search.select import Candidate, select
from retool.search.steps import fork
from retool.seeds import derive_seed
from retool.trajectory import Trajectory


@dataclass(frozen=True)
class SearchSettings:
    n: int = 4  # candidates to finish (best-of-N's samples; the beam's total width)
    m: int = 2  # beam: children per kept prefix (N/M prefixes kept each round)
    max_steps: int = 8  # beam: expansion rounds before the survivors are finished by plain sampling
    selection: str = "prm_last_max"

    def __post_init__(self) -> None:
        if self.n < 1 or self.m < 1 or self.n % self.m or self.max_steps < 1:
            raise ValueError(f"search needs n, m, max_steps >= 1 and m dividing n: {self}")


@dataclass
class SearchCost:
    model_tokens: int = 0  # tokens the model sampled, over every branch (pruned ones included)
    tool_tokens: int = 0  # interpreter tokens appended, over every branch
    cells: int = 0  # cells the branches ran themselves
    replayed_cells: int = 0  # cells run again to give a branch its prefix's state
    replays: int = 0  # branch sessions that replayed their prefix's cells (or tried to)
    replay_mismatches: int = 0  # of those, replays whose output differed: the branch became an infra failure
    verifier_tokens: int = 0
    wall_s: float = 0.0
    # the engine's prefill over the search (``retool.engines.prefill``): prompt tokens sent, computed
    # (not served from its cache), and the distinct prefix tokens among them
    prompt_tokens: int = 0
    prefilled_tokens: int = 0
    distinct_prefix_tokens: int = 0

    @property
    def prefill_ratio(self) -> float | None:
        return self.prefilled_tokens / self.distinct_prefix_tokens if self.distinct_prefix_tokens else None


@dataclass
class SearchResult:
    candidates: list[Trajectory]
    scores: list[list[float]]
    selected: int | None  # index into candidates (None: no candidate had an answer)
    cost: SearchCost
    rounds: list[list[float]] = field(default_factory=list)  # beam: the kept prefixes' scores, per round


def accounted(strategy):
    """Run ``strategy`` with its own prefill ledger and put the ledger's counts in its cost record
    (the strategy returns a ``SearchResult``, or a tuple led by one)."""
    @functools.wraps(strategy)
    async def run(*args, **kwargs):
        with prefill.track(prefill.PrefillLedger()) as ledger:
            returned = await strategy(*args, **kwargs)
        cost = (returned[0] if isinstance(returned, tuple) else returned).cost
        cost.prompt_tokens, cost.prefilled_tokens = ledger.prompt_tokens, ledger.computed_tokens
        cost.distinct_prefix_tokens = ledger.distinct_tokens
        return returned

    return run


def _count(cost: SearchCost, traj: Trajectory, before: int) -> None:
    new = range(before, len(traj.ids))
    cost.model_tokens += sum(traj.loss_mask[i] for i in new)
    cost.tool_tokens += sum(1 - traj.loss_mask[i] for i in new)


def _finish(result_trajs, scores, rollout, settings, cost, started, rounds=None) -> SearchResult:
    from retool.grading import extract_answer_from_trajectory

    cands = [Candidate(extract_answer_from_trajectory(t, rollout.tokenizer, rollout.dialect), False, tuple(s))
             for t, s in zip(result_trajs, scores)]
    chosen = select(settings.selection, cands) if cands else None
    index = next((i for i, c in enumerate(cands) if c is chosen), None)
    cost.wall_s = time.monotonic() - started
    return SearchResult(result_trajs, scores, index, cost, rounds or [])


@accounted
async def best_of_n(problem: str, prompt_ids: list[int], rollout, pool, verifier, settings: SearchSettings,
                    seed: int | str = 0) -> SearchResult:
    started, cost = time.monotonic(), SearchCost()
    trajs = await asyncio.gather(*(rollout.run_one(prompt_ids, index=derive_seed("best-of-n", seed, j))
                                   for j in range(settings.n)))
    trajs = [t for t in trajs if not t.infra_failure]
    for t in trajs:
        _count(cost, t, 0)
        cost.cells += len(t.tool_calls)
    before = verifier.verifier_tokens
    scores = verifier.score(problem, trajs) if trajs else []
    cost.verifier_tokens = verifier.verifier_tokens - before
    return _finish(trajs, scores, rollout, settings, cost, started)


@dataclass
class _Node:
    traj: Trajectory
    session: object | None  # a live session holding this prefix's state, if one exists


async def _beam(problem: str, prompt_ids: list[int], rollout, pool, verifier, settings: SearchSettings,
                seed: int | str = 0) -> SearchResult:
    started, cost = time.monotonic(), SearchCost()
    width = settings.n // settings.m
    active = [_Node(Trajectory(list(prompt_ids)), None) for _ in range(width)]
    done: list[Trajectory] = []
    rounds: list[list[float]] = []
    try:
        for step in range(settings.max_steps):
            children = []
            for b, node in enumerate(active):
                for j in range(settings.m):
                    child = fork(node.traj)
                    session = node.session if j == 0 and node.session is not None else ReplaySession.of(pool, child)
                    children.append((_Node(child, session), derive_seed("beam", seed, step, b, j)))
            await asyncio.gather(*(_advance(rollout, node, index, cost) for node, index in children))
            alive = []
            for node, _ in children:
                if node.traj.finished:
                    if not node.traj.infra_failure:
                        done.append(node.traj)
                    await _release(node, cost)
                else:
                    alive.append(node)
            active = []
            if not alive or len(done) >= settings.n:
                for node in alive:
                    await _release(node, cost)
                break
            before = verifier.verifier_tokens
            scored = verifier.score(problem, [node.traj for node in alive])
            cost.verifier_tokens += verifier.verifier_tokens - before
            last = [row[-1] if row else 0.0 for row in scored]
            order = sorted(range(len(alive)), key=lambda i: -last[i])  # stable: ties keep expansion order
            active = [alive[i] for i in order[:width]]
            for i in order[width:]:
                await _release(alive[i], cost)
            rounds.append([last[i] for i in order[:width]])
        for node in active:  # out of rounds: the survivors are finished by plain sampling
            while not node.traj.finished:
                await _advance(rollout, node, derive_seed("beam-finish", seed, len(done)), cost)
            if not node.traj.infra_failure:
                done.append(node.traj)
    finally:
        for node in active:
            await _release(node, cost)
    done = done[: settings.n]
    before = verifier.verifier_tokens
    scores = verifier.score(problem, done) if done else []
    cost.verifier_tokens += verifier.verifier_tokens - before
    return _finish(done, scores, rollout, settings, cost, started, rounds)


beam = accounted(_beam)


@accounted
async def dvts(problem: str, prompt_ids: list[int], rollout, pool, verifier, settings: SearchSettings,
               seed: int | str = 0) -> SearchResult:
    """Diverse verifier tree search (search-and-learn): N/M independent subtrees, each greedy by
    the verifier (a beam of width 1 with M children per step), run concurrently; their leaves pooled."""
    started = time.monotonic()
    sub = SearchSettings(n=settings.m, m=settings.m, max_steps=settings.max_steps, selection=settings.selection)
    parts = await asyncio.gather(*(_beam(problem, prompt_ids, rollout, pool, verifier, sub, seed=f"{seed}/dvts{t}")
                                   for t in range(settings.n // settings.m)))
    cost = SearchCost()
    for part in parts:
        for name in ("model_tokens", "tool_tokens", "cells", "replayed_cells", "replays", "replay_mismatches",
                     "verifier_tokens"):
            setattr(cost, name, getattr(cost, name) + getattr(part.cost, name))
    trajs = [t for part in parts for t in part.candidates]
    scores = [s for part in parts for s in part.scores]
    return _finish(trajs, scores, rollout, settings, cost, started, [r for part in parts for r in part.rounds])


STRATEGIES = {"best_of_n": best_of_n, "beam": beam, "dvts": dvts}


async def _release(node: _Node, cost: SearchCost) -> None:
    """Give a branch's sandbox back (pruned, finished or done with)."""
    session, node.session = node.session, None
    if session is not None:
        account_replay(cost, session)
        await asyncio.to_thread(session.close)


def account_replay(cost: SearchCost, session) -> None:
    """Count a branch session's replay (a live inherited session has none; a fresh one, no cells)."""
    mismatch = getattr(session, "mismatch", None)
    if (getattr(session, "replayed", False) and session.cells) or mismatch is not None:
        cost.replays += 1
        cost.replayed_cells += len(session.cells) if mismatch is None else mismatch.cell + 1
        cost.replay_mismatches += mismatch is not None


async def _advance(rollout, node: _Node, index: int, cost: SearchCost) -> None:
    before, calls = len(node.traj.ids), len(node.traj.tool_calls)
    await rollout.step(node.traj, node.session, index=index)
    _count(cost, node.traj, before)
    cost.cells += len(node.traj.tool_calls) - calls
