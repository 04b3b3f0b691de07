"""Runs the terminal chat with a scripted model and a real Jupyter sandbox, for pseudo-terminal
tests: ``python chat_driver.py DELAY TURNS_JSON``."""

from __future__ import annotations

import json
import sys

from rich.console import Console

from retool.apps.chat import ChatApp
from retool.apps.conversation import Conversation
from retool.engines.base import SamplingParams
from retool.rollout import Rollout, RolloutConfig
from retool.sandbox import SandboxLimits, SandboxPool
from scripted import ScriptedEngine


def main() -> None:
    delay, turns = float(sys.argv[1]), json.loads(sys.argv[2])
    engine = ScriptedEngine(turns, delay=delay)
    with SandboxPool("jupyter", size=1, limits=SandboxLimits(timeout_s=60)) as pool:
        rollout = Rollout(engine, pool, RolloutConfig(sampling=SamplingParams(temperature=0), max_total_tokens=400))
        session = pool.acquire()
        app = ChatApp(Conversation(rollout, session), Console(force_terminal=True, color_system=None, width=120))
        try:
            app.repl()
        finally:
            app.close()
            pool.release(session)


if __name__ == "__main__":
    main()
