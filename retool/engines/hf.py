"""The transformers engine: continuous batching on CPU or one GPU, with KV reuse across tool turns.

A scheduler thread owns the model. Requests arrive from any number of asyncio tasks; each gets a
slot of ``SlotKVCache``. Every iteration either *prefills* the slots that have new tokens to take
(fresh prompts, or a continuation's interpreter tokens) or *decodes* one token for every slot that
is generating. A slot whose request ended on a stop string is **parked**, cache intact: when the
trajectory comes back with ``previous prompt + completion + interpreter tokens``, the slot is found
by prefix and only the new tokens are computed. Other sequences keep decoding meanwhile, so a
trajectory waiting on the sandbox never stalls the batch. A fresh prompt that shares a prefix with
any slot (the k samples of one problem) copies those columns instead of recomputing them.
A decode pass computes the rows of every slot up to the highest decoding one (the cache is read
as a view), so decoding sequences are kept packed at the lowest slots (``_pack``).

Stop strings are detected on the decoded tail of the generated tokens, so one split across tokens
is still found; the completion ends with the token that completed it. Logprobs are those of the
sampled tokens under the raw distribution (temperature 1, no filtering).

Not here: tensor parallelism, paged attention, speculative decoding — use the vLLM engine on GPUs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from typing import Any

import torch

from retool.engines.base import Completion, Engine, EngineStats, SamplingParams, TokenDelta, find_stop
from retool.engines.hf_slots import Request, Slot, SlotState, common_prefix, eos_ids, next_pow2
from retool.engines.kv_slots import SlotKVCache
from retool.engines.sampling import sample_token

log = logging.getLogger(__name__)

PARKED_PASSES = 2  # a slot parked this many decode passes no longer keeps its place low in the batch

class HFEngine(Engine):
    """Generation with a transformers causal LM. ``max_batch`` bounds concurrent sequences."""

    name = "hf"

    def __init__(
        self,
        model,
        tokenizer,
        max_batch: int = 32,
        capacity: int = 512,
        prefill_chunk: int = 1024,
        cpu_threads: int | None = None,
    ) -> None:
        device = next(model.parameters()).device
        self._threads_before: int | None = None
        if device.type == "cpu":
            # Leave a core to the sandboxes and the event loop: with every core taken, OpenMP's
            # spin-waiting made a decode step 4x slower on 2 cores (measured: 661 vs 152 ms).
            # The setting is process-wide, so close() gives the previous one back (to training).
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(cpu_threads or max(1, (os.cpu_count() or 2) - 1))
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        config = model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
        # every slot up front (growing slots copies the whole buffer); columns grow on demand
        self.cache = SlotKVCache(config.num_hidden_layers, config.num_key_value_heads, head_dim,
                                 max_batch, capacity, dtype, device)
        self.slots = [Slot(i) for i in range(self.cache.slots)]
        self.eos_ids = eos_ids(model, tokenizer)
        self._stats = EngineStats()
        self._inbox: queue.Queue[Request | None] = queue.Queue()
        self._waiting: list[Request] = []
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="hf-engine", daemon=True)
        self._thread.start()

    # -- public -----------------------------------------------------------------------------------

    async def agenerate(self, prompt_ids: list[int], params: SamplingParams, stop: tuple[str, ...] = ()) -> Completion:
        return await self._submit(prompt_ids, params, stop).future

    def _submit(self, prompt_ids: list[int], params: SamplingParams, stop: tuple[str, ...],
                stream: asyncio.Queue | None = None) -> Request:
        if self._closed:
            raise RuntimeError("the engine is closed")
        if not prompt_ids:
            raise ValueError("an empty prompt cannot be continued")
        loop = asyncio.get_running_loop()
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device="cpu").manual_seed(params.seed)
        request = Request(list(prompt_ids), params, tuple(stop), loop.create_future(), loop, generator, stream=stream)
        self._inbox.put(request)
        return request

    async def astream(self, prompt_ids: list[int], params: SamplingParams, stop: tuple[str, ...] = ()):
        """Tokens as they are sampled (``TokenDelta`` per token), then the ``Completion``. Leaving the
        loop early (Ctrl-C in a chat, a dropped HTTP client) stops the generation at the next token."""
        request = self._submit(prompt_ids, params, stop, stream=asyncio.Queue())
        try:
            while True:
                item = await request.stream.get()
                if isinstance(item, Completion):
                    yield item
                    return
                if isinstance(item, BaseException):
                    raise item
                yield TokenDelta((item,))
        finally:
            request.cancelled = True

    @property
    def stats(self) -> EngineStats:
        return self._stats

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._inbox.put(None)
            self._thread.join(timeout=30)
            if self._threads_before is not None:
                torch.set_num_threads(self._threads_before)

    # -- the scheduler thread ----------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            self._loop()
        finally:  # closed (or crashed): nobody may wait forever on a request the engine dropped
            closed = RuntimeError("the engine was closed before this request finished")
            for slot in self.slots:
                if slot.request is not None:
                    self._fail(slot, closed)
            for request in self._waiting:
                _tell(request, None, closed)
            self._waiting = []

    def _loop(self) -> None:
        with torch.inference_mode():
            while not self._closed:
                busy = any(s.state in (SlotState.DECODING, SlotState.PENDING) for s in self.slots)
                if not self._take_requests(block=not busy and not self._waiting):
                    return
                started = time.perf_counter()
                self._admit_waiting()
                self._stats.admission_s += time.perf_counter() - started
                try:
                    if any(s.state == SlotState.PENDING for s in self.slots):
                        self._step([s for s in self.slots if s.state == SlotState.PENDING])
                    elif any(s.state == SlotState.DECODING for s in self.slots):
                        self._pack()
                        self._step([s for s in self.slots if s.state == SlotState.DECODING])
                except Exception as exc:  # noqa: BLE001 - fail the requests in flight, keep serving
                    log.exception("hf engine step failed")
                    for slot in self.slots:
                        if slot.state in (SlotState.DECODING, SlotState.PENDING):
                            self._fail(slot, exc)

    def _take_requests(self, block: bool) -> bool:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            while True:
                if item is None:
                    return False
                self._waiting.append(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            return True

    def _admit_waiting(self) -> None:
        still_waiting = []
        for request in self._waiting:
            if not self._admit(request):
                still_waiting.append(request)
        self._waiting = still_waiting

    def _admit(self, request: Request) -> bool:
        prompt = request.prompt
        if len(prompt) + request.params.max_new_tokens + 2 > self.cache.capacity:
            self.cache.grow(next_pow2(len(prompt) + request.params.max_new_tokens + 2))
        # 1. a parked slot this prompt continues (the same trajectory after a tool call)
        for slot in self.slots:
            if slot.state == SlotState.PARKED and len(slot.fed) < len(prompt) and prompt[: len(slot.fed)] == slot.fed:
                self._assign(slot, request, keep=len(slot.fed))
                return True
        for other in self.slots:  # a slot about to compute this prompt's prefix: wait one pass, then copy it
            if other.state == SlotState.PENDING and common_prefix(other.fed + other.pending, prompt) >= max(len(prompt) // 2, 16):
                return False
        # 2. the longest prefix any slot holds, free slots included (their columns stay until reused)
        best, best_len = None, 0
        for other in self.slots:
            n = common_prefix(other.fed, prompt)
            if n > best_len:
                best, best_len = other, n
        slot = self._free_slot(prefer=best)
        if slot is None:
            return False
        logits = best.prompt_logits if best is not None else None
        if best_len == len(prompt) and logits is not None and logits[0] == len(prompt):
            # the same prompt again (another sample): its columns and its next-token logits are known
            if best is not slot:
                self.cache.copy_prefix(best.index, slot.index, len(prompt))
            slot.fed = list(prompt)
            self._assign(slot, request, len(prompt))
            slot.state, slot.prompt_logits = SlotState.DECODING, logits
            self._sample(slot, logits[1])
            return True
        keep = min(best_len, len(prompt) - 1)
        if keep > 0 and best is not slot:
            self.cache.copy_prefix(best.index, slot.index, keep)
            slot.fed = prompt[:keep]
        self._assign(slot, request, max(keep, 0))
        return True

    def _assign(self, slot: Slot, request: Request, keep: int) -> None:
        slot.fed = slot.fed[:keep]
        slot.prompt_logits = None
        slot.pending = request.prompt[keep:]
        slot.request, slot.state = request, SlotState.PENDING
        slot.generated, slot.logprobs = [], []
        request.cached = keep
        self._stats.requests += 1
        self._stats.cached_tokens += keep

    def _free_slot(self, prefer: Slot | None) -> Slot | None:
        """A slot to take: ``prefer`` if it is free (its columns are reused in place), else the free
        slot holding the least, else the longest-parked one (its trajectory re-prefills if it returns)."""
        free = [s for s in self.slots if s.state == SlotState.FREE]
        if prefer is not None and prefer.state == SlotState.FREE:
            return prefer
        if free:
            return min(free, key=lambda s: len(s.fed))
        parked = [s for s in self.slots if s.state == SlotState.PARKED]
        if parked:
            oldest = min(parked, key=lambda s: s.parked_at)
            oldest.state = SlotState.FREE
            return oldest
        return None

    def _pack(self) -> None:
        """Keep the decoding slots at the lowest indices. A decode pass computes every row up to the
        highest decoding slot (so the cache is read as a view, not gathered), and a free slot below
        it costs a row of work in every pass; a decoding slot above a free one moves down (one copy
        of its columns), and the slot it leaves is free, holding the same columns (still a prefix
        to share). A slot parked for ``PARKED_PASSES`` decode passes or more (its trajectory is
        done, or its cell is slow) trades places with it instead, both caches kept."""
        started = time.perf_counter()
        while True:
            top = next((s for s in reversed(self.slots) if s.state == SlotState.DECODING), None)
            hole = None if top is None else next((s for s in self.slots[: top.index] if self._idle(s)), None)
            if hole is None:
                break
            if hole.state == SlotState.FREE:
                self.cache.copy_prefix(top.index, hole.index, len(top.fed))
                hole.fed, hole.prompt_logits = list(top.fed), top.prompt_logits
            else:
                self.cache.swap(top.index, hole.index, max(len(top.fed), len(hole.fed)))
            low, high = hole.index, top.index
            self.slots[low], self.slots[high] = top, hole
            top.index, hole.index = low, high
            self._stats.slot_moves += 1
        self._stats.bookkeeping_s += time.perf_counter() - started

    def _idle(self, slot: Slot) -> bool:
        return slot.state == SlotState.FREE or (
            slot.state == SlotState.PARKED and self._stats.decode_passes - slot.parked_pass >= PARKED_PASSES)

    # -- one forward pass ---------------------------------------------------------------------------

    def _step(self, active: list[Slot]) -> None:
        began = time.perf_counter()
        decoding = active[0].state == SlotState.DECODING
        if decoding:  # all slots up to the highest active one, so the cache is read as a view
            rows = self.slots[: max(s.index for s in active) + 1]
            feeds = [[s.generated[-1]] if s.state == SlotState.DECODING else [] for s in rows]
        else:
            rows = active
            feeds = [s.pending[: self.prefill_chunk] for s in rows]
        width = max(len(f) for f in feeds)
        pad = self.eos_ids[0] if self.eos_ids else 0
        input_ids = torch.tensor([[pad] * (width - len(f)) + f for f in feeds], device=self.cache.device)
        positions = torch.tensor(
            [[max(len(s.fed) + i - (width - len(f)), 0) for i in range(width)] for s, f in zip(rows, feeds)],
            device=self.cache.device,
        )
        mask = self.cache.prepare([s.index for s in rows], [len(s.fed) for s in rows], [len(f) for f in feeds], width)
        started = time.perf_counter()
        self._stats.bookkeeping_s += started - began
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                         past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1, :].float()
        sampled = time.perf_counter()
        self._stats.busy_s += sampled - started
        self._stats.passes += 1
        if decoding:
            self._stats.decode_passes += 1
            self._stats.decode_rows += len(rows)
        else:
            self._stats.prefill_s += sampled - started
        for row, (slot, feed) in enumerate(zip(rows, feeds)):
            if not feed:
                continue
            slot.fed += feed
            if decoding:
                self._stats.decode_tokens += 1
            else:
                self._stats.prefill_tokens += len(feed)
                slot.pending = slot.pending[len(feed):]
                if slot.pending:
                    continue  # a long prompt takes several passes
                slot.state = SlotState.DECODING
                slot.prompt_logits = (len(slot.fed), logits[row].clone())
            self._sample(slot, logits[row])
        self._stats.sampling_s += time.perf_counter() - sampled

    def _sample(self, slot: Slot, logits: torch.Tensor) -> None:
        request = slot.request
        token = sample_token(logits, request.params, request.generator)
        slot.generated.append(token)
        slot.logprobs.append(float(logits[token] - torch.logsumexp(logits, dim=-1)))
        if request.stream is not None:
            _push(request, token)
        self._check_done(slot)

    def _check_done(self, slot: Slot) -> None:
        request = slot.request
        stop = None
        if request.stop:
            window = max(len(s) for s in request.stop) + 8
            stop = find_stop(self.tokenizer.decode(slot.generated[-window:], skip_special_tokens=False), request.stop)
        if stop is not None:
            self._finish(slot, "stop", stop, park=True)
        elif slot.generated[-1] in self.eos_ids:
            self._finish(slot, "eos")
        elif len(slot.generated) >= request.params.max_new_tokens or request.cancelled:
            self._finish(slot, "length", park=True)

    def _finish(self, slot: Slot, reason: str, stop: str | None = None, park: bool = False) -> None:
        request = slot.request
        completion = Completion(list(slot.generated), list(slot.logprobs), reason, stop,
                                prompt_tokens=len(request.prompt), cached_tokens=request.cached)
        slot.request = None  # a freed slot keeps its columns: a later prompt may share their prefix
        slot.state, slot.parked_at = (SlotState.PARKED, time.monotonic()) if park else (SlotState.FREE, 0.0)
        slot.parked_pass = self._stats.decode_passes
        _tell(request, completion, None)

    def _fail(self, slot: Slot, exc: BaseException) -> None:
        request = slot.request
        slot.state, slot.fed, slot.pending, slot.request, slot.prompt_logits = SlotState.FREE, [], [], None, None
        if request is not None:
            _tell(request, None, exc)


def _tell(request: Request, value: Any, exc: BaseException | None) -> None:
    """Hand the result to whoever waits: a streaming consumer through its queue, else the future,
    on the caller's own event loop (a loop already closed has nobody waiting)."""
    if request.stream is not None:
        _push(request, exc if exc is not None else value)
        return
    try:
        request.loop.call_soon_threadsafe(_resolve, request.future, value, exc)
    except RuntimeError:  # "Event loop is closed": the caller was interrupted and is gone
        pass


def _push(request: Request, item: Any) -> None:
    """Hand a token (or the final Completion / error) to a streaming consumer's queue."""
    try:
        request.loop.call_soon_threadsafe(request.stream.put_nowait, item)
    except RuntimeError:
        pass


def _resolve(future: asyncio.Future, value: Any, exc: BaseException | None) -> None:
    if not future.done():
        future.set_exception(exc) if exc is not None else future.set_result(value)
