"""``retool sandbox serve`` over real HTTP (uvicorn on loopback) with real jailed kernels: the
sessions API, SandboxFusion's shapes, auth, limits, malformed requests, a client that hangs up
mid-cell, idle expiry, metrics."""

from __future__ import annotations

import base64
import time

import httpx
import pytest

from retool.apps.local_server import local_server
from retool.sandbox.base import SandboxLimits
from retool.sandbox.service import ServiceConfig, create_app
from retool.sandbox.spec import SandboxSpec

LIMITS = SandboxLimits(timeout_s=3.0)


def config(**changes) -> ServiceConfig:
    return ServiceConfig(**{"sandbox": SandboxSpec("jupyter", LIMITS), "size": 3, "warm": 1, **changes})


@pytest.fixture(scope="module")
def app():
    return create_app(config())


@pytest.fixture(scope="module")
def service(app):
    with local_server(app) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client


def eventually(check, within: float = 20.0):
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.1)


def open_session(client, **headers) -> str:
    reply = client.post("/v1/sessions", headers=headers)
    assert reply.status_code == 200, reply.text
    return reply.json()["id"]


def test_a_session_keeps_its_state_between_cells_and_goes_away_when_closed(service):
    sid = open_session(service)
    assert service.post(f"/v1/sessions/{sid}/run", json={"code": "x = 41"}).json()["status"] == "ok"
    reply = service.post(f"/v1/sessions/{sid}/run", json={"code": "print(x + 1)\n1 / 0"}).json()
    assert reply["stdout"] == "42\n" and reply["status"] == "error" and reply["error"] == "ZeroDivisionError: division by zero"
    assert sid in [s["id"] for s in service.get("/v1/sessions").json()["sessions"]]
    assert service.delete(f"/v1/sessions/{sid}").json()["closed"]
    gone = service.post(f"/v1/sessions/{sid}/run", json={"code": "x"})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_session"


def test_a_cell_asks_for_less_time_never_more(service):
    sid = open_session(service)
    try:
        started = time.monotonic()
        slow = service.post(f"/v1/sessions/{sid}/run", json={"code": "import time\ntime.sleep(30)", "timeout": 600}).json()
        assert slow["status"] == "timeout" and time.monotonic() - started < 20  # the service's 3 s, not 600
        quick = service.post(f"/v1/sessions/{sid}/run", json={"code": "import time\ntime.sleep(2)", "timeout": 0.5}).json()
        assert quick["status"] == "timeout"
    finally:
        service.delete(f"/v1/sessions/{sid}")


def test_malformed_requests_get_a_4xx_in_one_shape(service):
    sid = open_session(service)
    try:
        cases = [service.post(f"/v1/sessions/{sid}/run", content=b"{not json", headers={"content-type": "application/json"}),
                 service.post(f"/v1/sessions/{sid}/run", json={"code": 5}),
                 service.post(f"/v1/sessions/{sid}/run", json={"code": "1", "shell": "rm -rf /"}),
                 service.post(f"/v1/sessions/{sid}/run", json={"code": "x" * 1_000_001}),
                 service.post("/run_code", json={"code": "int main(){}", "language": "cpp"}),
                 service.post("/run_code", json={"code": "1", "files": {"a": "not base64!"}}),
                 service.post("/v1/nothing-here"),
                 service.post("/run_code", content=b"x" * (9 << 20), headers={"content-type": "application/json"})]
        for reply in cases:
            assert 400 <= reply.status_code < 500, reply.text
            assert set(reply.json()) == {"error"} and reply.json()["error"]["message"]
        assert cases[4].json()["error"]["code"] == "unsupported_language" and cases[-1].status_code == 413
    finally:
        service.delete(f"/v1/sessions/{sid}")


def test_sandboxfusion_run_code_shapes(service):
    ok = service.post("/run_code", json={"code": "print(input() * 2)\n1 + 1", "language": "python", "stdin": "ab\n"}).json()
    assert ok["status"] == "Success" and ok["compile_result"] is None
    assert ok["run_result"] == {**ok["run_result"], "status": "Finished", "return_code": 0, "stdout": "abab\n"}  # a script: no echo
    failed = service.post("/run_code", json={"code": "print('x')\nraise ValueError('bad')", "language": "python"}).json()
    assert failed["status"] == "Failed" and failed["run_result"]["return_code"] == 1
    assert failed["run_result"]["stdout"] == "x\n" and "ValueError: bad" in failed["run_result"]["stderr"]
    slow = service.post("/run_code", json={"code": "while True: pass", "run_timeout": 1}).json()
    assert slow["status"] == "Failed" and slow["run_result"]["status"] == "TimeLimitExceeded"
    odd = service.post("/run_code", json={"code": "print(repr(input()), open('empty').read() == '')",
                                           "stdin": "😀 é\n", "files": {"empty": None}}).json()
    assert odd["run_result"]["stdout"] == "'😀 é' True\n"  # beyond the BMP, and a file without content
    files = service.post("/run_code", json={
        "code": "print(open('in/data.txt').read())\nopen('out.txt', 'w').write('done')",
        "files": {"in/data.txt": base64.b64encode(b"hello").decode()}, "fetch_files": ["out.txt", "missing.txt"]}).json()
    assert files["run_result"]["stdout"] == "hello\n" and base64.b64decode(files["files"]["out.txt"]) == b"done"
    assert "missing.txt" not in files["files"]


def test_sandboxfusion_run_jupyter_shapes(service):
    reply = service.post("/run_jupyter", json={"cells": ["a = 123", "print(a)", "raise RuntimeError('boom')", "print(a + 1)"]})
    data = reply.json()
    assert data["status"] == "Success" and data["driver"]["status"] == "Finished"
    assert [c["stdout"] for c in data["cells"]] == ["", "123\n", "", "124\n"]
    assert data["cells"][2]["error"] == [{"ename": "RuntimeError", "evalue": "boom", "traceback": ["RuntimeError: boom"]}]
    slow = service.post("/run_jupyter", json={"cells": ["import time", "time.sleep(5)", "print(1)"], "total_timeout": 1}).json()
    assert slow["status"] == "Failed" and slow["driver"]["status"] == "TimeLimitExceeded"


def test_a_client_that_hangs_up_mid_cell_interrupts_it_and_the_session_is_kept(service):
    sid = open_session(service)
    try:
        with pytest.raises(httpx.ReadTimeout):
            service.post(f"/v1/sessions/{sid}/run", json={"code": "import time\nkept = 7\ntime.sleep(2.8)\nlost = 1"},
                         timeout=1.2)
        started = time.monotonic()
        while True:  # the interrupted cell releases the session within the poll interval
            reply = service.post(f"/v1/sessions/{sid}/run", json={"code": "print(kept, 'lost' in globals())"})
            if reply.status_code != 409:
                break
            assert time.monotonic() - started < 10
            time.sleep(0.1)
        assert reply.json()["stdout"] == "7 False\n"  # interrupted before its last line, the state kept
        assert 'retool_sandbox_cells_total{status="interrupted"}' in service.get("/metrics").text
    finally:
        service.delete(f"/v1/sessions/{sid}")


def test_closing_a_session_under_a_running_cell_interrupts_it_and_gives_the_interpreter_back(service, app):
    import threading

    sid = open_session(service)
    replies = []
    runner = threading.Thread(target=lambda: replies.append(service.post(
        f"/v1/sessions/{sid}/run", json={"code": "import time\ntime.sleep(2.5)"})))
    runner.start()
    eventually(lambda: any(s["busy"] for s in service.get("/v1/sessions").json()["sessions"] if s["id"] == sid))
    assert service.delete(f"/v1/sessions/{sid}").json()["closed"]
    runner.join(30)
    assert replies[0].json()["status"] == "interrupted"  # the cell was stopped, not left to finish
    pool = app.state.service.pool
    eventually(lambda: not pool._busy)  # the interpreter went back to the pool once the cell returned
    assert service.get("/health").json()["in_use"] == 0


def test_metrics_and_health_need_no_token_and_count_cells(service):
    assert service.post("/run_code", json={"code": "print(1)"}).json()["status"] == "Success"
    text = service.get("/metrics").text
    for series in ("retool_sandbox_sessions ", "retool_sandbox_capacity 3.0", "retool_sandbox_cell_seconds_bucket",
                   'retool_sandbox_cells_total{status="ok"}'):
        assert series in text
    health = service.get("/health").json()
    assert health["capacity"] == 3 and health["backend"] == "jupyter"


def test_tokens_cap_and_idle_expiry():
    app = create_app(config(tokens=("alpha", "beta"), size=2, idle_timeout_s=4.0))
    with local_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        anonymous = client.post("/v1/sessions")
        assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "authentication_error"
        assert client.post("/v1/sessions", headers={"Authorization": "Bearer gamma"}).status_code == 401
        assert client.post("/run_code", json={"code": "1"}).status_code == 401
        alpha, beta = {"Authorization": "Bearer alpha"}, {"Authorization": "Bearer beta"}
        mine = open_session(client, **alpha)
        assert client.post(f"/v1/sessions/{mine}/run", json={"code": "1"}, headers=beta).status_code == 404  # not beta's
        assert client.post(f"/v1/sessions/{mine}/interrupt", headers=beta).status_code == 404
        assert client.delete(f"/v1/sessions/{mine}", headers=beta).status_code == 404
        assert client.get("/v1/sessions", headers=beta).json()["sessions"] == []
        open_session(client, **beta)
        full = client.post("/v1/sessions", headers=alpha)
        assert full.status_code == 429 and full.json()["error"]["code"] == "capacity"
        assert client.post("/run_code", json={"code": "1"}, headers=alpha).status_code == 429
        eventually(lambda: client.get("/health").json()["sessions"] == 0, within=60)  # idle past 4 s: closed
        assert client.post(f"/v1/sessions/{mine}/run", json={"code": "1"}, headers=alpha).status_code == 404
        assert "retool_sandbox_sessions_expired_total 2.0" in client.get("/metrics").text


def test_beyond_loopback_a_token_is_required():
    with pytest.raises(ValueError, match="token"):
        ServiceConfig(host="0.0.0.0")
    assert ServiceConfig(host="0.0.0.0", tokens=("t",)).host == "0.0.0.0"
    with pytest.raises(ValueError, match="empty token"):
        ServiceConfig(tokens=("",))
    with pytest.raises(ValueError, match="local backend"):
        ServiceConfig(sandbox=SandboxSpec("remote", urls="http://127.0.0.1:1"))
