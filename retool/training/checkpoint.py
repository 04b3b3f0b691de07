"""PPO checkpoints: everything needed for a resumed run to continue as if never stopped.

``checkpoints/step-N/`` holds accelerate's state (both models, both optimizers, the python / numpy /
torch RNG states) plus ``trainer.json`` (step and data position). It is written to a temporary
directory and renamed into place, so a crash or a second Ctrl-C mid-save leaves the previous
checkpoint intact; the newest ``keep`` are kept.

Not here: the SFT and GRPO trainers' checkpoints (the HF Trainer writes those itself).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

from retool.seeds import derive_seed

_STEP_DIR = re.compile(r"^step-(\d+)$")


class DataCursor:
    """Where the trainer is in its problem set: a seeded permutation per epoch and an offset."""

    def __init__(self, size: int, seed: int) -> None:
        if size < 1:
            raise ValueError("no training problems")
        self.size, self.seed = size, seed
        self.epoch, self.offset = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        order = list(range(self.size))
        random.Random(derive_seed(self.seed, "data-order", self.epoch)).shuffle(order)
        return order

    def take(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if self.offset == self.size:
                self.epoch, self.offset = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(self._order[self.offset])
            self.offset += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset, "size": self.size, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (state["size"], state["seed"]) != (self.size, self.seed):
            raise ValueError(f"the checkpoint was taken on {state['size']} problems with seed {state['seed']}; "
                             f"this run has {self.size} with seed {self.seed}: not the same data, cannot resume")
        self.epoch, self.offset = state["epoch"], state["offset"]
        self._order = self._permutation()


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every complete checkpoint under ``root``, oldest first."""
    return sorted((int(m.group(1)), p) for p in root.glob("step-*") if (m := _STEP_DIR.match(p.name)) and p.is_dir())


def latest_checkpoint(root: Path) -> Path | None:
    steps = _step_dirs(root)
    return steps[-1][1] if steps else None


def save_checkpoint(root: Path, step: int, trainer: Any, keep: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / f"step-{step}", root / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.save_state(str(tmp))
    (tmp / "trainer.json").write_text(json.dumps({"step": step, "data": trainer.cursor.state_dict()}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for _, path in _step_dirs(root)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    return final


def load_checkpoint(path: Path, trainer: Any) -> int:
    """Restore ``trainer`` from ``path``; returns the step it was taken at."""
    meta = json.loads((path / "trainer.json").read_text())
    trainer.accelerator.load_state(str(path))
    trainer.cursor.load_state_dict(meta["data"])
    return int(meta["step"])
