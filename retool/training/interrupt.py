"""Ctrl-C during training: finish the current step, save a checkpoint, exit cleanly.

The first SIGINT (or SIGTERM, which schedulers send before killing a job) only sets a flag; the
trainers check it after each optimizer step, save, and return. A second SIGINT raises
``KeyboardInterrupt`` at once for a user who really wants out (the last *completed* checkpoint
stays valid: checkpoints are written to a temporary directory and renamed into place).

Not here: what to save (``checkpoint.py`` for PPO, the HF ``Trainer`` for SFT and GRPO).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from transformers import TrainerCallback


class StopRequest:
    """A flag set by the signal handlers while installed (``with StopRequest() as stop``)."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name}: finishing this step, saving a checkpoint, then stopping "
              "(Ctrl-C again to quit without saving)", flush=True)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class StopOnRequestCallback(TrainerCallback):
    """For HF/TRL trainers: after the step during which a stop was requested, save and stop."""

    def __init__(self, stop: StopRequest) -> None:
        self.stop = stop

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop.requested:
            control.should_save = True
            control.should_training_stop = True
        return control
