"""SDXL, SD3 and FLUX.1 through train_dreambooth.py and generate.py, on tiny random models built from configs."""
import csv
import json
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

import generate as gen
import train_dreambooth as tdb
from conftest import REPO, stages_run

FAMILIES = {"tiny-random-sdxl": tdb.SDXL, "tiny-random-sd3": tdb.SD3, "tiny-random-flux": tdb.FLUX}


def tiny(name):
    return ["--pretrained_model_name_or_path", name, "--resolution", "64", "--num_class_images", "2",
            "--sample_batch_size", "2", "--validation_steps", "0", "--seed", "0", "--max_train_steps", "2",
            "--learning_rate", "1e-3", "--no-use_8bit_adam"]


@pytest.fixture(scope="module")
def instance_dir(tmp_path_factory):
    """Three real orchard photos (read from ../shared), 64 x 48 px, so that SDXL's time ids carry a crop."""
    from conftest import shared_path
    folder = tmp_path_factory.mktemp("instances")
    for path in sorted((shared_path("data/orchard-real") / "train" / "images").glob("*.jpg"))[:3]:
        Image.open(path).convert("RGB").resize((64, 48)).save(folder / f"{path.stem}.png")
    return folder


def log_rows(output_dir):
    with open(output_dir / "training_log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def text_run(pipeline):
    """A Run holding just what prompt_conditions and added_conditions read."""
    run = tdb.Run(type("Args", (), {"resolution": 64, "max_sequence_length": 16})(),
                  type("Cpu", (), {"device": torch.device("cpu")})(), "no", torch.float32, [], [], pipeline,
                  pipeline.tokenizer, pipeline.vae, pipeline.text_encoder, tdb.denoiser_of(pipeline), None)
    run.text_pipeline = pipeline
    return run


def test_sdxl_prompts_are_both_encoders_next_to_last_states_and_the_second_ones_pooled_projection():
    pipeline = tdb.build_tiny_random_pipeline(class_name=tdb.SDXL)
    prompts = ["a sks tree", "a tree"]
    with torch.no_grad():
        states, pooled = tdb.prompt_conditions(text_run(pipeline), prompts)
        first = pipeline.text_encoder(tdb.token_ids(pipeline.tokenizer, prompts, "cpu"), output_hidden_states=True)
        second = pipeline.text_encoder_2(tdb.token_ids(pipeline.tokenizer_2, prompts, "cpu"), output_hidden_states=True)
    assert states.shape == (2, 77, 64) and pooled.shape == (2, 32)
    torch.testing.assert_close(states, torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1))
    torch.testing.assert_close(pooled, second.text_embeds)
    # the time ids: original size, crop top-left, target size, as the pipeline's _get_add_time_ids lays them out
    added = tdb.added_conditions(text_run(pipeline), pooled, torch.tensor([[48, 64, 0, 0], [96, 128, 8, 16]]))
    expected = pipeline._get_add_time_ids((48, 64), (0, 0), (64, 64), torch.float32, 32)
    torch.testing.assert_close(added["time_ids"][0:1], expected)
    assert added["time_ids"][1].tolist() == [96, 128, 8, 16, 64, 64]


def test_flux_prompts_are_t5_states_and_clips_pooled_output():
    pipeline = tdb.build_tiny_random_pipeline(class_name=tdb.FLUX)
    with torch.no_grad():
        states, pooled = tdb.prompt_conditions(text_run(pipeline), ["a sks tree"])
        t5_ids = pipeline.tokenizer_2(["a sks tree"], padding="max_length", max_length=16, truncation=True,
                                      return_tensors="pt").input_ids
        clip = pipeline.text_encoder(tdb.token_ids(pipeline.tokenizer, ["a sks tree"], "cpu"))
    assert states.shape == (1, 16, 64) and pooled.shape == (1, 32)   # --max_sequence_length T5 tokens
    torch.testing.assert_close(states, pipeline.text_encoder_2(t5_ids)[0])
    torch.testing.assert_close(pooled, clip.pooler_output)


def test_flow_matching_noise_target_and_weights_equal_the_formula(monkeypatch):
    """FLUX's loss at sigma: noisy = (1 - sigma) x + sigma n into the transformer, target n - x; with
    --precondition_outputs (SD3's default) the prediction becomes noisy - sigma v and the target x."""
    pipeline = tdb.build_tiny_random_pipeline(class_name=tdb.FLUX)
    from diffusers import FlowMatchEulerDiscreteScheduler
    run = text_run(pipeline)
    run.noise_scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler.config)
    seen = {}

    def velocity(run, noisy, timesteps, states, pooled):
        seen.update(noisy=noisy, timesteps=timesteps)
        return torch.full_like(noisy, 0.5)

    monkeypatch.setattr(tdb, "transformer_prediction", velocity)
    generator = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    for precondition in (False, True):
        run.args = type("Args", (), {"weighting_scheme": "none", "logit_mean": 0.0, "logit_std": 1.0,
                                     "mode_scale": 1.29, "precondition_outputs": precondition,
                                     "prior_preservation": True, "prior_loss_weight": 1.0})()
        torch.manual_seed(3)
        loss, instance, prior = tdb.flow_matching_loss(run, latents, None, None, noise)
        torch.manual_seed(3)
        sigmas = run.noise_scheduler.sigmas[(torch.rand(2) * 1000).long()].view(-1, 1, 1, 1)
        torch.testing.assert_close(seen["noisy"], (1 - sigmas) * latents + sigmas * noise)
        torch.testing.assert_close(seen["timesteps"], sigmas.flatten() * 1000)
        prediction, target = (seen["noisy"] - 0.5 * sigmas, latents) if precondition else (0.5, noise - latents)
        errors = ((prediction - target) ** 2).mean(dim=(1, 2, 3))
        torch.testing.assert_close((instance, prior, loss), (errors[0], errors[1], errors.sum()))


@pytest.mark.parametrize("name, how", [("tiny-random", ["--sample_batch_size", "1"]),  # SD 1/2, two batches
                                       ("tiny-random-sdxl", ["--lora_rank", "4"]),
                                       ("tiny-random-sdxl", ["--lora_rank", "0", "--cache_latents"]),
                                       ("tiny-random-sdxl", ["--no-cache_latents"]),
                                       ("tiny-random-sd3", ["--sample_batch_size", "1"]),
                                       ("tiny-random-sd3", ["--lora_rank", "0"]),
                                       ("tiny-random-flux", ["--no-cache_latents"]),
                                       ("tiny-random-flux", ["--lora_rank", "0"])])
def test_two_dreambooth_steps_with_prior_preservation_save_the_familys_pipeline(instance_dir, tmp_path, name, how):
    """Each family's run, and the class images drawn in one batch or in two."""
    import diffusers
    out = tmp_path / "out"
    assert tdb.main([*tiny(name), *how, "--instance_data_dir", str(instance_dir), "--class_data_dir",
                     str(tmp_path / "class"), "--output_dir", str(out)]) == 0
    rows = log_rows(out)
    assert [row["step"] for row in rows] == ["1", "2"]
    assert all(np.isfinite(float(row["loss"])) and row["prior_loss"] for row in rows)
    assert len(list((tmp_path / "class").glob("class_*.png"))) == 2
    family = tdb.TINY_RANDOM_MODELS[name]
    saved = getattr(diffusers, family).from_pretrained(out)
    base = tdb.build_tiny_random_pipeline(class_name=family)
    ours, theirs = tdb.denoiser_of(saved).state_dict(), tdb.denoiser_of(base).state_dict()
    changed = [k for k, v in ours.items() if not torch.equal(v, theirs[k])]
    rank = int(how[how.index("--lora_rank") + 1]) if "--lora_rank" in how else tdb.FAMILY_DEFAULTS[family]["lora_rank"]
    lora = rank > 0                                              # LoRA is the larger families' default
    assert changed and (all(any(t in k for t in tdb.LORA_TARGETS[family]) for k in changed) if lora else
                        len(changed) > len(ours) // 2)
    assert (out / "pytorch_lora_weights.safetensors").exists() == lora
    for part in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):  # frozen: saved as loaded
        if getattr(base, part, None) is not None:
            mine, loaded = getattr(saved, part).state_dict(), getattr(base, part).state_dict()
            assert all(torch.equal(mine[k], loaded[k]) for k in loaded), part


@pytest.mark.parametrize("name", FAMILIES)
def test_the_lora_loads_into_the_familys_pipeline_and_changes_its_image(instance_dir, tmp_path, name):
    out = tmp_path / "lora"
    assert tdb.main([*tiny(name), "--learning_rate", "5e-2", "--instance_data_dir", str(instance_dir),
                     "--class_data_dir", str(tmp_path / "class"), "--output_dir", str(out)]) == 0

    def draw(pipeline):
        return pipeline("a sks tree", height=64, width=64, num_inference_steps=2, output_type="np",
                        generator=torch.Generator().manual_seed(0)).images[0]

    pipeline = tdb.build_tiny_random_pipeline(class_name=FAMILIES[name])
    pipeline.set_progress_bar_config(disable=True)
    before = draw(pipeline)
    pipeline.load_lora_weights(out / "pytorch_lora_weights.safetensors")
    with_lora = draw(pipeline)
    assert np.abs(with_lora - before).max() > 1e-3
    fused = draw(tdb.load_pipeline(str(out)))  # the saved pipeline has the same LoRA fused in
    np.testing.assert_allclose(fused, with_lora, atol=2e-3)


@pytest.mark.parametrize("name", FAMILIES)
def test_generate_draws_from_the_familys_folder_at_its_own_settings(tmp_path, name):
    model = tmp_path / name
    tdb.build_tiny_random_pipeline(class_name=FAMILIES[name]).save_pretrained(model)
    own_guidance = {"tiny-random-sdxl": 5.0, "tiny-random-sd3": 7.0, "tiny-random-flux": 3.5}[name]
    assert gen.drawing_settings(str(model), None, None, None) == (1024, 1024, own_guidance)
    assert gen.drawing_settings(str(model), 64, None, 2.0) == (64, 1024, 2.0)
    if name == "tiny-random-flux":
        with pytest.raises(gen.InputError, match="--negative_prompt: .* is a FLUX.1 model"):
            gen.drawing_settings(str(model), None, None, None, "blurry")
    assert gen.main(["--model", f"{model}:2", "--output_dir", str(tmp_path / "out"), "--height", "64", "--width",
                     "64", "--num_inference_steps", "2"]) == 0
    images = sorted((tmp_path / "out" / "images").glob("*.png"))
    assert [Image.open(p).size for p in images] == [(64, 64), (64, 64)]
    assert not np.array_equal(np.asarray(Image.open(images[0])), np.asarray(Image.open(images[1])))
    with open(tmp_path / "out" / "manifest.csv", newline="") as handle:
        assert {float(row["guidance"]) for row in csv.DictReader(handle)} == {own_guidance}


def test_a_flux_without_a_guidance_input_draws_and_records_no_guidance(tmp_path):
    """FLUX.1-schnell's transformer has no guidance input: its pipeline would leave a --guidance_scale out."""
    from diffusers import FluxTransformer2DModel
    model = tmp_path / "schnell"
    pipeline = tdb.build_tiny_random_pipeline(class_name=tdb.FLUX)
    pipeline.register_modules(transformer=FluxTransformer2DModel(**{**pipeline.transformer.config,
                                                                    "guidance_embeds": False}))
    pipeline.save_pretrained(model)
    assert gen.drawing_settings(str(model), 64, 64, None) == (64, 64, None)
    with pytest.raises(gen.InputError, match="--guidance_scale: .* a FLUX.1 model without a guidance input"):
        gen.drawing_settings(str(model), None, None, 3.5)
    assert gen.main(["--model", f"{model}:1", "--output_dir", str(tmp_path / "out"), "--height", "64", "--width",
                     "64", "--num_inference_steps", "2"]) == 0
    with open(tmp_path / "out" / "manifest.csv", newline="") as handle:
        assert [row["guidance"] for row in csv.DictReader(handle)] == [""]
    assert gen.main(["--model", f"{model}:1", "--output_dir", str(tmp_path / "out"), "--height", "64", "--width",
                     "64", "--num_inference_steps", "2"]) == 0  # a re-run finds the image done


def test_a_family_not_taken_and_flags_a_family_has_no_use_for_are_one_line(instance_dir, tmp_path, capsys):
    model = tmp_path / "kandinsky"
    model.mkdir()
    (model / "model_index.json").write_text('{"_class_name": "KandinskyV22Pipeline"}')
    assert tdb.main(["--pretrained_model_name_or_path", str(model), "--check_model"]) == 2
    assert "a KandinskyV22Pipeline model; these scripts take StableDiffusionPipeline, " in capsys.readouterr().err
    for name, class_name in FAMILIES.items():
        assert tdb.main(["--pretrained_model_name_or_path", name, "--check_model"]) == 0
        assert f"found ({name}), a {class_name}" in capsys.readouterr().out
    for name, flags, message in [
            ("tiny-random-sdxl", ["--train_text_encoder"], "--train_text_encoder: the text encoders of a "
                                                           "StableDiffusionXLPipeline stay frozen"),
            ("tiny-random-sdxl", ["--weighting_scheme", "mode"], "--weighting_scheme: not used in training a "
                                                                 "StableDiffusionXLPipeline"),
            ("tiny-random-sd3", ["--guidance_scale", "3", "--snr_gamma", "5"],
             "--snr_gamma, --guidance_scale: not used"),
            ("tiny-random", ["--max_sequence_length", "77"], "--max_sequence_length: not used")]:
        assert tdb.main([*tiny(name), *flags, "--instance_data_dir", str(instance_dir), "--class_data_dir",
                         str(tmp_path / "class"), "--output_dir", str(tmp_path / "out")]) == 2
        assert message in capsys.readouterr().err


def test_run_all_chains_a_flow_matching_model_into_table1(tmp_path):
    name, work = "tiny-random-flux", tmp_path / "work"
    result = subprocess.run(["bash", str(REPO / "run_all.sh"), "--demo", "--model", name, "--epochs", "1",
                             "--datasets", "genfusion", "--work", str(work)], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert stages_run(result.stdout)[:4] == ["prepare", "dreambooth_green", "dreambooth_red", "generate"]
    for group in ("green", "red"):
        index = json.loads((work / "models" / group / "model_index.json").read_text())
        assert index["_class_name"] == FAMILIES[name]
    images = sorted((work / "generated" / "images").glob("*.png"))
    assert len(images) == 26 and {Image.open(p).size for p in images} == {(64, 64)}
    with open(work / "results" / "table1.csv", newline="") as handle:
        assert {row["dataset"] for row in csv.DictReader(handle)} == {"baseline", "genfusion"}


def test_on_a_gpu_the_larger_families_train_in_bf16_and_sd_in_the_papers_fp16(monkeypatch):
    args = tdb.build_parser().parse_args(["--pretrained_model_name_or_path", "tiny-random-flux"])
    assert tdb.training_precision(args) == "no"                           # this CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)          # what a GPU machine answers
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert tdb.training_precision(args) == "bf16"
    args.pretrained_model_name_or_path = "tiny-random"
    assert tdb.training_precision(args) == "fp16"
    args.mixed_precision = "bf16"
    assert tdb.training_precision(args) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)   # a V100 or T4
    args.pretrained_model_name_or_path, args.mixed_precision = "tiny-random-sdxl", None
    assert tdb.training_precision(args) == "fp16"


@pytest.mark.parametrize("name, rank", [("tiny-random-flux", "4"), ("tiny-random-sd3", "0"), ("tiny-random-sdxl", "4")])
def test_a_resumed_run_equals_an_unbroken_one(instance_dir, tmp_path, name, rank):
    import diffusers
    common = [*tiny(name), "--lora_rank", rank, "--instance_data_dir", str(instance_dir), "--class_data_dir",
              str(tmp_path / "class")]
    assert tdb.main([*common, "--output_dir", str(tmp_path / "unbroken"), "--max_train_steps", "3"]) == 0
    assert tdb.main([*common, "--output_dir", str(tmp_path / "broken"), "--checkpointing_steps", "1"]) == 0
    checkpoint = tmp_path / "broken" / "checkpoint-1"
    if rank == "0":  # the whole transformer, as a folder diffusers loads
        assert (checkpoint / "transformer" / "config.json").exists()
    else:            # the LoRA file, which the family's pipeline loads
        pipeline = tdb.build_tiny_random_pipeline(class_name=FAMILIES[name])
        pipeline.load_lora_weights(checkpoint)
    assert tdb.main([*common, "--output_dir", str(tmp_path / "broken"), "--max_train_steps", "3",
                     "--resume_from_checkpoint", "latest"]) == 0
    assert [r["loss"] for r in log_rows(tmp_path / "broken")] == [r["loss"] for r in log_rows(tmp_path / "unbroken")]
    resumed, unbroken = (tdb.denoiser_of(getattr(diffusers, FAMILIES[name]).from_pretrained(tmp_path / run))
                         for run in ("broken", "unbroken"))
    assert all(torch.equal(v, unbroken.state_dict()[k]) for k, v in resumed.state_dict().items())


@pytest.fixture
def gpu_check_lifted(monkeypatch):
    """diffusers' bitsandbytes loader refuses to quantize without a GPU ("No GPU found"), though bitsandbytes
    computes its 4- and 8-bit layers in training on the CPU as well: only that check is lifted here."""
    from diffusers.quantizers.bitsandbytes import bnb_quantizer
    for quantizer in (bnb_quantizer.BnB4BitDiffusersQuantizer, bnb_quantizer.BnB8BitDiffusersQuantizer):
        monkeypatch.setattr(quantizer, "validate_environment", lambda self, *args, **kwargs: None)


@pytest.mark.parametrize("settings", [{"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, {"load_in_8bit": True}])
def test_lora_on_a_quantized_flux_base_saves_it_fused_into_the_unquantized_base(instance_dir, tmp_path, settings,
                                                                                gpu_check_lifted):
    from diffusers import FluxPipeline
    model, config = tmp_path / "flux", tmp_path / "bnb.json"
    tdb.build_tiny_random_pipeline(class_name=tdb.FLUX).save_pretrained(model)
    config.write_text(json.dumps(settings))
    common = [*tiny(str(model)), "--instance_data_dir", str(instance_dir), "--class_data_dir", str(tmp_path / "class")]
    assert tdb.main([*common, "--output_dir", str(tmp_path / "plain")]) == 0  # (it draws the class images)
    assert tdb.main([*common, "--output_dir", str(tmp_path / "quantized"), "--bnb_quantization_config_path",
                     str(config)]) == 0
    plain, quantized = ([float(r["loss"]) for r in log_rows(tmp_path / run)] for run in ("plain", "quantized"))
    # the same batches, noise and LoRA start: only the base's rounding to 4 or 8 bits tells the losses apart
    assert all(0 < abs(q - p) < 0.02 * p for q, p in zip(quantized, plain)), (quantized, plain)
    saved = FluxPipeline.from_pretrained(tmp_path / "quantized")
    assert "quantization_config" not in saved.transformer.config
    expected = FluxPipeline.from_pretrained(model)
    expected.load_lora_weights(tmp_path / "quantized" / "pytorch_lora_weights.safetensors")
    expected.fuse_lora()
    expected.unload_lora_weights()
    base, theirs = FluxPipeline.from_pretrained(model).transformer.state_dict(), expected.transformer.state_dict()
    for key, value in saved.transformer.state_dict().items():
        torch.testing.assert_close(value, theirs[key], rtol=0, atol=1e-6)
    assert not torch.equal(saved.transformer.state_dict()["transformer_blocks.0.attn.to_q.weight"],
                           base["transformer_blocks.0.attn.to_q.weight"])
    if "load_in_8bit" in settings:  # (NF4 draws on an AVX512-BF16 CPU, as this one, only with layers 64 wide)
        assert tdb.main([*common[:-1], str(tmp_path / "class_8bit"), "--output_dir", str(tmp_path / "drawn"),
                         "--bnb_quantization_config_path", str(config)]) == 0
        for plain_image in sorted((tmp_path / "class").glob("class_*.png")):  # drawn by the quantized transformer
            drawn = np.asarray(Image.open(tmp_path / "class_8bit" / plain_image.name), dtype=float)
            assert 0 < np.abs(drawn - np.asarray(Image.open(plain_image), dtype=float)).mean() < 2


def test_generate_draws_from_a_quantized_flux(tmp_path, gpu_check_lifted, capsys):
    """8 bits: on an AVX512-BF16 CPU, as this one, bitsandbytes draws NF4 only with layers 64 wide."""
    model, config = tmp_path / "flux", tmp_path / "bnb.json"
    tdb.build_tiny_random_pipeline(class_name=tdb.FLUX).save_pretrained(model)
    config.write_text('{"load_in_8bit": true}')
    common = ["--model", f"{model}:2", "--height", "64", "--width", "64", "--num_inference_steps", "2"]
    assert gen.main([*common, "--output_dir", str(tmp_path / "plain")]) == 0
    assert gen.main([*common, "--output_dir", str(tmp_path / "quantized"), "--bnb_quantization_config_path",
                     str(config)]) == 0
    for name in ("flux_00000.png", "flux_00001.png"):
        plain, quantized = (np.asarray(Image.open(tmp_path / run / "images" / name), dtype=float)
                            for run in ("plain", "quantized"))
        assert 0 < np.abs(quantized - plain).mean() < 2  # the same noise through a transformer rounded to 8 bits
    config.write_text('{"load_in_8bit": 1, "nf4": true}')
    assert gen.main([*common, "--output_dir", str(tmp_path / "bad"), "--bnb_quantization_config_path",
                     str(config)]) == 2
    assert "bnb.json: nf4: not BitsAndBytesConfig settings" in capsys.readouterr().err


def test_on_a_gpu_generate_draws_the_larger_families_in_bf16_and_sd_in_fp16(tmp_path, monkeypatch):
    for name in ("tiny-random", "tiny-random-flux"):
        tdb.build_tiny_random_pipeline(class_name=tdb.TINY_RANDOM_MODELS[name]).save_pretrained(tmp_path / name)
    assert gen.drawing_precision(str(tmp_path / "tiny-random-flux"), None) == "no"   # this CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)                    # what a GPU machine answers
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert gen.drawing_precision(str(tmp_path / "tiny-random-flux"), None) == "bf16"
    assert gen.drawing_precision(str(tmp_path / "tiny-random"), None) == "fp16"
    assert gen.drawing_precision(str(tmp_path / "tiny-random"), "bf16") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)              # a V100 or T4
    assert gen.drawing_precision(str(tmp_path / "tiny-random-flux"), None) == "fp16"


def test_a_quantized_base_is_refused_in_one_line_where_it_does_not_apply(instance_dir, tmp_path, capsys):
    config = tmp_path / "bnb.json"
    model = tmp_path / "flux"
    tdb.build_tiny_random_pipeline(class_name=tdb.FLUX).save_pretrained(model)
    common = ["--instance_data_dir", str(instance_dir), "--class_data_dir", str(tmp_path / "class"), "--output_dir",
              str(tmp_path / "out"), "--bnb_quantization_config_path", str(config)]
    for name, flags, contents, message in [
            ("tiny-random", [], '{"load_in_4bit": true}', "--bnb_quantization_config_path: quantizes the frozen base "
                                                            "of a LoRA run of an SDXL, SD3 or FLUX.1 model"),
            (str(model), ["--lora_rank", "0"], '{"load_in_4bit": true}', "not a full fine-tune"),
            (str(model), [], '{"load_in_4bit": tru', "bnb.json: not a readable JSON file"),
            (str(model), [], '{"bnb_4bit_quant_type": "nf4"}', 'expected an object with "load_in_4bit": true'),
            (str(model), [], '{"load_in_4bit": true, "nf4": 1}', "bnb.json: nf4: not BitsAndBytesConfig settings"),
            (str(model), [], '{"load_in_4bit": true}', "could not load the transformer of "
                                                       f"{str(model)!r} quantized: No GPU found")]:  # this CPU
        config.write_text(contents)
        assert tdb.main([*tiny(name), *flags, *common]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "model_index.json").exists()
    config.write_text('{"load_in_4bit": true, "nf4": 1}')  # generate.py reads it before it makes any folder
    assert gen.main(["--model", f"{model}:1", "--output_dir", str(tmp_path / "generated"),
                     "--bnb_quantization_config_path", str(config)]) == 2
    assert "bnb.json: nf4: not BitsAndBytesConfig settings" in capsys.readouterr().err
    assert not (tmp_path / "generated").exists()
