"""MCTS: backup and selection on toy trees by hand, then a search with the scripted policy and
verifier of the strategy tests over a real Jupyter sandbox."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from retool.search.mcts import MCTSSettings, TreeNode, backup, exploration, leaf_to_expand, mcts, select_child
from retool.trajectory import Trajectory
from test_search_strategies import PROBLEM, setup


def node(parent=None, visits=0, value_sum=0.0, finished=False):
    traj = Trajectory([1])
    if finished:
        traj.finish("answer")
    n = TreeNode(traj, parent, visits=visits, value_sum=value_sum)
    if parent is not None:
        parent.children.append(n)
    return n


def test_backup_adds_the_value_along_the_path_to_the_root():
    root = node()
    a = node(root)
    b = node(a)
    node(root)
    backup(b, 0.8)
    backup(a, 0.2)
    assert (root.visits, root.value_sum) == (2, pytest.approx(1.0))
    assert (a.visits, a.value) == (2, pytest.approx(0.5))
    assert (b.visits, b.value) == (1, pytest.approx(0.8))
    assert root.children[1].visits == 0


def test_uct_and_puct_selection_by_hand():
    root = node(visits=10)
    a, b, c = node(root, 6, 3.0), node(root, 3, 2.1), node(root, 0)
    assert select_child(root, 1.0, "uct") is c  # an unvisited child first
    root.children.remove(c)
    # uct: a 0.5 + sqrt(ln 10 / 6) = 1.119, b 0.7 + sqrt(ln 10 / 3) = 1.576
    assert exploration(10, 6, 1.0, "uct") == pytest.approx(math.sqrt(math.log(10) / 6))
    assert select_child(root, 1.0, "uct") is b
    # puct with a uniform prior: a 0.5 + sqrt(10)/7 = 0.952, b 0.7 + sqrt(10)/4 = 1.491; c = 0.1 favours value
    assert exploration(10, 3, 1.0, "puct") == pytest.approx(math.sqrt(10) / 4)
    assert select_child(root, 0.1, "puct") is b
    a.value_sum = 5.4  # a: 0.9
    assert select_child(root, 0.1, "puct") is a


def test_the_descent_stops_at_the_first_node_with_room_and_skips_finished_branches():
    settings = MCTSSettings(max_children=2)
    root = node(visits=4)
    done = node(root, 2, 1.8, finished=True)  # the best value, but finished: nothing to expand below
    mid = node(root, 2, 0.4)
    assert leaf_to_expand(root, settings) is mid
    node(mid, 1, 0.2)
    node(mid, 1, 0.2, finished=True)
    assert leaf_to_expand(root, settings) is mid.children[0]
    assert done.children == []


def test_mcts_searches_with_the_verifier_and_writes_the_tree(tmp_path):
    from retool.sandbox import SandboxPool

    with SandboxPool("jupyter", size=2) as pool:
        engine, rollout, verifier, prompt = setup(pool)
        result, tree = asyncio.run(mcts(PROBLEM, prompt, rollout, pool, verifier, MCTSSettings(iterations=8)))
    assert tree["visits"] == sum(ch["visits"] for ch in tree["children"])  # every iteration backed up once
    assert 1 <= len(tree["children"]) <= 2 and tree["visits"] <= 8
    assert result.candidates and all(t.finished for t in result.candidates)
    assert result.cost.cells >= 2 and result.selected is not None
    json.dumps(tree)  # serialisable for inspection
