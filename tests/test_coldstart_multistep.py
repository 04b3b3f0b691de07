"""Multi-step cold-start families: several dependent cells per trace, each verified by running it.

What is pinned: the generator is deterministic; every family's verified trace has two or more
executed cells, and each later cell uses names an earlier cell of the *same* trace defined (alone,
in an empty interpreter, it fails); a tampered second output is rejected; the text solution reaches
the same answer; the held-out split is disjoint and loads as a benchmark; and adding the family set
left the shipped single-cell families' output unchanged (hashes computed before the change).
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pytest

from retool.coldstart.pipeline import SynthConfig, run_synth
from retool.coldstart.synth import FAMILIES, generate, is_heldout
from retool.coldstart.synth_general import GENERAL_FAMILIES
from retool.coldstart.synth_multistep import MULTISTEP_FAMILIES, MULTISTEP_VERSION
from retool.coldstart.verify import parse_blocks, verify_trace
from retool.datasets import load_benchmark
from retool.protocol import RETOOL
from retool.sandbox import create_session
from retool.sandbox.spec import SandboxSpec

ROOT = Path(__file__).resolve().parents[1]
BUILT = ROOT / "coldstart_data" / "multistep"
# sha256 of generate(20, seed=0) per family set, taken before synth_multistep existed: the shipped
# data and adapter were built from these, so they must never move
PINNED = {"synth": ("f6891b78dfb14555ddc5ff82a86aef6ae2db11913c1dc22167f600d0f682094f", FAMILIES),
          "general": ("74d9c7d413ef107eaa85422ea8ea09650f4661ab9492dabab6e48f2eb68031e6", GENERAL_FAMILIES)}


def digest(examples) -> str:
    return hashlib.sha256(json.dumps([dataclasses.asdict(e) for e in examples]).encode()).hexdigest()


def one_per_family(seed: int = 0):
    return generate(len(MULTISTEP_FAMILIES), seed=seed, families=MULTISTEP_FAMILIES)


@pytest.fixture(scope="module")
def session():
    with create_session("jupyter") as s:
        yield s


@pytest.fixture(scope="module")
def verified(session):
    """Two examples per family, each verified in an emptied interpreter (no names from before)."""
    checks = []
    for example in generate(2 * len(MULTISTEP_FAMILIES), seed=7, families=MULTISTEP_FAMILIES):
        session.restart()
        checks.append((example, verify_trace(example.code_solution, example.answer, RETOOL, session)))
    return checks


@pytest.mark.parametrize("name", sorted(PINNED))
def test_the_existing_family_sets_are_unchanged(name):
    pinned, families = PINNED[name]
    assert digest(generate(20, seed=0, families=families)) == pinned
    assert all(e.code_solution.count("<code>") == 1 for e in generate(50, seed=0, families=families))


def test_multistep_generation_is_deterministic_and_covers_every_family():
    first = generate(40, seed=5, families=MULTISTEP_FAMILIES)
    again, other = generate(40, seed=5, families=MULTISTEP_FAMILIES), generate(40, seed=6, families=MULTISTEP_FAMILIES)
    assert first == again != other
    assert {e.family for e in first} == set(MULTISTEP_FAMILIES) and len(MULTISTEP_FAMILIES) >= 3
    assert len({e.question for e in first}) == 40
    assert all(e.id.startswith(e.family + "-") for e in first)


def test_each_family_has_several_wordings():
    examples = generate(60 * len(MULTISTEP_FAMILIES), seed=1, families=MULTISTEP_FAMILIES)
    for family in MULTISTEP_FAMILIES:
        openings = {" ".join(e.question.split()[:3]) for e in examples if e.family == family}
        assert len(openings) >= 2, family


def _loaded_names(code: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _bound_names(code: str) -> set[str]:
    tree = ast.parse(code)
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.ImportFrom, ast.Import))]
    return names | {(a.asname or a.name).split(".")[0] for n in imports for a in n.names}


def test_every_verified_trace_runs_dependent_cells(verified):
    """≥ 2 executed cells; every later cell reads a name an earlier cell bound (not itself, not a
    builtin), and the first cell's result is nowhere in the question (the chain cannot be skipped)."""
    for example, check in verified:
        assert check.ok, (example.id, check.reason)
        blocks = parse_blocks(check.text, RETOOL)
        assert len(blocks) == len(check.outputs) >= 2 and all(b.claimed is not None for b in blocks)
        assert all(out.strip() for out in check.outputs)  # every step prints its result
        for index, block in enumerate(blocks[1:], 1):
            earlier = set().union(*(_bound_names(b.code) for b in blocks[:index]))
            used = (_loaded_names(block.code) - _bound_names(block.code) - set(dir(builtins))) & earlier
            assert used, (example.id, index, block.code)
        assert check.outputs[0].strip() not in example.question, example.id
        assert check.outputs[-1].strip().splitlines()[-1] == example.answer


def test_a_later_cell_alone_fails_in_an_empty_interpreter():
    """The dependence is real: without the earlier cells (a stateless session) the later ones fail."""
    stateless = create_session("subprocess")
    for example in one_per_family():
        later = parse_blocks(example.code_solution, RETOOL)[1]
        result = stateless.run(later.code)
        assert not result.ok and result.error.startswith("NameError"), (example.id, result.error)


def test_a_tampered_second_output_is_rejected(session, verified):
    for example, check in verified[: len(MULTISTEP_FAMILIES)]:
        spans = list(re.finditer(r"<interpreter>\n(.*?)\n</interpreter>", check.text, re.DOTALL))
        second = spans[1]  # one more digit on the second cell's printed value: a number it does not print
        lied = check.text[:second.end(1)] + "7" + check.text[second.end(1):]
        session.restart()
        verdict = verify_trace(lied, example.answer, RETOOL, session)
        assert not verdict.ok and verdict.stage == "execution" and verdict.reason.startswith("block 2 claims"), \
            (example.id, verdict.reason)


def test_the_text_solution_reaches_the_code_answer(session, verified):
    for example, check in verified:
        text = verify_trace(example.text_solution, example.answer, RETOOL, session, require_code=False)
        assert text.ok and "<code>" not in example.text_solution
        assert text.answer == check.answer == example.answer


def test_run_synth_multistep_keeps_every_trace_and_splits_disjointly(tmp_path):
    stats = run_synth(SynthConfig(16, str(tmp_path / "m"), seed=2, heldout=0.3, families="multistep"))
    assert stats["generator_version"] == MULTISTEP_VERSION and not stats["dropped"]
    code = [json.loads(line) for line in (tmp_path / "m" / "code.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (tmp_path / "m" / "heldout.jsonl").read_text().splitlines()]
    assert stats["train"] == len(code) and stats["heldout"] == len(held) > 0
    assert not {r["id"] for r in code} & {r["id"] for r in held}
    assert all(r["messages"][1]["content"].count("<interpreter>") >= 2 for r in code + held)


def test_a_stateless_sandbox_is_refused_up_front(tmp_path):
    with pytest.raises(ValueError, match="stateful sandbox"):
        run_synth(SynthConfig(4, str(tmp_path / "s"), families="multistep", sandbox=SandboxSpec("subprocess")))


def test_multistep_fenced_data_verifies_in_that_dialect(tmp_path):
    stats = run_synth(SynthConfig(4, str(tmp_path / "f"), seed=3, heldout=0.0, dialect="fenced", families="multistep"))
    lines = (tmp_path / "f" / "code.jsonl").read_text().splitlines()
    code = [json.loads(line)["messages"][1]["content"] for line in lines]
    assert stats["train"] == 4 and not stats["dropped"]
    assert all(c.count("```output") >= 2 and "<code>" not in c for c in code)


def test_the_built_set_is_the_generators_split_and_its_heldout_loads_as_a_benchmark():
    """``coldstart_data/multistep`` is ``synth --families multistep --n 500 --seed 0``: its rows are
    the generator's in order, split by ``is_heldout``; the held-out file loads like any benchmark."""
    stats = json.loads((BUILT / "stats.json").read_text())
    assert stats["generator_version"] == MULTISTEP_VERSION and stats["acceptance_rate"] == 1.0
    examples = generate(stats["generated"], stats["seed"], MULTISTEP_FAMILIES)
    rows = {name: [json.loads(line) for line in (BUILT / f"{name}.jsonl").read_text().splitlines()]
            for name in ("code", "text", "heldout")}
    fraction = stats["heldout_fraction"]
    assert [r["id"] for r in rows["code"]] == [e.id for e in examples if not is_heldout(e, fraction)]
    assert [r["id"] for r in rows["heldout"]] == [e.id for e in examples if is_heldout(e, fraction)]
    assert [r["id"] for r in rows["text"]] == [r["id"] for r in rows["code"]]
    train_questions = {r["messages"][0]["content"] for r in rows["code"]}
    problems = load_benchmark(str(BUILT / "heldout.jsonl"))
    assert len(problems) == stats["heldout"] == len(rows["heldout"]) > 0
    assert [(p.id, p.answer) for p in problems] == [(r["id"], r["answer"]) for r in rows["heldout"]]
    assert not {p.problem for p in problems} & train_questions


def test_no_multistep_question_uses_the_probe_sets_wording():
    probe = [json.loads(line)["problem"].lower() for line in
             (ROOT / "evals" / "benchmarks" / "novel20.jsonl").read_text().splitlines()]
    generated = [e.question.lower() for e in generate(500, seed=0, families=MULTISTEP_FAMILIES)]
    for question in probe:
        words = question.split()
        grams = {" ".join(words[i:i + 6]) for i in range(len(words) - 5)}
        assert not any(g in q for g in grams for q in generated), question
