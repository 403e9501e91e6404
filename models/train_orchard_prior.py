#!/usr/bin/env python3
"""train_orchard_prior.py: the recipe of models/orchard-prior, the demo's base text-to-image model.

In:  nothing: procedural orchard photos from prepare_data.py --source synthetic (trees with green
     apples, red apples and none; another seed than the demo's photos), all captioned "a tree".
Out: --output_dir (default models/orchard-prior): a diffusers StableDiffusionPipeline folder
     (UNet, VAE, CLIP text encoder with a byte-level tokenizer, DDIM scheduler; fp32 safetensors)
     trained from scratch on the CPU, recipe.json (these flags, the photos, seconds per part, the
     machine) and contact_sheet.png (what it draws for "a tree").

Two parts, as Stable Diffusion was made: a small KL autoencoder (128 px -> 4 x 32 x 32 latents)
on random crops, then a UNet on those latents with the epsilon objective, min-SNR weighting, an
EMA of its weights (what is saved), and one caption in ten dropped for classifier-free guidance.
The text encoder stays as initialised: one caption needs no learned language, and DreamBooth's
"a sks tree" still differs from "a tree" through it.
"""
import argparse
import copy
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from train_dreambooth import clip_byte_vocab  # noqa: E402  (the tokenizer tiny-random uses)

PROMPT = "a tree"
BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output_dir", default=str(REPO / "models" / "orchard-prior"))
    parser.add_argument("--num_photos", type=int, default=480, help="procedural photos to train on")
    parser.add_argument("--bare_share", type=float, default=1 / 3, help="share of trees without apples")
    parser.add_argument("--apple_scale", type=float, default=2.5, help="as the demo's photos")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--photo_seed", type=int, default=1, help="the demo's photos use seed 0")
    parser.add_argument("--vae_steps", type=int, default=800)
    parser.add_argument("--vae_batch", type=int, default=16)
    parser.add_argument("--vae_crop", type=int, default=64, help="the autoencoder trains on random crops")
    parser.add_argument("--unet_steps", type=int, default=1500)
    parser.add_argument("--unet_batch", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--ema_decay", type=float, default=0.995)
    parser.add_argument("--snr_gamma", type=float, default=5.0)
    parser.add_argument("--caption_dropout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contact_sheet_images", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    return parser.parse_args(argv)


def procedural_photos(folder, args):
    """prepare_data.py's synthetic orchard photos at --resolution -> float tensor N x 3 x H x W in [-1, 1]."""
    subprocess.run([sys.executable, str(REPO / "prepare_data.py"), "--source", "synthetic",
                    "--num_images", str(args.num_photos), "--bare_share", str(args.bare_share),
                    "--apple_scale", str(args.apple_scale), "--resolution", str(args.resolution),
                    "--seed", str(args.photo_seed), "--num_instances", "1", "--output_dir", str(folder)], check=True)
    files = sorted(Path(folder, "real").glob("*/images/*.png"))
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


def build_models(seed):
    """The untrained UNet, autoencoder, text encoder and tokenizer."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    vocab = clip_byte_vocab()
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab))
        (Path(folder) / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(str(Path(folder) / "vocab.json"), str(Path(folder) / "merges.txt"),
                                  model_max_length=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"], hidden_size=32, intermediate_size=64, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=len(vocab), max_position_embeddings=16, projection_dim=32))
    vae = AutoencoderKL(block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8, latent_channels=4,
                        sample_size=128, down_block_types=["DownEncoderBlock2D"] * 3,
                        up_block_types=["UpDecoderBlock2D"] * 3)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, block_out_channels=(32, 64, 128), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, use_linear_projection=True, norm_num_groups=16)
    return unet, vae, text_encoder, tokenizer


def random_crops(images, size, count, generator):
    """count random size x size crops, each flipped left-right half the time."""
    index = torch.randint(len(images), (count,), generator=generator)
    top, left = (torch.randint(images.shape[-1] - size + 1, (count,), generator=generator) for _ in range(2))
    crops = torch.stack([images[i, :, t:t + size, l:l + size] for i, t, l in zip(index, top, left)])
    flip = torch.rand(count, generator=generator) < 0.5
    crops[flip] = crops[flip].flip(-1)
    return crops


def train_autoencoder(vae, images, args, generator):
    """L1 reconstruction plus a light KL term on random crops; returns the loss of the last steps."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.learning_rate, total_steps=args.vae_steps)
    losses = []
    for _ in tqdm(range(args.vae_steps), desc="autoencoder", unit="step"):
        batch = random_crops(images, args.vae_crop, args.vae_batch, generator)
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        loss = F.l1_loss(reconstruction, batch) + 1e-6 * posterior.kl().mean()
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return float(np.mean(losses[-50:]))


@torch.no_grad()
def encode_latents(vae, images):
    """The photos and their mirror images as latent means, scaled to unit standard deviation."""
    both = torch.cat([images, images.flip(-1)])
    latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in both.split(32)])
    vae.register_to_config(scaling_factor=float(1 / latents.std()))
    return latents * vae.config.scaling_factor


def min_snr_weights(scheduler, timesteps, gamma):
    """min(SNR, gamma) / SNR per timestep: the epsilon loss weights of Hang et al. (2023)."""
    alphas = scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    return torch.clamp(snr, max=gamma) / snr


def train_unet(unet, latents, prompt_embeds, empty_embeds, args, generator):
    """Epsilon prediction with min-SNR weights and caption dropout -> (the EMA UNet, the loss of the last steps)."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(**BETAS, prediction_type="epsilon")
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.learning_rate, total_steps=args.unet_steps,
                                                   pct_start=0.05)
    losses = []
    for _ in tqdm(range(args.unet_steps), desc="unet", unit="step"):
        batch = latents[torch.randint(len(latents), (args.unet_batch,), generator=generator)]
        noise = torch.randn(batch.shape, generator=generator)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (len(batch),), generator=generator)
        dropped = torch.rand(len(batch), generator=generator) < args.caption_dropout
        context = torch.where(dropped[:, None, None], empty_embeds, prompt_embeds)
        prediction = unet(scheduler.add_noise(batch, noise, timesteps), timesteps, context).sample
        per_sample = F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * min_snr_weights(scheduler, timesteps, args.snr_gamma)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        with torch.no_grad():
            for average, live in zip(ema.parameters(), unet.parameters()):
                average.lerp_(live, 1 - args.ema_decay)
        losses.append(loss.item())
    return ema, float(np.mean(losses[-100:]))


@torch.no_grad()
def prompt_embedding(text_encoder, tokenizer, prompt):
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def contact_sheet(pipeline, path, count):
    """count images of PROMPT (seeds 0..count-1), eight to a row."""
    images = [pipeline(PROMPT, num_inference_steps=25, guidance_scale=3.0,
                       generator=torch.Generator().manual_seed(seed)).images[0] for seed in range(count)]
    side, columns = images[0].width, min(8, count)
    sheet = Image.new("RGB", (columns * side, -(-count // columns) * side), "white")
    for index, image in enumerate(images):
        sheet.paste(image, ((index % columns) * side, (index // columns) * side))
    sheet.save(path)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    seconds, started = {}, time.time()
    with tempfile.TemporaryDirectory(prefix="orchard_prior_") as folder:
        images = procedural_photos(folder, args)
    seconds["photos"] = round(time.time() - started, 1)
    unet, vae, text_encoder, tokenizer = build_models(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    started = time.time()
    vae_loss = train_autoencoder(vae, images, args, generator)
    vae.eval().requires_grad_(False)
    latents = encode_latents(vae, images)
    seconds["autoencoder"] = round(time.time() - started, 1)

    started = time.time()
    prompt_embeds = prompt_embedding(text_encoder, tokenizer, PROMPT)
    empty_embeds = prompt_embedding(text_encoder, tokenizer, "")
    ema, unet_loss = train_unet(unet, latents, prompt_embeds, empty_embeds, args, generator)
    seconds["unet"] = round(time.time() - started, 1)

    scheduler = DDIMScheduler(**BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type="epsilon")
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=ema,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    out = Path(args.output_dir)
    pipeline.save_pretrained(out, safe_serialization=True)
    contact_sheet(pipeline, out / "contact_sheet.png", args.contact_sheet_images)
    machine = {"processor": platform.processor() or platform.machine(), "threads": args.threads,
               "torch": torch.__version__}
    (out / "recipe.json").write_text(json.dumps({"arguments": vars(args), "photos": len(images),
                                                 "seconds": seconds, "autoencoder_l1": vae_loss,
                                                 "unet_loss": unet_loss, "machine": machine}, indent=2))
    print(f"wrote {out}: {seconds}, autoencoder L1 {vae_loss:.4f}, UNet loss {unet_loss:.4f}")


if __name__ == "__main__":
    main()
