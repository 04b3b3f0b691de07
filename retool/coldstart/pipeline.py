"""``retool coldstart synth`` and ``retool coldstart rewrite``: verified SFT data on disk.

Both write chat-format lines ``{"id", "messages": [user, assistant], "answer"}`` (the assistant
turn holds the interleaved trace, interpreter outputs real) and ``stats.json`` with what was kept
and dropped at each stage and why. ``rewrite`` is resumable (finished ids are read back from its
files and skipped; each verdict is appended and flushed as it lands), deduplicates questions, and
also saves the kept lines as a ``datasets`` dataset (``DIR/dataset``).

Not here: the generator (``synth``), the checks (``verify``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

from retool.coldstart.synth import GENERATOR_VERSION, Example, generate, is_heldout
from retool.coldstart.convert import verify_as
from retool.coldstart.records import record, write_jsonl
from retool.coldstart.verify import STAGES
from retool.engines.spec import EngineSpec
from retool.protocol import get_dialect
from retool.sandbox.base import SandboxLimits, Session
from retool.sandbox.spec import SandboxSpec

PROMPT_FILE = Path(__file__).resolve().parents[2] / "coldstart_data" / "rewrite_prompt.md"
SOLUTION_FIELDS = ("solution", "text_solution", "reasoning", "response", "output")


# -- synth --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthConfig:
    n: int
    out: str
    seed: int = 0
    heldout: float = 0.1
    sandbox: SandboxSpec = SandboxSpec(limits=SandboxLimits(timeout_s=30))  # one session runs every trace
    dialect: str = "retool"  # the data's dialect (traces are written in ReTool's, then converted)
    families: str = "synth"  # a key of GENERATORS: the seven tight families, the broad general ones, or multistep


def _generators() -> dict[str, tuple[str, dict]]:
    from retool.coldstart.synth import FAMILIES
    from retool.coldstart.synth_general import GENERAL_FAMILIES, GENERAL_VERSION
    from retool.coldstart.synth_multistep import MULTISTEP_FAMILIES, MULTISTEP_VERSION

    return {"synth": (GENERATOR_VERSION, FAMILIES), "general": (GENERAL_VERSION, GENERAL_FAMILIES),
            "multistep": (MULTISTEP_VERSION, MULTISTEP_FAMILIES)}


GENERATORS = ("synth", "general", "multistep")


def _check_state(session: Session, examples: list[Example]) -> None:
    """Later cells of a multi-step trace use the names earlier cells defined: a stateless session
    would fail every one of them, so refuse it up front rather than drop the whole set."""
    if not session.stateful and any(e.code_solution.count("<code>") > 1 for e in examples):
        raise ValueError(f"these traces have dependent cells and need a stateful sandbox (jupyter or docker); "
                         f"{session.backend!r} starts every cell empty")


def _tag_dialect(name: str):
    """The dialect traces are written in here; chat data is made from them afterwards, against a
    model's template (``coldstart convert --to chat --model M``)."""
    dialect = get_dialect(name)
    if dialect.structured:
        raise ValueError("traces are written in a tag dialect (retool, fenced); make chat data from them with "
                         "`retool coldstart convert --input FILE --to chat --model TOKENIZER`")
    return dialect


def run_synth(config: SynthConfig, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Generate, verify (code variant executed in a sandbox, both variants graded), write
    ``code.jsonl``, ``text.jsonl``, ``heldout.jsonl`` and ``stats.json``."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    written_in, dialect = get_dialect("retool"), _tag_dialect(config.dialect)
    if config.families not in GENERATORS:
        raise ValueError(f"unknown families {config.families!r}; known: {', '.join(GENERATORS)}")
    version, families = _generators()[config.families]
    examples = generate(config.n, config.seed, families)
    code_rows, text_rows, heldout_rows = [], [], []
    dropped: Counter[str] = Counter()
    reasons: list[dict[str, str]] = []
    # one session for the whole run: every example defines what its cells use (a later cell of a
    # multi-step example uses its own earlier cells' names; if one of those fails, the trace is dropped there)
    with config.sandbox.session() as session:
        _check_state(session, examples)
        for index, example in enumerate(examples):
            code = verify_as(example.code_solution, example.answer, written_in, dialect, session)
            text = verify_as(example.text_solution, example.answer, written_in, dialect, session, require_code=False)
            for variant, verdict in (("code", code), ("text", text)):
                if not verdict.ok:
                    dropped[f"{variant}:{verdict.stage}"] += 1
                    reasons.append({"id": example.id, "variant": variant, "stage": verdict.stage, "reason": verdict.reason})
            if code.ok and text.ok:
                extra = {"family": example.family}
                if is_heldout(example, config.heldout):
                    heldout_rows.append(record(example.id, example.question, code.text, example.answer, **extra))
                else:
                    code_rows.append(record(example.id, example.question, code.text, example.answer, **extra))
                    text_rows.append(record(example.id, example.question, text.text, example.answer, **extra))
            if progress:
                progress(index + 1, len(examples))
    write_jsonl(out / "code.jsonl", code_rows)
    write_jsonl(out / "text.jsonl", text_rows)
    write_jsonl(out / "heldout.jsonl", heldout_rows)
    stats = {
        "generator_version": version, "seed": config.seed, "generated": len(examples),
        "heldout_fraction": config.heldout, "train": len(code_rows), "heldout": len(heldout_rows),
        "dropped": dict(dropped), "acceptance_rate": round((len(code_rows) + len(heldout_rows)) / max(len(examples), 1), 4),
        "families": dict(Counter(r["family"] for r in code_rows)),
        "heldout_families": dict(Counter(r["family"] for r in heldout_rows)),
        "rejections": reasons[:100],
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


# -- rewrite ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trace:
    id: str
    question: str
    solution: str
    answer: str


def read_traces(spec: str) -> Iterator[tuple[Trace | None, str]]:
    """(trace, where) per record of a jsonl/json/parquet/hf:NAME source; ``None`` with a reason
    for a record without a question, a solution or an answer (it is counted, not fatal)."""
    from retool.datasets import DatasetError, iter_records, record_problem

    for index, (where, rec) in enumerate(iter_records(spec)):
        try:
            if isinstance(rec, DatasetError):
                raise rec
            problem = record_problem(rec, where, "trace", index)
        except DatasetError as exc:
            yield None, str(exc)
            continue
        solution = next((rec[k] for k in SOLUTION_FIELDS if isinstance(rec.get(k), str) and rec[k].strip()), None)
        if solution is None:
            yield None, f"{where}: no text solution (looked for {', '.join(SOLUTION_FIELDS)})"
            continue
        yield Trace(problem.id, problem.problem, solution, problem.answer), where


def question_key(question: str) -> str:
    return hashlib.sha256(re.sub(r"\s+", " ", question).strip().lower().encode()).hexdigest()


def rewrite_prompt(trace: Trace, template: str | None = None) -> str:
    template = template if template is not None else PROMPT_FILE.read_text(encoding="utf-8")
    return template.replace("{question}", trace.question).replace("{solution}", trace.solution)


def make_rewriter(engine: EngineSpec, max_new_tokens: int, concurrency: int):
    """The rewriting model: an OpenAI-compatible server's chat endpoint (``openai``: the served name
    is ``--served-model`` or ``--model``), or a local engine through the model's chat template.
    Returns ``(rewriter, engine to close or None)``."""
    if engine.kind == "openai":
        name = engine.served_model or engine.model
        if not name:
            raise ValueError("the rewriter needs --model (or --served-model): the model's name at the server")
        return ChatRewriter(engine.base_url, name, engine.api_key, max_tokens=max_new_tokens), None
    local = engine.build(max_batch=concurrency)
    return EngineRewriter(local, max_new_tokens=max_new_tokens), local


class ChatRewriter:
    """An OpenAI-compatible chat endpoint as the rewriter."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, temperature: float = 0.0,
                 max_tokens: int = 4096) -> None:
        import openai

        self.client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "unused", max_retries=2, timeout=600)
        self.model, self.temperature, self.max_tokens = model, temperature, max_tokens

    async def __call__(self, prompt: str) -> str:
        reply = await self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": prompt}], temperature=self.temperature,
            max_tokens=self.max_tokens)
        return reply.choices[0].message.content or ""


class EngineRewriter:
    """A local engine (hf or vllm) as the rewriter, through the model's chat template."""

    def __init__(self, engine, temperature: float = 0.0, max_new_tokens: int = 4096) -> None:
        from retool.engines.base import SamplingParams

        self.engine, self.params = engine, SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)

    async def __call__(self, prompt: str) -> str:
        from retool.rollout import render_prompt

        ids = render_prompt(self.engine.tokenizer, [{"role": "user", "content": prompt}])
        completion = await self.engine.agenerate(ids, self.params)
        return self.engine.tokenizer.decode(completion.ids, skip_special_tokens=True)


@dataclass(frozen=True)
class RewriteConfig:
    input: str
    out: str
    concurrency: int = 4
    limit: int | None = None
    sandbox: SandboxSpec = SandboxSpec()
    dialect: str = "retool"  # the data's dialect (the rewrite prompt asks for ReTool's; kept traces are converted)


def _read_done(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a crash: that trace is simply redone
    return rows


async def run_rewrite(config: RewriteConfig, rewriter: Callable[[str], Awaitable[str]],
                      progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    kept_path, rejected_path = out / "rewritten.jsonl", out / "rejects.log.jsonl"
    kept, rejected = _read_done(kept_path), _read_done(rejected_path)
    done_ids = {r["id"] for r in kept} | {r["id"] for r in rejected}
    seen_questions = {question_key(r["messages"][0]["content"]) for r in kept}
    seen_questions |= {r["key"] for r in rejected if "key" in r}
    template = PROMPT_FILE.read_text(encoding="utf-8")
    written_in, dialect = get_dialect("retool"), _tag_dialect(config.dialect)

    todo: list[Trace] = []
    for trace, where in read_traces(config.input):
        if trace is None:
            rejected.append({"id": f"bad:{where[:80]}", "stage": "input", "reason": where})
            continue
        if trace.id in done_ids:
            continue
        key = question_key(trace.question)
        if key in seen_questions:
            rejected.append({"id": trace.id, "stage": "duplicate", "reason": "question seen before", "key": key})
            continue
        seen_questions.add(key)
        todo.append(trace)
        if config.limit is not None and len(todo) >= config.limit:
            break

    lock = asyncio.Lock()
    slots = asyncio.Semaphore(config.concurrency)
    finished = 0
    with config.sandbox.pool(size=config.concurrency) as pool, \
            kept_path.open("a", encoding="utf-8") as kept_file, rejected_path.open("a", encoding="utf-8") as rej_file:

        def check(text: str, trace: Trace):
            with pool.session() as session:
                return verify_as(text, trace.answer, written_in, dialect, session)

        async def one(trace: Trace) -> None:
            nonlocal finished
            async with slots:
                try:
                    text = (await rewriter(rewrite_prompt(trace, template))).strip()
                except Exception as exc:  # noqa: BLE001 - the rewriter failing is a verdict, not a crash
                    verdict_row = {"id": trace.id, "stage": "rewrite", "reason": f"{type(exc).__name__}: {exc}"[:300],
                                   "key": question_key(trace.question)}
                    row, target = verdict_row, rej_file
                else:
                    verdict = await asyncio.to_thread(check, text, trace)
                    if verdict.ok:
                        row, target = record(trace.id, trace.question, verdict.text, trace.answer), kept_file
                    else:
                        row = {"id": trace.id, "stage": verdict.stage, "reason": verdict.reason,
                               "key": question_key(trace.question), "text": text[:2000]}
                        target = rej_file
            async with lock:
                target.write(json.dumps(row, ensure_ascii=False) + "\n")
                target.flush()
                (kept if target is kept_file else rejected).append(row)
                finished += 1
                if progress:
                    progress(finished, len(todo))

        await asyncio.gather(*(one(t) for t in todo))

    stats = {
        "input": config.input, "kept": len(kept),
        "dropped": dict(Counter(r["stage"] for r in rejected)),
        "stages": ["input", "duplicate", "rewrite", *STAGES, "convert"],
        "acceptance_rate": round(len(kept) / max(len(kept) + sum(1 for r in rejected if r["stage"] in
                                                                  ("rewrite", *STAGES, "convert")), 1), 4),
        "reasons": dict(Counter(f"{r['stage']}: {str(r.get('reason'))[:80]}" for r in rejected).most_common(20)),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    _save_dataset(kept, out / "dataset")
    return stats


def _save_dataset(rows: list[dict[str, Any]], path: Path) -> None:
    import datasets

    columns = {"id": [r["id"] for r in rows], "messages": [r["messages"] for r in rows],
               "answer": [r["answer"] for r in rows]}
    datasets.Dataset.from_dict(columns).save_to_disk(str(path))


