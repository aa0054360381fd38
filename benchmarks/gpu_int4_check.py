"""GPU verification of int4 checkpoints written on a CPU (run it on a CUDA machine; a few minutes).

    python -m benchmarks.gpu_int4_check [--out benchmarks/results]

1. The CPU packer against PyTorch's CUDA packer (`aten._convert_weight_to_int4pack`), bit for bit,
   for several shapes including ones that need padding.
2. CPU-built tensors against torchao's CUDA `Int4TilePackedTo4dTensor.from_hp`: words that differ
   (rounding ties in the qparams maths), scale/zero agreement, and F.linear agreement.
3. Checkpoints of a tiny SmolLM3 and of SmolLM2-135M written with --device cpu, loaded by stock
   transformers with device_map="cuda": logits against the CPU dequantize-and-matmul reference.
4. Tokens per second of the int4 checkpoint against bf16 on the GPU.

Not run yet: no GPU has been available to this project. Until it is, int4_tile_packed is marked
"unverified on a GPU" in the registry and the card.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from quantizer.int4 import packed as int4_packed


def packer_vs_cuda(shapes) -> list[dict]:
    rows = []
    for n, k in shapes:
        q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=torch.Generator().manual_seed(n + k))
        as_bytes = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)  # even k in the high nibble, as from_hp does
        cuda = torch.ops.aten._convert_weight_to_int4pack(as_bytes.cuda().contiguous(), 8).cpu()
        ours = int4_packed.pack(q)
        rows.append(
            {"shape": [n, k], "identical": bool(torch.equal(cuda, ours)), "differing_words": int((cuda != ours).sum())}
        )
    return rows


def built_vs_from_hp(shapes, group_size: int = 128) -> list[dict]:
    from torchao.quantization.quantize_.workflows.int4.int4_tile_packed_to_4d_tensor import Int4TilePackedTo4dTensor

    rows = []
    for n, k in shapes:
        w = (torch.randn(n, k, generator=torch.Generator().manual_seed(n * k)) * 0.02).to(torch.bfloat16)
        ours, _ = int4_packed.build(w, group_size)
        theirs = Int4TilePackedTo4dTensor.from_hp(w.cuda(), [1, group_size])
        x = torch.randn(4, k, dtype=torch.bfloat16, device="cuda")
        ours_cuda = Int4TilePackedTo4dTensor(ours.qdata.cuda(), ours.scale_and_zero.cuda(), ours.block_size, ours.shape)
        y_ours = torch.nn.functional.linear(x, ours_cuda).float()
        y_theirs = torch.nn.functional.linear(x, theirs).float()
        rows.append(
            {
                "shape": [n, k],
                "differing_words": int((theirs.qdata.cpu() != ours.qdata).sum()),
                "words": ours.qdata.numel(),
                "scale_zero_max_abs_diff": float(
                    (theirs.scale_and_zero.cpu().float() - ours.scale_and_zero.float()).abs().max()
                ),
                "linear_rel_err": float((y_ours - y_theirs).norm() / y_theirs.norm()),
            }
        )
    return rows


def checkpoint_on_cuda(source: Path, work: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantizer.int4.packed import dequantize_tile_packed
    from quantizer.texts import build_eval_data, default_eval_text

    out = work / f"{source.name}-int4tp"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "quantizer",
            str(source),
            out.name,
            "--quant-type",
            "int4_tile_packed",
            "--device",
            "cpu",
            "--save-only",
            "--output-dir",
            str(work),
            "--overwrite",
            "--no-tracking",
        ],
        check=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = build_eval_data(tokenizer, default_eval_text()).batch
    cpu = AutoModelForCausalLM.from_pretrained(out)
    dequantize_tile_packed(cpu)
    gpu = AutoModelForCausalLM.from_pretrained(out, device_map="cuda")
    bf16 = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16, device_map="cuda")
    with torch.no_grad():
        ref = cpu(batch).logits.float()
        got = gpu(batch.cuda()).logits.float().cpu()

    def speed(model) -> float:
        ids = batch[:1, :16].cuda()
        model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        torch.cuda.synchronize()
        started = time.perf_counter()
        model.generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False)
        torch.cuda.synchronize()
        return 64 / (time.perf_counter() - started)

    return {
        "model": source.name,
        "logits_rel_err_vs_cpu_reference": float((got - ref).norm() / ref.norm()),
        "top1_agreement": float((got.argmax(-1) == ref.argmax(-1)).float().mean()),
        "int4_tokens_per_s": speed(gpu),
        "bf16_tokens_per_s": speed(bf16),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: this check needs one", file=sys.stderr)
        return 2
    from benchmarks.tiny_models import TinyShape, build_tiny_smollm3
    from quantizer.demo import prepare

    shapes = [(8, 1024), (64, 1024), (576, 1024), (1536, 2048), (200, 2048)]
    report = {
        "gpu": torch.cuda.get_device_name(0),
        "packer_vs_cuda": packer_vs_cuda(shapes),
        "built_vs_from_hp": built_vs_from_hp([(64, 96), (576, 576), (1536, 576), (200, 1100)]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        demo = prepare()
        tiny = build_tiny_smollm3(work / "tiny-smollm3", demo, TinyShape(hidden=128, intermediate=384, tied=False))
        report["checkpoints"] = [checkpoint_on_cuda(tiny, work), checkpoint_on_cuda(demo, work)]
    text = json.dumps(report, indent=2)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-int4-check.json").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
