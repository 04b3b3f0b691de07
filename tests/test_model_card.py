"""A trained model's prompt card: written by training, read by every command that runs a model, and
overridden only by what the user sets on the command line."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import typer
from typer.testing import CliRunner

from retool.cli.options import with_settings
from retool.model_card import CARD_FILE, PromptCard, read_card, write_card
from retool.models import EMBEDDED_ADAPTER, model_folder
from retool.protocol import FENCED, RETOOL
from retool.rollout import RolloutConfig

app = typer.Typer()


@app.command()
@with_settings("engine", "rollout")
def show(engine=None, rollout=None) -> None:
    typer.echo(json.dumps(asdict(rollout)))


def _run(*args: str) -> dict:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _model(tmp_path, **rollout):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    write_card(folder, RolloutConfig(**rollout))
    return str(folder)


def test_a_command_takes_the_models_prompt_where_the_user_set_none(tmp_path):
    model = _model(tmp_path, dialect="fenced", few_shot=False, system_prompt="Trained under this prompt.")
    got = _run("--model", model)
    assert (got["dialect"], got["few_shot"], got["system_prompt"]) == ("fenced", False, "Trained under this prompt.")


def test_what_the_user_sets_wins_and_a_prompt_for_another_dialect_is_not_carried_over(tmp_path):
    model = _model(tmp_path, dialect="fenced", few_shot=False, system_prompt="Trained under this prompt.")
    got = _run("--model", model, "--few-shot")
    assert got["few_shot"] is True and got["dialect"] == "fenced" and got["system_prompt"] == "Trained under this prompt."
    got = _run("--model", model, "--dialect", "retool")
    assert got["dialect"] == "retool" and got["system_prompt"] is None and got["few_shot"] is False


def test_a_model_without_a_card_keeps_the_library_defaults(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    got = _run("--model", str(folder))
    assert got == json.loads(json.dumps(asdict(RolloutConfig())))  # as the JSON report writes it


def test_the_card_records_the_exact_prompt_of_its_dialect(tmp_path):
    write_card(tmp_path, RolloutConfig(dialect="fenced"))
    assert read_card(tmp_path) == PromptCard("fenced", True, FENCED.system_prompt, True)
    write_card(tmp_path, RolloutConfig(max_tool_calls=0))
    assert read_card(tmp_path) == PromptCard("retool", True, RETOOL.text_system_prompt, False)


def test_a_broken_card_is_an_error_not_a_silent_default(tmp_path):
    (tmp_path / CARD_FILE).write_text('{"dialect": "klingon", "few_shot": true, "system_prompt": "x"}')
    with pytest.raises(ValueError, match="not a valid prompt card"):
        read_card(tmp_path)


def test_the_embedded_default_carries_a_card_in_the_default_dialect():
    assert model_folder(None) == EMBEDDED_ADAPTER
    card = read_card(EMBEDDED_ADAPTER)
    assert card is not None and card.dialect == RolloutConfig().dialect and card.tools
    assert card.system_prompt == RETOOL.system_prompt
