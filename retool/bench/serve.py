"""Server benchmark: requests per second and latency with 1, 4 and 16 concurrent clients.

A real ``retool serve`` (uvicorn on loopback, the embedded model on CPU, Jupyter sandboxes, the
tool loop server-side) and the official openai client, one thread per client, each sending its
requests back to back. Every request is a sample problem in a fresh session, so each pays for a
sandbox session as a real new conversation does. Reported per concurrency level: requests/s,
p50/p99 latency, model+interpreter tokens/s, tool calls per request. Numbers are printed, never
asserted by tests.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from retool.bench.rollout import PROBLEMS
from retool.apps.local_server import local_server
from retool.apps.serve import ServeConfig
from retool.engines.spec import EngineSpec
from retool.rollout import RolloutConfig
from retool.apps.serve_app import create_app


@dataclass(frozen=True)
class ServeLevel:
    clients: int
    requests: int
    errors: int
    wall_s: float
    requests_per_s: float
    p50_s: float
    p99_s: float
    tokens_per_s: float
    tool_calls_per_request: float


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _level(client, model: str, clients: int, per_client: int, max_tokens: int) -> ServeLevel:
    latencies: list[float] = []
    tokens = tool_calls = errors = 0
    lock = threading.Lock()

    def one_client(index: int) -> None:
        nonlocal tokens, tool_calls, errors
        for k in range(per_client):
            problem = PROBLEMS[(index * per_client + k) % len(PROBLEMS)]
            started = time.monotonic()
            try:
                reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": problem}],
                                                       max_tokens=max_tokens, temperature=0)
            except Exception:  # noqa: BLE001 - counted, and the benchmark goes on
                with lock:
                    errors += 1
                continue
            with lock:
                latencies.append(time.monotonic() - started)
                tokens += reply.usage.completion_tokens
                tool_calls += len(reply.model_extra["retool"]["tool_calls"])

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as workers:
        list(workers.map(one_client, range(clients)))
    wall = time.monotonic() - started
    done = len(latencies)
    return ServeLevel(clients, done, errors, round(wall, 2), round(done / wall, 3),
                      round(_percentile(latencies, 0.5), 3) if done else 0.0,
                      round(_percentile(latencies, 0.99), 3) if done else 0.0,
                      round(tokens / wall, 1), round(tool_calls / max(done, 1), 2))


def run_serve_bench(levels: tuple[int, ...] = (1, 4, 16), requests_per_client: int = 2, max_tokens: int = 96,
                    dialect: str = "fenced", engine: EngineSpec = EngineSpec()) -> dict:
    import openai

    top = max(levels)
    config = ServeConfig(engine=engine, rollout=RolloutConfig(dialect=dialect), max_concurrency=top,
                         max_sessions=2 * top, warm_sessions=min(top, 4), max_request_tokens=max(max_tokens, 256))
    load_started = time.monotonic()
    with local_server(create_app(config)) as url:
        startup_s = time.monotonic() - load_started
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
        name = client.models.list().data[0].id
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": "1+1?"}], max_tokens=4)  # warm-up
        results = [_level(client, name, clients, requests_per_client, max_tokens) for clients in levels]
    return {"model": name, "dialect": dialect, "max_tokens": max_tokens, "startup_s": round(startup_s, 2),
            "levels": [asdict(r) for r in results]}
