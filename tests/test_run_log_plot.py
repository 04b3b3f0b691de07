"""RunLog and the training plots, on real files: metrics.jsonl, TensorBoard events, PNGs."""

from __future__ import annotations

import json
import logging
import math
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from retool.training.plot import NoMetricsError, compare_runs, plot_run, read_metrics
from retool.training.run_log import RunLog

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _tb_scalars(run_dir, key):
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(key)]


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5_000, (path, len(data))  # a drawn figure, not an empty canvas


def _fill(run_dir, steps=range(1, 6), **extra):
    with RunLog(run_dir, report_to=()) as log:
        for step in steps:
            log.scalars(step, {"reward/mean": step / 10, "accuracy": 0.1 * step, **extra})


def test_scalars_go_to_jsonl_and_tensorboard(tmp_path):
    run = tmp_path / "run"
    with RunLog(run, config={"learning_rate": 1e-6, "model": "m"}) as log:
        log.scalars(1, {"reward/mean": 0.5, "kl": None, "entropy": math.nan, "lr": 1e-6})
        log.scalars(2, {"reward/mean": 0.75, "tools/failure_rate": math.inf, "grad_norm": 3})
        log.samples(2, [{"problem": "p", "reward": 1.0}, {"problem": "q", "reward": -1.0}])
    lines = _lines(run / "metrics.jsonl")
    assert [line["step"] for line in lines] == [1, 2]
    assert {k: v for k, v in lines[0].items() if k != "time"} == {"step": 1, "reward/mean": 0.5, "lr": 1e-6}
    assert lines[1]["grad_norm"] == 3.0 and "tools/failure_rate" not in lines[1]
    assert all(isinstance(line["time"], float) for line in lines)
    assert _lines(run / "samples.jsonl") == [{"step": 2, "problem": "p", "reward": 1.0},
                                             {"step": 2, "problem": "q", "reward": -1.0}]
    assert json.loads((run / "config.json").read_text()) == {"learning_rate": 1e-6, "model": "m"}
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert _tb_scalars(run, "reward/mean") == [(1, 0.5), (2, 0.75)]
    assert _tb_scalars(run, "grad_norm") == [(2, 3.0)]


def test_lines_are_on_disk_before_close(tmp_path):
    log = RunLog(tmp_path, report_to=["none"])
    log.scalars(7, {"sft/loss": 1.25})
    assert _lines(tmp_path / "metrics.jsonl")[0]["sft/loss"] == 1.25  # flushed: a crash keeps it
    log.close()
    log.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        log.scalars(8, {"sft/loss": 1.0})


def test_bad_values_and_names_are_clear_errors(tmp_path):
    with RunLog(tmp_path, report_to=()) as log:
        with pytest.raises(TypeError, match="'accuracy'"):
            log.scalars(1, {"accuracy": "high"})
        with pytest.raises(ValueError, match="reserved"):
            log.scalars(1, {"step": 3.0})
        with pytest.raises(ValueError, match="step"):
            log.samples(1, [{"step": 4}])
    with pytest.raises(ValueError, match="unknown report_to"):
        RunLog(tmp_path, report_to=["tensorbord"])


def test_a_line_cut_by_a_crash_does_not_swallow_the_next(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "accuracy": 0.5}\n{"step": 2, "acc')
    with RunLog(tmp_path, report_to=()) as log:
        log.scalars(2, {"accuracy": 0.75})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["accuracy"] == 0.75
    assert read_metrics(tmp_path).points("accuracy") == ([1, 2], [0.5, 0.75])


def test_wandb_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(RuntimeError, match=r"pip install retool\[wandb\]"):
        RunLog(tmp_path / "run", report_to=["tensorboard", "wandb"])
    assert not (tmp_path / "run").exists()  # nothing half-created


def test_truncate_after_drops_later_lines_and_tensorboard_tail(tmp_path):
    run = tmp_path / "run"
    with RunLog(run) as log:
        for step in range(1, 6):
            log.scalars(step, {"reward/mean": float(step), "eval/accuracy": step / 10 if step % 2 == 0 else None})
            log.samples(step, [{"text": f"s{step}"}])
    (run / "metrics.jsonl").open("a").write('{"step": 6, "rew')  # a line cut short by a crash

    with RunLog(run) as log:  # resumed from the checkpoint at step 3
        log.truncate_after(3)
        assert [line["step"] for line in _lines(run / "metrics.jsonl")] == [1, 2, 3]
        assert [line["text"] for line in _lines(run / "samples.jsonl")] == ["s1", "s2", "s3"]
        log.scalars(4, {"reward/mean": 40.0})
        log.scalars(6, {"eval/accuracy": 0.9})
    assert [(line["step"], line.get("reward/mean")) for line in _lines(run / "metrics.jsonl")] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (6, None)]
    assert not list(run.glob(".*.tmp"))
    assert _tb_scalars(run, "reward/mean") == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    # the abandoned eval at step 4 is gone although no later eval came before step 6 (purge_step)
    assert _tb_scalars(run, "eval/accuracy") == [(2, pytest.approx(0.2)), (6, pytest.approx(0.9))]


def test_plot_run_writes_one_png_per_group_present(tmp_path, caplog):
    run = tmp_path / "run"
    with RunLog(run, report_to=()) as log:
        for step in range(1, 21):
            log.scalars(step, {
                "reward/mean": math.sin(step), "accuracy": step / 20, "entropy": 1 / step, "kl": 0.0,
                "tools/calls_per_answer": 2.0, "tools/failure_rate": 0.1, "truncation_rate": 0.05,
                "tokens/model_mean": 100.0 + step, "time/rollout_s": 3.0, "loss/value": 0.5,
                "custom/thing": step * 2.0,
            })
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write("not json at all\n")
        handle.write('{"no_step": 1}\n')
        handle.write('{"step": 21, "reward/mean": "oops", "accuracy": 1.0}\n')  # bad value: ignored
    with caplog.at_level(logging.WARNING):
        paths = plot_run(run)
    assert "skipped 2 malformed line(s)" in caplog.text
    names = sorted(p.name for p in paths)
    assert names == ["critic.png", "other.png", "policy.png", "reward.png", "time.png", "tokens.png", "tools.png"]
    assert all(p.parent == run / "plots" for p in paths)
    for path in paths:
        _assert_png(path)
    assert read_metrics(run).points("accuracy")[0][-1] == 21

    out = tmp_path / "elsewhere"
    assert {p.name for p in plot_run(run, out)} == set(names)
    assert all((out / n).is_file() for n in names)


def test_plot_run_later_duplicate_step_wins(tmp_path):
    _fill(tmp_path, steps=[1, 2, 3])
    _fill(tmp_path, steps=[2])  # a resume that was not truncated
    steps, values = read_metrics(tmp_path).points("reward/mean")
    assert steps == [1, 2, 3] and values == [0.1, 0.2, 0.3]


def test_missing_or_empty_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(NoMetricsError, match="metrics.jsonl"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("garbage\n")
    with pytest.raises(NoMetricsError, match="1 malformed"):
        plot_run(tmp_path)


def test_compare_runs_overlays_one_metric(tmp_path, caplog):
    _fill(tmp_path / "grpo")
    _fill(tmp_path / "ppo", steps=range(1, 9))
    with RunLog(tmp_path / "sft", report_to=()) as log:
        log.scalars(1, {"sft/loss": 2.0})
    with caplog.at_level(logging.WARNING):
        out = compare_runs({"GRPO": tmp_path / "grpo", "PPO": tmp_path / "ppo", "SFT": tmp_path / "sft"},
                           "accuracy", tmp_path / "report" / "accuracy.png")
    assert out == tmp_path / "report" / "accuracy.png"
    _assert_png(out)
    assert "'SFT'" in caplog.text
    with pytest.raises(ValueError, match="logged 'kl'"):
        compare_runs({"GRPO": tmp_path / "grpo"}, "kl", tmp_path / "kl.png")
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        compare_runs({"none": tmp_path / "nowhere"}, "accuracy", tmp_path / "x.png")
