"""Cold-start data: each verification stage rejects what it should and keeps what it should, synth
is deterministic, and the rewrite path runs end to end against a live OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import json
import re

import datasets
from pathlib import Path

import pytest
from fastapi import FastAPI

from retool.coldstart.pipeline import ChatRewriter, RewriteConfig, SynthConfig, run_rewrite, run_synth
from retool.coldstart.synth import FAMILIES, generate
from retool.coldstart.verify import parse_blocks, verify_trace
from retool.protocol import FENCED, RETOOL
from retool.sandbox import create_session
from retool.apps.local_server import local_server


def block(code: str, claimed: str | None = None) -> str:
    out = f"<code>\n```python\n{code}\n```\n</code>"
    return out + (f"\n<interpreter>\n{claimed}\n</interpreter>\n" if claimed is not None else "\n")


ANSWER = "<answer>\n\\boxed{42}\n</answer>"


@pytest.fixture(scope="module")
def session():
    with create_session("jupyter") as s:
        yield s


def test_a_good_trace_is_kept_and_its_outputs_are_the_real_ones(session):
    text = "Compute.\n" + block("x = 6 * 7\nprint(x)", claimed="42") + "Then check.\n" + block("print(x - 42)") + ANSWER
    verdict = verify_trace(text, "42", RETOOL, session)
    assert verdict.ok, verdict.reason
    assert verdict.outputs == ["42", "0"]
    assert "</code>\n<interpreter>\n0\n</interpreter>\n" in verdict.text  # the missing span is inserted, rollout style
    assert verdict.answer == "42"


@pytest.mark.parametrize("text, reason", [
    ("Open.\n<code>\n```python\nprint(1)\n```\n" + ANSWER, "inside a code block"),
    ("Text.\n<interpreter>\n1\n</interpreter>\n" + ANSWER, "does not follow a code block"),
    ("Text.\n" + block("print(1)", "1") + "<answer>\n\\boxed{1}\n", "unclosed"),
    ("Text.\n" + block("print(1)", "1") + "no answer tags \\boxed{1}", "no <answer>"),
    ("Text.\n</code>\n" + ANSWER, "unexpected </code>"),
    ("Text.\n" + block("def f(:\n    pass") + ANSWER, "does not parse"),
])
def test_format_stage_rejects_malformed_traces(session, text, reason):
    verdict = verify_trace(text, "42", RETOOL, session)
    assert not verdict.ok and verdict.stage == "format" and reason in verdict.reason


def test_a_trace_without_code_is_rejected_unless_text_only_is_allowed(session):
    text = "6 times 7 is 42.\n" + ANSWER
    assert verify_trace(text, "42", RETOOL, session).stage == "format"
    assert verify_trace(text, "42", RETOOL, session, require_code=False).ok


def test_execution_stage_rejects_wrong_claimed_output(session):
    text = "Compute.\n" + block("print(6 * 7)", claimed="43") + "So 43 minus one.\n" + ANSWER
    verdict = verify_trace(text, "42", RETOOL, session)
    assert verdict.stage == "execution" and "claims '43' but prints '42'" in verdict.reason


def test_execution_stage_rejects_an_error_the_text_relies_on(session):
    text = "Compute.\n" + block("print(1 / 0)") + "So the value is 42.\n" + ANSWER
    verdict = verify_trace(text, "42", RETOOL, session)
    assert verdict.stage == "execution" and "ZeroDivisionError" in verdict.reason


def test_an_error_the_trace_itself_reports_is_kept(session):
    text = ("Check that it fails.\n" + block("int('x')", claimed="ValueError: invalid literal for int() with base 10: 'x'")
            + "As expected it fails; the answer is 42.\n" + ANSWER)
    assert verify_trace(text, "42", RETOOL, session).ok


def test_answer_stage_rejects_a_wrong_answer(session):
    text = "Compute.\n" + block("print(6 * 7)", "42") + "<answer>\n\\boxed{41}\n</answer>"
    verdict = verify_trace(text, "42", RETOOL, session)
    assert verdict.stage == "answer" and "41" in verdict.reason


def test_parse_blocks_finds_code_and_claims():
    blocks = parse_blocks("a\n" + block("print(1)", "1") + "b\n" + block("print(2)") + ANSWER, RETOOL)
    assert [(b.code, b.claimed) for b in blocks] == [("print(1)", "1"), ("print(2)", None)]


FENCED_TRACE = ("Compute.\n```python\nx = 6 * 7\nprint(x)\n```\n```output\n42\n```\n"
                "Then check.\n```python\nprint(x - 42)\n```\n```output\n0\n```\nSo \\boxed{42}")


def test_a_fenced_trace_is_verified_by_the_same_stages(session):
    verdict = verify_trace(FENCED_TRACE, "42", FENCED, session)
    assert verdict.ok, verdict.reason
    assert verdict.outputs == ["42", "0"] and verdict.answer == "42" and verdict.text == FENCED_TRACE
    lying = verify_trace(FENCED_TRACE.replace("```output\n42", "```output\n41"), "42", FENCED, session)
    assert not lying.ok and lying.stage == "execution"
    unrun = verify_trace("Look:\n```python\nprint(1)\n```\nSo \\boxed{42}", "42", FENCED, session)
    assert not unrun.ok and unrun.stage == "format" and "without an output" in unrun.reason
    assert verify_trace(FENCED_TRACE, "41", FENCED, session).stage == "answer"


def test_a_trace_converts_between_dialects_and_back_unchanged(session):
    from retool.coldstart.convert import convert_trace

    retool = "Compute.\n" + block("x = 6 * 7\nprint(x)", claimed="42") + "So it is 42.\n" + ANSWER
    fenced = convert_trace(retool, RETOOL, FENCED)
    assert fenced == "Compute.\n```python\nx = 6 * 7\nprint(x)\n```\n```output\n42\n```\nSo it is 42.\n\\boxed{42}"
    assert convert_trace(fenced, FENCED, RETOOL) == retool
    assert verify_trace(fenced, "42", FENCED, session).ok
    chatty = "```python\nprint(42)\n```\nThis prints it.\n```output\n42\n```\n\\boxed{42}"  # prose before the output fence
    moved = convert_trace(chatty, FENCED, RETOOL)
    assert moved.startswith("This prints it.\n<code>") and verify_trace(moved, "42", RETOOL, session).ok
    with pytest.raises(ValueError, match="without its output"):
        convert_trace("Look.\n" + block("print(1)") + ANSWER, RETOOL, FENCED)


def test_coldstart_convert_writes_the_file_and_reverifies_every_trace(tmp_path):
    from typer.testing import CliRunner

    from retool.cli import app

    good = "Compute.\n" + block("print(6 * 7)", claimed="42") + "So it is 42.\n" + ANSWER
    lying = good.replace("<interpreter>\n42", "<interpreter>\n41")  # conversion keeps it; running it again does not
    rows = [{"id": "a", "messages": [{"role": "user", "content": "6*7?"}, {"role": "assistant", "content": good}],
             "answer": "42"},
            {"id": "b", "messages": [{"role": "user", "content": "6*7?"}, {"role": "assistant", "content": lying}],
             "answer": "42"}]
    source = tmp_path / "code.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    runner = CliRunner()
    result = runner.invoke(app, ["coldstart", "convert", "--input", str(source), "--to", "fenced",
                                 "--out", str(tmp_path / "fenced"), "--sandbox", "subprocess"])
    assert result.exit_code == 0, result.output
    kept = [json.loads(line) for line in (tmp_path / "fenced" / "code.jsonl").read_text().splitlines()]
    assert [r["id"] for r in kept] == ["a"] and kept[0]["dialect"] == "fenced"
    assert "```output\n42\n```" in kept[0]["messages"][1]["content"]
    rejects = [json.loads(line) for line in (tmp_path / "fenced" / "code.rejects.jsonl").read_text().splitlines()]
    assert sorted(r["stage"] for r in rejects) == ["convert", "execution"]
    back = runner.invoke(app, ["coldstart", "convert", "--input", str(tmp_path / "fenced" / "code.jsonl"), "--to",
                               "retool", "--out", str(tmp_path / "back"), "--sandbox", "subprocess"])
    assert back.exit_code == 0, back.output
    again = json.loads((tmp_path / "back" / "code.jsonl").read_text().splitlines()[0])
    assert again["messages"][1]["content"] == good


def test_synth_is_deterministic_for_a_seed_and_covers_every_family():
    first, again, other = generate(35, seed=5), generate(35, seed=5), generate(35, seed=6)
    assert first == again and first != other
    assert {e.family for e in first} == set(FAMILIES)
    assert len({e.question for e in first}) == 35


def test_run_synth_writes_verified_disjoint_splits_identically_twice(tmp_path):
    stats = run_synth(SynthConfig(40, str(tmp_path / "a"), seed=2, heldout=0.25))
    run_synth(SynthConfig(40, str(tmp_path / "b"), seed=2, heldout=0.25))
    for name in ("code.jsonl", "text.jsonl", "heldout.jsonl"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    code = [json.loads(line) for line in (tmp_path / "a" / "code.jsonl").read_text().splitlines()]
    text = [json.loads(line) for line in (tmp_path / "a" / "text.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (tmp_path / "a" / "heldout.jsonl").read_text().splitlines()]
    assert stats["train"] == len(code) == len(text) and stats["heldout"] == len(held) > 0
    assert {r["id"] for r in code} == {r["id"] for r in text} and not {r["id"] for r in code} & {r["id"] for r in held}
    assert all("<interpreter>" in r["messages"][1]["content"] for r in code)
    assert not any("<code>" in r["messages"][1]["content"] for r in text)
    assert all(r["messages"][0]["role"] == "user" and set(r) >= {"id", "messages", "answer"} for r in code)


def test_synth_writes_fenced_data_verified_in_that_dialect(tmp_path):
    stats = run_synth(SynthConfig(6, str(tmp_path / "f"), seed=3, heldout=0.0, dialect="fenced"))
    code = [json.loads(line)["messages"][1]["content"] for line in (tmp_path / "f" / "code.jsonl").read_text().splitlines()]
    text = [json.loads(line)["messages"][1]["content"] for line in (tmp_path / "f" / "text.jsonl").read_text().splitlines()]
    assert stats["train"] == len(code) > 0 and not stats["dropped"]
    assert all("```output" in c and "<code>" not in c and "<answer>" not in c for c in code)
    assert all("\\boxed{" in t and "<answer>" not in t for t in text)


def test_the_general_families_all_verify_with_real_execution_and_none_uses_the_probe_sets_wording(tmp_path):
    """Every general family's program runs in a sandbox and prints the generator's own answer; no
    generated question repeats a hand-written probe problem's wording (that set measures transfer)."""
    from retool.coldstart.synth_general import GENERAL_FAMILIES

    stats = run_synth(SynthConfig(2 * len(GENERAL_FAMILIES), str(tmp_path / "g"), seed=4, heldout=0.0,
                                  families="general"))
    assert stats["generator_version"] == "general-1" and not stats["dropped"]
    assert set(stats["families"]) == set(GENERAL_FAMILIES)
    probe = [json.loads(line)["problem"].lower() for line in
             (Path(__file__).resolve().parents[1] / "evals" / "benchmarks" / "novel20.jsonl").read_text().splitlines()]
    generated = [e.question.lower() for families in (FAMILIES, GENERAL_FAMILIES)
                 for e in generate(500, seed=0, families=families)]
    for question in probe:  # no probe problem shares a run of 6 words with a generated question
        words = question.split()
        grams = {" ".join(words[i:i + 6]) for i in range(len(words) - 5)}
        assert not any(g in q for g in grams for q in generated), question
    with pytest.raises(ValueError, match="unknown families"):
        run_synth(SynthConfig(1, str(tmp_path / "x"), families="nope"))


# -- rewrite, end to end over HTTP ---------------------------------------------------------------

GOOD = "Multiply.\n" + block("print({a} * {b})", "{p}") + "So the product is {p}.\n<answer>\n\\boxed{{{p}}}\n</answer>"


def fake_rewriter_app(calls: list[str]) -> FastAPI:
    """An OpenAI-compatible chat endpoint standing in for the rewriting LLM: its reply depends on
    the problem in the prompt, including the kinds of mistakes real rewriters make."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def complete(body: dict):
        prompt = body["messages"][-1]["content"]
        question = prompt.split("Problem:\n", 1)[1].split("\n", 1)[0]
        calls.append(question)
        a, b = map(int, re.findall(r"\d+", question)[:2])
        reply = GOOD.format(a=a, b=b, p=a * b)
        if "wrong output" in question:
            reply = reply.replace(f"<interpreter>\n{a * b}", f"<interpreter>\n{a * b + 1}")
        elif "syntax" in question:
            reply = reply.replace("print(", "print((")
        elif "wrong answer" in question:
            reply = reply.replace(f"\\boxed{{{a * b}}}", f"\\boxed{{{a * b + 2}}}")
        elif "no tags" in question:
            reply = f"The product is {a * b}."
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    return app


def test_rewrite_end_to_end_against_a_live_endpoint_is_resumable_and_deduplicated(tmp_path):
    rows = [{"id": f"p{i}", "question": q, "solution": "By hand: long multiplication ...", "answer": str(a * b)}
            for i, (q, a, b) in enumerate([
                ("What is 123 times 456?", 123, 456),
                ("What is 77 times 88?", 77, 88),
                ("What is 31 times 41, wrong output?", 31, 41),
                ("What is 12 times 13, syntax?", 12, 13),
                ("What is 21 times 22, wrong answer?", 21, 22),
                ("What is 5 times 6, no tags?", 5, 6),
            ])]
    rows.append({**rows[0], "id": "dup"})  # the same question again
    lines = [json.dumps(r) for r in rows] + [json.dumps({"id": "broken", "question": "no solution", "answer": "1"})]
    source = tmp_path / "traces.jsonl"
    source.write_text("\n".join(lines) + "\n")
    calls: list[str] = []
    out = tmp_path / "out"
    with local_server(fake_rewriter_app(calls)) as url:
        rewriter = ChatRewriter(f"{url}/v1", "fake-rewriter")
        stats = asyncio.run(run_rewrite(RewriteConfig(str(source), str(out), concurrency=3), rewriter))
        assert stats["kept"] == 2
        assert stats["dropped"] == {"execution": 1, "format": 2, "answer": 1, "duplicate": 1, "input": 1}
        fenced = asyncio.run(run_rewrite(RewriteConfig(str(source), str(tmp_path / "fenced"), concurrency=3,
                                                       dialect="fenced"), ChatRewriter(f"{url}/v1", "fake-rewriter")))
        assert fenced["kept"] == 2, json.loads((tmp_path / "fenced" / "stats.json").read_text())
        assert all("```output" in json.loads(line)["messages"][1]["content"]
                   for line in (tmp_path / "fenced" / "rewritten.jsonl").read_text().splitlines())
        kept = [json.loads(line) for line in (out / "rewritten.jsonl").read_text().splitlines()]
        assert sorted(r["id"] for r in kept) == ["p0", "p1"]
        assert "<interpreter>\n56088\n</interpreter>" in next(r for r in kept if r["id"] == "p0")["messages"][1]["content"]
        assert datasets.load_from_disk(str(out / "dataset")).num_rows == 2
        assert json.loads((out / "stats.json").read_text())["kept"] == 2
        first_calls = len(calls)
        assert first_calls == 12

        again = asyncio.run(run_rewrite(RewriteConfig(str(source), str(out), concurrency=3), rewriter))
        assert len(calls) == first_calls  # everything was already done: nothing is asked twice
        assert again["kept"] == 2


def test_rewrite_with_a_local_engine_as_the_rewriter(tmp_path):
    from retool.coldstart.pipeline import EngineRewriter
    from scripted import ScriptedEngine

    def reply(prompt: str) -> str:
        a, b = map(int, re.findall(r"\d+", prompt.split("Problem:\n", 1)[1])[:2])
        return GOOD.format(a=a, b=b, p=a * b)

    source = tmp_path / "traces.jsonl"
    source.write_text(json.dumps({"id": "q", "problem": "What is 19 times 21?", "solution": "19·21 = 399",
                                  "answer": "399"}) + "\n")
    stats = asyncio.run(run_rewrite(RewriteConfig(str(source), str(tmp_path / "out"), concurrency=1),
                                    EngineRewriter(ScriptedEngine(respond=reply), max_new_tokens=200)))
    assert stats["kept"] == 1
