"""The search experiment's report: the issue's JSON keys, the targets judged from the numbers (a
miss reported as a miss), and both figures written. The run itself is the experiment, not a test."""

from __future__ import annotations

import json

from retool.search.search_experiment import write_report


def point(n, accuracy, tokens, ratio):
    return {"n": n, "label": f"N={n}", "problems": 3, "accuracy": accuracy, "ci": [0.0, 1.0], "model_tokens": tokens,
            "all_tokens": 3 * tokens, "cells": 1.0, "replayed_cells": 0.5, "wall_s": 2.0, "pass@candidates": 1.0,
            "prefill_ratio": ratio, "replays": 2, "replay_mismatches": 1}


def forced(cap, present, over):
    return {"cap": cap, "samples": 6, "problems": 6, "accuracy": 0.5, "ci": [0.2, 0.8], "model_tokens": 50,
            "all_tokens": 50, "answer_present_rate": present, "forced_answer_share": 0.5, "extended_share": 0.0,
            "mean_thinking_tokens": 40.0, "max_thinking_over_cap": over, "cells": 0, "replayed_cells": 0, "wall_s": 0}


def test_the_report_has_the_issues_keys_and_judges_its_targets(tmp_path):
    searches = {"best_of_n": {"points": [point(2, 0.3, 100, 0.5), point(4, 0.4, 200, 0.4)]},
                "beam": {"points": [point(2, 0.3, 120, 0.9), point(4, 0.5, 260, 1.25)]},
                "dvts": {"points": [point(4, 0.4, 240, 0.7)]}}
    forcing = {"cap32": forced(32, 0.9, 0), "cap64": forced(64, 1.0, 0), "none": forced(None, 1.0, None)}
    write_report(tmp_path / "search", searches, forcing, {"search": 1.0}, 3, "model")
    data = json.loads((tmp_path / "search.json").read_text())
    assert set(data["strategies"]) == {"best_of_n", "beam", "dvts"}
    assert data["prefill_ratio_beam"] == 1.25  # the N = 4 beam's
    bf = data["budget_forcing"]
    assert set(bf["caps"]) == {"cap32", "cap64", "none"}
    assert bf["answer_present_rate"] == 0.9 and bf["max_thinking_over_cap"] == 0  # the worst capped setting
    met = {t["target"].split(" ")[0]: t["met"] for t in data["targets"]}
    assert met == {"beam": False, "every": True, "answer": False}  # misses stay misses
    assert data["replay"] == {"replays": 10, "mismatches": 5, "mismatch_rate": 0.5}
    assert (tmp_path / "search" / "strategies.png").exists() and (tmp_path / "search" / "budget_forcing.png").exists()
    assert "| beam | 4 | 3 | 0.500 |" in (tmp_path / "search.md").read_text()


def test_a_partial_report_says_what_was_not_measured(tmp_path):
    write_report(tmp_path / "search", {"best_of_n": {"points": [point(2, 0.3, 100, 0.5)]}}, {}, {}, 3, "model")
    data = json.loads((tmp_path / "search.json").read_text())
    assert data["prefill_ratio_beam"] is None and [t["met"] for t in data["targets"]] == [None, None, None]
    assert "not measured" in (tmp_path / "search.md").read_text()
