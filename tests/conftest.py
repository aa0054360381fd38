"""Shared fixtures: the loopback Hub, the bundled real model, tiny random models, quiet offline libraries.

The loopback Hub starts here, at import, because huggingface_hub reads HF_ENDPOINT when it is
first imported (transformers and gradio import it too).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from loopback.hub import HubServer
from loopback.jobs import JobsBackend

HUB = HubServer().start()
os.environ.update(
    HF_ENDPOINT=HUB.endpoint,
    HF_HUB_DISABLE_XET="1",
    HF_HOME=tempfile.mkdtemp(prefix="quantizer-test-hf-home-"),
    HF_HUB_DISABLE_TELEMETRY="1",
    GRADIO_ANALYTICS_ENABLED="False",
    QUANTIZER_HUB_BACKOFF="0.05",
    TRACKIO_DIR=tempfile.mkdtemp(prefix="quantizer-test-trackio-"),
    TORCHAO_FORCE_SKIP_LOADING_SO_FILES="1",
)
# what the loopback Hub's Jobs get from "the platform": this Hub's needs, and the CPU's kernel limits when set
HUB.jobs = JobsBackend(
    platform_env={
        key: os.environ[key]
        for key in (
            "HF_HUB_DISABLE_XET",
            "TORCHAO_FORCE_SKIP_LOADING_SO_FILES",
            "ONEDNN_MAX_CPU_ISA",
            "ATEN_CPU_CAPABILITY",
        )
        if key in os.environ
    }
)
os.environ.pop("HF_TOKEN", None)  # tests pass tokens explicitly; a developer's own token must never be used
for _scratch in (os.environ["HF_HOME"], os.environ["TRACKIO_DIR"]):  # leave no caches behind on the machine
    atexit.register(shutil.rmtree, _scratch, ignore_errors=True)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from quantizer.console import quiet_libraries  # noqa: E402
from quantizer.demo import prepare  # noqa: E402
from tests.support.models import DEFAULT_SHAPE, TinyShape, build_tiny_smollm3  # noqa: E402

quiet_libraries()

ALICE = "hf_alice_WRITE_9f8e7d6c5b4a39281706"  # writes to alice/ and acme/
BOB = "hf_bob_READONLY_1a2b3c4d5e6f70819"  # a read-only token
CAROL = "hf_carol_WRITE_0a1b2c3d4e5f6a7b8"  # has not accepted gated licenses
HUB.state.add_user(ALICE, "alice", ("acme",))
HUB.state.add_user(BOB, "bob", role="read")
HUB.state.add_user(CAROL, "carol")


@pytest.fixture(scope="session")
def hub() -> HubServer:
    return HUB


@pytest.fixture(autouse=True)
def _no_leftover_faults():
    yield
    HUB.state.clear_faults()


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The real SmolLM2-135M-Instruct as bf16 safetensors (converted from the bundled GGUF once)."""
    return prepare()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, demo_model):
    """Factory: a saved tiny random SmolLM3 of a given shape, built once per shape per session."""
    built: dict[TinyShape, Path] = {}

    def make(shape: TinyShape = DEFAULT_SHAPE) -> Path:
        if shape not in built:
            folder = tmp_path_factory.mktemp(f"tiny-{shape.label}")
            built[shape] = build_tiny_smollm3(folder, demo_model, shape)
        return built[shape]

    return make
