import csv
import re
import shlex

import numpy as np
import pytest
from PIL import Image

import generate as gen
import train_dreambooth as tdb
from conftest import help_sections

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
    assert Image.open(reference / "contact_sheet.png").size == sheet_size([3, 2], columns=12)
    assert gen.sheet_blocks(rows, reference / "images") == [
        ("green", [(reference / "images" / f"green_0000{i}.png", f"green #{i}") for i in range(3)]),
        ("red", [(reference / "images" / f"red_0000{i}.png", f"red #{i}") for i in range(2)])]


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


def test_prompts_per_model_and_variants_drawn_per_image_are_recorded(models, tmp_path):
    variants = ["{} in the snow", "{} at dusk", "a photo of {}", "an orchard at noon"]
    (tmp_path / "variants.txt").write_text("\n".join(variants) + "\n")
    assert gen.main(["--model", f"{models / 'green'}:3:a sks tree with green apples", "--model", f"{models / 'red'}:2",
                     "--prompt_variants", str(tmp_path / "variants.txt"), "--output_dir", str(tmp_path / "a"), *FAST]) == 0
    rows = manifest(tmp_path / "a")
    expected = [gen.image_prompt(prompt, variants, 7 + k) for k, prompt in
                enumerate(["a sks tree with green apples"] * 3 + ["a sks tree"] * 2)]
    assert [r["prompt"] for r in rows] == expected
    # drawn from each image's own seed, not cycled: the same prompt alone in a shard, as in the whole run
    assert all(gen.image_prompt("P", variants, s) == gen.image_prompt("P", variants, s) for s in range(20))
    assert len({gen.image_prompt("P", variants, s) for s in range(40)}) == 4
    assert {gen.image_prompt("P", variants, s) for s in range(40)} == {"P in the snow", "P at dusk", "a photo of P",
                                                                       "an orchard at noon"}
    assert gen.main(["--model", f"{models / 'green'}:3:a sks tree with green apples", "--model", f"{models / 'red'}:2",
                     "--prompt_variants", ";".join(variants), "--output_dir", str(tmp_path / "b"), "--shard", "1/2",
                     *FAST]) == 0
    assert {r["file"]: r["prompt"] for r in manifest(tmp_path / "b")} == \
        {r["file"]: r["prompt"] for r in rows if int(r["seed"]) % 2 == 0}  # k odd: seed 7 + k even
    (tmp_path / "prompts.csv").write_text("model,prompt\nred,a sks tree with red apples\n")
    assert gen.main(["--model", f"{models / 'red'}:1", "--prompts", str(tmp_path / "prompts.csv"),
                     "--output_dir", str(tmp_path / "c"), *FAST]) == 0
    assert manifest(tmp_path / "c")[0]["prompt"] == "a sks tree with red apples"


def test_model_specs_and_total_split():
    assert gen.parse_model_spec("models/green:54") == ("models/green", 54, None)
    assert gen.parse_model_spec("C:/w/green:5:a sks tree: in the snow") == ("C:/w/green", 5, "a sks tree: in the snow")
    assert gen.split_total(536, [54, 482], None) == [54, 482]
    assert gen.split_total(10, [1, 1, 1], None) == [4, 3, 3]  # largest remainder, ties to the earlier model
    assert gen.split_total(7, [0, 0], [3, 1]) == [5, 2]  # 5.25 and 1.75: the larger remainder gets the last image
    assert sum(gen.split_total(536, [1] * 7, [3, 5, 8, 13, 1, 2, 40])) == 536


def test_total_is_split_by_the_groups_of_prepare_stats(models, tmp_path, capsys):
    stats = tmp_path / "stats.json"
    stats.write_text('{"groups": {"green": 1, "red": 3}}')
    assert run(models, tmp_path / "out", "--total", "8", "--split_total", str(stats), green=1, red=1) == 0
    assert sorted(r["file"].split("_")[0] for r in manifest(tmp_path / "out")) == ["green"] * 2 + ["red"] * 6
    stats.write_text('{"groups": {"green": 0, "red": 3}}')  # an empty group: its model draws nothing, said so
    assert run(models, tmp_path / "empty", "--total", "2", "--split_total", str(stats), green=1, red=1) == 0
    assert "green: no images" in capsys.readouterr().out
    assert [r["file"] for r in manifest(tmp_path / "empty")] == ["red_00000.png", "red_00001.png"]
    stats.write_text('{"groups": {"pear": 3}}')
    assert run(models, tmp_path / "bad", "--total", "2", "--split_total", str(stats)) == 2
    assert "no group named green, red" in capsys.readouterr().err


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


# ---- the contact sheet -----------------------------------------------------------------------------
def sheet_size(counts, columns):
    """The contact sheet's size for these images per model: per model a header band and rows of
    (gutter, thumbnail, caption strip), as wide as the fullest row with a gutter around each cell."""
    width = gen.GUTTER + min(columns, max(counts)) * (gen.THUMB + gen.GUTTER)
    rows = sum(-(-count // columns) for count in counts)
    return width, len(counts) * gen.HEADER_HEIGHT + rows * (gen.GUTTER + gen.THUMB + gen.CAPTION_HEIGHT)


def test_contact_sheet_has_a_captioned_block_per_model_and_fills_each_cell(tmp_path):
    colours = {"green": (0, 160, 0), "red": (200, 0, 0)}
    rows = []
    for name, count in (("green", 3), ("red", 2)):
        for index in range(count):
            Image.new("RGB", (64, 64), colours[name]).save(tmp_path / f"{name}_{index:05d}.png")
            rows.append({"file": f"{name}_{index:05d}.png"})
    sheet = gen.contact_sheet(gen.sheet_blocks(rows, tmp_path), columns=2)
    assert sheet.size == sheet_size([3, 2], columns=2)
    pixels = np.asarray(sheet, dtype=np.int16)
    thumb, row_height = gen.THUMB, gen.GUTTER + gen.THUMB + gen.CAPTION_HEIGHT

    def cell(block_top, i):  # the THUMB x THUMB pixels of cell i of the block at block_top
        top = block_top + gen.HEADER_HEIGHT + (i // 2) * row_height + gen.GUTTER
        left = gen.GUTTER + (i % 2) * (thumb + gen.GUTTER)
        return pixels[top:top + thumb, left:left + thumb]

    def caption(block_top, i):
        top = block_top + gen.HEADER_HEIGHT + (i // 2) * row_height + gen.GUTTER + thumb
        left = gen.GUTTER + (i % 2) * (thumb + gen.GUTTER)
        return pixels[top:top + gen.CAPTION_HEIGHT, left:left + thumb]

    def dark(region):
        return int((region.max(axis=2) < 100).sum())

    red_top = gen.HEADER_HEIGHT + 2 * row_height  # green's 3 images take 2 rows; red starts a new one
    for block_top, name, count in ((0, "green", 3), (red_top, "red", 2)):
        header = pixels[block_top:block_top + gen.HEADER_HEIGHT]
        assert dark(header) > 50, f"{name}'s header has no text"
        for i in range(count):  # a 64 px image scaled up fills every pixel of its 128 px cell
            assert np.abs(cell(block_top, i) - colours[name]).max() <= 2, (name, i)
            assert dark(caption(block_top, i)) > 20, f"{name} #{i} has no caption"
    assert not np.array_equal(caption(0, 0), caption(0, 1))  # 'green #0' and 'green #1' read differently
    assert (cell(0, 3) == 255).all()  # green's second row has one image: the rest of it stays empty


def test_a_long_model_name_is_cut_to_its_cell():
    from PIL import ImageFont
    font = ImageFont.load_default(size=13)
    text = gen.fitted("stable-diffusion-2-1-fine-tuned-on-green-apples #123", font, gen.THUMB)
    assert text.endswith("…") and font.getlength(text) <= gen.THUMB
    assert gen.fitted("green #1", font, gen.THUMB) == "green #1"


# ---- --help -----------------------------------------------------------------------------------------
def help_text(capsys):
    with pytest.raises(SystemExit):
        gen.parse_args(["--help"])
    return capsys.readouterr().out


def test_help_gives_every_flag_a_help_text_and_at_most_one_default(capsys):
    text = help_text(capsys)
    options = {option: help for entries in help_sections(text).values() for option, help in entries.items()}
    usage_flags = set(re.findall(r"--\w+", text.split("\n\n")[0])) | {"--help"}
    assert usage_flags == {flag for option in options for flag in re.findall(r"--\w+", option)}
    assert len(usage_flags) == 19  # 18 flags and --help
    assert all(options.values()), [option for option, help in options.items() if not help]
    assert all(help.lower().count("default") <= 1 for help in options.values())
    assert "(default: None)" not in text and "(default: )" not in text
    assert options["--num_inference_steps NUM_INFERENCE_STEPS"].endswith("(default: 50)")
    assert "the model's own" in options["--scheduler {ddim,dpmpp,euler,pndm}"]


def test_help_examples_are_valid_commands(capsys):
    examples = help_text(capsys).split("examples:\n", 1)[1].replace("\\\n", " ")
    commands = [shlex.split(line, comments=True) for line in examples.splitlines() if "generate.py" in line]
    assert len(commands) == 4
    for words in commands:
        args = gen.parse_args(words[words.index("generate.py") + 1:])
        assert args.model and args.output_dir
