"""The transformers engine against a no-cache reference, on a tiny random model."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import torch

from retool.engines.base import SamplingParams
from retool.engines.hf import HFEngine
from tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return tiny_model(seed=1)


def reference_logprobs(model, prompt: list[int], generated: list[int]) -> list[float]:
    """Log-probabilities of ``generated`` after ``prompt`` from one cache-free forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + generated])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return [float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(generated)]


def greedy_reference(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_batched_kv_path_matches_the_no_cache_reference(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompts = [tok.encode(t) for t in ("Let me compute", "We reason step by step: first, the sum", "x", "The answer")]
    with HFEngine(model, tok, max_batch=8, capacity=128) as engine:
        outs = engine.generate(prompts, SamplingParams(max_new_tokens=24, temperature=0))
        for prompt, out in zip(prompts, outs):
            assert out.ids == greedy_reference(model, prompt, len(out.ids))
            assert out.logprobs == pytest.approx(reference_logprobs(model, prompt, out.ids), abs=1e-4)
            assert out.end in ("length", "eos")


def test_a_continuation_prefills_only_the_appended_tokens(model_and_tokenizer):
    model, tok = model_and_tokenizer
    params = SamplingParams(max_new_tokens=16, temperature=0)
    with HFEngine(model, tok, max_batch=4, capacity=256) as engine:
        prompt = tok.encode("Let me compute this with code.")
        first = engine.generate([prompt], params)[0]
        tool = tok.encode("\n<interpreter>\n1024\n</interpreter>\n")
        before = engine.stats.prefill_tokens
        second_prompt = prompt + first.ids + tool
        second = engine.generate([second_prompt], params)[0]
        assert engine.stats.prefill_tokens - before == len(tool) + 1  # the last sampled token + the tool tokens
        assert second.cached_tokens == len(prompt) + len(first.ids) - 1
        assert second.ids == greedy_reference(model, second_prompt, len(second.ids))
        assert second.logprobs == pytest.approx(reference_logprobs(model, second_prompt, second.ids), abs=1e-4)


def test_samples_of_one_prompt_share_its_prefix_and_sampling_is_seeded(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompt = tok.encode("We reason step by step: first, the sum of squares")
    with HFEngine(model, tok, max_batch=8, capacity=256) as engine:

        async def k_samples():
            params = [SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=s) for s in (1, 2, 3, 1)]
            return await asyncio.gather(*(engine.agenerate(prompt, p) for p in params))

        outs = asyncio.run(k_samples())
        assert engine.stats.prefill_tokens == len(prompt)  # computed once; the other samples reuse it all
        assert outs[0].ids == outs[3].ids  # same seed, same sample
        assert len({tuple(o.ids) for o in outs[:3]}) > 1
        for out in outs:
            assert out.logprobs == pytest.approx(reference_logprobs(model, prompt, out.ids), abs=1e-4)


def test_more_requests_than_slots_all_complete_correctly(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompts = [tok.encode(f"number {i} is") for i in range(7)]
    with HFEngine(model, tok, max_batch=2, capacity=64) as engine:
        outs = engine.generate(prompts, SamplingParams(max_new_tokens=10, temperature=0))
    for prompt, out in zip(prompts, outs):
        assert out.ids == greedy_reference(model, prompt, len(out.ids))


class ScriptedLM(torch.nn.Module):
    """A causal 'model' that predicts the next token of one fixed sequence by position: it drives
    the engine down an exact token path (here, a stop string split across several tokens)."""

    def __init__(self, sequence: list[int], vocab: int):
        super().__init__()
        self.sequence, self.vocab = sequence, vocab
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(num_hidden_layers=1, num_key_value_heads=1, hidden_size=4,
                                      num_attention_heads=1, head_dim=4)
        self.generation_config = SimpleNamespace(eos_token_id=None)

    def forward(self, input_ids, position_ids, **kwargs):
        nxt = [self.sequence[min(int(p) + 1, len(self.sequence) - 1)] for p in position_ids[:, -1]]
        logits = torch.full((len(nxt), 1, self.vocab), -10.0)
        logits[torch.arange(len(nxt)), 0, torch.tensor(nxt)] = 10.0
        return SimpleNamespace(logits=logits)


def test_a_stop_string_split_across_tokens_ends_the_completion_at_its_last_token():
    tok = tiny_tokenizer()
    text = "Compute it.\n<code>\n```python\nprint(1)\n```\n</code>\nand then more text"
    sequence = tok.encode(text)
    stop_ids = tok.encode("</code>")
    assert len(stop_ids) > 1  # the interesting case: no single token is the stop string
    engine = HFEngine(ScriptedLM(sequence, len(tok)), tok, max_batch=2, capacity=128)
    try:
        prompt = sequence[:3]
        out = engine.generate([prompt], SamplingParams(max_new_tokens=60, temperature=0), stop=("</code>",))[0]
    finally:
        engine.close()
    decoded = tok.decode(prompt + out.ids)
    assert out.end == "stop" and out.stop == "</code>"
    assert decoded.rstrip("\n").endswith("</code>") and "and then" not in decoded
    assert tok.decode(out.ids[:-1]).endswith("</code>") is False  # the last token completed it


def test_eos_and_length_finish_reasons(model_and_tokenizer):
    tok = tiny_tokenizer()
    sequence = tok.encode("short") + [tok.eos_token_id] + tok.encode("ignored")
    engine = HFEngine(ScriptedLM(sequence, len(tok)), tok, max_batch=2, capacity=64)
    try:
        eos = engine.generate([sequence[:1]], SamplingParams(max_new_tokens=20, temperature=0))[0]
        length = engine.generate([sequence[:1]], SamplingParams(max_new_tokens=1, temperature=0))[0]
    finally:
        engine.close()
    assert eos.end == "eos" and eos.ids[-1] == tok.eos_token_id
    assert length.end == "length" and len(length.ids) == 1


def test_closing_the_engine_fails_requests_in_flight_instead_of_hanging(model_and_tokenizer):
    model, tok = model_and_tokenizer
    engine = HFEngine(model, tok, max_batch=2, capacity=4096)

    async def run():
        task = asyncio.ensure_future(engine.agenerate(tok.encode("x"), SamplingParams(max_new_tokens=3000, temperature=0)))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(engine.close)
        with pytest.raises(RuntimeError, match="closed"):
            await asyncio.wait_for(task, timeout=10)

    asyncio.run(run())


def test_streaming_yields_each_token_then_the_completion(model_and_tokenizer):
    from retool.engines.base import Completion, TokenDelta

    model, tok = model_and_tokenizer
    prompt = tok.encode("Let me compute")
    params = SamplingParams(max_new_tokens=12, temperature=0)
    with HFEngine(model, tok, max_batch=2, capacity=128) as engine:

        async def collect():
            return [item async for item in engine.astream(prompt, params)]

        items = asyncio.run(collect())
        expected = engine.generate([prompt], params)[0]
    deltas, final = items[:-1], items[-1]
    assert isinstance(final, Completion) and all(isinstance(d, TokenDelta) and len(d.ids) == 1 for d in deltas)
    assert [d.ids[0] for d in deltas] == final.ids == expected.ids


def test_leaving_a_stream_early_stops_its_generation(model_and_tokenizer):
    model, tok = model_and_tokenizer
    with HFEngine(model, tok, max_batch=2, capacity=4096) as engine:

        async def first_three():
            stream = engine.astream(tok.encode("x"), SamplingParams(max_new_tokens=3000, temperature=0))
            got = []
            async for item in stream:
                got.append(item)
                if len(got) == 3:
                    break
            await stream.aclose()
            await asyncio.sleep(0.5)
            return got

        assert len(asyncio.run(first_three())) == 3
        assert engine.stats.decode_tokens < 200  # stopped long before 3000
        assert not any(s.state in ("decoding", "pending") for s in engine.slots)


def test_closing_gives_back_the_thread_count_it_lowered(model_and_tokenizer):
    """The engine leaves a core to the sandboxes (a process-wide setting); training after a rollout
    must get every core back."""
    model, tok = model_and_tokenizer
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        engine = HFEngine(model, tok, cpu_threads=1)
        assert torch.get_num_threads() == 1
        engine.close()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_sequences_move_down_when_the_batch_thins_and_stay_exact(model_and_tokenizer):
    # short requests end (parked, then free) while a long one at the top slot keeps decoding: the
    # long one is moved down into their slots and its tokens and logprobs stay the reference's
    model, tok = model_and_tokenizer
    prompts = [tok.encode(t) for t in ("a b", "Let me compute", "x y z", "We reason step by step: first")]
    budgets = [2, 3, 4, 40]
    with HFEngine(model, tok, max_batch=4, capacity=128) as engine:

        async def all_at_once():
            return await asyncio.gather(*(engine.agenerate(p, SamplingParams(max_new_tokens=n, temperature=0))
                                          for p, n in zip(prompts, budgets)))

        outs = asyncio.run(all_at_once())
        assert engine.stats.slot_moves >= 1
        assert engine.stats.decode_passes < sum(budgets)  # the passes were shared
        for prompt, out in zip(prompts, outs):
            assert out.ids == greedy_reference(model, prompt, len(out.ids))
            assert out.logprobs == pytest.approx(reference_logprobs(model, prompt, out.ids), abs=1e-4)
        assert len(outs[-1].ids) == 40 or outs[-1].end == "eos"
