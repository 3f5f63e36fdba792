"""The machine the benchmark runs on: other processes' CPU use, the CPU's name, torch threads, child processes."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

import torch

RESULT_PREFIX = "MEDPEFT_SPEED_RESULT "


class ForeignCpu:
    """CPU used by *other* processes (and the hypervisor's steal) between two calls, in cores; None off Linux.

    Busy jiffies of the whole machine (``/proc/stat``) minus this process's own (``/proc/self/stat``, all threads).
    """

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last = self._read()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                values = [int(v) for v in f.readline().split()[1:9]]
            with open("/proc/self/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return time.perf_counter(), sum(values) - values[3] - values[4], int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            return None

    def __call__(self) -> float | None:
        now, last = self._read(), self.last
        self.last = now
        if now is None or last is None or now[0] <= last[0]:
            return None
        return max(0.0, ((now[1] - last[1]) - (now[2] - last[2])) / self.tick / (now[0] - last[0]))


def busy_now(seconds: float = 2.0) -> float | None:
    """Cores the other processes use, sampled over ``seconds``."""
    foreign = ForeignCpu()
    time.sleep(seconds)
    return foreign()


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def set_threads(threads: int | None) -> int:
    """Set torch's threads (default: the CPUs this process may use); returns the number set."""
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return threads


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (the profiler back end logs every start and stop there from C++)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def run_child(mode: str, payload: dict, env: dict | None = None, stderr=None) -> dict[str, Any]:
    """Run ``python -m medpeft.speed --<mode> JSON`` in a fresh process and return the JSON result it prints.

    When the child prints no result, the returned dict holds ``_failed`` (its exit status) and ``_stderr`` (what
    it wrote there, when ``stderr`` is ``subprocess.PIPE``).
    """
    cmd = [sys.executable, "-m", "medpeft.speed", f"--{mode}", json.dumps(payload)]
    proc = subprocess.run(
        cmd,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    return {"_failed": proc.returncode, "_stderr": proc.stderr or ""}
