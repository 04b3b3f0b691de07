"""Build the peer benchmark's model, ``peer-chat-smollm2``, with retool's own commands: a LoRA on
SmolLM2-135M-Instruct that calls the python tool in the chat dialect, through TRL's
``trl/chat_templates/qwen2_5.jinja`` (hermes ``<tool_call>{json}</tool_call>``; what ``retool bench
peer`` renders both sides with). The embedded default writes ``<code>`` tags and makes no chat calls.

The stages, each skipped when its output exists (so running the command again resumes):

1. **data**: the first traces of ``coldstart_data/synth/code.jsonl`` and
   ``coldstart_data/general/code.jsonl`` (the embedded adapter's sources; ``SOURCES``) into one file,
   converted to tool-call conversations and checked against the template (``coldstart convert
   --to chat --model smollm2-135m-instruct --chat-template qwen2_5.jinja``: every trace run again);
2. **sft**: LoRA SFT of the untrained base in the chat dialect on that template, no demonstration
   (``training/recipes/peer_chat_sft.yaml``; checkpoints resume); the tokenizer saved with the
   adapter carries the template, so the adapter renders its calls the same way anywhere;
3. **publish**: the final adapter (weights, tokenizer, prompt card) into ``ROOT/adapter``, atomically;
4. **check**: the adapter answers held-out problems of both sources (greedy, the chat dialect, the
   template): the share of answers that call the tool, into ``ROOT/check.json`` and the model card.

Usage: ``python -m retool.training.peer_chat_model [--root DIR]`` (default ``{cache}/peer-chat-smollm2``,
``$RETOOL_CACHE`` honoured); ``retool bench peer`` builds it on first use. Needs the repository's
``coldstart_data/`` and TRL (for its template). Not here: the trainer (``sft``), the benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from retool.engines.base import SamplingParams
from retool.model_card import rollout_for
from retool.models import BASE_MODEL, cache_dir, load_tokenizer
from retool.rollout import RolloutConfig
from retool.sandbox.spec import SandboxSpec

NAME = "peer-chat-smollm2"
TEMPLATE = "qwen2_5"  # TRL's copy of Qwen2.5-Instruct's template: SmolLM2's ChatML tokens, hermes calls
REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "training" / "recipes" / "peer_chat_sft.yaml"
# file -> traces read from its head: 96 traces (86 conversations fit max_length), one epoch = 11 steps of 8 (sized to
# the 15-minute budget on 2 CPU cores; see the model card for the measured minutes)
SOURCES = {"synth": (REPO / "coldstart_data" / "synth" / "code.jsonl", 56),
           "general": (REPO / "coldstart_data" / "general" / "code.jsonl", 40)}
CHECK = {"synth": REPO / "coldstart_data" / "synth" / "heldout.jsonl",
         "general": REPO / "coldstart_data" / "general" / "heldout.jsonl"}  # 4 unseen problems of each
EXPECTED_MINUTES = 10  # the whole build took 9.2 here (2 CPU cores, shared): for the first-use message


def default_root() -> Path:
    return cache_dir() / NAME


def adapter_dir(root: Path | None = None) -> Path:
    return (root or default_root()) / "adapter"


def template_file(name: str = TEMPLATE) -> Path:
    """A chat template TRL ships (found without importing TRL)."""
    spec = importlib.util.find_spec("trl")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("No module named 'trl'", name="trl")
    return Path(spec.origin).parent / "chat_templates" / f"{name}.jinja"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def write_data(root: Path, sources: dict[str, tuple[Path, int]] = SOURCES,
               sandbox: SandboxSpec = SandboxSpec("jupyter")) -> Path:
    """Stage 1: the traces (``sources``: file -> how many from its head) as chat conversations
    checked against the template; the converted file (rejects beside it, with why)."""
    from retool.coldstart.convert import ConvertConfig, convert_file

    source, converted = root / "data" / "source.jsonl", root / "data" / "chat" / "source.jsonl"
    if converted.exists():
        return converted
    if not source.exists():
        missing = [str(p) for p, _ in sources.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"no cold-start traces at {', '.join(missing)}: building {NAME} needs the "
                                    "repository's coldstart_data/")
        _write(source, [r for path, head in sources.values() for r in _rows(path)[:head]])
    stats = convert_file(ConvertConfig(str(source), "chat", str(converted.parent), sandbox, BASE_MODEL,
                                       str(template_file())))
    if not stats["kept"]:
        raise RuntimeError(f"no trace survived the conversion to chat: {stats['dropped']}")
    return converted


def chat_tokenizer(template: Path | None = None):
    """The base's tokenizer with the template as its own chat template (saved with the adapter)."""
    tokenizer = load_tokenizer(BASE_MODEL)
    tokenizer.chat_template = (template or template_file()).read_text()
    return tokenizer


def sft_recipe(root: Path, data: Path):
    """The recipe file with this build's data, output and template (``rollout.chat_template``)."""
    import yaml

    from retool.training.recipe import SFTRecipe, load_recipe

    rollout = {**yaml.safe_load(RECIPE.read_text()).get("rollout", {}), "chat_template": str(template_file())}
    return load_recipe(RECIPE, SFTRecipe, data=[str(data)], output_dir=str(root / "sft"), rollout=rollout)


def train(root: Path, data: Path, max_steps: int | None = None) -> Path:
    """Stage 2: the SFT run (resumes from its checkpoints); its ``final/`` adapter."""
    from retool.training.sft import run_sft

    final = root / "sft" / "final"
    if final.is_dir():
        return final
    recipe = sft_recipe(root, data)
    if max_steps:
        recipe = recipe.model_copy(update={"max_steps": max_steps})
    result = run_sft(recipe, tokenizer=chat_tokenizer())
    if result.interrupted or result.final_dir is None:
        raise KeyboardInterrupt("stopped during SFT; run the command again to resume")
    return result.final_dir


def publish(final: Path, target: Path) -> Path:
    """Stage 3: ``final`` copied to ``target`` whole or not at all."""
    if (target / "adapter_config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".adapter-", dir=target.parent))
    try:
        shutil.copytree(final, tmp, dirs_exist_ok=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def check_config(model: str, max_total_tokens: int = 320, max_tool_calls: int = 4) -> RolloutConfig:
    """The check's setting: greedy, the chat dialect on the template, the model's prompt card."""
    config = RolloutConfig(dialect="chat", chat_template=str(template_file()), max_total_tokens=max_total_tokens,
                           max_tool_calls=max_tool_calls, sampling=SamplingParams(temperature=0.0, seed=0))
    return rollout_for(model, config, explicit=frozenset({"dialect"}))


def tool_call_rate(model: str, problems: list[str], config: RolloutConfig | None = None,
                   sandbox: SandboxSpec = SandboxSpec("jupyter")) -> dict[str, Any]:
    """``model``'s answers to ``problems`` through retool's rollout (``check_config``): how many
    call the tool, the calls, those that ran, and what each answer ended with."""
    from retool.engines.hf import HFEngine
    from retool.models import load_model
    from retool.rollout import Rollout

    config = config or check_config(model)
    lm, tokenizer = load_model(model)
    engine = HFEngine(lm, tokenizer, max_batch=len(problems))
    try:
        with sandbox.pool(size=len(problems)) as pool:
            pool.wait_ready(timeout=max(120.0, 10.0 * len(problems)))
            rollout = Rollout(engine, pool, config)
            trajectories = rollout.run([rollout.prompt_ids(p) for p in problems])
    finally:
        engine.close()
    calls = [c for t in trajectories for c in t.tool_calls]
    calling = sum(bool(t.tool_calls) for t in trajectories)
    return {"problems": len(problems), "answers_with_a_call": calling, "rate": calling / len(problems),
            "tool_calls": len(calls), "calls_run": sum(c.invalid is None for c in calls),
            "finish": [t.finish_reason for t in trajectories]}


def check(root: Path, adapter: Path, per_source: int = 4) -> dict[str, Any]:
    """Stage 4: the tool-call rate on ``per_source`` held-out problems of each source."""
    out = root / "check.json"
    if out.exists():
        return json.loads(out.read_text())
    problems = [r["messages"][0]["content"] for path in CHECK.values() for r in _rows(path)[:per_source]]
    result = {"set": {k: str(p.relative_to(REPO)) for k, p in CHECK.items()}, **tool_call_rate(str(adapter), problems)}
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def build(root: Path | None = None, max_steps: int | None = None, quiet: bool = False) -> Path:
    """Every stage that is not done yet; the adapter folder. ``quiet``: the trainers' and
    converters' prints go to stderr (a caller whose stdout is JSON)."""
    root = root or default_root()
    root.mkdir(parents=True, exist_ok=True)
    timings = root / "timings.json"
    minutes: dict[str, float] = json.loads(timings.read_text()) if timings.exists() else {}
    redirect = contextlib.redirect_stdout(sys.stderr) if quiet else contextlib.nullcontext()
    with redirect:
        stages = (("data", lambda: write_data(root)),
                  ("sft", lambda: train(root, root / "data" / "chat" / "source.jsonl", max_steps)),
                  ("publish", lambda: publish(root / "sft" / "final", adapter_dir(root))),
                  ("check", lambda: check(root, adapter_dir(root))))
        for stage, run in stages:  # a stage done before sees its output and returns at once
            started = time.monotonic()
            run()
            if stage not in minutes:
                minutes[stage] = round((time.monotonic() - started) / 60, 2)
                timings.write_text(json.dumps(minutes) + "\n")
    write_model_card(root, minutes)
    return adapter_dir(root)


def ensure_built(root: Path | None = None) -> Path:
    """The adapter, built first (with a message on stderr) when it is not there yet."""
    root = root or default_root()
    if not (adapter_dir(root) / "adapter_config.json").is_file() or not (root / "check.json").is_file():
        print(f"building {NAME}, the peer benchmark's chat-dialect model, once into {root} (about "
              f"{EXPECTED_MINUTES} minutes on 2 CPU cores; build it ahead with `python -m "
              "retool.training.peer_chat_model`, or pass --model embedded)", file=sys.stderr, flush=True)
        build(root, quiet=True)
    return adapter_dir(root)


def write_model_card(root: Path, minutes: dict[str, float]) -> Path:
    from retool.training.sft_data import iter_examples

    data = root / "data" / "chat" / "source.jsonl"
    kept = len(_rows(data)) if data.exists() else 0
    recipe = sft_recipe(root, data)
    fit = sum(1 for _ in iter_examples(recipe.data, chat_tokenizer(), recipe.rollout, max_length=recipe.max_length)) \
        if data.exists() else 0
    rate = json.loads((root / "check.json").read_text()) if (root / "check.json").exists() else None
    heads = ", ".join(f"the first {n} of `{p.relative_to(REPO)}`" for p, n in SOURCES.values())
    lines = [
        f"# {NAME}", "",
        f"A LoRA adapter (r={recipe.lora.r}, alpha={recipe.lora.alpha}, all linear layers) on SmolLM2-135M-Instruct "
        f"(`{BASE_MODEL}`) that calls the `python` tool in retool's chat dialect through TRL's "
        f"`trl/chat_templates/{TEMPLATE}.jinja` (hermes `<tool_call>{{json}}</tool_call>`), the template "
        "`retool bench peer` renders both sides with; its tokenizer carries that template. It is the peer "
        "benchmark's default model: it exists so that both loops do tool work, not to be right.", "",
        "## How it was made (`python -m retool.training.peer_chat_model`)", "",
        f"1. **Data**: {heads} (verified code-integrated traces), converted to tool-call conversations "
        f"and checked against the template (`retool coldstart convert --to chat --model {BASE_MODEL} "
        f"--chat-template {TEMPLATE}.jinja`): {kept} kept, {fit} of them within the max length (the rest skipped).",
        f"2. **SFT** (`training/recipes/{RECIPE.name}`): dialect chat on that template, no demonstration, "
        f"{recipe.epochs:g} epoch, batch {recipe.batch_size}, lr {recipe.learning_rate:g} ({recipe.lr_scheduler}), "
        f"max length {recipe.max_length}, seed {recipe.seed}; only the model's turns trained.", "",
        "Wall time on this machine (minutes): " + ", ".join(f"{k} {v:.1f}" for k, v in minutes.items())
        + f", total {sum(minutes.values()):.1f}.", "",
    ]
    if rate:
        lines += [f"**Check** (greedy, {rate['problems']} held-out problems of the two sources): "
                  f"{rate['answers_with_a_call']}/{rate['problems']} answers call the tool "
                  f"({rate['tool_calls']} calls, {rate['calls_run']} ran). Accuracy was not a goal and is not measured.", ""]
    path = adapter_dir(root) / "README.md"
    if path.parent.is_dir():
        path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=None, help=f"where the build goes (default {default_root()})")
    parser.add_argument("--max-steps", type=int, default=None, help="cap the SFT steps (a smoke build)")
    args = parser.parse_args(argv)
    root = Path(args.root) if args.root else default_root()
    adapter = build(root, args.max_steps)
    result = json.loads((root / "check.json").read_text())
    print(f"{adapter}: {result['answers_with_a_call']}/{result['problems']} held-out answers call the tool; "
          f"minutes {json.loads((root / 'timings.json').read_text())}")


if __name__ == "__main__":
    main()
