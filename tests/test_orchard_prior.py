"""models/orchard-prior, the demo's base model: a small diffusers folder that loads the real way and
draws orchard canopies with apples on them, and the recipe that made it."""
import json
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

import generate as gen
import train_dreambooth as tdb
from conftest import REPO

PRIOR = REPO / "models" / "orchard-prior"


def test_the_prior_is_a_small_fp32_pipeline_folder_that_diffusers_loads():
    files = [p for p in PRIOR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20_000_000
    for part in ("unet", "vae"):
        assert (PRIOR / part / "diffusion_pytorch_model.safetensors").is_file()
    assert (PRIOR / "text_encoder" / "model.safetensors").is_file()
    pipeline = tdb.load_pipeline(str(PRIOR))
    assert {p.dtype for m in (pipeline.unet, pipeline.vae, pipeline.text_encoder) for p in m.parameters()} == \
        {torch.float32}
    assert pipeline.unet.config.sample_size * pipeline.vae_scale_factor == 128
    recipe = json.loads((PRIOR / "recipe.json").read_text())
    assert recipe["seconds"]["unet"] > 0 and recipe["photos"] == recipe["arguments"]["num_photos"]


def colour_shares(image):
    """Shares of leaf-green and of red-apple pixels in an image."""
    hsv = np.asarray(image.convert("HSV")).astype(float)
    hue, saturation = hsv[..., 0] * 360 / 255, hsv[..., 1] / 255
    green = (hue > 60) & (hue < 160) & (saturation > 0.3)
    red = ((hue < 20) | (hue > 330)) & (saturation > 0.5)
    return green.mean(), red.mean()


def test_the_prior_draws_canopies_with_apples(tmp_path):
    assert gen.main(["--model", f"{PRIOR}:8", "--prompt", "a tree", "--output_dir", str(tmp_path), "--height", "128",
                     "--width", "128", "--num_inference_steps", "25"]) == 0
    shares = np.array([colour_shares(Image.open(p)) for p in sorted((tmp_path / "images").glob("*.png"))])
    assert len(shares) == 8
    green, red = shares.T
    assert np.median(green) > 0.5, shares  # a canopy of leaves, as the procedural photos' crops
    assert (red > 0.02).sum() >= 2, shares  # some carry red apples (half of the photos with apples are red)


def test_the_recipe_makes_a_pipeline_folder_that_loads(tmp_path):
    out = tmp_path / "prior"
    result = subprocess.run([sys.executable, str(REPO / "models" / "train_orchard_prior.py"), "--num_photos", "6",
                             "--vae_steps", "2", "--unet_steps", "2", "--contact_sheet_images", "2",
                             "--output_dir", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    pipeline = tdb.load_pipeline(str(out))
    assert pipeline.vae.config.scaling_factor != 0.18215  # measured on the photos' latents, not SD's value
    assert Image.open(out / "contact_sheet.png").size == (2 * 128, 128)
