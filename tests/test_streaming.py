"""The streaming engine: byte-identical to the TorchAoConfig path, bounded memory, one Hub shard at a time."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, snapshot_download
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from quantizer import recipes, resources
from quantizer.cli import main
from quantizer.events import EventStream
from quantizer.hardware import Hardware
from quantizer.source import copy_side_files
from quantizer.streaming import stream_quantize
from quantizer.texts import build_eval_data, default_eval_text
from quantizer.verify import Figures, measure
from quantizer.whole_model import quantize_and_save
from tests.conftest import ALICE
from tests.support.hub_repos import upload_model
from tests.support.models import TinyShape, in_the_jobs_dtype

CPU = Hardware("cpu")
# the types a CPU both makes and runs (int4_tile_packed runs on CUDA only; it has its own tests)
CPU_TYPES = recipes.made_and_run_on(CPU)


@pytest.fixture(scope="module")
def sharded(tiny_model, tmp_path_factory):
    """Multi-shard copies of a tied and an untied tiny model (about 4 MB shards)."""
    made = {}
    for shape in (TinyShape(), TinyShape(hidden=96, intermediate=160, tied=False)):
        folder = tmp_path_factory.mktemp(f"sharded-{shape.label}")
        AutoModelForCausalLM.from_pretrained(tiny_model(shape)).save_pretrained(folder, max_shard_size="4MB")
        copy_side_files(tiny_model(shape), folder)
        assert len(list(folder.glob("model-*.safetensors"))) > 1
        made[shape.label] = folder
    return made


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():  # noqa: SIM118
                tensors[key] = f.get_tensor(key)
    return tensors


def misaligned(folder: Path) -> list[str]:
    """Tensors of a size that is a multiple of 64 bytes that do not start at a multiple of 64 in their file, read
    from the headers as the format says (odd-sized ones, norms and biases, cannot all be aligned: no gaps allowed)."""
    found = []
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        header.pop("__metadata__", None)
        for name, entry in header.items():
            start, end = entry["data_offsets"]
            if end > start and (end - start) % 64 == 0 and (8 + length + start) % 64:
                found.append(name)
    return found


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


@pytest.mark.parametrize("label", ["h64-i128-tied", "h96-i160-untied"])
@pytest.mark.parametrize("quant_type", CPU_TYPES)
def test_streaming_writes_what_the_torchaoconfig_path_writes(quant_type, label, sharded, tmp_path):
    source = sharded[label]
    config_dict = json.loads((source / "config.json").read_text())
    torchao_config = recipes.get(quant_type).config(CPU, 32)
    quantize_and_save(source, tmp_path / "standard", torchao_config, CPU, EventStream(), quant_type)
    streamed = stream_quantize(source, tmp_path / "streamed", config_dict, torchao_config, EventStream(), quant_type)

    standard, ours = read_tensors(tmp_path / "standard"), read_tensors(tmp_path / "streamed")
    assert set(standard) == set(ours)
    assert all(same_bytes(standard[k], ours[k]) for k in standard)
    quant_config = [
        json.loads((tmp_path / d / "config.json").read_text())["quantization_config"] for d in ("standard", "streamed")
    ]
    assert quant_config[0] == quant_config[1]
    assert misaligned(tmp_path / "standard") == misaligned(tmp_path / "streamed") == []
    assert len(list((tmp_path / "streamed").glob("model-*.safetensors"))) > 1
    assert (tmp_path / "streamed" / "model.safetensors.index.json").is_file()
    assert (tmp_path / "streamed" / "generation_config.json").is_file()
    assert streamed.counts.quantized == 14 and streamed.counts.skipped == ("lm_head",)
    assert streamed.layer_errors and all(0 <= e < 0.5 for e in streamed.layer_errors.values())

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "streamed")  # stock transformers
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "standard")
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, reference(ids).logits)
    if label.endswith("-tied"):
        assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()


def test_a_model_larger_than_the_memory_limit_streams_automatically(sharded, tmp_path, capsys, monkeypatch):
    source = sharded["h96-i160-untied"]
    weights = sum(p.stat().st_size for p in source.glob("*.safetensors"))
    monkeypatch.setenv("QUANTIZER_MEMORY_LIMIT", str(resources.memory_for_whole_model(weights) - 1))
    code = main(
        [
            str(source),
            "big",
            "--quant-type",
            "int8_weight_only",
            "--save-only",
            "--output-dir",
            str(tmp_path),
            "--json",
            "--no-tracking",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "streaming engine: one shard at a time" in captured.err
    verify = json.loads(captured.out)["results"][0]["verify"]
    assert verify["ppl_source"] is None and verify["logits_rel_err"] is None  # the source was never loaded whole
    assert "the layer-by-layer check of both models did not fit in memory" in verify["checked"]
    assert "output error of 8 Linear layers" in verify["checked"] and len(verify["layer_errors"]) == 8
    assert "Checked: output error of 8 Linear layers" in (tmp_path / "big" / "README.md").read_text()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "big")
    assert type(model.model.layers[0].mlp.up_proj.weight).__name__ == "Int8Tensor"


def whole_model_figures(folder: Path) -> Figures:
    """The standard verification's figures of a model loaded whole (the reference for the layer-by-layer run)."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return measure(
        in_the_jobs_dtype(AutoModelForCausalLM.from_pretrained(folder)),
        tokenizer,
        build_eval_data(tokenizer, default_eval_text()),
        EventStream(),
        None,
    )


def test_gptq_is_refused_when_streaming(sharded, tmp_path, capsys):
    code = main(
        [
            str(sharded["h64-i128-tied"]),
            "x",
            "--quant-type",
            "int4_weight_only",
            "--int4-method",
            "gptq",
            "--streaming",
            "--save-only",
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert code == 2 and "needs the whole model in memory" in capsys.readouterr().err


def test_a_hub_source_is_streamed_one_shard_at_a_time(hub, sharded, tmp_path, capsys):
    source = sharded["h96-i160-untied"]
    upload_model(HfApi(token=ALICE), "alice/sharded", source)
    shards = sorted(p.name for p in source.glob("model-*.safetensors"))
    before = len(hub.state.requests)
    code = main(
        [
            "alice/sharded",
            "alice/sharded-int4",
            "--quant-type",
            "int4_weight_only",
            "--streaming",
            "--token",
            ALICE,
            "--json",
            "--no-tracking",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)["results"][0]
    assert result["int4_method"] == "asym" and result["url"].endswith("/alice/sharded-int4")
    gets = [path for method, path in hub.state.requests[before:] if method == "GET" and "/resolve/" in path]
    for shard in shards:  # each shard fetched on its own, not through one snapshot of all weights
        assert sum(path.endswith(shard) for path in gets) == 1
    pushed = set(HfApi(token=ALICE).list_repo_files("alice/sharded-int4"))
    assert "model.safetensors.index.json" in pushed and len([f for f in pushed if f.startswith("model-")]) > 1


@pytest.fixture(scope="module")
def mostly_layers(tiny_model, tmp_path_factory) -> Path:
    """A tiny model whose decoder layers outweigh its embeddings (as in real models), in 4 MB shards."""
    folder = tmp_path_factory.mktemp("mostly-layers")
    shape = TinyShape(hidden=64, intermediate=8192, layers=8)
    AutoModelForCausalLM.from_pretrained(tiny_model(shape)).save_pretrained(folder, max_shard_size="4MB")
    copy_side_files(tiny_model(shape), folder)
    return folder


@pytest.fixture(scope="module")
def deep_layers(tiny_model, tmp_path_factory) -> Path:
    """Like `mostly_layers` with 24 layers: large enough that streaming plus the layer-by-layer check fit in
    memory where the whole model does not (the framework's own 0.6 GB dwarfs a smaller one)."""
    folder = tmp_path_factory.mktemp("deep-layers")
    shape = TinyShape(hidden=64, intermediate=8192, layers=24)
    AutoModelForCausalLM.from_pretrained(tiny_model(shape)).save_pretrained(folder, max_shard_size="4MB")
    copy_side_files(tiny_model(shape), folder)
    return folder


def layerwise_limit(source: Path) -> int:
    """A QUANTIZER_MEMORY_LIMIT under which streaming and the layer-by-layer check fit, the source does not."""
    shard = max(p.stat().st_size for p in source.glob("*.safetensors"))
    config = json.loads((source / "config.json").read_text())
    limit = resources.streaming_memory(shard) + resources.layerwise_memory(shard, config, 2048) + 1
    assert resources.memory_for_whole_model(sum(p.stat().st_size for p in source.glob("*.safetensors"))) > limit
    return limit


def no_fit_limit(source: Path) -> int:
    """A QUANTIZER_MEMORY_LIMIT under which the streaming engine fits (two shards at a time) but neither the
    source nor any output (at least its bf16 embeddings plus a quarter of the rest) can be loaded whole."""
    shards = [p.stat().st_size for p in source.glob("*.safetensors")]
    limit = 2 * max(shards) + resources.RUNTIME_BYTES + 1
    smallest_output = max(shards) + (sum(shards) - max(shards)) // 4
    assert resources.memory_for_whole_model(smallest_output) > limit
    return limit


STREAMING_CPU_TYPES = [name for name, r in recipes.RECIPES.items() if "cpu" in r.devices]


def test_a_model_whose_output_does_not_fit_either_succeeds_with_every_cpu_type(
    mostly_layers, tmp_path, capsys, monkeypatch
):
    """The case streaming exists for: nothing can be loaded whole, so verification is the sampled layers."""
    source = mostly_layers
    monkeypatch.setenv("QUANTIZER_MEMORY_LIMIT", str(no_fit_limit(source)))
    argv = [str(source), "nofit", "--save-only", "--output-dir", str(tmp_path), "--json", "--no-tracking"]
    for quant_type in STREAMING_CPU_TYPES:
        argv += ["--quant-type", quant_type]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "streaming engine: one shard at a time" in captured.err
    results = json.loads(captured.out)["results"]
    assert [r["quant_type"] for r in results] == STREAMING_CPU_TYPES
    for result in results:
        verify = result["verify"]
        assert result["status"] == "ok", result["error"]
        assert verify["reload_ok"] is False and verify["ppl_quantized"] is None  # too large to reload here
        assert "the layer-by-layer check of both models did not fit in memory" in verify["checked"]
        assert verify["quantized_linear"] == 7 * 8 and verify["skipped_linear"] == 1  # counted while streaming
        assert "not reloaded" in verify["checked"] and len(verify["layer_errors"]) == 8
        out = Path(result["output_dir"])
        assert "the output is larger than memory, so it was not reloaded" in (out / "README.md").read_text()
        model = AutoModelForCausalLM.from_pretrained(out)  # it does load where there is memory: stock transformers
        assert type(model.model.layers[1].self_attn.q_proj.weight).__name__ != "Parameter"


def test_a_hub_model_that_does_not_fit_is_streamed_verified_and_pushed(hub, mostly_layers, capsys, monkeypatch):
    source = mostly_layers
    upload_model(HfApi(token=ALICE), "alice/nofit-source", source)
    monkeypatch.setenv("QUANTIZER_MEMORY_LIMIT", str(no_fit_limit(source)))
    code = main(["alice/nofit-source", "--token", ALICE, "--json", "--no-tracking"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)["results"][0]
    assert result["url"].endswith("/alice/nofit-source-torchao-int8wo")
    assert result["verify"]["quantized_linear"] == 7 * 8 and "not reloaded" in result["verify"]["checked"]
    card = HfApi(token=ALICE).hf_hub_download("alice/nofit-source-torchao-int8wo", "README.md")
    assert "not reloaded" in Path(card).read_text()


def test_a_hub_model_larger_than_memory_goes_up_shard_by_shard_in_one_commit(hub, deep_layers, capsys, monkeypatch):
    """Each output shard goes to the Hub's storage as soon as it is written and leaves the disk; one commit at the
    end; the job's folders never hold more than about two shards of each; a dropped upload is retried."""
    source = deep_layers
    upload_model(HfApi(token=ALICE), "alice/bounded-source", source)
    monkeypatch.setenv("QUANTIZER_MEMORY_LIMIT", str(layerwise_limit(source)))
    refused = hub.state.fail("PUT", r"^/lfs-upload/", 429, times=1, after=1)  # the second upload is refused once
    before = len(hub.state.requests)
    argv = ["alice/bounded-source", "alice/bounded", "--quant-type", "int8_dynamic", "--token", ALICE, "--json"]
    code = main([*argv, "--no-tracking"])  # a type no other test pushes: its shards are new to the Hub's storage
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "shards are uploaded as they are written" in captured.err
    result = json.loads(captured.out)["results"][0]
    requests = hub.state.requests[before:]
    source_shards = sorted(p for p in source.glob("model-*.safetensors"))
    downloads = [i for i, (m, path) in enumerate(requests) if m == "GET" and "/bounded-source/resolve/" in path]
    uploads = [i for i, (m, path) in enumerate(requests) if m == "PUT" and path.startswith("/lfs-upload/")]
    commits = [i for i, (m, path) in enumerate(requests) if m == "POST" and "/alice/bounded/commit/" in path]
    assert refused.hits == 1 and len(uploads) > 2  # one per new output shard (the Hub dedups), plus the retry
    assert uploads[0] < downloads[-1]  # the first output shard went up before the last source shard came down
    assert len(commits) == 1 and commits[0] > uploads[-1]
    assert next(c.title for c in HfApi(token=ALICE).list_repo_commits("alice/bounded")).startswith("Quantize")
    assert len([c for c in HfApi(token=ALICE).list_repo_commits("alice/bounded") if c.title != "initial commit"]) == 1
    # the disk bound, from the folder sizes the job reports
    local = snapshot_download("alice/bounded", token=ALICE)
    output_shards = [p.stat().st_size for p in Path(local).glob("model-*.safetensors")]
    side_files = sum(p.stat().st_size for p in source.iterdir() if p.suffix != ".safetensors")
    shard = max(p.stat().st_size for p in source_shards)
    assert result["peak_disk_bytes"] <= 2 * shard + 2 * max(output_shards) + side_files
    assert result["peak_disk_bytes"] < (sum(p.stat().st_size for p in source_shards) + sum(output_shards)) / 2
    assert result["output_bytes"] == sum(output_shards)
    # checked although nothing could be loaded whole: both models run one decoder layer at a time
    verify = result["verify"]
    assert "run one decoder layer at a time (24 layers)" in verify["checked"]
    source_figures, output_figures = whole_model_figures(source), whole_model_figures(Path(local))
    assert verify["ppl_source"] == pytest.approx(source_figures.ppl, rel=1e-5)  # what a whole load gives
    assert verify["ppl_quantized"] == pytest.approx(output_figures.ppl, rel=1e-5)
    got, ref = output_figures.logits, source_figures.logits
    assert verify["logits_rel_err"] == pytest.approx(float((got - ref).norm() / ref.norm()), rel=1e-3)
    assert verify["top1_agreement"] == pytest.approx(float((got.argmax(-1) == ref.argmax(-1)).float().mean()))
    card = (Path(local) / "README.md").read_text()
    assert "uploaded as it was written, so it was not reloaded" in card and "peak disk" in card
    model = AutoModelForCausalLM.from_pretrained(local)
    assert type(model.model.layers[23].mlp.down_proj.weight).__name__ == "Int8Tensor"
    assert type(model.config.quantization_config.quant_type).__name__ == "Int8DynamicActivationInt8WeightConfig"


def test_an_upload_that_fails_half_way_leaves_no_repo_and_no_commit(hub, mostly_layers, capsys, monkeypatch):
    source = mostly_layers
    upload_model(HfApi(token=ALICE), "alice/halfway-source", source)
    monkeypatch.setenv("QUANTIZER_MEMORY_LIMIT", str(no_fit_limit(source)))
    hub.state.fail("PUT", r"^/lfs-upload/", 403, times=100, after=2)  # two shards go up, then the Hub refuses
    before = len(hub.state.requests)
    argv = ["alice/halfway-source", "alice/halfway", "--quant-type", "float8_weight_only", "--token", ALICE]
    code = main([*argv, "--json", "--no-tracking"])
    captured = capsys.readouterr()
    hub.state.clear_faults()
    assert code == 1
    result = json.loads(captured.out)["results"][0]
    assert result["status"] == "failed" and "(uploading model-0000" in result["error"]
    requests = hub.state.requests[before:]
    assert not [path for m, path in requests if m == "POST" and "/alice/halfway/commit/" in path]
    assert not HfApi(token=ALICE).repo_exists("alice/halfway")
    assert "was deleted again" in captured.err


def test_a_job_that_does_not_fit_even_shard_by_shard_is_refused_with_numbers(hub, mostly_layers, capsys, monkeypatch):
    upload_model(HfApi(token=ALICE), "alice/too-big-source", mostly_layers)
    monkeypatch.setenv("QUANTIZER_MEMORY_LIMIT", str(100_000_000))  # below two shards plus the runtime
    before = len(hub.state.requests)
    code = main(["alice/too-big-source", "alice/too-big", "--token", ALICE, "--no-tracking"])
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(r"the job does not fit this machine: it needs about [\d.]+ GB of memory but 0\.10 GB", err)
    assert re.search(r"GB of weights: this job needs about [\d.]+ GB of memory \(0\.10 GB available\)", err)
    requests = hub.state.requests[before:]
    assert not [p for m, p in requests if m == "GET" and p.endswith(".safetensors")]  # no weights downloaded
    assert not HfApi(token=ALICE).repo_exists("alice/too-big")
