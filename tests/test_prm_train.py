"""PRM training on a tiny model: the three objectives train what they say, resume after a stop, and a
head on a frozen trunk learns a separable labelling; AUROC and log-loss by hand."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from retool.prm.data import example_of, is_validation
from retool.prm.labels import LabeledTrajectory, StepLabel
from retool.prm.metrics import auroc, log_loss
from retool.prm.model import load_prm
from retool.prm.train import train_prm
from retool.training.interrupt import StopRequest
from retool.training.recipe import PRMRecipe
from retool.trajectory import Trajectory
from tiny import tiny_model


def test_auroc_and_log_loss_by_hand():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75  # one of four pairs misordered
    assert auroc([0.5, 0.5], [0, 1]) == 0.5  # a tie counts one half
    assert auroc([0.2, 0.9], [1, 1]) is None  # one class: undefined, not 0.5
    assert log_loss([0.8, 0.25], [1.0, 0.0]) == pytest.approx(-(math.log(0.8) + math.log(0.75)) / 2)
    assert log_loss([0.5], [0.3]) == pytest.approx(math.log(2))


def synthetic_rows(vocab: int, n: int = 24, seed: int = 0) -> list[LabeledTrajectory]:
    """Trajectories of 3 steps whose labels are a function of the token at each boundary (even
    ids good), so a linear probe on the trunk's states can learn them."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = [rng.randrange(3, vocab) for _ in range(4)]
        ids, mask, labels = [], [], []
        for step in range(3):
            ids += [rng.randrange(3, vocab) for _ in range(5)]
            mask += [1] * 5
            good = ids[-1] % 2 == 0
            labels.append(StepLabel(step, len(prompt) + len(ids) - 1, float(good), int(good), 4, 4 * good, "mc"))
        traj = Trajectory(prompt, ids, mask, [0.0] * len(ids))
        traj.finish("answer")
        rows.append(LabeledTrajectory(f"p{i}", 0, bool(labels[-1].hard), None, traj, labels))
    return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("prm")
    model, tokenizer = tiny_model()
    model.save_pretrained(root / "policy")
    tokenizer.save_pretrained(root / "policy")
    rows = synthetic_rows(len(tokenizer))
    (root / "labels.jsonl").write_text("".join(json.dumps(r.to_json()) + "\n" for r in rows))
    return root, rows


def recipe(root, name, **changes) -> PRMRecipe:
    return PRMRecipe(**{"model": str(root / "policy"), "labels": [str(root / "labels.jsonl")],
                        "output_dir": str(root / name), "max_steps": 3, "batch_size": 4, "report_to": [],
                        "eval_steps": 3, **changes})


def policy_params(root) -> dict[str, torch.Tensor]:
    model, _ = tiny_model()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_examples_read_at_the_step_boundaries(setup):
    _, rows = setup
    ex, lost = example_of(rows[0], "process", 1024)
    assert ex.positions == tuple(lab.boundary for lab in rows[0].labels) and lost == 0
    assert ex.targets == tuple(lab.soft for lab in rows[0].labels)
    orm, _ = example_of(rows[0], "outcome", 1024)
    assert orm.positions == ex.positions[-1:] and orm.targets == (float(rows[0].correct),)
    cut, lost = example_of(rows[0], "process", ex.positions[1] + 1)
    assert cut.positions == ex.positions[:2] and lost == 1  # a boundary past max_length is not trained on
    assert is_validation("p3", 0.5) == is_validation("p3", 0.5) and not is_validation("p3", 0.0)


def test_process_prm_trains_the_top_block_and_head_only(setup):
    root, _ = setup
    result = train_prm(recipe(root, "process", train_blocks=1, val_fraction=0.25), device="cpu")
    assert result.steps == 3 and not result.stopped
    prm = load_prm(root / "process" / "prm")
    before = policy_params(root)
    after = dict(prm.model.base_model.named_parameters())
    top = max(int(n.split(".")[1]) for n in after if n.startswith("layers."))
    changed = {n for n, p in after.items() if not torch.equal(p, before["model." + n])}
    assert changed and all(n.startswith(f"layers.{top}.") or n.startswith("norm") for n in changed)
    assert prm.model.score.weight.abs().sum() > 0  # the head left its zero start
    lines = [json.loads(line) for line in (root / "process" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss/prm" in line] == [1, 2, 3]
    assert "val/auroc_step" in json.loads((root / "process" / "eval.json").read_text())


def test_head_on_cached_states_learns_a_separable_labelling(setup):
    root, rows = setup
    result = train_prm(recipe(root, "probe", train_blocks=0, max_steps=60, learning_rate=0.05, val_fraction=0.0),
                       device="cpu")
    prm = load_prm(root / "probe" / "prm")
    examples = [example_of(r, "process", 1024)[0] for r in rows]
    scores = [s for ex, sc in zip(examples, prm.score(examples)) for s in sc]
    hard = [h for ex in examples for h in ex.hard]
    assert result.steps == 60 and auroc(scores, hard) > 0.9


def test_outcome_orm_reads_only_the_final_boundary(setup):
    root, rows = setup
    train_prm(recipe(root, "orm", objective="outcome", train_blocks=0, val_fraction=0.0), device="cpu")
    prm = load_prm(root / "orm" / "prm")
    assert prm.objective == "outcome"
    ex = example_of(rows[0], "outcome", 1024)[0]
    (scores,) = prm.score([ex])
    assert len(scores) == 1 and 0 < scores[0] < 1


def test_implicit_prm_scores_are_the_summed_log_ratio(setup):
    root, rows = setup
    train_prm(recipe(root, "implicit", objective="implicit", train_blocks=1, val_fraction=0.0, learning_rate=1e-3),
              device="cpu")
    prm = load_prm(root / "implicit" / "prm")
    ex = example_of(rows[0], "implicit", 1024)[0]
    (scores,) = prm.score([ex])
    ids = torch.tensor([ex.input_ids])
    with torch.no_grad():
        def lp(model):
            logits = model(input_ids=ids).logits[0, :-1]
            return torch.log_softmax(logits.float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
        ratio = prm.beta * (lp(prm.model) - lp(prm.ref)) * torch.tensor(ex.loss_mask[1:], dtype=torch.float32)
    expected = [torch.sigmoid(ratio[: p].sum()).item() for p in ex.positions]
    assert scores == pytest.approx(expected, abs=1e-5)
    assert any(abs(s - 0.5) > 1e-6 for s in scores)  # trained: πφ moved away from πref
    with pytest.raises(ValueError, match="implicit PRM needs train_blocks"):
        train_prm(recipe(root, "implicit0", objective="implicit", train_blocks=0), device="cpu")


def test_a_stopped_run_resumes_from_its_checkpoint(setup):
    root, _ = setup
    stop = StopRequest()
    stop.requested = True  # as if Ctrl-C came during the first step
    first = train_prm(recipe(root, "resume", max_steps=4, train_blocks=0), stop=stop, device="cpu")
    assert first.stopped and first.steps == 1 and not (root / "resume" / "prm").exists()
    assert (root / "resume" / "checkpoints" / "step-1").is_dir()
    second = train_prm(recipe(root, "resume", max_steps=4, train_blocks=0), device="cpu")
    assert second.steps == 4 and not second.stopped
    lines = [json.loads(line) for line in (root / "resume" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss/prm" in line] == [1, 2, 3, 4]


def test_lora_trains_an_adapter_and_saves_the_verifier_whole(setup):
    root, rows = setup
    train_prm(recipe(root, "lora", train_blocks=None, lora={"r": 4, "alpha": 8, "dropout": 0.0},
                     learning_rate=1e-2, val_fraction=0.0), device="cpu")
    prm = load_prm(root / "lora" / "prm")  # no peft folder: a plain token-classification model
    assert not (root / "lora" / "prm" / "model" / "adapter_config.json").exists()
    before = policy_params(root)
    changed = [n for n, p in prm.model.base_model.named_parameters() if not torch.equal(p, before["model." + n])]
    assert changed and all("proj" in n for n in changed)  # LoRA merged into the projections only
    (scores,) = prm.score([example_of(rows[0], "process", 1024)[0]])
    assert len(scores) == 3
