"""The peer benchmark: retool's rollout and TRL's own ``GRPOTrainer(tools=[python])`` generation on
the same model, prompts, budgets and (real, jailed Jupyter) sandbox.

The model is a tiny one, trained in-process (a few seconds) on one conversation of the chat
dialect: a python call, the sandbox's reply, the answer. Both loops then write that conversation,
so the counts of the two sides can be checked exactly: a side that counted tool-reply tokens as
the model's, missed a call, or fed the model another prompt would not match."""

from __future__ import annotations

import pytest

from retool.bench.peer import PeerSide, bench_messages, compare, peer_config, peer_report, run_peer_bench
from retool.bench.rollout import PROBLEMS
from retool.protocol.chat import call_item
from tiny import tiny_chat_tokenizer, tiny_model

CODE = "print(pow(2, 100, 97))"  # the first benchmark problem's computation
PRINTED = str(pow(2, 100, 97))  # what the sandbox replies


def conversation(config, tokenizer):
    """The ids of the prompt, the model's first turn (a call), the tool reply and the answer turn."""
    fmt = config.chat_format(tokenizer)
    prompt = fmt.prompt_ids(bench_messages(PROBLEMS[:1], config)[0])
    call = fmt.encode(fmt.model_turn({"role": "assistant", "content": "I will compute it.",
                                      "tool_calls": [call_item("python", {"code": CODE})]}))
    reply = fmt.encode(fmt.tool_reply([PRINTED]))
    answer = fmt.encode(fmt.model_turn({"role": "assistant", "content": f"The remainder is \\boxed{{{PRINTED}}}."}))
    return prompt, call, reply, answer


def memorizing_model(prompt, call, reply, answer):
    """A tiny model that has learned to write ``call`` then ``answer`` after ``prompt``."""
    import torch

    torch.set_num_threads(1)
    model, _ = tiny_model(tokenizer=tiny_chat_tokenizer("qwen2_5"))
    ids = torch.tensor([prompt + call + reply + answer])
    labels = torch.tensor([[-100] * len(prompt) + call + [-100] * len(reply) + answer])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(400):
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 1e-3:
            break
    assert loss.item() < 1e-2, f"the tiny model did not learn its conversation (loss {loss.item():.4f})"
    return model.eval()


@pytest.fixture(scope="module")
def bench():
    tokenizer = tiny_chat_tokenizer("qwen2_5")
    config = peer_config(max_total_tokens=96, max_tool_calls=2)
    parts = conversation(config, tokenizer)
    report = run_peer_bench(problems=1, samples=2, config=config, loaded=(memorizing_model(*parts), tokenizer))
    return report, parts


def test_both_sides_see_the_same_prompt_and_do_the_same_work(bench):
    report, (_, call, reply, answer) = bench
    assert report.same_prompts and report.torch_threads >= 1
    for side in (report.retool, report.trl):
        assert side.trajectories == 2
        assert side.tool_calls == 2 and side.cells_run == 2  # one call a sample, run in the sandbox
    # the model's tokens: its two turns (end-of-turn tokens included), never the tool reply
    assert report.trl.model_tokens == report.retool.model_tokens == 2 * (len(call) + len(answer))
    assert report.trl.tool_tokens == 2 * len(reply)
    assert report.retool.tool_tokens == 2 * (len(reply) + 1)  # retool also closes the transcript ("\n")
    # retool's engine keeps the cache: the continuation prefills the reply (and the token before it);
    # TRL re-prefills each sample's whole history for its second turn
    assert report.retool.generate_calls == 4 and report.trl.generate_calls == 2
    assert report.trl.prefill_tokens > report.retool.prefill_tokens


def test_the_ratios_are_what_the_sides_measured(bench):
    report, _ = bench
    for side in (report.retool, report.trl):
        assert side.wall_s > 0 and side.tokens_per_s == pytest.approx(side.model_tokens / side.wall_s)
    assert report.speedup_vs_trl == pytest.approx(report.retool.tokens_per_s / report.trl.tokens_per_s)
    assert report.comparable["model_tokens_ratio"] == 1.0 and report.comparable["tool_calls_ratio"] == 1.0
    assert report.comparable["within_tolerance"] is True
    assert report.chat_template == "qwen2_5.jinja" and report.notes


def side(tokens: int, calls: int) -> PeerSide:
    return PeerSide(4, tokens, 0, calls, calls, 1, 100, 2.0, tokens / 2.0)


def test_work_that_is_not_comparable_is_reported_as_such():
    assert compare(side(100, 2), side(250, 2))["within_tolerance"] is False  # tokens 2.5x apart
    assert compare(side(100, 2), side(100, 0))["within_tolerance"] is False  # no call on one side
    assert compare(side(100, 2), side(180, 1))["within_tolerance"] is True
    report = peer_report(side(100, 0), side(50, 0), same_prompts=False, config=peer_config(), problems=1, samples=4,
                         threads=1)
    assert report.speedup_vs_trl == pytest.approx(2.0)
    assert any("no tool" in n for n in report.notes) and any("prompt ids differ" in n for n in report.notes)
