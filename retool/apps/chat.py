"""``retool chat``: talk to a tool-integrated model in the terminal.

Tokens are printed as the engine samples them; code is yellow, interpreter output cyan on grey,
reasoning plain. The conversation keeps one sandbox session from start to ``/exit``, so names
defined in one turn are there in the next. Ctrl-C during a turn stops generation (or interrupts the
running cell) and keeps the session and the partial turn; Ctrl-C at the prompt clears the line;
Ctrl-D or ``/exit`` leaves.

Commands: ``/reset`` (forget the conversation, fresh interpreter), ``/save PATH`` (jsonl),
``/notebook PATH`` (.ipynb with the real outputs), ``/exit``, ``/help``.

Not here: the conversation logic (``retool.apps.conversation``), HTTP (``retool.apps.serve``).
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from rich.markup import escape

from retool.apps.conversation import Chunk, Conversation, Turn
from retool.engines.spec import EngineSpec
from retool.rollout import Rollout, RolloutConfig
from retool.sandbox.spec import SandboxSpec
from retool.terminal import for_terminal

STYLES = {"text": "", "code": "bold yellow", "output": "cyan on grey11"}
HELP = ("commands: /reset (new conversation, fresh interpreter)  /save PATH (jsonl)  "
        "/notebook PATH (.ipynb)  /exit  — Ctrl-C stops a running answer, Ctrl-D quits")


class ChatApp:
    """The read-eval-print loop around a ``Conversation``."""

    def __init__(self, conversation: Conversation, console) -> None:
        self.conversation = conversation
        self.console = console
        self.loop = asyncio.new_event_loop()

    # -- one turn -----------------------------------------------------------------------------

    def _print_chunk(self, chunk: Chunk) -> None:
        from rich.text import Text

        text = Text(for_terminal(chunk.text), style=STYLES[chunk.kind])  # escape sequences shown, not obeyed
        self.console.print(text, end="", highlight=False, soft_wrap=True)

    def ask(self, text: str) -> Turn | None:
        """Run one turn, streaming it; Ctrl-C cancels it (returns None, the partial turn is kept)."""
        started = time.monotonic()
        task = self.loop.create_task(self.conversation.send(text, self._print_chunk))
        self.loop.add_signal_handler(signal.SIGINT, task.cancel)
        try:
            turn = self.loop.run_until_complete(task)
        except asyncio.CancelledError:
            self.console.print("\n[yellow]⏹ stopped[/yellow] — the interpreter and its variables are kept", highlight=False)
            return None
        finally:
            self.loop.remove_signal_handler(signal.SIGINT)
        calls = turn.tool_calls
        statuses = ", ".join(c.result.status.value for c in calls) or "-"
        self.console.print()
        if turn.trajectory.infra_failure:
            self.console.print(f"[red]the turn was stopped: {escape(turn.trajectory.finish_detail or 'infrastructure failure')}"
                               "[/red] — not the model's doing; ask again (the interpreter may have been restarted)",
                               highlight=False)
        answer = escape(for_terminal(turn.answer)) if turn.answer is not None else "(none)"
        self.console.print(
            f"[dim]answer: {answer} · finish: {turn.finish_reason} · "
            f"tool calls: {len(calls)} ({statuses}) · {turn.trajectory.num_model_tokens} model + "
            f"{turn.trajectory.num_tool_tokens} interpreter tokens · {time.monotonic() - started:.1f} s[/dim]",
            highlight=False,
        )
        return turn

    # -- commands -----------------------------------------------------------------------------

    def command(self, line: str) -> bool:
        """Handle a /command; False means leave."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name in ("/exit", "/quit"):
            return False
        if name == "/help":
            self.console.print(HELP, highlight=False)
        elif name == "/reset":
            self.conversation.reset()
            self.console.print("[green]new conversation[/green] (fresh interpreter)")
        elif name in ("/save", "/notebook"):
            if not arg:
                self.console.print(f"[red]usage:[/red] {name} PATH", highlight=False)
                return True
            path = Path(arg).expanduser()
            try:
                if name == "/save":
                    count = self.conversation.save_jsonl(path)
                    self.console.print(f"saved {count} messages to {path}", highlight=False)
                else:
                    count = self.conversation.save_notebook(path)
                    self.console.print(f"wrote a notebook with {count} cells to {path}", highlight=False)
            except OSError as exc:
                self.console.print(f"[red]could not write {path}:[/red] {exc}", highlight=False)
        else:
            self.console.print(f"[red]unknown command {name}[/red] — {HELP}", highlight=False)
        return True

    def repl(self) -> None:
        self.console.print(f"[dim]{HELP}[/dim]", highlight=False)
        while True:
            try:
                line = self.console.input("[bold green]you>[/bold green] ")
            except KeyboardInterrupt:
                self.console.print()
                continue
            except EOFError:
                self.console.print()
                break
            if not line.strip():
                continue
            if line.strip().startswith("/"):
                if not self.command(line):
                    break
                continue
            self.ask(line)

    def close(self) -> None:
        self.loop.close()


def run_chat(engine: EngineSpec, sandbox: SandboxSpec, rollout: RolloutConfig, console,
             system: str | None = None) -> None:
    """The chat with ``system`` added to the dialect's instructions, until the user leaves."""
    with console.status("loading the model and starting the sandbox…"):
        pool = sandbox.pool(size=1)
        try:
            served = engine.build(max_batch=1)
        except BaseException:
            pool.close()
            raise
    try:
        runner = Rollout(served, pool, rollout)
        session = pool.acquire(timeout=120)
        app = ChatApp(Conversation(runner, session, system=system), console)
        try:
            app.repl()
        finally:
            app.close()
            pool.release(session)
    finally:
        pool.close()
        served.close()
