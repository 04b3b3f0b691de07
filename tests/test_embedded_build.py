"""The embedded adapter's build (``python -m retool.training.embedded``) end to end, a few steps of
each stage: LoRA SFT of the base, the probe, DAPO on the adapter, publishing; the result is an
adapter folder that loads as a model and differs from the base."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # minutes on 2 cores: past the default per-test limit


def test_a_smoke_build_publishes_a_loadable_adapter_that_changed_the_model(tmp_path):
    from retool.models import BASE_MODEL, load_model
    from retool.training import embedded

    target = tmp_path / "published"
    # two steps: the first has learning rate 0 (warm-up), and LoRA starts as the identity
    embedded.main(["--root", str(tmp_path / "runs"), "--steps", "2", "--probe-size", "2", "--no-eval",
                   "--target", str(target)])
    assert json.loads((target / "adapter_config.json").read_text())["base_model_name_or_path"] == BASE_MODEL
    card = json.loads((target / "retool_prompt.json").read_text())
    assert card["dialect"] == "retool" and card["few_shot"] is False
    assert (tmp_path / "runs" / "rl" / "metrics.jsonl").is_file()  # RL really ran on the adapter
    adapted, tok = load_model(str(target))
    base, _ = load_model(BASE_MODEL)
    ids = tok("2+2=", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert not torch.allclose(adapted(input_ids=ids).logits, base(input_ids=ids).logits)
