"""The layout's promises: no import runs from a lower layer to a higher one, the core imports
without the optional stacks, a command whose extra is missing says which pip install fixes it,
and no module outgrows 400 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from retool.extras import install_hint

ROOT = Path(__file__).resolve().parents[1] / "retool"
# lower first; a module may import its own layer and the ones below it, never one above
LAYERS = [
    {"protocol", "trajectory", "engines", "sandbox", "rollout", "rollout_config", "budget", "grading", "datasets", "models", "seeds",
     "terminal", "transcript", "trajectory_stats", "extras", "model_card", "http_limits"},
    {"coldstart", "evals", "training", "prm", "search"},
    {"apps", "bench"},
    {"cli"},
]
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}
# a module the spine runs is never a front end's: the spine may not reach up for one (lazily either)
BLOCKED = {"torch", "trl", "peft", "fastapi", "uvicorn", "matplotlib", "nbformat", "datasets", "accelerate",
           "tensorboard", "gguf", "safetensors", "pyarrow", "docker", "vllm", "yaml"}


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        yield path, path.relative_to(ROOT).parts[0].removesuffix(".py")


def test_every_part_of_the_package_has_a_layer():
    assert {top for _, top in _modules() if top != "__init__"} <= set(LAYER_OF)


def test_no_import_runs_from_a_lower_layer_to_a_higher_one():
    wrong = []
    for path, top in _modules():
        if top == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for name in names:
                parts = name.split(".")
                if parts[0] == "retool" and len(parts) > 1 and LAYER_OF.get(parts[1], 0) > LAYER_OF[top]:
                    wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_no_module_is_over_400_lines():
    long = [f"{p.relative_to(ROOT)}: {n}" for p, _ in _modules() if (n := len(p.read_text().splitlines())) > 400]
    assert not long, long


BLOCKER = f"""
import importlib, importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {sorted(BLOCKED)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Blocker())
"""


def test_the_core_imports_without_the_training_serving_and_model_stacks():
    core = ["retool.protocol", "retool.trajectory", "retool.sandbox", "retool.sandbox.jupyter", "retool.rollout",
            "retool.grading", "retool.datasets", "retool.engines.openai", "retool.trajectory_stats", "retool.cli"]
    code = BLOCKER + "".join(f"import {m}\n" for m in core) + "print('imported')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "imported" in out.stdout, out.stderr[-2000:]


def test_a_command_whose_extra_is_missing_says_which_install_fixes_it(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: [x.jsonl]\noutput_dir: out\n")
    code = BLOCKER + f"sys.argv = ['retool', 'sft', '--recipe', {str(recipe)!r}]\nfrom retool.cli import main\nmain()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 4, out.stderr[-2000:]
    assert "pip install 'retool[train]'" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("module, extra", [("torch", "hf"), ("trl.trainer", "train"), ("fastapi", "serve"),
                                           ("nbformat", "eval"), ("docker", "docker")])
def test_install_hints_name_the_extra(module, extra):
    assert f"retool[{extra}]" in install_hint(ModuleNotFoundError(f"No module named {module!r}", name=module))
    assert install_hint(ModuleNotFoundError("No module named 'nope'", name="nope")) is None
