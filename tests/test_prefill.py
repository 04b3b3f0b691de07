"""Prefill accounting: the ledger's arithmetic by hand, and the hf engine under a beam's requests
(every child re-sends its parent's prefix) computing each distinct prefix token at most once."""

from __future__ import annotations

import asyncio

from retool.engines.base import Completion, SamplingParams
from retool.engines.hf import HFEngine
from retool.engines.prefill import CURRENT, PrefillLedger, PrefixTrie, record, track
from tiny import tiny_model


def test_the_trie_counts_each_distinct_prefix_position_once():
    trie = PrefixTrie()
    assert trie.insert([1, 2, 3]) == 3
    assert trie.insert([1, 2, 3]) == 0
    assert trie.insert([1, 2, 4, 5]) == 2
    assert trie.insert([9]) == 1 and trie.nodes == 6


def test_the_ledger_divides_computed_by_distinct():
    ledger = PrefillLedger()
    ledger.record([1, 2, 3, 4], Completion([7], [-0.1], "eos", prompt_tokens=4, cached_tokens=0))
    ledger.record([1, 2, 3, 4], Completion([8], [-0.1], "eos", prompt_tokens=4, cached_tokens=4))
    ledger.record([1, 2, 3, 4, 7, 5], Completion([9], [-0.1], "eos", prompt_tokens=6, cached_tokens=4))
    # sent 14, computed 4 + 0 + 2, distinct positions 4 + 2
    assert ledger.counts() == {"requests": 3, "prompt_tokens": 14, "computed_tokens": 6, "distinct_tokens": 6}
    assert ledger.ratio == 1.0
    naive = PrefillLedger()  # an engine without a cache: every prompt computed in full
    for prompt in ([1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4, 7, 5]):
        naive.record(prompt, Completion([], [], "eos", prompt_tokens=len(prompt)))
    assert naive.ratio == 14 / 6
    assert PrefillLedger().ratio is None


def test_tracking_is_per_context_and_nests():
    outer, inner = PrefillLedger(), PrefillLedger()
    done = Completion([1], [-0.1], "eos", prompt_tokens=2)
    record([5, 6], done)  # no ledger: nothing happens
    with track(outer):
        record([5, 6], done)
        with track(inner):
            record([5, 6, 7], done)
        record([5], done)
    assert CURRENT.get() is None
    assert (outer.requests, inner.requests) == (2, 1)


def test_the_hf_engine_prefills_a_beams_prefixes_once():
    model, tok = tiny_model(seed=3)
    ledger = PrefillLedger()
    prompt = tok.encode("We reason step by step: first, the sum of squares; then the remainder")
    tool = [tok.encode(f"\n<interpreter>\n{v}\n</interpreter>\n") for v in (1024, 4950, 7, 42)]
    with HFEngine(model, tok, max_batch=8, capacity=256) as engine:

        async def generate(prefix: list[int], seeds) -> list[Completion]:
            outs = await asyncio.gather(*(engine.agenerate(prefix, SamplingParams(
                max_new_tokens=10, temperature=1.0, seed=s), stop=("</code>",)) for s in seeds))
            for out in outs:
                ledger.record(prefix, out)
            return outs

        async def two_rounds() -> None:
            first = await generate(prompt, (1, 2, 3, 4))  # round 1: width 2 × 2 children of the prompt
            survivors = [prompt + first[i].ids + tool[i] for i in (0, 2)]  # each ran a cell; two kept
            await asyncio.gather(*(generate(prefix, (10 + i, 20 + i)) for i, prefix in enumerate(survivors)))

        asyncio.run(two_rounds())
    assert ledger.requests == 8 and ledger.prompt_tokens > 3 * ledger.distinct_tokens
    assert ledger.ratio <= 1.0  # each distinct prefix token computed at most once (sampled ones come cached)
    assert engine.stats.prefill_tokens == ledger.computed_tokens
