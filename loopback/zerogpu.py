"""A ZeroGPU device API on loopback: the endpoints the pinned `spaces` package calls on a ZeroGPU Space.

`spaces` (spaces/zero/api.py) posts /startup-report once at launch, then for every call of a `@spaces.GPU` function
posts /schedule (cgroupPath, taskId, enableQueue, tokenVersion, durationSeconds, token) and gets a slot
{idle, nvidiaIndex, nvidiaUUID, allowToken}, or 429 with the quota when the duration is not allowed; its forked GPU
worker posts /allow (allowToken, pid); the slot ends with /release (allowToken, fail). /queue-size is read. This
server grants every slot up to `max_duration` seconds and records each call, so a test can see what the app asked
for and which process ran the job.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


@dataclass
class DeviceState:
    max_duration: int | None = None  # seconds a slot may last; longer asks get 429 illegal-duration
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    active: set[str] = field(default_factory=set)  # allow tokens of slots not released yet
    lock: threading.Lock = field(default_factory=threading.Lock)

    def named(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            return [params for called, params in self.calls if called == path]


class DeviceAPI:
    def __init__(self, max_duration: int | None = None) -> None:
        self.state = DeviceState(max_duration=max_duration)
        state = self.state

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def reply(self, status: int, body, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def handle_call(self) -> None:
                url = urlparse(self.path)
                params = {k: v[0] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with state.lock:
                    state.calls.append((url.path, params))
                if url.path == "/startup-report":
                    return self.reply(200, {})
                if url.path == "/queue-size":
                    return self.reply(200, 0.0)
                if url.path == "/schedule":
                    asked = int(params.get("durationSeconds", 60))
                    if state.max_duration is not None and asked > state.max_duration:
                        return self.reply(429, {"left": 0, "wait": -1}, {"X-Approve-Result": "illegal-duration"})
                    token = uuid.uuid4().hex
                    with state.lock:
                        idle = not state.active
                        state.active.add(token)
                    body = {"idle": idle, "nvidiaIndex": 0, "nvidiaUUID": "GPU-loopback-0", "allowToken": token}
                    return self.reply(200, body, {"X-Approve-Result": "approved"})
                if url.path == "/allow":
                    return self.reply(200, {})
                if url.path == "/release":
                    with state.lock:
                        state.active.discard(params.get("allowToken", ""))
                    return self.reply(200, {})
                return self.reply(404, {"error": f"no route {url.path}"})

            do_GET = do_POST = handle_call

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> DeviceAPI:
        threading.Thread(target=self._server.serve_forever, name="zerogpu-device-api", daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
