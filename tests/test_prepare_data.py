import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import evaluate
import prepare_data as pd
from conftest import REPO


def read_manifest(out):
    with open(out / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def label_rows(path):
    return [list(map(float, line.split())) for line in path.read_text().splitlines() if line.strip()]


def make_minneapple(root, photos, test_masks=True):
    """photos: {(split, stem): (mask array, image array or None)} -> a detection/ folder."""
    for (split, stem), (mask, image) in photos.items():
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        if image is None:
            image = np.full(mask.shape + (3,), 90, np.uint8)
            image[mask > 0] = (180, 30, 30)
        Image.fromarray(image).save(root / split / "images" / f"{stem}.png")
        if split == "train" or test_masks:
            (root / split / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(root / split / "masks" / f"{stem}.png")
    return root


def make_yolo(root, count, size=(50, 50), label="0 0.5 0.5 0.2 0.2\n"):
    """A flat YOLO folder: images/p<i>.jpg (grey, width x height = size) with the same label text."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(count):
        Image.fromarray(np.full((size[1], size[0], 3), 100, np.uint8)).save(root / "images" / f"p{i}.jpg")
        (root / "labels" / f"p{i}.txt").write_text(label)
    return root


def simple_mask(height=60, width=40):
    mask = np.zeros((height, width), np.uint8)
    mask[20:30, 10:20] = 5
    return mask


# ---- boxes, crop, resize -------------------------------------------------------------------------
def test_boxes_from_hand_made_mask():
    mask = np.zeros((10, 12), np.uint8)
    mask[1:4, 2:6] = 3              # rows 1-3, cols 2-5
    mask[5:7, 0:2] = 7              # id 7 in two pieces: still one apple
    mask[8, 9:11] = 7
    mask[1:4, 6:8] = 9              # touches id 3
    mask[9, 4] = 12                 # one pixel: zero-size box, dropped as MinneApple does
    boxes, degenerate = pd.boxes_from_mask(mask)
    assert boxes.tolist() == [[2, 1, 5, 3], [0, 5, 10, 8], [6, 1, 7, 3]]  # ids 3, 7, 9
    assert degenerate == 1


def test_boxes_from_empty_mask():
    boxes, degenerate = pd.boxes_from_mask(np.zeros((5, 5), np.uint8))
    assert boxes.shape == (0, 4) and degenerate == 0


def test_crop_resize_arithmetic_near_the_crop_edge():
    left, top = pd.centre_crop_window(720, 1280, 720)
    assert (left, top) == (0, 280)
    boxes = [[100, 260, 140, 300],    # 20 of 40 rows inside: exactly half visible, kept
             [200, 990, 240, 1010],   # bottom edge: 10 of 20 rows inside, kept
             [300, 250, 340, 290],    # 10 of 40 rows inside: dropped
             [0, 0, 10, 10]]          # outside the crop: dropped
    kept, keep = pd.crop_resize_boxes(boxes, left, top, 720, 768, min_visible=0.5)
    scale = 768 / 720
    np.testing.assert_allclose(kept, np.array([[100, 0, 140, 20], [200, 710, 240, 720]]) * scale)
    assert keep.tolist() == [True, True, False, False]
    kept, keep = pd.crop_resize_boxes(boxes, left, top, 720, 768, min_visible=0.6)
    assert len(kept) == 0 and (~keep).sum() == 4


def test_mask_boxes_end_at_the_crops_last_pixel():
    # x2/y2 of a mask box is its last pixel: an apple cut by the crop ends on pixel 719, like one
    # that just fits, not on 720.
    kept, _ = pd.crop_resize_boxes([[100, 900, 120, 1010], [200, 900, 220, 999]], 0, 280, 720, 720,
                                   min_visible=0.5, pixel_boxes=True)
    assert kept[:, 3].tolist() == [719, 719]
    kept, _ = pd.crop_resize_boxes([[100, 900, 120, 1010]], 0, 280, 720, 720, min_visible=0.5)
    assert kept[:, 3].tolist() == [720]


def label_rows_from_text(text):
    return [list(map(float, line.split())) for line in text.splitlines()]


def test_yolo_label_text_normalises_centre_and_size():
    rows = label_rows_from_text(pd.yolo_label_text(np.array([[10, 20, 30, 60], [0, 0, 50, 200]]), [0, 2], 100, 200))
    assert rows == [[0, 0.2, 0.2, 0.2, 0.2], [2, 0.25, 0.5, 0.5, 1.0]]


def test_min_visible_drop_is_counted(tmp_path):
    mask = np.zeros((60, 40), np.uint16)   # a 16-bit mask; crop 40x40 at top 10
    mask[20:30, 10:20] = 1                 # inside
    mask[3:13, 25:35] = 4000               # rows 3..12 -> y -7..2, clipped 0..2: 2/9 visible, dropped
    mask[42:52, 5:15] = 60000              # rows 42..51 -> y 32..41, clipped 32..39: 7/9, kept
    src = make_minneapple(tmp_path / "detection", {("train", f"p{i}"): (mask, None) for i in range(5)})
    out = tmp_path / "out"
    assert pd.main(["--source", "minneapple", "--input", str(src), "--output_dir", str(out),
                    "--resolution", "80", "--num_val", "1", "--num_instances", "1", "--workers", "1"]) == 0
    rows = read_manifest(out)
    assert [(r["boxes_kept"], r["boxes_dropped"]) for r in rows] == [("2", "1")] * 5
    stats = json.loads((out / "stats.json").read_text())
    assert stats["boxes_dropped"] == {"train": 4, "val": 1, "test": 0}
    label = next((out / "real" / "train" / "labels").glob("*.txt"))
    cx, cy, w, h = label_rows(label)[0][1:]
    assert (cx, cy, w, h) == pytest.approx([0.3625, 0.3625, 0.225, 0.225])  # (10, 10, 19, 19) in the crop, /40


# ---- colour, diversity, splits --------------------------------------------------------------------
def test_red_fraction_of_plain_colours():
    image = np.zeros((4, 4, 3), np.uint8)
    image[:, :2] = (200, 20, 20)
    image[:, 2:] = (60, 180, 40)
    everything = np.ones((4, 4), bool)
    assert pd.red_fraction(image, everything) == pytest.approx(0.5)
    assert pd.colour_label(pd.red_fraction(image, everything), 0.4) == "red"
    assert pd.colour_label(pd.red_fraction(image, np.zeros((4, 4), bool)), 0.4) == "none"


def test_farthest_point_sampling_spreads():
    points = np.array([[0.0], [0.1], [0.2], [5.0], [10.0], [9.9]])
    picks = pd.farthest_point_sampling(points, 3, seed=0)
    assert sorted(points[picks, 0].tolist())[0] < 0.3 and sorted(points[picks, 0].tolist())[-1] > 9.8
    assert any(abs(points[p, 0] - 5.0) < 1e-9 for p in picks)
    assert len(pd.farthest_point_sampling(points, 10, seed=0)) == 6


def test_sequence_split_keeps_sequences_whole():
    stems = [f"2015_seq{s}_image{f}" for s in "ABCDE" for f in range(1, 5)]
    assert pd.sequence_of("20150919_174151_image12") == "20150919_174151"
    val = pd.choose_val(stems, 6, seed=3, split_by="sequence")
    sequences = {pd.sequence_of(s) for s in val}
    assert len(val) == 8 and all(f"{seq}_image{f}" in val for seq in sequences for f in range(1, 5))
    random_val = pd.choose_val(stems, 6, seed=3, split_by="random")
    assert len(random_val) == 6 and random_val == pd.choose_val(stems, 6, seed=3, split_by="random")
    with pytest.raises(pd.InputError, match="no training photos"):
        pd.choose_val(stems, 20, seed=0, split_by="random")


# ---- synthetic source, end to end ----------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "out"
    assert pd.main(["--source", "synthetic", "--num_images", "12", "--output_dir", str(out),
                    "--resolution", "96", "--num_instances", "2", "--workers", "2"]) == 0
    return out


def test_synthetic_source_is_like_minneapple_masks(synthetic_out):
    masks = sorted((synthetic_out / "synthetic_source" / "detection").glob("*/masks/*.png"))
    assert len(masks) == 12
    arrays = [np.asarray(Image.open(m)) for m in masks]
    assert all(a.shape == (1280, 720) for a in arrays)
    ids = [np.unique(a)[1:] for a in arrays]
    assert all(i.max() > len(i) for i in ids), "ids have gaps"
    assert any((a[:, 0] > 0).any() or (a[:, -1] > 0).any() for a in arrays), "apples cut by the border"
    touching = [((a[:, 1:] != a[:, :-1]) & (a[:, 1:] > 0) & (a[:, :-1] > 0)).any() for a in arrays]
    assert any(touching), "apples that touch"


def test_synthetic_end_to_end_contract(synthetic_out):
    out = synthetic_out
    rows = read_manifest(out)
    assert len(rows) == 12
    stats = json.loads((out / "stats.json").read_text())
    assert sum(stats["photos"].values()) == 12 and stats["photos"]["test"] == 4
    for split in pd.SPLITS:
        images = sorted(p.stem for p in (out / "real" / split / "images").iterdir())
        labels = sorted(p.stem for p in (out / "real" / split / "labels").iterdir())
        assert images == labels and len(images) == stats["photos"][split]
        assert all(Image.open(p).size == (96, 96) for p in (out / "real" / split / "images").iterdir())
    for row in rows:
        label = out / row["file"].replace("/images/", "/labels/").replace(".png", ".txt")
        assert len(label_rows(label)) == int(row["boxes_kept"]) > 0
        assert row["colour"] == ("green" if "_green_" in row["file"] else "red")
    data = yaml.safe_load((out / "real.yaml").read_text())
    assert "path" not in data and data["names"] == {0: "apple"}  # entries count from the YAML's folder
    assert all((out / data[s]).is_dir() for s in ("train", "val", "test"))
    train_files = {r["file"].split("/")[-1] for r in rows if r["split"] == "train"}
    for colour in pd.COLOURS:
        picked = sorted(p.name for p in (out / "instances" / colour).iterdir())
        assert len(picked) == 2 and set(picked) <= train_files and all(f"_{colour}_" in p for p in picked)


def test_bare_share_makes_trees_without_apples_with_empty_labels(tmp_path):
    assert [pd.synthetic_colour(i, 1 / 3) for i in range(6)] == ["green", "red", "none", "green", "red", "none"]
    assert pd.main(["--source", "synthetic", "--num_images", "9", "--bare_share", "0.34", "--output_dir",
                    str(tmp_path), "--resolution", "64", "--num_instances", "1", "--workers", "1"]) == 0
    rows = read_manifest(tmp_path)
    bare = [r for r in rows if "_none_" in r["file"]]
    assert len(bare) == 3 and all(r["colour"] == "none" and r["boxes_kept"] == "0" for r in bare)
    for row in bare:
        label = tmp_path / row["file"].replace("/images/", "/labels/").replace(".png", ".txt")
        assert label.read_text() == ""
    photo = np.asarray(Image.open(tmp_path / bare[0]["file"]))
    assert photo[32, 32, 1] > photo[32, 32, 0]  # a green canopy where the apples would be


def test_rerun_is_a_no_op_and_changed_arguments_rebuild(tmp_path, capsys):
    args = ["--source", "synthetic", "--num_images", "6", "--output_dir", str(tmp_path),
            "--resolution", "64", "--num_instances", "1", "--workers", "1"]
    assert pd.main(args) == 0
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert pd.main(args) == 0
    assert "up to date" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert pd.main(args + ["--num_val", "2"]) == 0
    assert len(list((tmp_path / "real" / "val" / "images").iterdir())) == 2
    assert len(list((tmp_path / "real" / "train" / "images").iterdir())) == 2
    assert not (tmp_path / ".prepare_tmp").exists()


# ---- orchard-real: the yolo source on real photos ------------------------------------------------
@pytest.fixture(scope="module")
def orchard_out(tmp_path_factory):
    from conftest import shared_path
    source = shared_path("data/orchard-real")
    out = tmp_path_factory.mktemp("orchard") / "out"
    assert pd.main(["--source", "yolo", "--input", str(source), "--output_dir", str(out),
                    "--resolution", "128", "--workers", "2"]) == 0
    return source, out


def test_orchard_real_keeps_splits_and_every_box(orchard_out):
    source, out = orchard_out
    with open(source / "manifest.csv", newline="") as handle:
        truth = {r["file"].rsplit(".", 1)[0]: r for r in csv.DictReader(handle)}
    rows = read_manifest(out)
    assert len(rows) == 96
    stats = json.loads((out / "stats.json").read_text())
    assert stats["photos"] == {"train": 48, "val": 16, "test": 32}
    for row in rows:
        stem = row["file"].split("/")[-1].rsplit(".", 1)[0]
        assert row["split"] == truth[stem]["split"]
        assert int(row["boxes_kept"]) + int(row["boxes_dropped"]) == int(truth[stem]["n_boxes"])
    assert sum(stats["boxes_dropped"].values()) == 0  # 640x640 photos: the crop is the whole photo


def test_orchard_real_colour_agrees_with_the_source(orchard_out):
    source, out = orchard_out
    with open(source / "manifest.csv", newline="") as handle:
        truth = {r["file"].rsplit(".", 1)[0]: r["color"] for r in csv.DictReader(handle)}
    rows = read_manifest(out)
    agree = [r["colour"] == truth[r["file"].split("/")[-1].rsplit(".", 1)[0]] for r in rows]
    assert np.mean(agree) >= 0.8, f"colour agreement {np.mean(agree):.2f}"


def test_orchard_real_instances_are_diverse_and_deterministic(orchard_out, tmp_path):
    source, out = orchard_out
    rows = [r for r in read_manifest(out) if r["split"] == "train"]
    for colour in pd.COLOURS:
        picked = sorted(p.name for p in (out / "instances" / colour).iterdir())
        expected = sorted(r["file"].split("/")[-1] for r in rows if r["instance"] == colour)
        assert picked == expected and len(picked) == 10
    again = tmp_path / "again"
    assert pd.main(["--source", "yolo", "--input", str(source), "--output_dir", str(again),
                    "--resolution", "128", "--workers", "1"]) == 0
    for colour in pd.COLOURS:
        assert sorted(p.name for p in (again / "instances" / colour).iterdir()) == \
            sorted(p.name for p in (out / "instances" / colour).iterdir())

    for colour in pd.COLOURS:  # the picks are more spread out than random photos of that colour
        photos = [r for r in rows if r["colour"] == colour]
        features = np.array([pd.diversity_embedding(Image.open(out / r["file"]).convert("RGB")) for r in photos])
        scaled = (features - features.mean(0)) / (features.std(0) + 1e-9)

        def min_pairwise(indices, scaled=scaled):
            sub = scaled[indices]
            d = np.linalg.norm(sub[:, None] - sub[None], axis=-1)
            return d[np.triu_indices(len(indices), 1)].min()

        picked = [i for i, r in enumerate(photos) if r["instance"] == colour]
        rng = np.random.default_rng(0)
        random_spreads = [min_pairwise(rng.choice(len(photos), len(picked), replace=False)) for _ in range(200)]
        assert min_pairwise(picked) > np.percentile(random_spreads, 95), colour


# ---- unlabelled and COCO-labelled test photos ----------------------------------------------------
def test_unlabelled_test_photos_are_written_without_labels(tmp_path):
    photos = {("train", f"t{i}"): (simple_mask(), None) for i in range(3)}
    photos[("test", "q0")] = (simple_mask(), None)
    src = make_minneapple(tmp_path / "detection", photos, test_masks=False)
    out = tmp_path / "out"
    assert pd.main(["--source", "minneapple", "--input", str(src), "--output_dir", str(out),
                    "--resolution", "40", "--num_val", "1", "--workers", "1"]) == 0
    assert (out / "real" / "test" / "images" / "q0.png").exists()
    assert not (out / "real" / "test" / "labels" / "q0.txt").exists()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["unlabelled_test_photos"] == 1 and any("no labels" in w for w in stats["warnings"])
    assert [r["labelled"] for r in read_manifest(out) if r["split"] == "test"] == ["no"]


def test_test_annotations_from_coco_json(tmp_path):
    photos = {("train", f"t{i}"): (simple_mask(), None) for i in range(3)}
    photos[("test", "q0")] = (simple_mask(), None)
    src = make_minneapple(tmp_path / "detection", photos, test_masks=False)
    coco = {"images": [{"id": 7, "file_name": "q0.png", "width": 40, "height": 60}],
            "annotations": [{"id": 1, "image_id": 7, "bbox": [10, 20, 10, 10], "category_id": 1}],
            "categories": [{"id": 1, "name": "apple"}]}
    (tmp_path / "test.json").write_text(json.dumps(coco))
    out = tmp_path / "out"
    assert pd.main(["--source", "minneapple", "--input", str(src), "--test_annotations",
                    str(tmp_path / "test.json"), "--output_dir", str(out), "--resolution", "40",
                    "--num_val", "1", "--workers", "1"]) == 0
    rows = label_rows(out / "real" / "test" / "labels" / "q0.txt")
    assert rows == [pytest.approx([0, 0.375, 0.375, 0.25, 0.25])]  # (10, 10, 20, 20) in the crop at top 10


# ---- bad input -------------------------------------------------------------------------------------
def run_bad(tmp_path, capsys, src, *extra, source="minneapple"):
    code = pd.main(["--source", source, "--input", str(src), "--output_dir", str(tmp_path / "out"),
                    "--resolution", "40", "--num_val", "1", "--workers", "1", *extra])
    return code, capsys.readouterr().err


def three_good(root):
    return make_minneapple(root, {("train", f"good{i}"): (simple_mask(), None) for i in range(3)})


def test_missing_mask_is_named_and_skip_bad_lists_it(tmp_path, capsys):
    src = three_good(tmp_path / "detection")
    Image.fromarray(np.zeros((60, 40, 3), np.uint8)).save(src / "train" / "images" / "lonely.png")
    code, err = run_bad(tmp_path, capsys, src)
    assert code == 2 and "lonely.png" in err and "masks/lonely.png" in err
    assert not (tmp_path / "out" / ".prepare_tmp").exists()
    code, err = run_bad(tmp_path, capsys, src, "--skip_bad")
    assert code == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert len(stats["skipped"]) == 1 and "lonely.png" in stats["skipped"][0]
    assert len(read_manifest(tmp_path / "out")) == 3


def test_mask_of_another_size_is_named(tmp_path, capsys):
    src = three_good(tmp_path / "detection")
    Image.fromarray(np.zeros((50, 40), np.uint8)).save(src / "train" / "masks" / "good1.png")
    code, err = run_bad(tmp_path, capsys, src)
    assert code == 2 and "masks/good1.png" in err and "40x50" in err and "40x60" in err


def test_colour_mask_is_refused(tmp_path, capsys):
    src = three_good(tmp_path / "detection")
    Image.fromarray(np.zeros((60, 40, 3), np.uint8)).save(src / "train" / "masks" / "good2.png")
    code, err = run_bad(tmp_path, capsys, src)
    assert code == 2 and "good2.png" in err and "single-channel" in err


def test_unreadable_image_is_named(tmp_path, capsys):
    src = three_good(tmp_path / "detection")
    (src / "train" / "images" / "good0.png").write_bytes(b"not a png at all")
    code, err = run_bad(tmp_path, capsys, src)
    assert code == 2 and "good0.png" in err and "unreadable" in err


def test_empty_folder_and_wrong_layout(tmp_path, capsys):
    (tmp_path / "detection" / "train" / "images").mkdir(parents=True)
    (tmp_path / "detection" / "train" / "masks").mkdir()
    code, err = run_bad(tmp_path, capsys, tmp_path / "detection")
    assert code == 2 and "train/images" in err and "no images" in err
    (tmp_path / "flat").mkdir()
    code, err = run_bad(tmp_path, capsys, tmp_path / "flat")
    assert code == 2 and "wrong layout" in err and "detection/" in err
    code, err = run_bad(tmp_path, capsys, tmp_path / "flat", source="yolo")
    assert code == 2 and "wrong layout" in err and "labels/" in err


def test_bad_yolo_label_line_and_missing_label_file(tmp_path, capsys):
    root = make_yolo(tmp_path / "yolo", 3)
    (root / "labels" / "p1.txt").write_text("0 0.5 0.5 0.2 0.2\n0 1.5 0.5 0.2 0.2\n")
    code, err = run_bad(tmp_path, capsys, root, source="yolo")
    assert code == 2 and "p1.txt:2" in err
    (root / "labels" / "p1.txt").unlink()
    code, err = run_bad(tmp_path, capsys, root, source="yolo")
    assert code == 2 and "p1.jpg" in err and "no label file" in err


def test_command_line_error_is_a_message_not_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "prepare_data.py"), "--source", "minneapple",
                             "--input", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "wrong layout" in result.stderr


def test_unreadable_label_and_unnamed_class_are_named(tmp_path, capsys):
    root = make_yolo(tmp_path / "yolo", 3)
    (root / "labels" / "p2.txt").write_bytes(b"\xff\xfe0 0.5 0.5 0.1 0.1\n")
    code, err = run_bad(tmp_path, capsys, root, source="yolo")
    assert code == 2 and "p2.txt" in err and "unreadable" in err
    (root / "labels" / "p2.txt").write_text("3 0.5 0.5 0.2 0.2\n")
    code, err = run_bad(tmp_path, capsys, root, source="yolo")
    assert code == 2 and "p2.txt:1" in err and "names no classes" in err and "only class 0, apple" in err
    (root / "classes.txt").write_text("pear\nplum\n")
    code, err = run_bad(tmp_path, capsys, root, source="yolo")
    assert code == 2 and "p2.txt:1" in err and "0..1 (pear, plum)" in err


def test_yolo_classes_come_from_data_yaml_or_classes_txt_and_classes_selects_and_orders(tmp_path, capsys):
    root = make_yolo(tmp_path / "yolo", 5, size=(80, 60), label="0 0.5 0.5 0.25 0.25\n1 0.5 0.5 0.1 0.1\n")
    (root / "labels" / "p0.txt").write_text("1 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n")
    (root / "classes.txt").write_text("green_apple\nred_apple\n")  # Label Studio's YOLO export
    code, _ = run_bad(tmp_path, capsys, root, "--num_val", "2", source="yolo")
    out = tmp_path / "out"
    stats = json.loads((out / "stats.json").read_text())
    assert code == 0 and stats["classes"] == ["green_apple", "red_apple"]
    totals = {name: sum(stats["boxes_per_class"][s][name] for s in ("train", "val")) for name in stats["classes"]}
    assert totals == {"green_apple": 4, "red_apple": 6}
    for data_yaml in ("real.yaml", "fewshot.yaml"):
        assert yaml.safe_load((out / data_yaml).read_text())["names"] == {0: "green_apple", 1: "red_apple"}
    p0 = next((out / "real").glob("*/labels/p0.txt"))
    assert [row[0] for row in label_rows(p0)] == [1, 1]
    assert {r["file"].split("/")[-1]: r["boxes_per_class"] for r in read_manifest(out)}["p0.png"] == "red_apple=2"

    (root / "data.yaml").write_text("names:\n  0: green\n  1: red\n")  # data.yaml wins over classes.txt
    code, _ = run_bad(tmp_path, capsys, root, "--num_val", "2", "--classes", "red,green", source="yolo")
    assert code == 0 and yaml.safe_load((out / "real.yaml").read_text())["names"] == {0: "red", 1: "green"}
    assert [row[0] for row in label_rows(p0)] == [0, 0]
    code, _ = run_bad(tmp_path, capsys, root, "--num_val", "2", "--classes", "red", source="yolo")
    stats = json.loads((out / "stats.json").read_text())
    assert code == 0 and sum(stats["boxes_other_classes"].values()) == 4 and sum(stats["boxes_kept"].values()) == 6
    assert all(row[0] == 0 for p in (out / "real").glob("*/labels/*.txt") for row in label_rows(p))
    code, err = run_bad(tmp_path, capsys, root, "--classes", "pear", source="yolo")
    assert code == 2 and "--classes 'pear'" in err and "green, red" in err
    (root / "data.yaml").write_text("names:\n  0: green\n  2: red\n")
    code, err = run_bad(tmp_path, capsys, root, source="yolo")
    assert code == 2 and "data.yaml" in err and "0..1" in err


def test_flat_yolo_layout_becomes_train_and_val(tmp_path, capsys):
    root = make_yolo(tmp_path / "yolo", 5, size=(80, 60), label="0 0.5 0.5 0.25 0.25\n0 0.02 0.5 0.04 0.1\n")
    code, err = run_bad(tmp_path, capsys, root, "--num_val", "2", source="yolo")
    assert code == 0 and "no test photos" in err
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["photos"] == {"train": 3, "val": 2, "test": 0}
    # 80x60 -> centre crop 60x60 from x=10: the box at x 0..3.2 falls outside, the other is kept
    assert stats["boxes_kept"] == {"train": 3, "val": 2, "test": 0} and stats["boxes_dropped"]["train"] == 3
    rows = label_rows(next((tmp_path / "out" / "real" / "train" / "labels").glob("*.txt")))
    assert rows == [pytest.approx([0, 0.5, 0.5, 20 / 60, 15 / 60])]


def test_skip_bad_chooses_val_among_the_good_photos(tmp_path, capsys):
    photos = {("train", f"good{i}"): (simple_mask(), None) for i in range(6)}
    src = make_minneapple(tmp_path / "detection", photos)
    Image.fromarray(np.zeros((50, 40), np.uint8)).save(src / "train" / "masks" / "good3.png")
    code, _ = run_bad(tmp_path, capsys, src, "--skip_bad")     # --num_val 1
    assert code == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["photos"] == {"train": 4, "val": 1, "test": 0}
    assert len(stats["skipped"]) == 1 and "good3.png" in stats["skipped"][0]


def test_one_bit_mask_is_refused(tmp_path, capsys):
    src = three_good(tmp_path / "detection")
    Image.fromarray(simple_mask() > 0).save(src / "train" / "masks" / "good1.png")
    code, err = run_bad(tmp_path, capsys, src)
    assert code == 2 and "good1.png" in err and "instance-id" in err


def test_test_annotations_must_fit_the_test_photos(tmp_path, capsys):
    photos = {("train", f"t{i}"): (simple_mask(), None) for i in range(3)}
    photos[("test", "q0")] = (simple_mask(), None)
    src = make_minneapple(tmp_path / "detection", photos, test_masks=False)
    coco = {"images": [{"id": 1, "file_name": "other.png", "width": 40, "height": 60}], "annotations": []}
    (tmp_path / "test.json").write_text(json.dumps(coco))
    code, err = run_bad(tmp_path, capsys, src, "--test_annotations", str(tmp_path / "test.json"))
    assert code == 2 and "none of its 1 images" in err
    coco["images"][0].update(file_name="q0.png", width=41)
    (tmp_path / "test.json").write_text(json.dumps(coco))
    code, err = run_bad(tmp_path, capsys, src, "--test_annotations", str(tmp_path / "test.json"))
    assert code == 2 and "q0.png" in err and "41x60" in err
    (src / "test" / "masks").mkdir()
    code, err = run_bad(tmp_path, capsys, src, "--test_annotations", str(tmp_path / "test.json"))
    assert code == 2 and "give one of them" in err


def test_flags_that_do_not_apply_are_refused(tmp_path):
    for argv in (["--source", "synthetic", "--input", str(tmp_path)],
                 ["--source", "minneapple", "--input", str(tmp_path), "--num_images", "5"],
                 ["--source", "yolo", "--input", str(tmp_path), "--bare_share", "0.3"],
                 ["--source", "synthetic", "--bare_share", "1"],
                 ["--source", "minneapple", "--input", str(tmp_path), "--num_val", "0"],
                 ["--source", "yolo", "--input", str(tmp_path), "--test_annotations", "x.json"],
                 ["--source", "yolo", "--input", str(tmp_path), "--annotations", "x.json"]):
        with pytest.raises(SystemExit) as exit_info:
            pd.parse_args([*argv, "--output_dir", str(tmp_path / "out")])
        assert exit_info.value.code == 2


def test_a_16_bit_photo_keeps_its_content_scaled_to_8_bits(tmp_path, capsys):
    root = make_yolo(tmp_path / "yolo", 3, size=(40, 40))
    grey16 = (np.arange(40 * 40).reshape(40, 40) * 40).astype(np.uint16)  # 0 .. 63960
    Image.fromarray(grey16).save(root / "images" / "p0.png")
    (root / "images" / "p0.jpg").unlink()
    assert Image.open(root / "images" / "p0.png").mode == "I;16"
    code, _ = run_bad(tmp_path, capsys, root, source="yolo")
    assert code == 0
    written = next((tmp_path / "out" / "real").glob("*/images/p0.png"))
    pixels = np.asarray(Image.open(written).convert("RGB"))
    expected = np.round(grey16 / 257).astype(np.uint8)
    assert all(np.abs(pixels[:, :, c].astype(int) - expected).max() <= 1 for c in range(3))
    assert pixels.min() == 0 and pixels.max() == 249  # 63960 / 257, not PIL's clip to white


def test_an_output_folder_holding_the_input_or_unusable_is_one_line(tmp_path, capsys):
    root = make_yolo(tmp_path / "yolo", 4)
    assert run_bad(tmp_path, capsys, root, source="yolo")[0] == 0
    out = tmp_path / "out"
    before = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*"))
    (tmp_path / "taken").write_text("a file")
    for source, output, problem in ((out / "real", out, "overlaps the input folder"),
                                    (root, root / "prepared", "overlaps the input folder"),
                                    (root, tmp_path / "taken", "is a file, not a folder"),
                                    (root, tmp_path / "taken" / "below", "cannot be created or written")):
        code = pd.main(["--source", "yolo", "--input", str(source), "--output_dir", str(output), "--resolution", "40",
                        "--num_val", "1", "--workers", "1"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and problem in err[0] and f"--output_dir {output.resolve()}" in err[0]
    assert sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*")) == before
    assert not (root / "prepared").exists() and (tmp_path / "taken").read_text() == "a file"
    # a source folder beside what prepare writes, inside its output folder, is fine
    assert pd.main(["--source", "yolo", "--input", str(root), "--output_dir", str(tmp_path), "--resolution", "40",
                    "--num_val", "1", "--workers", "1"]) == 0


# ---- the COCO source ---------------------------------------------------------------------------------
# split: [(file name, (width, height), apple colour, boxes x1 y1 x2 y2 in pixels)]; boxes inside the
# photo (YOLO labels are 0..1), some cut or dropped by the centre crop, one photo without apples.
HANDMADE = {
    "train": [("a0.png", (64, 48), "red", [[3.5, 4.25, 20.75, 30.5], [50.2, 10.1, 63.9, 47.0]]),
              ("a1.jpg", (48, 64), "green", [[0.0, 0.0, 10.3, 12.7], [7.1, 20.9, 40.6, 44.4]]),
              ("a2.png", (50, 50), "red", []),
              ("a3.png", (60, 45), "green", [[10.0, 5.0, 30.0, 25.0], [1.0, 30.0, 9.0, 44.0]]),
              ("a4.png", (40, 40), "red", [[5.5, 5.5, 35.25, 35.25]])],
    "val": [("b0.png", (64, 48), "green", [[20.0, 10.0, 40.0, 30.0]]),
            ("b1.png", (48, 48), "red", [[2.0, 2.0, 12.0, 12.0], [30.0, 30.0, 46.0, 47.5]])],
    "test": [("c0.png", (50, 60), "red", [[10.0, 15.0, 30.0, 35.0]]),
             ("c1.png", (45, 45), "green", [])],
}
COLOUR_RGB = {"red": (180, 30, 30), "green": (70, 170, 40)}


def draw_photo(path, size, colour, boxes):
    """A grey photo with each box filled in its apple colour."""
    image = np.full((size[1], size[0], 3), 90, np.uint8)
    for x1, y1, x2, y2 in boxes:
        image[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] = COLOUR_RGB[colour]
    Image.fromarray(image).save(path, **({"quality": 95} if path.suffix == ".jpg" else {}))


def coco_json(photos, file_prefix="", categories=({"id": 1, "name": "apple"},), category_id=1):
    """A COCO detection dict of photos [(name, (width, height), _, boxes)] (bbox = x, y, width, height)."""
    images, annotations = [], []
    for image_id, (name, (width, height), _, boxes) in enumerate(photos, start=1):
        images.append({"id": image_id, "file_name": file_prefix + name, "width": width, "height": height})
        annotations += [{"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
                        for x1, y1, x2, y2 in boxes]
    return {"images": images, "annotations": annotations, "categories": list(categories)}


def yolo_line(box, width, height):
    x1, y1, x2, y2 = box
    return f"0 {(x1 + x2) / 2 / width!r} {(y1 + y2) / 2 / height!r} {(x2 - x1) / width!r} {(y2 - y1) / height!r}\n"


def make_handmade_pair(root, splits=HANDMADE):
    """The same photos and boxes as a YOLO folder root/yolo/{split}/{images,labels} and as a Roboflow
    COCO export root/coco/{train,valid,test}/ (photos + _annotations.coco.json) -> (yolo, coco)."""
    for split, photos in splits.items():
        yolo_split, coco_split = root / "yolo" / split, root / "coco" / ("valid" if split == "val" else split)
        for folder in (yolo_split / "images", yolo_split / "labels", coco_split):
            folder.mkdir(parents=True)
        for name, size, colour, boxes in photos:
            draw_photo(yolo_split / "images" / name, size, colour, boxes)
            (coco_split / name).write_bytes((yolo_split / "images" / name).read_bytes())
            (yolo_split / "labels" / f"{Path(name).stem}.txt").write_text(
                "".join(yolo_line(box, *size) for box in boxes))
        (coco_split / "_annotations.coco.json").write_text(json.dumps(coco_json(photos)))
    return root / "yolo", root / "coco"


def prepare_args(source, input_dir, out, *extra):
    return ["--source", source, "--input", str(input_dir), "--output_dir", str(out), "--resolution", "32",
            "--num_instances", "1", "--workers", "1", *extra]


def assert_same_outputs(out_a, out_b):
    """Two prepare outputs hold the same photos, instances and few-shot list, and labels equal to 1e-6."""
    def listing(out):
        return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                      if p.is_file() and p.name != "stats.json")
    assert listing(out_a) == listing(out_b)
    for relative in listing(out_a):
        a, b = out_a / relative, out_b / relative
        if relative.endswith(".txt") and "/labels/" in relative:
            rows_a, rows_b = label_rows(a), label_rows(b)
            assert len(rows_a) == len(rows_b), relative
            # 6 printed decimals: a value on a rounding tie may print either way in its last digit
            np.testing.assert_allclose(np.array(rows_a).reshape(-1, 5), np.array(rows_b).reshape(-1, 5),
                                       rtol=0, atol=1e-6 + 1e-12, err_msg=relative)
        elif relative in ("fewshot.txt", "fewshot.yaml", "real.yaml"):
            assert a.read_text().replace(str(out_a), "OUT") == b.read_text().replace(str(out_b), "OUT")
        elif relative == "manifest.csv":
            def rows(out):
                return [{k: v for k, v in r.items() if k != "source_file"} for r in read_manifest(out)]
            assert rows(out_a) == rows(out_b)
        else:
            assert a.read_bytes() == b.read_bytes(), relative
    stats_a, stats_b = (json.loads((out / "stats.json").read_text()) for out in (out_a, out_b))
    for key in ("photos", "boxes_kept", "boxes_dropped", "colours", "instances", "skipped"):
        assert stats_a[key] == stats_b[key], key


def test_coco_boxes_equal_yolo_boxes_on_a_hand_made_set(tmp_path):
    yolo, coco = make_handmade_pair(tmp_path)
    assert pd.main(prepare_args("yolo", yolo, tmp_path / "from_yolo")) == 0
    assert pd.main(prepare_args("coco", coco, tmp_path / "from_coco")) == 0
    assert_same_outputs(tmp_path / "from_yolo", tmp_path / "from_coco")
    stats = json.loads((tmp_path / "from_coco" / "stats.json").read_text())
    assert stats["photos"] == {"train": 5, "val": 2, "test": 2}
    assert stats["boxes_dropped"]["train"] > 0
    assert (tmp_path / "from_coco" / "real" / "test" / "labels" / "c1.txt").read_text() == ""

    # one JSON for a flat folder (file_name with CVAT's folder prefix), val chosen by --num_val
    flat = tmp_path / "flat"
    flat.mkdir()
    for name, *_ in HANDMADE["train"]:
        (flat / name).write_bytes((yolo / "train" / "images" / name).read_bytes())
    flat_json = coco_json(HANDMADE["train"], file_prefix="images/train/")
    flat_json["images"][0].update(width=None, height=None)  # as Label Studio 1.23.2 writes some: the photo has the size
    (tmp_path / "flat.json").write_text(json.dumps(flat_json))
    flat_yolo = tmp_path / "flat_yolo"
    shutil.copytree(yolo / "train", flat_yolo)
    assert pd.main(prepare_args("yolo", flat_yolo, tmp_path / "flat_from_yolo", "--num_val", "2")) == 0
    assert "test" not in yaml.safe_load((tmp_path / "flat_from_yolo" / "real.yaml").read_text())  # no test photos
    assert evaluate.main(["datasets", "--data", f"real={tmp_path / 'flat_from_yolo' / 'real.yaml'}",
                          "--out_dir", str(tmp_path / "flat_datasets")]) == 0
    with open(tmp_path / "flat_datasets" / "datasets.csv", newline="") as handle:
        assert [(r["split"], r["images"]) for r in csv.DictReader(handle)] == [("train", "3"), ("val", "2")]
    assert pd.main(prepare_args("coco", flat, tmp_path / "flat_from_coco", "--num_val", "2",
                                "--annotations", str(tmp_path / "flat.json"))) == 0
    assert_same_outputs(tmp_path / "flat_from_yolo", tmp_path / "flat_from_coco")


def orchard_as_coco(source, root):
    """orchard-real's YOLO labels as COCO: root/{split}/ with links to the photos and one JSON."""
    for split_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        target = root / split_dir.name
        target.mkdir(parents=True)
        images, annotations = [], []
        for image_id, photo in enumerate(sorted((split_dir / "images").iterdir()), start=1):
            (target / photo.name).symlink_to(photo)
            with Image.open(photo) as image:
                width, height = image.size
            images.append({"id": image_id, "file_name": photo.name, "width": width, "height": height})
            for _, cx, cy, w, h in label_rows(split_dir / "labels" / f"{photo.stem}.txt"):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 0,
                                    "bbox": [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]})
        (target / f"instances_{split_dir.name}.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": [{"id": 0, "name": "apple"}]}))
    return root


def test_orchard_real_through_coco_equals_through_yolo(orchard_out, tmp_path):
    source, out = orchard_out
    coco = orchard_as_coco(source, tmp_path / "coco")
    assert pd.main(["--source", "coco", "--input", str(coco), "--output_dir", str(tmp_path / "out"),
                    "--resolution", "128", "--workers", "2"]) == 0
    assert_same_outputs(out, tmp_path / "out")
    assert sum(json.loads((out / "stats.json").read_text())["boxes_kept"].values()) > 0


def run_coco(tmp_path, capsys, input_dir, *extra):
    code = pd.main(prepare_args("coco", input_dir, tmp_path / "out", "--num_val", "1", *extra))
    return code, capsys.readouterr().err


def test_coco_categories_are_the_classes_matched_by_name(tmp_path, capsys):
    _, coco = make_handmade_pair(tmp_path, {"train": HANDMADE["train"], "val": HANDMADE["val"]})
    json_file, val_json = coco / "train" / "_annotations.coco.json", coco / "valid" / "_annotations.coco.json"
    roboflow = [{"id": 0, "name": "apples-xyz", "supercategory": "none"},
                {"id": 1, "name": "fruit", "supercategory": "apples-xyz"}]
    json_file.write_text(json.dumps(coco_json(HANDMADE["train"], categories=roboflow)))
    val_json.write_text(json.dumps(coco_json(HANDMADE["val"], categories=roboflow)))
    code, err = run_coco(tmp_path, capsys, coco)
    out = tmp_path / "out"
    assert code == 0 and "apples-xyz" in err and "left out" in err  # Roboflow's unused supercategory
    assert yaml.safe_load((out / "real.yaml").read_text())["names"] == {0: "fruit"}

    data = coco_json(HANDMADE["train"], categories=[{"id": 7, "name": "leaf"}, {"id": 1, "name": "Apple"}])
    data["annotations"][4]["category_id"] = 7   # a3.png's first box
    json_file.write_text(json.dumps(data))
    val = coco_json(HANDMADE["val"], categories=[{"id": 3, "name": "Apple"}, {"id": 4, "name": "leaf"}], category_id=3)
    val["annotations"][2]["category_id"] = 4   # b1.png's second box: the same class by name, another id
    val_json.write_text(json.dumps(val))
    code, err = run_coco(tmp_path, capsys, coco)
    stats = json.loads((out / "stats.json").read_text())
    assert code == 0 and yaml.safe_load((out / "real.yaml").read_text())["names"] == {0: "leaf", 1: "Apple"}
    assert [row[0] for row in label_rows(out / "real" / "val" / "labels" / "b1.txt")] == [1, 0]
    a3 = next((out / "real").glob("*/labels/a3.txt"))
    assert [row[0] for row in label_rows(a3)] == [0]  # its second box is cropped out
    assert stats["boxes_per_class"]["val"] == {"leaf": 1, "Apple": 2}

    code, err = run_coco(tmp_path, capsys, coco, "--classes", "Apple")
    stats = json.loads((out / "stats.json").read_text())
    assert code == 0 and stats["classes"] == ["Apple"] and sum(stats["boxes_other_classes"].values()) == 2
    assert label_rows(a3) == []
    code, err = run_coco(tmp_path, capsys, coco, "--classes", "pear")
    assert code == 2 and "'pear'" in err and "leaf, Apple" in err

    data["annotations"][2]["category_id"] = 9   # a1.jpg's first box: a category the JSON does not list
    json_file.write_text(json.dumps(data))
    code, err = run_coco(tmp_path, capsys, coco)
    assert code == 2 and str(json_file) in err and "image a1.jpg" in err and "category_id 9" in err
    code, err = run_coco(tmp_path, capsys, coco, "--skip_bad")
    stats = json.loads((out / "stats.json").read_text())
    assert code == 0 and len(stats["skipped"]) == 1 and "a1.jpg" in stats["skipped"][0]
    assert len(read_manifest(out)) == 6


def test_coco_photos_and_json_must_agree(tmp_path, capsys):
    _, coco = make_handmade_pair(tmp_path, {"train": HANDMADE["train"], "test": HANDMADE["test"]})
    json_file = coco / "train" / "_annotations.coco.json"
    draw_photo(coco / "train" / "extra.png", (40, 40), "red", [[5, 5, 20, 20]])
    code, err = run_coco(tmp_path, capsys, coco)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert code == 0 and stats["photos"] == {"train": 4, "val": 1, "test": 2}
    assert "extra.png" in err and "left out" in err and str(coco / "train") in err
    (coco / "train" / "extra.png").unlink()

    (coco / "train" / "a3.png").unlink()
    code, err = run_coco(tmp_path, capsys, coco)
    assert code == 2 and str(json_file) in err and "a3.png" in err and "not photos in" in err
    draw_photo(coco / "train" / "a3.png", (61, 45), "red", [])
    code, err = run_coco(tmp_path, capsys, coco)
    assert code == 2 and "a3.png" in err and "60x45" in err and "61x45" in err

    data = coco_json(HANDMADE["train"])
    data["annotations"][0]["bbox"] = [1, 2, -3, 4]
    json_file.write_text(json.dumps(data))
    code, err = run_coco(tmp_path, capsys, coco)
    assert code == 2 and "image a0.png: annotation 1" in err and "[1, 2, -3, 4]" in err
    data = coco_json(HANDMADE["train"])
    data["images"][1]["file_name"] = "elsewhere/a0.png"
    json_file.write_text(json.dumps(data))
    code, err = run_coco(tmp_path, capsys, coco)
    assert code == 2 and str(json_file) in err and "more than once" in err and "a0.png" in err
    json_file.write_text("{not json")
    code, err = run_coco(tmp_path, capsys, coco)
    assert code == 2 and str(json_file) in err and "expected a COCO JSON" in err

    (coco / "train" / "second.json").write_text("{}")
    code, err = run_coco(tmp_path, capsys, coco)
    assert code == 2 and "exactly one COCO *.json" in err and "second.json" in err
    (tmp_path / "no_splits").mkdir()
    code, err = run_coco(tmp_path, capsys, tmp_path / "no_splits")
    assert code == 2 and "wrong layout" in err and "--annotations" in err


def test_fewshot_yaml_trains_on_the_instance_photos_and_a_moved_dataset_still_loads(tmp_path):
    yolo, _ = make_handmade_pair(tmp_path)
    out = tmp_path / "out"
    assert pd.main(prepare_args("yolo", yolo, out, "--num_instances", "2")) == 0
    listed = (out / "fewshot.txt").read_text().splitlines()
    instances = sorted(p.name for p in (out / "instances").glob("*/*"))
    assert len(instances) == 4 and sorted(Path(p).name for p in listed) == instances
    for line in listed:  # ./ paths, which ultralytics reads from the list's folder
        assert line.startswith("./real/train/images/") and (out / line).exists()
        assert (out / "real" / "train" / "labels" / f"{Path(line).stem}.txt").exists()
    assert yaml.safe_load((out / "fewshot.yaml").read_text()) == {
        "train": "fewshot.txt", "val": "real/val/images", "names": {0: "apple"}}
    moved = tmp_path / "moved"  # a dataset folder that is moved reads its new place, not the old one
    shutil.move(out, moved)

    config = tmp_path / "ultralytics"   # offline: a local font as ultralytics' Arial, no settings of the user's
    (config / "Ultralytics").mkdir(parents=True)
    import matplotlib
    shutil.copyfile(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf",
                    config / "Ultralytics" / "Arial.ttf")
    check = ("import json, sys\n"
             "from pathlib import Path\n"
             "from ultralytics.data import YOLODataset\n"
             "from ultralytics.data.utils import check_det_dataset\n"
             "data = check_det_dataset(sys.argv[1])\n"
             "dataset = YOLODataset(img_path=data['train'], data=data, imgsz=32, augment=False)\n"
             "print(json.dumps({'val': str(data['val']), 'names': data['names'],\n"
             "                  'boxes': {Path(l['im_file']).name: len(l['bboxes']) for l in dataset.labels}}))\n")
    for data_yaml, train in (("fewshot.yaml", [Path(line).name for line in listed]),
                             ("real.yaml", sorted(p.name for p in (moved / "real" / "train" / "images").iterdir()))):
        result = subprocess.run([sys.executable, "-c", check, str(moved / data_yaml)], capture_output=True,
                                text=True, env={**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(config)})
        assert result.returncode == 0, result.stderr
        loaded = json.loads(result.stdout.strip().splitlines()[-1])
        assert loaded["val"] == str(moved / "real" / "val" / "images") and loaded["names"] == {"0": "apple"}
        assert loaded["boxes"] == {name: len(label_rows(moved / "real" / "train" / "labels" / f"{Path(name).stem}.txt"))
                                   for name in train}


def test_help_has_no_flag_with_two_defaults(capsys):
    with pytest.raises(SystemExit):
        pd.parse_args(["--help"])
    help_text = capsys.readouterr().out
    flags = re.split(r"\n  (?=-)", help_text.split("options:")[1].split("examples:")[0])
    assert "--annotations" in help_text and "default: None" not in help_text
    assert all(flag.count("default") <= 1 for flag in flags), [f for f in flags if f.count("default") > 1]


def test_groups_by_colour_class_none_or_a_csv(tmp_path, capsys):
    from conftest import shared_path, two_class_orchard
    root, colour = two_class_orchard(shared_path("data/orchard-real"), tmp_path / "two_class")
    common = ["--source", "yolo", "--input", str(root), "--resolution", "64", "--num_instances", "3", "--workers", "2"]
    assert pd.main([*common, "--output_dir", str(tmp_path / "by_class"), "--group_by", "class"]) == 0
    stats = json.loads((tmp_path / "by_class" / "stats.json").read_text())
    assert stats["classes"] == ["green_apple", "red_apple"]
    assert stats["groups"] == {"green_apple": 24, "red_apple": 24}  # orchard-real's train split: 24 + 24
    for group, photo_colour in (("green_apple", "green"), ("red_apple", "red")):
        picked = sorted(p.name for p in (tmp_path / "by_class" / "instances" / group).iterdir())
        assert len(picked) == 3 and all(colour[name.replace(".png", ".jpg")] == photo_colour for name in picked)
    assert stats["boxes_per_class"]["test"]["green_apple"] + stats["boxes_per_class"]["test"]["red_apple"] == \
        stats["boxes_kept"]["test"] > 0

    assert pd.main([*common, "--output_dir", str(tmp_path / "one"), "--group_by", "none"]) == 0
    stats = json.loads((tmp_path / "one" / "stats.json").read_text())
    assert stats["groups"] == {"all": 48} and [p.name for p in (tmp_path / "one" / "instances").iterdir()] == ["all"]
    assert len(list((tmp_path / "one" / "instances" / "all").iterdir())) == 3

    train = sorted(p.name for p in (root / "train" / "images").iterdir())
    groups = tmp_path / "groups.csv"
    groups.write_text("file,group\n" + "".join(f"{name},{'near' if k % 3 else 'far'}\n"
                                               for k, name in enumerate(train[:30])))
    assert pd.main([*common, "--output_dir", str(tmp_path / "csv"), "--group_by", str(groups)]) == 0
    stats = json.loads((tmp_path / "csv" / "stats.json").read_text())
    assert stats["groups"] == {"far": 10, "near": 20}
    assert any("18 train photos are in no --group_by" in w for w in stats["warnings"])
    groups.write_text("file,group\nnot_a_photo.jpg,far\n")
    assert pd.main([*common, "--output_dir", str(tmp_path / "csv"), "--group_by", str(groups)]) == 2
    assert f"{groups}:2" in capsys.readouterr().err
    groups.write_text(f"file,group\n{train[0]},in the snow\n")
    assert pd.main([*common, "--output_dir", str(tmp_path / "csv"), "--group_by", str(groups)]) == 2
    assert "'in the snow'" in capsys.readouterr().err
