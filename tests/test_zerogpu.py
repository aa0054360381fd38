"""The Space on ZeroGPU, as the pinned `spaces` package runs it: the job in the GPU worker that spaces forks from the
app, its arguments and every value it yields pickled across, the slot asked of a device API over HTTP.

The app runs with SPACES_ZERO_GPU=true against the loopback device API (loopback/zerogpu.py), as a shared deployment
with two visitors, driven through the real gradio_client. What is replaced, and why: tests/support/zerogpu_app.py
(only `spaces.zero.torch`, which cannot load with a CPU build of torch).
"""

from __future__ import annotations

import pytest
from gradio_client import Client
from huggingface_hub import HfApi

from loopback.zerogpu import DeviceAPI
from quantizer import settings
from tests.conftest import ALICE, CAROL
from tests.support.app_server import shared_space
from tests.test_public_space import alices_sources, job_folders, stop_in_the_middle_of_gptq, wait_for


@pytest.fixture(scope="module")
def device():
    api = DeviceAPI(
        max_duration=settings.default("QUANTIZER_ZEROGPU_SECONDS")
    ).start()  # the longest slot ZeroGPU grants a visitor
    yield api
    api.stop()


@pytest.fixture(scope="module")
def space(hub, device, tmp_path_factory):
    zerogpu = {"SPACES_ZERO_GPU": "true", "SPACES_ZERO_DEVICE_API_URL": device.url}
    base = tmp_path_factory.mktemp("zerogpu-space")
    yield from shared_space(base, ALICE, (ALICE, CAROL), zerogpu, module="tests.support.zerogpu_app")


@pytest.fixture(scope="module")
def sources(hub, tiny_model, tmp_path_factory) -> dict[str, str]:
    return alices_sources(tiny_model, tmp_path_factory.mktemp("zerogpu-sources"), prefix="zg-", secret=False)


def test_a_job_runs_in_the_gpu_worker_and_is_pushed(space, sources, device):
    started = len(device.state.named("/schedule"))
    status, *_ = Client(space.url, verbose=False).predict(source=sources["small"], token=ALICE, api_name="/quantize")
    assert status.startswith("✅ done"), status
    assert HfApi(token=ALICE).repo_exists("alice/zg-small-torchao-int8wo")
    (schedule,) = device.state.named("/schedule")[started:]
    # the slot asked for: the longest ZeroGPU grants (the job's deadline is the slot less a margin), times the H200
    # MIG's duration factor of 1; the device API refuses longer asks, as ZeroGPU does
    assert int(schedule["durationSeconds"]) == settings.default("QUANTIZER_ZEROGPU_SECONDS")
    allowed = device.state.named("/allow")
    assert allowed and all(int(a["pid"]) != space.proc.pid for a in allowed)  # a forked worker ran it, not the app
    assert not device.state.active  # the slot was released
    assert job_folders(space) == []


def test_stop_ends_a_job_in_the_gpu_worker_within_seconds_leaving_nothing(space, sources):
    stop_in_the_middle_of_gptq(space, sources["slow"])


def test_two_visitors_limits_hold_across_the_worker(space, sources):
    alice, carol = Client(space.url, verbose=False), Client(space.url, verbose=False)
    slow = {"source": sources["slow"], "quant_types": ["int4_weight_only"], "int4_method": "gptq"}
    first = alice.submit(**slow, token=ALICE, target_name="zg-first", api_name="/quantize")
    wait_for(first, r"▶ checking alice/zg-slow")
    second = alice.submit(**slow, token=ALICE, target_name="zg-second", api_name="/quantize")
    wait_for(second, "waiting for the job ahead")
    third = alice.predict(**slow, token=ALICE, target_name="zg-third", api_name="/quantize")
    assert "you already have a job running and one waiting" in third[0]
    other = carol.submit(source=sources["small"], token=CAROL, save_only=True, api_name="/quantize")
    wait_for(other, "waiting for the job ahead")  # carol is not held to alice's limit: she waits her turn
    assert alice.predict(token=ALICE, api_name="/stop").startswith("⏹ stopping 2 job")
    assert "stopped" in first.result()[0] and "stopped" in second.result()[0]
    assert other.result()[0].startswith("✅ done")
    assert job_folders(space) == []
