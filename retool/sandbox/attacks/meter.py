"""Where the attack suite measures "the host": the process that holds the session's interpreter.

For the local backends that is this process (its resident memory, its peak, its CPU time). For
``remote`` it is the ``retool sandbox serve`` the session lives on: an attack that floods the
interpreter's channels grows *that* process, so the judge must read it there — from its
``/metrics`` (``process_resident_memory_bytes``, ``process_cpu_seconds_total``), the peak by
sampling every ``SAMPLE_S`` while the attack runs (a spike shorter than that can be missed; the
local meter reads the kernel's own high-water mark instead).

Not here: the judges (``contain``, ``harden``, ``untrusted``), which see only the numbers.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil

SAMPLE_S = 0.02


class LocalMeter:
    """This process."""

    where = "host"

    def rss_mb(self) -> float:
        return psutil.Process().memory_info().rss / 2**20

    def cpu_s(self) -> float:
        return time.process_time()

    def start_peak(self) -> None:
        """Start the peak-memory count (VmHWM) afresh from the current size."""
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass

    def pause(self) -> None:
        """Nothing to pause: the kernel keeps the high-water mark."""

    resume = pause

    def peak_mb(self) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return self.rss_mb()


class ServiceMeter:
    """The sandbox service at ``url``, read from its Prometheus series."""

    def __init__(self, hosts, url: str) -> None:
        self.hosts, self.url, self.where = hosts, url, f"service {url}"
        self._peak = 0.0
        self._paused = threading.Event()
        self._sampling: threading.Event | None = None
        self._sampler: threading.Thread | None = None

    def _series(self) -> dict[str, float]:
        reply = self.hosts.request("GET", f"{self.url}/metrics", 5.0)
        values = {}
        for line in reply.body.decode().splitlines():
            name, _, value = line.partition(" ")
            if name in ("process_resident_memory_bytes", "process_cpu_seconds_total"):
                values[name] = float(value)
        if len(values) < 2:
            raise RuntimeError(f"{self.url}/metrics has no process series: the service cannot be measured")
        return values

    def rss_mb(self) -> float:
        return self._series()["process_resident_memory_bytes"] / 2**20

    def cpu_s(self) -> float:
        return self._series()["process_cpu_seconds_total"]

    def start_peak(self) -> None:
        self.stop()
        self._peak = self.rss_mb()
        self._sampling = threading.Event()
        self._sampler = threading.Thread(target=self._sample, args=(self._sampling,), daemon=True)
        self._sampler.start()

    def pause(self) -> None:
        """Stop sampling for a while: a judge of the host's CPU must not count the sampler's requests."""
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def _sample(self, stop: threading.Event) -> None:
        while not stop.wait(SAMPLE_S):
            if self._paused.is_set():
                continue
            try:
                self._peak = max(self._peak, self.rss_mb())
            except Exception:  # noqa: BLE001 - a busy service missed one sample; the next may not
                continue

    def peak_mb(self) -> float:
        self.stop()
        return max(self._peak, self.rss_mb())

    def stop(self) -> None:
        if self._sampling is not None:
            self._sampling.set()
            self._sampler.join()
            self._sampling = self._sampler = None


def meter_for(session) -> LocalMeter | ServiceMeter:
    from retool.sandbox.remote import RemoteSession

    if isinstance(session, RemoteSession):
        return ServiceMeter(session.hosts, session.url)
    return LocalMeter()
