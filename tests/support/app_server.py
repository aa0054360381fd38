"""Start the Space's app.py as a real server on a free loopback port, for API and browser tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    def __init__(self, log_path: Path, env: dict[str, str] | None = None, module: str | None = None):
        """`module`: run `python -m module` instead of app.py (tests.support.zerogpu_app, for ZeroGPU)."""
        self.command = ["-m", module] if module else ["app.py"]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log_path
        self.env = {
            **os.environ,
            "GRADIO_SERVER_PORT": str(self.port),
            "GRADIO_ANALYTICS_ENABLED": "False",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> AppServer:
        self.proc = subprocess.Popen(
            [sys.executable, *self.command],
            cwd=ROOT,
            env=self.env,
            stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "config", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"app.py did not start in {timeout}s: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def shared_space(base: Path, host_token: str, visitors: tuple[str, ...], env: dict[str, str] | None = None, **kwargs):
    """The app as a shared deployment (QUANTIZER_PUBLIC=1) in `base`: job folders under base/tmp, save-only outputs
    under base/saved, Gradio's files under base/gradio, and the host's own token set (a visitor's job must never use
    it). A generator for a module fixture: it yields the server and, once stopped, checks that no token reached its
    log."""
    (base / "tmp").mkdir()
    settings = {
        "QUANTIZER_PUBLIC": "1",
        "QUANTIZER_OUTPUT_ROOT": str(base / "saved"),
        "QUANTIZER_OUTPUT_TTL": "4",
        "GRADIO_HEARTBEAT_INTERVAL": "1",
        "TMPDIR": str(base / "tmp"),  # every job folder of the app lands here
        "GRADIO_TEMP_DIR": str(base / "gradio"),  # where Gradio would copy files it serves
        "HF_TOKEN": host_token,
        **(env or {}),
    }
    server = AppServer(base / "app.log", env=settings, **kwargs).start()
    server.base = base
    yield server
    server.stop()
    log = (base / "app.log").read_text()
    assert not any(token in log for token in (host_token, *visitors))
