"""Where a training run writes its numbers: ``metrics.jsonl`` always, TensorBoard and W&B on request.

Why one object: the SFT, GRPO/DAPO and PPO trainers all report the same kind of per-step
scalars, and a run must be readable afterwards without the dashboard that happened to be running.
``metrics.jsonl`` is the durable record (one flushed line per ``scalars`` call, so a crash loses
nothing already logged); TensorBoard (``run_dir/tb``) and W&B are views of the same numbers.
``retool.training.plot`` draws PNGs from ``metrics.jsonl`` alone.

Files under ``run_dir``:

* ``metrics.jsonl`` — ``{"step": int, "time": unix seconds, "<name>": float, ...}`` per call;
* ``samples.jsonl`` — ``{"step": int, **record}`` per sample trajectory written;
* ``config.json``   — the run's settings, when given;
* ``tb/``           — TensorBoard event files (``report_to`` contains ``"tensorboard"``).

Metric names (the contract between the trainers, this log and the plots; a trainer logs the ones
that apply to it, and any other name is accepted and plotted under "other"; the tool and token
numbers are ``retool.trajectory_stats``, the definitions ``retool eval`` reports):

==========================  =====================================================================
``reward/mean``             mean outcome reward of the step's samples
``accuracy``                share of the step's samples whose final answer is right
``entropy``                 mean per-token policy entropy over model tokens
``kl``                      mean KL to the reference model (0 / absent when beta = 0)
``clip_frac``               share of model tokens whose ratio was clipped
``tools/calls_per_answer``  mean interpreter calls per sample
``tools/failure_rate``      share of interpreter calls that errored or timed out
``tools/code_ratio``        share of samples that called the interpreter at least once
``tools/first_call_position`` where the first call ended, as a share of the sample's tokens
``tools/limit_rate``        share of samples ended by ``max_tool_calls``
``tokens/model_mean``       mean model-generated tokens per sample
``tokens/interpreter_mean`` mean interpreter-output tokens per sample (masked from the loss)
``truncation_rate``         share of samples cut at ``max_total_tokens``
``zero_adv_group_share``    share of groups whose samples all got the same reward (no signal)
``time/rollout_s``          wall seconds generating the step's samples
``time/sandbox_s``          wall seconds spent in the interpreter during the rollout
``time/update_s``           wall seconds in the optimisation step(s)
``infra/failure_rate``      share of samples stopped by an infrastructure failure (not scored, no loss)
``loss/policy``             policy (actor) loss
``loss/value``              value (critic) loss — PPO
``value/clip_frac``         share of value predictions clipped — PPO
``grad_norm``               gradient norm before clipping
``lr``                      current learning rate
``sft/loss``                SFT cross-entropy loss
``eval/accuracy``           held-out accuracy, when the trainer evaluates
==========================  =====================================================================

Deliberately not here: computing any metric, deciding which process logs (create a ``RunLog``
on the main process only), checkpoints, and rewinding W&B on resume (``truncate_after`` rewrites
the local files and restarts TensorBoard's step count; W&B keeps what it already received).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)

METRIC_NAMES: tuple[str, ...] = (
    "reward/mean", "accuracy", "entropy", "kl", "clip_frac",
    "tools/calls_per_answer", "tools/failure_rate", "tools/code_ratio", "tools/first_call_position", "tools/limit_rate",
    "tokens/model_mean", "tokens/interpreter_mean",
    "truncation_rate", "zero_adv_group_share",
    "time/rollout_s", "time/sandbox_s", "time/update_s", "infra/failure_rate",
    "loss/policy", "loss/value", "value/clip_frac",
    "grad_norm", "lr", "sft/loss", "eval/accuracy",
)
BACKENDS = ("tensorboard", "wandb", "none")
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
CONFIG_FILE = "config.json"
_RESERVED = ("step", "time")


class RunLog:
    """Per-step scalars and sample records of one run; a context manager (``close`` on exit)."""

    def __init__(self, run_dir: Path, report_to: Sequence[str] = ("tensorboard",),
                 config: Mapping[str, Any] | None = None) -> None:
        if isinstance(report_to, str):
            report_to = (report_to,)
        unknown = sorted(set(report_to) - set(BACKENDS))
        if unknown:
            raise ValueError(f"unknown report_to {unknown}; choose from {', '.join(BACKENDS)}")
        wandb = _import_wandb() if "wandb" in report_to else None  # fail before creating anything
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS_FILE
        self.samples_path = self.run_dir / SAMPLES_FILE
        for path in (self.metrics_path, self.samples_path):
            _end_partial_line(path)
        self._closed = False
        self._tb = self._open_tensorboard() if "tensorboard" in report_to else None
        self._wandb_run = None
        config_dict = dict(config) if config is not None else None
        if config_dict is not None:
            text = json.dumps(config_dict, indent=2, default=str, ensure_ascii=False)
            (self.run_dir / CONFIG_FILE).write_text(text + "\n")
            if self._tb is not None:
                # indented four spaces: TensorBoard renders text as markdown, this keeps it verbatim
                self._tb.add_text("config", "\n".join("    " + line for line in text.splitlines()), 0)
                self._tb.flush()
        if wandb is not None:
            self._wandb_run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "retool"), name=self.run_dir.name,
                id=self._wandb_id(wandb), resume="allow", dir=str(self.run_dir), config=config_dict)

    # writing

    def scalars(self, step: int, values: Mapping[str, Any]) -> None:
        """Log one step's numbers; None and non-finite values are skipped, not written as NaN."""
        self._check_open()
        clash = [k for k in _RESERVED if k in values]
        if clash:
            raise ValueError(f"metric names {clash} are reserved for the line's own fields")
        clean: dict[str, float] = {}
        for key, value in values.items():
            if value is None:
                continue
            try:
                number = float(value)
            except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several elements
                raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__}: {value!r}") from None
            if math.isfinite(number):
                clean[key] = number
        line = {"step": int(step), "time": time.time(), **clean}
        _append_lines(self.metrics_path, [line])
        if self._tb is not None:
            for key, number in clean.items():
                self._tb.add_scalar(key, number, int(step))
            self._tb.flush()
        if self._wandb_run is not None and clean:
            self._wandb_run.log(clean, step=int(step))

    def samples(self, step: int, records: Sequence[Mapping[str, Any]]) -> None:
        """Append sample trajectories (any JSON-able fields; others are written with ``str``)."""
        self._check_open()
        lines = []
        for record in records:
            if "step" in record:
                raise ValueError("a sample record must not carry its own 'step'; it is added here")
            lines.append({"step": int(step), **record})
        if lines:
            _append_lines(self.samples_path, lines)

    def truncate_after(self, step: int) -> None:
        """Resuming from a checkpoint at ``step``: forget what was logged after it.

        Rewrites ``metrics.jsonl`` and ``samples.jsonl`` without lines whose step is greater
        (atomically: a temp file, then ``os.replace``), and restarts the TensorBoard writer with
        ``purge_step = step + 1`` so TensorBoard discards the abandoned tail of its curves.
        Unparseable lines (a line half-written by a crash) are dropped with a warning.
        """
        self._check_open()
        for path in (self.metrics_path, self.samples_path):
            _drop_lines_after(path, int(step))
        if self._tb is not None:
            self._tb.close()
            self._tb = self._open_tensorboard(purge_step=int(step) + 1)

    # lifetime

    def close(self) -> None:
        """Flush and close the backends; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._tb is not None:
            self._tb.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # internals

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the run log of {self.run_dir} is closed")

    def _open_tensorboard(self, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.run_dir / "tb"), purge_step=purge_step)

    def _wandb_id(self, wandb: Any) -> str:
        """The same W&B run across restarts of this run directory (kept in ``wandb_run_id``)."""
        path = self.run_dir / "wandb_run_id"
        if path.exists():
            return path.read_text().strip()
        run_id = wandb.util.generate_id()
        path.write_text(run_id + "\n")
        return run_id


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise RuntimeError("report_to includes 'wandb' but wandb is not installed: pip install retool[wandb]") from None
    return wandb


def _append_lines(path: Path, lines: Sequence[Mapping[str, Any]]) -> None:
    text = "".join(json.dumps(line, default=str, ensure_ascii=False) + "\n" for line in lines)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()


def _end_partial_line(path: Path) -> None:
    """A line cut short by a crash must not swallow the first line appended after a restart."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) != b"\n":
            handle.write(b"\n")


def _drop_lines_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    kept: list[str] = []
    dropped_bad = 0
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                line_step = int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                dropped_bad += 1
                continue
            if line_step <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
    if dropped_bad:
        logger.warning("dropped %d unparseable line(s) from %s while truncating after step %d",
                       dropped_bad, path, step)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.writelines(kept)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
