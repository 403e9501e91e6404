import csv

import pytest
import torch

import train_dreambooth as tdb

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

    def spy(unet, scheduler, latents, states, noise, timesteps, *rest):
        seen.append((states.detach().clone(), timesteps.clone(), latents.detach().clone()))
        return real_loss(unet, scheduler, latents, states, noise, timesteps, *rest)

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
    with pytest.raises(tdb.InputError, match="neither a folder"):
        tdb.load_pipeline(str(tmp_path / "nowhere" / "model"))
    (tmp_path / "not_a_pipeline").mkdir()
    with pytest.raises(tdb.InputError, match="model_index.json"):
        tdb.load_pipeline(str(tmp_path / "not_a_pipeline"))
