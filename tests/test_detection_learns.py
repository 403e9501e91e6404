"""The detection half learns on real photos, with two classes: yolov8n from scratch on the 48
orchard-real train crops as green_apple and red_apple, scored on its 32 test crops, against a
detector that knows only the apples' mean size; each class's AP is pycocotools' own."""
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import evaluate
import prepare_data
import train_detectors
from conftest import two_class_orchard

IMGSZ = 192
CLASSES = ("green_apple", "red_apple")


def grid_predictions(folder, names, box_side):
    """A 'detector' that tiles every image with boxes of one size, all at confidence 0.5."""
    folder.mkdir()
    centres = np.arange(box_side / 2, 1, box_side)
    text = "".join(f"0 {cx:.6f} {cy:.6f} {box_side:.6f} {box_side:.6f} 0.5\n" for cy in centres for cx in centres)
    for name in names:
        (folder / f"{name}.txt").write_text(text)
    return folder


def pycocotools_per_class_ap(test, predictions, size):
    """Each class's AP@[.5:.95] by pycocotools, on COCO dicts built here from the YOLO files."""
    images, annotations, detections = [], [], []
    for image_id, image in enumerate(sorted((test / "images").iterdir()), start=1):
        images.append({"id": image_id, "width": size, "height": size})
        for folder, found in ((test / "labels", annotations), (predictions, detections)):
            path = folder / f"{image.stem}.txt"
            for line in (path.read_text().splitlines() if path.exists() else []):
                cls, cx, cy, w, h, *conf = map(float, line.split())
                box = {"image_id": image_id, "category_id": int(cls) + 1,
                       "bbox": [(cx - w / 2) * size, (cy - h / 2) * size, w * size, h * size]}
                found.append({**box, "id": len(found) + 1, "area": w * h * size * size, "iscrowd": 0,
                              **({"score": conf[0]} if conf else {})})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)]}
    gt.createIndex()
    evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    return [float(precision[:, :, k][precision[:, :, k] > -1].mean()) for k in range(len(CLASSES))]


def test_yolov8n_from_scratch_learns_two_classes_and_beats_the_mean_size_grid_by_far(orchard_real, tmp_path):
    source, _ = two_class_orchard(orchard_real, tmp_path / "two_class")
    data = tmp_path / "data"
    assert prepare_data.main(["--source", "yolo", "--input", str(source), "--output_dir", str(data),
                              "--resolution", str(IMGSZ), "--workers", "2"]) == 0
    test = data / "real" / "test"
    assert train_detectors.main(["--data", f"baseline={data / 'real.yaml'}", "--models", "yolov8n", "--seeds", "0",
                                 "--epochs", "30", "--imgsz", str(IMGSZ), "--nbs", "8", "--init", "scratch",
                                 "--workers", "0", "--test_images", str(test / "images"),
                                 "--project", str(tmp_path / "detectors")]) == 0
    predictions = tmp_path / "detectors" / "baseline" / "yolov8n" / "seed0" / "test_predictions"
    assert evaluate.main(["score", "--gt", str(test), "--data", str(data / "real.yaml"), "--pred", str(predictions),
                          "--out", str(tmp_path / "learned.json")]) == 0
    sides = [float(line.split()[3]) for label in (data / "real" / "train" / "labels").glob("*.txt")
             for line in label.read_text().splitlines()]
    grid = grid_predictions(tmp_path / "grid", [p.stem for p in (test / "images").iterdir()], float(np.mean(sides)))
    assert evaluate.main(["score", "--gt", str(test), "--data", str(data / "real.yaml"), "--pred", str(grid),
                          "--out", str(tmp_path / "grid.json")]) == 0
    learned, grid_scores = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("learned", "grid"))
    # measured, mAP of yolov8n seed 0: 0.165 on an AMD EPYC with 2 threads (seeds 1-3: 0.127-0.175),
    # 0.118 there with 1 thread (as under tests/run.sh's workers), 0.073 on an Intel Xeon with 2; each
    # class 0.086-0.215 on the AMD; the grid 0.00007. Same code, ultralytics and torch: the CPU's
    # kernels and the thread count change the run.
    assert learned["ap"] >= 0.04 and learned["ap"] >= 100 * grid_scores["ap"], (learned["ap"], grid_scores["ap"])
    per_class = [learned["classes"][name]["ap"] for name in CLASSES]
    assert min(per_class) >= 0.02, per_class
    assert per_class == [pytest.approx(v, abs=1e-12)
                         for v in pycocotools_per_class_ap(test, predictions, IMGSZ)]
