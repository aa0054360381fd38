"""app.py as a ZeroGPU Space runs it (SPACES_ZERO_GPU=true), on a machine whose torch has no CUDA.

Everything of ZeroGPU is the pinned `spaces` package's own: its decorator, its generator wrapper, the GPU worker it
forks from the app and reuses, the pickling queues between them, and its HTTP client, which talks to the loopback
device API (`loopback/zerogpu.py`, at SPACES_ZERO_DEVICE_API_URL). One module is replaced: `spaces.zero.torch`,
which patches torch so the app believes in a GPU and moves CUDA tensors into the worker. It reads
`torch.version.cuda` at import and cannot load with a CPU build of torch, so here its functions do nothing (there is
no CUDA memory to move), and the job runs on the worker's CPU.

    python -m tests.support.zerogpu_app
"""

from __future__ import annotations

import runpy
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def install_cpu_torch_shim() -> None:
    shim = types.ModuleType("spaces.zero.torch")
    for name in ("enter_mode", "patch", "unpatch", "init", "move"):
        setattr(shim, name, lambda *args, **kwargs: None)
    shim.pack = shim.size = lambda *args, **kwargs: 0
    shim.is_in_bad_fork = lambda *args, **kwargs: False
    sys.modules["spaces.zero.torch"] = shim


if __name__ == "__main__":
    install_cpu_torch_shim()
    sys.path.insert(0, str(ROOT))
    runpy.run_path(str(ROOT / "app.py"), run_name="__main__")
