"""SandboxFusion's ``POST /run_code`` and ``POST /run_jupyter`` on the sandbox service's interpreters.

A fresh interpreter per request (``SandboxService.interpreter``), Python only: ``run_code`` runs the
code as ``python main.py`` would (no echo of the last expression), after a setup cell that writes
``files`` and makes ``stdin`` what ``input()`` reads; ``run_jupyter`` runs notebook cells within
``cell_timeout`` / ``total_timeout``; ``fetch_files`` are read back as base64 on stateful backends.

Not here: the routes and the sessions API (``service.py``), the shapes (``service_schema.py``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from typing import TYPE_CHECKING

from retool.sandbox.base import ExecStatus, Session
from retool.sandbox.service_schema import (RunCodeRequest, RunCodeResponse, RunJupyterRequest, RunJupyterResponse,
                                           ServiceError, cell_result, command_result, run_status)

if TYPE_CHECKING:
    from retool.sandbox.service import SandboxService

PYTHON_NAMES = ("python", "python3")

async def run_code(service: "SandboxService", body: RunCodeRequest, disconnected) -> RunCodeResponse:
    if body.language not in PYTHON_NAMES:
        raise ServiceError(400, f"language {body.language!r} is not run here: this service runs Python only",
                           "unsupported_language")
    async with service.interpreter() as session:
        setup = _setup_cell(body.files, body.stdin)
        code = as_script(body.code)
        if setup and not session.stateful:  # a stateless backend forgets a separate cell: one program
            code, setup = setup + "\n" + code, None
        if setup:
            prepared = await service.run_cell(session, setup, None, disconnected)
            if prepared is None or not prepared.ok:
                return RunCodeResponse(status="SandboxError" if prepared is None or prepared.infra_failure
                                       else "Failed", message=f"could not prepare the files or stdin: "
                                       f"{prepared.error if prepared else 'client went away'}",
                                       executor_pod_name=_pod())
        result = await service.run_cell(session, code, body.run_timeout, disconnected)
        if result is None:
            raise ServiceError(499, "the client went away", "client_closed")
        files, message = await _fetch(service, session, body.fetch_files, disconnected)
    return RunCodeResponse(status=run_status(result), message=message or (result.error or "" if result.infra_failure
                                                                          else ""),
                           run_result=command_result(result), executor_pod_name=_pod(), files=files)

async def run_jupyter(service: "SandboxService", body: RunJupyterRequest, disconnected) -> RunJupyterResponse:
    started = time.monotonic()
    cells, timed_out, infra = [], False, None
    async with service.interpreter() as session:
        setup = _setup_cell(body.files, None)
        if setup:
            prepared = await service.run_cell(session, setup, None, disconnected)
            if prepared is None or not prepared.ok:
                why = prepared.error if prepared is not None else "the client went away"
                return RunJupyterResponse(status="SandboxError", message=f"could not write the files: {why}",
                                          executor_pod_name=_pod())
        for code in body.cells:
            left = body.total_timeout - (time.monotonic() - started)
            if left <= 0:
                timed_out = True
                break
            per_cell = body.cell_timeout if body.cell_timeout > 0 else None
            result = await service.run_cell(session, code, min(per_cell or left, left), disconnected)
            if result is None:
                raise ServiceError(499, "the client went away", "client_closed")
            if result.infra_failure:
                infra = result.error
                break
            cells.append(cell_result(result))
            if result.status is ExecStatus.TIMEOUT and time.monotonic() - started >= body.total_timeout:
                timed_out = True
                break
        files, message = await _fetch(service, session, body.fetch_files, disconnected)
    elapsed = round(time.monotonic() - started, 6)
    if infra is not None:
        return RunJupyterResponse(status="SandboxError", message=infra, cells=cells, executor_pod_name=_pod())
    driver = {"status": "TimeLimitExceeded" if timed_out else "Finished", "execution_time": elapsed,
              "return_code": None if timed_out else 0}
    return RunJupyterResponse(status="Failed" if timed_out else "Success", message=message, driver=driver,
                              cells=cells, executor_pod_name=_pod(), files=files)

async def _fetch(service: "SandboxService", session: Session, paths: list[str], disconnected) -> tuple[dict[str, str], str]:
    """``fetch_files``: each path's content as base64, read inside the sandbox."""
    if not paths:
        return {}, ""
    if not session.stateful:
        return {}, "fetch_files needs a stateful backend (jupyter, docker): this service runs a stateless one"
    code = ("import base64 as _b, json as _j\n_o = {}\nfor _p in " + repr(list(paths)) + ":\n"
            "    try:\n        _o[_p] = _b.b64encode(open(_p, 'rb').read()).decode()\n"
            "    except OSError:\n        pass\nprint(_j.dumps(_o))")
    result = await service.run_cell(session, code, None, disconnected)
    if result is None or not result.ok or result.truncated:
        return {}, "fetch_files failed" + (" (the files are larger than the output cap)" if result and
                                           result.truncated else "")
    try:
        return json.loads(result.stdout.strip().splitlines()[-1]), ""
    except (ValueError, IndexError):
        return {}, "fetch_files failed: the sandbox's reply was not readable"


def as_script(code: str) -> str:
    """``code`` run as ``python main.py`` would: a notebook cell echoes its last expression, a
    script does not (SandboxFusion's stdout is the script's)."""
    return f"exec(compile({code!r}, 'main.py', 'exec'))"


def _setup_cell(files: dict[str, str | None], stdin: str | None) -> str | None:
    """A cell that writes ``files`` (base64) and makes ``stdin`` what ``input()`` and ``sys.stdin`` read."""
    parts = []
    if files:
        for path, content in files.items():
            try:
                base64.b64decode(content or "", validate=True)
            except (binascii.Error, ValueError):
                raise ServiceError(400, f"files[{path[:80]!r}] is not base64", "invalid_file") from None
        parts.append("import base64 as _b, os as _os\nfor _p, _c in " + repr(dict(files)) + ".items():\n"
                     "    _d = _os.path.dirname(_p)\n    _d and _os.makedirs(_d, exist_ok=True)\n"
                     "    open(_p, 'wb').write(_b.b64decode(_c or ''))")
    if stdin:  # ``input`` bound in the cell's globals too: a kernel re-binds the builtin before each cell
        parts.append("import io as _io, sys as _sys, builtins as _bi\n_sys.stdin = _io.StringIO(" + repr(stdin)
                     + ")\ndef input(prompt=''):\n    print(prompt, end='')\n"
                       "    line = _sys.stdin.readline()\n    if not line:\n        raise EOFError('EOF when reading a line')\n"
                       "    return line.rstrip('\\n')\n_bi.input = input")
    return "\n".join(parts) or None


def _pod() -> str | None:
    return os.environ.get("MY_POD_NAME") or os.environ.get("HOSTNAME")
