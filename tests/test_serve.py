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
from retool.serve import ServeConfig, create_app
from retool.local_server import local_server
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
    config = ServeConfig(max_concurrency=4, max_sessions=12, max_tokens=512, default_max_tokens=256,
                         max_tool_calls=4, sandbox_timeout=30)
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
    assert extension["answer"] == "144" and extension["tool_calls"][0]["status"] == "ok"
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
    assert follow.model_extra["retool"]["tool_calls"][0]["status"] == "ok"
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
    config = ServeConfig(sandbox="subprocess", default_max_tokens=24, warm_sessions=1)
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
