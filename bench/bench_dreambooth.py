#!/usr/bin/env python3
"""bench_dreambooth.py: time train_dreambooth.py's real training loop on SD 2.1's, SDXL's or FLUX.1's architecture.

In:  nothing to download: --model's architecture is built from configs with random weights, saved as a
     pipeline folder, and trained from there; the instance and class images are random pictures.
     sd21 (768 px): UNet (320, 640, 1280, 1280), cross-attention 1024, heads (5, 10, 20, 20), linear
     projection, upcast attention, sample size 96; CLIP text model 1024 wide, 23 layers, 16 heads; VAE
     (128, 256, 512, 512). sdxl (1024 px): SDXL base 1.0's UNet (2.57 B), CLIP ViT-L and OpenCLIP
     ViT-bigG text encoders, VAE. flux (1024 px): FLUX.1-dev's transformer (11.9 B), CLIP ViT-L, T5-XXL
     encoder, 16-channel VAE.
Out: per preset: seconds per optimizer step (median after --warmup steps), peak GPU memory,
     FLOPs per step (torch.utils.flop_counter on one step's model work, the recomputed forward of
     gradient checkpointing included) and % of the GPU's dense bf16 peak (by the exact device
     name, or --peak_tflops); printed as a Markdown table, and appended to --results when given
     (bench/RESULTS.md). Each preset trains in a fresh process, so no model or optimizer state of
     the one before counts in its memory; the final save (34 GB for FLUX.1) is left out of the runs.
     Without a GPU it runs the model's tiny-random at 64 px instead: a test that the bench works, not
     a benchmark.

Presets (each a set of train_dreambooth.py flags). sd21: paper (fp16, 8-bit AdamW, full UNet, VAE and
text encoder run every step), cache (+ --cache_latents), checkpointing (+ --gradient_checkpointing),
lora (LoRA rank 4 with cached latents). sdxl and flux, in bf16 with cached latents: lora (rank 4),
lora_checkpointing (+ --gradient_checkpointing), lora_nf4 (+ an NF4 base, GPU only).
"""
import argparse
import csv
import datetime
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
import bench_flops  # noqa: E402  (the architectures' configs, and the denoiser call whose FLOPs count)
import train_dreambooth as tdb  # noqa: E402  (the bench times the script itself)

NF4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}  # the lora_nf4 preset's --bnb_quantization_config_path
LORA_PRESETS = {
    "lora": ["--cache_latents", "--lora_rank", "4"],
    "lora_checkpointing": ["--cache_latents", "--lora_rank", "4", "--gradient_checkpointing"],
    "lora_nf4": ["--cache_latents", "--lora_rank", "4", "--gradient_checkpointing", "--bnb_quantization_config_path"],
}
PRESETS = {
    "sd21": {"paper": ["--no-cache_latents"], "cache": ["--cache_latents"],
             "checkpointing": ["--cache_latents", "--gradient_checkpointing"],
             "lora": ["--cache_latents", "--lora_rank", "4"]},
    "sdxl": LORA_PRESETS,
    "flux": LORA_PRESETS,
}
RESOLUTIONS = {"sd21": 768, "sdxl": 1024, "flux": 1024}
TINY_FAMILIES = {"sd21": tdb.SD, "sdxl": tdb.SDXL, "flux": tdb.FLUX}  # the tiny-random model of each, on the CPU
# Dense bf16 tensor-core peak, TFLOP/s, by the name torch.cuda.get_device_name() gives (the datasheets).
BF16_PEAK_TFLOPS = {"NVIDIA H100 80GB HBM3": 989, "NVIDIA H100 PCIe": 756, "NVIDIA H100 NVL": 835, "NVIDIA H200": 989,
                    "NVIDIA A100-SXM4-80GB": 312, "NVIDIA A100-SXM4-40GB": 312, "NVIDIA A100 80GB PCIe": 312,
                    "NVIDIA A100-PCIE-40GB": 312, "NVIDIA L40S": 362}


def build_random_pipeline(model, dtype, device="cpu", seed=0):
    """--model's released architecture (bench_flops' configs) with random weights, in dtype on device."""
    torch.manual_seed(seed)
    return {"sd21": build_sd21_random_pipeline, "sdxl": build_sdxl_random_pipeline,
            "flux": build_flux_random_pipeline}[model](dtype, device)


def build_sd21_random_pipeline(dtype, device):
    """Stable Diffusion 2.1-768 (v-prediction)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = tdb.build_tiny_random_pipeline().tokenizer
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    return StableDiffusionPipeline(
        vae=with_normal_weights(dtype, lambda: AutoencoderKL(**bench_flops.SD_VAE), device),
        text_encoder=random_clip(dtype, device, tokenizer, hidden_size=1024, layers=23, heads=16),
        tokenizer=tokenizer, unet=with_normal_weights(dtype, lambda: UNet2DConditionModel(**bench_flops.SD21_UNET),
                                                      device),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def build_sdxl_random_pipeline(dtype, device):
    """SDXL base 1.0: its UNet, CLIP ViT-L and OpenCLIP ViT-bigG (projecting to 1280), its VAE."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = tdb.build_tiny_random_pipeline().tokenizer
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(
        vae=with_normal_weights(dtype, lambda: AutoencoderKL(**bench_flops.SD_VAE, scaling_factor=0.13025,
                                                             force_upcast=True), device),
        text_encoder=random_clip(dtype, device, tokenizer, hidden_size=768, layers=12, heads=12),
        text_encoder_2=random_clip(dtype, device, tokenizer, hidden_size=1280, layers=32, heads=20, projection=1280),
        tokenizer=tokenizer, tokenizer_2=tokenizer,
        unet=with_normal_weights(dtype, lambda: UNet2DConditionModel(**bench_flops.SDXL_UNET), device),
        scheduler=scheduler)


def build_flux_random_pipeline(dtype, device):
    """FLUX.1-dev: its transformer, CLIP ViT-L, the T5-XXL encoder (with the tiny model's character-level
    tokenizer: the ids are all that count), its 16-channel VAE."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tiny = tdb.build_tiny_random_pipeline(class_name=tdb.FLUX)
    t5 = with_normal_weights(dtype, lambda: T5EncoderModel(T5Config(
        vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
        feed_forward_proj="gated-gelu")), device)
    return FluxPipeline(
        transformer=with_normal_weights(dtype, lambda: FluxTransformer2DModel(**bench_flops.FLUX_TRANSFORMER), device),
        vae=with_normal_weights(dtype, lambda: AutoencoderKL(**bench_flops.FLUX_VAE, shift_factor=0.1159,
                                                             scaling_factor=0.3611), device),
        text_encoder=random_clip(dtype, device, tiny.tokenizer, hidden_size=768, layers=12, heads=12),
        tokenizer=tiny.tokenizer, text_encoder_2=t5, tokenizer_2=tiny.tokenizer_2,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(tiny.scheduler.config))


def random_clip(dtype, device, tokenizer, hidden_size, layers, heads, projection=None):
    """A CLIP text model of this size (with a projection: CLIPTextModelWithProjection) and the 49408-token
    vocabulary of the released ones."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    config = CLIPTextConfig(hidden_size=hidden_size, intermediate_size=4 * hidden_size, num_attention_heads=heads,
                            num_hidden_layers=layers, vocab_size=49408, projection_dim=projection or 512,
                            hidden_act="gelu", bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return with_normal_weights(dtype, lambda: (CLIPTextModelWithProjection if projection else CLIPTextModel)(config),
                               device)


def with_normal_weights(dtype, build, device="cpu", std=0.02):
    """build()'s model in dtype on device, its weights drawn from N(0, std), norm scales 1 and biases 0.
    Built without torch's default fp32 init, which takes 40 s of a 2-core CPU for SD 2.1's 1.3 billion
    parameters (most of it the first touch of 5 GB). Buffers (CLIP's position ids) are built as usual,
    except on the meta device."""
    import accelerate
    from accelerate.utils import set_module_tensor_to_device

    with accelerate.init_empty_weights(include_buffers=device == "meta"):
        model = build()
    for name, param in list(model.named_parameters()):
        value = torch.empty(param.shape, dtype=dtype, device=device)
        if param.ndim > 1:
            value.normal_(0, std)
        else:
            value.fill_(1.0 if name.endswith("weight") else 0.0)
        set_module_tensor_to_device(model, name, device, value=value, dtype=dtype)
    if hasattr(model, "tie_weights"):  # T5's encoder reads the shared embedding, which was just replaced
        model.tie_weights()
    return model


def step_flops(pipeline, resolution, cached, lora, checkpointing):
    """FLOPs of one training step's model work at batch 2 (instance + class): the denoiser's forward and
    backward (with LoRA the frozen denoiser computes activation gradients only; with gradient
    checkpointing the backward runs the checkpointed forward again), plus VAE encoding and the text
    encoder when they run every step (SD 2.1's paper preset)."""
    from torch.utils.flop_counter import FlopCounterMode
    device = "meta"  # shapes only: no arithmetic, and no memory taken from the GPU the presets train on
    denoiser = tdb.denoiser_of(pipeline).requires_grad_(not lora)
    if checkpointing:
        denoiser.enable_gradient_checkpointing()
    denoiser.train()
    counter = FlopCounterMode(display=False)
    with counter:
        out = bench_flops.model_call(denoiser, 2, resolution // 8, input_grad=lora, device=device)
        out.float().pow(2).mean().backward()
        if not cached:
            with torch.no_grad():
                pipeline.vae.encode(torch.randn(2, 3, resolution, resolution, device=device))
                pipeline.text_encoder(torch.zeros(2, 77, dtype=torch.long, device=device))
    denoiser.zero_grad(set_to_none=True)
    if checkpointing:
        denoiser.disable_gradient_checkpointing()
    denoiser.eval()
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


def run_preset(name, extra, model, resolution, steps, warmup, work):
    """train_dreambooth.py's main() on one preset, from the saved random model -> (median seconds per step,
    peak MiB). Runs in a child process (see main), where the final save is left out."""
    tdb.save_outputs = lambda *args: None  # not timed, and 34 GB for FLUX.1
    instance, classes = work / "instance", work / "class"
    output = work / f"out_{name}"
    tdb_args = ["--pretrained_model_name_or_path", str(model), "--instance_data_dir", str(instance),
                "--class_data_dir", str(classes), "--output_dir", str(output), "--resolution", str(resolution),
                "--num_class_images", str(len(list(classes.iterdir()))), "--max_train_steps", str(steps),
                "--validation_steps", "0", "--checkpointing_steps", "0", *extra]
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=list(PRESETS), default="sd21", help="the architecture (default: sd21)")
    parser.add_argument("--presets", help="comma-separated (default: all of the model's): " +
                        "; ".join(f"{model}: {', '.join(presets)}" for model, presets in PRESETS.items()))
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per preset (default: 20)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing (default: 5)")
    parser.add_argument("--peak_tflops", type=float, help="the GPU's dense bf16 peak (default: by device name)")
    parser.add_argument("--results", help="append the rows to this Markdown file (bench/RESULTS.md)")
    parser.add_argument("--tiny", action="store_true", help="the tiny model at 64 px (the default without a GPU)")
    args = parser.parse_args(argv)
    presets = args.presets.split(",") if args.presets else list(PRESETS[args.model])
    unknown = [p for p in presets if p not in PRESETS[args.model]]
    if unknown:
        parser.error(f"unknown presets {unknown} for --model {args.model}; choose from {list(PRESETS[args.model])}")

    tiny = args.tiny or not torch.cuda.is_available()
    if tiny and "lora_nf4" in presets:  # diffusers quantizes only on a GPU
        print("lora_nf4: skipped, diffusers quantizes with bitsandbytes only on a GPU")
        presets.remove("lora_nf4")
    resolution = 64 if tiny else RESOLUTIONS[args.model]
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    peak = peak_tflops(device_name, args.peak_tflops)
    if tiny:
        print(f"tiny model at 64 px: this checks the bench, it measures nothing about --model {args.model}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_dreambooth_") as tmp:
        work = Path(tmp)
        model = save_random_model(args.model, tiny, work / "model")
        (work / "nf4.json").write_text(json.dumps(NF4))
        write_random_images(work, resolution)
        pipeline = flops_pipeline(args.model, tiny)
        for name in presets:
            flags = PRESETS[args.model][name] + ([str(work / "nf4.json")] if name == "lora_nf4" else [])
            seconds, memory_mb = run_in_fresh_process(run_preset, name, flags, model, resolution, args.steps,
                                                      args.warmup, work, tiny=tiny)
            flops = step_flops(pipeline, resolution, cached="--cache_latents" in flags, lora="--lora_rank" in flags,
                               checkpointing="--gradient_checkpointing" in flags)
            share = f"{100 * flops / seconds / (peak * 1e12):.1f}" if peak else "n/a"
            rows.append((name, seconds, memory_mb / 1024, flops / 1e12, share))

    header = ("| date | device | model | preset | s/step | peak GiB | TFLOP/step | % bf16 peak |\n"
              "|---|---|---|---|---|---|---|---|")
    lines = [f"| {datetime.date.today()} | {device_name}{' (tiny, 64 px)' if tiny else ''} | {args.model} | {name} | "
             f"{s:.3f} | {gib:.2f} | {tf:.3f} | {share} |" for name, s, gib, tf, share in rows]
    append_results(args.results, f"bench_dreambooth.py --model {args.model} ({args.steps} steps, median after "
                                 f"{args.warmup})", header, lines)
    return rows


def flops_pipeline(model, tiny):
    """The model whose FLOPs are counted, on the meta device (the presets load theirs in their own processes)."""
    if tiny:
        return tdb.build_tiny_random_pipeline(class_name=TINY_FAMILIES[model]).to("meta")
    return build_random_pipeline(model, torch.float32, "meta")


def save_random_model(model, tiny, folder):
    """The model the presets train, saved as a pipeline folder -> its path: --model's architecture with random
    weights, built on the GPU in half precision (SD 2.1: fp16; SDXL, FLUX.1: bf16), or its tiny-random model."""
    if tiny:
        pipeline = tdb.build_tiny_random_pipeline(class_name=TINY_FAMILIES[model])
    else:
        pipeline = build_random_pipeline(model, torch.float16 if model == "sd21" else torch.bfloat16, "cuda")
    pipeline.save_pretrained(folder)
    del pipeline
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return folder


def write_random_images(work, resolution):
    """10 instance and 10 class pictures of random pixels, at the resolution (no crop, no class images to draw)."""
    rng = np.random.default_rng(0)
    for kind in ("instance", "class"):
        (work / kind).mkdir()
        for k in range(10):
            pixels = rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(work / kind / f"{kind}_{k}.png")


if __name__ == "__main__":
    main()
