"""The chat dialect through the openai engine, against a real OpenAI-compatible server on loopback.

The server plays a model that writes hermes tool calls: each request gets the scripted turn for
where the conversation stands (counted from the prompt), tokenized with the served tokenizer, and
answered the way vLLM answers: in text mode the end-of-turn stripped (as EOS, or as a matched stop
string with ``stop_reason``), in token mode the sampled ``token_ids`` with the end-of-turn token.
The client side holds only the tokenizer (``retool solve --engine openai --model TOKENIZER_DIR``).
Whatever the mode, the trajectory must be the template's rendering of the whole conversation.
"""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("openai")
fastapi = pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from loopback import CompletionRequest, serve_in_thread  # noqa: E402
from retool.cli import app as cli  # noqa: E402
from retool.engines.base import SamplingParams  # noqa: E402
from retool.engines.openai import OpenAIEngine  # noqa: E402
from retool.protocol import CHAT  # noqa: E402
from retool.protocol.chat import ChatFormat, call_item  # noqa: E402
from retool.rollout import Rollout, RolloutConfig  # noqa: E402
from retool.sandbox import SandboxPool  # noqa: E402
from tiny import tiny_chat_tokenizer  # noqa: E402

SERVED = "tiny-qwen"
PROBLEM = "What is 2**10 + 1?"
END = "<|im_end|>"


def assistant(content: str, *codes: str) -> dict:
    message = {"role": "assistant", "content": content}
    if codes:
        message["tool_calls"] = [call_item("python", {"code": c}) for c in codes]
    return message


CONVERSATION = [(assistant("I will compute.", "x = 2**10\nprint(x)"), ["1024"]),
                (assistant("Then one more.", "print(x + 1)"), ["1025"]),
                (assistant("The answer is \\boxed{1025}."), [])]


def scripted_server(tok, turns: list[str]) -> fastapi.FastAPI:
    """``turns[k]`` (ending in the end-of-turn token) answers a prompt that opens its k+1-th
    assistant turn after the problem. ``app.state.end_as``: "eos" (the end-of-turn is the model's EOS, as with Qwen
    on vLLM) or "stop" (it matched the ``stop`` string)."""
    app = fastapi.FastAPI()
    app.state.end_as = "eos"
    app.state.prompts = []
    eot = tok.convert_tokens_to_ids(END)

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": SERVED, "object": "model", "created": 0, "owned_by": "test"}]}

    @app.post("/v1/completions")
    def complete(req: CompletionRequest) -> dict:
        assert req.model == SERVED
        token_prompt = isinstance(req.prompt, list)
        prompt_ids = req.prompt if token_prompt else tok.encode(req.prompt, add_special_tokens=False)
        app.state.prompts.append(prompt_ids)
        text = tok.decode(prompt_ids, skip_special_tokens=False)
        turn = turns[text[text.rindex(PROBLEM):].count("<|im_start|>assistant") - 1]  # after any example
        gen = tok.encode(turn, add_special_tokens=False)[: req.max_tokens]
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        assert END in stops  # the rollout stops at the end of the turn
        finish, stop_reason = "length", None
        if gen[-1] == eot:
            finish = "stop"
            stop_reason = END if app.state.end_as == "stop" else None
        out = gen
        if finish == "stop" and not req.include_stop_str_in_output and stop_reason is not None:
            out = gen[:-1]  # a matched stop string is stripped; the EOS token is skipped as special
        skip = req.skip_special_tokens
        choice = {"index": 0, "text": tok.decode(out, skip_special_tokens=skip), "finish_reason": finish,
                  "stop_reason": stop_reason,
                  "logprobs": {"tokens": [tok.decode([t], skip_special_tokens=False) for t in gen],
                               "token_logprobs": [-0.25] * len(gen), "top_logprobs": None, "text_offset": []},
                  "token_ids": gen if req.return_token_ids else None,
                  "prompt_token_ids": prompt_ids if req.return_token_ids else None}
        return {"id": "cmpl-chat", "object": "text_completion", "created": int(time.time()), "model": SERVED,
                "choices": [choice], "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": len(gen),
                                               "total_tokens": len(prompt_ids) + len(gen)}}

    return app


@pytest.fixture(scope="module")
def tok():
    return tiny_chat_tokenizer("qwen2_5")


@pytest.fixture(scope="module")
def turns(tok):
    fmt = ChatFormat.of(tok)
    return [fmt.model_turn(message) for message, _ in CONVERSATION]


@pytest.fixture(scope="module")
def server(tok, turns):
    app = scripted_server(tok, turns)
    with serve_in_thread(app) as url:
        yield app, url


@pytest.fixture(scope="module")
def pool():
    with SandboxPool("jupyter", size=1) as pool:
        yield pool


def expected_rendering(tok) -> tuple[str, list[int]]:
    fmt = ChatFormat.of(tok)
    messages = CHAT.messages(PROBLEM, few_shot=False)
    for message, replies in CONVERSATION:
        messages.append(message)
        messages += [{"role": "tool", "content": r} for r in replies]
    text = tok.apply_chat_template(messages, tools=list(fmt.tools), tokenize=False)
    return text, tok.apply_chat_template(messages, tools=list(fmt.tools), tokenize=True)["input_ids"]


@pytest.mark.parametrize("token_ids,end_as", [(False, "eos"), (False, "stop"), (True, "eos"), (True, "stop")],
                         ids=["text-eos", "text-stop-string", "tokens-eos", "tokens-stop-string"])
def test_the_openai_engine_gives_the_templates_rendering_in_the_chat_dialect(tok, turns, server, pool,
                                                                            token_ids, end_as):
    app, url = server
    app.state.end_as, app.state.prompts = end_as, []
    engine = OpenAIEngine(url, tok, max_retries=0, timeout=30, token_ids=token_ids)
    try:
        rollout = Rollout(engine, pool, RolloutConfig(dialect="chat", few_shot=False,
                                                      sampling=SamplingParams(temperature=0)))
        traj = rollout.run([rollout.prompt_ids(PROBLEM)])[0]
    finally:
        engine.close()

    text, ids = expected_rendering(tok)
    assert tok.decode(traj.input_ids, skip_special_tokens=False) == text
    assert traj.input_ids == ids
    assert traj.finish_reason == "answer"
    assert [c.result.stdout.strip() for c in traj.tool_calls] == ["1024", "1025"]
    sampled = [t for turn in turns for t in tok.encode(turn, add_special_tokens=False)]
    assert traj.model_ids() == sampled  # the model's tokens, end-of-turn included, mask 1
    assert [lp for lp, m in zip(traj.logprobs, traj.loss_mask) if m] == [-0.25] * len(sampled)
    assert len(app.state.prompts) == len(turns)
    for fed in app.state.prompts:  # each turn continued exactly what came before
        assert fed == traj.input_ids[:len(fed)]


def test_cli_solve_against_a_served_model_with_only_its_tokenizer_here(tok, server, tmp_path):
    app, url = server
    app.state.end_as = "eos"
    tok.save_pretrained(tmp_path)  # no weights: all the client side needs
    assert not list(tmp_path.glob("*.safetensors"))
    result = CliRunner().invoke(cli, ["solve", PROBLEM, "--engine", "openai", "--base-url", url, "--token-ids",
                                      "--model", str(tmp_path), "--dialect", "chat", "--sandbox", "jupyter",
                                      "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["answer"] == "1025" and report["finish_reason"] == "answer"
    assert [c["result"]["stdout"].strip() for c in report["tool_calls"]] == ["1024", "1025"]
    whole = tok.decode(report["prompt_ids"] + report["ids"], skip_special_tokens=False)
    after_problem = expected_rendering(tok)[0].split(PROBLEM)[1]  # solve's prompt holds a worked example
    assert whole.endswith(PROBLEM + after_problem)
