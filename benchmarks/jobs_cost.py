"""What a job costs on each Hugging Face Jobs flavor: an estimate, for the bundled model and for a 70B model.

    python -m benchmarks.jobs_cost

Each flavor's price is the published one (loopback/jobs_hardware.json, copied from Hugging Face's Jobs pricing page;
`--on-jobs` reads the live list instead). Each job's time is `quantizer.hf_jobs.estimate`, the one the CLI and the
Space print before submitting: `make bench`'s measured job time for the type (2 CPU cores for a CPU flavor, an H200
for a GPU flavor), scaled by the source's size, billed by the started minute. Nothing here ran on Jobs: a CPU
flavor's figure is an upper bound (it has more cores than the 2 measured), a GPU flavor's is the H200's speed (a
smaller GPU may take longer), and a 70B job's time is extrapolated from a 135M model's. Writes
results/jobs-cost.{json,md}.
"""

from __future__ import annotations

import json
import types

from benchmarks.suite import RESULTS, ROOT
from quantizer import hf_jobs, measured
from quantizer.tables import markdown_table

SEVENTY_B_BYTES = 141_107_412_992  # Llama-3.1-70B's bf16 weights (70.55B parameters, 2 bytes each)
TYPES = ("int8_weight_only", "int4_weight_only")


def published_flavors() -> list[hf_jobs.Flavor]:
    doc = json.loads((ROOT / "loopback" / "jobs_hardware.json").read_text())
    infos = []
    for raw in doc["flavors"]:
        accelerator = raw["accelerator"] and types.SimpleNamespace(**raw["accelerator"])
        infos.append(
            types.SimpleNamespace(
                name=raw["name"],
                pretty_name=raw["prettyName"],
                cpu=raw["cpu"],
                ram=raw["ram"],
                ephemeral_storage=raw["ephemeralStorage"],
                accelerator=accelerator,
                unit_cost_usd=raw["unitCostUSD"],
                unit_label=raw["unitLabel"],
            )
        )
    return [hf_jobs.Flavor.from_info(info) for info in infos]


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def holds(flavor: hf_jobs.Flavor, size: int) -> str:
    """Whether the flavor's RAM holds the source with room to spare (else the job streams it shard by shard)."""
    ram = float(flavor.ram.split()[0]) * 1e9
    return "in memory" if ram >= 1.2 * size else "streamed"


def main() -> None:
    bundled = measured.bench_rows("cpu")[0]["bytes"]
    rows, record = [], []
    for flavor in published_flavors():
        cells = [flavor.name, flavor.accelerator or flavor.cpu, f"${flavor.usd_per_hour:.2f}"]
        entry = {"flavor": flavor.name, "usd_per_hour": flavor.usd_per_hour}
        for label, size in (("bundled", bundled), ("70B", SEVENTY_B_BYTES)):
            for quant_type in TYPES:
                estimate = hf_jobs.estimate(flavor, size, [quant_type])
                cells.append(f"{duration(estimate.seconds)}, ${estimate.usd:.2f}")
                entry[f"{label}/{quant_type}"] = {"seconds": round(estimate.seconds, 1), "usd": round(estimate.usd, 4)}
        cells.append(holds(flavor, SEVENTY_B_BYTES))
        rows.append(cells)
        record.append(entry)
    header = ["flavor", "hardware", "per hour"]
    header += [f"{label} {t}" for label in ("bundled 135M", "70B") for t in ("int8", "int4")] + ["70B source"]
    cpu, cuda = (measured.BENCH_TABLES[d] for d in ("cpu", "cuda"))
    text = (
        markdown_table(header, rows)
        + f"\n\nEstimates, not runs: time from make bench's measured job time ({cpu} on 2 CPU cores for CPU "
        f"flavors, {cuda} on an H200 for GPU flavors) scaled by the source's size "
        f"({bundled / 1e9:.2f} GB bundled, {SEVENTY_B_BYTES / 1e9:.1f} GB for the 70B), billed per started minute "
        "at the published hourly price. A 70B source larger than the flavor's memory is streamed shard by shard, "
        "which this extrapolation does not price.\n"
    )
    RESULTS.joinpath("jobs-cost.md").write_text(text)
    RESULTS.joinpath("jobs-cost.json").write_text(json.dumps({"bundled_bytes": bundled, "flavors": record}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
