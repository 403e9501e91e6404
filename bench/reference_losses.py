#!/usr/bin/env python3
"""reference_losses.py: train_dreambooth.py beside diffusers' own DreamBooth LoRA script, step by step.

In:  --family sdxl, sd3 or flux, and --reference: diffusers' examples/dreambooth/
     train_dreambooth_lora_sdxl.py, _sd3.py or _flux.py (from a diffusers checkout; nothing is downloaded)
Out: per optimizer step, the loss each script passes to accelerator.backward, and their difference;
     printed as Markdown and written to --work/losses.csv.

Both scripts train LoRA (rank 4, each script's default layers) on one tiny random pipeline folder of the
family (train_dreambooth.py's tiny-random-*, saved), on the same instance photo and class image (64 x 64,
so no crop and no resize), with prior preservation, batch 1, AdamW without 8 bits, centre crops, fp32 on
the CPU, and the reference script's defaults for the rest (SD3: logit_normal sigmas and preconditioned
outputs; FLUX: uniform sigmas, guidance 3.5, 512 T5 tokens). Each runs in its own process under the same
three pins, so that equal math gives equal losses:
  - the VAE's sample, the noise and the timesteps (or sigmas) come from one torch.Generator seeded here
    (the scripts draw them in the same order: latents, noise, timesteps);
  - each LoRA layer's initial weights come from a seed of its own, counted in creation order;
  - each loss is recorded at accelerator.backward, in full precision.
"""
import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
RESOLUTION = 64
FAMILIES = {"sdxl": "tiny-random-sdxl", "sd3": "tiny-random-sd3", "flux": "tiny-random-flux"}
COMMON = {"instance_prompt": "a sks tree", "class_prompt": "a tree", "resolution": RESOLUTION,
          "train_batch_size": 1, "max_train_steps": STEPS, "learning_rate": 1e-3, "lr_scheduler": "constant",
          "lr_warmup_steps": 0, "adam_weight_decay": 1e-2, "max_grad_norm": 1.0, "seed": 0, "num_class_images": 1}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="sdxl", help="the model family (default: sdxl)")
    parser.add_argument("--reference", required=True, help="diffusers' train_dreambooth_lora_<family>.py (required)")
    parser.add_argument("--work", help="where the model, photos, runs and losses.csv go (if not given: a temporary "
                                       "folder)")
    args = parser.parse_args()
    if not Path(args.reference).is_file():
        parser.error(f"--reference {args.reference}: no such file (diffusers' examples/dreambooth/ holds it)")
    work = Path(args.work or tempfile.mkdtemp(prefix="reference_losses_"))
    model, instance_dir, class_dir = make_inputs(work, FAMILIES[args.family])
    ours = run_pinned(work / "ours.json", [str(ROOT / "train_dreambooth.py"), *flags({
        **COMMON, "pretrained_model_name_or_path": model, "instance_data_dir": instance_dir,
        "class_data_dir": class_dir, "output_dir": work / "ours", "lora_rank": 4}),
        "--center_crop", "--no-use_8bit_adam", "--no-cache_latents", "--mixed_precision", "no",
        "--validation_steps", "0"])
    theirs = run_pinned(work / "theirs.json", [args.reference, *flags({
        **COMMON, "pretrained_model_name_or_path": model, "instance_data_dir": instance_dir,
        "class_data_dir": class_dir, "output_dir": work / "theirs", "rank": 4}),
        "--with_prior_preservation", "--center_crop", "--mixed_precision", "no"])
    rows = [{"step": step + 1, "train_dreambooth": a, "diffusers": b, "difference": a - b}
            for step, (a, b) in enumerate(zip(ours, theirs))]
    with open(work / "losses.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"| step | train_dreambooth.py | {Path(args.reference).name} | difference |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['step']} | {row['train_dreambooth']:.9f} | {row['diffusers']:.9f} | {row['difference']:.2e} |")
    print(f"wrote {work / 'losses.csv'}")
    return 0 if len(rows) == STEPS and all(abs(row["difference"]) < 1e-5 for row in rows) else 1


def make_inputs(work, tiny):
    """The family's tiny pipeline folder, one instance photo and one class image (orchard-real crops if
    ../shared has them, else fixed noise) -> their paths."""
    sys.path.insert(0, str(ROOT))
    import train_dreambooth as tdb
    model = work / tiny
    if not (model / "model_index.json").exists():
        tdb.build_tiny_random_pipeline(class_name=tdb.TINY_RANDOM_MODELS[tiny]).save_pretrained(model)
    photos = sorted((ROOT.parent / "shared" / "data" / "orchard-real" / "train" / "images").glob("*.jpg"))[:2]
    pictures = [Image.open(p).convert("RGB").resize((RESOLUTION, RESOLUTION)) for p in photos] or [
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8))
        for k in range(2)]
    for folder, picture in zip(("instance", "class"), pictures):
        (work / folder).mkdir(parents=True, exist_ok=True)
        picture.save(work / folder / f"{folder}.png")
    return model, work / "instance", work / "class"


def flags(values):
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def run_pinned(record, argv):
    """Run a training script under the pins (see the docstring) -> the losses it passed to backward."""
    subprocess.run([sys.executable, __file__, "--pinned", str(record), *argv], check=True, cwd=ROOT)
    return json.loads(record.read_text())


def pinned(record, argv):
    """In the script's own process: install the pins, run it as __main__, write its losses to record."""
    import atexit
    import runpy

    import accelerate
    import torch
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from peft.tuners.lora.layer import LoraLayer

    generator = torch.Generator().manual_seed(1234)
    torch.randn_like = lambda tensor, **kw: torch.randn(tensor.shape, generator=generator).to(tensor)
    draw_int, draw_uniform, draw_normal = torch.randint, torch.rand, torch.normal
    torch.randint = lambda low, high, size, device=None, **kw: draw_int(low, high, size, generator=generator).to(device)
    torch.rand = lambda *size, device=None, **kw: draw_uniform(
        *size, **{k: v for k, v in kw.items() if k != "generator"}, generator=generator).to(device)
    torch.normal = lambda mean, std, size, device=None, **kw: draw_normal(
        mean, std, size, generator=generator).to(device)
    DiagonalGaussianDistribution.sample = lambda self, generator=None: (
        self.mean + self.std * torch.randn_like(self.mean))
    reset, layers = LoraLayer.reset_lora_parameters, []

    def seeded_reset(self, *rest, **kw):
        with torch.random.fork_rng():
            torch.manual_seed(len(layers))
            layers.append(None)
            return reset(self, *rest, **kw)

    LoraLayer.reset_lora_parameters = seeded_reset
    losses, backward = [], accelerate.Accelerator.backward

    def recording_backward(self, loss, **kw):
        losses.append(loss.detach().double().item())
        return backward(self, loss, **kw)

    accelerate.Accelerator.backward = recording_backward
    atexit.register(lambda: Path(record).write_text(json.dumps(losses)))
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--pinned"]:
        pinned(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(main())
