#!/usr/bin/env python3
"""evaluate.py: COCO box AP of YOLO-format predictions, the paper's Table 1 from many runs, a run's report.

  score  In:  --gt DIR (images/ + labels/, YOLO txt) or --gt FILE.json (COCO: images by the base
              name of file_name, boxes [x, y, w, h] in pixels), and --pred DIR (one YOLO txt per
              image, named by its stem, with a 6th column, the confidence; a missing file means no
              detections on that image). Class ids 0..K-1 are the classes of --data YAML's names (a
              COCO file's categories matched to them by name); without it, a COCO file's categories
              that its boxes use, in the order of its list, and a YOLO folder's one class 0, apple.
         Out: AP@0.5:0.95, AP50, AP75, AP small/medium/large and AR, all at --max_dets detections
              per image, over all classes (mAP), and with several classes each class's AP@0.5:0.95
              and AP50 (pycocotools' per-category value; none for a class without ground truth),
              printed and as JSON (--out); --export_coco DIR writes gt.json and predictions.json.
              AP is pycocotools' COCOeval, the scorer MinneApple's official evaluation uses; every
              figure is read from its accumulated arrays at --max_dets, as faster-coco-eval does
              (COCOeval.summarize takes AP@0.5:0.95 at 100 whatever the limit). Zero-size and
              duplicate ground-truth boxes are warned of (stderr) and count as COCOeval counts them.
  collect In: --runs DIR (train_detectors.py's project: DIR/<dataset>/<model>/seed<k>/test_predictions/)
              and --gt DIR or FILE.json (the real test split) and --data YAML, as score reads them.
         Out: --out CSV, one row per run: dataset, model, seed, ap, ap50, ap75 (what table reads), and
              with several classes ap_<name> then ap50_<name> per class (empty: no ground truth).
  table  In:  --results CSV, one row per trained detector: dataset, model, seed, ap, ap50, ap75 (and
              any ap_<name>, ap50_<name> per class).
         Out: table1.csv, table1.md, table1.png in --out_dir: mean and sample std over seeds, the
              gap of every dataset to --baseline (per class too, in the csv and md; the chart shows
              the mAP), and the paper's Table 1 beside ours for a MinneApple run (--data_stats) or
              with --paper. The --note lines go under the table and the chart, with a note naming
              the rows that scored 0 on every seed and the likely causes (--demo: a note on why a
              demo's numbers are near 0).
  datasets In: --data NAME=YAML, repeatable (ultralytics data YAMLs: train/val/test each a folder
              of images, a .txt list of image paths, or a list of those; labels by ultralytics' rule,
              /images/ -> /labels/, .txt). Out: --out_dir DIR/datasets.csv, a row per dataset and
              split: images, boxes, boxes per image (mean, median, max), box width and height in
              pixels (mean, median) and relative to the image (mean), the share of images without
              boxes, the images without a label file (counted as without boxes, as ultralytics
              trains them), and green/red/none images where a prepare_data.py manifest.csv beside
              the YAML lists every image of the split (else empty); DIR/datasets.png, the boxes per
              image and box sizes of each dataset (each image once) overlaid.
  report In:  --table table1.md (evaluate.py table) and --pictures, files or globs of the pictures
              the scripts draw (table1.png, datasets.png, contact_sheet.png, loss.png, preview/*.png,
              filter.png, leakage.png). Out: --out, one HTML page with no script and links relative
              to it: Table 1, then each picture under its heading with a line on what it shows (by
              its file name), then the inputs that matched no file, listed as not made in this run.
Outputs are checked before the work (an --out that is a folder, or lies where no file can be
created, is refused) and written through a temp file that never stays behind.
"""
import argparse
import contextlib
import copy
import csv
import glob
import html
import io
import json
import math
import os
import re
import sys
import tempfile
import textwrap
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import numpy as np
import yaml
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
METRICS = ("ap", "ap50", "ap75")
METRIC_TITLES = {"ap": "AP@0.5:0.95", "ap50": "AP@0.5", "ap75": "AP@0.75"}
CLASS_METRICS = ("ap", "ap50")                      # the figures given per class when there are several
DEFAULT_CLASS_NAMES = ("apple",)                   # the classes when no names are given: class 0 only
PAPER_MARKER = "D"                                   # the paper's values on table1.png: hollow diamonds
# The figures score reports, each as COCOeval's summary defines it but at the chosen max-dets limit:
# name -> (COCOeval's array, IoU threshold or None for the mean over 0.50:0.95, area range).
FIGURES = {"ap": ("precision", None, "all"), "ap50": ("precision", 0.5, "all"),
           "ap75": ("precision", 0.75, "all"), "ap_small": ("precision", None, "small"),
           "ap_medium": ("precision", None, "medium"), "ap_large": ("precision", None, "large"),
           "ar": ("recall", None, "all")}
GT_BOX_NOTE = ("warning: these boxes still count as ground truth, as COCOeval counts them: no detection "
               "can match a zero-size box and each copy of a duplicate needs a detection of its own, so "
               "they lower recall and AP; correct the labels to score without them")
# The paper's Table 1 (MinneApple test set, 5 seeds): (dataset, model) -> mean, std of AP, AP50, AP75.
PAPER_TABLE1 = {
    ("baseline", "yolov8x"): (0.45, 0.005, 0.79, 0.005, 0.47, 0.011),
    ("genfusion", "yolov8x"): (0.33, 0.050, 0.66, 0.060, 0.29, 0.070),
    ("baseline", "yolov8l"): (0.45, 0.008, 0.78, 0.009, 0.47, 0.008),
    ("genfusion", "yolov8l"): (0.35, 0.019, 0.70, 0.011, 0.32, 0.031),
    ("baseline", "yolov8m"): (0.44, 0.008, 0.77, 0.009, 0.46, 0.010),
    ("genfusion", "yolov8m"): (0.33, 0.008, 0.66, 0.016, 0.30, 0.013),
    ("baseline", "yolov8s"): (0.43, 0.009, 0.75, 0.005, 0.44, 0.009),
    ("genfusion", "yolov8s"): (0.32, 0.024, 0.66, 0.024, 0.28, 0.036),
    ("baseline", "yolov8n"): (0.40, 0.005, 0.73, 0.004, 0.39, 0.005),
    ("genfusion", "yolov8n"): (0.31, 0.012, 0.66, 0.015, 0.27, 0.012),
    ("baseline", "yolov5x"): (0.45, 0.010, 0.77, 0.013, 0.47, 0.013),
    ("genfusion", "yolov5x"): (0.35, 0.011, 0.69, 0.011, 0.31, 0.023),
    ("baseline", "yolov5l"): (0.44, 0.008, 0.77, 0.010, 0.46, 0.011),
    ("genfusion", "yolov5l"): (0.33, 0.028, 0.67, 0.031, 0.30, 0.038),
    ("baseline", "yolov5m"): (0.43, 0.007, 0.76, 0.005, 0.44, 0.009),
    ("genfusion", "yolov5m"): (0.33, 0.016, 0.67, 0.016, 0.29, 0.022),
    ("baseline", "yolov5s"): (0.42, 0.009, 0.75, 0.009, 0.43, 0.010),
    ("genfusion", "yolov5s"): (0.32, 0.016, 0.66, 0.023, 0.28, 0.031),
    ("baseline", "yolov5n"): (0.39, 0.004, 0.73, 0.005, 0.39, 0.009),
    ("genfusion", "yolov5n"): (0.27, 0.028, 0.61, 0.043, 0.20, 0.037),
}


class InputError(Exception):
    """Bad input: the message names the file (or flag) and what is wrong with it."""


# ---------------------------------------------------------------------------------------------
# score
# ---------------------------------------------------------------------------------------------
def read_yolo_rows(path, with_confidence, names):
    """YOLO txt -> {line number: [class, cx, cy, w, h(, conf)]}; any malformed line, or a class id
    that is not one of names' (ids 0..K-1; None: no names were given, so class 0 only), raises
    naming file:line."""
    columns = 6 if with_confidence else 5
    expected = "class cx cy w h" + (" conf" if with_confidence else "")
    rows = {}
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: unreadable text file ({error})")
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise InputError(f"{path}:{number}: expected '{expected}' numbers, got {line!r}")
        if len(values) != columns:
            raise InputError(f"{path}:{number}: expected {columns} columns ({expected}), "
                                       f"got {len(values)}: {line!r}")
        if not (values[0].is_integer() and 0 <= values[0] < len(names or DEFAULT_CLASS_NAMES)):
            raise InputError(f"{path}:{number}: class {fields[0]}: {unknown_class_problem(names)}")
        if not all(0.0 <= v <= 1.0 for v in values[1:]):
            raise InputError(f"{path}:{number}: values out of range: cx cy w h"
                                       f"{' conf' if with_confidence else ''} must lie in 0..1, got {line!r}")
        rows[number] = values
    return rows


def known_classes(names):
    """The class names as a message names them: 'one class is scored, 0 = apple' or 'the classes
    are 0 = apple, 1 = pear'."""
    if len(names) == 1:
        return f"one class is scored, 0 = {names[0]}"
    return "the classes are " + ", ".join(f"{k} = {name}" for k, name in enumerate(names))


def unknown_class_problem(names):
    """What a message says of a class id beyond names (None: no names were given)."""
    if names is None:
        return (f"no class names are given, so {known_classes(DEFAULT_CLASS_NAMES)}; "
                f"--data YAML names the classes (its names)")
    return known_classes(names)


def to_coco_bbox(row, width, height):
    """YOLO (class, cx, cy, w, h, ...) normalised -> COCO [x, y, w, h] in pixels."""
    # (YOLO boxes are continuous: x = (cx - w/2) * width, no half-pixel shift.)
    _, cx, cy, w, h = row[:5]
    return [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]


def suspect_gt_boxes(boxes):
    """{place: (class id, COCO [x, y, w, h] px)} of one image's ground truth -> (places of zero-size
    boxes (w or h <= 0 px), {place of a duplicate (the same class and box as an earlier place): place
    of its first copy})."""
    zero_size, duplicates, first_copy = [], {}, {}
    for place, (class_id, box) in boxes.items():
        key = (class_id, *box)
        if box[2] <= 0 or box[3] <= 0:
            zero_size.append(place)
        elif key in first_copy:
            duplicates[place] = first_copy[key]
        else:
            first_copy[key] = place
    return zero_size, duplicates


def listed(items, shown=5):
    """'a, b, c' of the first `shown` items, '... and N more' beyond."""
    items = [str(item) for item in items]
    rest = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + rest


def gt_box_warning(where, zero_size, duplicates, places="lines ", place="line "):
    """One warning line on zero-size and duplicate ground-truth boxes (suspect_gt_boxes) of a label
    file (where: its path; the boxes' places: line numbers) or a COCO image, or None."""
    problems = []
    if zero_size:
        problems.append(f"zero-size boxes (w or h is 0 px) on {places}{listed(zero_size)}")
    if duplicates:
        problems.append(f"duplicate boxes on {places}"
                        + listed(f"{line} (= {place}{first})" for line, first in duplicates.items()))
    return f"warning: {where}: {'; '.join(problems)}" if problems else None


def warn_gt_boxes(file_warnings, shown_files=10):
    """Print the label files' warnings to stderr: the first shown_files, a count of the rest, what is done."""
    if not file_warnings:
        return
    for warning in file_warnings[:shown_files]:
        print(warning, file=sys.stderr)
    if len(file_warnings) > shown_files:
        print(f"warning: {len(file_warnings) - shown_files} more label files with zero-size or duplicate boxes",
              file=sys.stderr)
    print(GT_BOX_NOTE, file=sys.stderr)


def read_ground_truth(gt, names=None):
    """The ground truth at gt, a YOLO split folder (read_yolo_ground_truth) or a COCO JSON file
    (read_coco_ground_truth), as a COCO dict {images, annotations, categories}: category k + 1 is
    class k, named as names (a data YAML's, read_class_names) or, without them, as those readers say."""
    return read_coco_ground_truth(gt, names) if Path(gt).is_file() else read_yolo_ground_truth(gt, names)


def class_categories(names):
    """The COCO categories of class names: class k is category k + 1."""
    return [{"id": k + 1, "name": name} for k, name in enumerate(names)]


def read_yolo_ground_truth(gt_dir, names=None):
    """The YOLO split in gt_dir (images/ and labels/) as a COCO dict {images, annotations, categories};
    zero-size and duplicate boxes are warned of on stderr and kept.

    Image ids follow the sorted file names from 1; annotation ids start at 1 (COCOeval takes id 0
    for 'unmatched', so a ground-truth box with id 0 could never count as found). The categories
    are the classes of names (class_categories); without names one, apple (YOLO class 0), and
    any other class is an error that names the flag that names them."""
    gt_dir = Path(gt_dir)
    images_dir, labels_dir = gt_dir / "images", gt_dir / "labels"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise InputError(f"{folder}: no such folder (--gt needs images/ and labels/, or a COCO JSON)")
    image_paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not image_paths:
        raise InputError(f"{images_dir}: no images")
    stems = {}
    for path in image_paths:
        if path.stem in stems:
            raise InputError(f"{path}: two images share the stem {path.stem!r}")
        stems[path.stem] = path
    unlabelled = [p.name for p in image_paths if not (labels_dir / f"{p.stem}.txt").exists()]
    if unlabelled:
        raise InputError(
            f"{labels_dir}: {len(unlabelled)} images have no label file, so they cannot be scored "
            f"(unlabelled test photos? give prepare_data.py the test masks or --test_annotations): "
            f"{', '.join(unlabelled[:10])}{' ...' if len(unlabelled) > 10 else ''}")

    images, annotations, box_warnings = [], [], []
    for image_id, (stem, path) in enumerate(sorted(stems.items()), start=1):
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Exception as error:  # PIL and its plugins raise many kinds
            raise InputError(f"{path}: unreadable image ({error!r})")
        images.append({"id": image_id, "file_name": path.name, "width": width, "height": height})
        label_path = labels_dir / f"{stem}.txt"
        boxes = {line: (int(row[0]), to_coco_bbox(row, width, height))
                 for line, row in read_yolo_rows(label_path, with_confidence=False, names=names).items()}
        for class_id, box in boxes.values():
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": class_id + 1,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
        warning = gt_box_warning(label_path, *suspect_gt_boxes(boxes))
        if warning:
            box_warnings.append(warning)
    if not annotations:
        raise InputError(f"{labels_dir}: no ground-truth boxes at all: AP is undefined")
    warn_gt_boxes(box_warnings)
    return {"images": images, "annotations": annotations, "categories": class_categories(names or DEFAULT_CLASS_NAMES)}


def load_coco_json(path):
    """A COCO JSON file -> its dict, which must hold 'images', 'annotations' and 'categories' lists."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a readable COCO JSON ({error})")
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list)
                                             for key in ("images", "annotations", "categories")):
        raise InputError(f"{path}: a COCO JSON needs 'images', 'annotations' and 'categories' lists")
    return data


def coco_classes(path, categories, annotations, names):
    """A COCO file's categories -> ({category id: class id, or None for a category that is not a
    class}, the class names). With names (a data YAML's), a category named as class k is class k (any
    case; a class no category is named as has no ground truth); without, the categories the
    annotations use are classes 0..K-1 in the order of the list, named by their names."""
    if not all(isinstance(c, dict) and "id" in c for c in categories):
        raise InputError(f"{path}: every category needs an id")
    ids = [c["id"] for c in categories]
    if len(set(ids)) < len(ids):
        raise InputError(f"{path}: two categories share an id (ids: {listed(ids, 20)})")
    if names is None:
        used = {a.get("category_id") for a in annotations if isinstance(a, dict)}
        chosen = [c for c in categories if c["id"] in used]
        names = check_class_names([str(c.get("name") or c["id"]) for c in chosen], path)
        classes = {c["id"]: k for k, c in enumerate(chosen)}
        return {c["id"]: classes.get(c["id"]) for c in categories}, names
    wanted = {name.casefold(): k for k, name in enumerate(names)}
    classes, named = {}, {}
    for category in categories:
        k = wanted.get(str(category.get("name", "")).casefold())
        if k is not None:
            if k in named:
                raise InputError(f"{path}: categories {named[k]!r} and {category['id']!r} are both named "
                                 f"{names[k]!r}: which one is the class is not clear")
            named[k] = category["id"]
        classes[category["id"]] = k
    return classes, list(names)


def is_number(value):
    """Whether value is a finite JSON number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def coco_image_entries(path, images):
    """COCO images -> {image id: {file_name (the base name), width, height}}, checked: each with an
    id of its own, a whole width and height above 0, and a name stem of its own (predictions are
    matched by stem)."""
    entries, stems = {}, {}
    for index, image in enumerate(images):
        where = f"{path}: images[{index}]"
        if not isinstance(image, dict) or not {"id", "file_name", "width", "height"} <= image.keys():
            raise InputError(f"{where}: an image needs id, file_name, width and height")
        if not all(isinstance(image[k], int) and not isinstance(image[k], bool) and image[k] > 0
                   for k in ("width", "height")):
            raise InputError(f"{where}: width and height must be whole numbers above 0, got "
                                       f"{image['width']!r} x {image['height']!r}")
        name = re.split(r"[\\/]", str(image["file_name"]))[-1]       # a base name, of / or \ paths alike
        stem = Path(name).stem
        if image["id"] in entries:
            raise InputError(f"{where}: a second image with id {image['id']!r}")
        if stem in stems:
            raise InputError(f"{where}: {name} shares the stem {stem!r} with {stems[stem]}")
        stems[stem] = name
        entries[image["id"]] = {"file_name": name, "width": image["width"], "height": image["height"]}
    if not entries:
        raise InputError(f"{path}: no images")
    return entries


def coco_boxes_by_image(path, annotations, images, classes, names):
    """COCO annotations -> {image id: {'annotations[i]': (class id, [x, y, w, h] px), ...}} (with
    each box's iscrowd in a second dict of the same keys), checked as YOLO lines are: of a category
    that is a class (classes and names: coco_classes), on a known image, four finite numbers, w and
    h at least 0 and at most the image's, the centre inside the image. A bad annotation stops with
    FILE: annotations[i]: problem."""
    boxes, crowd = {image_id: {} for image_id in images}, {}
    for index, annotation in enumerate(annotations):
        place = f"annotations[{index}]"
        where = f"{path}: {place}"
        if not isinstance(annotation, dict) or not {"image_id", "category_id", "bbox"} <= annotation.keys():
            raise InputError(f"{where}: an annotation needs image_id, category_id and bbox")
        category_id = annotation["category_id"]
        if category_id not in classes:
            raise InputError(f"{where}: category {category_id!r} is not among the categories")
        if classes[category_id] is None:
            raise InputError(f"{where}: category {category_id!r} is not named as a class of the data "
                             f"YAML: {known_classes(names)}")
        image = images.get(annotation["image_id"])
        if image is None:
            raise InputError(f"{where}: image_id {annotation['image_id']!r} is not among the images")
        bbox = annotation["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(is_number(v) for v in bbox):
            raise InputError(f"{where}: bbox must be four finite numbers [x, y, w, h], got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        width, height = image["width"], image["height"]
        if not (0 <= w <= width and 0 <= h <= height and 0 <= x + w / 2 <= width and 0 <= y + h / 2 <= height):
            raise InputError(f"{where}: bbox out of range for the {width}x{height} image "
                                       f"{image['file_name']}: w and h must lie in 0..the image's, the centre "
                                       f"inside it, got {bbox!r}")
        boxes[annotation["image_id"]][place] = (classes[category_id], [x, y, w, h])
        crowd[place] = 1 if annotation.get("iscrowd") else 0
    return boxes, crowd


def read_coco_ground_truth(path, names=None):
    """A COCO JSON file as the COCO dict read_yolo_ground_truth makes of a YOLO split: images by
    their base file name (ids from 1 in the order of the name stems, as there), the boxes of the
    classes (coco_classes: the categories named as names, or those the boxes use) as categories
    k + 1 (class_categories) with area w * h and ids from 1, iscrowd kept; zero-size and duplicate
    boxes are warned of on stderr and kept."""
    data = load_coco_json(path)
    classes, names = coco_classes(path, data["categories"], data["annotations"], names)
    entries = coco_image_entries(path, data["images"])
    boxes, crowd = coco_boxes_by_image(path, data["annotations"], entries, classes, names)
    images, annotations, box_warnings = [], [], []
    ordered = sorted(entries, key=lambda source_id: Path(entries[source_id]["file_name"]).stem)
    for image_id, source_id in enumerate(ordered, start=1):
        images.append({"id": image_id, **entries[source_id]})
        for place, (class_id, box) in boxes[source_id].items():
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": class_id + 1,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": crowd[place]})
        warning = gt_box_warning(f"{path}: image {entries[source_id]['file_name']}",
                                 *suspect_gt_boxes(boxes[source_id]), places="", place="")
        if warning:
            box_warnings.append(warning)
    if not annotations:
        raise InputError(f"{path}: no ground-truth boxes at all: AP is undefined")
    warn_gt_boxes(box_warnings)
    return {"images": images, "annotations": annotations, "categories": class_categories(names)}


def read_predictions(pred_dir, gt):
    """pred_dir's YOLO txt files with a confidence column, one per image of gt (read_ground_truth),
    named by its stem (a missing file means no detections), class k of gt's categories -> COCO
    detections (of category k + 1)."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError(f"{pred_dir}: no such folder (--pred needs one YOLO txt per image)")
    images = {Path(image["file_name"]).stem: image for image in gt["images"]}
    orphans = sorted(p.name for p in pred_dir.glob("*.txt") if p.stem not in images)
    if orphans:
        raise InputError(f"{pred_dir}: prediction files for images that are not in the "
                                   f"ground truth: {', '.join(orphans[:10])}")
    names = [category["name"] for category in gt["categories"]]
    detections = []
    for stem, image in images.items():
        pred_file = pred_dir / f"{stem}.txt"
        if pred_file.exists():
            for row in read_yolo_rows(pred_file, with_confidence=True, names=names).values():
                detections.append({"image_id": image["id"], "category_id": int(row[0]) + 1, "score": row[5],
                                   "bbox": to_coco_bbox(row, image["width"], image["height"])})
    return detections


def _quiet_coco(dataset):
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_figure(evaluator, array, iou, area, max_dets, category=None):
    """One summary figure of an accumulated COCOeval at a limit in its params.maxDets, taken as
    COCOeval.summarize takes it: the mean of the defined (> -1) values of eval[array] (precision
    [T,R,K,A,M] or recall [T,K,A,M]) at IoU threshold iou (None: all) in area range `area`, over all
    categories, or of the one at index `category` of params.catIds (a category's own AP, as
    pycocotools takes it); None when no value is defined (no ground truth of that size)."""
    params = evaluator.params
    values = evaluator.eval[array][..., params.areaRngLbl.index(area), params.maxDets.index(max_dets)]
    if category is not None:
        values = values[..., category]                   # K is the last axis left
    if iou is not None:
        values = values[np.isclose(params.iouThrs, iou)]
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else None


def summary_line(array, iou, area, max_dets, value):
    """A figure as a line of COCOeval's printed summary (undefined prints -1.000, as there)."""
    title = "Average Precision  (AP)" if array == "precision" else "Average Recall     (AR)"
    thresholds = "0.50:0.95" if iou is None else f"{iou:0.2f}"
    return (f" {title} @[ IoU={thresholds:<9} | area={area:>6} | maxDets={max_dets:>3d} ] = "
            f"{-1 if value is None else value:0.3f}\n")


def cocoeval_metrics(gt, detections, max_dets=100):
    """COCOeval (bbox) on COCO dicts -> (metrics and counts, a summary in COCOeval's layout).

    The detections are given ids and areas the way COCO.loadRes does; no detections at all is a
    valid input (AP 0). Every figure of FIGURES is read from COCOeval's arrays at max_dets
    (coco_figure); the recall is named ar<max_dets>."""
    results = [{**det, "id": i, "area": det["bbox"][2] * det["bbox"][3], "iscrowd": 0}
               for i, det in enumerate(detections, start=1)]
    coco_gt = _quiet_coco(copy.deepcopy(gt))  # COCOeval writes its scoring state (ignore) into the dicts it reads
    coco_dt = _quiet_coco({"images": gt["images"], "categories": gt["categories"], "annotations": results})
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    evaluator.params.maxDets = [max_dets]                # COCOeval keeps the top maxDets[-1] per image
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    figures = {name: coco_figure(evaluator, *spec, max_dets) for name, spec in FIGURES.items()}
    summary = "".join(summary_line(*FIGURES[name], max_dets, value) for name, value in figures.items())
    metrics = {(f"ar{max_dets}" if name == "ar" else name): value for name, value in figures.items()}
    metrics.update(images=len(gt["images"]), gt_boxes=len(gt["annotations"]),
                   predictions=len(detections), max_dets=max_dets)
    if len(gt["categories"]) > 1:
        metrics["classes"] = class_figures(evaluator, gt, max_dets)
        summary += class_summary(metrics["classes"], max_dets)
    return metrics, summary


def class_figures(evaluator, gt, max_dets):
    """{class name: {ap, ap50, gt_boxes}} of an accumulated COCOeval on gt, in the order of gt's
    categories: each class's AP@0.5:0.95 and AP50 at area all and max_dets (coco_figure of its
    category; None without ground-truth boxes, a class COCOeval's mAP leaves out) and its boxes."""
    boxes = Counter(annotation["category_id"] for annotation in gt["annotations"])
    figures = {}
    for category in gt["categories"]:
        index = evaluator.params.catIds.index(category["id"])          # its place on COCOeval's K axis
        figures[category["name"]] = {**{metric: coco_figure(evaluator, *FIGURES[metric], max_dets, category=index)
                                        for metric in CLASS_METRICS}, "gt_boxes": boxes[category["id"]]}
    return figures


def class_summary(classes, max_dets):
    """The lines score prints of class_figures: each class's AP@0.5:0.95 and AP50, or that it has none."""
    lines = [f"AP per class (pycocotools' per-category AP, area all, maxDets={max_dets}):"]
    for name, figures in classes.items():
        if figures["ap"] is None:
            lines.append(f"  {name}: no ground-truth boxes, so no AP (the mAP leaves it out)")
        else:
            lines.append(f"  {name}: AP@0.5:0.95 {figures['ap']:0.3f}, AP@0.5 {figures['ap50']:0.3f} "
                         f"({figures['gt_boxes']} ground-truth boxes)")
    return "".join(line + "\n" for line in lines)


def score(gt_dir, pred_dir, max_dets=100, export_coco=None, echo=False, names=None):
    """COCO box metrics of the predictions in pred_dir against the ground truth at gt_dir (a YOLO
    split or a COCO JSON, read_ground_truth, with the class names, if given). export_coco: a
    folder for gt.json and predictions.json; echo: print the COCOeval-style summary."""
    gt = read_ground_truth(gt_dir, names)
    detections = read_predictions(pred_dir, gt)
    metrics, summary = cocoeval_metrics(gt, detections, max_dets)
    if echo:
        print(summary, end="")
    if export_coco:
        folder = Path(export_coco)
        info = {"description": f"{gt_dir}: YOLO labels as COCO, written by evaluate.py score --export_coco"}
        write_atomic(folder / "gt.json", json.dumps({"info": info, "licenses": [], **gt}))
        write_atomic(folder / "predictions.json", json.dumps(detections))
    return metrics


# ---------------------------------------------------------------------------------------------
# collect
# ---------------------------------------------------------------------------------------------
def collect(runs_dir, gt_dir, max_dets=100, names=None):
    """Score every DIR/<dataset>/<model>/seed<k>/test_predictions/ -> result rows: dataset, model,
    seed, METRICS, then class_cells (the ground truth, read as score reads it, is read and warned
    about once)."""
    folders = sorted(Path(runs_dir).glob("*/*/seed*/test_predictions"))
    if not folders:
        raise InputError(f"{runs_dir}: no <dataset>/<model>/seed<k>/test_predictions/ folders")
    gt = read_ground_truth(gt_dir, names)
    rows = []
    for folder in tqdm(folders, desc="scoring runs", unit="run"):
        metrics, _ = cocoeval_metrics(gt, read_predictions(folder, gt), max_dets)
        run = folder.parent
        rows.append({"dataset": run.parent.parent.name, "model": run.parent.name, "seed": run.name[len("seed"):],
                     **{m: metrics[m] for m in METRICS}, **class_cells(metrics)})
    return rows


def class_cells(metrics):
    """The per-class cells of a results row from score's metrics: ap_<name> for every class, then
    ap50_<name> (None: the class has no ground truth); none for a one-class score."""
    classes = metrics.get("classes", {})
    return {f"{metric}_{name}": figures[metric] for metric in CLASS_METRICS for name, figures in classes.items()}


# ---------------------------------------------------------------------------------------------
# table
# ---------------------------------------------------------------------------------------------
def paper_model_name(model):
    """Our model name -> the paper's: 'yolov5xu.pt' -> 'yolov5x' (YOLOv5u stands in for YOLOv5)."""
    name = model.lower()
    name = Path(name).stem if name.endswith((".pt", ".yaml")) else name
    if name.startswith("yolov5") and name.endswith("u"):
        name = name[:-1]
    return name


def read_results(path):
    """Results CSV -> list of dicts with dataset, model, seed and float ap, ap50, ap75, then the
    per-class columns (result_class_columns) as floats, NaN where empty (a class without ground truth)."""
    required = ("dataset", "model", "seed", *METRICS)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = {name.strip().lower(): name for name in reader.fieldnames or []}
            missing = [name for name in required if name not in header]
            if missing:
                raise InputError(f"{path}: missing columns {', '.join(missing)} "
                                           f"(needs {', '.join(required)})")
            class_columns = result_class_columns(path, reader.fieldnames)
            rows, seen = [], set()
            for number, raw in enumerate(reader, start=2):
                row = {name: (raw[header[name]] or "").strip() for name in required}
                for name in required:
                    if not row[name]:
                        raise InputError(f"{path}:{number}: the {name} column is empty")
                for metric in METRICS:
                    row[metric] = result_value(f"{path}:{number}", metric, raw[header[metric]])
                for key, column in class_columns.items():
                    text = raw[column] or ""
                    row[key] = result_value(f"{path}:{number}", key, text) if text.strip() else math.nan
                key = (row["dataset"], row["model"], row["seed"])
                if key in seen:
                    raise InputError(f"{path}:{number}: a second row for dataset {key[0]}, "
                                               f"model {key[1]}, seed {key[2]}")
                seen.add(key)
                rows.append(row)
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read ({error})")
    if not rows:
        raise InputError(f"{path}: no result rows")
    return rows


def result_value(where, column, text):
    """A results CSV cell of a metric column -> its number, which must lie in 0..1 (where: path:line)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise InputError(f"{where}: {column} must be a number in 0..1, got {text!r}")
    return value


def result_class_columns(path, fieldnames):
    """The per-class columns of a results CSV's header, collect's ap_<name> and ap50_<name> (the
    prefix in any case) -> {their key in a row (the prefix in lower case, the name as written): the
    header's name}; a class with one of the two columns only is an error."""
    columns = {}
    for field in fieldnames:
        for metric in CLASS_METRICS:
            prefix, name = f"{metric}_", field.strip()
            if name.lower().startswith(prefix) and len(name) > len(prefix):
                columns[prefix + name[len(prefix):]] = field
    classes = dict.fromkeys(key.split("_", 1)[1] for key in columns)
    missing = [f"{metric}_{name}" for name in classes for metric in CLASS_METRICS if f"{metric}_{name}" not in columns]
    if missing:
        raise InputError(f"{path}: missing columns {', '.join(missing)} (a class has an ap_<name> and an "
                         f"ap50_<name> column)")
    return columns


def result_columns(rows):
    """The metric columns of result rows (read_results), in order: METRICS, then the per-class ones."""
    return [key for key in rows[0] if key not in ("dataset", "model", "seed")]


def mean_and_std(values):
    """(mean, sample std (ddof=1; 0 for one value)) of the values that are not NaN; (None, None) when
    none is (a class without ground truth)."""
    values = [value for value in values if not math.isnan(value)]
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)


def summarise(rows, baseline="baseline", paper=False):
    """One entry per (dataset, model) in order of first appearance: n, then per metric column
    (result_columns) the mean and sample std over seeds (mean_and_std) and the gap to the baseline's
    mean for the same model (ours minus baseline, negative = worse; None where either is missing),
    then, with paper, the paper's values where it has that pair (paper_values)."""
    groups = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["model"]), []).append(row)
    columns = result_columns(rows)
    stats = {key: {c: mean_and_std([r[c] for r in group]) for c in columns} for key, group in groups.items()}
    table = []
    for (dataset, model), group in groups.items():
        entry = {"dataset": dataset, "model": model, "seeds": len(group)}
        base = stats.get((baseline, model)) if dataset != baseline else None
        for column in columns:
            mean, std = stats[(dataset, model)][column]
            base_mean = base[column][0] if base else None
            entry[f"{column}_mean"], entry[f"{column}_std"] = mean, std
            entry[f"{column}_gap"] = mean - base_mean if mean is not None and base_mean is not None else None
        if paper:
            entry.update(paper_values(dataset, model))
        table.append(entry)
    return table


def paper_values(dataset, model):
    """The paper's Table 1 cells of a (dataset, model): paper_<metric>_mean and _std, None where the
    paper has no such pair."""
    paper = PAPER_TABLE1.get((dataset.lower(), paper_model_name(model)))
    return {f"paper_{metric}_{part}": paper[2 * i + j] if paper else None
            for i, metric in enumerate(METRICS) for j, part in enumerate(("mean", "std"))}


def table_columns(table):
    """The metric columns of Table 1 entries (summarise), as result_columns gave them."""
    return [key[:-len("_mean")] for key in table[0] if key.endswith("_mean") and not key.startswith("paper_")]


def shows_paper(table):
    """Whether Table 1 entries (summarise) carry the paper's values."""
    return "paper_ap_mean" in table[0]


def per_class(table):
    """Whether Table 1 entries (summarise) carry per-class columns."""
    return len(table_columns(table)) > len(METRICS)


def column_title(column):
    """A metric column's title: METRIC_TITLES', and for a per-class column that title and the class."""
    for metric in CLASS_METRICS:
        if column.startswith(f"{metric}_"):
            return f"{METRIC_TITLES[metric]} {column[len(metric) + 1:]}"
    return METRIC_TITLES[column]


def _cell(mean, std, gap=None):
    text = f"{mean:.3f} ± {std:.3f}"
    return text + (f" **{gap:+.3f}**" if gap is not None else "")


PAPER_SOURCE = ("Table 1 of Voetman et al., MinneApple test set; our yolov5*u models stand for the paper's "
                "anchor-based YOLOv5.")
PER_CLASS_NOTE = ("AP@0.5:0.95, AP@0.5 and AP@0.75 are over all classes (mAP); then AP@0.5:0.95 and AP@0.5 of "
                  "each class (pycocotools' per-category AP; – for a class without ground-truth boxes, which the "
                  "mAP leaves out).")


def table_caption(baseline, paper, per_class):
    """The line under Table 1 that says what its cells are: with the paper's source (paper) and what
    the per-class columns are (per_class)."""
    return " ".join([f"Mean ± sample std over seeds; in bold the gap to `{baseline}` for the same model "
                     f"(ours minus {baseline}).", *([PER_CLASS_NOTE] if per_class else []),
                     *([f"Paper: {PAPER_SOURCE}"] if paper else [])])


def chart_caption(paper, per_class):
    """The line under table1.png that says what its marks are: with the paper's diamonds (paper), and
    that the bars are the mAP, the per-class AP in table1.md (per_class)."""
    return " ".join(["Bars: mean over seeds, written on each bar with ± the sample std when several seeds; error "
                     "bars: the sample std.", *(["The AP over all classes (mAP); each class's is in table1.md."]
                                                if per_class else []),
                     *([f"Diamonds: {PAPER_SOURCE}"] if paper else [])])


def found_nothing(entry):
    """Whether a Table 1 entry (summarise) scored 0 in every metric on every seed."""
    return all(entry[f"{metric}_mean"] == 0 for metric in METRICS)


def found_nothing_note(entries):
    """The note on entries that found nothing (found_nothing) outside a demo, with its likely causes."""
    rows = ", ".join(f"{e['dataset']} {e['model']}" for e in entries)
    return (f"Found nothing: {rows} scored 0 on every seed. Likely causes: the detector trained too briefly "
            "(too few optimizer steps: ultralytics adds up the gradients of round(nbs / batch) batches per "
            "step, so a small train set makes few steps an epoch; raise train_detectors.py --epochs or lower "
            "its --nbs), apples too small to see at this --imgsz, or wrong labels (look at the proposals or "
            "the reviewed labels, and at the test labels).")


def demo_note():
    """The note of a demo run: what its numbers are, and are not."""
    return ("Demo run: the method at toy scale on the CPU, not the paper: synthetic photos, DreamBooth on a small "
            "diffusion model trained from scratch on procedural orchard photos (models/orchard-prior), and small "
            "detectors trained briefly (who labelled the generated images: the note on generated labels).")


def is_minneapple_run(stats_path):
    """Whether prepare_data.py's stats.json at stats_path is of MinneApple, the paper's data (its
    config.source); an unreadable file, or one without a source, is an error."""
    try:
        stats = json.loads(Path(stats_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"--data_stats {stats_path}: not a readable stats.json ({error})")
    config = stats.get("config") if isinstance(stats, dict) else None
    if not isinstance(config, dict) or not isinstance(config.get("source"), str):
        raise InputError(f"--data_stats {stats_path}: no config.source, where prepare_data.py's stats.json "
                         f"names the source of the data")
    return config["source"] == "minneapple"


def table_notes(table, baseline, notes=(), demo=False):
    """The notes under Table 1: the given ones, then the demo note (demo) or a found-nothing note
    on the entries that scored 0 on every seed (when there are any)."""
    if demo:
        return [*notes, demo_note()]
    nothing = [e for e in table if found_nothing(e)]
    return [*notes, found_nothing_note(nothing)] if nothing else list(notes)


def table_markdown(table, baseline, notes=()):
    """Table 1 as markdown: the table (the metric columns of table_columns, then the paper's when the
    entries carry them), its caption, then each note as a paragraph of its own."""
    columns, paper = table_columns(table), shows_paper(table)
    titles = [column_title(c) for c in columns] + ([f"Paper {METRIC_TITLES[m]}" for m in METRICS] if paper else [])
    lines = [f"| Dataset | Model | Seeds | {' | '.join(titles)} |", "|" + "---|" * (3 + len(titles))]
    for e in table:
        cells = [_cell(e[f"{c}_mean"], e[f"{c}_std"], e[f"{c}_gap"]) if e[f"{c}_mean"] is not None else "–"
                 for c in columns]
        if paper:
            cells += [f"{e[f'paper_{m}_mean']:.2f} ± {e[f'paper_{m}_std']:.3f}"
                      if e[f"paper_{m}_mean"] is not None else "–" for m in METRICS]
        lines.append(f"| {e['dataset']} | {e['model']} | {e['seeds']} | {' | '.join(cells)} |")
    for paragraph in (table_caption(baseline, paper, per_class(table)), *notes):
        lines += ["", paragraph]
    return "\n".join(lines) + "\n"


def bar_value_label(mean, std, seeds):
    """The text on a bar: the mean, with ± the std when several seeds made it."""
    return f"{mean:.2f}±{std:.2f}" if seeds > 1 else f"{mean:.2f}"


def paper_legend_handle(any_paper_value):
    """The legend entry of the paper's marker, there whether or not any row has a paper value."""
    from matplotlib.lines import Line2D
    label = "paper's Table 1" if any_paper_value else "paper's Table 1 (no row of it here)"
    return Line2D([], [], marker=PAPER_MARKER, linestyle="none", markerfacecolor="none",
                  markeredgecolor="black", label=label)


def wrapped_notes(paragraphs, width_inches, fontsize):
    """Paragraphs as one text of lines that fit width_inches at fontsize (a character ~0.55 em)."""
    characters = int(width_inches * 72 / (0.55 * fontsize))
    return "\n".join(textwrap.fill(paragraph, characters) for paragraph in paragraphs)


def table_figure(table, notes=()):
    """Table 1 as a matplotlib figure, one metric (of METRICS: over all classes) a row: one bar per
    (model, dataset) with its value written up from its foot (bar_value_label, clear of error bars and
    the paper's marks) and the std as an error bar, the paper's values as hollow diamonds when the
    entries carry them, one legend above, and the notes (markdown code marks dropped) wrapped
    beneath. The figure widens with the number of bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patheffects import withStroke

    models = list(dict.fromkeys(e["model"] for e in table))
    datasets = list(dict.fromkeys(e["dataset"] for e in table))
    lookup = {(e["dataset"], e["model"]): e for e in table}
    width = 0.8 / len(datasets)
    figure_width, row_height = max(9.0, 1.5 + 0.3 * len(models) * len(datasets)), 2.6
    figure, axes = plt.subplots(len(METRICS), 1, sharex=True, squeeze=False,
                                figsize=(figure_width, row_height * len(METRICS) + 1.2))
    x = np.arange(len(models))
    for axis, metric in zip(axes[:, 0], METRICS):
        for k, dataset in enumerate(datasets):
            entries = [lookup.get((dataset, m)) for m in models]
            offset = x + (k - (len(datasets) - 1) / 2) * width
            means = [e[f"{metric}_mean"] if e else 0 for e in entries]
            stds = [e[f"{metric}_std"] if e else 0 for e in entries]
            axis.bar(offset, means, width, yerr=stds, capsize=3, label=dataset)
            for o, e, mean, std in zip(offset, entries, means, stds):
                if e:
                    axis.text(o, 0.02, bar_value_label(mean, std, e["seeds"]), rotation=90, ha="center",
                              va="bottom", fontsize=7, path_effects=[withStroke(linewidth=2, foreground="white")])
            paper = [(o, e[f"paper_{metric}_mean"]) for o, e in zip(offset, entries)
                     if e and e.get(f"paper_{metric}_mean") is not None]
            if paper:
                axis.scatter(*zip(*paper), marker=PAPER_MARKER, s=30, facecolors="none", edgecolors="black",
                             zorder=3)
        axis.set_ylabel(f"{METRIC_TITLES[metric]}\non the real test set")
        axis.set_ylim(0, 1)
    axes[-1, 0].set_xticks(x, models, rotation=45, ha="right")
    handles = axes[0, 0].get_legend_handles_labels()[0]
    if shows_paper(table):
        handles.append(paper_legend_handle(any(e["paper_ap_mean"] is not None for e in table)))
    figure.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.45 / figure.get_figheight()))
    text = wrapped_notes([note.replace("`", "") for note in notes], figure_width - 0.4, 8)
    figure.text(0.01, -0.01, text, ha="left", va="top", fontsize=8, parse_math=False)
    return figure


def plot_table(table, path, notes=()):
    """Save table_figure as a PNG at path, grown to hold the notes beneath."""
    import matplotlib.pyplot as plt
    figure = table_figure(table, notes)
    figure.savefig(path, format="png", dpi=120, bbox_inches="tight", pad_inches=0.2)
    plt.close(figure)


def write_table(results_csv, out_dir, baseline="baseline", notes=(), demo=False, paper=False):
    """results CSV -> out_dir/table1.csv, table1.md, table1.png (the notes of table_notes under the
    markdown and the chart), with the paper's values beside ours when paper; returns the table."""
    rows = read_results(results_csv)
    if not any(r["dataset"] == baseline for r in rows):
        datasets = sorted({r["dataset"] for r in rows})
        raise InputError(f"{results_csv}: no rows of the baseline dataset {baseline!r} "
                                   f"(datasets: {', '.join(datasets)}); choose one with --baseline")
    table = summarise(rows, baseline, paper)
    all_notes = table_notes(table, baseline, notes, demo)
    out_dir = Path(out_dir)
    text = io.StringIO()
    writer = csv.DictWriter(text, list(table[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    write_atomic(out_dir / "table1.csv", text.getvalue())
    write_atomic(out_dir / "table1.md", table_markdown(table, baseline, all_notes))
    create_atomic(out_dir / "table1.png",
                  lambda tmp: plot_table(table, tmp, [chart_caption(paper, per_class(table)), *all_notes]))
    return table


# ---------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------
DATASET_SPLITS = ("train", "val", "test")
# ultralytics' IMG_FORMATS: the files a data YAML's folder or list contributes as images.
ULTRALYTICS_IMAGE_SUFFIXES = ("avif", "bmp", "dng", "heic", "heif", "jp2", "jpeg", "jpeg2000", "jpg", "mpo", "png",
                              "tif", "tiff", "webp")
MANIFEST_COLOURS = ("green", "red", "none")  # prepare_data.py's manifest.csv colour column
DATASET_COLUMNS = ["dataset", "split", "images", "boxes", "boxes_per_image_mean", "boxes_per_image_median",
                   "boxes_per_image_max", "box_width_px_mean", "box_width_px_median", "box_height_px_mean",
                   "box_height_px_median", "box_width_rel_mean", "box_height_rel_mean", "images_without_boxes_share",
                   "images_without_label_file", *(f"{colour}_images" for colour in MANIFEST_COLOURS)]


def parse_named_yamls(specs):
    """['NAME=YAML', ...] -> {NAME: Path(YAML)}; a malformed or repeated NAME is an error."""
    named = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--data {spec!r}: expected NAME=YAML, e.g. real=OUT/real.yaml")
        if name in named:
            raise InputError(f"--data {name} is given twice")
        named[name] = Path(path)
    return named


def read_data_yaml(path):
    """An ultralytics data YAML -> its dict, which must have train and val."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise InputError(f"{path}: not a readable data YAML ({error})")
    if not isinstance(data, dict) or "train" not in data or "val" not in data:
        raise InputError(f"{path}: a data YAML is a mapping with train and val (and path, test, names)")
    return data


def read_class_names(path):
    """A data YAML (read_data_yaml) -> its class names in the order of the class ids (class_names_of);
    a YAML without names is an error."""
    names = class_names_of(path, read_data_yaml(path))
    if names is None:
        raise InputError(f"{path}: no names: a data YAML names its classes, e.g. names: {{0: apple}}")
    return names


def class_names_of(path, data):
    """A data YAML's dict -> its names, a list or a mapping {0: name, 1: name, ...} of the ids 0..K-1,
    as a list in id order (checked: check_class_names), or None when it has no names."""
    names = data.get("names")
    if names is None:
        return None
    if isinstance(names, dict) and set(names) == set(range(len(names))):
        names = [names[k] for k in range(len(names))]
    if not isinstance(names, list) or not names:
        raise InputError(f"{path}: names must be a list or a mapping {{0: name, 1: name, ...}} of the class "
                         f"ids 0..K-1, got {names!r}")
    return check_class_names([str(name) for name in names], path)


def check_class_names(names, where):
    """Class names, checked: none empty, none repeated in any case (labels and categories are matched
    to them by name, ignoring case); InputError naming `where`."""
    seen = {}
    for k, name in enumerate(names):
        if not name.strip() or name.casefold() in seen:
            problem = "is empty" if not name.strip() else f"repeats class {seen[name.casefold()]}'s"
            raise InputError(f"{where}: the name of class {k}, {name!r}, {problem}")
        seen[name.casefold()] = k
    return names


def split_entries(yaml_path, data):
    """{split: [folder or .txt list, ...]} of the splits a data YAML lists (of train, val, test, in that
    order), each relative to its `path` (ultralytics: a relative path counts from the working folder;
    without one, the YAML's folder)."""
    root = Path(data.get("path") or Path(yaml_path).parent)
    entries = {}
    for split in DATASET_SPLITS:
        value = data.get(split)
        if value:
            entries[split] = [root / str(entry) for entry in (value if isinstance(value, list) else [value])]
    if not entries:
        raise InputError(f"{yaml_path}: lists no train, val or test split")
    return entries


def is_ultralytics_image(path):
    """Whether ultralytics takes the file at path for an image (by its suffix)."""
    return str(path).rpartition(".")[-1].lower() in ULTRALYTICS_IMAGE_SUFFIXES


def listed_images(list_file):
    """The images an ultralytics image list names (e.g. prepare_data.py's fewshot.txt), one a line, read as
    ultralytics reads it: './x' from the list's folder, any other relative path from the working folder, a
    line whose suffix is not an image's left out. -> the images, in order, each once (perhaps none);
    InputError naming FILE:LINE of one that is not there."""
    try:
        lines = Path(list_file).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{list_file}: not a readable list of images ({error})")
    images = {}
    for number, line in enumerate(lines, start=1):
        name = line.strip()
        if is_ultralytics_image(name):
            image = Path(list_file).parent / name[2:] if name.startswith("./") else Path(name)
            if not image.is_file():
                raise InputError(f"{list_file}:{number}: {name}: no such image")
            images[image] = None
    return list(images)


def split_images(yaml_path, split, entries):
    """The images of one split: every image under each folder (recursively) and each .txt list's,
    sorted, as ultralytics finds them; a missing entry or a split without images is an error."""
    images = []
    for entry in entries:
        if entry.is_dir():
            images += [Path(p) for p in glob.glob(str(Path(glob.escape(str(entry))) / "**" / "*.*"), recursive=True)
                       if is_ultralytics_image(p)]
        elif entry.is_file():
            images += listed_images(entry)
        else:
            raise InputError(f"{yaml_path}: the {split} entry {entry} does not exist")
    if not images:
        raise InputError(f"{yaml_path}: no images in the {split} split ({listed(entries)})")
    return sorted(images, key=str)


def label_file_of(image_path):
    """ultralytics' label file of an image: the last /images/ of its path made /labels/, the suffix .txt."""
    path = str(image_path)
    return Path(f"{os.sep}labels{os.sep}".join(path.rsplit(f"{os.sep}images{os.sep}", 1)).rsplit(".", 1)[0] + ".txt")


def image_record(image_path, names):
    """One image of a dataset: {width, height, labelled (it has a label file), boxes: [(w, h)
    normalised, ...]}; label lines are checked as read_yolo_rows checks them, against the dataset's
    class names (None: class 0 only), with FILE:LINE errors."""
    try:
        with Image.open(image_path) as image:
            width, height = image.size
    except Exception as error:  # PIL and its plugins raise many kinds
        raise InputError(f"{image_path}: unreadable image ({error!r})")
    label_file = label_file_of(image_path)
    labelled = label_file.is_file()
    rows = read_yolo_rows(label_file, with_confidence=False, names=names).values() if labelled else []
    return {"width": width, "height": height, "labelled": labelled, "boxes": [(row[3], row[4]) for row in rows]}


def manifest_colours(yaml_path):
    """{resolved image path: colour} from the prepare_data.py manifest.csv beside a data YAML, or None
    when there is none or it has no file and colour columns."""
    manifest = Path(yaml_path).parent / "manifest.csv"
    if not manifest.is_file():
        return None
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{manifest}: unreadable manifest ({error})")
    if not rows or not {"file", "colour"} <= rows[0].keys():
        return None
    return {(manifest.parent / row["file"]).resolve(): row["colour"] for row in rows}


def colour_counts(resolved_images, colours):
    """{colour: number of images} of MANIFEST_COLOURS over images (resolved paths), from manifest_colours; None
    when there is no manifest or it does not list every image."""
    if colours is None:
        return None
    found = [colours.get(path) for path in resolved_images]
    if None in found:
        return None
    return {colour: found.count(colour) for colour in MANIFEST_COLOURS}


def split_figures(records, colours):
    """The datasets.csv figures (DATASET_COLUMNS after dataset and split) of one split's image records
    (image_record) and its colour_counts; box figures are None (empty) when the split has no box."""
    per_image = np.array([len(r["boxes"]) for r in records])
    relative = np.array([box for r in records for box in r["boxes"]]).reshape(-1, 2)
    pixels = relative * np.repeat([(r["width"], r["height"]) for r in records], per_image, axis=0)
    has_boxes = len(relative) > 0

    def box_figure(reduce, values):
        return float(reduce(values)) if has_boxes else None

    return {"images": len(records), "boxes": int(per_image.sum()),
            "boxes_per_image_mean": float(per_image.mean()), "boxes_per_image_median": float(np.median(per_image)),
            "boxes_per_image_max": int(per_image.max()),
            "box_width_px_mean": box_figure(np.mean, pixels[:, 0]),
            "box_width_px_median": box_figure(np.median, pixels[:, 0]),
            "box_height_px_mean": box_figure(np.mean, pixels[:, 1]),
            "box_height_px_median": box_figure(np.median, pixels[:, 1]),
            "box_width_rel_mean": box_figure(np.mean, relative[:, 0]),
            "box_height_rel_mean": box_figure(np.mean, relative[:, 1]),
            "images_without_boxes_share": float(np.mean(per_image == 0)),
            "images_without_label_file": sum(not r["labelled"] for r in records),
            **{f"{colour}_images": (colours or {}).get(colour) for colour in MANIFEST_COLOURS}}


def dataset_statistics(name, yaml_path):
    """One data YAML -> ([datasets.csv row per split it lists], {resolved image path: image_record}
    of all its images, each read once however many splits list it)."""
    data = read_data_yaml(yaml_path)
    names = class_names_of(yaml_path, data)
    colours = manifest_colours(yaml_path)
    rows, records = [], {}
    for split, entries in split_entries(yaml_path, data).items():
        images = split_images(yaml_path, split, entries)
        keys = [image.resolve() for image in images]
        for image, key in tqdm(list(zip(images, keys)), desc=f"{name} {split}", unit="image"):
            if key not in records:
                records[key] = image_record(image, names)
        rows.append({"dataset": name, "split": split,
                     **split_figures([records[key] for key in keys], colour_counts(keys, colours))})
    return rows, records


def csv_cell(value):
    """A datasets.csv cell: empty for None, floats to 6 significant digits."""
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


def distributions(records):
    """{boxes per image, box width px, box height px} arrays over image records (image_record)."""
    records = list(records)
    return {"boxes_per_image": np.array([len(r["boxes"]) for r in records]),
            "box_width_px": np.array([w * r["width"] for r in records for w, _ in r["boxes"]]),
            "box_height_px": np.array([h * r["height"] for r in records for _, h in r["boxes"]])}


# The panels of datasets.png: (distributions key, x axis label, y axis label, panel title).
DATASET_PANELS = (("boxes_per_image", "boxes per image", "share of images", "Boxes per image"),
                  ("box_width_px", "box width (px)", "share of boxes", "Box width"),
                  ("box_height_px", "box height (px)", "share of boxes", "Box height"))


def histogram_edges(key, pooled):
    """Shared bin edges of one panel: whole counts for boxes per image (at most 40 bins), 30 equal bins
    over the pooled range for box sizes."""
    if key == "boxes_per_image":
        step = max(1, math.ceil((pooled.max() + 1) / 40))
        return np.arange(-0.5, pooled.max() + step + 0.5, step)
    return np.histogram_bin_edges(pooled, bins=30)


def datasets_figure(per_dataset):
    """datasets.png as a matplotlib figure: one panel per DATASET_PANELS, each dataset a step line of
    shares (so datasets of any size compare) over shared bins, one legend with each dataset's images and
    boxes, and a title."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    figure, axes = plt.subplots(1, len(DATASET_PANELS), figsize=(5 * len(DATASET_PANELS), 4.2))
    for axis, (key, xlabel, ylabel, title) in zip(axes, DATASET_PANELS):
        pooled = np.concatenate([values[key] for values in per_dataset.values()])
        axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
        if not pooled.size:
            axis.text(0.5, 0.5, "no boxes", transform=axis.transAxes, ha="center", va="center")
            continue
        edges = histogram_edges(key, pooled)
        for colour_index, values in enumerate(per_dataset.values()):
            if values[key].size:
                axis.hist(values[key], bins=edges, weights=np.full(values[key].size, 1 / values[key].size),
                          histtype="step", linewidth=1.8, color=f"C{colour_index}")
    handles = [Line2D([], [], color=f"C{k}", linewidth=1.8,
                      label=f"{name} ({v['boxes_per_image'].size} images, {v['box_width_px'].size} boxes)")
               for k, (name, v) in enumerate(per_dataset.items())]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 3), frameon=False)
    figure.suptitle("Datasets: boxes per image and box sizes (each image once, all its splits together)")
    figure.tight_layout(rect=(0, 0.06 + 0.04 * ((len(handles) - 1) // 3), 1, 1))
    return figure


def plot_datasets(per_dataset, path):
    """Save datasets_figure as a PNG at path."""
    import matplotlib.pyplot as plt
    figure = datasets_figure(per_dataset)
    try:
        figure.savefig(path, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(figure)


def write_datasets(named_yamls, out_dir):
    """datasets.csv (a row per dataset and split, DATASET_COLUMNS) and datasets.png (datasets_figure)
    in out_dir, each written atomically -> the rows."""
    rows, per_dataset = [], {}
    for name, yaml_path in named_yamls.items():
        dataset_rows, records = dataset_statistics(name, yaml_path)
        rows += dataset_rows
        per_dataset[name] = distributions(records.values())
    text = io.StringIO()
    writer = csv.DictWriter(text, DATASET_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)
    write_atomic(Path(out_dir) / "datasets.csv", text.getvalue())
    create_atomic(Path(out_dir) / "datasets.png", lambda tmp: plot_datasets(per_dataset, tmp))
    return rows


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
# What the report says of each picture the toolkit's scripts draw, by file name (proposal previews by
# their folder, preview/): (heading, the line under it: {folder} is the name of the folder the picture
# lies in, {file} its file name). Pictures of other names go under OTHER_PICTURES.
PICTURE_CAPTIONS = {
    "table1.png": ("Table 1 as a chart",
                   "Table 1 as bars: the mean over seeds on each bar (± the sample std when several seeds), the "
                   "paper's values as hollow diamonds on a MinneApple run, the table's notes beneath."),
    "datasets.png": ("The datasets side by side",
                     "Boxes per image and box sizes of every training set (evaluate.py datasets): do the generated "
                     "trees carry as many and as large apples as the real ones? The figures are in datasets.csv "
                     "beside it."),
    "contact_sheet.png": ("Generated images",
                          "Every generated image as a thumbnail (generate.py): do they look like orchard photos?"),
    "loss.png": ("DreamBooth loss curves",
                 "The training loss of the {folder} DreamBooth model per optimizer step (train_dreambooth.py)."),
    "preview": ("Proposed boxes",
                "The proposed boxes drawn on generated images, {file} (propose_boxes.py; the sheet's title says "
                "who proposed them): what the review starts from."),
    "filter.png": ("Annotation channel: off-domain filter",
                   "The generated images on a t-SNE map by cluster, the rejected ones crossed "
                   "(annotation_channel.py filter)."),
    "leakage.png": ("Annotation channel: leakage",
                    "How much brighter red and green are on each annotation dot than around it, per image "
                    "(annotation_channel.py leakage)."),
}
OTHER_PICTURES = ("Other pictures", "{file}")
REPORT_STYLE = """
body { font-family: sans-serif; max-width: 80em; margin: 1em auto; padding: 0 1em; line-height: 1.4; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.5em; text-align: right; }
th:nth-child(-n+2), td:nth-child(-n+2) { text-align: left; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figure { margin: 1em 0; }
figcaption { color: #333; }
"""


def write_report(page, table, picture_specs):
    """The report page at page (report_html), written atomically -> the inputs not made: table (a
    table1.md) when it is not a file, and each of picture_specs (a file or a glob) that matches none."""
    page = Path(page)
    sections, missing = report_parts(picture_specs)
    if table and not Path(table).is_file():
        missing.insert(0, table)
    given = [page.parent, *([table] if table else []), *picture_specs]
    run_folder = Path(os.path.commonpath([Path(path).resolve() for path in given]))
    shown_table = Path(table) if table and Path(table).is_file() else None
    write_atomic(page, report_html(page, shown_table, sections, missing, run_folder))
    return missing


def report_parts(picture_specs):
    """The pictures picture_specs name (each a file, or a glob of files, sorted), grouped by heading
    in the order the headings first appear -> ([(heading, [(path, caption), ...]), ...], the specs
    that match no file)."""
    sections, missing = {}, []
    for spec in picture_specs:
        paths = [Path(spec)] if Path(spec).is_file() else sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
        if not paths:
            missing.append(spec)
        for path in paths:
            heading, caption = PICTURE_CAPTIONS.get(path.name) or PICTURE_CAPTIONS.get(path.parent.name, OTHER_PICTURES)
            sections.setdefault(heading, []).append((path, caption.format(folder=path.parent.name, file=path.name)))
    return list(sections.items()), missing


def report_html(page, table, sections, missing, root):
    """The report page (HTML5, no script, every link relative to the page): Table 1 from table (a
    table1.md, or None), then the sections of report_parts, then the list of what was not made; paths
    are named relative to root, the folder that holds every input (the run folder)."""
    page_dir = page.resolve().parent
    body = ["<h1>Genfusion report</h1>",
            f"<p>Run folder <code>{html.escape(str(root))}</code>. Each picture links to its file.</p>"]
    if table:
        body += ["<section>", "<h2>Table 1</h2>", markdown_blocks_html(table.read_text(encoding="utf-8")), "</section>"]
    for heading, pictures in sections:
        body += ["<section>", f"<h2>{html.escape(heading)}</h2>",
                 *(figure_html(path, caption, f"{heading}: {relative_name(path, root)}", page_dir)
                   for path, caption in pictures), "</section>"]
    if missing:
        body += ["<section>", "<h2>Not made in this run</h2>", "<ul>",
                 *(f"<li><code>{html.escape(relative_name(spec, root))}</code></li>" for spec in missing), "</ul>",
                 "</section>"]
    return "\n".join(["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
                      '<meta name="viewport" content="width=device-width, initial-scale=1">',
                      f"<title>Genfusion report: {html.escape(root.name)}</title>",
                      f"<style>{REPORT_STYLE}</style>", "</head>", "<body>", *body, "</body>", "</html>", ""])


def figure_html(path, caption, alt, page_dir):
    """One picture as a figure: the image (alt text alt), linking to its file, and the caption beneath."""
    url = html.escape(relative_url(path, page_dir))
    return (f'<figure><a href="{url}"><img src="{url}" alt="{html.escape(alt)}"></a>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def relative_url(path, page_dir):
    """The URL of path relative to the folder page_dir, percent-encoded, '/'-separated."""
    return quote(Path(os.path.relpath(Path(path).resolve(), page_dir)).as_posix())


def relative_name(path, root):
    """path relative to the folder root, '/'-separated, when it lies inside root; else as given."""
    resolved = Path(path).resolve()
    return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(path)


def markdown_blocks_html(text):
    """table1.md (table_markdown) as HTML: its pipe table as a table, every other paragraph a <p>."""
    blocks = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        if all(line.lstrip().startswith("|") for line in lines):
            blocks.append(markdown_table_html(lines))
        else:
            blocks.append(f"<p>{inline_markdown_html(' '.join(lines))}</p>")
    return "\n".join(blocks)


def markdown_table_html(lines):
    """A markdown pipe table (header, separator, rows) as an HTML table with a header row."""
    rows = [[inline_markdown_html(cell.strip()) for cell in line.strip().strip("|").split("|")]
            for line in lines if not set(line.strip()) <= set("|-: ")]
    header, *body = rows
    head = "".join(f'<th scope="col">{cell}</th>' for cell in header)
    rows_html = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>\n" for row in body)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows_html}</tbody>\n</table>"


def inline_markdown_html(text):
    """One line of markdown as HTML: escaped, with **bold** and `code` kept."""
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


# ---------------------------------------------------------------------------------------------
# helpers: output checks and atomic writes
# ---------------------------------------------------------------------------------------------
def check_output_folder(path, flag, inputs=(), written=()):
    """Create the output folder FLAG names and write a probe file in it, before any work. InputError,
    in one line, when a file is in the way, the folder cannot be written, or it would replace or mix
    with an input: the folder or a subfolder it writes (PATH/<w> for w in written) is an input folder
    or lies inside one, or an input lies inside a subfolder it writes."""
    path = Path(path)
    targets = [path.resolve()] + [(path / sub).resolve() for sub in written]
    for source in (Path(folder).resolve() for folder in inputs):
        in_a_written = any(source == target or target in source.parents for target in targets[1:])
        if in_a_written or any(target == source or source in target.parents for target in targets):
            raise InputError(f"{flag} {path}: it overlaps the input folder {source}, whose files it would "
                             f"replace or mix with its own; give another folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as error:
        problem = "is a file, not a folder" if path.is_file() else "cannot be created or written"
        raise InputError(f"{flag} {path}: {problem} ({error.strerror or error})")
    return path


def check_output_file(path, flag):
    """Check, before any work, that a file can be made at path: InputError 'FLAG PATH: problem' when
    it is a folder, a file lies where a folder above it should be, or the nearest folder takes no file."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a folder, not a file")
    existing = next(p for p in path.parents if p.exists())
    if not existing.is_dir():
        raise InputError(f"{flag} {path}: {existing} is a file, not a folder")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        raise InputError(f"{flag} {path}: cannot create files in {existing} ({error.strerror or error})")


@contextlib.contextmanager
def output_errors_named(flag, path):
    """An OSError while writing an output becomes InputError 'FLAG PATH: cannot write (...)'."""
    try:
        yield
    except OSError as error:
        raise InputError(f"{flag} {path}: cannot write ({error.strerror or error})") from error


def create_atomic(path, write):
    """Make path through write(temp path) and a rename, so path is either as before or complete;
    the temp file (beside path, with its suffix) is removed when anything fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path, text):
    """Write text to path through create_atomic."""
    create_atomic(path, lambda tmp: tmp.write_text(text))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help with descriptions and examples kept as written, and '(default: X)' only where X is a
    value one could type: not for None (the help says what happens), an empty text or list, or a switch."""

    def _get_help_string(self, action):
        switch = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)
        if switch or action.default is None or action.default in ("", []):
            return action.help
        return super()._get_help_string(action)


DATA_HELP = ("the data YAML whose names name the class ids 0..K-1 of the label and prediction files (a COCO "
             "--gt's categories are matched to them by name); without it, a COCO --gt's categories that its "
             "boxes use, in its order, or for a YOLO --gt one class 0, apple")


def build_parser():
    """The command line: one subcommand per job, each run by the function of its name in COMMANDS."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    score_parser = commands.add_parser("score", help="COCO AP of YOLO predictions on a labelled split",
                                       formatter_class=HelpFormatter)
    score_parser.add_argument("--gt", required=True, help="the ground truth: a folder with images/ and labels/ "
                              "(YOLO txt), or a COCO JSON file (images matched to predictions by file name stem)")
    score_parser.add_argument("--pred", required=True,
                              help="folder with one 'class cx cy w h conf' txt per image")
    score_parser.add_argument("--data", metavar="YAML", help=DATA_HELP)
    score_parser.add_argument("--out", help="write the metrics to this JSON file")
    score_parser.add_argument("--max_dets", type=int, default=100,
                              help="detections per image that count, for every figure (COCO's and MinneApple's "
                                   "scorer's limit)")
    score_parser.add_argument("--export_coco", help="write gt.json and predictions.json (COCO) here")
    collect_parser = commands.add_parser("collect", help="score every run of train_detectors.py into a results CSV",
                                         formatter_class=HelpFormatter)
    collect_parser.add_argument("--runs", required=True, help="train_detectors.py's --project folder")
    collect_parser.add_argument("--gt", required=True, help="the labelled test split: a folder with images/ and "
                                "labels/, or a COCO JSON file")
    collect_parser.add_argument("--data", metavar="YAML", help=DATA_HELP)
    collect_parser.add_argument("--out", required=True, help="the results CSV to write")
    collect_parser.add_argument("--max_dets", type=int, default=100,
                                help="detections per image that count, for every figure")
    table_parser = commands.add_parser("table", help="Table 1 from one row per trained detector",
                                       formatter_class=HelpFormatter)
    table_parser.add_argument("--results", required=True,
                              help="CSV with columns dataset, model, seed, ap, ap50, ap75 (and ap_<name>, "
                                   "ap50_<name> per class, as collect writes them for several classes)")
    table_parser.add_argument("--data_stats", metavar="STATS.json",
                              help="prepare_data.py's stats.json of the data scored: the paper's Table 1 is "
                                   "shown beside ours when its source is minneapple (the paper's data)")
    table_parser.add_argument("--paper", action="store_true",
                              help="show the paper's Table 1 beside ours whatever the data")
    table_parser.add_argument("--out_dir", required=True, help="where table1.csv/.md/.png go")
    table_parser.add_argument("--baseline", default="baseline", help="dataset the gaps are measured to")
    table_parser.add_argument("--note", action="append", default=[], help="a line added under table1.md and "
                              "table1.png, repeatable (e.g. how the generated images were labelled)")
    table_parser.add_argument("--demo", action="store_true",
                              help="a demo run (run_all.sh --demo): the notes say why its numbers may be near 0, "
                                   "instead of naming rows that found nothing")
    datasets_parser = commands.add_parser("datasets", help="images, boxes, box sizes and apple colours of data "
                                          "YAMLs: datasets.csv and datasets.png", formatter_class=HelpFormatter)
    datasets_parser.add_argument("--data", action="append", required=True, metavar="NAME=YAML",
                                 help="an ultralytics data YAML and the name it goes by, repeatable (e.g. "
                                      "real=OUT/real.yaml genfusion=WORK/genfusion/data.yaml)")
    datasets_parser.add_argument("--out_dir", required=True, help="where datasets.csv and datasets.png go")
    report_parser = commands.add_parser("report", help="one HTML page of a run: Table 1, its chart and the run's "
                                        "pictures", formatter_class=HelpFormatter)
    report_parser.add_argument("--out", required=True, help="the page to write, e.g. WORK/results/report.html")
    report_parser.add_argument("--table", help="table1.md (evaluate.py table) to show first")
    report_parser.add_argument("--pictures", nargs="+", default=[], metavar="FILE_OR_GLOB",
                               help="the pictures to show, in this order (quote a glob), each under the heading "
                                    "and caption of its file name; any that matches no file is listed as not made")
    return parser


def run_score(args):
    if args.out:
        check_output_file(args.out, "--out")
    if args.export_coco:
        check_output_folder(args.export_coco, "--export_coco")
    names = read_class_names(args.data) if args.data else None
    metrics = score(args.gt, args.pred, args.max_dets, args.export_coco, echo=True, names=names)
    print(json.dumps(metrics, indent=2))
    if args.out:
        with output_errors_named("--out", args.out):
            write_atomic(args.out, json.dumps(metrics, indent=2) + "\n")


def run_collect(args):
    check_output_file(args.out, "--out")
    rows = collect(args.runs, args.gt, args.max_dets, read_class_names(args.data) if args.data else None)
    text = io.StringIO()
    writer = csv.DictWriter(text, list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with output_errors_named("--out", args.out):
        write_atomic(args.out, text.getvalue())
    print(f"scored {len(rows)} runs -> {args.out}")


def run_table(args):
    paper = args.paper or bool(args.data_stats and is_minneapple_run(args.data_stats))
    check_output_folder(args.out_dir, "--out_dir")
    with output_errors_named("--out_dir", args.out_dir):
        write_table(args.results, args.out_dir, args.baseline, args.note, args.demo, paper)
    print((Path(args.out_dir) / "table1.md").read_text(encoding="utf-8"), end="")
    print(f"wrote {Path(args.out_dir) / 'table1.csv'}, table1.md, table1.png")


def run_datasets(args):
    named_yamls = parse_named_yamls(args.data)
    check_output_folder(args.out_dir, "--out_dir")
    with output_errors_named("--out_dir", args.out_dir):
        write_datasets(named_yamls, args.out_dir)
    print(f"wrote {Path(args.out_dir) / 'datasets.csv'}, datasets.png")


def run_report(args):
    check_output_file(args.out, "--out")
    with output_errors_named("--out", args.out):
        missing = write_report(args.out, args.table, args.pictures)
    print(f"wrote {args.out}" + (f" (not made in this run: {', '.join(missing)})" if missing else ""))


COMMANDS = {"score": run_score, "collect": run_collect, "table": run_table, "datasets": run_datasets,
            "report": run_report}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("score", "collect") and args.max_dets < 1:
        parser.error("--max_dets must be at least 1")
    try:
        COMMANDS[args.command](args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
