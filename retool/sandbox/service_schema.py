"""The request and response shapes of ``retool sandbox serve`` (``service.py``).

Two APIs over one pool:

* **sessions** (``/v1/sessions``): a stateful interpreter per id, the ``Session`` contract over HTTP —
  ``ExecResult.to_dict()`` is the run reply, so the ``remote`` backend rebuilds exactly what a local
  session would have returned;
* **SandboxFusion's** ``POST /run_code`` and ``POST /run_jupyter``, with the request and response
  fields SandboxFusion declares (``sandbox/server/sandbox_api.py``, ``sandbox/runners/types.py`` in
  bytedance/SandboxFusion), so a verl or SkyRL user points ``sandbox_fusion_url`` here unchanged.
  Only Python runs here: another ``language`` is a 400, not a silent Python run.

Every error, on either API, is one shape: ``{"error": {"message", "type", "code"}}``.

Not here: the routes and the state (``service.py``).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from retool.sandbox.base import ExecResult, ExecStatus

MAX_CODE_CHARS = 1_000_000  # one cell's source; a longer body is refused before anything runs
MAX_CELLS = 256


class ServiceError(Exception):
    """An error for the client: an HTTP status and one line."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code

    def body(self) -> dict[str, Any]:
        kind = {401: "authentication_error", 404: "not_found", 409: "conflict", 413: "too_large", 429: "capacity",
                503: "unavailable"}.get(self.status, "server_error" if self.status >= 500 else "invalid_request")
        return {"error": {"message": self.message, "type": kind, "code": self.code}}


def install_error_handlers(app) -> None:
    """Every error of the app in the one shape: ours, Starlette's, a body that does not validate
    (FastAPI's pass or a route's own ``model_validate_json``), and anything unexpected (logged)."""
    import logging

    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import ValidationError
    from starlette.exceptions import HTTPException

    log = logging.getLogger("retool.sandbox.service")

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException):
        detail = str(exc.detail)
        if exc.status_code == 400:
            detail = f"the request body is not valid JSON in UTF-8 ({detail})"
        return JSONResponse(ServiceError(exc.status_code, detail).body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    @app.exception_handler(ValidationError)  # a route that validates its own body
    async def _invalid(_: Request, exc: RequestValidationError | ValidationError):
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        what = str(first.get("msg", "invalid request"))
        message = "the request body is not valid JSON" if first.get("type") == "json_invalid" else (
            f"{where}: {what}" if where else what)
        return JSONResponse(ServiceError(400, message, "invalid_request").body(), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("sandbox service request failed")
        return JSONResponse(ServiceError(500, f"internal error ({type(exc).__name__}); see the service's log").body(),
                            status_code=500)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunRequest(_Body):
    code: str = Field(..., max_length=MAX_CODE_CHARS)
    timeout: Optional[float] = Field(None, gt=0)  # seconds; default and ceiling: the service's limit


# -- SandboxFusion -------------------------------------------------------------------------------


class RunCodeRequest(BaseModel):
    """SandboxFusion's ``RunCodeRequest`` (unknown fields ignored, as there)."""

    code: str = Field(..., max_length=MAX_CODE_CHARS)
    language: str = "python"
    compile_timeout: float = 10
    run_timeout: float = 10
    memory_limit_MB: int = -1  # the service's own limit applies; a request cannot raise it
    stdin: Optional[str] = None
    files: dict[str, Optional[str]] = {}  # path -> base64 content, written before the code runs
    fetch_files: list[str] = []  # paths read back (base64) after it ran
    args: list[str] = []


class RunJupyterRequest(BaseModel):
    cells: list[str] = Field(..., max_length=MAX_CELLS)
    cell_timeout: float = 0  # 0: the service's per-cell limit
    total_timeout: float = 45
    memory_limit_MB: int = -1
    kernel: Literal["python3"] = "python3"
    files: dict[str, str] = {}
    fetch_files: list[str] = []


class CommandRunResult(BaseModel):
    status: Literal["Finished", "Error", "TimeLimitExceeded"]
    execution_time: Optional[float] = None
    return_code: Optional[int] = None
    stdout: Optional[str] = None
    stderr: Optional[str] = None


class CellRunResult(BaseModel):
    stdout: str
    stderr: str
    display: list[dict[str, Any]] = []
    error: list[dict[str, Any]] = []


RunStatus = Literal["Success", "Failed", "SandboxError"]


class RunCodeResponse(BaseModel):
    status: RunStatus
    message: str = ""
    compile_result: Optional[CommandRunResult] = None
    run_result: Optional[CommandRunResult] = None
    executor_pod_name: Optional[str] = None
    files: dict[str, str] = {}


class RunJupyterResponse(BaseModel):
    status: RunStatus
    message: str = ""
    driver: Optional[CommandRunResult] = None
    cells: list[CellRunResult] = []
    executor_pod_name: Optional[str] = None
    files: dict[str, str] = {}


def command_result(result: ExecResult) -> CommandRunResult:
    """One cell as SandboxFusion's run result: a timeout is ``TimeLimitExceeded``; an error exits 1
    with its line appended to stderr (what a ``python file.py`` run would have printed last)."""
    if result.status is ExecStatus.TIMEOUT:
        status = "TimeLimitExceeded"
    elif result.infra_failure:
        status = "Error"
    else:
        status = "Finished"
    stderr = result.stderr
    if result.error and not result.ok:
        stderr += ("" if not stderr or stderr.endswith("\n") else "\n") + result.error + "\n"
    return CommandRunResult(status=status, execution_time=round(result.duration_s, 6),
                            return_code=None if status != "Finished" else (0 if result.ok else 1),
                            stdout=result.stdout, stderr=stderr)


def run_status(result: ExecResult) -> RunStatus:
    if result.infra_failure:
        return "SandboxError"
    return "Success" if result.ok else "Failed"


def cell_result(result: ExecResult) -> CellRunResult:
    """One notebook cell as SandboxFusion reports it: the error as Jupyter's ``ename``/``evalue``."""
    error = []
    if result.error and not result.ok:
        ename, _, evalue = result.error.partition(": ")
        error = [{"ename": ename, "evalue": evalue, "traceback": [result.error]}]
    return CellRunResult(stdout=result.stdout, stderr=result.stderr, display=[], error=error)
