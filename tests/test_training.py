"""Training on a tiny random model: real SFT, GRPO/DAPO (TRL) and PPO steps, masks, checkpoints.

Each test trains for real (a step or two, in seconds) and checks what a user relies on: the
parameters move, interpreter tokens never carry gradient, Ctrl-C saves and resuming is exact.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from tiny import tiny_model
from retool.protocol import RETOOL
from retool.rollout import RolloutConfig
from retool.rollout import render_prompt
from retool.training.recipe import PRMRecipe, RecipeError, RLRecipe, SFTRecipe, load_recipe
from retool.training.rl import run_rl
from retool.training.sft_data import IGNORE_INDEX, SFTDataError, iter_examples, render_trajectory, to_example

SFT_PROMPT = RolloutConfig(few_shot=False)  # the recipes' prompt: the retool dialect, no demonstration

CODE_REPLY = ("I will compute it.\n<code>\n```python\nprint(3 + 4)\n```\n</code>\n<interpreter>\n7\n</interpreter>\n"
              "So the answer is 7.\n<answer>\n\\boxed{7}\n</answer>")
ANSWER_ONLY = "<answer>\n\\boxed{7}\n</answer>"


def _write_records(path: Path, reply: str, n: int = 4) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"p{i}", "answer": "7", "messages": [
                {"role": "user", "content": "What is 3 plus 4?"}, {"role": "assistant", "content": reply}]}) + "\n")
    return path


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _changed(before: dict, model) -> int:
    return sum(not torch.equal(before[k], v) for k, v in model.state_dict().items())


# -- SFT data ----------------------------------------------------------------------------------------


def test_sft_example_masks_prompt_and_interpreter_exactly():
    _, tok = tiny_model()
    traj = render_trajectory("What is 3 plus 4?", CODE_REPLY, tok, SFT_PROMPT)
    example = to_example(traj)
    # the prompt is exactly what the rollout would feed the model for this problem
    assert traj.prompt_ids == render_prompt(tok, RETOOL.messages("What is 3 plus 4?", few_shot=False))
    assert example.input_ids == traj.prompt_ids + traj.ids
    assert example.labels[: len(traj.prompt_ids)] == [IGNORE_INDEX] * len(traj.prompt_ids)
    trained = tok.decode([t for t in example.labels if t != IGNORE_INDEX])
    assert "<interpreter>" not in trained and "\n7\n" not in trained  # the interpreter's output is not trained
    assert trained.startswith("I will compute it.") and trained.endswith("</answer>")
    assert "</code>" in trained and "So the answer is 7." in trained
    (start, end), = [(s, e) for s, e in [c for c in _spans(traj.loss_mask)]]
    assert tok.decode(traj.ids[start:end]) == "\n<interpreter>\n7\n</interpreter>\n"


def test_fenced_sft_renders_the_same_data_with_exact_masks():
    from retool.protocol import FENCED

    _, tok = tiny_model()
    fenced = RolloutConfig(dialect="fenced", few_shot=False)
    written_fenced = "I will compute it.\n```python\nprint(3 + 4)\n```\n```output\n7\n```\nSo the answer is 7.\n\\boxed{7}"
    for reply in (CODE_REPLY, written_fenced):  # the shipped (retool) data is converted; fenced data is used as is
        traj = render_trajectory("What is 3 plus 4?", reply, tok, fenced)
        assert traj.prompt_ids == render_prompt(tok, FENCED.messages("What is 3 plus 4?", few_shot=False))
        example = to_example(traj)
        trained = tok.decode([t for t in example.labels if t != IGNORE_INDEX])
        assert trained == "I will compute it.\n```python\nprint(3 + 4)\n```\n```outputSo the answer is 7.\n\\boxed{7}"
        (start, end), = _spans(traj.loss_mask)
        assert tok.decode(traj.ids[start:end]) == "\n7\n```\n"  # exactly what the rollout appends, untrained
        assert tok.decode(traj.ids) == written_fenced.replace("\n```\nSo", "\n```\nSo")


def _spans(mask):
    spans, start = [], None
    for i, m in enumerate(mask + [1]):
        if m == 0 and start is None:
            start = i
        if m == 1 and start is not None:
            spans.append((start, i))
            start = None
    return spans


def test_sft_data_errors_name_the_line(tmp_path):
    _, tok = tiny_model()
    path = _write_records(tmp_path / "d.jsonl", CODE_REPLY, 2)
    with path.open("a") as fh:
        fh.write("{not json\n")
    with pytest.raises(SFTDataError, match=r"d.jsonl:3"):
        list(iter_examples([path], tok, SFT_PROMPT))
    with pytest.raises(SFTDataError, match="no training data"):
        list(iter_examples([tmp_path / "missing.jsonl"], tok, SFT_PROMPT))
    unrun = CODE_REPLY.replace("<interpreter>\n7\n</interpreter>\n", "")
    with pytest.raises(SFTDataError, match="never executed"):
        list(iter_examples([_write_records(tmp_path / "u.jsonl", unrun, 1)], tok, SFT_PROMPT))


def test_interpreter_positions_get_exactly_zero_gradient_in_sft():
    model, tok = tiny_model()
    model.train()
    example = to_example(render_trajectory("What is 3 plus 4?", CODE_REPLY, tok, SFT_PROMPT))
    ids, labels = torch.tensor([example.input_ids]), torch.tensor([example.labels])
    out = model(input_ids=ids, labels=labels)
    out.logits.retain_grad()
    out.loss.backward()
    grad = out.logits.grad[0]  # logits[t-1] predict token t
    ignored = (labels[0, 1:] == IGNORE_INDEX)
    assert torch.count_nonzero(grad[:-1][ignored]) == 0
    assert torch.count_nonzero(grad[:-1][~ignored]) > 0


# -- recipes -------------------------------------------------------------------------------------------


def test_recipe_errors_are_clear(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("data: [x.jsonl]\noutput_dir: o\nlearing_rate: 1e-5\n")
    with pytest.raises(RecipeError, match="learing_rate"):
        load_recipe(bad, RLRecipe)
    bad.write_text("data: [x.jsonl]\noutput_dir: o\nepsilon: 0.3\nepsilon_high: 0.2\n")
    with pytest.raises(RecipeError, match="epsilon_high"):
        load_recipe(bad, RLRecipe)
    with pytest.raises(RecipeError, match="no recipe"):
        load_recipe(tmp_path / "none.yaml", SFTRecipe)
    bad.write_text("data: [x.jsonl]\noutput_dir: o\nvllm: {mode: colocate, tensor_parallel_size: 2}\n")
    with pytest.raises(RecipeError, match="mode: server"):
        load_recipe(bad, RLRecipe)
    for changes, message in [("algorithm: ppo\nloss_type: cispo", "TRL's"), ("algorithm: grpo\nloss_type: luspo", "sequence"),
                             ("algorithm: grpo\nloss_type: cispo\nimportance_sampling_level: sequence", "token-level"),
                             ("algorithm: prime\nimportance_sampling_level: sequence", "GSPO"),
                             ("loss_type: nope", "loss_type")]:
        bad.write_text(f"data: [x.jsonl]\noutput_dir: o\n{changes}\n")
        with pytest.raises(RecipeError, match=message):
            load_recipe(bad, RLRecipe)
    RLRecipe(algorithm="grpo", loss_type="luspo", importance_sampling_level="sequence", data=["x"], output_dir="o")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_a_vllm_recipe_without_vllm_stops_before_loading_anything(tmp_path):
    recipe = RLRecipe(data=[str(tmp_path / "absent.jsonl")], output_dir=str(tmp_path / "run"), vllm={})
    with pytest.raises(RecipeError, match=r"retool\[gpu\]"):
        run_rl(recipe)
    assert not (tmp_path / "run").exists()


def test_every_shipped_recipe_validates():
    recipes = Path(__file__).resolve().parent.parent / "training" / "recipes"
    for path in sorted(recipes.glob("*.yaml")):
        kind = PRMRecipe if path.name.startswith("prm_") else SFTRecipe if "sft" in path.name else RLRecipe
        load_recipe(path, kind)


def test_the_miniature_trains_rl_on_families_solved_sometimes_but_not_always():
    from retool.training.miniature import mixed_families

    records = [{"id": f"{f}{i}", "family": f} for f in ("modpow", "linear", "combinatorics") for i in range(4)]
    solved = {r["id"]: r["family"] == "modpow" or r["id"] in ("combinatorics0",) for r in records}
    rates, keep = mixed_families(records, solved)
    assert rates == {"combinatorics": 0.25, "linear": 0.0, "modpow": 1.0}
    assert keep == ["combinatorics"]


# -- one real step of each trainer -------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["retool", "fenced"])
def test_one_sft_step_changes_the_parameters(tmp_path, dialect):
    from retool.training.sft import run_sft

    model, tok = tiny_model()
    before = _state(model)
    recipe = SFTRecipe(data=[str(_write_records(tmp_path / "d.jsonl", CODE_REPLY))], output_dir=str(tmp_path / "run"),
                       max_steps=1, batch_size=2, learning_rate=1e-3, report_to=[], max_length=4096, logging_steps=1,
                       rollout={"dialect": dialect, "few_shot": False})
    result = run_sft(recipe, model=model, tokenizer=tok)
    assert result.steps == 1 and result.final_dir is not None and (result.final_dir / "config.json").exists()
    assert _changed(before, model) > 0
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["sft/loss"] > 0


# seed 2: a draw whose groups hold right and wrong answers (the tests check it, so a change of the
# sampling that loses that fails loudly instead of as "no gradient")
VARIED = dict(group_size=8, prompts_per_step=1, micro_batch_size=8,
              rollout={"max_total_tokens": 24, "sampling": {"temperature": 0.8}}, ppo={"minibatch_size": 4}, seed=2)


def _rl_recipe(tmp_path: Path, algorithm: str, **changes) -> RLRecipe:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = _write_records(tmp_path / "problems.jsonl", CODE_REPLY, 6)
    settings = dict(algorithm=algorithm, data=[str(data)], output_dir=str(tmp_path / algorithm), steps=1,
                    prompts_per_step=2, group_size=2, rollout={"max_total_tokens": 16}, micro_batch_size=2,
                    learning_rate=1e-3, sandbox={"backend": "subprocess"}, report_to=[], mask_truncated=False, save_steps=1,
                    ppo={"minibatch_size": 2})
    settings.update(changes)
    return RLRecipe(**settings)


def test_one_ppo_step_changes_actor_and_critic(tmp_path, sharpened):
    model, tok = _model_from(sharpened)
    before = _state(model)
    result = run_rl(_rl_recipe(tmp_path, "ppo", **VARIED), model=model, tokenizer=tok)
    assert result.steps == 1 and not result.interrupted
    line = json.loads((tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 < line["accuracy"] < 1, "the draw must mix right and wrong answers for a gradient"
    assert _changed(before, model) > 0
    for key in ("reward/mean", "accuracy", "loss/policy", "loss/value", "entropy", "clip_frac", "kl",
                "tools/calls_per_answer", "tokens/model_mean", "time/rollout_s", "time/update_s"):
        assert key in line
    assert (tmp_path / "ppo" / "samples.jsonl").exists()


@pytest.mark.parametrize("prime", [{"prm_update": "before"},
                                   {"prm_update": "after", "reference": "old_policy", "granularity": "step"}])
def test_one_prime_step_changes_the_policy_and_the_implicit_prm(tmp_path, sharpened, prime):
    from retool.training.ppo import PPOTrainer
    from retool.training.prime_trainer import PRIMETrainer

    model, tok = _model_from(sharpened)
    before = _state(model)
    seen = {}
    build = PRIMETrainer.build_helper

    def keep_prm(self, policy):
        prm, opt = build(self, policy)
        seen["prm"], seen["before"] = prm, _state(prm)
        return prm, opt

    recipe = _rl_recipe(tmp_path, "prime", **{k: v for k, v in VARIED.items() if k != "ppo"},
                        prime={**prime, "prm_learning_rate": 1e-3, "minibatch_size": 4})
    PRIMETrainer.build_helper = keep_prm
    try:
        result = run_rl(recipe, model=model, tokenizer=tok)
    finally:
        PRIMETrainer.build_helper = build
    assert result.steps == 1 and not result.interrupted and issubclass(PRIMETrainer, PPOTrainer)
    line = json.loads((tmp_path / "prime" / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 < line["accuracy"] < 1, "the draw must mix right and wrong answers for a gradient"
    assert _changed(before, model) > 0 and _changed(seen["before"], seen["prm"]) > 0
    keys = ["prm/loss", "prm/pairwise_acc_before", "prime/process_return_mean", "prime/process_outcome_corr",
            "loss/policy", "tokens/model_mean"]
    keys += ["prm/pairwise_acc_after"] if prime["prm_update"] == "before" else []
    for key in keys:
        assert key in line
    assert line["prm/loss"] > 0 and 0 <= line["prm/pairwise_acc_before"] <= 1
    assert (tmp_path / "prime" / "checkpoints" / "step-1").exists()
    saved = json.loads((tmp_path / "prime" / "prm" / "prm.json").read_text())  # the PRM, as a verifier
    assert saved["objective"] == "implicit" and saved["beta"] == recipe.prime.beta
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "prime" / "prm" / "model")
    trained = seen["prm"].state_dict()
    assert all(torch.equal(value, trained[key]) for key, value in reloaded.state_dict().items())


@pytest.mark.parametrize("algorithm", ["prime", "dapo"])
@pytest.mark.parametrize("window,kept", [((0.01, 0.99), True), ((0.999, 1.0), False)])
def test_online_filtering_fills_the_batch_with_informative_groups(tmp_path, sharpened, window, kept, algorithm):
    """In retool's own loop (prime) and inside TRL's (dapo): a window the draw's groups fit trains
    on them in one round; one nothing fits drops every group for ``max_rounds`` rounds and trains on
    nothing (TRL's fixed-size batch is padded with dropped groups, all out of the loss)."""
    model, tok = _model_from(sharpened)
    before = _state(model)
    recipe = _rl_recipe(tmp_path, algorithm, **{k: v for k, v in VARIED.items() if k != "ppo"},
                        online_filter={"accuracy": window, "oversample": 1.0, "max_rounds": 2},
                        prime={"minibatch_size": 4})
    result = run_rl(recipe, model=model, tokenizer=tok)
    line = next(json.loads(x) for x in (tmp_path / algorithm / "metrics.jsonl").read_text().splitlines()
                if "filter/rounds" in x)
    assert result.steps == 1
    if kept:  # the seed-2 draw mixes right and wrong: kept in the first round, and trained on
        assert line["filter/rounds"] == 1 and line["filter/dropped"] == 0 and 0 < line["accuracy"] < 1
        assert _changed(before, model) > 0
    else:  # nothing informative by this window: two rounds, every group dropped, no update
        assert line["filter/rounds"] == 2 and line["filter/dropped"] == line["filter/offered"] == 2
        assert line.get("filter/padded_groups") == (1 if algorithm == "dapo" else None)  # TRL's step is padded
        assert _changed(before, model) == 0


@pytest.fixture(scope="module")
def sharpened(tmp_path_factory):
    """A tiny model taught (by our SFT) to answer 7, so that sampling it gives both right and
    wrong answers: GRPO (and whitened PPO advantages) need reward differences to have a gradient."""
    from retool.training.sft import run_sft

    tmp = tmp_path_factory.mktemp("sharp")
    model, tok = tiny_model()
    recipe = SFTRecipe(data=[str(_write_records(tmp / "sharp.jsonl", ANSWER_ONLY, 8))],
                       output_dir=str(tmp / "run"), max_steps=30, batch_size=8, learning_rate=3e-3,
                       lr_scheduler="constant", report_to=[], max_length=4096)
    run_sft(recipe, model=model, tokenizer=tok)
    return model.state_dict(), tok


def _model_from(sharpened):
    state, tok = sharpened
    model, _ = tiny_model()
    model.load_state_dict(state)
    return model, tok


@pytest.mark.parametrize("algorithm,loss_type", [("dapo", "dapo"), ("grpo", "grpo"), ("grpo", "cispo"), ("grpo", "sapo")])
def test_one_grpo_step_changes_the_parameters(tmp_path, sharpened, algorithm, loss_type):
    """A real step through TRL for each loss (CISPO and SAPO are TRL's: the recipe hands them over)."""
    from retool.training.grpo import grpo_config

    model, tok = _model_from(sharpened)
    before = _state(model)
    recipe = _rl_recipe(tmp_path, algorithm, loss_type=loss_type, **{k: v for k, v in VARIED.items() if k != "ppo"},
                        **({"epsilon_high": 5.0} if loss_type == "cispo" else {}))
    assert grpo_config(recipe).loss_type == loss_type
    result = run_rl(recipe, model=model, tokenizer=tok)
    lines = [json.loads(x) for x in (tmp_path / algorithm / "metrics.jsonl").read_text().splitlines()]
    rollout = next(x for x in lines if "accuracy" in x)
    assert 0 < rollout["accuracy"] < 1, "the group must hold right and wrong answers"
    assert result.steps == 1 and _changed(before, model) > 0
    assert any("loss/policy" in x for x in lines)


def test_dapo_on_an_adapter_trains_only_the_lora_weights_and_saves_an_adapter(tmp_path, sharpened):
    """The embedded build's RL stage: a peft model in, LoRA weights changed, base weights untouched,
    an adapter folder (naming its base, carrying the prompt card) out."""
    from peft import LoraConfig, get_peft_model

    model, tok = _model_from(sharpened)
    base_dir = tmp_path / "base"
    model.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    recipe = _rl_recipe(tmp_path, "dapo", model=str(base_dir), **{k: v for k, v in VARIED.items() if k != "ppo"})
    result = run_rl(recipe, model=peft_model, tokenizer=tok)
    changed = {n for n, p in peft_model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and all("lora_" in n for n in changed), sorted(changed)[:5]
    config = json.loads((result.final_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_dir.resolve())
    assert (result.final_dir / "retool_prompt.json").is_file() and not (result.final_dir / "config.json").exists()


# -- Ctrl-C and exact resume ---------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["ppo", "dapo"])
def test_resume_reproduces_an_uninterrupted_run(tmp_path, sharpened, algorithm):
    """PPO resumes from our checkpoints, DAPO from the HF Trainer's (through TRL); both must land on
    the very weights of the uninterrupted run: optimizer, RNG, data position and rollout seeds."""
    changes = VARIED if algorithm == "ppo" else {k: v for k, v in VARIED.items() if k != "ppo"}
    straight, tok = _model_from(sharpened)
    run_rl(_rl_recipe(tmp_path / "a", algorithm, steps=3, save_steps=10, **changes), model=straight, tokenizer=tok)

    first, _ = _model_from(sharpened)
    run_rl(_rl_recipe(tmp_path / "b", algorithm, steps=1, save_steps=1, **changes), model=first, tokenizer=tok)
    resumed, _ = tiny_model(seed=1)  # other weights: only loading the checkpoint can make it match
    result = run_rl(_rl_recipe(tmp_path / "b", algorithm, steps=3, save_steps=10, **changes), model=resumed,
                    tokenizer=tok)
    initial, _ = _model_from(sharpened)
    assert _changed(initial.state_dict(), resumed) > 0
    assert result.steps == 3
    a, b = _state(straight), _state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"

    def logged(run: Path) -> list[tuple[int, float]]:
        lines = [json.loads(x) for x in (run / algorithm / "metrics.jsonl").read_text().splitlines()]
        return [(x["step"], x["reward/mean"]) for x in lines if "reward/mean" in x]

    assert logged(tmp_path / "a") == logged(tmp_path / "b")
    assert [step for step, _ in logged(tmp_path / "a")] == [1, 2, 3]


def test_sft_resume_reproduces_an_uninterrupted_run(tmp_path):
    from retool.training.sft import run_sft

    data = str(_write_records(tmp_path / "d.jsonl", CODE_REPLY, 8))

    def recipe(out: str, steps: int) -> SFTRecipe:
        return SFTRecipe(data=[data], output_dir=str(tmp_path / out), max_steps=steps, batch_size=2,
                         learning_rate=1e-3, lr_scheduler="constant", report_to=[], max_length=4096, save_steps=1)

    straight, tok = tiny_model()
    run_sft(recipe("a", 3), model=straight, tokenizer=tok)
    run_sft(recipe("b", 1), model=tiny_model()[0], tokenizer=tok)
    resumed, _ = tiny_model(seed=1)  # other weights: only loading the checkpoint can make it match
    assert run_sft(recipe("b", 3), model=resumed, tokenizer=tok).steps == 3
    a, b = _state(straight), _state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed SFT weights differ from the uninterrupted run"


def test_ctrl_c_saves_a_checkpoint_and_stops(tmp_path):
    model, tok = tiny_model()
    recipe = _rl_recipe(tmp_path, "ppo", steps=50, save_steps=100)
    metrics = tmp_path / "ppo" / "metrics.jsonl"

    def interrupt_after_first_step():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().strip()):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_after_first_step, daemon=True).start()
    result = run_rl(recipe, model=model, tokenizer=tok)
    assert result.interrupted and result.final_dir is None and 1 <= result.steps < 50
    saved = tmp_path / "ppo" / "checkpoints" / f"step-{result.steps}"
    assert (saved / "trainer.json").exists()
    again, _ = tiny_model()
    done = run_rl(recipe.model_copy(update={"steps": result.steps + 1}), model=again, tokenizer=tok)
    assert done.steps == result.steps + 1 and not done.interrupted


# -- the commands ------------------------------------------------------------------------------------


def test_cli_plot_and_clear_recipe_errors(tmp_path):
    from typer.testing import CliRunner

    from retool.cli import app
    from retool.training.run_log import RunLog

    with RunLog(tmp_path / "run", report_to=()) as log:
        log.scalars(1, {"reward/mean": -1.0, "accuracy": 0.0})
        log.scalars(2, {"reward/mean": 0.5, "accuracy": 0.75})
    result = CliRunner().invoke(app, ["plot", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "plots" / "reward.png").read_bytes()[:4] == b"\x89PNG"
    bad = tmp_path / "bad.yaml"
    bad.write_text("algorithm: sac\ndata: [x.jsonl]\noutput_dir: o\n")
    result = CliRunner().invoke(app, ["rl", "--recipe", str(bad)])
    assert result.exit_code == 2 and "algorithm" in result.output
    result = CliRunner().invoke(app, ["plot", str(tmp_path / "empty")])
    assert result.exit_code == 1
    if importlib.util.find_spec("vllm") is None:
        bad.write_text("data: [x.jsonl]\noutput_dir: o\nvllm: {mode: server}\n")
        result = CliRunner().invoke(app, ["rl", "--recipe", str(bad)])
        assert result.exit_code == 2 and "retool[gpu]" in result.output


def _scripted_batch(tmp_path: Path, **recipe_changes):
    """One real RL sampling step (loop, sandbox, grading) whose policy's words are given: problem a
    is solved with one clean call; b calls twice (the first fails) and answers wrongly."""
    from scripted import EOS, ScriptedEngine

    from retool.datasets import Problem
    from retool.training.rl_rollout import sample

    def code(source: str) -> str:
        return f"<code>\n```python\n{source}\n```\n</code>"

    scripts = {"What is 3 plus 4?": [code("print(3 + 4)"), "<answer>\n\\boxed{7}\n</answer>"],
               "What is 2 plus 5?": [code("1 / 0"), code("print(2 + 5)"), "<answer>\n\\boxed{8}\n</answer>"]}

    def respond(text: str) -> str:
        problem = next(p for p in scripts if p in text.split("<|im_start|>user")[-1])
        turn = text.split("<|im_start|>assistant")[-1].count("</interpreter>")
        return scripts[problem][turn] + ("" if turn < len(scripts[problem]) - 1 else EOS)

    model, tok = tiny_model()
    settings = dict(group_size=1, prompts_per_step=2, rollout={"max_total_tokens": 600})
    recipe = _rl_recipe(tmp_path, "ppo", **{**settings, **recipe_changes})
    problems = [Problem("a", "What is 3 plus 4?", "7"), Problem("b", "What is 2 plus 5?", "7")]
    with recipe.sandbox.pool(size=2) as pool:
        batch = sample(model, tok, pool, problems, recipe, step=0, engine=ScriptedEngine(respond=respond))
    return model, tok, recipe, batch


def test_an_rl_sampling_step_reports_exact_tool_numbers_from_a_scripted_policy(tmp_path):
    _, _, _, batch = _scripted_batch(tmp_path)
    assert [(s.problem_id, s.answer, s.correct, s.reward) for s in batch.samples] == [
        ("a", "7", True, 1.0), ("b", "8", False, -1.0)]
    scalars = batch.metrics.as_scalars()
    assert scalars["tools/calls_per_answer"] == 1.5 and scalars["tools/failure_rate"] == pytest.approx(1 / 3)
    assert scalars["tools/code_ratio"] == 1.0 and scalars["tools/limit_rate"] == 0.0 and scalars["truncation_rate"] == 0.0
    assert scalars["accuracy"] == 0.5 and scalars["reward/mean"] == 0.0 and scalars["infra/failure_rate"] == 0.0
    stats = batch.metrics.stats
    assert stats.sandbox_status == {"ok": 2, "error": 1} and stats.last_code_pass_rate_correct == 1.0
    assert stats.last_code_pass_rate_wrong == 1.0  # b's last block ran; its first did not
    for traj in batch.trajectories:  # the interpreter's tokens are the mask-0 spans, one per call
        assert len(_spans(traj.loss_mask)) == len(traj.tool_calls)


def test_a_ppo_update_puts_exactly_zero_gradient_on_interpreter_positions(tmp_path):
    from retool.training.ppo import PPOTrainer

    model, tok, recipe, batch = _scripted_batch(tmp_path, ppo={"minibatch_size": 2, "ppo_epochs": 1})
    trainer = PPOTrainer(recipe, model, tok, [s.problem for s in batch.samples], pool=None, run_log=None)
    rollouts = trainer.prepare_rollouts(batch)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def keep_logits(module, args, kwargs, output):
        if torch.is_grad_enabled():
            output.logits.retain_grad()
            seen.append((kwargs["input_ids"], output.logits))

    handle = trainer.policy.register_forward_hook(keep_logits, with_kwargs=True)
    try:
        trainer.update(batch)  # the real update: loss, backward, optimizer step
    finally:
        handle.remove()
    (ids, logits), = seen  # one minibatch holding both samples
    checked = 0
    for row in range(len(ids)):
        packed_row = next(i for i in range(len(rollouts.input_ids)) if torch.equal(rollouts.input_ids[i], ids[row]))
        traj = batch.trajectories[packed_row]
        start = len(traj.prompt_ids)
        for begin, end in _spans(traj.loss_mask):  # interpreter tokens; logits[t - 1] predicts token t
            grad = logits.grad[row, start + begin - 1:start + end - 1]
            assert torch.count_nonzero(grad) == 0
            checked += end - begin
        model_positions = [start + i - 1 for i, m in enumerate(traj.loss_mask) if m]
        assert torch.count_nonzero(logits.grad[row, model_positions]) > 0  # the model's own tokens are trained
    assert checked > 0


def test_a_minibatch_in_micro_batches_is_the_same_step_as_in_one(tmp_path):
    """``micro_batch_size`` bounds memory only: a policy step taken in one-row passes leaves the same
    weights as the step taken in one pass (PPO's actor; PRIME's uses the same step)."""
    import copy

    from retool.training.ppo import PPOTrainer

    model, tok, recipe, batch = _scripted_batch(tmp_path, ppo={"minibatch_size": 2, "ppo_epochs": 1})
    after = []
    for micro in (2, 1):
        policy = copy.deepcopy(model)
        r = recipe.model_copy(update={"micro_batch_size": micro})
        trainer = PPOTrainer(r, policy, tok, [s.problem for s in batch.samples], pool=None, run_log=None)
        rollouts = trainer.prepare_rollouts(batch)
        rollouts.advantages.normal_(generator=torch.Generator().manual_seed(0))  # a gradient on every token
        rows_per_pass = []
        hook = policy.register_forward_hook(lambda m, args, kwargs, out: rows_per_pass.append(len(kwargs["input_ids"])),
                                            with_kwargs=True)
        try:
            trainer.actor_step(rollouts, [0, 1], {})
        finally:
            hook.remove()
        assert rows_per_pass == [2] if micro == 2 else [1, 1]  # the memory bound holds
        after.append(_state(policy))
    assert _changed(after[0], model) > 0  # the step moved the weights
    for name, value in after[0].items():
        torch.testing.assert_close(after[1][name], value, atol=1e-6, rtol=1e-5)


def test_prime_puts_exactly_zero_gradient_on_interpreter_positions_in_policy_and_prm(tmp_path):
    """The implicit reward is summed over model tokens only: neither the policy's loss nor the implicit
    PRM's puts any gradient on an interpreter token."""
    from retool.training.prime_trainer import PRIMETrainer

    model, tok, recipe, batch = _scripted_batch(tmp_path, group_size=2)
    recipe = recipe.model_copy(update={"algorithm": "prime", "prime": recipe.prime.model_copy(
        update={"minibatch_size": 4, "granularity": "step"})})
    trainer = PRIMETrainer(recipe, model, tok, [s.problem for s in batch.samples], pool=None, run_log=None)
    seen: dict[str, list] = {"policy": [], "prm": []}

    def keeper(name):
        def keep(module, args, kwargs, output):
            if torch.is_grad_enabled():
                output.logits.retain_grad()
                seen[name].append((kwargs["input_ids"], output.logits))
        return keep

    handles = [trainer.policy.register_forward_hook(keeper("policy"), with_kwargs=True),
               trainer.critic.register_forward_hook(keeper("prm"), with_kwargs=True)]
    try:
        numbers = trainer.update(batch)
    finally:
        for h in handles:
            h.remove()
    assert "prm/loss" in numbers and seen["policy"] and seen["prm"]
    for name, passes in seen.items():
        checked = 0
        for ids, logits in passes:
            for row in range(len(ids)):
                traj = next(t for t in batch.trajectories if torch.equal(
                    ids[row][:len(t.prompt_ids) + len(t.ids)], torch.tensor(t.prompt_ids + t.ids)))
                start = len(traj.prompt_ids)
                for begin, end in _spans(traj.loss_mask):
                    assert torch.count_nonzero(logits.grad[row, start + begin - 1:start + end - 1]) == 0, name
                    checked += end - begin
                model_positions = [start + i - 1 for i, m in enumerate(traj.loss_mask) if m]
                assert torch.count_nonzero(logits.grad[row, model_positions]) > 0, name
        assert checked > 0, name


def test_void_turns_are_masked_from_the_loss_when_the_recipe_says_so(tmp_path):
    """SimpleTIR's void-turn masking: a trajectory ended by a turn with neither code nor answer (EOS,
    no answer) gets no gradient with ``mask_void_turns``; truncation stays ``mask_truncated``'s."""
    from retool.training.ppo import PPOTrainer
    from retool.training.rl_rollout import trained_on

    model, tok, recipe, batch = _scripted_batch(tmp_path)
    void = batch.trajectories[1]
    void.finish_reason = "eos"  # b's last turn: as if the model stopped without answering
    assert trained_on(void, recipe) and not trained_on(void, recipe.model_copy(update={"mask_void_turns": True}))
    cut = batch.trajectories[0]
    assert not trained_on(cut.__class__(cut.prompt_ids, finish_reason="length"), recipe.model_copy(
        update={"mask_truncated": True}))
    for masked in (False, True):
        r = recipe.model_copy(update={"mask_void_turns": masked})
        rollouts = PPOTrainer(r, model, tok, [s.problem for s in batch.samples], pool=None, run_log=None
                              ).prepare_rollouts(batch)
        assert rollouts.mask[0].sum() > 0
        assert (rollouts.mask[1].sum() == 0) == masked
