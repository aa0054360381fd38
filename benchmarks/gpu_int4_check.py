"""GPU verification of int4 checkpoints written on a CPU (run it on a CUDA machine; a few minutes).

    python -m benchmarks.gpu_int4_check [--out benchmarks/results] [--kernels-only]
    python -m benchmarks.gpu_int4_check --render benchmarks/results/gpu-int4-check.json

1. The CPU packer against PyTorch's CUDA packer (`aten._convert_weight_to_int4pack`), bit for bit,
   for several shapes including ones that need padding.
2. CPU-built tensors against torchao's CUDA `Int4TilePackedTo4dTensor.from_hp`: words that differ
   (rounding ties in the qparams maths), scale/zero agreement, and F.linear agreement.
3. Checkpoints of a tiny SmolLM3 and of SmolLM2-135M written with --device cpu, loaded by stock
   transformers with device_map="cuda": logits against the CPU dequantize-and-matmul reference.
4. Tokens per second of the int4 checkpoint against bf16 on the GPU.

The results are committed as benchmarks/results/gpu-int4-check.json, with the GPU, its driver and the
torch, torchao and transformers versions they were measured with.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
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


def checkpoint_on_cuda(source: Path, work: Path, method: str | None = None) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantizer.int4.packed import dequantize_tile_packed
    from quantizer.texts import build_eval_data, default_eval_text

    out = work / f"{source.name}-int4tp-{method or 'default'}"
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
            *(["--int4-method", method] if method else []),
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
        "int4_method": method or "default",
        "logits_rel_err_vs_cpu_reference": float((got - ref).norm() / ref.norm()),
        "top1_agreement": float((got.argmax(-1) == ref.argmax(-1)).float().mean()),
        "int4_tokens_per_s": speed(gpu),
        "bf16_tokens_per_s": speed(bf16),
    }


def markdown(report: dict) -> str:
    """The guide's tables of a report (regenerated from the committed JSON with --render, no GPU needed)."""
    v = report["versions"]
    packer = report.get("packer_vs_cuda") or []
    built = report.get("built_vs_from_hp") or []
    lines = [
        f"{report['gpu']} (driver {report['gpu_driver']}), torch {v['torch']}, torchao {v['torchao']}, "
        f"transformers {v['transformers']}.",
        "",
        "| check | shapes | result |",
        "|---|---|---|",
        f"| CPU packer vs `aten._convert_weight_to_int4pack` on CUDA | "
        f"{', '.join('x'.join(map(str, r['shape'])) for r in packer)} | "
        f"{sum(r['identical'] for r in packer)} of {len(packer)} bit-identical, "
        f"{sum(r['differing_words'] for r in packer)} differing words |",
        f"| CPU-built tensor vs torchao's CUDA `from_hp` | "
        f"{', '.join('x'.join(map(str, r['shape'])) for r in built)} | "
        f"{sum(r['differing_words'] for r in built)} differing words of {sum(r['words'] for r in built)}; "
        f"scale/zero max difference {max((r['scale_zero_max_abs_diff'] for r in built), default=0):g}; "
        f"F.linear relative error {max((r['linear_rel_err'] for r in built), default=0):g} |",
        "",
        "| checkpoint written on the CPU | int4 method | logits vs CPU reference (rel. error) | top-1 agreement | "
        "int4 tokens/s | bf16 tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in report.items():
        if key.startswith("checkpoint-"):
            lines.append(
                f"| {row['model']} | {row['int4_method']} | {row['logits_rel_err_vs_cpu_reference']:.4f} | "
                f"{row['top1_agreement']:.1%} | {row['int4_tokens_per_s']:.1f} | {row['bf16_tokens_per_s']:.1f} |"
            )
    for name, error in report.get("errors", {}).items():
        lines.append(f"\n{name} failed: {error}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument(
        "--kernels-only", action="store_true", help="only checks 1 and 2, which need no model (a few seconds)"
    )
    parser.add_argument("--render", type=Path, help="only write the .md of this committed JSON report")
    args = parser.parse_args(argv)
    if args.render:
        args.render.with_suffix(".md").write_text(markdown(json.loads(args.render.read_text())))
        return 0
    if not torch.cuda.is_available():
        print("no CUDA GPU: this check needs one", file=sys.stderr)
        return 2
    from benchmarks.compare import gpu_driver
    from benchmarks.offgrid import build_offgrid
    from benchmarks.tiny_models import TinyShape, build_tiny_smollm3
    from quantizer.demo import prepare

    args.out.mkdir(parents=True, exist_ok=True)
    shapes = [(8, 1024), (64, 1024), (576, 1024), (1536, 2048), (200, 2048)]
    report: dict = {
        "gpu": torch.cuda.get_device_name(0),
        "gpu_driver": gpu_driver(),
        "versions": {name: version(name) for name in ("torch", "torchao", "transformers")},
        "errors": {},
    }

    def step(name: str, measure) -> None:
        """Record one check (or the error that stopped it) and rewrite the file, so a later failure loses
        nothing measured before it."""
        try:
            report[name] = measure()
        except Exception as exc:  # every failure is a finding to record, not a crash
            report["errors"][name] = f"{type(exc).__name__}: {exc}"[-2000:]
        (args.out / "gpu-int4-check.json").write_text(json.dumps(report, indent=2))
        (args.out / "gpu-int4-check.md").write_text(markdown(report))

    step("packer_vs_cuda", lambda: packer_vs_cuda(shapes))
    step("built_vs_from_hp", lambda: built_vs_from_hp([(64, 96), (576, 576), (1536, 576), (200, 1100)]))
    if args.kernels_only:
        print(json.dumps(report, indent=2))
        return 1 if report["errors"] else 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        demo = prepare()
        tiny = build_tiny_smollm3(work / "tiny-smollm3", demo, TinyShape(hidden=128, intermediate=384, tied=False))
        offgrid = build_offgrid(demo, work / "SmolLM2-135M-offgrid")
        report["checkpoints"] = []
        for name, folder, method in (
            ("tiny", tiny, None),
            ("demo-rtn", demo, "rtn"),
            ("demo-gptq", demo, "gptq"),
            ("offgrid-gptq", offgrid, "gptq"),
        ):
            step(f"checkpoint-{name}", lambda folder=folder, method=method: checkpoint_on_cuda(folder, work, method))
    print(json.dumps(report, indent=2))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
