"""retool's rollout against TRL's own tool-calling generation, side by side in one run.

The question a TRL user asks: what does retool's loop buy over ``GRPOTrainer(..., tools=[f])``,
the loop they already have? Both sides get the same model (by default ``peer-chat-smollm2``, a
SmolLM2-135M LoRA trained by ``retool.training.peer_chat_model`` to call the tool through this
template, built on first use; the embedded default writes ``<code>`` tags and makes no chat calls;
a model retool trained in the chat dialect is prompted as its card says), the same
problems and messages (the chat dialect's system prompt, its one worked example with a tool call,
the problem), the same python tool (name, description and parameter, so the prompts are the same
ids: ``same_prompts`` checks it), the same chat template (TRL's ``qwen2_5.jinja``: hermes calls,
prefix-preserving, and one TRL can parse calls from), the same sampling, the same budgets, the
same torch threads and dtype, and the same sandbox backend (jailed Jupyter).

* **retool**: ``Rollout`` on the continuous-batching ``HFEngine``: every trajectory in flight at
  once, each with its own sandbox session; a trajectory whose turn ends in a call runs it and goes
  straight back into the batch while the others keep decoding; its KV cache is kept across turns,
  so a continuation prefills only the tool reply.
* **TRL**: what a TRL user writes: a plain function ``python(code)`` (docstring, typed argument)
  passed as ``tools=[python]``, running the code in one retool sandbox session; ``GRPOConfig`` with
  the budgets (``max_completion_length``, ``max_tool_calling_iterations``), the sampling,
  ``num_generations`` = samples and one generation batch of every prompt, ``use_vllm=False``, on
  the CPU. TRL's own path then runs: ``GRPOTrainer._generate_and_score_completions`` on the first
  batch of the trainer's own dataloader (what a training step calls); its ``_generate`` (prompt
  rendering, the batched ``model.generate``, the tool loop) is what is timed. TRL's loop: the
  batch generates in lock step until its longest member stops, the calls then run one sample after
  another, and each further turn re-prefills every sample's whole history from scratch.

Counted alike: model tokens are the tokens the model sampled that stay in the trajectory (retool's
loss mask, TRL's tool mask; the end-of-turn token included, tool replies and template scaffolding
excluded); tool calls are the calls the model made that were answered (an unreadable one included);
``cells_run`` are those that reached the sandbox. ``speedup_vs_trl`` is the ratio of model tokens
per second. Sampled trajectories differ between the two loops, so ``comparable`` says whether both
did a comparable amount of work (model tokens within ``TOKEN_TOLERANCE``× of each other, and both
sides made at least one tool call).

Deliberately not: a session per sample on the TRL side (a function passed as ``tools=`` cannot tell
which sample calls it; TRL's experimental ``environment_factory`` could, but that is not the
``tools=`` path, and the cells cost the same in one session); vLLM or TRL's transformers
continuous batching (the TRL default, ``model.generate``, is what is measured); the scoring half of
the TRL step (rewards, log-probabilities) in the timing; any training. Numbers are printed, never
asserted by tests.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from retool.bench.rollout import PROBLEMS
from retool.engines.base import SamplingParams
from retool.model_card import read_card
from retool.models import model_folder
from retool.protocol import CHAT
from retool.protocol.chat import TOOL_DESCRIPTION, load_template
from retool.protocol.render import output_text
from retool.rollout import Rollout, RolloutConfig
from retool.sandbox.spec import SandboxSpec
from retool.training.peer_chat_model import NAME, TEMPLATE, ensure_built, template_file
from retool.trajectory import Trajectory

TOKEN_TOLERANCE = 2.0  # comparable: model tokens within this factor of each other (and >= 1 call a side)


@dataclass(frozen=True)
class PeerSide:
    """What one loop did: ``tokens_per_s`` is ``model_tokens / wall_s``; ``prefill_tokens`` the prompt
    tokens its model computed (TRL: the padded batch of every ``generate`` call)."""

    trajectories: int
    model_tokens: int
    tool_tokens: int  # tool replies and template scaffolding inside the trajectories
    tool_calls: int
    cells_run: int
    generate_calls: int
    prefill_tokens: int
    wall_s: float
    tokens_per_s: float


@dataclass(frozen=True)
class PeerBench:
    model: str
    chat_template: str
    problems: int
    samples: int
    max_total_tokens: int
    max_tool_calls: int
    temperature: float
    top_p: float
    torch_threads: int
    same_prompts: bool  # both sides fed the model the same prompt ids
    retool: PeerSide
    trl: PeerSide
    speedup_vs_trl: float  # retool tokens/s ÷ TRL tokens/s
    comparable: dict[str, Any]
    notes: list[str]


def trl_template(name: str = TEMPLATE) -> Path:
    """A chat template TRL ships (found without importing TRL): the one the peer model was trained on."""
    return template_file(name)


def peer_model(model: str | None) -> str:
    """The model to run: ``model``, or (None) the peer model, built first when it is not there."""
    return model if model is not None else str(ensure_built())


def prompted_as_trained(config: RolloutConfig, model: str | None) -> RolloutConfig:
    """``config`` with the demonstration and system prompt of ``model``'s prompt card when it was
    trained in the chat dialect (a card for another dialect says nothing about this prompt)."""
    card = read_card(model_folder(model)) if model is not None else None
    if card is None or card.dialect != "chat":
        return config
    return replace(config, few_shot=card.few_shot, system_prompt=card.system_prompt)


def peer_config(max_total_tokens: int = 320, max_tool_calls: int = 4, template: str = TEMPLATE) -> RolloutConfig:
    """The benchmark's settings, both sides: the chat dialect on TRL's template, the rollout
    benchmark's sampling (temperature 0.7, top-p 0.95, seeded) and budgets."""
    return RolloutConfig(dialect="chat", chat_template=str(trl_template(template)), max_total_tokens=max_total_tokens,
                         max_tool_calls=max_tool_calls, sampling=SamplingParams(temperature=0.7, top_p=0.95, seed=0))


def bench_messages(problems: list[str], config: RolloutConfig) -> list[list[dict[str, Any]]]:
    """The messages both sides start from: system prompt, worked example (with its tool call), problem."""
    return [CHAT.messages(p, few_shot=config.few_shot, system_prompt=config.system_prompt) for p in problems]


# -- retool ---------------------------------------------------------------------------------------

def run_retool_side(model, tokenizer, pool, messages: list[list[dict[str, Any]]], samples: int,
                    config: RolloutConfig) -> tuple[PeerSide, list[Trajectory], int]:
    """Every trajectory through ``Rollout`` on one ``HFEngine``; also the torch threads it ran with."""
    import torch

    from retool.engines.hf import HFEngine

    engine = HFEngine(model, tokenizer, max_batch=len(messages) * samples)
    try:
        threads = torch.get_num_threads()
        rollout = Rollout(engine, pool, config)
        prompts = [rollout.messages_ids(m) for m in messages]
        trajectories = rollout.run([p for p in prompts for _ in range(samples)])
        prefill = engine.stats.prefill_tokens
    finally:
        engine.close()
    calls = [c for t in trajectories for c in t.tool_calls]
    tokens = sum(t.num_model_tokens for t in trajectories)
    wall = rollout.stats.wall_s
    side = PeerSide(len(trajectories), tokens, sum(t.num_tool_tokens for t in trajectories), len(calls),
                    sum(c.invalid is None for c in calls), rollout.stats.generate_calls, prefill, wall,
                    tokens / wall if wall else 0.0)
    return side, trajectories, threads


# -- TRL ------------------------------------------------------------------------------------------

def python_tool_function(session, config: RolloutConfig, ran: list[str]) -> Callable[..., str]:
    """The interpreter as a TRL user writes a tool: a typed, documented function (its schema is the
    chat dialect's ``python`` tool: no return annotation, which would add a ``return`` key). The
    reply is what retool shows the model for the same cell."""
    def python(code: str):
        ran.append(code)
        return output_text(session.run(code), config.output_head_chars, config.output_tail_chars)

    python.__doc__ = f"{TOOL_DESCRIPTION}\n\nArgs:\n    code: The Python code to run.\n"
    return python


def _no_reward(prompts, completions, **kwargs) -> list[float]:
    return [0.0] * len(prompts)  # nothing is trained: GRPOTrainer needs a reward to be built


@dataclass
class TrlRun:
    """TRL's own outputs for the batch (``_generate``'s return value) and what was timed."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    tool_mask: list[list[int]] | None
    completions: list[list[dict[str, Any]]]
    side: PeerSide


def run_trl_side(model, tokenizer, session, messages: list[list[dict[str, Any]]], samples: int,
                 config: RolloutConfig, threads: int) -> TrlRun:
    """One batch through ``GRPOTrainer(tools=[python])``'s own generation and tool loop, on
    ``threads`` torch threads; the code runs in ``session``."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    tok = copy.deepcopy(tokenizer)  # TRL sets its response parser on it; retool's stays as it was
    tok.chat_template = load_template(config.chat_template) or tok.chat_template
    ran: list[str] = []
    n, s = len(messages) * samples, config.sampling
    with tempfile.TemporaryDirectory(prefix="retool-peer-") as scratch:
        args = GRPOConfig(
            output_dir=scratch, per_device_train_batch_size=n, gradient_accumulation_steps=1,
            steps_per_generation=1, num_generations=samples, max_completion_length=config.max_total_tokens,
            max_tool_calling_iterations=config.max_tool_calls, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
            seed=s.seed or 0, shuffle_dataset=False, use_vllm=False, use_cpu=True, bf16=False, fp16=False, beta=0.0,
            report_to="none", save_strategy="no", logging_strategy="no", log_completions=False)
        trainer = GRPOTrainer(model=model, reward_funcs=_no_reward, args=args, processing_class=tok,
                              train_dataset=Dataset.from_list([{"prompt": m} for m in messages]),
                              tools=[python_tool_function(session, config, ran)])
        batch = next(iter(trainer.get_train_dataloader()))  # each prompt ``samples`` times, in order
        timed: dict[str, Any] = {"prefill": 0, "calls": 0}
        generate, single_turn = trainer._generate, trainer._generate_single_turn

        def timed_generate(prompts):
            started = time.perf_counter()
            timed["out"] = generate(prompts)
            timed["wall"] = time.perf_counter() - started
            return timed["out"]

        def counted_turn(prompt_ids, *rest, **kwargs):  # a batched generate: the padded batch is prefilled
            timed["calls"] += 1
            timed["prefill"] += len(prompt_ids) * max(map(len, prompt_ids))
            return single_turn(prompt_ids, *rest, **kwargs)

        trainer._generate, trainer._generate_single_turn = timed_generate, counted_turn
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            trainer._generate_and_score_completions(batch)
        finally:
            torch.set_num_threads(before)
    prompt_ids, completion_ids, tool_mask, completions = timed["out"][:4]
    masks = tool_mask if tool_mask is not None else [[1] * len(c) for c in completion_ids]
    tokens = sum(map(sum, masks))
    answered = sum(m.get("role") == "tool" for turns in completions for m in turns)
    wall = timed["wall"]
    side = PeerSide(len(completion_ids), tokens, sum(map(len, completion_ids)) - tokens, answered, len(ran),
                    timed["calls"], timed["prefill"], wall, tokens / wall if wall else 0.0)
    return TrlRun([list(p) for p in prompt_ids], [list(c) for c in completion_ids],
                  None if tool_mask is None else [list(m) for m in tool_mask], completions, side)


# -- both -----------------------------------------------------------------------------------------

def compare(ours: PeerSide, theirs: PeerSide, tolerance: float = TOKEN_TOLERANCE) -> dict[str, Any]:
    """Whether the two sides did comparable work: model tokens within ``tolerance``× and a tool call each."""
    tokens = ours.model_tokens / theirs.model_tokens if theirs.model_tokens else None
    calls = ours.tool_calls / theirs.tool_calls if theirs.tool_calls else None
    within = (tokens is not None and 1 / tolerance <= tokens <= tolerance and ours.tool_calls >= 1
              and theirs.tool_calls >= 1)
    return {"model_tokens_ratio": tokens, "tool_calls_ratio": calls,
            "tolerance": f"model tokens within {tolerance:g}x of each other and at least one tool call on each side",
            "within_tolerance": within}


def peer_report(ours: PeerSide, theirs: PeerSide, *, same_prompts: bool, config: RolloutConfig, problems: int,
                samples: int, threads: int, model: str = "embedded") -> PeerBench:
    comparable = compare(ours, theirs)
    notes = [
        "retool: Rollout on HFEngine (continuous batching, KV cache kept across tool turns), every trajectory in "
        "flight at once, a sandbox session each; a trajectory's calls run while the others keep decoding",
        "TRL: GRPOTrainer(tools=[python])._generate_and_score_completions on its dataloader's first batch; timed: "
        "its _generate (model.generate on the batch in lock step, then each sample's calls one after another in "
        "one shared session, then a fresh generate that re-prefills every calling sample's whole history)",
        f"TRL's per-turn budget is max_completion_length ({config.max_total_tokens}) new tokens, cut back to what is "
        "left of the budget after generating; the cut tokens are generated but not counted",
        f"TRL caps tool turns (max_tool_calling_iterations={config.max_tool_calls}), retool caps calls "
        f"(max_tool_calls={config.max_tool_calls}); a turn rarely holds more than one call",
        "TRL reads calls with transformers' parse_response (strict JSON: an unreadable call is text and ends the "
        "sample), retool with its tolerant reader (answered with an error and counted)",
    ]
    if not (ours.tool_calls and theirs.tool_calls):
        notes.append(f"tool calls: retool {ours.tool_calls}, TRL {theirs.tool_calls}: the model called no tool on "
                     f"at least one side, so the sandbox did not enter that side's time")
    if not same_prompts:
        notes.append("the two sides' prompt ids differ: the tool schemas or the templates did not render alike")
    speedup = ours.tokens_per_s / theirs.tokens_per_s if theirs.tokens_per_s else float("inf")
    s = config.sampling
    return PeerBench(model, Path(config.chat_template or "tokenizer's own").name, problems, samples,
                     config.max_total_tokens, config.max_tool_calls, s.temperature, s.top_p, threads, same_prompts,
                     ours, theirs, speedup, comparable, notes)


def run_peer_bench(problems: int = 8, samples: int = 4, config: RolloutConfig | None = None,
                   sandbox: SandboxSpec = SandboxSpec("jupyter"), model: str | None = None,
                   loaded: tuple[Any, Any] | None = None) -> PeerBench:
    """Both sides on the first ``problems`` of the rollout benchmark's problems, ``samples`` each, on
    ``model`` (a name ``retool.models`` resolves; None: the peer model, ``peer_model``) or ``loaded``,
    a ``(model, tokenizer)`` already in memory."""
    from retool.models import load_model

    config = config or peer_config()
    if config.dialect != "chat":
        config = replace(config, dialect="chat")  # both sides use the chat template's tool calls
    label = type(loaded[0]).__name__ if loaded is not None else model or NAME
    path = None if loaded is not None else peer_model(model)
    config = prompted_as_trained(config, path)
    lm, tokenizer = loaded if loaded is not None else load_model(path)
    messages = bench_messages(PROBLEMS[:problems], config)
    n = len(messages) * samples
    with sandbox.pool(size=n) as pool:
        pool.wait_ready(timeout=max(120.0, 10.0 * n))
        _warm_up(lm, tokenizer)  # the first forward passes of a process are slow; neither side pays them
        ours, trajectories, threads = run_retool_side(lm, tokenizer, pool, messages, samples, config)
        pool.wait_ready(timeout=max(120.0, 10.0 * n))  # the released sessions restart before TRL's clock starts
        with pool.session() as session:
            theirs = run_trl_side(lm, tokenizer, session, messages, samples, config, threads)
    same = theirs.prompt_ids == [t.prompt_ids for t in trajectories]
    report = peer_report(ours, theirs.side, same_prompts=same, config=config, problems=len(messages), samples=samples,
                         threads=threads, model=label)
    card = read_card(model_folder(path)) if path is not None else None
    if card is not None and card.dialect == "chat" and tokenizer.chat_template != load_template(config.chat_template):
        report.notes.append(f"{label} was trained with another chat template than {report.chat_template}")
    return report


def _warm_up(model, tokenizer) -> None:
    import torch

    ids = torch.tensor([tokenizer.encode("Warm up the kernels.", add_special_tokens=False)])
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id)


def as_dict(bench: PeerBench) -> dict[str, Any]:
    return asdict(bench)
