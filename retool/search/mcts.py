"""Monte-Carlo tree search over tool-integrated steps, with the verifier's score as the leaf value.

A node is a step prefix (``Trajectory``). Each expansion runs in a ``ReplaySession`` of its
parent's cells, given back right after the step: the tree's frontier is wider than a sandbox pool,
so no node holds a session between iterations (replays cost cells, counted apart; a child that
writes no code replays nothing). One iteration:

1. **select** from the root by UCT (``c · sqrt(ln N_parent / n)``) or PUCT (uniform prior: ``c ·
   sqrt(N_parent) / (1 + n)``) over the mean value, down to a node with room for another child;
2. **expand** it by one ``Rollout.step`` into a new child (its own seed);
3. **evaluate** the child: its verifier score of the last step (a finished child: that score too);
4. **backup** the value along the path (visits + 1, value sum + v).

Children whose cells failed ``prune_after`` times in a row are not expanded further. The tree is
written out (``tree_json``) for inspection. ``select_child`` and ``backup`` are pure, tested on toy
trees. Not here: best-of-N, beam, DVTS (``strategies.py``).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

from retool.search.replay import ReplaySession
from retool.search.steps import fork
from retool.search.strategies import SearchCost, SearchResult, _count, _finish, account_replay, accounted
from retool.seeds import derive_seed
from retool.trajectory import Trajectory


@dataclass
class TreeNode:
    traj: Trajectory
    parent: "TreeNode | None" = None
    children: list["TreeNode"] = field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0
    score: float | None = None  # the verifier's score of this node's last step
    failed_run: int = 0  # consecutive steps whose cells failed, ending here

    @property
    def value(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0


@dataclass(frozen=True)
class MCTSSettings:
    iterations: int = 16
    max_children: int = 2  # children per node
    c: float = 1.0  # exploration constant
    rule: str = "uct"  # uct | puct
    prune_after: int = 2  # consecutive failed steps after which a branch is not expanded
    selection: str = "prm_last_max"

    def __post_init__(self) -> None:
        if self.rule not in ("uct", "puct") or self.iterations < 1 or self.max_children < 1:
            raise ValueError(f"mcts needs rule uct|puct, iterations >= 1, max_children >= 1: {self}")


def exploration(parent_visits: int, visits: int, c: float, rule: str) -> float:
    if rule == "puct":
        return c * math.sqrt(parent_visits) / (1 + visits)
    if visits == 0:
        return math.inf
    return c * math.sqrt(math.log(max(parent_visits, 1)) / visits)


def select_child(node: TreeNode, c: float, rule: str) -> TreeNode:
    """The child with the highest mean value plus exploration bonus (the first of equals)."""
    return max(node.children, key=lambda ch: ch.value + exploration(node.visits, ch.visits, c, rule))


def backup(node: TreeNode | None, value: float) -> None:
    while node is not None:
        node.visits += 1
        node.value_sum += value
        node = node.parent


def expandable(node: TreeNode, settings: MCTSSettings) -> bool:
    return not node.traj.finished and node.failed_run < settings.prune_after and \
        len(node.children) < settings.max_children


def leaf_to_expand(root: TreeNode, settings: MCTSSettings) -> TreeNode | None:
    """Down by the selection rule to the first node with room for a child (None: the tree is done)."""
    node = root
    while not expandable(node, settings):
        live = [ch for ch in node.children if _alive(ch, settings)]
        if not live:
            return None
        node = max(live, key=lambda ch: ch.value + exploration(node.visits, ch.visits, settings.c, settings.rule))
    return node


def _alive(node: TreeNode, settings: MCTSSettings) -> bool:
    return expandable(node, settings) or any(_alive(ch, settings) for ch in node.children)


@accounted
async def mcts(problem: str, prompt_ids: list[int], rollout, pool, verifier, settings: MCTSSettings,
               seed: int | str = 0) -> tuple[SearchResult, dict]:
    """The search; returns the result (finished leaves as candidates) and the tree as JSON."""
    started, cost = time.monotonic(), SearchCost()
    root = TreeNode(Trajectory(list(prompt_ids)))
    nodes = [root]
    for it in range(settings.iterations):
        parent = leaf_to_expand(root, settings)
        if parent is None:
            break
        child_traj = fork(parent.traj)
        child = TreeNode(child_traj, parent)
        parent.children.append(child)
        nodes.append(child)
        before, calls = len(child_traj.ids), len(child_traj.tool_calls)
        session = ReplaySession.of(pool, child_traj)
        try:
            await rollout.step(child_traj, session, index=derive_seed("mcts", seed, it))
        finally:
            account_replay(cost, session)
            await asyncio.to_thread(session.close)
        _count(cost, child_traj, before)
        new_calls = child_traj.tool_calls[calls:]
        cost.cells += len(new_calls)
        failed = any(not c.result.ok for c in new_calls)
        child.failed_run = parent.failed_run + 1 if failed else 0
        if child_traj.infra_failure:
            child.score = 0.0
        else:
            b = verifier.verifier_tokens
            (scores,) = verifier.score(problem, [child_traj])
            cost.verifier_tokens += verifier.verifier_tokens - b
            child.score = scores[-1] if scores else 0.0
        backup(child, child.score)
    leaves = [n for n in nodes if n.traj.finished and not n.traj.infra_failure]
    scores = verifier.score(problem, [n.traj for n in leaves]) if leaves else []
    result = _finish([n.traj for n in leaves], scores, rollout, _Sel(settings.selection), cost, started)
    return result, tree_json(root)


@dataclass(frozen=True)
class _Sel:
    selection: str


def tree_json(node: TreeNode) -> dict:
    return {"visits": node.visits, "value": node.value, "score": node.score, "tokens": len(node.traj.ids),
            "finished": node.traj.finish_reason, "children": [tree_json(ch) for ch in node.children]}
