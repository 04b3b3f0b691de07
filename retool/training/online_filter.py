"""Online prompt filtering (PRIME's accuracy filter, DAPO's dynamic sampling): a training batch is
filled only with *informative* groups — prompts whose sample accuracy lies in ``[low, high]`` —
because a group where every sample is right (or every one wrong) has no spread and, under a group
baseline, no gradient.

``FilterBuffer`` is the bookkeeping, pure and independent of the trainer: groups are offered as
they are sampled (``offer``), kept or dropped by their accuracy; ``take(n)`` hands out a full batch
of n kept groups when there are enough, and what is left over is carried to the next step instead
of being thrown away. The trainer samples ``oversample × n`` prompts per round until ``take``
succeeds (or its round limit is reached). Counters say what was filtered, for the logs.

Not here: sampling, rewards, the trainers themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Sequence, TypeVar

G = TypeVar("G")


@dataclass(frozen=True)
class OnlineFilter:
    accuracy: tuple[float, float] = (0.2, 0.8)  # [low, high], inclusive
    oversample: float = 2.0  # prompts sampled per round ÷ groups still needed
    max_rounds: int = 8  # sampling rounds per step before training on what there is

    def __post_init__(self) -> None:
        low, high = self.accuracy
        if not 0.0 <= low <= high <= 1.0 or self.oversample < 1.0 or self.max_rounds < 1:
            raise ValueError(f"online_filter needs 0 <= low <= high <= 1, oversample >= 1, max_rounds >= 1: {self}")

    def keeps(self, rewards: Sequence[float]) -> bool:
        """Whether a group with these outcome rewards (1 = correct) is informative."""
        if not rewards:
            return False
        accuracy = sum(r > 0 for r in rewards) / len(rewards)
        return self.accuracy[0] <= accuracy <= self.accuracy[1]

    def to_sample(self, needed: int) -> int:
        """How many prompts to sample this round for ``needed`` more groups."""
        return max(needed, round(self.oversample * needed))


@dataclass
class FilterBuffer(Generic[G]):
    settings: OnlineFilter
    kept: list[G] = field(default_factory=list)
    offered: int = 0
    dropped_all_correct: int = 0
    dropped_all_wrong: int = 0
    dropped_other: int = 0  # outside [low, high] but neither all right nor all wrong

    def offer(self, group: G, rewards: Sequence[float]) -> bool:
        self.offered += 1
        if self.settings.keeps(rewards):
            self.kept.append(group)
            return True
        right = sum(r > 0 for r in rewards)
        if rewards and right == len(rewards):
            self.dropped_all_correct += 1
        elif right == 0:
            self.dropped_all_wrong += 1
        else:
            self.dropped_other += 1
        return False

    def needed(self, n: int) -> int:
        return max(0, n - len(self.kept))

    def take(self, n: int, force: bool = False) -> list[G] | None:
        """``n`` kept groups, oldest first (the rest stay for the next step); None while fewer are
        kept, unless ``force`` (out of rounds: train on what there is, possibly nothing)."""
        if len(self.kept) < n and not force:
            return None
        batch, self.kept = self.kept[:n], self.kept[n:]
        return batch

    def stats(self) -> dict[str, float]:
        dropped = self.dropped_all_correct + self.dropped_all_wrong + self.dropped_other
        return {"filter/offered": self.offered, "filter/dropped": dropped,
                "filter/dropped_all_correct": self.dropped_all_correct,
                "filter/dropped_all_wrong": self.dropped_all_wrong, "filter/carried": len(self.kept),
                "filter/kept_share": (self.offered - dropped) / self.offered if self.offered else 0.0}
