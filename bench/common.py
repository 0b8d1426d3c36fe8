"""What the benchmark scripts share: ports, readiness, and process CPU and memory readings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_up(url: str, timeout_s: float = 30.0) -> None:
    """Wait until ``url`` answers HTTP at all. Raises RuntimeError after ``timeout_s``."""
    async with aiohttp.ClientSession() as http:
        for _ in range(int(timeout_s * 10)):
            try:
                async with http.get(url):
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout_s:g} s")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its live descendants (engine workers), Linux ``/proc``."""
    total = cpu_s(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(FileNotFoundError):  # exited meanwhile
                total += tree_cpu_s(int(child))
    return total


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit; return the new soft limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def start_gateway(
    port: int,
    env: dict[str, str],
    *,
    engine: str = "instant",
    uvloop: bool = False,
    gc: str = "on",
) -> subprocess.Popen[bytes]:
    """Start ``bench/gateway.py`` on ``127.0.0.1:port`` with ``STT_GATEWAY_*``-style ``env``
    added to this process's environment (``engine``, ``uvloop``, ``gc``: its flags). Returns
    once it answers ``/health``.

    Raises:
        RuntimeError: it did not come up within 30 s.
    """
    flags = ["--engine", engine, "--gc", gc] + (["--uvloop"] if uvloop else [])
    return start_server("gateway.py", port, flags, env | {"STT_GATEWAY_LOG_LEVEL": "WARNING"})


def start_server(
    script: str, port: int, flags: list[str] | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``bench/<script> --port <port> <flags>`` with ``env`` added to this process's
    environment; returns once it answers ``/health`` on ``127.0.0.1:port``.

    Raises:
        RuntimeError: it did not come up within 30 s.
    """
    args = [sys.executable, str(ROOT / "bench" / script), "--port", str(port), *(flags or [])]
    proc = subprocess.Popen(args, env=os.environ | (env or {}))
    try:
        asyncio.run(wait_up(f"http://127.0.0.1:{port}/health"))
    except RuntimeError:
        proc.kill()
        raise
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate ``proc`` and reap it (killed if it takes over 10 s)."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pct_ms(seconds: list[float], q: float) -> float:
    """The ``q``-th percentile of ``seconds``, in ms (nan when empty)."""
    return float(np.percentile(np.array(seconds) * 1000, q)) if seconds else float("nan")
