#!/usr/bin/env python3
"""bench_flops.py: FLOPs of a DreamBooth step and of a generated image, for SD 2.1, SDXL and FLUX.1.

In:  nothing to download: each released architecture is built from its config on the meta device
     (shapes only, no weights, no arithmetic): SD 2.1-768's UNet and VAE, SDXL base 1.0's UNet and
     VAE, FLUX.1-dev's transformer and 16-channel VAE.
Out: a Markdown table (printed): parameters, TFLOP of one denoiser forward at the model's size, of a
     DreamBooth step (instance + class example: forward and backward of the full denoiser, latents
     cached), and of one generated image (the sampler's steps, x2 with classifier-free guidance; FLUX.1-dev
     is guidance-distilled: one forward a step; then one VAE decode). Counted by torch.utils.flop_counter.
"""
import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

# name: (build the denoiser, build the VAE, image side, latent channels, sampler steps, forwards a step)
MODELS = {
    "SD 2.1 @768": ("sd21_unet", "sd_vae", 768, 4, 50, 2),
    "SDXL @1024": ("sdxl_unet", "sd_vae", 1024, 4, 50, 2),
    "FLUX.1-dev @1024": ("flux_transformer", "flux_vae", 1024, 16, 28, 1),
}


def main():
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    print("| model | denoiser parameters | forward, 1 sample (TFLOP) | DreamBooth step, batch 2 (TFLOP) "
          "| generated image (TFLOP) |\n|---|---|---|---|---|")
    for name, (denoiser, vae, side, channels, steps, forwards) in MODELS.items():
        model = globals()[denoiser]()
        parameters = sum(p.numel() for p in model.parameters())
        forward = counted(lambda: model_call(denoiser, model, 1, side // 8, channels))
        step = counted(lambda: model_call(denoiser, model, 2, side // 8, channels).float().pow(2).mean().backward())
        decode = counted(lambda: globals()[vae]().decode(torch.zeros(1, channels, side // 8, side // 8, device="meta")))
        image = steps * forwards * forward + decode
        print(f"| {name} | {parameters / 1e9:.2f} B | {forward / 1e12:.2f} | {step / 1e12:.2f} | {image / 1e12:.1f} |")


def counted(work):
    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops()


def model_call(kind, model, batch, latent_side, channels):
    """One forward of the denoiser on meta inputs shaped as its pipeline shapes them."""
    meta = {"device": "meta"}
    latents = torch.zeros(batch, channels, latent_side, latent_side, **meta)
    timesteps = torch.zeros(batch, **meta)
    if kind == "sd21_unet":
        return model(latents, timesteps, torch.zeros(batch, 77, 1024, **meta)).sample
    if kind == "sdxl_unet":
        added = {"text_embeds": torch.zeros(batch, 1280, **meta), "time_ids": torch.zeros(batch, 6, **meta)}
        return model(latents, timesteps, torch.zeros(batch, 77, 2048, **meta), added_cond_kwargs=added).sample
    tokens = (latent_side // 2) ** 2  # FLUX packs 2 x 2 latent patches into one token
    return model(hidden_states=torch.zeros(batch, tokens, channels * 4, **meta), timestep=timesteps,
                 guidance=torch.zeros(batch, **meta), pooled_projections=torch.zeros(batch, 768, **meta),
                 encoder_hidden_states=torch.zeros(batch, 512, 4096, **meta), txt_ids=torch.zeros(512, 3, **meta),
                 img_ids=torch.zeros(tokens, 3, **meta)).sample


def on_meta(build):
    from accelerate import init_empty_weights
    with init_empty_weights(include_buffers=True):
        return build()


def sd21_unet():
    from diffusers import UNet2DConditionModel
    return on_meta(lambda: UNet2DConditionModel(
        sample_size=96, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, upcast_attention=True,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3))


def sdxl_unet():
    from diffusers import UNet2DConditionModel
    return on_meta(lambda: UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")))


def flux_transformer():
    from diffusers import FluxTransformer2DModel
    return on_meta(lambda: FluxTransformer2DModel(guidance_embeds=True))  # its defaults are FLUX.1-dev's


def sd_vae():
    from diffusers import AutoencoderKL
    return on_meta(lambda: AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4))


def flux_vae():
    from diffusers import AutoencoderKL
    return on_meta(lambda: AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16, use_quant_conv=False,
        use_post_quant_conv=False, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4))


if __name__ == "__main__":
    main()
