"""Trajectory invariants and collation, with hand-built values."""

import pytest
import torch

from retool.sandbox.base import ExecResult, ExecStatus
from retool.trajectory import Trajectory, TrajectoryError, collate


def built() -> Trajectory:
    t = Trajectory(prompt_ids=[1, 2, 3])
    t.append_model([10, 11], [-0.1, -0.2])
    span = t.append_tool([20, 21, 22])
    t.record_tool_call("print(1)", ExecResult(ExecStatus.OK, "1\n"), 2, span)
    t.append_model([12], [-0.3])
    t.finish("answer")
    return t


def test_the_mask_is_written_by_the_two_appenders():
    t = built()
    assert t.ids == [10, 11, 20, 21, 22, 12]
    assert t.loss_mask == [1, 1, 0, 0, 0, 1]
    assert t.logprobs == [-0.1, -0.2, 0.0, 0.0, 0.0, -0.3]
    assert t.input_ids == [1, 2, 3, 10, 11, 20, 21, 22, 12]
    assert t.model_ids() == [10, 11, 12] and t.num_tool_tokens == 3
    assert t.segments() == [(1, [10, 11]), (0, [20, 21, 22]), (1, [12])]
    assert t.tool_calls[0].output_span == (2, 5)


def test_invariants_fail_loudly():
    t = Trajectory([1])
    with pytest.raises(TrajectoryError):
        t.append_model([1, 2], [-0.1])
    with pytest.raises(TrajectoryError):
        t.append_model([1], [0.5])  # a probability above 1
    with pytest.raises(TrajectoryError):
        t.append_model([-1])
    t.append_model([5])
    with pytest.raises(TrajectoryError):
        t.record_tool_call("x", ExecResult(ExecStatus.OK), 1, (0, 1))  # a model token is not tool output
    t.finish("eos")
    with pytest.raises(TrajectoryError):
        t.append_tool([1])
    with pytest.raises(TrajectoryError):
        t.finish("answer")


def test_round_trip_through_dicts():
    t = built()
    again = Trajectory.from_dict(t.to_dict())
    assert again == t


def test_collate_pads_right_and_keeps_loss_and_attention_separate():
    a = built()
    b = Trajectory([7])
    b.append_model([8], [-1.0])
    batch = collate([a, b], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 10, 11, 20, 21, 22, 12], [7, 8, 0, 0, 0, 0, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1] * 9, [1, 1] + [0] * 7]
    assert batch.loss_mask.tolist() == [[0, 0, 0, 1, 1, 0, 0, 0, 1], [0, 1] + [0] * 7]
    assert batch.logprobs[0, 3:5].tolist() == pytest.approx([-0.1, -0.2])
    assert batch.prompt_lengths.tolist() == [3, 1]
    assert batch.loss_mask.dtype == torch.float32
