"""Verifiers on real trajectories (a scripted model, a real Jupyter sandbox): the execution heuristic's
scores by hand, a PRM's prompt-cached scores equal to its plain ones, and an external text PRM that
maps its scores back by order and refuses when the step counts disagree."""

from __future__ import annotations

import copy

import pytest
import torch

from retool.engines.base import SamplingParams
from retool.prm.model import build_prm
from retool.rollout import Rollout, RolloutConfig
from retool.sandbox import SandboxPool
from retool.search.steps import steps
from retool.search.verifiers import ExecutionHeuristic, PRMVerifier, StepCountMismatch, TextPRMAdapter
from scripted import EOS, ScriptedEngine
from tiny import tiny_model, tiny_tokenizer


def cell(code: str) -> str:
    return f"Compute.\n<code>\n```python\n{code}\n```\n</code>"


def answer(value) -> str:
    return f"So\n<answer>\n\\boxed{{{value}}}\n</answer>"


@pytest.fixture(scope="module")
def trajs():
    scripts = {"supported": [cell("x = 6 * 7"), cell("print(x + 1)"), answer(43)],
               "unsupported": [cell("print(42)"), answer(43)],
               "failed": [cell("1 / 0"), cell("print(43)"), answer(43)],
               "no_answer": [cell("print(43)"), "I am not sure." + EOS],
               "text_only": [answer(43)]}
    out = {}
    with SandboxPool("jupyter", size=1) as pool:
        for name, turns in scripts.items():
            engine = ScriptedEngine(turns)
            rollout = Rollout(engine, pool, RolloutConfig(sampling=SamplingParams(temperature=0)))
            out[name] = rollout.run([engine.tokenizer.encode("What is 6*7+1?")])[0]
    return out


def test_the_execution_heuristic_by_hand(trajs):
    tok = tiny_tokenizer()
    exec_ = ExecutionHeuristic(tok, Rollout(ScriptedEngine(), None).dialect)
    assert exec_.score_one(trajs["supported"]) == [1.0, 1.0, 1.0]  # cells ran, the answer is the last output
    assert exec_.score_one(trajs["unsupported"]) == [1.0, 0.5]  # the answer is not what the cell printed
    assert exec_.score_one(trajs["failed"]) == [0.0, 1.0, 0.5]  # one of two cells failed
    assert exec_.score_one(trajs["no_answer"]) == [1.0, 0.0]
    assert exec_.score_one(trajs["text_only"]) == [0.5]
    assert [len(s) for s in exec_.score("", list(trajs.values()))] == [len(steps(t)) for t in trajs.values()]


def test_a_prm_scores_every_step_and_the_prompt_cache_changes_nothing(trajs):
    model, tok = tiny_model()
    prm = build_prm(model, tok, "process")
    torch.manual_seed(1)
    torch.nn.init.normal_(prm.model.score.weight, std=0.5)
    group = [trajs["supported"], trajs["unsupported"], trajs["failed"]]
    plain = PRMVerifier(prm, batch_size=2)
    plain_scores = [plain.score("", [t])[0] for t in group]  # one at a time: no cache
    cached = PRMVerifier(prm)
    cached_scores = cached.score("", group)
    assert [len(s) for s in cached_scores] == [len(steps(t)) for t in group]
    for a, b in zip(plain_scores, cached_scores):
        assert a == pytest.approx(b, abs=1e-5)
    assert all(0 < s < 1 for row in cached_scores for s in row)
    prompt = len(group[0].prompt_ids)
    assert cached.verifier_tokens == prompt + sum(len(t.ids) for t in group)  # the prompt once
    assert plain.verifier_tokens == sum(prompt + len(t.ids) for t in group)


@pytest.fixture(scope="module")
def text_prm():
    from transformers import LlamaConfig, LlamaForTokenClassification

    tok = tiny_tokenizer()
    theirs = copy.deepcopy(tiny_tokenizer())  # the verifier's own tokenizer (tiny_tokenizer() is shared)
    theirs.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(theirs), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=2, pad_token_id=0)
    return TextPRMAdapter(LlamaForTokenClassification(config).eval(), theirs, tok), tok, theirs


def test_an_external_text_prm_maps_its_scores_back_by_order(trajs, text_prm):
    adapter, tok, theirs = text_prm
    traj = trajs["supported"]
    (scores,) = adapter.score("What is 6*7+1?", [traj])
    assert len(scores) == len(steps(traj)) == 3 and all(0 < s < 1 for s in scores)
    ids = adapter.conversation_ids("What is 6*7+1?", traj)
    text = theirs.decode(ids)
    assert text.count("<extra_0>") == 3 and "print(x + 1)" in text and "43" in text


def test_an_external_prm_refuses_when_the_step_counts_disagree(text_prm):
    adapter, tok, _ = text_prm
    from retool.trajectory import Trajectory

    traj = Trajectory(tok.encode("Q"), tok.encode("One <extra_0> two", add_special_tokens=False))
    traj.loss_mask = [1] * len(traj.ids)
    traj.logprobs = [0.0] * len(traj.ids)
    with pytest.raises(StepCountMismatch, match="refusing"):
        adapter.score("Q", [traj])


def test_an_external_prm_is_chosen_by_path_on_the_command_line_spec(trajs, text_prm, tmp_path):
    from retool.search.verifiers import build_verifier

    adapter, tok, theirs = text_prm
    adapter.model.save_pretrained(tmp_path / "ext")
    theirs.save_pretrained(tmp_path / "ext")
    loaded = build_verifier(f"text-prm:{tmp_path / 'ext'}", tok, Rollout(ScriptedEngine(), None).dialect)
    assert isinstance(loaded, TextPRMAdapter) and loaded.name == "text-prm:ext"
    assert loaded.score("What is 6*7+1?", [trajs["supported"]])[0] == pytest.approx(
        adapter.score("What is 6*7+1?", [trajs["supported"]])[0])
