#!/usr/bin/env python3
"""bench_generate.py: time generate.py on the SD 2.1 architecture, per batch size and precision.

In:  nothing to download: SD 2.1-768's architecture with random weights (bench_dreambooth.py builds
     it), 768 px, 50 steps, classifier-free guidance 7.5.
Out: per setting: seconds per image, images per second, speed-up over the pipeline called one image
     at a time, and % of the GPU's bf16 peak from the FLOPs per image (UNet forward counted by
     torch.utils.flop_counter, x2 for guidance, x steps, + one VAE decode). Printed as Markdown and
     appended to --results (bench/RESULTS.md). Without a GPU it runs the tiny model at 64 px and 4
     steps instead: a test that the bench works, not a benchmark.

Settings: batch 1 (the baseline), 4, 8, 16 in fp16; batch 8 in bf16; batch 8 fp16 with
channels_last, with torch.compile, and with both. Each setting first draws one warm-up batch.
"""
import argparse
import csv
import datetime
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate as gen  # noqa: E402  (the bench times the script itself)
import train_dreambooth as tdb  # noqa: E402
from bench_dreambooth import append_results, build_random_pipeline, peak_tflops  # noqa: E402

# name: (batch size, precision, channels_last, torch.compile)
SETTINGS = {
    "one at a time": (1, "fp16", False, False),
    "batch 4": (4, "fp16", False, False),
    "batch 8": (8, "fp16", False, False),
    "batch 16": (16, "fp16", False, False),
    "batch 8 bf16": (8, "bf16", False, False),
    "batch 8 channels_last": (8, "fp16", True, False),
    "batch 8 compile": (8, "fp16", False, True),
    "batch 8 compile channels_last": (8, "fp16", True, True),
}
TINY_SETTINGS = {"one at a time": (1, "no", False, False), "batch 2": (2, "no", False, False),
                 "batch 2 channels_last": (2, "no", True, False)}


def flops_per_image(pipeline, resolution, steps):
    """UNet forward FLOPs x 2 (guidance) x steps, plus one VAE decode, for one image."""
    from torch.utils.flop_counter import FlopCounterMode
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipeline.to(device)
    side = resolution // 8
    states = torch.randn(1, 77, pipeline.text_encoder.config.hidden_size, device=device)
    with torch.no_grad():
        with FlopCounterMode(display=False) as unet_counter:
            pipeline.unet(torch.randn(1, 4, side, side, device=device), torch.tensor([500], device=device), states)
        with FlopCounterMode(display=False) as vae_counter:
            pipeline.vae.decode(torch.randn(1, 4, side, side, device=device))
    return unet_counter.get_total_flops() * 2 * steps + vae_counter.get_total_flops()


def time_setting(pipeline, setting, resolution, steps, images, work):
    batch, precision, channels_last, compile_unet = setting
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    pipeline.to(dtype=dtype)
    unet = pipeline.unet
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    if compile_unet:
        pipeline.unet = torch.compile(unet, mode="max-autotune-no-cudagraphs", fullgraph=True)
    gen.drawing_pipeline = lambda location, dtype_, scheduler, *placement: pipeline
    common = ["--height", str(resolution), "--width", str(resolution), "--num_inference_steps", str(steps),
              "--batch_size", str(batch), "--mixed_precision", precision]
    gen.main(["--model", f"bench/warmup:{batch}", "--output_dir", str(work / "warmup"), *common])
    gen.main(["--model", f"bench/timed:{max(images, batch)}", "--output_dir", str(work / "timed"), *common])
    with open(work / "timed" / "manifest.csv", newline="") as handle:
        seconds = statistics.median(float(r["seconds"]) for r in csv.DictReader(handle))
    pipeline.unet = unet.to(memory_format=torch.contiguous_format)
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="timed images per setting")
    parser.add_argument("--settings", help="comma-separated subset of: " + ", ".join(SETTINGS))
    parser.add_argument("--peak_tflops", type=float, help="the GPU's dense bf16 peak (default: by device name)")
    parser.add_argument("--results", help="append the rows to this Markdown file (bench/RESULTS.md)")
    args = parser.parse_args(argv)

    tiny = not torch.cuda.is_available()
    settings = TINY_SETTINGS if tiny else SETTINGS
    if args.settings:
        chosen = [s.strip() for s in args.settings.split(",")]
        unknown = [s for s in chosen if s not in settings]
        if unknown:
            parser.error(f"unknown settings {unknown}; choose from {list(settings)}")
        settings = {name: settings[name] for name in chosen}
    resolution, steps = (64, 4) if tiny else (768, 50)
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    if tiny:
        print("tiny model at 64 px, 4 steps: this checks the bench, it measures nothing about SD 2.1")
    pipeline = tdb.build_tiny_random_pipeline() if tiny else build_random_pipeline("sd21", torch.float32)
    flops = flops_per_image(pipeline, resolution, steps)
    peak = peak_tflops(device_name, args.peak_tflops)

    rows = []
    real_loader, real_check = gen.drawing_pipeline, gen.model_index
    index = {"_class_name": type(pipeline).__name__, "scheduler": ["diffusers", type(pipeline.scheduler).__name__]}
    gen.model_index = lambda location, revision=None: (index["_class_name"], index)
    try:
        for name, setting in settings.items():
            with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
                seconds = time_setting(pipeline, setting, resolution, steps, args.images, Path(tmp))
            rows.append((name, seconds))
    finally:
        gen.drawing_pipeline, gen.model_index = real_loader, real_check

    baseline = dict(rows).get("one at a time")
    header = ("| date | device | setting | s/image | images/s | speed-up | TFLOP/image | % bf16 peak |\n"
              "|---|---|---|---|---|---|---|---|")
    lines = []
    for name, seconds in rows:
        speedup = f"{baseline / seconds:.2f}x" if baseline else "n/a"
        share = f"{100 * flops / seconds / (peak * 1e12):.1f}" if peak else "n/a"
        lines.append(f"| {datetime.date.today()} | {device_name}{' (tiny, 64 px)' if tiny else ''} | {name} | "
                     f"{seconds:.3f} | {1 / seconds:.2f} | {speedup} | {flops / 1e12:.3f} | {share} |")
    append_results(args.results, f"bench_generate.py ({resolution} px, {steps} steps, guidance 7.5)", header, lines)
    return rows, flops


if __name__ == "__main__":
    main()
