#!/usr/bin/env python3
"""bench_dreambooth.py: time train_dreambooth.py's real training loop on the SD 2.1 architecture.

In:  nothing to download: the SD 2.1-768 architecture is built from configs with random weights
     (UNet (320, 640, 1280, 1280), cross-attention 1024, heads (5, 10, 20, 20), linear projection,
     upcast attention, sample size 96; CLIP text model 1024 wide, 23 layers, 16 heads; VAE
     (128, 256, 512, 512)), and the class images are random pictures.
Out: per preset: seconds per optimizer step (median after --warmup steps), peak GPU memory,
     FLOPs per step (torch.utils.flop_counter on one step's model work, the recomputed forward of
     gradient checkpointing included) and % of the GPU's dense bf16 peak (by the exact device
     name, or --peak_tflops); printed as a Markdown table, and appended to --results when given
     (bench/RESULTS.md). Each preset trains in a fresh process, so no model or optimizer state of
     the one before counts in its memory. Without a GPU it runs the tiny model at 64 px instead: a
     test that the bench works, not a benchmark.

Presets (each a set of train_dreambooth.py flags): paper (fp16, 8-bit AdamW, full UNet, VAE and
text encoder run every step), cache (+ --cache_latents), checkpointing (+ --gradient_checkpointing),
lora (LoRA rank 4 with cached latents).
"""
import argparse
import csv
import datetime
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_dreambooth as tdb  # noqa: E402  (the bench times the script itself)

PRESETS = {
    "paper": ["--no-cache_latents"],
    "cache": ["--cache_latents"],
    "checkpointing": ["--cache_latents", "--gradient_checkpointing"],
    "lora": ["--cache_latents", "--lora_rank", "4"],
}
# Dense bf16 tensor-core peak, TFLOP/s, by the name torch.cuda.get_device_name() gives (the datasheets).
BF16_PEAK_TFLOPS = {"NVIDIA H100 80GB HBM3": 989, "NVIDIA H100 PCIe": 756, "NVIDIA H100 NVL": 835, "NVIDIA H200": 989,
                    "NVIDIA A100-SXM4-80GB": 312, "NVIDIA A100-SXM4-40GB": 312, "NVIDIA A100 80GB PCIe": 312,
                    "NVIDIA A100-PCIE-40GB": 312, "NVIDIA L40S": 362}


def build_sd21_random_pipeline(seed=0, dtype=torch.float32):
    """Stable Diffusion 2.1-768's architecture with random weights (v-prediction), in dtype."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = with_normal_weights(dtype, lambda: UNet2DConditionModel(
        sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True, upcast_attention=True,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3))
    vae = with_normal_weights(dtype, lambda: AutoencoderKL(
        block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3, latent_channels=4, sample_size=768,
        layers_per_block=2, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4))
    tokenizer = tdb.build_tiny_random_pipeline().tokenizer
    text_encoder = with_normal_weights(dtype, lambda: CLIPTextModel(CLIPTextConfig(
        hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
        vocab_size=49408, projection_dim=512, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def with_normal_weights(dtype, build, std=0.02):
    """build()'s model in dtype, its weights drawn from N(0, std), norm scales 1 and biases 0. Built
    without torch's default fp32 init, which takes 40 s of a 2-core CPU for SD 2.1's 1.3 billion
    parameters (most of it the first touch of 5 GB). Buffers (CLIP's position ids) are built as usual."""
    import accelerate
    from accelerate.utils import set_module_tensor_to_device

    with accelerate.init_empty_weights(include_buffers=False):
        model = build()
    for name, param in list(model.named_parameters()):
        value = torch.empty(param.shape, dtype=dtype)
        if param.ndim > 1:
            value.normal_(0, std)
        else:
            value.fill_(1.0 if name.endswith("weight") else 0.0)
        set_module_tensor_to_device(model, name, "cpu", value=value, dtype=dtype)
    return model


def step_flops(pipeline, resolution, cached, lora, checkpointing):
    """FLOPs of one training step's model work at batch 2 (instance + class): the UNet forward and
    backward (with LoRA the frozen UNet computes activation gradients only; with gradient
    checkpointing the backward runs the checkpointed forward again), plus VAE encoding and the text
    encoder when they run every step."""
    from torch.utils.flop_counter import FlopCounterMode
    device = "meta"  # shapes only: no arithmetic, and no memory taken from the GPU the presets train on
    unet = pipeline.unet.requires_grad_(not lora)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    latents = torch.randn(2, 4, resolution // 8, resolution // 8, device=device, requires_grad=lora)
    states = torch.randn(2, 77, pipeline.text_encoder.config.hidden_size, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        out = unet(latents, torch.tensor([10, 500], device=device), states).sample
        out.float().pow(2).mean().backward()
        if not cached:
            with torch.no_grad():
                pipeline.vae.encode(torch.randn(2, 3, resolution, resolution, device=device))
                ids = torch.zeros(2, 77, dtype=torch.long, device=device)
                pipeline.text_encoder(ids)
    unet.zero_grad(set_to_none=True)
    if checkpointing:
        unet.disable_gradient_checkpointing()
    unet.eval()
    return counter.get_total_flops()


def append_results(path, title, header, lines):
    """Print a Markdown table and, with a path, append it under a ### title."""
    print(header)
    print("\n".join(lines))
    if path:
        path = Path(path)
        text = path.read_text() if path.exists() else "# Benchmarks\n\n"
        path.write_text(text + f"\n### {title}\n\n" + header + "\n" + "\n".join(lines) + "\n")


def peak_tflops(device_name, override):
    """The device's dense bf16 peak in TFLOP/s: --peak_tflops, else the table; None on the CPU."""
    if override:
        return override
    if device_name == "CPU":
        return None
    if device_name not in BF16_PEAK_TFLOPS:
        raise SystemExit(f"no bf16 peak known for {device_name!r}: give --peak_tflops (its datasheet's dense bf16 "
                         f"TFLOP/s); known: {', '.join(BF16_PEAK_TFLOPS)}")
    return BF16_PEAK_TFLOPS[device_name]


def run_preset(name, extra, tiny, resolution, steps, warmup, work):
    """train_dreambooth.py's main() on one preset -> (median seconds per step, peak MiB). Runs in
    a child process (see main)."""
    model = "tiny-random"
    if not tiny:
        model = "sd21-random"
        real_load = tdb.load_pipeline
        tdb.load_pipeline = lambda name, *rest: build_sd21_random_pipeline() if name == model else real_load(name, *rest)
    instance, classes = work / "instance", work / "class"
    output = work / f"out_{name}"
    tdb_args = ["--pretrained_model_name_or_path", model, "--instance_data_dir", str(instance),
                "--class_data_dir", str(classes), "--output_dir", str(output), "--resolution", str(resolution),
                "--num_class_images", str(len(list(classes.iterdir()))), "--max_train_steps", str(steps),
                "--validation_steps", "0", "--checkpointing_steps", "0", "--save_precision", "fp16", *extra]
    if tdb.main(tdb_args) != 0:  # (an exception, not SystemExit, travels back from a pool's process)
        raise RuntimeError(f"preset {name}: train_dreambooth.py failed")
    with open(output / "training_log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    timed = rows[warmup:] or rows
    return statistics.median(float(r["seconds"]) for r in timed), max(float(r["peak_memory_mb"]) for r in timed)


def run_in_fresh_process(function, *args, tiny=False):
    """function(*args) in a new Python process: its GPU memory and CUDA state end with it. With a GPU
    it is spawned, so that it inherits no CUDA state. In tiny mode (the CPU) it is forked from a server
    that imported diffusers and transformers once: those imports would be most of each preset's time."""
    import multiprocessing
    context = multiprocessing.get_context("forkserver" if tiny else "spawn")
    if tiny:
        context.set_forkserver_preload([__name__, "diffusers", "transformers", "peft"])
    receiver, sender = context.Pipe(duplex=False)  # a pipe, not a Pool: a Pool's locks leak under forkserver
    process = context.Process(target=send_result, args=(sender, function, args))
    process.start()
    sender.close()
    try:
        failed, result = receiver.recv()
    except EOFError:  # it died before it could send
        failed, result = True, None
    process.join()
    if failed and result is None:
        result = f"the preset's process ended with exit code {process.exitcode}"
    if failed:
        raise RuntimeError(result)
    return result


def send_result(sender, function, args):
    """In the child: (False, function(*args)), or (True, the error's text), sent back through the pipe."""
    try:
        sender.send((False, function(*args)))
    except Exception as error:
        sender.send((True, f"{type(error).__name__}: {error}"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated, from: " + ", ".join(PRESETS))
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per preset")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing")
    parser.add_argument("--peak_tflops", type=float, help="the GPU's dense bf16 peak (default: by device name)")
    parser.add_argument("--results", help="append the rows to this Markdown file (bench/RESULTS.md)")
    parser.add_argument("--tiny", action="store_true", help="the tiny model at 64 px (default without a GPU)")
    args = parser.parse_args(argv)
    presets = args.presets.split(",")
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        parser.error(f"unknown presets {unknown}; choose from {list(PRESETS)}")

    tiny = args.tiny or not torch.cuda.is_available()
    resolution = 64 if tiny else 768
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    peak = peak_tflops(device_name, args.peak_tflops)
    if tiny:
        print("tiny model at 64 px: this checks the bench, it measures nothing about SD 2.1")
    with torch.device("meta"):  # for counting FLOPs: the presets build their own models in their own processes
        pipeline = tdb.build_tiny_random_pipeline() if tiny else build_sd21_random_pipeline()

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_dreambooth_") as tmp:
        work = Path(tmp)
        rng = np.random.default_rng(0)
        for kind, count in (("instance", 10), ("class", 10)):
            (work / kind).mkdir()
            for k in range(count):
                pixels = rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(work / kind / f"{kind}_{k}.png")
        for name in presets:
            seconds, memory_mb = run_in_fresh_process(run_preset, name, PRESETS[name], tiny, resolution, args.steps,
                                                      args.warmup, work, tiny=tiny)
            flops = step_flops(pipeline, resolution, cached="--cache_latents" in PRESETS[name], lora=name == "lora",
                               checkpointing="--gradient_checkpointing" in PRESETS[name])
            share = f"{100 * flops / seconds / (peak * 1e12):.1f}" if peak else "n/a"
            rows.append((name, seconds, memory_mb / 1024, flops / 1e12, share))

    header = "| date | device | preset | s/step | peak GiB | TFLOP/step | % bf16 peak |\n|---|---|---|---|---|---|---|"
    lines = [f"| {datetime.date.today()} | {device_name}{' (tiny, 64 px)' if tiny else ''} | {name} | {s:.3f} | "
             f"{gib:.2f} | {tf:.3f} | {share} |" for name, s, gib, tf, share in rows]
    append_results(args.results, f"bench_dreambooth.py ({args.steps} steps, median after {args.warmup})",
                   header, lines)
    return rows


if __name__ == "__main__":
    main()
