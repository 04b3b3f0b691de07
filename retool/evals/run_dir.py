"""Reading a finished ``retool eval --out`` directory back: its settings and its graded samples.

Why: step labelling (``retool prm label``) continues a run's trajectories with the same policy, and
reranking (``retool search rerank``) selects among its samples offline; both need the run exactly as
it was sampled. ``results.json`` holds the whole ``EvalConfig`` (the API key never written);
``trajectories.jsonl`` the samples (``harness.load_samples``).

Not here: running or resuming an evaluation (``harness``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retool.engines.base import SamplingParams
from retool.engines.spec import EngineSpec
from retool.evals.harness import EvalConfig, load_samples
from retool.grading import ScoredSample
from retool.rollout import RolloutConfig
from retool.sandbox.base import SandboxLimits
from retool.sandbox.spec import SandboxSpec


@dataclass(frozen=True)
class EvalRun:
    path: Path
    config: EvalConfig
    samples: list[ScoredSample]

    def by_problem(self) -> dict[str, list[ScoredSample]]:
        """Samples grouped by problem, in sample order (problems in the order first seen)."""
        groups: dict[str, list[ScoredSample]] = {}
        for s in sorted(self.samples, key=lambda s: s.sample):
            groups.setdefault(s.problem_id, []).append(s)
        return groups


def config_from_json(data: dict[str, Any]) -> EvalConfig:
    """The ``EvalConfig`` that ``EvalResult.to_json`` wrote."""
    engine = EngineSpec(**data["engine"])
    sandbox = SandboxSpec(data["sandbox"]["backend"], SandboxLimits(**data["sandbox"]["limits"]))
    r = dict(data["rollout"])
    rollout = RolloutConfig(**{**r, "sampling": SamplingParams(**r["sampling"]),
                               "client_tools": tuple(r.get("client_tools", ()))})
    rest = {k: v for k, v in data.items() if k not in ("engine", "sandbox", "rollout")}
    return EvalConfig(engine=engine, sandbox=sandbox, rollout=rollout, **rest)


def load_run(path: str | Path) -> EvalRun:
    """A finished run; a clear error when ``path`` is not one."""
    path = Path(path)
    results, samples = path / "results.json", path / "trajectories.jsonl"
    if not results.exists() or not samples.exists():
        raise FileNotFoundError(f"{path} is not a finished `retool eval --out` run "
                                f"(it needs results.json and trajectories.jsonl)")
    try:
        config = config_from_json(json.loads(results.read_text())["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{results} is unreadable: {exc}") from None
    return EvalRun(path, config, load_samples(samples))
