"""propose --open_vocabulary: boxes from class names, with the tiny random OWLv2 and Grounding DINO."""
import contextlib
import csv
import io
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pycocotools.coco import COCO
from torchvision.ops import box_iou

import propose_boxes as pb

CLASSES, QUERIES = "green_apple,red_apple", "a green apple,a red apple"
SIZES = [(96, 64), (64, 96), (80, 80)]  # wide, tall, square: a width/height swap or OWLv2's padding shows


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generated")
    rng = np.random.default_rng(0)
    for i, (width, height) in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"tree_{i}.png")
    return folder


def propose(images, out, model, *extra):
    return pb.main(["propose", "--open_vocabulary", model, "--classes", CLASSES, "--queries", QUERIES,
                    "--images", str(images), "--output_dir", str(out), *extra])


def pixel_labels(out, name, width, height):
    """OUT/labels/<stem>.txt -> [(class id, x1, y1, x2, y2)] in pixels."""
    rows = []
    for line in (out / "labels" / name.replace(".png", ".txt")).read_text().splitlines():
        k, cx, cy, w, h = (float(v) for v in line.split())
        rows.append((int(k), (cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height))
    return rows


@pytest.mark.parametrize("model, family", [("tiny-random-owlv2", "OWLv2"),
                                           ("tiny-random-grounding-dino", "Grounding DINO")])
def test_open_vocabulary_proposals_agree_in_every_format(images, tmp_path, capsys, model, family):
    out = tmp_path / "prop"
    assert propose(images, out, model, "--conf", "0.5") == 0
    assert f"{model}: a tiny untrained {family} model" in capsys.readouterr().out
    classes = CLASSES.split(",")
    with open(out / "proposals.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and {row["class"] for row in rows} <= set(classes) and all(float(r["conf"]) >= 0.5 for r in rows)
    tasks = json.loads((out / "label_studio_tasks.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out / "coco_predictions.json"))
    assert len(coco.getAnnIds()) == len(rows) == sum(len(t["predictions"][0]["result"]) for t in tasks)
    assert all(a["score"] >= 0.5 for a in coco.loadAnns(coco.getAnnIds()))
    assert all(t["predictions"][0]["model_version"] == f"{model} ({family})" for t in tasks)
    for i, (width, height) in enumerate(SIZES):  # the labels are the csv's boxes, of its classes, inside the image
        name = f"tree_{i}.png"
        mine = [(classes.index(r["class"]), *(float(r[c]) for c in ("x1", "y1", "x2", "y2"))) for r in rows
                if r["file"] == name]
        labels = pixel_labels(out, name, width, height)
        assert [k for k, *_ in labels] == [k for k, *_ in mine]
        assert np.allclose([box for _, *box in labels], [box for _, *box in mine], atol=0.01)
        assert all(0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height for _, x1, y1, x2, y2 in mine)
    meta = json.loads((out / "proposals.json").read_text())
    assert meta["model"] == model and meta["family"] == family and meta["queries"] == QUERIES.split(",")
    assert meta["conf"] == 0.5 and yaml.safe_load((out / "data.yaml").read_text())["names"] == dict(enumerate(classes))


def reference(model, processor, image, queries):
    """What the model and its processor's own post-processing say of one image, as (boxes clipped to the
    image, class ids, scores) tensors, computed without propose_boxes: Grounding DINO's score of a query
    is its best token's, the query's tokens being those after its '.'-numbered place in 'q0. q1.'."""
    family = model.config.model_type
    text = queries if family == "owlv2" else ". ".join(queries) + "."
    inputs = processor(images=image, text=text, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    size = [(image.height, image.width)]
    if family == "owlv2":
        result = processor.post_process_grounded_object_detection(outputs, threshold=0.0, target_sizes=size)[0]
        labels, scores = result["labels"], result["scores"]
    else:
        result = processor.post_process_grounded_object_detection(outputs, inputs["input_ids"], threshold=0.0,
                                                                  text_threshold=0.0, target_sizes=size)[0]
        ids = inputs["input_ids"][0]
        dot = processor.tokenizer.convert_tokens_to_ids(".")
        query_of = torch.cumsum(ids == dot, 0) - (ids == dot).long()  # the token's query: '.'s before it
        words = (ids != dot) & (ids != processor.tokenizer.cls_token_id) & (ids != processor.tokenizer.sep_token_id)
        probabilities = torch.sigmoid(outputs.logits[0, :, :len(ids)])
        per_query = torch.stack([probabilities[:, words & (query_of == k)].max(1).values
                                 for k in range(len(queries))], 1)
        scores, labels = per_query.max(1)
    boxes = result["boxes"].clamp(min=0).minimum(torch.tensor([image.width, image.height] * 2, dtype=torch.float32))
    assert len(boxes) == outputs.pred_boxes.shape[1]  # every box, threshold 0
    return boxes, labels, scores


@pytest.mark.parametrize("name", pb.TINY_RANDOM_MODELS)
def test_detect_gives_the_models_own_boxes_in_pixels_after_nms(images, name):
    model, processor = pb.tiny_random_detector(name)
    model.eval()
    path = images / "tree_0.png"  # 96 x 64: OWLv2 pads it to 96 x 96, Grounding DINO does not
    queries = QUERIES.split(",")
    boxes, ids, scores = (torch.tensor(v) for v in pb.detect_open_vocabulary(model, processor, [path], queries,
                                                                               iou=0.45)[path])
    with Image.open(path) as image:
        ref_boxes, ref_ids, ref_scores = reference(model, processor, image.convert("RGB"), queries)
    assert 1 < len(boxes) <= len(ref_boxes) and (boxes[:, 2] <= 96).all() and (boxes[:, 3] <= 64).all()
    assert scores.tolist() == sorted(scores.tolist(), reverse=True)
    same = torch.cdist(boxes, ref_boxes) < 1e-3  # each proposal is one of the model's boxes, as it scored it
    assert (same.sum(1) >= 1).all()
    match = same.float().argmax(1)
    assert torch.equal(ids, ref_ids[match]) and torch.allclose(scores, ref_scores[match], atol=1e-6)
    overlaps = box_iou(boxes, boxes).fill_diagonal_(0)
    assert (overlaps[ids[:, None] == ids[None, :]] <= 0.45).all()  # NMS per class
    for k in set(range(len(ref_boxes))) - set(match.tolist()):  # a box left out was under the floor or suppressed
        overlapping = box_iou(ref_boxes[k:k + 1], boxes)[0] > 0.45
        better = (ids == ref_ids[k]) & (scores >= ref_scores[k]) & overlapping
        area = (ref_boxes[k, 2] - ref_boxes[k, 0]) * (ref_boxes[k, 3] - ref_boxes[k, 1])
        assert ref_scores[k] < pb.SCORE_FLOOR or area <= 0 or better.any(), k


def test_calibration_on_the_train_split_finds_the_threshold_of_the_true_boxes(images, tmp_path, capsys):
    """The train split's true boxes are the model's own proposals scoring >= s: only threshold s gets
    every one and nothing else (F1 1), so calibration must pick s."""
    model, processor = pb.tiny_random_detector("tiny-random-owlv2")
    photos = sorted(images.iterdir())[:2]
    found = pb.detect_open_vocabulary(model.eval(), processor, photos, QUERIES.split(","), iou=0.45)
    distinct = sorted({score for *_, scores in found.values() for score in scores}, reverse=True)
    s = distinct[len(distinct) // 2]
    data = tmp_path / "data"
    for split in ("train", "val"):
        (data / split / "labels").mkdir(parents=True)
        (data / split / "images").mkdir()
        for photo in photos:  # val: only each photo's best proposal, whose threshold is another
            (data / split / "images" / photo.name).symlink_to(photo)
            boxes, ids, scores = found[photo]
            keep = [k for k, score in enumerate(scores) if score >= s] if split == "train" else [0]
            (data / split / "labels" / f"{photo.stem}.txt").write_text(
                pb.yolo_text([boxes[k] for k in keep], [ids[k] for k in keep], *Image.open(photo).size))
    (data / "fewshot.txt").write_text("".join(f"./train/images/{photo.name}\n" for photo in photos))
    (data / "fewshot.yaml").write_text(yaml.safe_dump({"train": "fewshot.txt", "val": "val/images",
                                                       "names": dict(enumerate(CLASSES.split(",")))}))
    out = tmp_path / "prop"
    assert propose(images, out, "tiny-random-owlv2", "--calibrate_data", str(data / "fewshot.yaml"),
                   "--calibrate_split", "train") == 0
    meta = json.loads((out / "proposals.json").read_text())
    assert meta["conf"] == pytest.approx(s, abs=1e-7) and "best F1 (1.000)" in meta["chosen_by"]
    assert meta["chosen_by"].endswith("fewshot.yaml train")
    proposed = [float(line.split(",")[-1]) for line in (out / "proposals.csv").read_text().split()[1:]]
    assert proposed and all(conf >= round(s, 5) - 1e-5 for conf in proposed)
    assert "on the real train split" in capsys.readouterr().out
    code = pb.main(["propose", "--open_vocabulary", "tiny-random-owlv2", "--images", str(images), "--output_dir",
                    str(out), "--calibrate_data", str(data / "fewshot.yaml"), "--calibrate_split", "train",
                    "--classes", "apple"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "but --open_vocabulary tiny-random-owlv2 is asked for ['apple']" in err[0]
    assert "give --classes green_apple,red_apple" in err[0]
    # without --classes (nor --queries), the classes and queries are the calibration data's names
    assert pb.main(["propose", "--open_vocabulary", "tiny-random-owlv2", "--images", str(images), "--output_dir",
                    str(out), "--calibrate_data", str(data / "fewshot.yaml"), "--calibrate_split", "train"]) == 0
    assert json.loads((out / "proposals.json").read_text())["queries"] == CLASSES.split(",")


@pytest.mark.parametrize("name", pb.TINY_RANDOM_MODELS)
def test_a_saved_model_folder_loads_in_fp32_and_proposes_the_same(images, tmp_path, name):
    model, processor = pb.tiny_random_detector(name)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    loaded, _ = pb.load_zero_shot_detector(str(tmp_path / "model"))
    assert loaded.dtype == torch.float32 and type(loaded) is type(model)
    assert propose(images, tmp_path / "tiny", name, "--conf", "0.3") == 0
    assert propose(images, tmp_path / "folder", str(tmp_path / "model"), "--conf", "0.3") == 0
    assert (tmp_path / "folder" / "proposals.csv").read_text() == (tmp_path / "tiny" / "proposals.csv").read_text()
    meta = json.loads((tmp_path / "folder" / "proposals.json").read_text())
    assert meta["model"] == str((tmp_path / "model").resolve())


def test_bad_open_vocabulary_input_is_refused_in_one_line(images, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for extra, problem in (
            (["--open_vocabulary", "tiny-random-owlv2", "--classes", "a,b", "--queries", "x,y,z"],
             "--queries x,y,z: 3 queries for 2 classes (a,b)"),
            (["--open_vocabulary", str(tmp_path / "nowhere" / "model")], "no such folder, and not a hub id"),
            (["--open_vocabulary", str(tmp_path / "empty")], "not a model folder (no config.json)"),
            (["--open_vocabulary", "tiny-random-grounding-dino", "--queries", "st. apple"], "no query may hold one"),
            (["--open_vocabulary", "tiny-random-owlv2", "--queries", "a" * 40], "42 tokens, more than the 32"),
            (["--open_vocabulary", "tiny-random-owlv2", "--device", "nonsense"], "--device nonsense: not a device")):
        code = pb.main(["propose", *extra, "--images", str(images), "--output_dir", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and problem in err[0], err
    assert not (tmp_path / "out" / "labels").exists()
    for extra, problem in ((["--weights", "best.pt", "--open_vocabulary"], "not allowed with argument"),
                           (["--labels", str(tmp_path), "--queries", "a"], "only with --open_vocabulary"),
                           (["--open_vocabulary", "--calibrate_split", "train"], "give that too")):
        with pytest.raises(SystemExit) as leaving:
            pb.main(["propose", *extra, "--images", str(images), "--output_dir", str(tmp_path / "out")])
        errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert leaving.value.code == 2 and len(errors) == 1 and problem in errors[0]


def test_best_boxes_keeps_each_boxs_best_class_clips_and_suppresses_per_class():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [1, 0, 11, 10], [90, 50, 120, 70], [100, 0, 110, 10],
                          [20, 20, 30, 30]], dtype=torch.float32)  # in a 100 x 60 image
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.0, 0.6], [0.95, 0.0], [0.0009, 0.0]])
    kept_boxes, ids, kept_scores = pb.best_boxes(boxes, scores, 0.45, 100, 60)
    # box 1 (IoU 0.82 with box 0, the same class) is suppressed; box 2, as red, is not; box 3 is clipped to the
    # image; box 4 lies outside it and box 5 scores under SCORE_FLOOR
    assert kept_boxes == [[0, 0, 10, 10], [1, 0, 11, 10], [90, 50, 100, 60]]
    assert ids == [0, 1, 1] and kept_scores == pytest.approx([0.9, 0.7, 0.6])


def test_grounding_dino_queries_are_the_tokens_between_its_separators():
    model, processor = pb.tiny_random_detector("tiny-random-grounding-dino")
    # '[CLS] a r ##e ##d a ##p ##p ##l ##e . p ##e ##a ##r . [SEP]': one token a character
    groups = pb.query_tokens(processor, "grounding-dino", ["a Red apple", "pear"], model.config)
    assert groups == [list(range(1, 10)), list(range(11, 15))]


@pytest.mark.parametrize("module", ["propose_boxes", "annotation_channel"])
def test_device_flag_is_checked_against_the_machine_in_one_line(monkeypatch, module):
    script = __import__(module)
    assert script.torch_device(None) == "cpu" and script.torch_device("cpu") == "cpu"
    with pytest.raises(script.InputError, match="--device gpu: not a device torch knows"):
        script.torch_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(script.InputError, match="--device 0: no CUDA device here"):
        script.torch_device("0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)     # what a 2-GPU machine answers
    assert script.torch_device("1") == "cuda:1" and script.torch_device("cuda") == "cuda"
    with pytest.raises(script.InputError, match=r"--device cuda:2: this machine's CUDA devices are 0\.\.1"):
        script.torch_device("cuda:2")
