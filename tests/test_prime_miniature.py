"""The miniature PRIME experiment's report: the issue's JSON keys, targets judged from the numbers (a
miss stays a miss), the paired difference, and the curves of both arms. The run is the experiment."""

from __future__ import annotations

import json

from retool.training.prime_miniature import write_report


def _run(path, accuracy, extra=None):
    path.mkdir(parents=True)
    lines = [{"step": s, "reward/mean": 2 * a - 1, "accuracy": a, "tokens/model_mean": 90.0 + s, **(extra or {})}
             for s, a in enumerate(accuracy, 1)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_the_report_has_the_issues_keys_and_judges_its_targets(tmp_path):
    root, reports = tmp_path / "runs", tmp_path / "reports"
    _run(root / "rl_tool", [0.5, 0.6, 0.7])
    _run(root / "rl_prime", [0.5, 0.55, 0.6], {"prm/loss": 0.69, "prm/pairwise_acc_before": 0.5,
                                              "prm/pairwise_acc_after": 0.6, "prime/process_outcome_corr": 0.1})
    ids = [f"p{i}" for i in range(10)]
    results = {"dapo": {"accuracy": 0.8, "per_problem": {i: float(n < 8) for n, i in enumerate(ids)}},
               "prime": {"accuracy": 0.7, "per_problem": {i: float(n < 7) for n, i in enumerate(ids)}}}
    pairwise = {"pairwise_accuracy": 0.65, "groups": 16, "groups_with_both": 5, "pairs": 15,
                "pairwise_accuracy_all_groups": 0.55, "sample_accuracy": 0.7, "problems": 16, "group_size": 4,
                "minutes": 1.0}
    write_report(root, reports, results, pairwise, {"rl_dapo": 9.0, "rl_prime": 14.0, "total_this_invocation": 23.0},
                 None)
    data = json.loads((reports / "prime_miniature.json").read_text())
    assert {"dapo", "prime", "pairwise_accuracy", "steps", "minutes"} <= set(data)
    assert data["dapo"] == 0.8 and data["prime"] == 0.7 and data["pairwise_accuracy"] == 0.65
    assert data["minutes"] == 23.0  # the stages, not the invocation's total counted twice
    assert data["met"] == {"non_inferiority": False, "pairwise_accuracy": True, "minutes": True}
    assert data["prime_minus_dapo"]["mean"] == -0.1 and data["prime_minus_dapo"]["ci95"][0] < -0.1 + 1e-9
    assert [x["step"] for x in data["prm_training"]] == [1, 2, 3]
    text = (reports / "prime_miniature.md").read_text()
    assert "**missed**" in text and "0.650 over 5 groups" in text
    for png in ("reward", "train_accuracy", "model_tokens"):
        assert (reports / "prime_miniature" / f"{png}.png").stat().st_size > 0
