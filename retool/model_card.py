"""A trained model's prompt card: the prompt it was trained under, kept beside its weights.

A model fine-tuned by retool answers well only when prompted the way it was trained: the same
dialect, the same system prompt, the demonstration or not. ``retool sft`` / ``retool rl`` write
``retool_prompt.json`` into every model they save; the commands that run a model (``solve``,
``chat``, ``serve``, ``eval``) read it and take its values for the options the user did not set.
An option given on the command line always wins, and a system prompt recorded for one dialect is
not carried over to another.

Not here: finding the model's folder (``retool.models.model_folder``), weights, the chat template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from retool.protocol import get_dialect
from retool.rollout import RolloutConfig

CARD_FILE = "retool_prompt.json"


@dataclass(frozen=True)
class PromptCard:
    dialect: str
    few_shot: bool
    system_prompt: str  # exactly as the model saw it
    tools: bool = True  # trained with the interpreter (False: a text-only model)

    @classmethod
    def of(cls, rollout: RolloutConfig) -> "PromptCard":
        dialect = get_dialect(rollout.dialect)
        default = dialect.system_prompt if rollout.tools else dialect.text_system_prompt
        return cls(rollout.dialect, rollout.few_shot, rollout.system_prompt or default, rollout.tools)

    def apply(self, rollout: RolloutConfig, explicit: frozenset[str] = frozenset()) -> RolloutConfig:
        """``rollout`` with the card's prompt where ``explicit`` (the options the user set: dialect,
        few_shot, system_prompt) does not say otherwise."""
        changes: dict = {}
        if "dialect" not in explicit:
            changes["dialect"] = self.dialect
        if "few_shot" not in explicit:
            changes["few_shot"] = self.few_shot
        same_dialect = changes.get("dialect", rollout.dialect) == self.dialect
        if "system_prompt" not in explicit and same_dialect and rollout.tools == self.tools:
            changes["system_prompt"] = self.system_prompt
        return replace(rollout, **changes)


def write_card(folder: str | Path, rollout: RolloutConfig) -> Path:
    path = Path(folder) / CARD_FILE
    card = PromptCard.of(rollout)
    path.write_text(json.dumps({"dialect": card.dialect, "few_shot": card.few_shot,
                                "system_prompt": card.system_prompt, "tools": card.tools}, indent=2) + "\n")
    return path


def read_card(folder: str | Path | None) -> PromptCard | None:
    """The card in ``folder`` (None when there is none: a model retool did not train). A card that
    cannot be read is an error, not a silent fallback to another prompt."""
    if folder is None or not (Path(folder) / CARD_FILE).is_file():
        return None
    path = Path(folder) / CARD_FILE
    try:
        raw = json.loads(path.read_text())
        card = PromptCard(str(raw["dialect"]), bool(raw["few_shot"]), str(raw["system_prompt"]), bool(raw.get("tools", True)))
        get_dialect(card.dialect)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a valid prompt card ({exc}); fix or delete it") from None
    return card


def rollout_for(model: str | None, rollout: RolloutConfig | None = None,
                explicit: frozenset[str] = frozenset()) -> RolloutConfig:
    """``rollout`` (default ``RolloutConfig()``) prompted the way ``model`` was trained, when it has
    a card, except where ``explicit`` (the options a user set) says otherwise; the CLI and library
    users alike (``rollout_for(None)`` is the embedded default's prompt)."""
    from retool.models import model_folder

    rollout = rollout if rollout is not None else RolloutConfig()
    card = read_card(model_folder(model))
    return rollout if card is None else card.apply(rollout, explicit)
