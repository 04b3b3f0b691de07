"""The interpreter loop, for many trajectories at once.

Each trajectory is an asyncio task with its own sandbox session, taken at its first cell and kept
to its end (``LazySession``: text before the first cell needs no interpreter, so a batch larger
than the pool still decodes all at once)::

    generate (stop at the end of a code block)
      └─ block closed → run it in the session → append the rendered output (loss-mask 0) → generate
      └─ answer closed / EOS / budget → done

All tasks share one engine, which batches whatever is in flight: while one trajectory's code runs,
the others keep generating. Token ids are only ever appended; the next turn's input is exactly
``prompt_ids + ids`` (the engine's KV cache then prefills only the interpreter tokens).

Budgets: ``max_tool_calls``, ``max_total_tokens`` (model + interpreter tokens after the prompt)
and the sandbox's per-call timeout. A code block cut off by the token budget is never executed.

Failures that are not the model's — no sandbox session could be had, the engine raised, the
sandbox answered ``infra_error`` — end the trajectory with finish reason ``infra_error`` (and
``finish_detail``) instead of being shown to the model: callers never score or train on it.

A listener (``run_one(..., listener=f)``) sees the trajectory being written: ``TokenDelta``s as the
engine samples them (the engine streams for it) and a ``ToolCallDone`` after each cell, which is how
the chat and the server stream a turn. Cancelling ``run_one`` stops generation at the next token
and interrupts a running cell (``Session.interrupt``), leaving the session usable.

Not here: grading (``retool.grading``), prompts for datasets (callers build ``prompt_ids`` with
``Rollout.prompt_ids``), training.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from retool.budget import BudgetForcing
from retool.engines import prefill
from retool.engines.base import Completion, Engine, SamplingParams, TokenDelta
from retool.engines.routed import affinity
from retool.grading import extract_answer_from_trajectory
from retool.protocol import Dialect, get_dialect
from retool.protocol.chat import ChatFormat, call_code, encode_spans
from retool.protocol.render import output_text
from retool.sandbox.base import ExecResult, ExecStatus, Session
from retool.sandbox.lease import LazySession
from retool.rollout_config import RolloutConfig, render_prompt  # noqa: F401 - re-exported: the loop's settings
from retool.seeds import derive_seed
from retool.trajectory import ToolCall, Trajectory, TrajectoryError

SESSION_WAIT_S = 300.0  # how long a trajectory waits for a sandbox session before it is an infra failure


@dataclass(frozen=True)
class ToolCallDone:
    """A cell ran; ``rendered`` is the text appended for the model (``output_ids`` decode to it)."""

    call: ToolCall
    rendered: str
    output_ids: tuple[int, ...]


Listener = Callable[[TokenDelta | ToolCallDone], None]


@dataclass(frozen=True)
class Step:
    """What one ``Rollout.step`` added to a trajectory: ``ids[start:end]``, and the cell it ran."""

    start: int
    end: int
    call: ToolCall | None = None


@dataclass
class RolloutStats:
    """Where the time went. ``engine_idle_s`` counts time in which no generation was in flight
    while at least one trajectory waited for its sandbox: the engine idling on the interpreter."""

    wall_s: float = 0.0
    engine_idle_s: float = 0.0
    sandbox_s: float = 0.0
    tool_calls: int = 0
    generate_calls: int = 0
    _in_engine: int = 0
    _in_sandbox: int = 0
    _since: float = field(default_factory=time.monotonic)

    def _tick(self) -> None:
        now = time.monotonic()
        if self._in_engine == 0 and self._in_sandbox > 0:
            self.engine_idle_s += now - self._since
        self._since = now

    @property
    def engine_idle_frac(self) -> float:
        return self.engine_idle_s / self.wall_s if self.wall_s else 0.0


class Rollout:
    """Runs trajectories against one engine and one sandbox pool."""

    def __init__(self, engine: Engine, pool, config: RolloutConfig | None = None) -> None:
        self.engine, self.pool = engine, pool
        self.config = config or RolloutConfig()
        self.dialect: Dialect = get_dialect(self.config.dialect)
        self.tokenizer = engine.tokenizer
        # the chat dialect: the tokenizer's template, checked here so a bad one fails before any work
        self.chat: ChatFormat | None = self.config.chat_format(self.tokenizer) if self.dialect.structured else None
        self.stats = RolloutStats()
        c = self.config
        self.budget = BudgetForcing(self.tokenizer, self.dialect, c.max_thinking_tokens, c.min_thinking_tokens, c.extend,
                                    c.extend_with, c.forced_answer_tokens, self.chat) if c.budget_forcing else None

    def prompt_ids(self, problem: str) -> list[int]:
        """The chat-templated prompt that opens a trajectory (system prompt, example, problem)."""
        return self.messages_ids(self.dialect.messages(problem, few_shot=self.config.few_shot, tools=self.config.tools,
                                                       system_prompt=self.config.system_prompt))

    def messages_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        """Messages as the ids that open an assistant turn (chat dialect: the python tool declared)."""
        if self.chat is not None:
            return self.chat.encode(self.chat.render(messages, generation_prompt=True, tools=self.config.tools))
        return render_prompt(self.tokenizer, messages)

    # -- running ------------------------------------------------------------------------------

    def run(self, prompts: list[list[int]], metas: list[dict[str, Any]] | None = None) -> list[Trajectory]:
        """Synchronous wrapper of ``run_many``."""
        return asyncio.run(self.run_many(prompts, metas))

    async def run_many(self, prompts: list[list[int]], metas: list[dict[str, Any]] | None = None) -> list[Trajectory]:
        metas = metas or [{} for _ in prompts]
        started = time.monotonic()
        try:
            return list(await asyncio.gather(*(self.run_one(p, m, i) for i, (p, m) in enumerate(zip(prompts, metas)))))
        finally:
            self.stats.wall_s += time.monotonic() - started

    async def run_one(
        self,
        prompt_ids: list[int],
        meta: dict[str, Any] | None = None,
        index: int = 0,
        session: Session | None = None,
        listener: Listener | None = None,
        traj: Trajectory | None = None,
    ) -> Trajectory:
        """One trajectory, in a fresh pool session or in ``session`` (a conversation's own, kept
        after the turn). Pass ``traj`` to see the partial trajectory if the task is cancelled."""
        traj = traj if traj is not None else Trajectory(list(prompt_ids), meta=dict(meta or {}))
        with affinity():  # several servers (``RoutedEngine``): this trajectory's turns stay on one
            return await self._run_one(traj, session, index, listener)

    async def _run_one(self, traj: Trajectory, session: Session | None, index: int,
                       listener: Listener | None) -> Trajectory:
        if session is not None:
            await self._loop(traj, session, index, listener)
            return traj
        session = LazySession(self.pool, SESSION_WAIT_S)  # taken at the first cell (``retool.sandbox.lease``)
        try:
            await self._loop(traj, session, index, listener)
        finally:
            session.close()
        return traj

    async def _loop(self, traj: Trajectory, session: Session, index: int, listener: Listener | None) -> None:
        while not traj.finished:
            await self.step(traj, session, index=index, listener=listener)

    async def step(self, traj: Trajectory, session: Session, *, index: int = 0,
                   listener: Listener | None = None) -> Step:
        """One step of ``traj``: generate to the next stop; if a code block closed, run it in
        ``session`` and append its output. Finishes the trajectory when an answer, EOS, a budget or
        a failure that is not the model's ends it. The seed of the step derives from the sampling
        seed, ``index`` and where the trajectory stands, so a step is reproducible on its own."""
        cfg, dialect = self.config, self.dialect
        start = len(traj.ids)
        remaining = cfg.max_total_tokens - start
        if remaining <= 0:
            traj.finish("length")
            return Step(start, start)
        seed = None if cfg.sampling.seed is None else derive_seed(cfg.sampling.seed, index, start)
        stops = (self.chat.end_of_turn,) if self.chat is not None else dialect.stop_strings
        if self.budget is not None:  # thinking capped or extended: the marker stops, the cap bounds the call
            remaining, stops = self.budget.plan(traj, cfg.max_total_tokens)
            if remaining <= 0:
                traj.finish("length")
                return Step(start, len(traj.ids))
        params = cfg.sampling.with_(max_new_tokens=remaining, seed=seed)
        try:
            completion = await self._generate(traj.input_ids, params, stops, listener)
        except (TrajectoryError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - the engine failed, not the model
            traj.finish("infra_error", f"engine {self.engine.name}: {type(exc).__name__}: {exc}".splitlines()[0])
            return Step(start, start)
        if self.budget is not None and self.budget.after(traj, completion):
            return Step(start, len(traj.ids))
        traj.append_model(completion.ids, completion.logprobs)
        if self.chat is not None:
            return await self._chat_turn(traj, session, completion, start, listener)
        if completion.end == "stop" and completion.stop == dialect.stop:
            code = dialect.extract_code(self.tokenizer.decode(completion.ids, skip_special_tokens=False))
            if code is None:
                return Step(start, len(traj.ids))  # a stray closing tag, not a block: keep generating
            if len(traj.tool_calls) >= cfg.max_tool_calls:
                traj.finish("max_tool_calls")
                return Step(start, len(traj.ids))
            return await self._run_cell(traj, session, code, start, listener)
        if completion.end == "stop":  # the answer section was closed
            traj.finish("answer")
        elif completion.end == "eos":
            model_text = self.tokenizer.decode(traj.model_ids(), skip_special_tokens=True)
            traj.finish("answer" if dialect.find_answer(model_text) is not None else "eos")
        else:  # out of tokens; an unclosed code block is not executed
            traj.finish("length")
        return Step(start, len(traj.ids))

    async def _chat_turn(self, traj: Trajectory, session: Session, completion: Completion, start: int,
                         listener: Listener | None) -> Step:
        """The chat dialect after a model turn: its calls run in order in the session, each
        answered in the template's tool message (an unreadable call is answered with what is wrong
        with it); no call ends the trajectory."""
        chat, cfg = self.chat, self.config
        assert chat is not None
        ended = completion.end == "eos" or (completion.end == "stop" and completion.stop == chat.end_of_turn)
        if not ended:  # out of tokens: a call cut off is not run
            traj.finish("length")
            return Step(start, len(traj.ids))
        text = chat.turn_text(completion.ids)
        calls = chat.calls(text) if cfg.tools else []
        if not calls:
            # the turn ended on the template's own end-of-turn token (as a stop string, or as EOS: engines
            # differ): the template's trailing text closes the transcript
            if self.tokenizer.decode(completion.ids[-1:], skip_special_tokens=False) == chat.end_of_turn:
                traj.append_tool(chat.encode(chat.after_turn))
            answer = extract_answer_from_trajectory(traj, self.tokenizer, self.dialect)
            traj.finish("answer" if answer is not None else "eos")
            return Step(start, len(traj.ids))
        if len(traj.tool_calls) + len(calls) > cfg.max_tool_calls:
            traj.finish("max_tool_calls")
            return Step(start, len(traj.ids))
        code_end = len(traj.ids)
        client = cfg.client_tool_names
        ran: list[tuple[str, ExecResult, str | None, str]] = []  # code, result, invalid, response
        for call in calls:
            if call.name in client:  # the client runs it: the turn ends after this turn's own python calls
                continue
            code, invalid = call_code(call)
            if invalid is not None:
                result = ExecResult(ExecStatus.ERROR, error=invalid)
                ran.append((code, result, invalid, f"Error: {invalid}"))
                continue
            result = await self._execute(session, code)
            if result.infra_failure:
                traj.record_tool_call(code, result, code_end, (code_end, code_end))
                traj.finish("infra_error", f"sandbox: {result.error}")
                return Step(start, code_end, traj.tool_calls[-1])
            ran.append((code, result, None, output_text(result, cfg.output_head_chars, cfg.output_tail_chars)))
        if any(call.name in client for call in calls):
            # python calls of this turn ran here (their replies wait in the trajectory); the client gets
            # its own calls and, in its next request, sends their results back (``retool serve``)
            for code, result, invalid, response in ran:
                traj.record_tool_call(code, result, code_end, (code_end, code_end), response=response, invalid=invalid)
            traj.meta["client_calls"] = [{"index": i, "name": c.name, "arguments": c.arguments}
                                         for i, c in enumerate(calls) if c.name in client]
            traj.finish("tool_calls")
            return Step(start, len(traj.ids))
        responses = [response for *_, response in ran]
        output_ids, bounds = encode_spans(self.tokenizer, chat.tool_reply(responses), responses)
        room = cfg.max_total_tokens - code_end
        span_start, span_end = traj.append_tool(output_ids[:room])
        last = None
        for (code, result, invalid, response), (lo, hi) in zip(ran, bounds):
            span = (min(span_start + lo, span_end), min(span_start + hi, span_end))
            last = traj.record_tool_call(code, result, code_end, span, response=response, invalid=invalid)
            if listener is not None:
                listener(ToolCallDone(last, response, tuple(traj.ids[span[0]:span[1]])))
        if len(output_ids) > room:
            traj.finish("length")
        self._cap_invalid_calls(traj)
        return Step(start, len(traj.ids), last)

    async def _run_cell(self, traj: Trajectory, session: Session, code: str, start: int,
                        listener: Listener | None) -> Step:
        cfg = self.config
        code_end = len(traj.ids)
        result = await self._execute(session, code)
        if result.infra_failure:  # shown to the model it would be a fake failure of its code
            call = traj.record_tool_call(code, result, code_end, (code_end, code_end))
            traj.finish("infra_error", f"sandbox: {result.error}")
            return Step(start, code_end, call)
        rendered = self.dialect.render_output(result, cfg.output_head_chars, cfg.output_tail_chars)
        output_ids = self.tokenizer.encode(rendered, add_special_tokens=False)
        room = cfg.max_total_tokens - code_end
        span = traj.append_tool(output_ids[:room])
        call = traj.record_tool_call(code, result, code_end, span)
        if listener is not None:
            listener(ToolCallDone(call, rendered, tuple(output_ids[:room])))
        if len(output_ids) > room:
            traj.finish("length")
        self._cap_invalid_calls(traj)
        return Step(start, len(traj.ids), call)

    def _cap_invalid_calls(self, traj: Trajectory) -> None:
        """``max_invalid_calls_in_a_row``: the last n calls were all malformed, so the answer ends
        (its output for them is already appended: the transcript stays what the model saw)."""
        n = self.config.max_invalid_calls_in_a_row
        if n is None or traj.finished or len(traj.tool_calls) < n:
            return
        if all(call.malformed for call in traj.tool_calls[-n:]):
            traj.finish("invalid_calls", f"{n} malformed tool calls in a row")

    async def _generate(self, input_ids: list[int], params: SamplingParams, stop: tuple[str, ...],
                        listener: Listener | None = None) -> Completion:
        self._enter("_in_engine")
        self.stats.generate_calls += 1
        try:
            completion = await self._complete(input_ids, params, stop, listener)
        finally:
            self._leave("_in_engine")
        prefill.record(input_ids, completion)  # a search's prefill ratio (``retool.engines.prefill``)
        return completion

    async def _complete(self, input_ids: list[int], params: SamplingParams, stop: tuple[str, ...],
                        listener: Listener | None) -> Completion:
        if listener is None:
            return await self.engine.agenerate(input_ids, params, stop)
        stream = self.engine.astream(input_ids, params, stop)
        try:
            async for item in stream:
                if isinstance(item, Completion):
                    return item
                listener(item)
        finally:
            await stream.aclose()  # on cancellation too: the engine stops this sequence
        raise RuntimeError(f"the {self.engine.name} engine's stream ended without a completion")

    async def _execute(self, session: Session, code: str) -> ExecResult:
        self._enter("_in_sandbox")
        started = time.monotonic()
        cell = asyncio.ensure_future(session.arun(code))  # the session's own cell timeout
        try:
            return await asyncio.shield(cell)
        except asyncio.CancelledError:
            # the cell runs on a worker thread: stop it, and wait so the session is free again
            while not cell.done():  # again until it lands: the first may beat the cell's start
                session.interrupt()
                try:
                    await asyncio.wait([cell], timeout=0.2)
                except asyncio.CancelledError:
                    continue  # cancelled again (anyio cancels until done): the session must be free first
            raise
        finally:
            self.stats.sandbox_s += time.monotonic() - started
            self.stats.tool_calls += 1
            self._leave("_in_sandbox")

    def _enter(self, counter: str) -> None:
        self.stats._tick()
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)

    def _leave(self, counter: str) -> None:
        self.stats._tick()
        setattr(self.stats, counter, getattr(self.stats, counter) - 1)
