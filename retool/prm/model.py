"""The verifier models a PRM run trains, on exact token ids: one score in [0, 1] per step boundary.

* ``process`` / ``outcome``: the policy's trunk with a one-output head on every position
  (``AutoModelForTokenClassification``, the head zero-initialised, as PPO's critic); a step's
  score is ``sigmoid(head(h))`` at its last token. The two objectives differ only in their data.
* ``implicit`` (PRIME): a causal LM πφ initialised from the policy, and the frozen policy as πref.
  The reward of token t is β·(log πφ(t) − log πref(t)); a step's score is the sigmoid of the sum
  over the model's own tokens up to its boundary, so the final step's score is the probability of
  a right answer that the outcome labels train.

On CPU, ``train_blocks`` freezes all but the top k transformer blocks (0: the head alone, whose
inputs, the trunk's hidden states at the boundaries, are then computed once and cached).

Saved as a folder: the Hugging Face model and tokenizer under ``model/`` and ``prm.json`` (the
objective, β, the reference model's name), read back by ``load_prm``.

Not here: the data (``data.py``), the loop (``train.py``), selection (``retool.search``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from retool.prm.data import PRMExample

META_FILE = "prm.json"


@dataclass
class PRM:
    objective: str
    model: Any  # token classification (process/outcome) or causal LM (implicit)
    tokenizer: Any
    ref: Any = None  # implicit: the frozen reference policy
    beta: float = 0.05
    base: str | None = None  # the policy it was built from (implicit: also the reference)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def logits(self, batch: list[PRMExample]) -> list[torch.Tensor]:
        """Per example, the pre-sigmoid score at each of its positions (implicit: at its positions,
        and, appended last, over the whole trajectory). Gradients flow where parameters train."""
        ids, attn = pad(batch, self.tokenizer, self.device)
        if self.objective != "implicit":
            out = self.model(input_ids=ids, attention_mask=attn).logits[..., 0]  # [B, T]
            return [out[i, list(ex.positions)] for i, ex in enumerate(batch)]
        rewards = self.token_rewards(ids, attn, batch)  # [B, T]: β·log-ratio at the model's tokens
        cum = rewards.cumsum(-1)
        return [torch.cat([cum[i, list(ex.positions)], cum[i, -1:]]) for i, ex in enumerate(batch)]

    def token_rewards(self, ids: torch.Tensor, attn: torch.Tensor, batch: list[PRMExample]) -> torch.Tensor:
        """[B, T] β·(log πφ − log πref) of each token given what precedes it; 0 off the model's tokens."""
        lp = _token_logprobs(self.model, ids, attn)
        with torch.no_grad():
            lp_ref = _token_logprobs(self.ref, ids, attn)
        mask = torch.zeros_like(lp)
        for i, ex in enumerate(batch):
            mask[i, : len(ex.loss_mask)] = torch.tensor(ex.loss_mask, dtype=lp.dtype)
        return self.beta * (lp - lp_ref) * mask

    @torch.no_grad()
    def score(self, batch: list[PRMExample]) -> list[list[float]]:
        """Scores in [0, 1] at each example's positions."""
        self.model.eval()
        out = []
        for ex, logit in zip(batch, self.logits(batch)):
            values = torch.sigmoid(logit.float()).tolist()
            out.append(values[: len(ex.positions)])
        return out

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        self.model.save_pretrained(path / "model")
        self.tokenizer.save_pretrained(path / "model")
        (path / META_FILE).write_text(json.dumps({"objective": self.objective, "beta": self.beta, "base": self.base},
                                                 indent=2))
        return path


def pad(batch: list[PRMExample], tokenizer, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``[B, T]`` ids and attention mask."""
    width = max(len(ex.input_ids) for ex in batch)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ex in enumerate(batch):
        ids[i, : len(ex.input_ids)] = torch.tensor(ex.input_ids)
        attn[i, : len(ex.input_ids)] = 1
    return ids.to(device), attn.to(device)


def _token_logprobs(model, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """[B, T] log-probability of each token after its prefix (position 0: 0)."""
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()  # [B, T-1, V]
    lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]  # [B, T-1]
    return torch.nn.functional.pad(lp, (1, 0))


def build_prm(policy, tokenizer, objective: str, beta: float = 0.05, base: str | None = None) -> PRM:
    """A fresh verifier on ``policy`` (a causal LM, left unchanged)."""
    if objective == "implicit":
        ref = policy.eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        model = copy.deepcopy(policy)
        for p in model.parameters():
            p.requires_grad_(True)
        return PRM(objective, model.train(), tokenizer, ref, beta, base)
    from transformers import AutoModelForTokenClassification

    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    model = AutoModelForTokenClassification.from_config(config)
    model.base_model.load_state_dict(policy.base_model.state_dict(), strict=True)
    head = _head(model)
    torch.nn.init.zeros_(head.weight)
    if getattr(head, "bias", None) is not None:
        torch.nn.init.zeros_(head.bias)
    return PRM(objective, model.to(next(policy.parameters()).device), tokenizer, None, beta, base)


def _head(model) -> torch.nn.Module:
    return model.score if hasattr(model, "score") else model.classifier


def _blocks(model) -> torch.nn.ModuleList:
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) and "layer" in type(module[0]).__name__.lower():
            return module
    raise ValueError(f"cannot find the transformer blocks of {type(model).__name__} (for train_blocks)")


def freeze_below(prm: PRM, train_blocks: int | None) -> None:
    """Train only the top ``train_blocks`` blocks (and the final norm and head); None: everything."""
    if train_blocks is None:
        return
    if prm.objective == "implicit" and train_blocks == 0:
        raise ValueError("the implicit PRM needs train_blocks ≥ 1: it is a whole language model, not a head")
    model = prm.model
    for p in model.parameters():
        p.requires_grad_(False)
    blocks = _blocks(model)
    top = list(blocks)[len(blocks) - train_blocks:] if train_blocks else []
    trainable = [*top, _head(model) if prm.objective != "implicit" else model.get_output_embeddings()]
    norm = getattr(model.base_model, "norm", None)
    if norm is not None and train_blocks:
        trainable.append(norm)
    for module in trainable:
        for p in module.parameters():
            p.requires_grad_(True)


def load_prm(path: str | Path, device: str = "cpu") -> PRM:
    """A saved verifier (``PRM.save``); the implicit one reloads its reference policy by name."""
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{path} is not a trained PRM (no {META_FILE}; train one with `retool prm train`)")
    meta = json.loads(meta_path.read_text())
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path / "model")
    if meta["objective"] == "implicit":
        from retool.models import load_model

        model = AutoModelForCausalLM.from_pretrained(path / "model").to(device).eval()
        ref, _ = load_model(meta["base"], device=device)
        return PRM("implicit", model, tokenizer, ref, meta["beta"], meta["base"])
    model = AutoModelForTokenClassification.from_pretrained(path / "model").to(device).eval()
    return PRM(meta["objective"], model, tokenizer, None, meta["beta"], meta.get("base"))
