"""`retool serve` against the official openai client on loopback: a live uvicorn server, real
Jupyter sandboxes, a scripted model (so the model writes known code) and a real tiny model."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from retool.engines.hf import HFEngine
from retool.apps.serve import ServeConfig
from retool.rollout import RolloutConfig
from retool.sandbox import SandboxLimits
from retool.sandbox.spec import SandboxSpec
from retool.apps.serve_app import create_app
from retool.apps.local_server import local_server
from scripted import EOS, ScriptedEngine
from tiny import tiny_model

MODEL = "scripted-model"


def scripted_reply(prompt: str) -> str | None:
    """The scripted model: reads the last user message and whether its code already ran."""
    turn = prompt.rsplit("<|im_start|>user\n", 1)[1]
    asked = turn.split("<|im_end|>", 1)[0].strip()
    ran = "<interpreter>" in turn
    verb, _, arg = asked.partition(" ")
    answer = re.search(r"<interpreter>\n(.*?)\n</interpreter>", turn, re.DOTALL)
    if ran:
        return f"So:\n<answer>\n\\boxed{{{answer.group(1).strip()}}}\n</answer>"
    source = {"square": f"print({arg} * {arg})", "store": f"x = {arg}\nprint('stored')", "recall": "print(x)",
              "sleep": "import time\nprint('sleeping', flush=True)\ntime.sleep(60)"}.get(verb)
    if source is None:
        return "I only compute." + EOS
    return f"Let me compute.\n<code>\n```python\n{source}\n```\n</code>"


def live_server(config: ServeConfig, engine, model_name: str):
    return local_server(create_app(config, engine=engine, model_name=model_name))


@pytest.fixture(scope="module")
def base_url():
    config = ServeConfig(sandbox=SandboxSpec(limits=SandboxLimits(timeout_s=30)),
                         rollout=RolloutConfig(max_total_tokens=256, max_tool_calls=4),
                         max_concurrency=4, max_sessions=12, max_request_tokens=512)
    with live_server(config, ScriptedEngine(respond=scripted_reply, delay=0.002), MODEL) as url:
        yield url


@pytest.fixture
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def ask(client, text: str, session: str | None = None, **kwargs):
    extra = {"extra_headers": {"X-Session-Id": session}} if session else {}
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}], **extra, **kwargs)


def test_models_and_health(client, base_url):
    assert [m.id for m in client.models.list().data] == [MODEL]
    health = httpx.get(f"{base_url}/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL and health["sandbox"] == "jupyter"


def test_non_streaming_answer_holds_the_transcript_and_the_answer(client):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "square 12"}])
    reply = raw.parse()
    content = reply.choices[0].message.content
    assert "print(12 * 12)" in content and "<interpreter>\n144\n</interpreter>" in content
    assert content.rstrip().endswith("</answer>") and reply.choices[0].finish_reason == "stop"
    extension = reply.model_extra["retool"]
    assert extension["answer"] == "144" and extension["tool_calls"][0]["result"]["status"] == "ok"
    assert raw.headers["x-session-id"] == reply.model_extra["session_id"]
    assert reply.usage.completion_tokens == extension["model_tokens"] + extension["interpreter_tokens"]


def test_streaming_sends_the_same_transcript_in_pieces(client):
    stream = ask(client, "square 7", stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3
    text = "".join(pieces)
    assert "<interpreter>\n49\n</interpreter>" in text and "\\boxed{49}" in text
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish[-1].choices[0].finish_reason == "stop" and finish[-1].model_extra["retool"]["answer"] == "49"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert chunks[0].choices[0].delta.role == "assistant"


def test_a_session_keeps_its_variables_and_sessions_are_isolated(client):
    ask(client, "store 41", session="conv-a")
    recalled = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "recall"}],
                                              extra_body={"session_id": "conv-a"})
    assert "<interpreter>\n41\n</interpreter>" in recalled.choices[0].message.content
    other = ask(client, "recall", session="conv-b")
    assert "NameError" in other.choices[0].message.content


def test_a_new_session_id_is_returned_and_can_be_continued(client):
    first = ask(client, "store 5")
    session = first.model_extra["session_id"]
    assert session.startswith("sess-")
    again = ask(client, "recall", session=session)
    assert again.model_extra["retool"]["answer"] == "5"


def test_concurrent_requests_all_get_their_own_answers(client, base_url):
    with ThreadPoolExecutor(8) as workers:
        replies = list(workers.map(lambda n: ask(client, f"square {n}"), range(10, 18)))
    assert [r.model_extra["retool"]["answer"] for r in replies] == [str(n * n) for n in range(10, 18)]
    assert httpx.get(f"{base_url}/health").json()["running"] == 0


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404, "does not exist"),
        ({"model": MODEL, "messages": []}, 400, "messages"),
        ({"model": MODEL}, 400, "messages"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n=1"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, 400, "limit"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tool_calls": 99}, 400, "limit"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 9}, 400, "temperature"),
        ({"model": MODEL, "messages": [{"role": "assistant", "content": "hi"}]}, 400, "last message"),
        ({"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, 400, "role"),
        ({"model": MODEL, "messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]},
         400, "start with a user message"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, 400, "tools"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "session_id": "../../etc"}, 400, "session"),
    ],
)
def test_malformed_requests_get_clear_4xx_errors(base_url, body, status, fragment):
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"]


def test_the_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=3)


def test_a_body_that_is_not_json_is_a_400(base_url):
    response = httpx.post(f"{base_url}/v1/chat/completions", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]


def test_a_dropped_stream_interrupts_the_cell_and_frees_the_session(client, base_url):
    session = "dropped"
    stream = ask(client, "sleep", session=session, stream=True)
    started, text = time.monotonic(), ""
    for chunk in stream:
        text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
        if "</code>" in text:
            break
    time.sleep(0.5)  # the cell is sleeping now
    stream.close()
    follow = ask(client, "store 3", session=session)  # waits for the session: only quick if it was freed
    assert follow.model_extra["retool"]["tool_calls"][0]["result"]["status"] == "ok"
    assert time.monotonic() - started < 20  # the cell alone would sleep 60 s (timeout 30 s)


def test_idle_sessions_expire():
    config = ServeConfig(max_concurrency=2, max_sessions=4, session_ttl_s=0.3, warm_sessions=1)
    with live_server(config, ScriptedEngine(respond=scripted_reply), MODEL) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        ask(client, "store 9", session="short")
        assert httpx.get(f"{url}/health").json()["sessions"] == 1
        time.sleep(1.5)
        assert httpx.get(f"{url}/health").json()["sessions"] == 0
        assert "NameError" in ask(client, "recall", session="short").choices[0].message.content


def test_a_real_model_streams_the_same_text_it_returns(tmp_path):
    model, tokenizer = tiny_model()
    engine = HFEngine(model, tokenizer, max_batch=2)
    config = ServeConfig(sandbox=SandboxSpec("subprocess"), rollout=RolloutConfig(max_total_tokens=24),
                         warm_sessions=1)
    try:
        with live_server(config, engine, "tiny") as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
            messages = [{"role": "user", "content": "What is 2+2?"}]
            whole = client.chat.completions.create(model="tiny", messages=messages, temperature=0)
            streamed = client.chat.completions.create(model="tiny", messages=messages, temperature=0, stream=True)
            pieces = [c.choices[0].delta.content or "" for c in streamed if c.choices]
            assert len([p for p in pieces if p]) > 1  # token by token, not all at the end
            assert "".join(pieces) == whole.choices[0].message.content
            assert whole.usage.completion_tokens <= 24
    finally:
        engine.close()


def test_sse_wire_format(base_url):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "square 3"}], "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


# -- hardening: sessions never vanish silently, fair eviction, limits, hang-ups, error shapes ----------


def _post(url: str, body, token: str | None = None, session: str | None = None, timeout: float = 60):
    headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **({"X-Session-Id": session} if session else {})}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=timeout)


def _say(text: str, history: list[dict] | None = None) -> dict:
    return {"model": MODEL, "messages": [*(history or []), {"role": "user", "content": text}]}


def test_an_evicted_session_is_never_a_silent_reset():
    engine = ScriptedEngine(respond=scripted_reply)
    config = ServeConfig(max_concurrency=2, max_sessions=2, warm_sessions=1)
    with live_server(config, engine, MODEL) as url:
        first = _post(url, _say("store 41"), session="mine").json()
        for other in ("o1", "o2"):  # two more conversations of the same client: "mine" is its oldest idle one
            _post(url, _say("square 2"), session=other)
        history = [{"role": "user", "content": "store 41"}, first["choices"][0]["message"]]
        again = _post(url, _say("recall", history), session="mine")
        reply = again.json()
        assert again.headers["x-session-reset"] == "evicted" and reply["retool"]["session_reset"] == "evicted"
        prompt = engine.tokenizer.decode(engine.calls[-2], skip_special_tokens=False)
        assert "interpreter was restarted" in prompt and "evicted" in prompt  # the model is told too
        fresh = _post(url, _say("square 3"), session="brand-new").json()
        assert fresh["retool"]["session_reset"] is None  # a new conversation lost nothing


def test_a_continued_conversation_on_an_unknown_id_is_told_its_interpreter_is_fresh(client):
    history = [{"role": "user", "content": "store 1"}, {"role": "assistant", "content": "stored earlier"}]
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[*history, {"role": "user", "content": "recall"}],
        extra_headers={"X-Session-Id": "never-seen-before"})
    assert raw.headers["x-session-reset"] == "unknown"
    assert raw.parse().model_extra["retool"]["session_reset"] == "unknown"


def test_with_tokens_one_client_cannot_wipe_anothers_sessions():
    config = ServeConfig(max_concurrency=2, max_sessions=4, warm_sessions=1, tokens=("alpha", "beta"))
    with live_server(config, ScriptedEngine(respond=scripted_reply), MODEL) as url:
        assert _post(url, _say("square 2")).status_code == 401
        assert _post(url, _say("square 2"), token="gamma").json()["error"]["code"] == "invalid_api_key"
        for i in range(4):  # alpha fills the server
            assert _post(url, _say(f"store {i}"), token="alpha", session=f"a{i}").status_code == 200
        for i in range(3):  # beta may take alpha's surplus, but then only displaces its own sessions
            assert _post(url, _say("store 7"), token="beta", session=f"b{i}").status_code == 200
        kept = [_post(url, _say("recall"), token="alpha", session=f"a{i}").json() for i in (2, 3)]
        assert [r["retool"]["session_reset"] for r in kept] == [None, None]  # alpha kept its fair share...
        assert [r["retool"]["answer"] for r in kept] == ["2", "3"]  # ...with its variables
        lost = _post(url, _say("recall"), token="alpha", session="a0").json()
        assert lost["retool"]["session_reset"] == "evicted"  # ...and is told about the surplus it lost
        same_id = _post(url, _say("recall"), token="beta", session="a3").json()  # ids are per client
        assert "NameError" in same_id["choices"][0]["message"]["content"]


def test_a_huge_body_is_refused_before_parsing_and_the_loop_stays_responsive():
    config = ServeConfig(max_concurrency=2, max_sessions=2, warm_sessions=1, max_body_bytes=4 << 20)
    with live_server(config, ScriptedEngine(respond=scripted_reply), MODEL) as url:
        started = time.monotonic()
        refused = _post(url, _say("x" * (6 << 20)))
        assert refused.status_code == 413 and refused.json()["error"]["code"] == "body_too_large"
        assert time.monotonic() - started < 5
        delays = []

        def poll_health():
            for _ in range(20):
                t = time.monotonic()
                httpx.get(f"{url}/health", timeout=30)
                delays.append(time.monotonic() - t)
                time.sleep(0.05)

        with ThreadPoolExecutor(2) as pool:
            big = pool.submit(_post, url, _say("word " * 700_000))  # 3.5 MB: allowed, tokenized off the loop
            pool.submit(poll_health).result()
            assert big.result().status_code == 400  # too many tokens, said after tokenizing
        assert max(delays) < 1.0, delays


def test_a_plain_request_whose_client_hangs_up_stops_its_cell(base_url):
    started = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        _post(base_url, _say("sleep"), session="hangs-up", timeout=2.0)
    follow = _post(base_url, _say("store 3"), session="hangs-up").json()
    assert follow["retool"]["tool_calls"][0]["result"]["status"] == "ok"
    assert time.monotonic() - started < 15  # the cell alone would sleep 60 s (timeout 30 s)


def test_requests_waiting_for_a_busy_conversation_hold_no_slot():
    config = ServeConfig(sandbox=SandboxSpec(limits=SandboxLimits(timeout_s=30)), max_concurrency=2, max_sessions=4,
                         warm_sessions=2)
    with live_server(config, ScriptedEngine(respond=scripted_reply), MODEL) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        stream = ask(client, "sleep", session="busy", stream=True)
        text = ""
        for chunk in stream:
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
            if "</code>" in text:
                break
        with ThreadPoolExecutor(3) as pool:
            queued = [pool.submit(_post, url, _say("square 2"), None, "busy", 60) for _ in range(2)]
            time.sleep(0.5)
            started = time.monotonic()
            other = _post(url, _say("square 5"), session="other").json()
            assert other["retool"]["answer"] == "25" and time.monotonic() - started < 10
            stream.close()  # frees "busy"; the queued ones then run
            assert all(q.result().status_code == 200 for q in queued)


@pytest.mark.parametrize("raw, fragment", [
    (b'{"model": "scripted-model", "messages": [{"role": "user", "content": "a\\ud800b"}]}', "surrogate"),
    (b'{"model": "scripted-model", "messages": [{"role": "user", "content": "\xff\xfe"}]}', "JSON"),
    (b'{"model": "scripted-model", "seed": 1180591620717411303424, "messages": [{"role": "user", "content": "hi"}]}',
     "seed"),
])
def test_bad_input_is_a_400_in_openais_shape(base_url, raw, fragment):
    response = httpx.post(f"{base_url}/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]["message"] and response.json()["error"]["type"]


def test_framework_errors_keep_openais_shape(base_url):
    for response in (httpx.get(f"{base_url}/v1/nowhere"), httpx.get(f"{base_url}/v1/chat/completions")):
        assert response.status_code in (404, 405)
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_a_large_seed_is_fine(base_url):
    reply = _post(base_url, {**_say("square 4"), "seed": 2**63 + 12345})
    assert reply.status_code == 200 and reply.json()["retool"]["answer"] == "16"


def test_an_engine_failure_is_a_503_not_an_answer():
    def respond(prompt: str):
        if "explode" in prompt:
            raise ConnectionError("the model server went away")
        return scripted_reply(prompt)

    with live_server(ServeConfig(max_sessions=2, warm_sessions=1), ScriptedEngine(respond=respond), MODEL) as url:
        failed = _post(url, _say("explode"))
        assert failed.status_code == 503 and failed.json()["error"]["code"] == "infrastructure_failure"
        assert "went away" in failed.json()["error"]["message"]
        body = {**_say("explode"), "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
            events = [line for line in response.iter_lines() if line]
        assert "infrastructure_failure" in events[-2] and events[-1] == "data: [DONE]"


def test_function_calling_in_the_chat_dialect_with_the_python_tool_built_in():
    """One conversation through the official client: the model runs python server-side, then calls
    the client's function (finish_reason "tool_calls"); the client sends the result back as a tool
    message and the model answers. The last prompt is the template's rendering of everything the
    model saw — the server-side call and its output included — and extends the first exactly."""
    from retool.protocol import CHAT
    from retool.protocol.chat import ChatFormat, call_item
    from tiny import tiny_chat_tokenizer

    tok = tiny_chat_tokenizer("qwen2_5")
    lookup = {"type": "function", "function": {"name": "lookup", "description": "Look a constant up.",
                                               "parameters": {"type": "object", "properties": {"key": {"type": "string"}}}}}
    fmt = ChatFormat.of(tok, extra_tools=(lookup,))
    turns = [fmt.model_turn({"role": "assistant", "content": "First python.", "tool_calls": [call_item("python", {"code": "x = 6 * 7\nprint(x)"})]}),
             fmt.model_turn({"role": "assistant", "content": "Now the table.", "tool_calls": [call_item("lookup", {"key": "offset"})]}),
             fmt.model_turn({"role": "assistant", "content": "So \\boxed{45}."})]
    engine = ScriptedEngine(turns, tokenizer=tok)
    config = ServeConfig(rollout=RolloutConfig(dialect="chat", few_shot=False, max_total_tokens=400), max_request_tokens=512)
    with live_server(config, engine, MODEL) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        asked = [{"role": "user", "content": "What is 6 * 7 plus the offset?"}]
        first = client.chat.completions.create(model=MODEL, messages=asked, tools=[lookup])
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        (called,) = choice.message.tool_calls
        assert called.function.name == "lookup" and json.loads(called.function.arguments) == {"key": "offset"}
        assert first.model_extra["retool"]["tool_calls"][0]["result"]["stdout"] == "42\n"  # python ran server-side
        session = first.session_id if hasattr(first, "session_id") else first.model_extra["session_id"]
        history = asked + [choice.message.model_dump(exclude_none=True),
                           {"role": "tool", "tool_call_id": called.id, "content": "3"}]
        second = client.chat.completions.create(model=MODEL, messages=history, tools=[lookup],
                                                extra_headers={"X-Session-Id": session})
        assert second.choices[0].finish_reason == "stop" and "\\boxed{45}" in second.choices[0].message.content

        # a request the server cannot honour still gets a clear 400
        with pytest.raises(openai.BadRequestError, match="server's own"):
            client.chat.completions.create(model=MODEL, messages=asked,
                                           tools=[{"type": "function", "function": {"name": "python"}}])
    seen = CHAT.messages("What is 6 * 7 plus the offset?", few_shot=False) + [
        {"role": "assistant", "content": "First python.", "tool_calls": [call_item("python", {"code": "x = 6 * 7\nprint(x)"})]},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "Now the table.", "tool_calls": [call_item("lookup", {"key": "offset"})]},
        {"role": "tool", "content": "3"}]
    expected = tok.apply_chat_template(seen, tools=list(fmt.tools), add_generation_prompt=True)["input_ids"]
    assert engine.calls[-1] == expected
    assert engine.calls[-1][:len(engine.calls[1])] == engine.calls[1]  # the prefix cache would hit


def test_tools_need_the_chat_dialect(client):
    with pytest.raises(openai.BadRequestError, match="chat dialect"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "square 2"}],
                                       tools=[{"type": "function", "function": {"name": "lookup"}}])
