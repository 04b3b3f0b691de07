"""The steps of a trajectory, and exact prefixes of it to branch from.

A step is what one call of ``Rollout.step`` added: the model's text up to and including a code
block plus the interpreter's output for it (in the chat dialect: a model turn with its calls and
the tool message answering them), or the final segment. Its boundaries are token indices the
trajectory already records (each ``ToolCall``'s ``code_end`` and ``output_span``), so nothing is
re-tagged or re-tokenized and a verifier, a search or a labeller sees the same steps on the same
ids. Long prose may optionally be split further at blank lines (``split_prose``): those cuts fall
between the model's own tokens, never inside a tool span.

Layout (``ids``; a step ends where the interpreter output of its cell ends)::

    | reasoning … </code> <interpreter> out </interpreter> | reasoning … </code> <interpreter> … | answer |
    |<------------------------- step 0 ------------------->|<--------------- step 1 ------------>|<- 2 ->|

Not here: running anything (``retool.search.replay`` gives a branch its interpreter state),
scoring steps (``retool.search.verifiers``).
"""

from __future__ import annotations

from dataclasses import dataclass

from retool.trajectory import ToolCall, Trajectory


@dataclass(frozen=True)
class StepSpan:
    """One step: ``ids[start:end]`` of its trajectory, and the cells it ran."""

    index: int  # 0-based position among the trajectory's steps
    start: int  # first id of the step (in ``ids``, not counting the prompt)
    end: int  # one past its last id: the boundary a verifier scores at (``end - 1`` is its last token)
    calls: tuple[ToolCall, ...] = ()  # the cells of this step (several in one chat turn), in order

    @property
    def runs_code(self) -> bool:
        return bool(self.calls)


def steps(traj: Trajectory, *, split_prose: bool = False, tokenizer=None) -> list[StepSpan]:
    """The trajectory's steps in order; they partition ``ids`` (an empty trajectory has none).

    Calls that share a ``code_end`` were written in one model turn and answered together: they
    are one step. ``split_prose`` (needs ``tokenizer``) also cuts after any of the model's tokens
    that ends a blank line, when text follows it in the same step."""
    bounds: list[tuple[int, tuple[ToolCall, ...]]] = []
    for call in traj.tool_calls:
        end = max(call.output_span[1], call.code_end)
        if bounds and call.code_end <= bounds[-1][0]:  # another call of the same turn
            prev_end, prev_calls = bounds[-1]
            bounds[-1] = (max(prev_end, end), prev_calls + (call,))
        else:
            bounds.append((end, (call,)))
    if not bounds or bounds[-1][0] < len(traj.ids):
        bounds.append((len(traj.ids), ()))
    spans, start = [], 0
    for end, calls in bounds:
        if end <= start and not calls:
            continue
        cuts = _prose_cuts(traj, start, calls[0].code_end if calls else end, tokenizer) if split_prose else []
        for cut in cuts:
            spans.append(StepSpan(len(spans), start, cut))
            start = cut
        spans.append(StepSpan(len(spans), start, end, calls))
        start = end
    return spans


def _prose_cuts(traj: Trajectory, start: int, stop: int, tokenizer) -> list[int]:
    """Indices in ``(start, stop)`` just after a model token that closes a blank line."""
    if tokenizer is None:
        raise ValueError("split_prose needs the tokenizer, to find blank lines")
    cuts, text = [], ""
    for i in range(start, stop):
        piece = tokenizer.decode([traj.ids[i]], skip_special_tokens=False)
        text += piece
        if traj.loss_mask[i] and "\n" in piece and text.rstrip(" \t").endswith("\n\n") \
                and i + 1 < stop and text.strip():
            cuts.append(i + 1)
            text = ""
    return cuts


def prefix(traj: Trajectory, k: int, spans: list[StepSpan] | None = None) -> Trajectory:
    """A new, unfinished trajectory holding exactly the first ``k`` steps of ``traj`` (0: the
    prompt only): the same ids, masks, logprobs and recorded cells, ready to be continued."""
    spans = steps(traj) if spans is None else spans
    if not 0 <= k <= len(spans):
        raise ValueError(f"step prefix {k} out of range: the trajectory has {len(spans)} steps")
    end = spans[k - 1].end if k else 0
    calls = [c for c in traj.tool_calls if c.output_span[1] <= end and c.code_end <= end]
    branch = Trajectory(list(traj.prompt_ids), traj.ids[:end], traj.loss_mask[:end], traj.logprobs[:end], calls,
                        meta={**traj.meta, "prefix_steps": k})
    branch.check()
    return branch


def fork(traj: Trajectory) -> Trajectory:
    """An independent copy of an unfinished trajectory (appending to one leaves the other as it is)."""
    if traj.finished:
        raise ValueError(f"a finished trajectory ({traj.finish_reason}) cannot be continued; fork a prefix of it")
    return Trajectory(list(traj.prompt_ids), list(traj.ids), list(traj.loss_mask), list(traj.logprobs),
                      list(traj.tool_calls), meta=dict(traj.meta))


def boundaries(traj: Trajectory, spans: list[StepSpan] | None = None) -> list[int]:
    """Positions in ``prompt_ids + ids`` of each step's last token: where a PRM's score is read."""
    spans = steps(traj) if spans is None else spans
    return [len(traj.prompt_ids) + s.end - 1 for s in spans]
