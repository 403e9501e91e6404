import csv

import numpy as np
import pytest
from PIL import Image

import generate as gen
import train_dreambooth as tdb

FAST = ["--height", "64", "--width", "64", "--num_inference_steps", "4", "--seed", "7"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny pipeline folders, 'green' and 'red' (different random weights)."""
    root = tmp_path_factory.mktemp("models")
    for seed, name in enumerate(("green", "red")):
        tdb.build_tiny_random_pipeline(seed).save_pretrained(root / name)
    return root


def run(models, output, *extra, green=3, red=2):
    return gen.main(["--model", f"{models / 'green'}:{green}", "--model", f"{models / 'red'}:{red}",
                     "--output_dir", str(output), *FAST, *extra])


def pixels(folder):
    return {p.name: np.asarray(Image.open(p).convert("RGB"), dtype=np.int16)
            for p in sorted((folder / "images").glob("*.png"))}


def manifest(folder):
    with open(folder / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def reference(models, tmp_path_factory):
    output = tmp_path_factory.mktemp("reference")
    assert run(models, output, "--batch_size", "1") == 0
    return output


def test_counts_names_and_manifest(reference, models):
    assert sorted(pixels(reference)) == ["green_00000.png", "green_00001.png", "green_00002.png",
                                         "red_00000.png", "red_00001.png"]
    rows = manifest(reference)
    assert [r["file"] for r in rows] == sorted(pixels(reference))
    assert [int(r["seed"]) for r in rows] == [7, 8, 9, 10, 11]
    assert {r["model"] for r in rows} == {str(models / "green"), str(models / "red")}
    assert all(r["prompt"] == "a sks tree" and r["steps"] == "4" and r["scheduler"] == "DDIMScheduler"
               and r["precision"] == "no" for r in rows)
    assert Image.open(reference / "contact_sheet.png").size == (5 * 128, 128)


def test_same_seed_same_pixels_and_batches_do_not_change_images(reference, models, tmp_path):
    assert run(models, tmp_path / "batched", "--batch_size", "3") == 0
    batched = pixels(tmp_path / "batched")
    for name, image in pixels(reference).items():
        assert np.abs(image - batched[name]).max() <= 2, name
    assert run(models, tmp_path / "other_seed", "--seed", "8", green=1, red=1) == 0
    assert np.abs(pixels(tmp_path / "other_seed")["green_00000.png"] - pixels(reference)["green_00001.png"]).max() <= 2


def test_two_shards_equal_one_run(reference, models, tmp_path):
    for shard in ("1/2", "0/2"):
        assert run(models, tmp_path, "--shard", shard, "--batch_size", "1") == 0
    assert manifest(tmp_path) == [{**r, "seconds": s["seconds"]} for r, s in zip(manifest(reference), manifest(tmp_path))]
    ours = pixels(tmp_path)
    assert all(np.array_equal(image, ours[name]) for name, image in pixels(reference).items())


def test_killed_run_completes_without_duplicates(reference, models, tmp_path, monkeypatch, capsys):
    real_save, saved = gen.save_image, []

    def crash_after_two(image, path, record):
        if len(saved) == 2:
            path.with_name(f".{path.name}.tmp").write_bytes(b"half an image")
            raise KeyboardInterrupt
        saved.append(path.name)
        real_save(image, path, record)

    monkeypatch.setattr(gen, "save_image", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        run(models, tmp_path, "--batch_size", "1")
    monkeypatch.setattr(gen, "save_image", real_save)
    assert len(pixels(tmp_path)) == 2
    capsys.readouterr()
    assert run(models, tmp_path, "--batch_size", "1") == 0
    assert "this part draws 3" in capsys.readouterr().out
    ours = pixels(tmp_path)
    assert sorted(ours) == sorted(pixels(reference))
    assert all(np.array_equal(image, ours[name]) for name, image in pixels(reference).items())
    assert len(manifest(tmp_path)) == 5


def test_prompt_variants_cycle_and_are_recorded(models, tmp_path):
    assert run(models, tmp_path, "--prompt_variants", "in the snow; at dusk", green=2, red=1) == 0
    assert [r["prompt"] for r in manifest(tmp_path)] == [
        "a sks tree in the snow", "a sks tree at dusk", "a sks tree in the snow"]


def test_other_settings_in_the_same_folder_are_refused(reference, models, capsys):
    assert run(models, reference, "--num_inference_steps", "5") == 2
    assert "steps 4 here, 5 asked" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, field, recorded", [
    ("--scheduler", "euler", "scheduler", "EulerDiscreteScheduler"),
    ("--guidance_scale", "2.0", "guidance", "2.0"),
    ("--negative_prompt", "blurry", "negative_prompt", "blurry"),
])
def test_drawing_settings_change_the_images_and_are_recorded(reference, models, tmp_path, flag, value, field, recorded):
    assert run(models, tmp_path, flag, value, green=1, red=1) == 0
    ours, theirs = pixels(tmp_path), pixels(reference)
    assert np.abs(ours["green_00000.png"] - theirs["green_00000.png"]).max() > 2
    assert manifest(tmp_path)[0][field] == recorded


def test_processes_split_a_shard_without_overlap():
    jobs = [{"k": k} for k in range(10)]
    parts = [gen.my_part(jobs, (1, 2), rank, 3) for rank in range(3)]
    assert sorted(job["k"] for part in parts for job in part) == [1, 3, 5, 7, 9]
    assert all(len(part) >= 1 for part in parts)


def test_bad_input_is_refused_before_any_work(models, tmp_path, capsys):
    (tmp_path / "not_a_model").mkdir()
    cases = {(f"{tmp_path / 'not_a_model'}:3",): "no model_index.json",
             (f"{models / 'green'}:0",): "positive whole number",
             (f"{models / 'green'}:x",): "positive whole number",
             (f"{models / 'green'}",): "MODEL:COUNT",
             (f"{models / 'green'}:1", f"{tmp_path / 'green'}:1"): "no such file or folder",
             (f"{models / 'green'}:1", f"{tmp_path / 'broken'}:1"): "without unet"}
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model_index.json").write_text((models / "green" / "model_index.json").read_text())
    for specs, message in cases.items():
        argv = [arg for spec in specs for arg in ("--model", spec)]
        assert gen.main([*argv, "--output_dir", str(tmp_path / "out"), *FAST]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gen.main(["--model", f"{models / 'green'}:1", "--output_dir", str(tmp_path / "out"), "--height", "100"])
    assert not (tmp_path / "out" / "images").exists()


def test_an_output_folder_that_cannot_be_written_is_one_line(models, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    for output, problem in ((tmp_path / "taken", "is a file, not a folder"),
                            (tmp_path / "taken" / "below", "cannot be created or written")):
        assert run(models, output) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: --output_dir {output}: ") and problem in err[0]
    assert (tmp_path / "taken").read_text() == "a file"
