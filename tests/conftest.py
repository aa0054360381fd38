"""Shared fixtures: the bundled real model, tiny random models, and quiet, offline libraries."""

from __future__ import annotations

import os

os.environ.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path

import pytest

from quantizer.cli import quiet_libraries
from quantizer.demo import prepare
from tests.support.models import DEFAULT_SHAPE, TinyShape, build_tiny_smollm3

quiet_libraries()


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
