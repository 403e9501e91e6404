import contextlib
import copy
import functools
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageFont
from pycocotools.coco import COCO

import propose_boxes as pb
import train_detectors as td


def test_calibration_picks_the_f1_best_threshold():
    truths = {"a": [(0, 0, 10, 10)], "b": [(0, 0, 10, 10), (20, 20, 30, 30)]}
    predictions = {"a": [(0, 0, 10, 10, 0.9), (50, 50, 60, 60, 0.8)],
                   "b": [(20, 20, 30, 30, 0.6), (80, 80, 90, 90, 0.3), (0, 1, 10, 10, 0.2)]}
    # F1 by threshold: 0.9 -> 2/4, 0.8 -> 2/5, 0.6 -> 4/6, 0.3 -> 4/7, 0.2 -> 6/8
    threshold, f1, table = pb.best_f1_threshold(predictions, truths)
    assert threshold == 0.2 and f1 == pytest.approx(0.75)
    assert [round(row[3], 4) for row in table] == [0.5, 0.4, round(4 / 6, 4), round(4 / 7, 4), 0.75]
    truths["b"] = truths["b"][1:]          # without the low-confidence apple, 0.6 is best
    assert pb.best_f1_threshold(predictions, truths)[0] == 0.6


@pytest.fixture(scope="module")
def proposals(tiny_detector, orchard_prepared, tmp_path_factory):
    images = tmp_path_factory.mktemp("generated")
    for path in sorted((orchard_prepared / "real" / "test" / "images").iterdir())[:5]:
        shutil.copy(path, images / path.name)
    from PIL import Image  # one image that is not square, so no width/height swap can pass
    last = sorted((orchard_prepared / "real" / "test" / "images").iterdir())[5]
    Image.open(last).resize((160, 96)).save(images / f"wide_{last.name}")
    out = tmp_path_factory.mktemp("proposals")
    assert pb.main(["propose", "--weights", str(tiny_detector / "weights" / "best.pt"), "--images", str(images),
                    "--output_dir", str(out), "--conf", "0.001", "--imgsz", "128"]) == 0
    return images, out


def labels_of(folder):
    return {p.name: [[float(v) for v in line.split()] for line in p.read_text().splitlines()]
            for p in sorted((folder / "labels").glob("*.txt"))}


def assert_same_labels(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert len(a[name]) == len(b[name]), name
        for row_a, row_b in zip(a[name], b[name]):
            assert row_a == pytest.approx(row_b, abs=1e-6), name


def test_propose_writes_every_format(proposals):
    images, out = proposals
    labels = labels_of(out)
    assert len(labels) == 6 and sum(len(rows) for rows in labels.values()) > 0
    rows = (out / "proposals.csv").read_text().splitlines()[1:]
    assert len(rows) == sum(len(r) for r in labels.values())
    tasks = json.loads((out / "label_studio_tasks.json").read_text())
    assert len(tasks) == 6 and all(0 <= r["value"]["x"] <= 100 for t in tasks for r in t["predictions"][0]["result"])
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out / "coco_predictions.json"))
    assert len(coco.getAnnIds()) == len(rows) and min(coco.getAnnIds()) == 1
    assert json.loads((out / "proposals.json").read_text())["conf"] == 0.001
    td.check_data_yaml(out / "data.yaml")
    assert "path" not in yaml.safe_load((out / "data.yaml").read_text())  # entries count from the YAML's folder
    assert [p.name for p in (out / "preview").iterdir()] == ["sheet_000.png"]  # 6 images, 12 a sheet


def test_label_studio_round_trip_and_unreviewed_images(proposals, tmp_path, capsys):
    images, out = proposals
    tasks = json.loads((out / "label_studio_tasks.json").read_text())
    for task in tasks[1:]:  # a reviewer accepts every proposal, except on the first image, left untouched
        task["annotations"] = [{"result": task["predictions"][0]["result"]}]
    tasks[2]["data"]["image"] = "/data/upload/3/1a2b3c4d-" + tasks[2]["data"]["image"].split("/")[-1]
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    assert pb.main(["import", "--reviewed", str(tmp_path / "export.json"), "--images", str(images),
                    "--output_dir", str(tmp_path / "out")]) == 0
    first = Path(json.loads(json.dumps(tasks[0]))["data"]["image"]).name
    expected = {k: v for k, v in labels_of(out).items() if k != first.replace(".png", ".txt")}
    assert_same_labels(labels_of(tmp_path / "out"), expected)
    assert (tmp_path / "out" / "unreviewed.txt").read_text().split() == [first]
    assert "1 images have no review" in capsys.readouterr().out


def test_coco_and_yolo_round_trips(proposals, tmp_path):
    images, out = proposals
    for name, reviewed in (("coco", out / "coco_predictions.json"), ("yolo", out)):
        assert pb.main(["import", "--reviewed", str(reviewed), "--images", str(images),
                        "--output_dir", str(tmp_path / name)]) == 0
        assert_same_labels(labels_of(tmp_path / name), labels_of(out))
        assert (tmp_path / name / "unreviewed.txt").read_text() == ""
        td.check_data_yaml(tmp_path / name / "data.yaml")


def test_calibrated_threshold_is_the_best_on_real_val(tiny_detector, orchard_prepared, proposals, tmp_path):
    images, _ = proposals
    assert pb.main(["propose", "--weights", str(tiny_detector / "weights" / "best.pt"), "--images", str(images),
                    "--output_dir", str(tmp_path), "--calibrate_data", str(orchard_prepared / "real.yaml"),
                    "--imgsz", "128"]) == 0
    meta = json.loads((tmp_path / "proposals.json").read_text())
    best = max(meta["calibration"], key=lambda row: row["f1"])
    assert meta["conf"] == best["threshold"] and "best F1" in meta["chosen_by"]
    proposed = [float(line.split(",")[-1]) for line in (tmp_path / "proposals.csv").read_text().splitlines()[1:]]
    assert all(conf >= round(meta["conf"], 5) - 1e-5 for conf in proposed)


def test_a_review_of_other_images_is_refused(proposals, tmp_path, capsys):
    images, _ = proposals
    (tmp_path / "other.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "x.png"}], "annotations": []}))
    assert pb.main(["import", "--reviewed", str(tmp_path / "other.json"), "--images", str(images),
                    "--output_dir", str(tmp_path / "out")]) == 2
    assert "reviews none of the images" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert pb.main(["import", "--reviewed", str(tmp_path / "bad.json"), "--images", str(images),
                    "--output_dir", str(tmp_path / "out")]) == 2


def test_label_studio_edge_cases(proposals, tmp_path, capsys):
    images, out = proposals
    tasks = json.loads((out / "label_studio_tasks.json").read_text())
    reviewed = [t for t in tasks if t["predictions"][0]["result"]][:1]
    assert reviewed, "the fixture detector proposed nothing"
    task = reviewed[0]

    def run_import(mutate):
        edited = copy.deepcopy(task)
        edited["annotations"] = [{"result": copy.deepcopy(task["predictions"][0]["result"])}]
        mutate(edited)
        (tmp_path / "export.json").write_text(json.dumps(edited if isinstance(edited, list) else [edited]))
        code = pb.main(["import", "--reviewed", str(tmp_path / "export.json"), "--images", str(images),
                        "--output_dir", str(tmp_path / "out")])
        return code, capsys.readouterr().err

    def plain_rectangles(t):  # a <Rectangle> + <Labels> config exports type 'rectangle'
        for r in t["annotations"][0]["result"]:
            r["type"] = "rectangle"
    assert run_import(plain_rectangles)[0] == 0
    assert len(labels_of(tmp_path / "out")) == 1 and all(labels_of(tmp_path / "out").values())

    def leaf(t):
        t["annotations"][0]["result"][0]["value"]["rectanglelabels"] = ["leaf"]
    def rotated(t):
        t["annotations"][0]["result"][0]["value"]["rotation"] = 30
    def polygon(t):
        t["annotations"][0]["result"][0]["type"] = "polygonlabels"
    for mutate, message in ((leaf, "labelled ['leaf']"), (rotated, "rotated by 30"), (polygon, "polygonlabels")):
        code, err = run_import(mutate)
        assert code == 2 and message in err and "task 1" in err
    (tmp_path / "twice.json").write_text(json.dumps([dict(task, annotations=[{"result": []}])] * 2))
    assert pb.main(["import", "--reviewed", str(tmp_path / "twice.json"), "--images", str(images),
                    "--output_dir", str(tmp_path / "out")]) == 2
    assert "again" in capsys.readouterr().err
    assert pb.main(["import", "--reviewed", str(out), "--images", str(out / "images"), "--output_dir", str(out)]) == 2
    assert "overlaps the input folder" in capsys.readouterr().err


def test_a_truncated_image_is_named_before_any_detection(tiny_detector, proposals, tmp_path, capsys):
    images, _ = proposals
    broken = tmp_path / "images"
    shutil.copytree(images, broken)
    victim = sorted(broken.iterdir())[2]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    code = pb.main(["propose", "--weights", str(tiny_detector / "weights" / "best.pt"), "--images", str(broken),
                    "--output_dir", str(tmp_path / "out"), "--imgsz", "128"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(f"error: {victim}: unreadable image")
    assert not (tmp_path / "out" / "labels").exists()


def test_an_output_folder_that_is_a_file_or_inside_the_images_is_refused(tiny_detector, proposals, tmp_path, capsys):
    images, _ = proposals
    (tmp_path / "taken").write_text("a file")
    weights = str(tiny_detector / "weights" / "best.pt")
    for out, problem in ((tmp_path / "taken", "is a file, not a folder"),
                         (tmp_path / "taken" / "below", "cannot be created or written"),
                         (images / "proposals", "overlaps the input folder")):
        assert pb.main(["propose", "--weights", weights, "--images", str(images), "--output_dir", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--output_dir {out}: " in err[0] and problem in err[0]
    assert not (images / "proposals").exists()


@pytest.mark.parametrize("line, problem", [("3 0.5 0.5 0.1 0.1", "class 3"), ("0 nan 0.5 0.1 0.1", "0..1"),
                                           ("0 0.5 0.5 0.1", "expected a box"), ("0 0.5 0.5 1.5 0.1", "0..1")])
def test_a_bad_reviewed_yolo_line_is_named_by_file_and_line(proposals, tmp_path, capsys, line, problem):
    images, out = proposals
    reviewed = tmp_path / "review"
    shutil.copytree(out / "labels", reviewed / "labels")
    label = sorted((reviewed / "labels").glob("*.txt"))[0]
    label.write_text("0 0.5 0.5 0.2 0.2\n" + line + "\n")
    code = pb.main(["import", "--reviewed", str(reviewed), "--images", str(images), "--output_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(f"error: {label}:2: ") and problem in err[-1]


# ---- reviews on small hand-made files ------------------------------------------------------------
def small_images(folder, count=3, size=(100, 80)):
    from PIL import Image
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", size, (40 * i, 90, 30)).save(folder / f"tree_{i}.png")
    return folder


def coco_review(images, annotations, categories=({"id": 1, "name": "apple"},)):
    return {"images": [{"id": i + 1, "file_name": f"{prefix}tree_{i}.png", "width": 100, "height": 80}
                       for i, prefix in enumerate(images)],
            "annotations": [{"id": k + 1, "image_id": image_id, "category_id": category, "bbox": bbox}
                            for k, (image_id, bbox, category) in enumerate(annotations)],
            "categories": list(categories)}


def run_import(tmp_path, capsys, reviewed, *extra):
    code = pb.main(["import", "--reviewed", str(reviewed), "--images", str(tmp_path / "images"),
                    "--output_dir", str(tmp_path / "out"), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_coco_with_label_studio_prefixes_lists_the_reviewed_images_and_warns_of_empty_ones(tmp_path, capsys):
    small_images(tmp_path / "images")
    review = coco_review(["images/1a2b3c4d__", "images/9f8e7d6c__"], [(1, [10, 20, 30, 15], 1)])
    review["images"][1].update(width=None, height=None)  # Label Studio 1.23.2: an image with every box deleted
    (tmp_path / "review.json").write_text(json.dumps(review))
    code, out, err = run_import(tmp_path, capsys, tmp_path / "review.json")
    assert code == 0 and (tmp_path / "out" / "unreviewed.txt").read_text() == "tree_2.png\n"
    assert labels_of(tmp_path / "out") == {"tree_0.txt": [[0, 0.25, 0.34375, 0.3, 0.1875]], "tree_1.txt": []}
    assert "1 images are listed in the COCO JSON with no boxes" in err and "tree_1.png" in err and "all tasks" in err


def test_yolo_export_with_prefixed_names_and_an_empty_file(tmp_path, capsys):
    small_images(tmp_path / "images")
    (tmp_path / "export" / "labels").mkdir(parents=True)
    (tmp_path / "export" / "labels" / "0123abcd__tree_0.txt").write_text("0 0.5 0.5 0.2 0.25\n")
    (tmp_path / "export" / "labels" / "tree_1.txt").write_text("")
    with zipfile.ZipFile(tmp_path / "export.zip", "w") as archive:
        for path in (tmp_path / "export" / "labels").iterdir():
            archive.write(path, f"labels/{path.name}")
    for reviewed in (tmp_path / "export", tmp_path / "export.zip"):
        code, _, err = run_import(tmp_path, capsys, reviewed)
        assert code == 0 and labels_of(tmp_path / "out") == {"tree_0.txt": [[0, 0.5, 0.5, 0.2, 0.25]], "tree_1.txt": []}
        assert (tmp_path / "out" / "unreviewed.txt").read_text() == "tree_2.png\n" and "tree_1.png" in err


def test_label_studio_tasks_without_an_annotation_or_skipped_are_unreviewed(tmp_path, capsys):
    small_images(tmp_path / "images")
    tasks = [{"id": i + 1, "data": {"image": f"/data/local-files/?d=x/tree_{i}.png"}, "annotations": annotations}
             for i, annotations in enumerate([[{"result": []}], [], [{"result": [], "was_cancelled": True}]])]
    (tmp_path / "all_tasks.json").write_text(json.dumps(tasks))
    code, _, err = run_import(tmp_path, capsys, tmp_path / "all_tasks.json")
    assert code == 0 and labels_of(tmp_path / "out") == {"tree_0.txt": []} and "listed" not in err
    assert (tmp_path / "out" / "unreviewed.txt").read_text() == "tree_1.png\ntree_2.png\n"


def label_studio_box(x, y, w, h, label="apple"):
    return {"type": "rectanglelabels", "original_width": 100, "original_height": 80,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]}}


@pytest.mark.parametrize("review, problem", [
    (coco_review([""], [(1, [10, 10, -5, 10], 1)]), "annotation 1 (tree_0.png): a box of width -5"),
    (coco_review([""], [(1, [90, 10, 20, 10], 1)]), "annotation 1 (tree_0.png): the box x 90..110"),
    (coco_review([""], [(1, [10, float("nan"), 5, 5], 1)]), "annotation 1 (tree_0.png): a box with a value that"),
    (coco_review([""], [(1, [10, 10, 5, 5], 1), (1, [20, 20, 5, 5], 2)],
                 ({"id": 1, "name": "apple"}, {"id": 2, "name": "leaf"})), "annotation 2 (tree_0.png): category 'leaf'"),
    ([{"id": 7, "data": {"image": "tree_0.png"}, "annotations": [{"result": [label_studio_box(-10, 5, 20, 20)]}]}],
     "task 7 (tree_0.png): the box x -10..10"),
    ([{"id": 7, "data": {"image": "tree_0.png"}, "annotations": [{"result": [label_studio_box(5, 5, 20, 20, "leaf")]}]}],
     "task 7 (tree_0.png): a box labelled ['leaf']")])
def test_bad_reviewed_boxes_are_named_with_the_file_and_the_image(tmp_path, capsys, review, problem):
    small_images(tmp_path / "images")
    (tmp_path / "review.json").write_text(json.dumps(review))
    code, _, err = run_import(tmp_path, capsys, tmp_path / "review.json")
    assert code == 2 and err.startswith(f"error: {tmp_path / 'review.json'}: ") and problem in err
    assert not (tmp_path / "out" / "labels").exists()


def test_a_rounding_overshoot_is_clipped(tmp_path, capsys):
    small_images(tmp_path / "images")
    review = [{"id": 1, "data": {"image": "tree_0.png"}, "annotations": [{"result": [
        label_studio_box(-0.3, 50, 20.4, 50.2)]}]}]  # 0.3 % left of the image and 0.2 % below it
    (tmp_path / "review.json").write_text(json.dumps(review))
    assert run_import(tmp_path, capsys, tmp_path / "review.json")[0] == 0
    [[_, cx, cy, w, h]] = labels_of(tmp_path / "out")["tree_0.txt"]
    assert (cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2) == pytest.approx((0, 0.201, 0.5, 1.0), abs=1e-6)


def test_review_report_counts_the_changes_and_warns_when_nothing_changed(tmp_path, capsys):
    small_images(tmp_path / "images", count=2)
    (tmp_path / "proposed").mkdir()
    (tmp_path / "proposed" / "tree_0.txt").write_text("0 0.2 0.2 0.2 0.2\n0 0.5 0.5 0.2 0.2\n0 0.8 0.8 0.1 0.1\n")
    (tmp_path / "proposed" / "tree_1.txt").write_text("")
    assert pb.main(["propose", "--labels", str(tmp_path / "proposed"), "--images", str(tmp_path / "images"),
                    "--output_dir", str(tmp_path / "prop")]) == 0
    tasks = json.loads((tmp_path / "prop" / "label_studio_tasks.json").read_text())
    assert all("score" not in r for r in tasks[0]["predictions"][0]["result"]) and len(tasks[0]["predictions"][0]["result"]) == 3
    assert (tmp_path / "prop" / "label_studio_config.xml").read_text().count('name="label" toName="image"') == 1
    code, _, err = run_import(tmp_path, capsys, tmp_path / "prop", "--proposals", str(tmp_path / "prop"))
    assert code == 0 and "equal the proposals on every reviewed image" in err
    (tmp_path / "review").mkdir()
    # kept as is; moved a little (IoU 0.68: adjusted); the small one deleted; one added on tree_1
    (tmp_path / "review" / "tree_0.txt").write_text("0 0.2 0.2 0.2 0.2\n0 0.53 0.5 0.2 0.2\n")
    (tmp_path / "review" / "tree_1.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    code, out, err = run_import(tmp_path, capsys, tmp_path / "review", "--proposals", str(tmp_path / "prop"))
    report = json.loads((tmp_path / "out" / "review_report.json").read_text())
    assert code == 0 and "equal the proposals" not in err
    assert report["images"]["tree_0.png"] == {"proposals": 3, "reviewed": 2, "unchanged": 1, "adjusted": 1,
                                              "deleted": 1, "added": 0}
    assert report["totals"] == {"proposals": 3, "reviewed": 3, "unchanged": 1, "adjusted": 1, "deleted": 1, "added": 1}
    assert "3 proposals -> 3 boxes on 2 images: 1 unchanged, 1 adjusted, 1 deleted, 1 added" in out


def test_match_review_pairs_highest_iou_first():
    proposed = [[0, 0, 10, 10], [5, 0, 15, 10]]
    reviewed = [[4, 0, 14, 10]]  # IoU 0.67 with the first, 0.82 with the second: the second is the match
    assert pb.match_review(proposed, reviewed) == {"proposals": 2, "reviewed": 1, "unchanged": 0, "adjusted": 1,
                                                   "deleted": 1, "added": 0}
    assert pb.match_review([[0, 0, 10, 10]], [[0, 0, 10, 10.4]])["unchanged"] == 1  # IoU 0.96


def test_a_calibration_that_finds_nothing_warns_loudly(tiny_detector, proposals, orchard_prepared, tmp_path, capsys):
    images, _ = proposals
    val = tmp_path / "data" / "val"
    shutil.copytree(orchard_prepared / "real" / "val" / "images", val / "images")
    (val / "labels").mkdir()
    for image in (val / "images").iterdir():  # apples where the detector never looks: a 1-px box in a corner
        (val / "labels" / f"{image.stem}.txt").write_text("0 0.004 0.004 0.008 0.008\n")
    (tmp_path / "data" / "real.yaml").write_text(yaml.safe_dump({"path": str(tmp_path / "data"), "train": "val/images",
                                                                 "val": "val/images", "names": {0: "apple"}}))
    assert pb.main(["propose", "--weights", str(tiny_detector / "weights" / "best.pt"), "--images", str(images),
                    "--output_dir", str(tmp_path / "out"), "--calibrate_data", str(tmp_path / "data" / "real.yaml"),
                    "--imgsz", "128"]) == 0
    assert "WARNING: the best F1 on the real val split is 0.0" in capsys.readouterr().err


# ---- preview sheets and --help ----------------------------------------------------------------------
def test_preview_sheets_draw_each_proposal_where_it_is(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    sizes = [(200, 100), (90, 150)] * 3 + [(120, 120)]  # 7 images, wide, tall and square
    boxes = [(10 + 2 * i, 20, 50 + 2 * i, 60) for i in range(len(sizes))]  # x1 y1 x2 y2 in px
    for i, ((width, height), (x1, y1, x2, y2)) in enumerate(zip(sizes, boxes)):
        Image.new("RGB", (width, height), (90, 90, 90)).save(tmp_path / "images" / f"im_{i}.png")
        (tmp_path / "labels" / f"im_{i}.txt").write_text(
            f"0 {(x1 + x2) / 2 / width} {(y1 + y2) / 2 / height} {(x2 - x1) / width} {(y2 - y1) / height}\n")
    propose = ["propose", "--labels", str(tmp_path / "labels"), "--images", str(tmp_path / "images"),
               "--output_dir", str(tmp_path / "prop"), "--preview_cell", "100"]
    assert pb.main(propose + ["--preview_per_sheet", "3"]) == 0
    preview = tmp_path / "prop" / "preview"
    assert sorted(p.name for p in preview.iterdir()) == ["sheet_000.png", "sheet_001.png", "sheet_002.png"]
    for i, ((width, height), box) in enumerate(zip(sizes, boxes)):
        sheet = np.asarray(Image.open(preview / f"sheet_{i // 3:03d}.png"))
        left, top = pb.cell_origin(i % 3, pb.sheet_columns(3), 100)
        x1, y1, x2, y2 = (round(v * 100 / max(width, height)) for v in box)  # longer side -> 100 px
        assert (sheet[top + y1, left + x1:left + x2] == pb.BOX_COLOUR).all(), i          # top edge
        assert (sheet[top + y1:top + y2, left + x2 - 1] == pb.BOX_COLOUR).all(), i       # right edge
        assert tuple(sheet[top + y1 - 1, left + x1 + 3]) == pb.EDGE_COLOUR, i              # the dark rim
        assert tuple(sheet[top + (y1 + y2) // 2, left + (x1 + x2) // 2]) == (90, 90, 90), i  # inside: the image
    assert pb.main(propose + ["--preview_per_sheet", "7"]) == 0
    assert [p.name for p in preview.iterdir()] == ["sheet_000.png"]  # no sheet of the earlier run stays
    assert not (tmp_path / "prop" / ".preview_tmp").exists()


def test_preview_shows_a_confidence_above_its_box_when_there_is_one():
    image, box = Image.new("RGB", (200, 200), (90, 90, 90)), [[50, 80, 120, 150]]
    font = ImageFont.load_default(size=pb.SCORE_FONT_PX)
    band = (slice(80 - pb.SCORE_FONT_PX, 79), slice(50, 120))  # above the box and its rim
    scored = np.asarray(pb.draw_proposals(image, box, [0], [0.87], ["apple"], 200, font)).astype(int)[band]
    plain = np.asarray(pb.draw_proposals(image, box, [0], None, ["apple"], 200, font))[band]
    yellowish = (scored[..., 0] > 200) & (scored[..., 1] > 180) & (scored[..., 2] < 80)
    assert yellowish.sum() >= 10 and (plain == 90).all()


@pytest.mark.parametrize("command", ["propose", "import"])
def test_help_gives_every_flag_a_text_one_default_at_most_and_examples(command, capsys):
    sub = pb.build_parser()._subparsers._group_actions[0].choices[command]
    formatter = pb.HelpFormatter(command)
    for action in sub._actions:
        assert action.help, action.option_strings
        assert formatter._get_help_string(action).count("(default:") <= 1, action.option_strings
    with pytest.raises(SystemExit) as leaving:
        pb.main([command, "--help"])
    text = capsys.readouterr().out
    assert leaving.value.code == 0 and "(default: None)" not in text
    assert f"examples:\n  python propose_boxes.py {command} --" in text


# ---- classes ------------------------------------------------------------------------------------------
TWO_CLASSES = ["red_apple", "green_apple"]  # not in sorted order, as Label Studio's YOLO export writes them
# tree_0: a red apple at x 15..35, y 10..30 px and a green one at x 55..85, y 36..60; tree_1: a green one
TWO_CLASS_LABELS = {"tree_0": "0 0.250000 0.250000 0.200000 0.250000\n1 0.700000 0.600000 0.300000 0.300000\n",
                    "tree_1": "1 0.500000 0.500000 0.200000 0.200000\n", "tree_2": ""}


def two_class_proposals(tmp_path):
    """propose --labels with two classes on three 100x80 images -> its output folder."""
    small_images(tmp_path / "images")
    (tmp_path / "proposed").mkdir()
    for stem, text in TWO_CLASS_LABELS.items():
        (tmp_path / "proposed" / f"{stem}.txt").write_text(text)
    assert pb.main(["propose", "--labels", str(tmp_path / "proposed"), "--images", str(tmp_path / "images"),
                    "--output_dir", str(tmp_path / "prop"), "--classes", ",".join(TWO_CLASSES)]) == 0
    return tmp_path / "prop"


def test_a_one_class_run_writes_what_it_wrote_before_there_were_classes(tmp_path):
    small_images(tmp_path / "images", count=1)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "tree_0.txt").write_text("0 0.25 0.25 0.2 0.25\n")
    assert pb.main(["propose", "--labels", str(tmp_path / "labels"), "--images", str(tmp_path / "images"),
                    "--output_dir", str(tmp_path / "prop")]) == 0
    prop = tmp_path / "prop"
    assert (prop / "label_studio_config.xml").read_text() == (
        '<View>\n  <Image name="image" value="$image" zoom="true" zoomControl="true"/>\n'
        '  <RectangleLabels name="label" toName="image">\n    <Label value="apple" background="red"/>\n'
        '  </RectangleLabels>\n</View>\n')
    assert (prop / "data.yaml").read_text() == ("# proposals as they are, not reviewed by a person\n# val = train: "
                                                "model selection sees no real photo\ntrain: images\nval: images\n"
                                                "names:\n  0: apple\n")
    assert (prop / "labels" / "tree_0.txt").read_text() == "0 0.250000 0.250000 0.200000 0.250000\n"
    assert (prop / "proposals.csv").read_bytes() == b"file,x1,y1,x2,y2,conf\r\ntree_0.png,15.0,10.0,35.0,30.0,\r\n"
    [task] = json.loads((prop / "label_studio_tasks.json").read_text())
    assert [r["value"]["rectanglelabels"] for r in task["predictions"][0]["result"]] == [["apple"]]
    coco = json.loads((prop / "coco_predictions.json").read_text())
    assert coco["categories"] == [{"id": 1, "name": "apple"}] and coco["annotations"][0]["category_id"] == 1


def test_two_classes_go_into_every_output_of_propose(tmp_path):
    prop = two_class_proposals(tmp_path)
    config = (prop / "label_studio_config.xml").read_text()
    assert config.count("<Label ") == 2 and '<Label value="red_apple" background="red"/>' in config
    assert '<Label value="green_apple" background="blue"/>' in config
    tasks = json.loads((prop / "label_studio_tasks.json").read_text())
    assert [[r["value"]["rectanglelabels"] for r in t["predictions"][0]["result"]] for t in tasks] == [
        [["red_apple"], ["green_apple"]], [["green_apple"]], []]
    coco = json.loads((prop / "coco_predictions.json").read_text())
    assert coco["categories"] == [{"id": 1, "name": "red_apple"}, {"id": 2, "name": "green_apple"}]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 2, 2]
    assert {p.stem: p.read_text() for p in (prop / "labels").iterdir()} == TWO_CLASS_LABELS
    assert yaml.safe_load((prop / "data.yaml").read_text())["names"] == {0: "red_apple", 1: "green_apple"}
    assert (prop / "proposals.csv").read_text().splitlines() == [
        "file,x1,y1,x2,y2,class,conf", "tree_0.png,15.0,10.0,35.0,30.0,red_apple,",
        "tree_0.png,55.0,36.0,85.0,60.0,green_apple,", "tree_1.png,40.0,32.0,60.0,48.0,green_apple,"]
    sheet = np.asarray(Image.open(prop / "preview" / "sheet_000.png"))
    left, top = pb.cell_origin(0, pb.sheet_columns(12), 400)  # tree_0, its 100 px scaled to 400
    assert (sheet[top + 4 * 10, left + 4 * 15:left + 4 * 35] == pb.CLASS_COLOURS[0]).all()  # red apple: yellow
    assert (sheet[top + 4 * 36, left + 4 * 55 + 60:left + 4 * 85] == pb.CLASS_COLOURS[1]).all()  # after its name
    name_band = sheet[top + 4 * 36 - pb.SCORE_FONT_PX:top + 4 * 36 - 1, left + 4 * 55:left + 4 * 85].astype(int)
    assert (abs(name_band - pb.CLASS_COLOURS[1]).max(axis=-1) < 60).sum() >= 30  # 'green_apple' in its colour


def test_preview_keeps_a_label_inside_the_image_at_its_right_edge():
    image, font = Image.new("RGB", (200, 200), (90, 90, 90)), ImageFont.load_default(size=pb.SCORE_FONT_PX)
    picture = pb.draw_proposals(image, [[170, 80, 200, 150]], [1], [0.87], TWO_CLASSES, 200, font)
    width = round(font.getlength("green_apple 0.87"))
    band = np.asarray(picture).astype(int)[80 - pb.SCORE_FONT_PX:79, 200 - width:200]
    covered = (band != 90).any(axis=-1).any(axis=0)  # a column with the label in it, not just the grey image
    assert covered.all() and (abs(band - pb.CLASS_COLOURS[1]).max(axis=-1) < 60).sum() >= 30


def json_min(tasks):
    """Label Studio's JSON-MIN form of annotated tasks: one flat item each, its boxes under 'label'."""
    return [{"id": t["id"], "image": t["data"]["image"], "annotation_id": t["id"],
             "label": [dict(r["value"], original_width=100, original_height=80) for r in t["annotations"][0]["result"]]}
            for t in tasks]


def test_two_classes_come_back_by_name_from_every_format(tmp_path, capsys):
    prop = two_class_proposals(tmp_path)
    tasks = json.loads((prop / "label_studio_tasks.json").read_text())
    for number, task in enumerate(tasks, start=1):
        task.update(id=number, annotations=[{"result": copy.deepcopy(task["predictions"][0]["result"])}])
    tasks[0]["annotations"][0]["result"][1]["value"]["rectanglelabels"] = ["RED_APPLE"]  # a green one made red
    reviewed = {"tree_0.txt": [[0, 0.25, 0.25, 0.2, 0.25], [0, 0.7, 0.6, 0.3, 0.3]],
                "tree_1.txt": [[1, 0.5, 0.5, 0.2, 0.2]], "tree_2.txt": []}
    (tmp_path / "json.json").write_text(json.dumps(tasks))
    (tmp_path / "min.json").write_text(json.dumps(json_min(tasks)))
    coco = coco_review(["", "", ""], [(1, [15, 10, 20, 20], 7), (1, [55, 36, 30, 24], 7), (2, [40, 32, 20, 16], 0)],
                       ({"id": 0, "name": "Green_Apple"}, {"id": 7, "name": "red_apple"}))  # other ids, other case
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    (tmp_path / "yolo" / "labels").mkdir(parents=True)  # Label Studio's YOLO export: ids of the sorted names
    (tmp_path / "yolo" / "classes.txt").write_text("green_apple\nred_apple\n")
    for stem, text in (("tree_0", "1 0.25 0.25 0.2 0.25\n1 0.7 0.6 0.3 0.3\n"), ("tree_1", "0 0.5 0.5 0.2 0.2\n"),
                       ("tree_2", "")):
        (tmp_path / "yolo" / "labels" / f"1a2b3c4d__{stem}.txt").write_text(text)
    for form in ("json.json", "min.json", "coco.json", "yolo"):
        code, _, err = run_import(tmp_path, capsys, tmp_path / form, "--proposals", str(prop))
        assert code == 0, (form, err)
        assert_same_labels(labels_of(tmp_path / "out"), reviewed)
        names = yaml.safe_load((tmp_path / "out" / "data.yaml").read_text())["names"]
        assert names == {0: "red_apple", 1: "green_apple"}, form
        report = json.loads((tmp_path / "out" / "review_report.json").read_text())
        assert report["images"]["tree_0.png"] == {"proposals": 2, "reviewed": 2, "unchanged": 1, "adjusted": 0,
                                                  "deleted": 1, "added": 1}, form  # a class change: deleted + added
    assert run_import(tmp_path, capsys, tmp_path / "json.json", "--classes", "red_apple,green_apple")[0] == 0
    assert_same_labels(labels_of(tmp_path / "out"), reviewed)


@pytest.mark.parametrize("form, problem", [
    ("json", "json.json: task 1 (tree_0.png): a box labelled ['leaf']; the classes are 'red_apple', 'green_apple'"),
    ("min", "min.json: item 1 (tree_0.png): a box labelled ['leaf']; the classes are"),
    ("coco", "coco.json: annotation 2 (tree_0.png): category 'leaf'; the classes are 'red_apple', 'green_apple'"),
    ("yolo", "labels/tree_0.txt (tree_0.png): class 2, 'leaf' in "),
    ("yolo_ids", "labels/tree_0.txt:1: class 2: the classes are 0 = red_apple, 1 = green_apple"),
    ("classes", "--classes green_apple,red_apple: the proposals in ")])
def test_a_label_that_is_not_a_class_is_refused_in_one_line(tmp_path, capsys, form, problem):
    prop = two_class_proposals(tmp_path)
    task = {"id": 1, "data": {"image": "tree_0.png"}, "annotations": [{"result": [
        label_studio_box(5, 5, 20, 20, "red_apple"), label_studio_box(50, 50, 20, 20, "leaf")]}]}
    (tmp_path / "json.json").write_text(json.dumps([task]))
    (tmp_path / "min.json").write_text(json.dumps(json_min([task])))
    coco = coco_review([""], [(1, [10, 10, 5, 5], 1), (1, [20, 20, 5, 5], 2)],
                       ({"id": 1, "name": "red_apple"}, {"id": 2, "name": "leaf"}))
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    for folder, classes_txt in (("yolo", "green_apple\nred_apple\nleaf\n"), ("yolo_ids", None)):
        (tmp_path / folder / "labels").mkdir(parents=True)
        (tmp_path / folder / "labels" / "tree_0.txt").write_text("2 0.5 0.5 0.2 0.2\n")
        if classes_txt:
            (tmp_path / folder / "classes.txt").write_text(classes_txt)
    reviewed, extra = {"json": "json.json", "min": "min.json", "coco": "coco.json"}.get(form, form), []
    if form == "classes":
        reviewed, extra = "json.json", ["--classes", "green_apple,red_apple"]
    code, _, err = run_import(tmp_path, capsys, tmp_path / reviewed, "--proposals", str(prop), *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1 and problem in err, err
    assert not (tmp_path / "out" / "labels").exists()


def test_class_names_on_the_command_line_are_checked(tmp_path, capsys):
    small_images(tmp_path / "images", count=1)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "tree_0.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    propose = ["propose", "--labels", str(tmp_path / "labels"), "--images", str(tmp_path / "images"),
               "--output_dir", str(tmp_path / "prop")]
    assert pb.main(propose) == 2  # one class, apple, unless --classes says otherwise
    assert "tree_0.txt:1: class 1: the only class is 0 = apple" in capsys.readouterr().err
    for classes, problem in (("a,,b", "class 1, '', is empty"), ("apple,Apple", "'Apple', repeats class 0")):
        with pytest.raises(SystemExit):
            pb.main(propose + ["--classes", classes])
        assert problem in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pb.main(["propose", "--weights", "best.pt", "--classes", "a,b", *propose[3:]])
    assert "a detector has its own" in capsys.readouterr().err


class StubDetector:
    """Stands in for an ultralytics model: predict() gives each image these (x1, y1, x2, y2, class, conf)."""

    def __init__(self, detections):
        self.detections = detections

    def predict(self, source, **_):
        from types import SimpleNamespace
        for path in source:
            rows = np.asarray(self.detections, float).reshape(-1, 6)
            yield SimpleNamespace(path=path, boxes=SimpleNamespace(xyxy=rows[:, :4], cls=rows[:, 4], conf=rows[:, 5]))


def test_calibration_matches_a_detection_to_a_true_box_of_its_class(tmp_path, capsys):
    from types import SimpleNamespace
    small_images(tmp_path / "data" / "val" / "images", count=1)
    (tmp_path / "data" / "val" / "labels").mkdir()
    (tmp_path / "data" / "val" / "labels" / "tree_0.txt").write_text("1 0.25 0.25 0.2 0.25\n")  # a green apple
    (tmp_path / "data" / "real.yaml").write_text(yaml.safe_dump({"train": "val/images", "val": "val/images",
                                                                 "names": {0: "red_apple", 1: "green_apple"}}))
    box = [15, 10, 35, 30]
    detector = StubDetector([box + [0, 0.9], box + [1, 0.5]])  # called red at 0.9, green at 0.5
    args = SimpleNamespace(calibrate_data=str(tmp_path / "data" / "real.yaml"), calibrate_split="val",
                           weights="stub.pt", open_vocabulary=None)
    images = sorted((tmp_path / "data" / "val" / "images").iterdir())
    find = functools.partial(pb.detect, detector, imgsz=128, iou=0.45, device=None)
    meta = pb.calibrate(find, TWO_CLASSES, args, images)
    assert meta["conf"] == 0.5 and "best F1 (0.667)" in meta["chosen_by"]  # class-blind, 0.9 would score 1.0
    with pytest.raises(pb.InputError, match=r"names the classes \['red_apple', 'green_apple'\], but the detector "
                                            r"stub.pt detects \['apple'\]"):
        pb.calibrate(find, ["apple"], args, images)


def test_a_detector_brings_its_own_classes(tiny_detector, proposals, orchard_prepared, tmp_path, capsys):
    import torch
    images, _ = proposals
    checkpoint = torch.load(tiny_detector / "weights" / "best.pt", weights_only=False)
    checkpoint["model"].names = {0: "green_apple", 1: "red_apple"}  # one head, two names: all its boxes green_apple
    torch.save(checkpoint, tmp_path / "two.pt")
    out = tmp_path / "prop"
    assert pb.main(["propose", "--weights", str(tmp_path / "two.pt"), "--images", str(images), "--output_dir", str(out),
                    "--conf", "0.001", "--imgsz", "128"]) == 0
    assert (out / "label_studio_config.xml").read_text().count("<Label ") == 2
    tasks = json.loads((out / "label_studio_tasks.json").read_text())
    labels = {label for t in tasks for r in t["predictions"][0]["result"] for label in r["value"]["rectanglelabels"]}
    rows = (out / "proposals.csv").read_text().split()
    assert labels == {"green_apple"} and rows[0].endswith(",class,conf")
    assert {row.split(",")[-2] for row in rows[1:]} == {"green_apple"}
    assert yaml.safe_load((out / "data.yaml").read_text())["names"] == {0: "green_apple", 1: "red_apple"}
    code = pb.main(["propose", "--weights", str(tmp_path / "two.pt"), "--images", str(images), "--output_dir", str(out),
                    "--calibrate_data", str(orchard_prepared / "real.yaml"), "--imgsz", "128"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "names the classes ['apple'], but the detector" in err[0]
    assert "detects ['green_apple', 'red_apple']" in err[0]
