"""OpenAIEngine against a real OpenAI-compatible HTTP server on loopback.

The server (FastAPI + uvicorn in a background thread) serves ``GET /v1/models`` and
``POST /v1/completions`` from a tiny random ``LlamaForCausalLM`` and a byte-level BPE tokenizer
trained here; it stops on ``stop`` strings and strips them, like vLLM, and returns vLLM's
``stop_reason`` (switchable off, to exercise the engine's fallback), ``usage`` and logprobs.
Like vLLM it also takes a token-id prompt (no BOS added) and, asked for ``return_token_ids``,
returns the sampled ``token_ids`` (EOS and stop tokens included) and ``prompt_token_ids``; that is
switchable off too (an older vLLM), as is one logprob (a misaligned server).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import threading
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("openai")
fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fastapi.responses import JSONResponse  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from loopback import CompletionRequest, serve_in_thread  # noqa: E402
from retool.engines.base import SamplingParams  # noqa: E402
from retool.engines.openai import (  # noqa: E402
    EngineError,
    OpenAIEngine,
    align_logprobs,
    parse_choice,
    parse_token_choice,
)

MODEL_NAME = "tiny-llama"
EOS = "<|endoftext|>"
GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)


def corpus() -> str:
    parts = []
    for i in range(40):
        a, b = 3 * i + 7, i * i + 11
        parts.append(
            f"Let me compute {a} * {b} with code.\n<code>\n```python\nx = {a} * {b}\nprint(x)\n```\n</code>\n"
            f"<interpreter>\n{a * b}\n</interpreter>\nSo the answer is {a * b}. "
            f"<answer>\\boxed{{{a * b}}}</answer>\n"
        )
    return "".join(parts)


def build_tokenizer() -> transformers.PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([corpus()], trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, clean_up_tokenization_spaces=False)


def build_model(tok) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=1024, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id, bos_token_id=None)
    return transformers.LlamaForCausalLM(config).eval()


class StopOnStrings(transformers.StoppingCriteria):
    def __init__(self, tok, stops: list[str], prompt_len: int) -> None:
        self.tok, self.stops, self.prompt_len = tok, stops, prompt_len

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        text = self.tok.decode(input_ids[0, self.prompt_len:])
        return torch.tensor([any(s in text for s in self.stops)])


class LogitBias(transformers.LogitsProcessor):
    def __init__(self, bias: dict[str, float]) -> None:
        self.bias = {int(k): v for k, v in bias.items()}

    def __call__(self, input_ids, scores) -> torch.Tensor:
        for token, value in self.bias.items():
            scores[:, token] += value
        return scores


def make_app(tok, model) -> fastapi.FastAPI:
    app = fastapi.FastAPI()
    app.state.vllm_fields = True  # report stop_reason like vLLM
    app.state.token_ids = True  # honour return_token_ids like vLLM >= 0.10.2
    app.state.drop_logprob = False  # send one logprob fewer than tokens
    app.state.last_request = None
    app.state.inflight = app.state.max_inflight = 0
    lock, count_lock = threading.Lock(), threading.Lock()

    @app.get("/v1/models")
    def list_models() -> dict:
        return {"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "created": 0, "owned_by": "test"}]}

    @app.post("/v1/completions")
    def complete(req: CompletionRequest):  # sync: runs in the threadpool, so requests overlap
        if req.model != MODEL_NAME:
            return JSONResponse({"error": {"message": f"The model `{req.model}` does not exist.",
                                           "type": "NotFoundError", "code": 404}}, status_code=404)
        app.state.last_request = req
        with count_lock:
            app.state.inflight += 1
            app.state.max_inflight = max(app.state.max_inflight, app.state.inflight)
        time.sleep(0.02)  # let concurrent requests pile up
        try:
            return generate(req)
        finally:
            with count_lock:
                app.state.inflight -= 1

    def generate(req: CompletionRequest) -> dict:
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if isinstance(req.prompt, list):  # a token prompt goes in as it is, no BOS added
            ids = torch.tensor([req.prompt])
        else:
            ids = tok(req.prompt, return_tensors="pt").input_ids
        n = ids.shape[1]
        kwargs: dict = dict(max_new_tokens=req.max_tokens, return_dict_in_generate=True, output_logits=True,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
        if req.temperature > 0:
            kwargs.update(do_sample=True, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k)
        else:
            kwargs.update(do_sample=False)
        if stops:
            kwargs["stopping_criteria"] = transformers.StoppingCriteriaList([StopOnStrings(tok, stops, n)])
        if req.logit_bias:
            kwargs["logits_processor"] = transformers.LogitsProcessorList([LogitBias(req.logit_bias)])
        with lock, torch.no_grad():
            if req.seed is not None:
                torch.manual_seed(req.seed)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        gen = out.sequences[0, n:].tolist()
        lps = torch.log_softmax(torch.stack(out.logits)[:, 0].float(), -1)[torch.arange(len(gen)), gen].tolist()
        keep = req.include_stop_str_in_output
        stop_reason: str | None = None
        if gen and gen[-1] == tok.eos_token_id:
            finish, text = "stop", tok.decode(gen if keep else gen[:-1])
        else:
            text = tok.decode(gen)
            hits = [(text.find(s), s) for s in stops if s in text]
            if hits:
                at, stop_reason = min(hits)
                finish, text = "stop", text[: at + len(stop_reason) if keep else at]
            else:
                finish = "length"
        if app.state.drop_logprob:
            lps = lps[:-1]
        choice = {"index": 0, "text": text, "finish_reason": finish,
                  "logprobs": {"tokens": [tok.decode([t]) for t in gen], "token_logprobs": lps,
                               "top_logprobs": None, "text_offset": []} if req.logprobs else None}
        if app.state.vllm_fields:
            choice["stop_reason"] = stop_reason
        if app.state.token_ids:  # vLLM sends both fields, null unless asked for
            choice["token_ids"] = gen if req.return_token_ids else None
            choice["prompt_token_ids"] = ids[0].tolist() if req.return_token_ids else None
        return {"id": "cmpl-test", "object": "text_completion", "created": int(time.time()), "model": MODEL_NAME,
                "choices": [choice], "usage": {"prompt_tokens": n, "completion_tokens": len(gen),
                                               "total_tokens": n + len(gen)}}

    return app


@pytest.fixture(scope="module")
def served():
    tok = build_tokenizer()
    model = build_model(tok)
    app = make_app(tok, model)
    with serve_in_thread(app) as url:
        yield SimpleNamespace(url=url, tok=tok, model=model, app=app)


@pytest.fixture
def engine(served):
    eng = OpenAIEngine(served.url, served.tok, model=MODEL_NAME, max_retries=0, timeout=30)
    yield eng
    eng.close()


def local_greedy(served, prompt: str, max_tokens: int) -> list[int]:
    ids = served.tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = served.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                    do_sample=False, eos_token_id=served.tok.eos_token_id,
                                    pad_token_id=served.tok.eos_token_id)
    return out[0, ids.shape[1]:].tolist()


def encode(served, text: str) -> list[int]:
    return served.tok.encode(text, add_special_tokens=False)


def test_round_trip_matches_local_greedy(served, engine):
    prompt = "Let me compute 7 * 11 with code.\n"
    c = asyncio.run(engine.agenerate(encode(served, prompt), GREEDY))
    expected = local_greedy(served, prompt, GREEDY.max_new_tokens)
    assert served.tok.eos_token_id not in expected
    assert served.tok.decode(c.ids) == served.tok.decode(expected)
    assert c.end == "length" and c.stop is None
    assert len(c.logprobs) == len(c.ids) and all(lp <= 0 for lp in c.logprobs)
    assert c.prompt_tokens == len(encode(served, prompt))
    assert engine.stats.requests == 1 and engine.stats.decode_tokens == GREEDY.max_new_tokens


def test_max_tokens_gives_length(served, engine):
    c = asyncio.run(engine.agenerate(encode(served, "print(x)\n"), GREEDY.with_(max_new_tokens=5)))
    assert c.end == "length" and c.stop is None
    assert engine.stats.decode_tokens == 5


def _greedy_text_and_stop(served, prompt: str) -> tuple[str, str]:
    """A stop string the model really produces: three characters out of its greedy output."""
    text = served.tok.decode(local_greedy(served, prompt, 16))
    stop = text[4:7]
    assert len(stop) == 3 and "\ufffd" not in stop
    return text, stop


@pytest.mark.parametrize("vllm_fields", [True, False])
def test_stop_string_is_put_back(served, engine, vllm_fields):
    prompt = "So the answer is "
    text, stop = _greedy_text_and_stop(served, prompt)
    served.app.state.vllm_fields = vllm_fields  # False: no stop_reason, the single stop is inferred
    try:
        c = asyncio.run(engine.agenerate(encode(served, prompt), GREEDY.with_(max_new_tokens=16), stop=(stop,)))
    finally:
        served.app.state.vllm_fields = True
    assert c.end == "stop" and c.stop == stop
    assert served.tok.decode(c.ids) == text[: text.find(stop) + len(stop)]
    assert served.tok.decode(c.ids).endswith(stop)


def test_several_stops_without_stop_reason(served, engine):
    prompt = "So the answer is "
    text, stop = _greedy_text_and_stop(served, prompt)
    served.app.state.vllm_fields = False
    try:
        c = asyncio.run(engine.agenerate(encode(served, prompt), GREEDY.with_(max_new_tokens=16), stop=(stop, "\x00never")))
    finally:
        served.app.state.vllm_fields = True
    assert c.end == "stop" and c.stop is None  # which one is unknowable
    assert served.tok.decode(c.ids) == text[: text.find(stop)]
    # with stop_reason the server says which one it was
    c = asyncio.run(engine.agenerate(encode(served, prompt), GREEDY.with_(max_new_tokens=16), stop=(stop, "\x00never")))
    assert c.end == "stop" and c.stop == stop


def test_eos_forced_by_logit_bias(served):
    eos = served.tok.eos_token_id
    with OpenAIEngine(served.url, served.tok, model=MODEL_NAME, max_retries=0,
                      extra_body={"logit_bias": {str(eos): 100.0}}) as eng:
        c = asyncio.run(eng.agenerate(encode(served, "x = 7 * 11\n"), GREEDY, stop=("</code>",)))
        assert c.end == "eos" and c.stop is None
        assert c.ids == [eos] and len(c.logprobs) == 1 and c.logprobs[0] <= 0
        assert eng.logprobs_available  # the server's EOS logprob lined up


def test_finish_reason_mapping():
    def choice(text, finish, **extra):
        return SimpleNamespace(text=text, finish_reason=finish, **extra)

    assert parse_choice(choice("abc", "length"), ("</code>",)) == ("abc", "length", None)
    assert parse_choice(choice("abc", "stop"), ()) == ("abc", "eos", None)
    assert parse_choice(choice("abc", "stop", stop_reason=None), ("</code>",)) == ("abc", "eos", None)
    assert parse_choice(choice("abc", "stop", stop_reason=151645), ("</code>",)) == ("abc", "eos", None)
    assert parse_choice(choice("abc", "stop", stop_reason="</b>"), ("</a>", "</b>")) == ("abc</b>", "stop", "</b>")
    assert parse_choice(choice("abc", "stop"), ("</code>",)) == ("abc</code>", "stop", "</code>")
    assert parse_choice(choice("abc", "stop"), ("</a>", "</b>")) == ("abc", "stop", None)
    # a server that kept the stop (or ignored it) is cut after the first stop, not doubled
    assert parse_choice(choice("a</code>b", "length"), ("</code>",)) == ("a</code>", "stop", "</code>")
    with pytest.raises(EngineError, match="abort"):
        parse_choice(choice("abc", "abort"), ())


def test_logprob_alignment():
    assert align_logprobs(["ab", "c"], [-0.5, -1.0], "abc", 2, False) == [-0.5, -1.0]
    assert align_logprobs(["ab", "c", EOS], [-0.5, -1.0, -2.0], "abc", 2, True) == [-0.5, -1.0, -2.0]
    assert align_logprobs(["a", "b", "c"], [-0.5, -1.0, -0.1], "abc", 2, False) is None  # counts differ
    assert align_logprobs(["ab", "d"], [-0.5, -1.0], "abc", 2, False) is None  # texts differ
    assert align_logprobs(["ab", "c"], [None, -1.0], "abc", 2, False) is None
    assert align_logprobs(None, None, "abc", 2, False) is None


def test_single_token_logprob_matches_model(served, engine):
    prompt = "<code>\n```python\n"
    c = asyncio.run(engine.agenerate(encode(served, prompt), GREEDY.with_(max_new_tokens=1)))
    assert len(c.ids) == 1 and engine.logprobs_available
    with torch.no_grad():
        logits = served.model(served.tok(prompt, return_tensors="pt").input_ids).logits[0, -1]
    assert c.logprobs[0] == pytest.approx(torch.log_softmax(logits, -1)[c.ids[0]].item(), abs=1e-4)


def test_concurrent_agenerate(served, engine):
    prompt = encode(served, "Let me compute 10 * 12 with code.\n")
    params = SamplingParams(max_new_tokens=8, temperature=1.0, top_k=20)
    served.app.state.max_inflight = 0

    async def run():
        return await asyncio.gather(*(engine.agenerate(prompt, params.with_(seed=i % 4), stop=("</code>",))
                                      for i in range(8)))

    out = asyncio.run(run())
    assert len(out) == 8 and all(c.end in ("stop", "eos", "length") and c.ids for c in out)
    assert all(len(c.ids) == len(c.logprobs) for c in out)
    assert [c.ids for c in out[:4]] == [c.ids for c in out[4:]]  # same seed, same sample
    assert served.app.state.max_inflight > 1  # the requests were in flight together
    assert engine.stats.requests == 8


def test_generate_sync_wrapper(served, engine):
    prompts = ["print(", "x = 3 * 4\n", "<answer>"]
    for _ in range(2):  # a fresh event loop each call
        out = engine.generate([encode(served, p) for p in prompts], GREEDY.with_(max_new_tokens=6))
        for p, c in zip(prompts, out):
            assert served.tok.decode(c.ids) == served.tok.decode(local_greedy(served, p, 6))


def test_model_discovery(served):
    with OpenAIEngine(served.url.removesuffix("/v1"), served.tok, max_retries=0) as eng:  # /v1 is added
        assert eng.model is None and eng.base_url == served.url
        c = asyncio.run(eng.agenerate(encode(served, "print("), GREEDY.with_(max_new_tokens=3)))
        assert eng.model == MODEL_NAME and c.end == "length"


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.mark.parametrize("model", [MODEL_NAME, None])
def test_dead_url_raises_engine_error(served, model):
    url = _dead_url()
    with OpenAIEngine(url, served.tok, model=model, max_retries=0, timeout=5) as eng:
        with pytest.raises(EngineError, match=url.replace(".", r"\.")):
            asyncio.run(eng.agenerate([1, 2, 3], GREEDY))


def test_http_error_carries_server_message(served):
    with OpenAIEngine(served.url, served.tok, model="no-such-model", max_retries=0) as eng:
        with pytest.raises(EngineError) as info:
            asyncio.run(eng.agenerate(encode(served, "print("), GREEDY))
    message = str(info.value)
    assert served.url in message and "404" in message and "no-such-model` does not exist" in message


def test_clients_close_with_their_loop(served):
    """No connection outlives its event loop (the suite runs clean under ``-W error``)."""
    prompt = encode(served, "print(")
    eng = OpenAIEngine(served.url, served.tok, model=MODEL_NAME, max_retries=0)

    async def long_lived():
        first = await eng.agenerate(prompt, GREEDY.with_(max_new_tokens=3))
        again = await eng.agenerate(prompt, GREEDY.with_(max_new_tokens=3))  # the same client, reused
        await eng.aclose()
        return first, again

    first, again = asyncio.run(long_lived())
    assert first.ids == again.ids and not eng._clients
    eng = OpenAIEngine(served.url, served.tok, model=MODEL_NAME, max_retries=0)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(eng.agenerate(prompt, GREEDY.with_(max_new_tokens=3)))
        eng.close()  # the loop is idle but open: close() runs the client's close on it
        assert not eng._clients
    finally:
        loop.close()


def test_closed_engine_refuses(served):
    eng = OpenAIEngine(served.url, served.tok, model=MODEL_NAME)
    eng.close()
    eng.close()  # idempotent
    with pytest.raises(EngineError, match="closed"):
        asyncio.run(eng.agenerate([1], GREEDY))


# --- token mode: exact sampled ids and logprobs, for RL against vLLM ---------------------------------


@contextlib.contextmanager
def server_state(served, **state):
    """Switch the test server's behaviour for one block, restoring it after."""
    old = {k: getattr(served.app.state, k) for k in state}
    for k, v in state.items():
        setattr(served.app.state, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(served.app.state, k, v)


@pytest.fixture
def token_engine(served):
    eng = OpenAIEngine(served.url, served.tok, model=MODEL_NAME, max_retries=0, timeout=30, token_ids=True)
    yield eng
    eng.close()


def greedy_ids(served, prompt_ids: list[int], max_tokens: int) -> list[int]:
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = served.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                    do_sample=False, eos_token_id=served.tok.eos_token_id,
                                    pad_token_id=served.tok.eos_token_id)
    return out[0, len(prompt_ids):].tolist()


def teacher_forced_logprobs(served, prompt_ids: list[int], ids: list[int]) -> list[float]:
    """The model's log-softmax of ``ids`` after ``prompt_ids``, in one forward pass (as a trainer does)."""
    with torch.no_grad():
        logits = served.model(torch.tensor([prompt_ids + ids])).logits[0, len(prompt_ids) - 1: -1]
    return torch.log_softmax(logits.float(), -1)[torch.arange(len(ids)), ids].tolist()


def split_prompt(served) -> list[int]:
    """A prompt whose ids are not the canonical tokenization of their text (one id per character at
    the end), so only a server that takes the ids themselves continues exactly these."""
    head, tail = "Let me compute 7 * 11 ", "with code.\n"
    ids = encode(served, head) + [t for c in tail for t in encode(served, c)]
    assert ids != encode(served, served.tok.decode(ids))
    return ids


def test_token_mode_returns_the_greedy_ids_and_their_logprobs(served, token_engine):
    prompt = split_prompt(served)
    c = asyncio.run(token_engine.agenerate(prompt, GREEDY))
    sent = served.app.state.last_request
    assert sent.prompt == prompt  # the ids as they are, no BOS added or stripped
    assert sent.return_token_ids and sent.include_stop_str_in_output and not sent.skip_special_tokens
    expected = greedy_ids(served, prompt, GREEDY.max_new_tokens)
    assert served.tok.eos_token_id not in expected
    assert c.ids == expected and c.end == "length" and c.stop is None
    assert c.logprobs == pytest.approx(teacher_forced_logprobs(served, prompt, expected), abs=1e-4)
    assert c.prompt_tokens == len(prompt) and token_engine.logprobs_available
    s = token_engine.stats
    assert s.requests == 1 and s.prefill_tokens == len(prompt) and s.decode_tokens == len(expected)
    assert s.extra["request_s"] > 0


def test_token_mode_keeps_ids_that_text_would_retokenize(served, token_engine):
    one = encode(served, "1")
    assert len(one) == 1
    sampled = one * 6
    assert encode(served, "1" * 6) != sampled  # text mode could not give these ids back
    params = GREEDY.with_(max_new_tokens=6)
    with OpenAIEngine(served.url, served.tok, model=MODEL_NAME, max_retries=0, token_ids=True,
                      extra_body={"logit_bias": {str(one[0]): 100.0}}) as eng:
        c = asyncio.run(eng.agenerate(encode(served, "x = "), params))
    assert c.ids == sampled and len(c.logprobs) == 6 and all(lp <= 0 for lp in c.logprobs)


def _stop_on_a_token_boundary(served, prompt_ids: list[int]) -> tuple[list[int], str]:
    """Greedy ids up to the first token after which the text ends with a 3-character stop string
    that occurs nowhere earlier and is split across tokens: the server stops exactly there."""
    gen = greedy_ids(served, prompt_ids, 16)
    for j in range(2, len(gen) + 1):
        text = served.tok.decode(gen[:j])
        stop = text[-3:]
        if (len(text) >= 4 and "\ufffd" not in text and served.tok.eos_token_id not in gen[:j]
                and text.find(stop) == len(text) - 3 and len(served.tok.decode(gen[j - 1:j])) < 3):
            return gen[:j], stop
    raise AssertionError(f"no usable stop string in {served.tok.decode(gen)!r}")


def test_token_mode_stop_string(served, token_engine):
    prompt = encode(served, "So the answer is ")
    expected, stop = _stop_on_a_token_boundary(served, prompt)
    c = asyncio.run(token_engine.agenerate(prompt, GREEDY.with_(max_new_tokens=16), stop=(stop, "\x00never")))
    assert c.end == "stop" and c.stop == stop
    assert c.ids == expected and served.tok.decode(c.ids).endswith(stop)
    assert len(c.logprobs) == len(c.ids)


def test_token_mode_eos_is_not_doubled(served):
    eos = served.tok.eos_token_id
    with OpenAIEngine(served.url, served.tok, model=MODEL_NAME, max_retries=0, token_ids=True,
                      extra_body={"logit_bias": {str(eos): 100.0}}) as eng:
        c = asyncio.run(eng.agenerate(encode(served, "x = 7 * 11\n"), GREEDY, stop=("</code>",)))
    assert c.end == "eos" and c.stop is None
    assert c.ids == [eos] and len(c.logprobs) == 1 and c.logprobs[0] <= 0


def test_token_mode_length(served, token_engine):
    prompt = encode(served, "print(x)\n")
    c = asyncio.run(token_engine.agenerate(prompt, GREEDY.with_(max_new_tokens=5)))
    assert c.end == "length" and c.stop is None
    assert c.ids == greedy_ids(served, prompt, 5) and len(c.logprobs) == 5
    assert token_engine.stats.decode_tokens == 5


def test_token_mode_needs_a_server_with_token_ids(served, token_engine):
    with server_state(served, token_ids=False), pytest.raises(EngineError) as info:
        asyncio.run(token_engine.agenerate(encode(served, "print("), GREEDY))
    message = str(info.value)
    assert served.url in message and "return_token_ids" in message and "vLLM >= 0.10.2" in message


def test_token_mode_refuses_misaligned_logprobs(served, token_engine):
    with server_state(served, drop_logprob=True), pytest.raises(EngineError, match="logprobs do not line up"):
        asyncio.run(token_engine.agenerate(encode(served, "print("), GREEDY.with_(max_new_tokens=4)))


def test_parse_token_choice():
    def choice(finish, ids=(5, 6), lps=(-0.5, -1.0), **extra):
        return SimpleNamespace(finish_reason=finish, token_ids=list(ids),
                               logprobs=SimpleNamespace(token_logprobs=list(lps)), **extra)

    assert parse_token_choice(choice("length", stop_reason=None)) == ([5, 6], [-0.5, -1.0], "length", None)
    assert parse_token_choice(choice("stop", stop_reason="</code>")) == ([5, 6], [-0.5, -1.0], "stop", "</code>")
    assert parse_token_choice(choice("stop", stop_reason=None))[2:] == ("eos", None)  # EOS: already in the ids
    assert parse_token_choice(choice("stop", stop_reason=151645)) == ([5, 6], [-0.5, -1.0], "eos", None)
    assert parse_token_choice(choice("length", lps=(-0.5, 1e-7)))[1] == [-0.5, 0.0]  # clamped to <= 0
    # the fields pydantic keeps as extras are read from model_extra too
    extra = SimpleNamespace(finish_reason="stop", logprobs=SimpleNamespace(token_logprobs=[-0.1]),
                            model_extra={"token_ids": [9], "stop_reason": "</a>"})
    assert parse_token_choice(extra) == ([9], [-0.1], "stop", "</a>")
    for bad, match in [
        (SimpleNamespace(finish_reason="stop", stop_reason=None, logprobs=None), "vLLM >= 0.10.2"),  # absent
        (SimpleNamespace(finish_reason="stop", stop_reason=None, token_ids=None, logprobs=None), "return_token_ids"),
        (choice("length", lps=(-0.5,)), "1 logprobs for 2 ids"),
        (choice("length", lps=(-0.5, None)), "non-finite"),
        (choice("length", lps=(-0.5, -math.inf)), "non-finite"),
        (choice("length", lps=(-0.5, math.nan)), "non-finite"),
        (SimpleNamespace(finish_reason="length", token_ids=[1], logprobs=None), "none logprobs for 1 ids"),
        (choice("abort", stop_reason=None), "abort"),
        (choice("stop"), "stop_reason absent"),  # not vLLM: EOS and a stop string look the same
    ]:
        with pytest.raises(EngineError, match=match):
            parse_token_choice(bad)
