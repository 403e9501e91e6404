import csv
import re
import shlex

import numpy as np
import pytest
import torch
from PIL import Image

import train_dreambooth as tdb
from conftest import help_sections

TINY = ["--pretrained_model_name_or_path", "tiny-random", "--resolution", "64", "--num_class_images", "2",
        "--sample_batch_size", "2", "--validation_steps", "0", "--seed", "0"]


def log_rows(output_dir):
    with open(output_dir / "training_log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def instance_dir(tmp_path_factory):
    """Five real orchard photos (read from ../shared, written at 64 px to a temporary folder)."""
    from conftest import shared_path
    source = sorted((shared_path("data/orchard-real") / "train" / "images").glob("*.jpg"))[:5]
    folder = tmp_path_factory.mktemp("instances")
    for path in source:
        from PIL import Image
        Image.open(path).convert("RGB").resize((64, 64)).save(folder / f"{path.stem}.png")
    return folder


@pytest.fixture(scope="module")
def class_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("class_images")


# ---- the loss ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_equals_the_formula_by_hand(prediction_type):
    from diffusers import DDPMScheduler
    scheduler = DDPMScheduler.from_config(tdb.build_tiny_random_pipeline().scheduler.config,
                                          prediction_type=prediction_type)
    generator = torch.Generator().manual_seed(0)
    latents, noise, pred = (torch.randn(2, 4, 8, 8, generator=generator) for _ in range(3))
    timesteps = torch.tensor([10, 900])
    alpha_bar = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    expected = noise if prediction_type == "epsilon" else alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents
    target = tdb.training_target(scheduler, latents, noise, timesteps)
    torch.testing.assert_close(target, expected)
    if prediction_type == "v_prediction":
        assert not torch.allclose(target, noise), "v-prediction must not regress the noise (the SD-2 bug)"

    instance = ((pred[0] - expected[0]) ** 2).mean()
    prior = ((pred[1] - expected[1]) ** 2).mean()
    loss, got_instance, got_prior = tdb.dreambooth_loss(pred, target, True, 1.0)
    torch.testing.assert_close(loss, instance + prior)
    torch.testing.assert_close((got_instance, got_prior), (instance, prior))
    loss_without_prior_weight, _, _ = tdb.dreambooth_loss(pred, target, True, 0.0)
    torch.testing.assert_close(loss_without_prior_weight, instance)
    loss_half, _, _ = tdb.dreambooth_loss(pred, target, True, 0.5)
    torch.testing.assert_close(loss_half, instance + 0.5 * prior)
    loss_no_prior, _, none = tdb.dreambooth_loss(pred, target, False, 1.0)
    torch.testing.assert_close(loss_no_prior, ((pred - expected) ** 2).mean())
    assert none is None


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_one_steps_loss_through_the_unet_equals_the_formula(prediction_type):
    from diffusers import DDPMScheduler
    pipeline = tdb.build_tiny_random_pipeline()
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config, prediction_type=prediction_type)
    generator = torch.Generator().manual_seed(1)
    latents, noise = (torch.randn(2, 4, 8, 8, generator=generator) for _ in range(2))
    states = torch.randn(2, 77, 32, generator=generator)
    timesteps = torch.tensor([37, 612])
    alpha_bar = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
    with torch.no_grad():
        pred = pipeline.unet(noisy, timesteps, states).sample
        target = noise if prediction_type == "epsilon" else alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents
        expected = ((pred[0] - target[0]) ** 2).mean() + 0.7 * ((pred[1] - target[1]) ** 2).mean()
        loss, _, _ = tdb.diffusion_loss(pipeline.unet, scheduler, latents, states, noise, timesteps, True, 0.7)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_batches_are_a_permutation_per_epoch_and_split_over_processes():
    steps = [tdb.batch_indices(s, 10, 5, 1, rank, 2, seed=0) for s in range(5) for rank in range(2)]
    assert sorted(i for batch in steps for i in batch) == list(range(10))
    assert tdb.batch_indices(7, 10, 5, 1, 0, 2, 0) == tdb.batch_indices(7, 10, 5, 1, 0, 2, 0)
    assert [tdb.batch_indices(s, 10, 10, 1, 0, 1, 0) for s in range(10)] != \
        [tdb.batch_indices(s, 10, 10, 1, 0, 1, 0) for s in range(10, 20)]  # a new order each epoch


def test_tiny_tokenizer_takes_any_text():
    tokenizer = tdb.build_tiny_random_pipeline().tokenizer
    ids = tokenizer("a sks tree").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True).strip() == "a sks tree"


# ---- training runs ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(instance_dir, class_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("dreambooth") / "model"
    code = tdb.main([*TINY, "--instance_data_dir", str(instance_dir), "--class_data_dir", str(class_dir),
                     "--output_dir", str(output), "--max_train_steps", "3", "--validation_steps", "3"])
    assert code == 0
    return output


def test_three_steps_make_a_pipeline_that_loads_and_draws(trained):
    from diffusers import StableDiffusionPipeline
    rows = log_rows(trained)
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(float(r["loss"]) == pytest.approx(float(r["instance_loss"]) + float(r["prior_loss"]), rel=1e-4)
               for r in rows)
    assert float(rows[0]["lr"]) == pytest.approx(2e-6)
    assert (trained / "loss.png").exists() and (trained / "validation" / "step_000003.png").exists()
    from PIL import Image
    assert Image.open(trained / "loss.png").size == (800, 450)
    assert (trained / "unet" / "diffusion_pytorch_model.safetensors").exists()
    pipeline = StableDiffusionPipeline.from_pretrained(trained)
    assert pipeline.scheduler.config.prediction_type == "v_prediction"
    image = pipeline("a sks tree", num_inference_steps=2, height=64, width=64,
                     generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
    base = tdb.build_tiny_random_pipeline().unet.state_dict()
    changed = [k for k, v in pipeline.unet.state_dict().items() if not torch.equal(v, base[k])]
    assert changed, "training changed no UNet weight"


def test_the_loop_feeds_instance_then_class_prompts_and_uses_8bit_adam(instance_dir, class_dir, tmp_path, monkeypatch):
    import bitsandbytes
    seen, made = [], []
    real_loss = tdb.diffusion_loss

    def spy(unet, scheduler, latents, states, noise, timesteps, *rest, **added):
        seen.append((states.detach().clone(), timesteps.clone(), latents.detach().clone()))
        return real_loss(unet, scheduler, latents, states, noise, timesteps, *rest, **added)

    class Spied8bit(bitsandbytes.optim.AdamW8bit):
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tdb, "diffusion_loss", spy)
    monkeypatch.setattr(bitsandbytes.optim, "AdamW8bit", Spied8bit)
    assert tdb.main([*TINY, "--instance_data_dir", str(instance_dir), "--class_data_dir", str(class_dir),
                     "--output_dir", str(tmp_path / "out"), "--max_train_steps", "3"]) == 0
    assert made == [{"lr": 2e-6, "betas": (0.9, 0.999), "weight_decay": 1e-2, "eps": 1e-8}]
    pipeline = tdb.build_tiny_random_pipeline()
    with torch.no_grad():
        instance = tdb.encode_prompt(pipeline.tokenizer, pipeline.text_encoder, "a sks tree", "cpu")[0]
        prior = tdb.encode_prompt(pipeline.tokenizer, pipeline.text_encoder, "a tree", "cpu")[0]
    for states, _, latents in seen:
        torch.testing.assert_close(states[0], instance)
        torch.testing.assert_close(states[1], prior)
        assert latents.shape == (2, 4, 32, 32)  # 64 px through the tiny VAE (one downsampling)
    assert len({int(t) for _, timesteps, _ in seen for t in timesteps}) > 1
    # latents are the VAE's, scaled by its scaling factor (0.18215 for SD): unit-ish spread
    spread = torch.cat([latents for _, _, latents in seen]).std().item()
    assert 0.05 < spread < 2


def test_seed_changes_the_run(instance_dir, class_dir, tmp_path):
    for seed in ("0", "5"):
        assert tdb.main([*TINY, "--seed", seed, "--instance_data_dir", str(instance_dir), "--class_data_dir",
                         str(class_dir), "--output_dir", str(tmp_path / seed), "--max_train_steps", "2"]) == 0
    assert [r["loss"] for r in log_rows(tmp_path / "0")] != [r["loss"] for r in log_rows(tmp_path / "5")]


def test_validation_grid_is_captioned_above_the_images(trained):
    from PIL import Image
    grid = np.asarray(Image.open(trained / "validation" / "step_000003.png").convert("RGB"), dtype=np.int16)
    strip = round(12 * 1.8)  # the smallest caption font, 12 px, for a 4 x 64 px grid
    assert grid.shape == (strip + 64, 4 * 64, 3)
    caption, images = grid[:strip], grid[strip:]
    assert ((caption.max(axis=2) < 100).sum() > 100) and (caption == 255).all(axis=2).mean() > 0.7
    assert not (images == 255).all(axis=2).all(axis=1).any(), "an image row is blank: the caption covers it"


def test_a_caption_strip_sits_above_the_image_and_leaves_it_whole():
    from PIL import Image
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 768, 3), dtype=np.uint8))
    one = tdb.captioned(image, "green, step 200: 'a sks tree'")
    other = tdb.captioned(image, "green, step 400: 'a sks tree'")
    size = 768 // 64  # the font grows with the width: 12 px letters for 768 px
    assert one.size == (768, 96 + round(size * 1.8))
    one = np.asarray(one)
    assert np.array_equal(one[-96:], np.asarray(image))
    assert (one[:-96].max(axis=2) < 100).sum() > 100  # dark letters on the white strip
    assert not np.array_equal(one[:-96], np.asarray(other)[:-96])
    wide = tdb.captioned(Image.new("RGB", (3072, 768)), "a caption")
    assert wide.height - 768 == round(48 * 1.8)  # a 4-image grid at 768 px: 48 px letters


def test_finished_run_is_skipped(trained, instance_dir, class_dir, capsys):
    code = tdb.main([*TINY, "--instance_data_dir", str(instance_dir), "--class_data_dir", str(class_dir),
                     "--output_dir", str(trained), "--max_train_steps", "3", "--validation_steps", "3"])
    assert code == 0 and "nothing to do" in capsys.readouterr().out


def test_class_images_are_made_once_and_reused(trained, instance_dir, class_dir, tmp_path, capsys):
    made = {p: p.stat().st_mtime_ns for p in class_dir.iterdir()}
    assert len(made) == 2
    code = tdb.main([*TINY, "--instance_data_dir", str(instance_dir), "--class_data_dir", str(class_dir),
                     "--output_dir", str(tmp_path / "other"), "--max_train_steps", "1", "--no-use_8bit_adam"])
    assert code == 0 and "drawing" not in capsys.readouterr().out
    assert made == {p: p.stat().st_mtime_ns for p in class_dir.iterdir()}
    # keyed by the prompt that drew them: another --class_prompt is refused, not given these images
    code = tdb.main([*TINY, "--instance_data_dir", str(instance_dir), "--class_data_dir", str(class_dir),
                     "--output_dir", str(tmp_path / "snow"), "--max_train_steps", "1", "--no-use_8bit_adam",
                     "--class_prompt", "a tree in the snow"])
    err = capsys.readouterr().err
    assert code == 2 and "class_00000.png" in err and "'a tree'" in err and "'a tree in the snow'" in err
    assert made == {p: p.stat().st_mtime_ns for p in class_dir.iterdir()} and not (tmp_path / "snow" / "unet").exists()
    own = tmp_path / "own"  # photos of the class, drawn by nobody: used with any prompt
    own.mkdir()
    Image.new("RGB", (64, 64), (20, 120, 40)).save(own / "photo.png")
    tdb.check_class_prompt(tdb.list_images(own), "a tree in the snow")


def test_resume_continues_the_step_count_and_the_same_batches(instance_dir, class_dir, tmp_path, capsys):
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    common = [*TINY, "--instance_data_dir", str(instance_dir), "--class_data_dir", str(class_dir)]
    assert tdb.main([*common, "--output_dir", str(unbroken), "--max_train_steps", "4"]) == 0
    # a run that stopped after step 2, with a checkpoint at step 1
    assert tdb.main([*common, "--output_dir", str(broken), "--max_train_steps", "2", "--checkpointing_steps", "1"]) == 0
    assert (broken / "checkpoint-1").is_dir()
    capsys.readouterr()
    assert tdb.main([*common, "--output_dir", str(broken), "--max_train_steps", "4",
                     "--resume_from_checkpoint", "latest"]) == 0
    assert "resumed from" in capsys.readouterr().out
    rows = log_rows(broken)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows] == [r["loss"] for r in log_rows(unbroken)]
    capsys.readouterr()
    # a resume with other settings would mix two trainings: refused
    assert tdb.main([*common, "--output_dir", str(broken), "--max_train_steps", "6", "--checkpointing_steps", "1",
                     "--resume_from_checkpoint", "latest", "--learning_rate", "1e-3"]) == 2
    assert "other arguments" in capsys.readouterr().err


def test_latest_checkpoint_ignores_half_written_ones(tmp_path):
    for name in ("checkpoint-2", "checkpoint-10", "checkpoint-30.tmp", "checkpoints"):
        (tmp_path / name).mkdir()
    assert tdb.find_checkpoint(tmp_path, "latest").name == "checkpoint-10"
    assert tdb.find_checkpoint(tmp_path / "checkpoint-2", "latest") is None


def test_lora_output_is_a_full_pipeline(instance_dir, class_dir, tmp_path):
    from diffusers import StableDiffusionPipeline
    output = tmp_path / "lora"
    assert tdb.main([*TINY, "--instance_data_dir", str(instance_dir), "--class_data_dir", str(class_dir),
                     "--output_dir", str(output), "--max_train_steps", "2", "--lora_rank", "4",
                     "--learning_rate", "1e-3"]) == 0
    assert (output / "pytorch_lora_weights.safetensors").exists()
    unet = StableDiffusionPipeline.from_pretrained(output).unet
    base = tdb.build_tiny_random_pipeline().unet.state_dict()
    assert set(unet.state_dict()) == set(base)
    assert any(not torch.equal(v, base[k]) for k, v in unet.state_dict().items() if "attn" in k)


def test_non_finite_loss_stops_and_names_the_last_checkpoint(instance_dir, class_dir, tmp_path, monkeypatch, capsys):
    real_loss = tdb.dreambooth_loss
    calls = []

    def loss_that_breaks(*args):
        calls.append(1)
        loss, instance, prior = real_loss(*args)
        return (loss * float("nan"), instance, prior) if len(calls) == 3 else (loss, instance, prior)

    monkeypatch.setattr(tdb, "dreambooth_loss", loss_that_breaks)
    code = tdb.main([*TINY, "--instance_data_dir", str(instance_dir), "--class_data_dir", str(class_dir),
                     "--output_dir", str(tmp_path / "nan"), "--max_train_steps", "5", "--checkpointing_steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "nan" in err and "checkpoint-2" in err
    assert not (tmp_path / "nan" / "model_index.json").exists()


# ---- bad input --------------------------------------------------------------------------------------
def test_bad_inputs_give_clear_errors(tmp_path, class_dir, capsys):
    common = [*TINY, "--class_data_dir", str(class_dir), "--output_dir", str(tmp_path / "out")]
    assert tdb.main([*common, "--instance_data_dir", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert tdb.main([*common, "--instance_data_dir", str(tmp_path / "empty")]) == 2
    assert "no instance images" in capsys.readouterr().err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tree.png").write_bytes(b"no image")
    assert tdb.main([*common, "--instance_data_dir", str(tmp_path / "broken")]) == 2
    assert "tree.png" in capsys.readouterr().err
    with pytest.raises(tdb.InputError, match="no such file or folder, and not a hub id"):
        tdb.load_pipeline(str(tmp_path / "nowhere" / "model"))
    (tmp_path / "not_a_pipeline").mkdir()
    with pytest.raises(tdb.InputError, match="model_index.json"):
        tdb.load_pipeline(str(tmp_path / "not_a_pipeline"))


# ---- what is saved -----------------------------------------------------------------------------------
def test_bf16_training_saves_the_trained_weights_in_fp32(instance_dir, class_dir, tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    trained = {}
    real_validate = tdb.validate

    def spy(args, accelerator, pipeline, unet, *rest):  # runs after the last step: the weights as trained
        trained.update({k: v.detach().clone() for k, v in accelerator.unwrap_model(unet).state_dict().items()})
        return real_validate(args, accelerator, pipeline, unet, *rest)

    monkeypatch.setattr(tdb, "validate", spy)
    common = [*TINY, "--instance_data_dir", str(instance_dir), "--class_data_dir", str(class_dir), "--mixed_precision",
              "bf16", "--max_train_steps", "3", "--validation_steps", "3", "--num_validation_images", "1",
              "--learning_rate", "1e-4", "--resolution", "32"]  # a CPU without bf16 emulates it: small images
    assert tdb.main([*common, "--output_dir", str(tmp_path / "fp32"), "--checkpointing_steps", "2"]) == 0
    saved = StableDiffusionPipeline.from_pretrained(tmp_path / "fp32")
    unet = saved.unet.state_dict()
    assert {v.dtype for v in unet.values()} == {torch.float32}
    assert set(unet) == set(trained) and all(torch.equal(unet[k], trained[k]) for k in unet)
    base = tdb.build_tiny_random_pipeline()
    assert any(not torch.equal(v, base.unet.state_dict()[k]) for k, v in unet.items())
    # the frozen VAE and text encoder ran in bf16, and are saved as they were loaded
    for name in ("vae", "text_encoder"):
        ours, theirs = getattr(saved, name).state_dict(), getattr(base, name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    # diffusers' way to try a checkpoint: its UNet folder
    at_step_2 = UNet2DConditionModel.from_pretrained(tmp_path / "fp32" / "checkpoint-2" / "unet").state_dict()
    assert {v.dtype for v in at_step_2.values()} == {torch.float32}
    assert any(not torch.equal(v, unet[k]) for k, v in at_step_2.items())
    assert not list((tmp_path / "fp32" / "checkpoint-2").glob("model*.safetensors"))  # the UNet is stored once

    trained.clear()
    assert tdb.main([*common, "--output_dir", str(tmp_path / "bf16"), "--save_precision", "bf16"]) == 0
    from safetensors.torch import load_file
    unet = load_file(tmp_path / "bf16" / "unet" / "diffusion_pytorch_model.safetensors")  # as stored on disk
    assert {v.dtype for v in unet.values()} == {torch.bfloat16}
    assert all(torch.equal(unet[k], trained[k].to(torch.bfloat16)) for k in unet)


def test_lora_checkpoint_holds_the_lora_file_and_resumes_exactly(instance_dir, class_dir, tmp_path):
    from diffusers import StableDiffusionPipeline
    common = [*TINY, "--instance_data_dir", str(instance_dir), "--class_data_dir", str(class_dir), "--lora_rank", "4",
              "--learning_rate", "1e-3"]
    assert tdb.main([*common, "--output_dir", str(tmp_path / "unbroken"), "--max_train_steps", "3"]) == 0
    assert tdb.main([*common, "--output_dir", str(tmp_path / "broken"), "--max_train_steps", "2",
                     "--checkpointing_steps", "1"]) == 0
    pipeline = tdb.build_tiny_random_pipeline()
    pipeline.load_lora_weights(tmp_path / "broken" / "checkpoint-1")  # diffusers' own LoRA loader reads it
    assert tdb.main([*common, "--output_dir", str(tmp_path / "broken"), "--max_train_steps", "3",
                     "--resume_from_checkpoint", "latest"]) == 0
    assert [r["loss"] for r in log_rows(tmp_path / "broken")] == [r["loss"] for r in log_rows(tmp_path / "unbroken")]
    resumed = StableDiffusionPipeline.from_pretrained(tmp_path / "broken").unet.state_dict()
    unbroken = StableDiffusionPipeline.from_pretrained(tmp_path / "unbroken").unet.state_dict()
    assert all(torch.equal(resumed[k], unbroken[k]) for k in unbroken)


# ---- the flags diffusers users bring ------------------------------------------------------------------
def test_gradient_accumulation_averages_the_batches_and_schedules_optimizer_steps(instance_dir, class_dir, tmp_path,
                                                                                  monkeypatch):
    batches, optimizer_steps = [], []
    real_loss = tdb.diffusion_loss

    def spy(*args, **added):
        batches.append(args)
        return real_loss(*args, **added)

    class CheckingAdamW(torch.optim.AdamW):
        def step(self, *args, **kwargs):
            # the gradient an optimizer step sees is the mean of its batches' gradients
            params = [p for group in self.param_groups for p in group["params"]]
            accumulated = len(batches) - sum(optimizer_steps)
            expected = [torch.zeros_like(p) for p in params]
            for unet, scheduler, latents, states, noise, timesteps, *rest in batches[-accumulated:]:
                loss = real_loss(unet, scheduler, latents, states, noise, timesteps, *rest)[0]
                for total, grad in zip(expected, torch.autograd.grad(loss, params)):
                    total += grad / accumulated
            assert all(torch.allclose(p.grad, e, rtol=1e-4, atol=1e-9) for p, e in zip(params, expected))
            optimizer_steps.append(accumulated)
            return super().step(*args, **kwargs)

    monkeypatch.setattr(tdb, "diffusion_loss", spy)
    monkeypatch.setattr(torch.optim, "AdamW", CheckingAdamW)
    common = [*TINY, "--instance_data_dir", str(instance_dir), "--class_data_dir", str(class_dir), "--no-use_8bit_adam",
              "--max_grad_norm", "0", "--lr_scheduler", "linear", "--max_train_steps", "3", "--learning_rate", "1e-4"]
    assert tdb.main([*common, "--output_dir", str(tmp_path / "plain")]) == 0
    assert optimizer_steps == [1, 1, 1]
    batches.clear(), optimizer_steps.clear()
    assert tdb.main([*common, "--output_dir", str(tmp_path / "accumulated"), "--gradient_accumulation_steps", "2"]) == 0
    assert optimizer_steps == [2, 2, 2] and len(batches) == 6
    assert len({tuple(latents.flatten()[:4].tolist()) for _, _, latents, *_ in batches}) == 6  # 6 distinct batches
    rows = log_rows(tmp_path / "accumulated")
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    # the linear schedule decays over the 3 optimizer steps, not over the 6 batches
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-4 * 2 / 3, 1e-4 / 3, 0.0], rel=1e-5)
    assert [r["lr"] for r in rows] == [r["lr"] for r in log_rows(tmp_path / "plain")]
    assert all(float(r["loss"]) == pytest.approx(float(r["instance_loss"]) + float(r["prior_loss"]), rel=1e-4)
               for r in rows)
    # --scale_lr: times accumulation x batch x processes
    assert tdb.main([*common, "--output_dir", str(tmp_path / "scaled"), "--gradient_accumulation_steps", "2",
                     "--scale_lr"]) == 0
    assert [float(r["lr"]) for r in log_rows(tmp_path / "scaled")] == pytest.approx([2e-4 * 2 / 3, 2e-4 / 3, 0.0],
                                                                                   rel=1e-5)
    # piecewise_constant in diffusers' rule form, counted in optimizer steps
    assert tdb.main([*common, "--output_dir", str(tmp_path / "piecewise"), "--gradient_accumulation_steps", "2",
                     "--lr_scheduler", "piecewise_constant", "--lr_step_rules", "1:2,0.1"]) == 0
    assert [float(r["lr"]) for r in log_rows(tmp_path / "piecewise")] == pytest.approx([1e-4, 1e-5, 1e-5])


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_equal_the_formula_by_hand(prediction_type):
    from diffusers import DDPMScheduler
    scheduler = DDPMScheduler.from_config(tdb.build_tiny_random_pipeline().scheduler.config,
                                          prediction_type=prediction_type)
    timesteps = torch.tensor([0, 20, 300, 999])
    expected = []
    for t in timesteps.tolist():
        alpha_bar = float(scheduler.alphas_cumprod[t])
        snr = alpha_bar / (1 - alpha_bar)
        expected.append(min(snr, 5.0) / (snr + 1 if prediction_type == "v_prediction" else snr))
    weights = tdb.min_snr_weights(scheduler, timesteps, 5.0)
    torch.testing.assert_close(weights, torch.tensor(expected), rtol=1e-5, atol=0)
    # at the noisy end (SNR far below 5) the noise keeps its full weight, the velocity about SNR itself;
    # diffusers' DreamBooth would weight the velocity min(SNR, 5) / SNR + 1 = 2 there
    assert weights[-1] == 1.0 if prediction_type == "epsilon" else weights[-1] < 0.01
    # each example's squared error is weighted by its own timestep's weight, instance and class alike
    generator = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 4, 8, 8, generator=generator), torch.randn(4, 4, 8, 8, generator=generator)
    per_example = ((pred - target) ** 2).mean(dim=(1, 2, 3)) * torch.tensor(expected)
    loss, instance, prior = tdb.dreambooth_loss(pred, target, True, 0.5, weights)
    torch.testing.assert_close((instance, prior), (per_example[:2].mean(), per_example[2:].mean()))
    torch.testing.assert_close(loss, per_example[:2].mean() + 0.5 * per_example[2:].mean())


def test_offset_noise_snr_gamma_and_other_diffusers_flags_train(instance_dir, class_dir, tmp_path, monkeypatch):
    seen = []
    real_loss = tdb.diffusion_loss

    def spy(unet, scheduler, latents, states, noise, timesteps, *rest, **added):
        seen.append((noise.detach().clone(), rest))
        return real_loss(unet, scheduler, latents, states, noise, timesteps, *rest, **added)

    monkeypatch.setattr(tdb, "diffusion_loss", spy)
    common = [*TINY, "--instance_data_dir", str(instance_dir), "--class_data_dir", str(class_dir),
              "--max_train_steps", "3", "--lr_scheduler", "cosine_with_restarts", "--lr_num_cycles", "2"]
    assert tdb.main([*common, "--output_dir", str(tmp_path / "plain")]) == 0
    plain = torch.stack([noise.mean(dim=(2, 3)) for noise, _ in seen])
    seen.clear()
    tf32_before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        assert tdb.main([*common, "--output_dir", str(tmp_path / "flags"), "--offset_noise", "--snr_gamma", "5",
                         "--allow_tf32", "--center_crop"]) == 0
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32_before
    offset = torch.stack([noise.mean(dim=(2, 3)) for noise, _ in seen])
    # offset noise adds 0.1 x one normal number per example and channel: its channel means spread ~0.1
    assert plain.abs().mean() < 0.05 < offset.abs().mean()
    assert all(rest[-1] == 5.0 for _, rest in seen)  # snr_gamma reaches the loss
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in log_rows(tmp_path / "flags"))


def test_a_missing_tracker_package_is_named(instance_dir, class_dir, tmp_path, capsys):
    from accelerate.tracking import get_available_trackers
    assert "wandb" not in [str(getattr(t, "value", t)) for t in get_available_trackers()]
    assert tdb.main([*TINY, "--instance_data_dir", str(instance_dir), "--class_data_dir", str(class_dir),
                     "--output_dir", str(tmp_path / "out"), "--report_to", "wandb"]) == 2
    assert "pip install wandb" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---- images ------------------------------------------------------------------------------------------
def test_exif_rotated_photo_is_read_upright(tmp_path):
    from PIL import Image
    upright = Image.new("RGB", (32, 64), (0, 0, 255))  # portrait: red top half, blue bottom half
    upright.paste((255, 0, 0), (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera held sideways; viewers rotate the stored pixels 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.jpg", exif=exif, quality=95)
    assert Image.open(tmp_path / "sideways.jpg").size == (64, 32)
    pixels = tdb.load_example(tmp_path / "sideways.jpg", 32)[0]  # shorter side 32, then the centre 32 x 32
    red, blue = pixels[0], pixels[2]
    assert red[:8].mean() > 0.8 and blue[:8].mean() < -0.8  # the top rows are red
    assert blue[-8:].mean() > 0.8 and red[-8:].mean() < -0.8  # the bottom rows are blue


def test_random_crop_is_a_window_of_the_resized_photo_and_centre_crop_its_middle(tmp_path):
    import numpy as np
    from PIL import Image
    ramp = np.tile(np.arange(96, dtype=np.uint8)[None, :, None] * 2, (64, 1, 3))  # 96 wide, 64 high
    Image.fromarray(ramp).save(tmp_path / "wide.png")
    full = torch.from_numpy(ramp.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
    lefts = set()
    for seed in range(8):
        crop = tdb.load_example(tmp_path / "wide.png", 64, np.random.default_rng(seed))[0]
        left = round(float((crop[0, 0, 0] + 1) * 127.5) / 2)
        torch.testing.assert_close(crop, full[:, :, left:left + 64])
        lefts.add(left)
    assert len(lefts) > 2 and all(0 <= left <= 32 for left in lefts)
    torch.testing.assert_close(tdb.load_example(tmp_path / "wide.png", 64)[0], full[:, :, 16:80])


def test_a_16_bit_photo_is_scaled_to_8_bits_not_clipped_to_white(tmp_path):
    from PIL import Image
    grey16 = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(grey16).save(tmp_path / "deep.png")
    pixels = tdb.load_example(tmp_path / "deep.png", 32)[0]
    expected = torch.from_numpy(np.round(grey16 / 257) / 127.5 - 1).float()
    assert all(torch.allclose(pixels[c], expected, atol=1 / 127.5) for c in range(3))
    Image.fromarray(grey16.astype(np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(tdb.InputError, match="float.tiff: a floating-point image"):
        tdb.load_example(tmp_path / "float.tiff", 32)[0]


def test_unusable_output_folders_are_one_line_errors(instance_dir, class_dir, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    cases = [("--output_dir", tmp_path / "taken", class_dir, "is a file, not a folder"),
             ("--output_dir", tmp_path / "taken" / "below", class_dir, "cannot be created or written"),
             ("--class_data_dir", tmp_path / "out", tmp_path / "taken", "is a file, not a folder"),
             ("--output_dir", instance_dir / "model", class_dir, "it overlaps the input folder"),
             ("--class_data_dir", tmp_path / "out", instance_dir, "it overlaps the input folder")]
    for flag, output, classes, problem in cases:
        code = tdb.main([*TINY, "--instance_data_dir", str(instance_dir), "--class_data_dir", str(classes),
                         "--output_dir", str(output)])
        err = capsys.readouterr().err.strip().splitlines()
        bad = output if flag == "--output_dir" else classes
        assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {flag} {bad}: ") and problem in err[0]
    assert not (instance_dir / "model").exists() and (tmp_path / "taken").read_text() == "a file"


# ---- loss.png ----------------------------------------------------------------------------------------
def test_ema_is_a_bias_corrected_moving_average():
    assert tdb.ema([2.0, 2.0, 2.0], span=5) == pytest.approx([2.0, 2.0, 2.0])  # a constant stays itself
    assert tdb.ema([1.0, 3.0, 0.5], span=1) == pytest.approx([1.0, 3.0, 0.5])  # span 1: no smoothing
    # span 3: alpha 0.5; the weights 0.5, 0.75 normalise the average of 0 and 1
    assert tdb.ema([0.0, 1.0], span=3) == pytest.approx([0.0, 0.5 / 0.75])
    step = tdb.ema([0.0] * 10 + [1.0] * 40, span=10)
    assert step[:10] == pytest.approx([0.0] * 10)
    assert all(a < b for a, b in zip(step[10:], step[11:])) and 0.99 < step[-1] < 1  # it follows a step, lagging


def loss_rows(instance, prior):
    return [{"step": str(k + 1), "loss": "", "instance_loss": str(i), "prior_loss": "" if p is None else str(p)}
            for k, (i, p) in enumerate(zip(instance, prior))]


def test_loss_figure_draws_instance_and_prior_loss_raw_and_smoothed():
    rng = np.random.default_rng(0)
    instance, prior = rng.uniform(0.05, 0.3, 200), rng.uniform(0.1, 0.2, 200)
    figure = tdb.loss_figure(loss_rows(instance, prior), "DreamBooth loss of green: 'a sks tree'")
    (axis,) = figure.axes
    assert axis.get_title() == "DreamBooth loss of green: 'a sks tree'"
    assert axis.get_xlabel() == "optimizer step" and "loss" in axis.get_ylabel()
    lines = {line.get_label(): line for line in axis.get_lines()}
    assert sorted(lines) == ["instance loss, EMA over 10 steps", "instance loss, each step",
                             "prior loss (class images), EMA over 10 steps", "prior loss (class images), each step"]
    for name, values in (("instance loss", instance), ("prior loss (class images)", prior)):
        raw, smooth = lines[f"{name}, each step"], lines[f"{name}, EMA over 10 steps"]
        assert list(raw.get_xdata()) == list(range(1, 201))
        np.testing.assert_allclose(raw.get_ydata(), values)
        np.testing.assert_allclose(smooth.get_ydata(), tdb.ema(list(values), 10))
        assert raw.get_alpha() < 0.5 and raw.get_linestyle() == "None"  # faint points under a solid line
        assert smooth.get_color() == raw.get_color() and smooth.get_linewidth() > 1
    without_prior = tdb.loss_figure(loss_rows(instance, [None] * 200), "t")
    assert [line.get_label() for line in without_prior.axes[0].get_lines()] == [
        "instance loss, each step", "instance loss, EMA over 10 steps"]


def test_loss_png_and_validation_grids_name_the_model_and_prompt(instance_dir, tmp_path, monkeypatch):
    figures, captions = [], []
    real_figure, real_captioned = tdb.loss_figure, tdb.captioned

    def figure_spy(rows, title):
        figures.append(real_figure(rows, title))
        return figures[-1]

    def captioned_spy(image, text):
        captions.append(text)
        return real_captioned(image, text)

    monkeypatch.setattr(tdb, "loss_figure", figure_spy)
    monkeypatch.setattr(tdb, "captioned", captioned_spy)
    assert tdb.main([*TINY, "--no_prior_preservation", "--instance_data_dir", str(instance_dir), "--output_dir",
                     str(tmp_path / "green"), "--max_train_steps", "2", "--validation_steps", "1",
                     "--instance_prompt", "a sks apple tree"]) == 0
    (axis,) = figures[0].axes
    assert axis.get_title() == "DreamBooth loss of green: 'a sks apple tree'"
    assert [line.get_label() for line in axis.get_lines()] == ["instance loss, each step",
                                                               "instance loss, EMA over 5 steps"]
    assert captions == ["green, step 1: 'a sks apple tree'", "green, step 2: 'a sks apple tree'"]
    assert sorted(p.name for p in (tmp_path / "green" / "validation").iterdir()) == ["step_000001.png",
                                                                                     "step_000002.png"]


# ---- --help ------------------------------------------------------------------------------------------
def help_text(capsys):
    with pytest.raises(SystemExit):
        tdb.parse_args(["--help"])
    return capsys.readouterr().out


def test_help_groups_every_flag_with_a_help_text_and_at_most_one_default(capsys):
    text = help_text(capsys)
    sections = help_sections(text)
    options = {option: help for entries in sections.values() for option, help in entries.items()}
    usage_flags = set(re.findall(r"--[\w-]+", text.split("\n\n")[0])) | {"--help"}
    assert usage_flags == {flag for option in options for flag in re.findall(r"--[\w-]+", option)}
    assert len(options) == 62  # 61 flags and --help
    assert all(options.values()), [option for option, help in options.items() if not help]
    assert all(help.lower().count("default") <= 1 for help in options.values())
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "default" not in options["--no_prior_preservation"]
    assert options["--use_8bit_adam, --no-use_8bit_adam"].endswith("(default: True)")
    assert options["--learning_rate LEARNING_RATE"].endswith("(default: 2e-06)")
    assert list(sections) == ["options", "model", "instance photos",
                              "prior preservation (Eq. 9)", "training",
                              "flow matching (SD3 and FLUX only; if not given: diffusers' scripts' values)",
                              "optimizer and learning-rate schedule",
                              "precision and memory", "output and checkpoints", "validation and logging", "examples"]
    assert list(sections["options"]) == ["-h, --help"]  # every other flag sits in its group


def test_help_examples_are_valid_commands(capsys):
    examples = help_text(capsys).split("examples:\n", 1)[1].replace("\\\n", " ")
    commands = [shlex.split(line, comments=True) for line in examples.splitlines() if "train_dreambooth.py" in line]
    assert len(commands) == 4
    for words in commands:
        args = tdb.parse_args(words[words.index("train_dreambooth.py") + 1:])
        assert args.instance_data_dir and args.output_dir and args.class_data_dir
