"""`python -m mm_repro bench device=cpu|cuda out=DIR`: its options checked, the measurements (bench.measure),
bench-<device>.json written, and the printed table."""

from __future__ import annotations

from mm_repro.bench.measure import run_bench
from mm_repro.bench.options import check_bench
from mm_repro.config import BenchConfig, to_schema
from mm_repro.files import output_dir, write_json


def report(r: dict) -> str:
    """The printed table: what bench-<device>.json holds, one row per pipeline."""
    rows = [
        ("ours: train step", f"{r['ours_images_per_second']:.1f}", f"{r['ratio']:.2f}x", f"{100 * r['mfu_ours']:.1f}%"),
        ("official-style: train step", f"{r['official_images_per_second']:.1f}", "", f"{100 * r['mfu_official']:.1f}%"),
        ("ours: data pipeline", f"{r['data_ours_images_per_second']:.0f}", f"{r['data_ratio']:.1f}x", ""),
        ("official-style: data pipeline", f"{r['data_official_images_per_second']:.0f}", "", ""),
    ]
    if "pack_skipped" in r:
        rows.append((f"packed: skipped ({r['pack_skipped']})", "", "", ""))
    if "pack" in r:
        rows.append(
            (
                f"packed: {r['pack']} runs, aggregate",
                f"{r['packed_images_per_second']:.1f}",
                f"{r['packed_ratio']:.2f}x",
                "",
            )
        )
    return "\n".join(
        [
            f"mm_repro bench: {r['model']} (width {r['width']}) {r['method']}, batch {r['batch_size']}, {r['device']} "
            f"({r['device_name']}), ours {r['precision']}{' compiled' if r['compile'] else ''}; official-style "
            f"fp32 with {r['workers']} loader workers; torch {r['torch_version']}",
            *("{:34}{:>12}{:>9}{:>8}".format(*row) for row in [("", "images/s", "ratio", "MFU"), *rows]),
            f"epoch outside training steps: {100 * r['epoch_overhead']:.1f} % of a CIFAR-10 epoch (evaluation "
            f"{1e6 * r['eval_seconds_per_image']:.1f} us/image, checkpoint stall {r['checkpoint_stall_seconds']:.3f} s"
            f" + background write {r['checkpoint_write_seconds']:.3f} s, records {r['records_seconds']:.3f} s)",
            f"train FLOPs/image {r['train_flops_per_image'] / 1e9:.3f} G; measured peak (matmul or conv) "
            f"{r['measured_peak_flops'] / 1e12:.3f} TFLOP/s ({r['measured_peak_mode']})",
            *implausible(r),
        ]
    )


def implausible(r: dict) -> list[str]:
    """A warning line when an MFU reads above 100 %: the peak was measured low (a busy machine, a throttled core), so
    every MFU of this run is inflated; rerun on a quiet machine."""
    high = {k: v for k, v in (("ours", r["mfu_ours"]), ("official-style", r["mfu_official"])) if v > 1.0}
    if not high:
        return []
    listed = ", ".join(f"{k} {100 * v:.0f} %" for k, v in high.items())
    return [
        f"warning: MFU above 100 % ({listed}): the measured peak of {r['measured_peak_flops'] / 1e12:.3f} TFLOP/s "
        "is implausibly low (was the machine busy?); the MFU figures of this run are not to be trusted: rerun on a "
        "quiet machine (OMP_NUM_THREADS set to its cores)"
    ]


def run(dict_cfg: object) -> dict:
    """Checked options, the measurements, bench-<device>.json and the printed table."""
    cfg: BenchConfig = to_schema(dict_cfg, BenchConfig)
    check_bench(cfg)
    out = output_dir(cfg.out) / f"bench-{cfg.device}.json"  # refused before the measuring, not after
    result = run_bench(cfg)
    write_json(out, result)
    print(report(result))
    print(f"written: {out}")
    return result
