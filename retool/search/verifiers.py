"""Verifiers behind one protocol: one score in [0, 1] per step of each trajectory (``steps``).

* ``ExecutionHeuristic`` — free, from the interpreter's own signals: a step whose cells failed
  (error, timeout, crash, an invalid call) scores 0, one whose cells ran 1; the final step scores
  the share of cells that ran times how well the answer is supported (1 when it appears in the last
  cell's output, ½ when it does not or no cell ran, 0 without an answer). The baseline every
  learned verifier must beat.
* ``PRMVerifier`` — a trained PRM / ORM / implicit PRM (``retool.prm``) on the trajectories' exact
  ids, batched; the samples of one problem share their prompt, so a value-head PRM runs the prompt
  once and continues each sample from its cached keys and values (``verifier_tokens`` counts what
  was actually computed).
* ``TextPRMAdapter`` — an external PRM with its own tokenizer and step format (Qwen2.5-Math-PRM:
  steps joined by ``<extra_0>``, the positive-class probability read at each separator). Its
  scores are mapped back to our steps by order, and when the counts disagree (a step that contains
  the separator, a conversation cut by the context) it refuses with ``StepCountMismatch`` — never
  a zero-filled score.

Not here: aggregation and selection (``select.py``), what a step is (``steps.py``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any, Protocol

from retool.grading import extract_answer_from_trajectory, is_equivalent
from retool.protocol import Dialect
from retool.search.steps import boundaries, steps
from retool.trajectory import Trajectory


class StepCountMismatch(ValueError):
    """An external verifier saw another number of steps than the trajectory has."""


class Verifier(Protocol):
    name: str
    verifier_tokens: int  # tokens the verifier processed so far (a cost, reported with the curves)

    def score(self, problem: str, trajs: Sequence[Trajectory]) -> list[list[float]]:
        """For the samples of one problem: per trajectory, one score per step."""


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


class ExecutionHeuristic:
    name = "exec"

    def __init__(self, tokenizer: Any, dialect: Dialect) -> None:
        self.tokenizer, self.dialect = tokenizer, dialect
        self.verifier_tokens = 0

    def score(self, problem: str, trajs: Sequence[Trajectory]) -> list[list[float]]:
        return [self.score_one(t) for t in trajs]

    def score_one(self, traj: Trajectory) -> list[float]:
        spans = steps(traj)
        cells = [c for s in spans for c in s.calls]
        ran = [c.invalid is None and c.result.ok for c in cells]
        scores = [float(all(c.invalid is None and c.result.ok for c in s.calls)) for s in spans[:-1]]
        if not spans:
            return []
        answer = extract_answer_from_trajectory(traj, self.tokenizer, self.dialect)
        if answer is None:
            support = 0.0
        elif cells and ran[-1] and _supports(cells[-1].result.stdout, answer):
            support = 1.0
        else:
            support = 0.5
        final_cells = spans[-1].calls
        final_ok = all(c.invalid is None and c.result.ok for c in final_cells)
        ok_share = sum(ran) / len(ran) if ran else 1.0
        scores.append(support * ok_share * float(final_ok))
        return scores


def _supports(output: str, answer: str) -> bool:
    """The answer is what the last cell printed: its last line, or a number in it."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    if not lines:
        return False
    return is_equivalent(answer, lines[-1]) or any(is_equivalent(answer, n) for n in _NUMBER.findall(lines[-1]))


class PRMVerifier:
    """A trained verifier (``retool.prm.model.PRM``) reading its score at each step boundary."""

    def __init__(self, prm, batch_size: int = 4, name: str | None = None) -> None:
        self.prm, self.batch_size = prm, batch_size
        self.name = name or prm.objective
        self.verifier_tokens = 0
        config = prm.model.config
        self.max_length = getattr(config, "max_position_embeddings", None) or 4096

    def score(self, problem: str, trajs: Sequence[Trajectory]) -> list[list[float]]:
        if not trajs:
            return []
        shared = all(t.prompt_ids == trajs[0].prompt_ids for t in trajs)
        if self.prm.objective != "implicit" and shared and len(trajs) > 1:
            return self._with_prompt_cache(trajs)
        from retool.prm.data import PRMExample

        out = []
        for i in range(0, len(trajs), self.batch_size):
            batch = []
            for t in trajs[i:i + self.batch_size]:
                ids = (t.prompt_ids + t.ids)[: self.max_length]
                points = boundaries(t)
                if points and points[-1] >= len(ids):
                    raise ValueError(f"a trajectory of {len(ids)} tokens is longer than the verifier's context")
                batch.append(PRMExample("", 0, tuple(ids), len(t.prompt_ids),
                                        tuple([0] * len(t.prompt_ids) + t.loss_mask), tuple(points),
                                        (0.0,) * len(points), (0,) * len(points), 0))
                self.verifier_tokens += len(ids)
            out += self.prm.score(batch)
        return out

    def _with_prompt_cache(self, trajs: Sequence[Trajectory]) -> list[list[float]]:
        """The shared prompt once, then each sample from a copy of its keys and values."""
        import torch

        model = self.prm.model
        device = self.prm.device
        head = model.score if hasattr(model, "score") else model.classifier
        prompt = trajs[0].prompt_ids
        out = []
        with torch.no_grad():
            model.eval()
            base = model.base_model(input_ids=torch.tensor([prompt], device=device), use_cache=True)
            self.verifier_tokens += len(prompt)
            for t in trajs:
                if len(prompt) + len(t.ids) > self.max_length:
                    raise ValueError(f"a trajectory of {len(prompt) + len(t.ids)} tokens is longer than the "
                                     "verifier's context")
                if not t.ids:
                    out.append([])
                    continue
                past = copy.deepcopy(base.past_key_values)
                hidden = model.base_model(input_ids=torch.tensor([t.ids], device=device), past_key_values=past,
                                          use_cache=True).last_hidden_state[0]  # [len(ids), H]
                self.verifier_tokens += len(t.ids)
                ends = [s.end - 1 for s in steps(t)]
                out.append(torch.sigmoid(head(hidden[ends])[:, 0].float()).tolist())
        return out


class TextPRMAdapter:
    """An external text PRM: each step's text (model and interpreter, as the model read it) joined
    by ``separator`` in the PRM's own chat format, its positive-class probability at each separator."""

    def __init__(self, model, tokenizer, our_tokenizer, separator: str = "<extra_0>",
                 system: str = "Please reason step by step, and put your final answer within \\boxed{}.",
                 positive_index: int = 1, max_length: int = 4096, name: str = "text-prm") -> None:
        self.model, self.tokenizer, self.ours = model, tokenizer, our_tokenizer
        self.separator, self.system, self.positive_index = separator, system, positive_index
        self.max_length, self.name = max_length, name
        self.separator_id = tokenizer.convert_tokens_to_ids(separator)
        if self.separator_id is None or self.separator_id == tokenizer.unk_token_id:
            raise ValueError(f"the verifier's tokenizer has no {separator!r} token")
        self.verifier_tokens = 0

    def conversation_ids(self, problem: str, traj: Trajectory) -> list[int]:
        texts = [self.ours.decode(traj.ids[s.start:s.end], skip_special_tokens=True).strip() for s in steps(traj)]
        messages = [{"role": "system", "content": self.system}, {"role": "user", "content": problem},
                    {"role": "assistant", "content": "".join(t + self.separator for t in texts)}]
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        else:
            text = "\n".join(m["content"] for m in messages)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def score(self, problem: str, trajs: Sequence[Trajectory]) -> list[list[float]]:
        import torch

        out = []
        for traj in trajs:
            want = len(steps(traj))
            ids = self.conversation_ids(problem, traj)
            at = [i for i, t in enumerate(ids[: self.max_length]) if t == self.separator_id]
            if len(at) != want:
                raise StepCountMismatch(f"the verifier sees {len(at)} step separators where the trajectory has "
                                        f"{want} steps (a step containing {self.separator!r}, or past the verifier's "
                                        f"{self.max_length}-token context): refusing rather than guessing")
            with torch.no_grad():
                device = next(self.model.parameters()).device
                out_ = self.model(input_ids=torch.tensor([ids[: self.max_length]], device=device))
                logits = (out_.logits if hasattr(out_, "logits") else out_[0])[0]  # [T, C]
            probs = torch.softmax(logits[at].float(), -1)[:, self.positive_index]
            self.verifier_tokens += min(len(ids), self.max_length)
            out.append(probs.tolist())
        return out


def build_verifier(spec: str, tokenizer: Any, dialect: Dialect, device: str = "cpu") -> Verifier:
    """``exec``; ``text-prm:PATH`` (an external text PRM in Qwen2.5-Math-PRM's format, its own
    tokenizer, loaded with ``trust_remote_code``); or the path of a trained PRM (``retool prm
    train``'s ``OUT/prm``, or ``OUT`` itself)."""
    if spec == "exec":
        return ExecutionHeuristic(tokenizer, dialect)
    from pathlib import Path

    if spec.startswith("text-prm:"):
        from transformers import AutoConfig, AutoModel, AutoModelForTokenClassification, AutoTokenizer

        path = spec.removeprefix("text-prm:")
        arch = (AutoConfig.from_pretrained(path, trust_remote_code=True).architectures or [""])[0]
        # Qwen2.5-Math-PRM registers its own class under AutoModel; a plain token classifier works too
        kind = AutoModelForTokenClassification if arch.endswith("ForTokenClassification") else AutoModel
        model = kind.from_pretrained(path, trust_remote_code=True).to(device).eval()
        theirs = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        return TextPRMAdapter(model, theirs, tokenizer, name=f"text-prm:{Path(path).name}")

    from retool.prm.model import META_FILE, load_prm

    path = Path(spec)
    if not (path / META_FILE).exists() and (path / "prm" / META_FILE).exists():
        path = path / "prm"
    return PRMVerifier(load_prm(path, device=device), name=f"{load_prm_objective(path)}:{Path(spec).name}")


def load_prm_objective(path) -> str:
    import json
    from pathlib import Path

    from retool.prm.model import META_FILE

    return json.loads((Path(path) / META_FILE).read_text())["objective"]
