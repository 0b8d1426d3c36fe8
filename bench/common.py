"""What the benchmark scripts share: ports, readiness, and process CPU and memory readings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import redis

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


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    """Debian's ``redis-server`` on a free loopback port, no persistence; (process, URL).

    Raises:
        RuntimeError: it did not answer within 30 s.
    """
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(300):
        with contextlib.suppress(redis.ConnectionError):
            client.ping()
            return proc, url
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("redis-server did not come up in 30 s")


def start_gateways(
    port: int, env: dict[str, str], processes: int, redis_url: str
) -> list[subprocess.Popen[bytes]]:
    """Start ``processes`` instant-engine ``bench/gateway.py`` processes sharing
    ``127.0.0.1:port`` (``SO_REUSEPORT``) and sessions on ``redis_url`` (emptied first);
    returns once every one of them has joined (its lease is in Redis).

    Raises:
        RuntimeError: they did not all join within 30 s.
    """
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    env = env | {"STT_GATEWAY_REDIS_URL": redis_url, "STT_GATEWAY_LOG_LEVEL": "WARNING"}
    script = [sys.executable, str(ROOT / "bench" / "gateway.py"), "--port", str(port)]
    procs = [subprocess.Popen(script, env=os.environ | env) for _ in range(processes)]
    for _ in range(300):
        if len(list(client.scan_iter("stt:node:*"))) == processes:
            return procs
        time.sleep(0.1)
    for proc in procs:
        proc.kill()
    raise RuntimeError(f"{processes} gateway processes did not all start in 30 s")
