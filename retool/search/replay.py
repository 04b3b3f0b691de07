"""A branch's interpreter state: the prefix's recorded cells replayed into a fresh session, lazily.

A continuation from a step prefix needs the names the prefix's cells defined. ``ReplaySession``
is a ``Session`` that holds the prefix's cells and their recorded results and does nothing until
the branch runs code of its own; then it takes a fresh session from the pool, runs the recorded
cells in order and compares each output with the recorded one (status, stdout, error). A branch
that never runs code costs no sandbox at all.

A mismatch — the cell printed something else (randomness, the clock, a changed environment) — is
not a silent divergence: the replay stops, ``mismatch`` says which cell differed and how, and
every later cell of the branch is answered with an ``infra_error`` result, so the rollout
finishes the branch as an infrastructure failure, which no caller scores or trains on. Callers
count the event (``retool prm label`` reports the replay mismatch rate).

Not here: which prefix to branch from (``retool.search.steps``), seeds (the caller gives each
branch its own ``index``).
"""

from __future__ import annotations

from dataclasses import dataclass

from retool.sandbox.base import ExecResult, ExecStatus, SandboxLimits, Session
from retool.sandbox.lease import LazySession
from retool.trajectory import ToolCall, Trajectory

REPLAY_WAIT_S = 300.0  # how long a branch waits for a fresh session before its replay is an infra failure


@dataclass(frozen=True)
class ReplayMismatch:
    """A recorded cell whose replay came out differently."""

    cell: int  # 0-based among the replayed cells
    code: str
    recorded: str  # "status: stdout / error", as recorded
    replayed: str  # the same, as it came out now

    def describe(self) -> str:
        return (f"ReplayMismatch: cell {self.cell} gave {self.replayed[:80]!r}, "
                f"recorded {self.recorded[:80]!r}")


def replayable_cells(traj: Trajectory) -> list[ToolCall]:
    """The cells that really ran in ``traj`` (invalid chat calls never reached the interpreter)."""
    return [c for c in traj.tool_calls if c.invalid is None and not c.result.infra_failure]


def _signature(result: ExecResult) -> str:
    return f"{result.status.value}: {result.stdout.strip()} / {result.error or ''}"


class ReplaySession(LazySession):
    """A pool session, taken at the branch's first own cell, that first replays ``cells`` (see the
    module doc). Close it to give the underlying session back to the pool."""

    backend = "replay"

    def __init__(self, pool, cells: list[ToolCall], limits: SandboxLimits | None = None) -> None:
        super().__init__(pool, REPLAY_WAIT_S, limits)
        self.cells = list(cells)
        self.replayed = False  # the recorded cells have been run (lazily, before the first own cell)
        self.mismatch: ReplayMismatch | None = None

    @classmethod
    def of(cls, pool, prefix: Trajectory) -> "ReplaySession":
        return cls(pool, replayable_cells(prefix))

    def _run(self, code: str, timeout: float) -> ExecResult:
        inner = self._inner()
        if isinstance(inner, ExecResult):
            return inner
        if self.mismatch is None and not self.replayed:
            self._replay(inner)
        if self.mismatch is not None:
            return ExecResult(ExecStatus.INFRA_ERROR, error=self.mismatch.describe())
        return inner.run(code, timeout)

    def _replay(self, inner: Session) -> None:
        for i, call in enumerate(self.cells):
            result = inner.run(call.code)
            if _signature(result) != _signature(call.result):
                self.mismatch = ReplayMismatch(i, call.code, _signature(call.result), _signature(result))
                return
        self.replayed = True

    def restart(self) -> None:
        """The interpreter is replaced, as a timeout replaces any session's: earlier names are gone
        (the cell's result says ``session_reset``), exactly as they would be without a branch."""
        super().restart()
