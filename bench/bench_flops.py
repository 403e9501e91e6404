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
        forward = counted(lambda: model_call(model, 1, side // 8))
        step = counted(lambda: model_call(model, 2, side // 8).float().pow(2).mean().backward())
        decode = counted(lambda: globals()[vae]().decode(torch.zeros(1, channels, side // 8, side // 8, device="meta")))
        image = steps * forwards * forward + decode
        print(f"| {name} | {parameters / 1e9:.2f} B | {forward / 1e12:.2f} | {step / 1e12:.2f} | {image / 1e12:.1f} |")


def counted(work):
    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops()


def model_call(model, batch, latent_side, input_grad=False, device="meta"):
    """One forward of a UNet (SD, SDXL) or a FLUX.1 transformer on zero inputs shaped as its pipeline shapes
    them, the widths read from its config; input_grad: the latents need a gradient (a frozen model's backward)."""
    config, on = model.config, {"device": device}
    timesteps = torch.zeros(batch, **on)
    if type(model).__name__ == "FluxTransformer2DModel":
        tokens, text = (latent_side // 2) ** 2, 512  # 2 x 2 latent patches a token; T5's 512 prompt tokens
        return model(hidden_states=torch.zeros(batch, tokens, config.in_channels, **on, requires_grad=input_grad),
                     timestep=timesteps, guidance=torch.zeros(batch, **on) if config.guidance_embeds else None,
                     pooled_projections=torch.zeros(batch, config.pooled_projection_dim, **on),
                     encoder_hidden_states=torch.zeros(batch, text, config.joint_attention_dim, **on),
                     txt_ids=torch.zeros(text, 3, **on), img_ids=torch.zeros(tokens, 3, **on)).sample
    latents = torch.zeros(batch, config.in_channels, latent_side, latent_side, **on, requires_grad=input_grad)
    added = None
    if config.addition_embed_type == "text_time":  # SDXL: the pooled prompt beside 6 time ids
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        added = {"text_embeds": torch.zeros(batch, pooled, **on), "time_ids": torch.zeros(batch, 6, **on)}
    return model(latents, timesteps, torch.zeros(batch, 77, config.cross_attention_dim, **on),
                 added_cond_kwargs=added).sample


def on_meta(build):
    from accelerate import init_empty_weights
    with init_empty_weights(include_buffers=True):
        return build()


# The released architectures' configs (bench_dreambooth.py builds them with random weights)
SD21_UNET = dict(sample_size=96, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
                 attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, upcast_attention=True,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SDXL_UNET = dict(sample_size=128, block_out_channels=(320, 640, 1280), cross_attention_dim=2048,
                 attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
FLUX_TRANSFORMER = dict(guidance_embeds=True)  # diffusers' defaults are FLUX.1-dev's
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
FLUX_VAE = dict(SD_VAE, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)


def sd21_unet():
    from diffusers import UNet2DConditionModel
    return on_meta(lambda: UNet2DConditionModel(**SD21_UNET))


def sdxl_unet():
    from diffusers import UNet2DConditionModel
    return on_meta(lambda: UNet2DConditionModel(**SDXL_UNET))


def flux_transformer():
    from diffusers import FluxTransformer2DModel
    return on_meta(lambda: FluxTransformer2DModel(**FLUX_TRANSFORMER))


def sd_vae():
    from diffusers import AutoencoderKL
    return on_meta(lambda: AutoencoderKL(**SD_VAE))


def flux_vae():
    from diffusers import AutoencoderKL
    return on_meta(lambda: AutoencoderKL(**FLUX_VAE))


if __name__ == "__main__":
    main()
