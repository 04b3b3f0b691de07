"""Labelled trajectories (``retool prm label``'s ``labels.jsonl``) as training examples for a verifier.

One example is one trajectory on its exact ids (``prompt_ids + ids``), with the positions a score
is read at and what it should be. Which positions depends on the objective:

* ``process``: every step boundary, towards the step's label (soft where measured, else hard);
* ``outcome`` (the ORM baseline): the final boundary only, towards the trajectory's correctness;
* ``implicit`` (PRIME): the whole trajectory towards its correctness (its positions, every step
  boundary, are only read, for the validation numbers).

The validation split is by problem (a hash of its id), so no problem is seen on both sides.
Trajectories longer than ``max_length`` keep the boundaries that fit (``dropped_boundaries``
counts the rest) rather than being cut mid-step silently.

Not here: models and the loop (``model.py``, ``train.py``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from retool.prm.labels import LabeledTrajectory, load_labels

OBJECTIVES = ("process", "outcome", "implicit")


@dataclass(frozen=True)
class PRMExample:
    problem_id: str
    sample: int
    input_ids: tuple[int, ...]  # prompt_ids + ids, cut at max_length
    prompt_length: int
    loss_mask: tuple[int, ...]  # over input_ids: 1 for the model's own tokens (the implicit PRM's sum)
    positions: tuple[int, ...]  # where scores are read (indices into input_ids)
    targets: tuple[float, ...]  # one per position, in [0, 1]
    hard: tuple[int, ...]  # the hard labels at those positions (for AUROC)
    outcome: int  # 1: the trajectory's final answer is right


def is_validation(problem_id: str, fraction: float) -> bool:
    """Salted, so that a split made upstream by a hash of the same ids (the experiment's halves)
    does not decide this one too."""
    digest = hashlib.sha256(f"prm-validation/{problem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction


def example_of(row: LabeledTrajectory, objective: str, max_length: int) -> tuple[PRMExample, int]:
    """The example for ``row`` and how many of its boundaries did not fit in ``max_length``."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    traj = row.trajectory
    ids = (traj.prompt_ids + traj.ids)[:max_length]
    mask = ([0] * len(traj.prompt_ids) + traj.loss_mask)[:max_length]
    labels = row.labels[-1:] if objective == "outcome" else row.labels
    keep = [lab for lab in labels if lab.boundary < len(ids)]
    if objective == "outcome":
        targets = [float(row.correct)] * len(keep)
        hard = [int(row.correct)] * len(keep)
    else:
        targets, hard = [lab.target for lab in keep], [lab.hard for lab in keep]
    example = PRMExample(row.problem_id, row.sample, tuple(ids), len(traj.prompt_ids), tuple(mask),
                         tuple(lab.boundary for lab in keep), tuple(targets), tuple(hard), int(row.correct))
    return example, len(labels) - len(keep)


def load_examples(paths: list[str], objective: str, max_length: int, val_fraction: float
                  ) -> tuple[list[PRMExample], list[PRMExample], int]:
    """``(train, validation, dropped boundaries)`` from label files or directories holding ``labels.jsonl``."""
    train, val, dropped = [], [], 0
    for name in paths:
        path = Path(name)
        path = path / "labels.jsonl" if path.is_dir() else path
        if not path.exists():
            raise FileNotFoundError(f"no labels at {path} (make them with `retool prm label`)")
        for row in load_labels(path):
            example, lost = example_of(row, objective, max_length)
            dropped += lost
            if not example.positions:
                continue
            (val if is_validation(row.problem_id, val_fraction) else train).append(example)
    if not train:
        raise ValueError(f"no training examples in {', '.join(paths)} (all in the validation split, or empty)")
    return train, val, dropped
