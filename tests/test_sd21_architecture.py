"""The real SD 2.1-768 shapes (1024-wide text encoder, linear projections, per-block head dims) go
through train_dreambooth.py (one optimizer step, 8-bit AdamW) and generate.py on the CPU, at 64 px with
random weights, before they meet a user's GPU. About 100 s and 13 GB of memory on 2 cores (a step of the
865M-parameter UNet takes a minute here); each stage runs in its own process."""
import csv
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import REPO


def run(*argv):
    result = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_full_sd21_architecture_trains_a_step_and_draws_one_image(tmp_path):
    source = tmp_path / "sd21-random"
    # bench_dreambooth.py's SD 2.1-768 with random weights, built and saved in fp16 (2.6 GB); loaded back in fp32
    run("-c", "import sys, torch; sys.path.insert(0, 'bench'); import bench_dreambooth; "
              f"bench_dreambooth.build_random_pipeline('sd21', torch.float16).save_pretrained({str(source)!r})")
    rng = np.random.default_rng(0)
    for kind in ("instance", "class"):
        (tmp_path / kind).mkdir()
        for k in range(2):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / kind / f"{kind}_{k}.png")
    model = tmp_path / "model"
    out = run("train_dreambooth.py", "--pretrained_model_name_or_path", str(source), "--instance_data_dir",
              str(tmp_path / "instance"), "--class_data_dir", str(tmp_path / "class"), "--num_class_images", "2",
              "--output_dir", str(model), "--resolution", "64", "--max_train_steps", "1", "--validation_steps", "0",
              "--checkpointing_steps", "0", "--save_precision", "fp16", "--use_8bit_adam", "--cache_latents")
    assert "8-bit AdamW" in out
    with open(model / "training_log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["step"] for r in rows] == ["1"] and all(np.isfinite(float(r["loss"])) for r in rows)
    assert '"cross_attention_dim": 1024' in (model / "unet" / "config.json").read_text()
    run("generate.py", "--model", f"{model}:1", "--output_dir", str(tmp_path / "generated"), "--height", "64",
        "--width", "64", "--num_inference_steps", "2")
    with Image.open(tmp_path / "generated" / "images" / "model_00000.png") as image:
        assert image.size == (64, 64)
