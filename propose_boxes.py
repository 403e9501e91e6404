#!/usr/bin/env python3
"""propose_boxes.py: a detector proposes boxes on generated images; a person's review comes back.

The paper's annotation step (section 2.3.1): a baseline detector trained on real photos proposes
boxes, a person removes the false ones and adds the missed ones in a labelling tool, and the
reviewed labels become the training set.

  propose  In:  --weights BEST.pt (the baseline detector), --open_vocabulary [MODEL] (no trained
                detector: a zero-shot one, OWLv2 or Grounding DINO, asked for each class by its
                query, --queries, else its name) or --labels DIR (YOLO labels, no detector),
                --images DIR (generate.py's images/)
           Out: OUT/images/ (links to the images), OUT/labels/<stem>.txt (YOLO, one file per
                image, empty when nothing is proposed), OUT/proposals.csv (with confidences),
                OUT/label_studio_tasks.json (tasks with 'predictions', boxes in percent),
                OUT/label_studio_config.xml (the labelling config those tasks are made for),
                OUT/coco_predictions.json (a whole COCO file with scores: COCO(path), not loadRes),
                OUT/data.yaml (train on the proposals as they are: the unreviewed path),
                OUT/proposals.json (threshold, how chosen; with --open_vocabulary the model, its
                family and the queries), OUT/preview/sheet_NNN.png (contact sheets:
                --preview_per_sheet images each, with their proposals and confidences drawn, to look
                at before the review). --conf sets the threshold;
                --calibrate_data REAL.yaml picks the one with the best F1 at IoU 0.5 on the real val
                split (--calibrate_split train: its train split, e.g. prepare_data.py's fewshot.yaml,
                the instance photos) and warns when even that F1 is below 0.1.
  import   In:  --reviewed FILE.json | FILE.zip | DIR: Label Studio's JSON, JSON-MIN, COCO or YOLO
                export (the file, the zip it hands out, or the unpacked folder), a COCO JSON or a YOLO
                folder from another tool (CVAT, Roboflow); --images DIR; --proposals PROP (optional:
                propose's OUT, to measure the review).
           Out: OUT/images/, OUT/labels/, OUT/data.yaml (for train_detectors.py), OUT/unreviewed.txt
                (images without a review: listed, and left out of the dataset),
                OUT/review_report.json (with --proposals: per image and in total, the proposals, the
                reviewed boxes, and how many were unchanged (IoU >= 0.95), adjusted, deleted, added).
Classes: YOLO class ids 0..K-1 name the classes in order, and every output carries them (one
<Label> each in the config, a task's box labelled with its class's name, COCO category ids 1..K,
data.yaml's names, a class column in proposals.csv before conf when there are several, each box's
class in its own colour and by name on the preview). propose with --weights: the detector's own
classes (model.names; --calibrate_data's names must be the same, and a detection matches a true box
of its class); with --open_vocabulary: --classes a,b, else --calibrate_data's names, else one class,
apple (--calibrate_data's names must be the classes); with --labels: --classes a,b, else apple. An open-vocabulary model (a hub id or a local folder, its
family read from its config; 'tiny-random-owlv2' and 'tiny-random-grounding-dino': tiny untrained
models built here, for smoke runs) runs in fp32, on the CPU unless --device says otherwise; a box's
class is its best query's, and its boxes pass NMS per class. import: --classes a,b, else
--proposals' data.yaml names, else apple (with both, they must agree). Label Studio labels, COCO
categories and the lines of a YOLO export's classes.txt (Label Studio's, sorted by name) are matched
to the classes by name, ignoring case; a YOLO folder without classes.txt has our class ids. A label
that is not a class is refused, naming the file and the label. The review report matches boxes of
the same class only, so a box whose class the reviewer changed counts as deleted and added.
An image counts as reviewed when the format says a person annotated it: a Label Studio task with an
annotation that was not skipped; in COCO and YOLO, every listed image (they cannot tell an untouched
image from one with no apples, so those are warned of). Matching is by file name, with Label
Studio's prefixes ('1a2b3c4d__' on exports, '1a2b3c4d-' on uploads) ignored. Reviewed boxes are
checked: finite, with an area, inside the image (overshoots under 0.5 % of a side are clipped), of
one of the classes. Progress bars appear on stderr when it is a terminal.
"""
import argparse
import colorsys
import csv
import functools
import json
import math
import os
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import quote, unquote
from xml.sax.saxutils import quoteattr

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

# ultralytics' IMG_FORMATS: the files a data YAML's folder or list contributes as images.
ULTRALYTICS_IMAGE_SUFFIXES = ("avif", "bmp", "dng", "heic", "heif", "jp2", "jpeg", "jpeg2000", "jpg", "mpo", "png",
                              "tif", "tiff", "webp")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_CLASSES = ["apple"]  # propose --labels and import without --classes (or --proposals): one class
SCORE_FLOOR, MAX_DETECTIONS = 0.001, 300  # a detection kept before any threshold; per image, the best kept
OPEN_VOCABULARY_DEFAULT = "google/owlv2-base-patch16-ensemble"  # --open_vocabulary without a value
FAMILIES = {"owlv2": "OWLv2", "grounding-dino": "Grounding DINO"}  # config.model_type -> the family's name
TINY_RANDOM_MODELS = ("tiny-random-owlv2", "tiny-random-grounding-dino")  # built here (tiny_random_detector)
BOX_COLOUR = (255, 221, 0)  # preview boxes: yellow with a dark rim (EDGE_COLOUR), seen on leaves, apples and sky
# the preview colours of classes 0, 1, ... when there are several (class_colour), all bright on the dark rim
CLASS_COLOURS = (BOX_COLOUR, (0, 229, 255), (255, 96, 255), (128, 255, 64), (255, 150, 40), (255, 255, 255))
LABEL_BACKGROUNDS = ("red", "blue", "green", "orange", "purple", "cyan", "magenta", "brown", "olive", "teal")
SHEET_BACKGROUND, TEXT_COLOUR, EDGE_COLOUR = (32, 32, 32), (240, 240, 240), (0, 0, 0)
SHEET_GAP, HEADER_PX, CAPTION_PX = 8, 30, 22  # contact sheet layout, px
HEADER_FONT_PX, CAPTION_FONT_PX, SCORE_FONT_PX = 16, 14, 12
OUTPUT_FOLDERS = ("images", "labels", "preview")  # the folders of OUT that propose replaces (import: the first two)
# Label Studio names an exported image '<first 8 hex of md5(url)>__<name>' and an uploaded one '<8 hex>-<name>'.
LABEL_STUDIO_PREFIX = re.compile(r"^[0-9a-f]{8}(__|-)")
OVERSHOOT = 0.005  # a box may overshoot the image by this share of its side (rounding); it is clipped
# Label Studio regions that are not boxes: an error, not passed over
REGION_TYPES = {"polygonlabels", "polygon", "keypointlabels", "keypoint", "brushlabels", "brush", "ellipselabels",
                "ellipse"}


class InputError(Exception):
    """Bad input: the message names the file (or flag) and what is wrong with it."""


# ---------------------------------------------------------------------------------------------
# propose: proposals for a person to review
# ---------------------------------------------------------------------------------------------
def run_propose(args):
    """propose: boxes on --images from --weights (or --open_vocabulary, or --labels), in every form the
    review needs."""
    images = checked_images(args.images)
    check_output_folder(args.output_dir, "--output_dir", inputs=[args.images], written=OUTPUT_FOLDERS)
    if args.labels:
        kept, meta, source, classes = proposals_from_labels(args.labels, images, args.classes or DEFAULT_CLASSES)
    elif args.open_vocabulary:
        kept, meta, source, classes = proposals_from_open_vocabulary(args, images)
    else:
        kept, meta, source, classes = proposals_from_detector(args, images)
    out = Path(args.output_dir)
    labelled, tasks, coco_entries, rows = [], [], [], []
    for image in images:
        width, height = image_size(image)
        boxes, ids, scores = kept[image]
        labelled.append((image, boxes, ids))
        tasks.append(label_studio_task(f"{args.image_url_prefix}{quote(image.resolve().as_posix().lstrip('/'))}",
                                       width, height, boxes, [classes[k] for k in ids], scores, source))
        coco_entries.append((image.name, width, height, boxes, ids, scores))
        rows += [{"file": image.name, "x1": round(b[0], 2), "y1": round(b[1], 2), "x2": round(b[2], 2),
                  "y2": round(b[3], 2), "class": classes[ids[k]], "conf": "" if scores is None else round(scores[k], 5)}
                 for k, b in enumerate(boxes)]
    (out / "proposals.json").unlink(missing_ok=True)  # written last: present = finished
    write_dataset(out, labelled, classes, "proposals as they are, not reviewed by a person")
    write_json(out / "label_studio_tasks.json", tasks)
    write_json(out / "coco_predictions.json", coco_document(coco_entries, classes))
    write_atomic(out / "label_studio_config.xml", label_studio_config(classes))
    with open(out / ".proposals.csv.tmp", "w", newline="") as handle:
        columns = ["file", "x1", "y1", "x2", "y2"] + ["class"] * (len(classes) > 1) + ["conf"]  # one class: as before
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(out / ".proposals.csv.tmp", out / "proposals.csv")
    threshold = f" at confidence >= {meta['conf']:.3f}" if "conf" in meta else f" from {args.labels}"
    title = f"proposals of {source}{threshold}" if "conf" in meta else f"boxes{threshold}"
    sheets = write_previews(out, [(image, *kept[image]) for image in images], classes, args.preview_per_sheet,
                            args.preview_cell, title)
    write_json(out / "proposals.json", meta)
    print(f"{len(rows)} boxes proposed on {len(images)} images{threshold}; look at {out / 'preview'} ({sheets} "
          f"contact sheets), then review {out / 'label_studio_tasks.json'} in Label Studio (labelling config "
          f"{out / 'label_studio_config.xml'}; docs/review-with-label-studio.md), or train on {out / 'data.yaml'} "
          f"as it is")


def proposals_from_detector(args, images):
    """{image: (boxes, class ids, scores)} from --weights at the chosen confidence, what chose it, the
    detector's file name and its classes."""
    if not Path(args.weights).is_file():
        raise InputError(f"{args.weights}: no such weights file")
    model, classes = load_detector(args.weights)
    meta = {"weights": str(Path(args.weights).resolve()), "iou": args.iou, "imgsz": args.imgsz}
    find = functools.partial(detect, model, imgsz=args.imgsz, iou=args.iou, device=args.device)
    meta.update(choose_threshold(find, classes, args, images))
    return above_threshold(find(images), meta["conf"]), meta, Path(args.weights).name, classes


def choose_threshold(find, classes, args, images):
    """The confidence threshold and what chose it: --calibrate_data (calibrate), else --conf, with the
    images checked (check_images) before any detection. find: a list of images -> {image: (boxes,
    class ids, scores)} at every confidence (detect, detect_open_vocabulary)."""
    if args.calibrate_data:
        return calibrate(find, classes, args, images)
    check_images(images)
    return {"conf": args.conf, "chosen_by": "--conf"}


def above_threshold(found, conf):
    """{image: (boxes, class ids, scores)} -> the same with the detections scoring >= conf only."""
    kept = {}
    for image, (boxes, ids, scores) in found.items():
        keep = [k for k, score in enumerate(scores) if score >= conf]
        kept[image] = ([boxes[k] for k in keep], [ids[k] for k in keep], [scores[k] for k in keep])
    return kept


def calibrate(find, classes, args, images):
    """--calibrate_data: the threshold with the best F1 on its --calibrate_split split (val or train),
    a detection matching a true box of its own class; its names must be the classes (the detector's,
    or --open_vocabulary's --classes). find: as in choose_threshold. Checks the images too
    (check_images), before any detection. -> proposals.json's entries for it."""
    names = read_class_names(args.calibrate_data)
    if names != classes:
        proposer, remedy = ((f"--open_vocabulary {args.open_vocabulary} is asked for",
                             f"give --classes {','.join(names)} (and --queries in that order)")
                            if args.open_vocabulary else
                            (f"the detector {args.weights} detects", "calibrate on data with the detector's classes"))
        raise InputError(f"--calibrate_data {args.calibrate_data} names the classes {names}, but {proposer} "
                         f"{classes}: {remedy}")
    split = args.calibrate_split
    split_images, truths = calibration_split(args.calibrate_data, classes, split)
    check_images(images + split_images)
    found = find(split_images)
    predictions, by_class = {}, {}
    for image in split_images:
        boxes, ids, scores = found[image]
        for k in range(len(classes)):  # keyed by (image, class): best_f1_threshold matches within a key
            predictions[image, k] = [(*box, score) for box, i, score in zip(boxes, ids, scores) if i == k]
            by_class[image, k] = [box for box, i in zip(*truths[image]) if i == k]
    threshold, f1, table = best_f1_threshold(predictions, by_class)
    print(f"calibrated threshold {threshold:.3f} (F1 {f1:.3f} on the real {split} split)")
    if f1 < 0.1:
        advice = ("Try --queries that say what each class looks like, or another --open_vocabulary model"
                  if args.open_vocabulary else "Train it longer or on more photos (train_detectors.py --epochs)")
        print(f"WARNING: the best F1 on the real {split} split is {f1:.3f}: this detector finds almost none of "
              f"the true boxes, so its proposals will be nearly all wrong or missing and the review nearly all "
              f"manual. {advice}, or check the data", file=sys.stderr)
    return {"conf": threshold, "chosen_by": f"best F1 ({f1:.3f}) at IoU 0.5 on {args.calibrate_data} {split}",
            "calibration": [dict(zip(("threshold", "precision", "recall", "f1"), row)) for row in table]}


def load_detector(weights):
    """Ultralytics weights -> (the model, its class names in id order: model.names)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO
    try:
        model = YOLO(str(weights))
    except Exception as error:
        raise InputError(f"{weights}: not a YOLO weights file ultralytics can load ({error!r})")
    names = model.names
    return model, check_class_names([str(names[k]) for k in range(len(names))], f"{weights}'s model.names")


def detect(model, images, imgsz, iou, device):
    """{image path: (boxes in pixels, class ids, confidences)} from a loaded detector, at confidence >=
    SCORE_FLOOR, the MAX_DETECTIONS best an image."""
    found = {}
    results = model.predict(source=[str(p) for p in images], imgsz=imgsz, conf=SCORE_FLOOR, iou=iou,
                            max_det=MAX_DETECTIONS, device=device, stream=True, verbose=False)
    for result in progress(results, "detecting", total=len(images)):
        found[Path(result.path)] = (result.boxes.xyxy.tolist(), [int(k) for k in result.boxes.cls.tolist()],
                                    result.boxes.conf.tolist())
    return found


def calibration_split(data_yaml, classes, split="val"):
    """The images of a data YAML's split (val or train: a folder, or a list file such as prepare_data.py's
    fewshot.txt, listed_images) and {image: (its ground-truth boxes, their class ids)}, from ultralytics'
    labels/ of them (class ids checked against classes)."""
    data = read_data_yaml(data_yaml)
    try:
        root = Path(data.get("path") or Path(data_yaml).parent)  # relative: from the working folder, as ultralytics
        entry = root / data[split]
    except TypeError as error:
        raise InputError(f"--calibrate_data {data_yaml}: expected a data YAML whose path and {split} are folders "
                         f"or list files ({error})")
    images = listed_images(entry) if entry.is_file() else checked_images(entry)
    if not images:
        raise InputError(f"--calibrate_data {data_yaml}: its {split} list {entry} names no images")
    os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported, as in load_detector()
    from ultralytics.data.utils import img2label_paths
    truths = {}
    for image, label in zip(images, map(Path, img2label_paths([str(image) for image in images]))):
        truths[image] = read_yolo(label, *image_size(image), classes) if label.exists() else ([], [])
    return images, truths


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


def is_ultralytics_image(path):
    """Whether ultralytics takes the file at path for an image (by its suffix)."""
    return str(path).rpartition(".")[-1].lower() in ULTRALYTICS_IMAGE_SUFFIXES


def best_f1_threshold(predictions, truths, iou=0.5):
    """The confidence threshold with the best F1 at this IoU -> (threshold, f1, table of (t, p, r, f1)).

    predictions: {image: [(x1, y1, x2, y2, conf)]}; truths: {image: [(x1, y1, x2, y2)]}. Detections
    are matched greedily by descending confidence, so the detections above any threshold match as
    they would alone, and one pass over the sorted confidences gives F1 at every threshold."""
    confidences, hits = [], []
    total = sum(len(t) for t in truths.values())
    for image, dets in predictions.items():
        dets = sorted(dets, key=lambda d: -d[4])
        gt = truths.get(image, [])
        overlaps = iou_matrix([d[:4] for d in dets], gt) if dets and gt else np.zeros((len(dets), 0))
        taken = np.zeros(len(gt), bool)
        for k, det in enumerate(dets):
            candidates = np.where(~taken & (overlaps[k] >= iou))[0] if len(gt) else []
            hit = len(candidates) > 0
            if hit:
                taken[candidates[np.argmax(overlaps[k][candidates])]] = True
            confidences.append(det[4])
            hits.append(hit)
    if not confidences or not total:
        raise InputError("no detections, or no ground-truth boxes, on the calibration images: cannot pick a threshold")
    order = np.argsort(-np.asarray(confidences), kind="stable")
    conf = np.asarray(confidences)[order]
    tp = np.cumsum(np.asarray(hits)[order])
    fp = np.arange(1, len(conf) + 1) - tp
    f1 = 2 * tp / np.maximum(2 * tp + fp + (total - tp), 1)
    last_of_each = np.r_[conf[1:] != conf[:-1], True]  # a threshold keeps every detection of equal confidence
    table = [(float(c), float(t / (t + f)), float(t / max(total, 1)), float(s))
             for c, t, f, s, keep in zip(conf, tp, fp, f1, last_of_each) if keep]
    best = max(table, key=lambda row: row[3])
    return best[0], best[3], table


def proposals_from_labels(folder, images, classes):
    """--labels (no detector): {image: (boxes, class ids, None)} from YOLO labels, one <stem>.txt per
    image, of these classes; what made them, their source, and the classes."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--labels {folder}: no such folder")
    check_images(images)
    kept = {}
    for image in images:
        label = folder / f"{image.stem}.txt"
        if not label.exists():
            raise InputError(f"{label}: no label file for {image.name} (an empty file means no apples)")
        width, height = image_size(image)
        boxes, ids = read_yolo(label, width, height, classes)
        kept[image] = ([checked_box(box, width, height, f"{label}") for box in boxes], ids, None)
    return (kept, {"labels": str(folder.resolve()), "chosen_by": "--labels (no detector)"},
            f"labels from {folder.name}", classes)


def label_studio_task(image_ref, width, height, boxes, labels, scores, model_version):
    """A Label Studio task for one image with the proposals as a prediction (values in percent), each
    box labelled with its class name (labels); scores None: boxes from labels, with no confidence."""
    result = []
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        region = {"id": f"p{i}", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
                  "original_width": width, "original_height": height, "image_rotation": 0,
                  "value": {"x": 100 * x1 / width, "y": 100 * y1 / height, "width": 100 * (x2 - x1) / width,
                            "height": 100 * (y2 - y1) / height, "rotation": 0, "rectanglelabels": [labels[i]]}}
        if scores is not None:
            region["score"] = float(scores[i])
        result.append(region)
    prediction = {"model_version": model_version, "result": result}
    if scores is not None:
        prediction["score"] = float(np.mean(scores)) if len(scores) else 0.0
    return {"data": {"image": image_ref}, "predictions": [prediction]}


def label_studio_config(classes):
    """The labelling config the tasks are made for: their image under data 'image', their boxes
    from 'label' to 'image', one label per class, each with its own background (label_background)."""
    labels = "".join(f'    <Label value={quoteattr(name)} background="{label_background(k)}"/>\n'
                     for k, name in enumerate(classes))
    return (f'<View>\n  <Image name="image" value="$image" zoom="true" zoomControl="true"/>\n'
            f'  <RectangleLabels name="label" toName="image">\n{labels}  </RectangleLabels>\n</View>\n')


def label_background(k):
    """Class k's label colour in Label Studio: a colour name of LABEL_BACKGROUNDS, then spread hues."""
    if k < len(LABEL_BACKGROUNDS):
        return LABEL_BACKGROUNDS[k]
    return "#{:02x}{:02x}{:02x}".format(*spread_colour(k))


def spread_colour(k):
    """A bright RGB colour for class k, its hue a golden-ratio step from k - 1's, so no two are alike."""
    return tuple(round(255 * v) for v in colorsys.hsv_to_rgb(k * 0.618034 % 1, 0.75, 1.0))


def coco_document(entries, classes):
    """[(file_name, width, height, boxes, class ids, scores or None)] -> a COCO dataset dict (image and
    annotation ids from 1; category ids 1..K, the classes in order)."""
    images, annotations = [], []
    for image_id, (name, width, height, boxes, ids, scores) in enumerate(entries, start=1):
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            annotation = {"id": len(annotations) + 1, "image_id": image_id, "category_id": ids[k] + 1,
                          "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
            if scores is not None:
                annotation["score"] = float(scores[k])
            annotations.append(annotation)
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_previews(out, proposals, classes, per_sheet, cell, title):
    """OUT/preview/sheet_000.png, sheet_001.png ...: contact sheets of per_sheet images each, in the
    order given, with their proposals drawn (draw_proposals) and captioned with the file name and the
    number of boxes; built in a temporary folder that then replaces preview/, so that no sheet of an
    earlier run stays. proposals: [(image path, boxes, class ids, scores or None)]; classes: the names.
    -> the number of sheets."""
    tmp = Path(out) / ".preview_tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    starts = range(0, len(proposals), per_sheet)
    score_font = ImageFont.load_default(size=SCORE_FONT_PX)
    for number, start in enumerate(progress(starts, "drawing previews", unit="sheet")):
        chunk = proposals[start:start + per_sheet]
        pictures = []
        for path, boxes, ids, scores in chunk:
            with Image.open(path) as image:
                pictures.append(draw_proposals(image, boxes, ids, scores, classes, cell, score_font))
        captions = [f"{path.name}: {len(boxes)} box{'' if len(boxes) == 1 else 'es'}" for path, boxes, *_ in chunk]
        header = (f"{title}: sheet {number + 1} of {len(starts)}, images {start + 1}-{start + len(chunk)} "
                  f"of {len(proposals)}")
        preview_sheet(pictures, captions, sheet_columns(per_sheet), cell, header).save(tmp / f"sheet_{number:03d}.png")
    shutil.rmtree(Path(out) / "preview", ignore_errors=True)
    os.replace(tmp, Path(out) / "preview")
    return len(starts)


def draw_proposals(image, boxes, ids, scores, classes, cell, font):
    """One image of a contact sheet: scaled so that its longer side is `cell` px, each box drawn in its
    class's colour (class_colour: BOX_COLOUR for one class) 2 px wide inside its edges with a 1 px
    EDGE_COLOUR rim around that, and on a dark label just above its top-left corner (below it, inside
    the box, at the image's top edge; moved left to end at the image's right edge) its class name when
    there are several classes and its confidence when there is one: 'red_apple 0.87', 'red_apple',
    '0.87' or nothing."""
    scale = cell / max(image.size)
    picture = image.convert("RGB").resize((max(round(image.width * scale), 1), max(round(image.height * scale), 1)),
                                          Image.LANCZOS)
    draw = ImageDraw.Draw(picture)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        left, top, right, bottom = round(x1 * scale), round(y1 * scale), round(x2 * scale) - 1, round(y2 * scale) - 1
        right, bottom = max(right, left), max(bottom, top)  # a box under a pixel wide on the sheet: one pixel
        colour = class_colour(ids[k])
        draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], outline=EDGE_COLOUR, width=1)
        draw.rectangle([left, top, right, bottom], outline=colour, width=2)
        named = [classes[ids[k]]] if len(classes) > 1 else []
        text = " ".join(named + ([f"{scores[k]:.2f}"] if scores is not None else []))
        if text:
            height = font.getbbox(text)[3]
            corner = (max(min(left, picture.width - round(font.getlength(text))), 0),
                      top - height - 1 if top > height else top + 2)
            draw.rectangle(draw.textbbox(corner, text, font=font), fill=EDGE_COLOUR)
            draw.text(corner, text, fill=colour, font=font)
    return picture


def class_colour(k):
    """Class k's colour on the preview: CLASS_COLOURS (BOX_COLOUR first), then spread hues."""
    return CLASS_COLOURS[k] if k < len(CLASS_COLOURS) else spread_colour(k)


def preview_sheet(pictures, captions, columns, cell, header):
    """The pictures (draw_proposals) on a grid of `columns`, top-left in their cells, each captioned
    below, under a header line. -> the sheet image."""
    rows = math.ceil(len(pictures) / columns)
    sheet = Image.new("RGB", (SHEET_GAP + columns * (cell + SHEET_GAP),
                              HEADER_PX + rows * (cell + CAPTION_PX + SHEET_GAP)), SHEET_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    header_font = ImageFont.load_default(size=HEADER_FONT_PX)
    caption_font = ImageFont.load_default(size=CAPTION_FONT_PX)
    draw.text((SHEET_GAP, HEADER_PX // 2), fit_text(header, header_font, sheet.width - 2 * SHEET_GAP),
              fill=TEXT_COLOUR, font=header_font, anchor="lm")
    for index, (picture, caption) in enumerate(zip(pictures, captions)):
        x, y = cell_origin(index, columns, cell)
        sheet.paste(picture, (x, y))
        draw.text((x, y + cell + CAPTION_PX // 2), fit_text(caption, caption_font, cell), fill=TEXT_COLOUR,
                  font=caption_font, anchor="lm")
    return sheet


def sheet_columns(per_sheet):
    """Columns of a contact sheet of per_sheet images: a near-square grid."""
    return math.ceil(math.sqrt(per_sheet))


def cell_origin(index, columns, cell):
    """Top-left pixel of the index-th image on a contact sheet: cells of cell x cell px, each with a
    caption line below, SHEET_GAP px apart, under a header line of HEADER_PX."""
    row, column = divmod(index, columns)
    return SHEET_GAP + column * (cell + SHEET_GAP), HEADER_PX + row * (cell + CAPTION_PX + SHEET_GAP)


def fit_text(text, font, width):
    """text, shortened in the middle with '…' until it fits `width` px in this font."""
    while font.getlength(text) > width and len(text) > 1:
        middle = len(text) // 2
        text = text[:middle - 1] + "…" + text[middle + 1:]
    return text


# ---------------------------------------------------------------------------------------------
# propose --open_vocabulary: a zero-shot detector asked for each class by its query
# ---------------------------------------------------------------------------------------------
def proposals_from_open_vocabulary(args, images):
    """{image: (boxes, class ids, scores)} from --open_vocabulary, asked for class k by --queries' k-th
    (default: the class names), at the chosen confidence; what chose it (with the model, its family and
    the queries), the model's name with its family, and the classes (--classes, else --calibrate_data's
    names, else DEFAULT_CLASSES)."""
    classes = args.classes or (read_class_names(args.calibrate_data) if args.calibrate_data else DEFAULT_CLASSES)
    queries = args.queries or classes
    if len(queries) != len(classes):
        raise InputError(f"--queries {','.join(queries)}: {len(queries)} queries for {len(classes)} classes "
                         f"({','.join(classes)}); give one query per class, in the order of --classes")
    model, processor = load_open_vocabulary(args.open_vocabulary, torch_device(args.device))
    family = FAMILIES[model.config.model_type]
    folder = Path(args.open_vocabulary).is_dir()
    meta = {"model": str(Path(args.open_vocabulary).resolve()) if folder else args.open_vocabulary,
            "family": family, "queries": queries, "iou": args.iou}
    find = functools.partial(detect_open_vocabulary, model, processor, queries=queries, iou=args.iou)
    meta.update(choose_threshold(find, classes, args, images))
    shown = Path(args.open_vocabulary).resolve().name if folder else args.open_vocabulary
    return above_threshold(find(images), meta["conf"]), meta, f"{shown} ({family})", classes


def torch_device(device):
    """--device for a transformers model: none -> cpu, 0 -> cuda:0 (as ultralytics reads it), else as given."""
    import torch
    name = "cpu" if device is None else f"cuda:{device}" if str(device).isdigit() else device
    try:
        torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {device}: not a device torch knows (e.g. cpu, 0, cuda, cuda:1)")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device here; leave --device out to run on the CPU")
    if name.startswith("cuda:") and torch.device(name).index >= torch.cuda.device_count():
        raise InputError(f"--device {device}: this machine's CUDA devices are 0..{torch.cuda.device_count() - 1}")
    return name


def load_open_vocabulary(name, device):
    """--open_vocabulary NAME -> (model, processor): a zero-shot detector of a family in FAMILIES, in fp32
    and eval mode on device; NAME a hub id or a local folder (load_zero_shot_detector), or one of
    TINY_RANDOM_MODELS (tiny_random_detector)."""
    if name in TINY_RANDOM_MODELS:
        model, processor = tiny_random_detector(name)
        print(f"{name}: a tiny untrained {FAMILIES[model.config.model_type]} model; its boxes are noise "
              f"(plumbing only)")
    else:
        model, processor = load_zero_shot_detector(name)
    return model.to(device).eval(), processor


def load_zero_shot_detector(name):
    """A hub id or a folder save_pretrained wrote -> (model in fp32, processor), the family read from its
    config's model_type first; InputError, in one line naming it, when it cannot be had or loaded."""
    import torch
    from transformers import AutoConfig, AutoModelForZeroShotObjectDetection, AutoProcessor
    path, ways = Path(name), f"give a hub id, a folder save_pretrained wrote, or {' or '.join(TINY_RANDOM_MODELS)}"
    if path.exists() and not (path / "config.json").is_file():
        raise InputError(f"--open_vocabulary {name}: not a model folder (no config.json); {ways}")
    if not path.exists() and not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        raise InputError(f"--open_vocabulary {name}: no such folder, and not a hub id (owner/name); {ways}")
    try:
        family = AutoConfig.from_pretrained(name).model_type
        if family not in FAMILIES:
            raise InputError(f"--open_vocabulary {name}: a {family!r} model; open-vocabulary proposals take "
                             f"{' or '.join(FAMILIES.values())} ({', '.join(FAMILIES)})")
        return (AutoModelForZeroShotObjectDetection.from_pretrained(name, dtype=torch.float32),
                AutoProcessor.from_pretrained(name))
    except (OSError, ValueError, KeyError) as error:  # not found, no network, a broken or unknown config
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise InputError(f"--open_vocabulary {name}: cannot load it ({type(error).__name__}: {first})")


def detect_open_vocabulary(model, processor, images, queries, iou):
    """{image path: (boxes in pixels, class ids, scores)} from a zero-shot detector asked for the queries
    (class k: queries[k]), an image at a time: a box's class is its best query, at score >= SCORE_FLOOR,
    NMS per class at iou, the MAX_DETECTIONS best an image (as detect())."""
    import torch
    family = model.config.model_type
    groups = query_tokens(processor, family, queries, model.config)
    prompt = list(queries) if family == "owlv2" else grounding_text(queries)
    found = {}
    for path in progress(images, "detecting"):
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        inputs = processor(images=image, text=prompt, return_tensors="pt").to(model.device)
        with torch.inference_mode():
            outputs = model(**inputs)
        probabilities = torch.sigmoid(outputs.logits[0])  # per box: per query (OWLv2), per token (Grounding DINO)
        scores = probabilities if groups is None else torch.stack(
            [probabilities[:, group].max(dim=1).values for group in groups], dim=1)
        boxes = pixel_boxes(outputs.pred_boxes[0], image.width, image.height, family)
        found[path] = best_boxes(boxes, scores, iou, image.width, image.height)
    return found


def grounding_text(queries):
    """Grounding DINO's one text for all queries, as its processor writes a list of them: 'q0. q1.'."""
    return ". ".join(query.strip().lower() for query in queries) + "."


def query_tokens(processor, family, queries, config):
    """Checks that the model reads every query whole -> for Grounding DINO, the token positions of each
    query in grounding_text, split where the model splits it (at [CLS], [SEP], '.', '?' and padding);
    for OWLv2, which reads a text per query, None."""
    tokenizer = processor.tokenizer
    if family == "owlv2":
        for query in queries:
            length = len(tokenizer(query, verbose=False)["input_ids"])  # no warning of its own: ours follows
            if length > tokenizer.model_max_length:
                raise InputError(f"--queries {query!r}: {length} tokens, more than the {tokenizer.model_max_length} "
                                 f"this OWLv2 model reads; shorten it")
        return None
    if any(mark in query for query in queries for mark in ".?"):
        raise InputError(f"--queries {','.join(queries)}: Grounding DINO splits its text at '.' and '?': no query "
                         f"may hold one")
    ids = tokenizer(grounding_text(queries), verbose=False)["input_ids"]
    if len(ids) > config.max_text_len:
        raise InputError(f"--queries {','.join(queries)}: {len(ids)} tokens, more than the {config.max_text_len} "
                         f"this Grounding DINO model reads; shorten them")
    delimiters = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id,
                  *tokenizer.convert_tokens_to_ids([".", "?"])}
    groups, group = [], []
    for position, token in enumerate(ids + [tokenizer.sep_token_id]):
        if token not in delimiters:
            group.append(position)
        elif group:
            groups.append(group)
            group = []
    if len(groups) != len(queries):  # e.g. a query of characters the tokenizer drops
        raise InputError(f"--queries {','.join(queries)}: Grounding DINO reads {len(groups)} queries in "
                         f"{grounding_text(queries)!r}, not {len(queries)}: give each a word it can read")
    return groups


def pixel_boxes(pred_boxes, width, height, family):
    """A model's boxes (centre x, centre y, width, height, in 0..1) -> (x1, y1, x2, y2) in pixels of the
    width x height image. OWLv2 sees the image padded to a square at its right or bottom, so its unit is
    the longer side; Grounding DINO's (with one image a batch, no padding) is the image's."""
    import torch
    scale_x, scale_y = (max(width, height),) * 2 if family == "owlv2" else (width, height)
    cx, cy, w, h = pred_boxes.unbind(-1)
    return torch.stack([(cx - w / 2) * scale_x, (cy - h / 2) * scale_y, (cx + w / 2) * scale_x,
                        (cy + h / 2) * scale_y], dim=-1)


def best_boxes(boxes, scores, iou, width, height):
    """Boxes in pixels and their scores per class (boxes x classes) -> (boxes, class ids, scores) lists:
    each box as its best class, clipped to the image; those under SCORE_FLOOR or with no area left
    dropped, NMS per class at iou, the MAX_DETECTIONS best, best first."""
    from torchvision.ops import batched_nms
    score, ids = scores.max(dim=1)
    boxes = boxes.clamp(min=0).minimum(boxes.new_tensor([width, height, width, height]))
    keep = (score >= SCORE_FLOOR) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, score, ids = boxes[keep], score[keep], ids[keep]
    order = batched_nms(boxes, score, ids, iou)[:MAX_DETECTIONS]
    return boxes[order].tolist(), ids[order].tolist(), score[order].tolist()


def tiny_random_detector(name, seed=0):
    """One of TINY_RANDOM_MODELS -> (model, processor): a tiny zero-shot detector with random weights, a
    tokenizer built here (no download), for a 64 px input; the same weights for a seed, whatever the
    caller's random state. Its boxes are noise: for smoke runs and tests only."""
    import torch
    build = {"tiny-random-owlv2": tiny_random_owlv2, "tiny-random-grounding-dino": tiny_random_grounding_dino}[name]
    with tempfile.TemporaryDirectory(prefix="genfusion_tokenizer_") as folder, torch.random.fork_rng():
        torch.manual_seed(seed)
        return build(Path(folder))


def tiny_random_owlv2(folder):
    """A 2-layer OWLv2 at 64 px, patches of 8 (64 boxes), with a byte-level CLIP tokenizer written in
    folder. Its box head's last layer is zero, so its boxes are OWLv2's prior, one on each patch, rather
    than the one saturated box a random head gives."""
    import torch
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor
    vocab = clip_byte_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=32,
                              pad_token="!")  # OWLv2's own pads with '!'
    text = {"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 32, "pad_token_id": vocab["!"],
            "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"]}
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 64, "patch_size": 8}
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32))
    torch.nn.init.zeros_(model.box_head.dense2.weight)
    torch.nn.init.zeros_(model.box_head.dense2.bias)
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}),
                               tokenizer=tokenizer)
    return model, processor


def tiny_random_grounding_dino(folder):
    """A Grounding DINO with a tiny Swin backbone (4 stages of 1 layer, random like the rest: transformers
    5 builds it from backbone_config, no timm, nothing pretrained), a 1-layer BERT, d_model 32 and 20
    queries, at 64 px (shorter side), with a per-character BERT tokenizer written in folder. Patches of 2
    px leave its extra, smallest feature map 2 x 2 px: at 1 x 1, GroupNorm has one value a group and fails."""
    from transformers import (BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor, SwinConfig)
    vocab = bert_character_vocab()
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab))
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    backbone = SwinConfig(image_size=64, patch_size=2, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                          window_size=4, out_indices=[2, 3, 4])
    text = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=64)
    config = GroundingDinoConfig(backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1,
                                 decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                                 encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=20, num_feature_levels=4,
                                 encoder_n_points=2, decoder_n_points=2, max_text_len=64)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 128})
    return (GroundingDinoForObjectDetection(config),
            GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer))


def clip_byte_vocab():
    """A CLIP BPE vocabulary with one token per byte (and per byte ending a word), no merges:
    enough for a tokenizer that accepts any text, with no download."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def bert_character_vocab():
    """A BERT WordPiece vocabulary of single characters (a-z, 0-9, each also as a '##' continuation, and
    punctuation), its special tokens where bert-base-uncased has them: Grounding DINO splits its text
    at the ids of [CLS] 101, [SEP] 102, '.' 1012 and '?' 1029."""
    characters = "abcdefghijklmnopqrstuvwxyz0123456789"
    tokens = ["[PAD]"] + [f"[unused{k}]" for k in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [*characters, *(f"##{c}" for c in characters), *(c for c in "!\"#$%&'()*+,-/:;<=>@[\\]^_`{|}~")]
    for token, position in ((".", 1012), ("?", 1029)):
        tokens += [f"[unused{k}]" for k in range(len(tokens), position)] + [token]
    return tokens


# ---------------------------------------------------------------------------------------------
# import: the reviewed labels back
# ---------------------------------------------------------------------------------------------
def run_import(args):
    """import: a person's review of --images -> a YOLO dataset (and with --proposals, what the review changed)."""
    images = checked_images(args.images)
    check_output_folder(args.output_dir, "--output_dir", inputs=[args.images], written=OUTPUT_FOLDERS)
    classes = import_classes(args.classes, args.proposals)
    sizes = {image.name: image_size(image) for image in images}
    review = read_review(args.reviewed, sizes, classes)
    if not review.boxes:
        raise InputError(f"{args.reviewed} ({review.kind}) reviews none of the images in {args.images} "
                         f"(matched by file name)")
    report = review_report(args.proposals, review, sizes, classes) if args.proposals else None
    unreviewed = [image.name for image in images if image.name not in review.boxes]
    out = Path(args.output_dir)
    write_dataset(out, [(image, *review.boxes[image.name]) for image in images if image.name in review.boxes],
                  classes, f"reviewed labels from {args.reviewed} ({review.kind})")
    write_atomic(out / "unreviewed.txt", "".join(f"{name}\n" for name in unreviewed))
    (out / "review_report.json").unlink(missing_ok=True)
    if report:
        write_json(out / "review_report.json", report)
    print(f"{len(review.boxes)} reviewed images ({sum(len(b) for b, _ in review.boxes.values())} boxes) from the "
          f"{review.kind} -> {out / 'data.yaml'}")
    if report:
        t = report["totals"]
        print(f"the review: {t['proposals']} proposals -> {t['reviewed']} boxes on {report['reviewed_images']} images: "
              f"{t['unchanged']} unchanged, {t['adjusted']} adjusted, {t['deleted']} deleted, {t['added']} added "
              f"-> {out / 'review_report.json'}")
        if t["unchanged"] == t["proposals"] == t["reviewed"]:
            print("warning: the reviewed boxes equal the proposals on every reviewed image: was the review "
                  "exported before anyone changed a box, or were the predictions exported instead of the "
                  "annotations?", file=sys.stderr)
    if review.empty_listed:
        print(f"warning: {len(review.empty_listed)} images are listed in the {review.kind} with no boxes, so they "
              f"count as reviewed with no apples: {', '.join(review.empty_listed[:5])}"
              f"{' ...' if len(review.empty_listed) > 5 else ''}. A {review.kind.split(' (')[0]} cannot tell them "
              f"from images nobody opened: if this export holds every task (Label Studio's 'all tasks'), export "
              f"the annotated tasks only, or Label Studio's JSON, which says which tasks a person annotated",
              file=sys.stderr)
    if unreviewed:
        print(f"warning: {len(unreviewed)} images have no review and are left out (listed in "
              f"{out / 'unreviewed.txt'}): {', '.join(unreviewed[:5])}{' ...' if len(unreviewed) > 5 else ''}")


def import_classes(given, proposals_dir):
    """import's classes: --classes (given, a list), else the names of --proposals' data.yaml, else
    DEFAULT_CLASSES; InputError when --classes and --proposals' names differ (the report compares
    boxes class by class)."""
    if not proposals_dir:
        return given or DEFAULT_CLASSES
    data_yaml = Path(proposals_dir) / "data.yaml"
    if not data_yaml.is_file():
        raise InputError(f"--proposals {proposals_dir}: no data.yaml (give propose's --output_dir)")
    proposed = read_class_names(data_yaml)
    if given and [name.casefold() for name in given] != [name.casefold() for name in proposed]:
        raise InputError(f"--classes {','.join(given)}: the proposals in {proposals_dir} have the classes "
                         f"{','.join(proposed)} ({data_yaml}); give those, in that order, or leave --classes out")
    return proposed


class Review:
    """What a review file says: {image name: (boxes, class ids)} of the images a person reviewed,
    and `empty_listed`: the images a COCO or YOLO review lists with no box, which those formats
    cannot tell apart from images nobody touched."""

    def __init__(self, kind):
        self.kind, self.boxes, self.empty_listed = kind, {}, []


def read_review(source, sizes, classes):
    """--reviewed FILE.json | FILE.zip | DIR -> Review, its boxes of these classes. A zip (as Label
    Studio hands its exports out) or a folder holds a COCO export (result.json), YOLO labels, or one
    JSON file."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: no such file or folder")
    if source.is_file() and zipfile.is_zipfile(source):
        with tempfile.TemporaryDirectory() as unpacked:
            try:
                with zipfile.ZipFile(source) as archive:
                    archive.extractall(unpacked)
            except (OSError, zipfile.BadZipFile) as error:
                raise InputError(f"{source}: a broken zip ({error})")
            review = read_review(unpacked, sizes, classes)
            review.kind += " (zip)"
            return review
    if source.is_file():
        return review_from_json(source, sizes, classes)
    if (source / "result.json").is_file():
        return review_from_json(source / "result.json", sizes, classes)
    if (source / "labels").is_dir() or any(source.glob("*.txt")):
        return review_from_yolo(source, sizes, classes)
    documents = sorted(source.glob("*.json"))
    if len(documents) == 1:
        return review_from_json(documents[0], sizes, classes)
    raise InputError(f"{source}: a folder with neither result.json (COCO), labels/ or .txt files (YOLO), nor one "
                     f"JSON file (Label Studio)")


def review_from_json(path, sizes, classes):
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise InputError(f"{path}: not a readable JSON file ({error})")
    try:
        if isinstance(document, list) and all(isinstance(t, dict) and "data" in t for t in document):
            return review_from_label_studio(document, sizes, classes, path)
        if isinstance(document, list):
            return review_from_label_studio_min(document, sizes, classes, path)
        if isinstance(document, dict) and "images" in document:
            return review_from_coco(document, sizes, classes, path)
    except (KeyError, TypeError, AttributeError) as error:
        raise InputError(f"{path}: malformed review file ({type(error).__name__}: {error})")
    raise InputError(f"{path}: neither a Label Studio export (JSON or JSON-MIN) nor a COCO JSON")


def review_from_label_studio(tasks, sizes, classes, source):
    """Label Studio's JSON export: a task with an annotation that was not skipped is reviewed; the
    ground-truth annotation counts if one is marked, else the latest."""
    review = Review("Label Studio JSON export")
    for number, task in enumerate(tasks, start=1):
        if not isinstance(task, dict):
            raise InputError(f"{source}: item {number} is not a task")
        name = review_name(task.get("data", {}).get("image", ""), sizes)
        annotations = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
        if name is None or not annotations:
            continue
        if name in review.boxes:
            raise InputError(f"{source}: task {task.get('id', number)} reviews {name} again; export one task per image")
        chosen = max(annotations, key=lambda a: (bool(a.get("ground_truth")), str(a.get("updated_at", ""))))
        where = f"{source}: task {task.get('id', number)} ({name})"
        review.boxes[name] = label_studio_boxes(chosen.get("result", []), *sizes[name], classes, where)
    return review


def review_from_label_studio_min(items, sizes, classes, source):
    """Label Studio's JSON-MIN export: one flat item per task, its boxes under the labelling
    config's name ('label'); an item with an annotation id (or annotator) was annotated."""
    review = Review("Label Studio JSON-MIN export")
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise InputError(f"{source}: item {number} is not a task")
        name = review_name(item.get("image", ""), sizes)
        if name is None or not ("annotation_id" in item or "annotator" in item):
            continue
        if name in review.boxes:
            raise InputError(f"{source}: item {item.get('id', number)} reviews {name} again; export one task per image")
        where = f"{source}: item {item.get('id', number)} ({name})"
        width, height = sizes[name]
        regions = [value for key, values in item.items() if isinstance(values, list)
                   for value in values if isinstance(value, dict) and "x" in value and "width" in value]
        results = [{"type": "rectanglelabels", "value": region,
                    "original_width": region.get("original_width", width),
                    "original_height": region.get("original_height", height)} for region in regions]
        review.boxes[name] = label_studio_boxes(results, width, height, classes, where)
    return review


def label_studio_boxes(results, width, height, classes, where):
    """Label Studio rectangle results (percent) -> (boxes in pixels of a width x height image
    (checked_box), their class ids: each box's one label, one of the classes by name (class_id); a box
    without labels, from a <Rectangle> config, is of the only class when there is one). Other region
    kinds, other labels, rotated boxes and a review made at another image size are errors naming
    `where`; non-region results (choices, text) are passed over."""
    boxes, ids = [], []
    for item in results:
        kind = item.get("type")
        if kind in REGION_TYPES:
            raise InputError(f"{where}: a {kind} region cannot become a box; draw rectangles")
        if kind not in ("rectanglelabels", "rectangle"):
            continue
        got = (item.get("original_width", width), item.get("original_height", height))
        if got != (width, height):
            raise InputError(f"{where}: reviewed at {got[0]}x{got[1]}, but the image is {width}x{height}")
        v = item["value"]
        labels = v.get("rectanglelabels", classes if len(classes) == 1 else [])
        k = class_id(labels[0], classes) if len(labels) == 1 else None
        if k is None:
            raise InputError(f"{where}: a box labelled {labels}; {the_classes(classes)}")
        rotation = v.get("rotation", 0) % 360
        if min(rotation, 360 - rotation) > 1e-6:
            raise InputError(f"{where}: a box rotated by {v['rotation']} degrees cannot become a YOLO box")
        try:
            x1, y1 = v["x"] / 100 * width, v["y"] / 100 * height
            box = [x1, y1, x1 + v["width"] / 100 * width, y1 + v["height"] / 100 * height]
        except TypeError:
            raise InputError(f"{where}: a box whose x, y, width, height are not all numbers: {v!r}")
        boxes.append(checked_box(box, width, height, where))
        ids.append(k)
    return boxes, ids


def review_from_coco(document, sizes, classes, source):
    """A COCO JSON (Label Studio's COCO export, CVAT, Roboflow): every listed image is reviewed; a
    category is one of the classes by name (class_id), whatever its id."""
    review = Review("COCO JSON")
    categories = {c.get("id"): str(c.get("name", "")) for c in document.get("categories", []) if isinstance(c, dict)}
    names = {}
    for image in document["images"]:
        name = review_name(image["file_name"], sizes)
        if name is None:
            continue
        width, height = sizes[name]
        if (image.get("width") or width, image.get("height") or height) != (width, height):  # null: not given
            raise InputError(f"{source}: image {image['id']} ({name}) is {image.get('width')}x{image.get('height')} "
                             f"there, but {width}x{height} in --images")
        names[image["id"]] = name
        review.boxes[name] = ([], [])
    for annotation in document.get("annotations", []):
        if annotation["image_id"] not in names:
            continue
        name = names[annotation["image_id"]]
        where = f"{source}: annotation {annotation.get('id')} ({name})"
        category = categories.get(annotation.get("category_id"), annotation.get("category_id"))
        k = class_id(category, classes)
        if k is None:
            raise InputError(f"{where}: category {category!r}; {the_classes(classes)}")
        bbox = annotation["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise InputError(f"{where}: bbox {bbox!r} is not [x, y, width, height]")
        x, y, w, h = bbox
        box = [x, y, x + w, y + h] if all(isinstance(v, (int, float)) for v in bbox) else bbox
        review.boxes[name][0].append(checked_box(box, *sizes[name], where))
        review.boxes[name][1].append(k)
    review.empty_listed = [name for name, (boxes, _) in review.boxes.items() if not boxes]
    return review


def review_from_yolo(folder, sizes, classes):
    """A YOLO folder (labels/ or the .txt files themselves; Label Studio's YOLO export, CVAT,
    Roboflow): an image with a label file is reviewed, an empty file meaning no apples. Its class ids
    are the names in its classes.txt when it has one (Label Studio's, sorted by name), matched to the
    classes by name (yolo_export_classes), else our ids."""
    folder = Path(folder)
    labels = folder / "labels" if (folder / "labels").is_dir() else folder
    review = Review("YOLO folder")
    stems = {Path(name).stem: name for name in sizes}
    names, ours = yolo_export_classes(folder / "classes.txt", classes)
    for label in sorted(labels.glob("*.txt")):
        stem = label.stem if label.stem in stems else LABEL_STUDIO_PREFIX.sub("", label.stem)
        if stem not in stems:
            continue
        name = stems[stem]
        if name in review.boxes:
            raise InputError(f"{label}: a second label file for {name}")
        width, height = sizes[name]
        boxes, ids = read_yolo(label, width, height, names)
        for k in ids:
            if ours[k] is None:
                raise InputError(f"{label} ({name}): class {k}, {names[k]!r} in {folder / 'classes.txt'}; "
                                 f"{the_classes(classes)}")
        review.boxes[name] = ([checked_box(box, width, height, f"{label} ({name})") for box in boxes],
                              [ours[k] for k in ids])
    review.empty_listed = [name for name, (boxes, _) in review.boxes.items() if not boxes]
    return review


def yolo_export_classes(classes_txt, classes):
    """A YOLO export's class names, one a line in classes_txt, -> (those names, our class id of each by
    name (class_id), None for a name that is not one of the classes); without the file, our classes
    and ids."""
    if not classes_txt.is_file():
        return classes, list(range(len(classes)))
    try:
        names = [line.strip() for line in classes_txt.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{classes_txt}: unreadable ({error})")
    if not names:
        raise InputError(f"{classes_txt}: names no class")
    return names, [class_id(name, classes) for name in names]


def review_name(reference, names):
    """A file name, path or Label Studio URL in a review -> the image of --images it names (as is,
    or without Label Studio's prefix), or None."""
    name = Path(unquote(str(reference).split("?d=")[-1])).name
    if name in names:
        return name
    stripped = LABEL_STUDIO_PREFIX.sub("", name)
    return stripped if stripped in names else None


def review_report(proposals_dir, review, sizes, classes):
    """The review's cost: match_review_by_class for every reviewed image against propose's labels in
    proposals_dir (of these classes), per image and in total."""
    labels = Path(proposals_dir) / "labels"
    if not labels.is_dir():
        raise InputError(f"--proposals {proposals_dir}: no labels/ folder (give propose's --output_dir)")
    images = {}
    for name, reviewed in sorted(review.boxes.items()):
        proposal_file = labels / f"{Path(name).stem}.txt"
        if not proposal_file.exists():
            raise InputError(f"--proposals {proposals_dir}: no proposals for {name} ({proposal_file} is missing)")
        images[name] = match_review_by_class(read_yolo(proposal_file, *sizes[name], classes), reviewed)
    totals = {key: sum(image[key] for image in images.values()) for key in
              ("proposals", "reviewed", "unchanged", "adjusted", "deleted", "added")}
    return {"proposals_dir": str(Path(proposals_dir).resolve()), "matching": "one-to-one, highest IoU first, "
            "IoU >= 0.5; unchanged at IoU >= 0.95", "reviewed_images": len(images), "totals": totals,
            "images": images}


def match_review_by_class(proposed, reviewed):
    """match_review of one image class by class, summed: proposed and reviewed are (boxes, class ids),
    and a box matches only a box of its class, so one whose class was changed is deleted and added."""
    counts = {key: 0 for key in ("proposals", "reviewed", "unchanged", "adjusted", "deleted", "added")}
    for k in sorted(set(proposed[1]) | set(reviewed[1])):
        of_class = [[box for box, i in zip(*boxes) if i == k] for boxes in (proposed, reviewed)]
        for key, value in match_review(*of_class).items():
            counts[key] += value
    return counts


def match_review(proposed, reviewed, iou=0.5, same=0.95):
    """How a person changed one image's proposals: one-to-one matching, highest-IoU pairs first, at
    IoU >= iou -> {proposals, reviewed, unchanged (IoU >= same), adjusted, deleted, added}."""
    overlaps = iou_matrix(proposed, reviewed) if len(proposed) and len(reviewed) else np.zeros((len(proposed), 0))
    pairs = sorted(((overlaps[i, j], i, j) for i in range(len(proposed)) for j in range(len(reviewed))
                    if overlaps[i, j] >= iou), reverse=True)
    used_proposed, used_reviewed, unchanged, adjusted = set(), set(), 0, 0
    for overlap, i, j in pairs:
        if i in used_proposed or j in used_reviewed:
            continue
        used_proposed.add(i)
        used_reviewed.add(j)
        unchanged, adjusted = unchanged + int(overlap >= same), adjusted + int(overlap < same)
    return {"proposals": len(proposed), "reviewed": len(reviewed), "unchanged": unchanged, "adjusted": adjusted,
            "deleted": len(proposed) - len(used_proposed), "added": len(reviewed) - len(used_reviewed)}


# ---------------------------------------------------------------------------------------------
# Shared by both: boxes (x1 y1 x2 y2 in pixels), images, the dataset written
# ---------------------------------------------------------------------------------------------
def checked_box(box, width, height, where):
    """x1 y1 x2 y2 in pixels -> the box, clipped to the image when it overshoots by a rounding's
    worth (under OVERSHOOT of the image's side); InputError naming `where` for a box with a
    non-finite value, no area, or beyond the image."""
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise InputError(f"{where}: a box that is not four numbers: {box!r}")
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise InputError(f"{where}: a box with a value that is not a finite number: {box!r}")
    if x2 <= x1 or y2 <= y1:
        raise InputError(f"{where}: a box of width {x2 - x1:g} and height {y2 - y1:g} px: it has no area")
    slack_x, slack_y = OVERSHOOT * width, OVERSHOOT * height
    if x1 < -slack_x or y1 < -slack_y or x2 > width + slack_x or y2 > height + slack_y:
        raise InputError(f"{where}: the box x {x1:g}..{x2:g}, y {y1:g}..{y2:g} px lies outside the "
                         f"{width}x{height} image")
    return [max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))]


def iou_matrix(a, b):
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    left, top = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    right, bottom = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def read_yolo(path, width, height, classes):
    """A YOLO label file of a width x height image -> (boxes x1 y1 x2 y2 in pixels, their class ids);
    a class id must be one of 0..K-1 of classes (the names, for the message)."""
    boxes, ids = [], []
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: unreadable label file ({error})")
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            label, cx, cy, w, h = (float(v) for v in fields)
        except ValueError:
            raise InputError(f"{path}:{number}: expected a box 'class cx cy w h' (no polygons), got {line!r}")
        if not all(0 <= v <= 1 for v in (cx, cy, w, h)):
            raise InputError(f"{path}:{number}: cx cy w h must be normalised to 0..1, got {line!r}")
        if not (label.is_integer() and 0 <= label < len(classes)):
            known = ", ".join(f"{k} = {name}" for k, name in enumerate(classes))
            raise InputError(f"{path}:{number}: class {fields[0]}: "
                             + (f"the classes are {known}" if len(classes) > 1 else f"the only class is {known}"))
        boxes.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
        ids.append(int(label))
    return boxes, ids


def yolo_text(boxes, ids, width, height):
    """Boxes in pixels of a width x height image and their class ids -> YOLO label lines."""
    return "".join(f"{k} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                   f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}\n" for (x1, y1, x2, y2), k in zip(boxes, ids))


def class_id(name, classes):
    """The id of the class called name (ignoring case), or None when it is not one of the classes."""
    ids = {str(known).casefold(): k for k, known in enumerate(classes)}
    return ids.get(str(name).casefold())


def the_classes(classes):
    """For a message: "the only class is 'apple'" or "the classes are 'green_apple', 'red_apple'"."""
    listed = ", ".join(repr(name) for name in classes)
    return f"the classes are {listed}" if len(classes) > 1 else f"the only class is {listed}"


def checked_images(folder):
    """The images in a folder (by extension), sorted by name; InputError for a missing folder, no
    images, or two images with one name stem (they would share an output and a label file)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise InputError(f"{folder}: no images")
    stems = {}
    for image in images:
        if image.stem in stems:
            raise InputError(f"{image} and {stems[image.stem]} share a name stem, so they would share an output "
                             f"and a label file: rename one")
        stems[image.stem] = image
    return images


def check_images(images):
    """Decode every image whole, so that a truncated or broken one is named here, before ultralytics
    meets it."""
    for path in progress(images, "checking images"):
        try:
            with Image.open(path) as image:
                image.load()
        except Exception as error:  # PIL and its plugins raise many kinds
            raise InputError(f"{path}: unreadable image ({error!r})")


def image_size(path):
    try:
        with Image.open(path) as image:
            return image.size
    except Exception as error:  # PIL and its plugins raise many kinds
        raise InputError(f"{path}: unreadable image ({error!r})")


def write_dataset(out_dir, labelled, classes, note):
    """out_dir/{images,labels}/ and data.yaml (names: the classes) from [(image path, boxes, class
    ids)], built in a temporary folder that replaces the old one, so a crash leaves no half dataset."""
    out_dir = Path(out_dir)
    tmp = out_dir / ".dataset_tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    (tmp / "labels").mkdir()
    for image, boxes, ids in labelled:
        width, height = image_size(image)
        link_or_copy(image, tmp / "images" / image.name)
        (tmp / "labels" / f"{image.stem}.txt").write_text(yolo_text(boxes, ids, width, height))
    # train and val count from the YAML's folder, wherever it moves
    data = {"train": "images", "val": "images", "names": dict(enumerate(classes))}
    (tmp / "data.yaml").write_text(f"# {note}\n# val = train: model selection sees no real photo\n"
                                   + yaml.safe_dump(data, sort_keys=False))
    (out_dir / "data.yaml").unlink(missing_ok=True)
    for entry in ("images", "labels", "data.yaml"):
        if (out_dir / entry).is_dir():
            shutil.rmtree(out_dir / entry)
        os.replace(tmp / entry, out_dir / entry)
    tmp.rmdir()


def link_or_copy(source, target):
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


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


def write_json(path, document):
    write_atomic(path, json.dumps(document, indent=1))


def progress(items, description, total=None, unit="image"):
    """items, with a progress bar on stderr while it is a terminal (where a person waits; logs and
    pipes get no bar, and an error stays one line)."""
    return tqdm(items, total=total, desc=description, unit=unit, leave=False, disable=None)


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


def query_list(text):
    """--queries 'a green apple,a red apple' -> ['a green apple', 'a red apple'] (an argparse type: none
    empty)."""
    queries = [query.strip() for query in text.split(",")]
    if not all(queries):
        raise argparse.ArgumentTypeError(f"{text!r}: query {queries.index('') + 1} is empty")
    return queries


def class_list(text):
    """--classes 'green_apple,red_apple' -> ['green_apple', 'red_apple'] (an argparse type: checked
    by check_class_names)."""
    try:
        return check_class_names([name.strip() for name in text.split(",")], repr(text))
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error))


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help with descriptions and examples kept as written, and '(default: X)' only where X is a
    value one could type: not for None (the help says what happens), an empty text or list, or a switch."""

    def _get_help_string(self, action):
        switch = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)
        if switch or action.default is None or action.default in ("", []):
            return action.help
        return super()._get_help_string(action)


def build_parser():
    """The command line: propose and import."""
    parser = argparse.ArgumentParser(
        description="Detector proposals for review, and reviewed labels back.", formatter_class=HelpFormatter,
        epilog="examples:\n"
               "  python propose_boxes.py propose --weights DET/baseline/yolov8n/seed0/weights/best.pt \\\n"
               "      --images GEN/images --output_dir PROP\n"
               "  python propose_boxes.py import --reviewed export.json --images GEN/images --proposals PROP \\\n"
               "      --output_dir GF\n"
               "'python propose_boxes.py COMMAND --help' tells more.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = commands.add_parser(
        "propose", help="boxes from a detector, in YOLO, Label Studio and COCO form", formatter_class=HelpFormatter,
        description="A detector (a trained one, or an open-vocabulary one asked for the classes by name, or\n"
                    "existing YOLO labels) proposes boxes on the images: OUT/labels/, OUT/data.yaml,\n"
                    "OUT/proposals.csv, OUT/label_studio_tasks.json and _config.xml, OUT/coco_predictions.json,\n"
                    "OUT/preview/sheet_NNN.png (contact sheets with the boxes drawn), OUT/proposals.json.",
        epilog="examples:\n"
               "  python propose_boxes.py propose --weights DET/baseline/yolov8n/seed0/weights/best.pt \\\n"
               "      --images GEN/images --output_dir PROP --calibrate_data DATA/real.yaml\n"
               "  # no trained detector: OWLv2 asked for each class, calibrated on the instance photos\n"
               "  python propose_boxes.py propose --open_vocabulary --classes green_apple,red_apple \\\n"
               "      --queries 'a green apple,a red apple' --images GEN/images --output_dir PROP \\\n"
               "      --calibrate_data DATA/fewshot.yaml --calibrate_split train\n"
               "  python propose_boxes.py propose --labels DEC/labels --images GEN/images --output_dir PROP\n")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", metavar="BEST.pt", help="the baseline detector (train_detectors.py's best.pt)")
    source.add_argument("--open_vocabulary", nargs="?", const=OPEN_VOCABULARY_DEFAULT, metavar="MODEL",
                        help=f"no trained detector: a zero-shot one (OWLv2 or Grounding DINO: a hub id or a local "
                             f"folder; {' or '.join(TINY_RANDOM_MODELS)}: tiny untrained ones, for smoke runs) asked "
                             f"for --classes by --queries; without MODEL, {OPEN_VOCABULARY_DEFAULT}")
    source.add_argument("--labels", metavar="DIR", help="no detector: make the tasks from these YOLO labels, one "
                        "<stem>.txt per image (e.g. annotation_channel.py decode's labels/, or another tool's)")
    p.add_argument("--classes", type=class_list, metavar="A,B", help="with --labels and --open_vocabulary: the "
                   "names of the class ids 0, 1, ... (default: --open_vocabulary: --calibrate_data's names; else one class, "
                   "apple); a detector has its own (model.names)")
    p.add_argument("--queries", type=query_list, metavar="'Q1,Q2'", help="with --open_vocabulary: what to look for, "
                   "one text per class, in class order, e.g. 'a green apple,a red apple' (default: the class names)")
    p.add_argument("--images", required=True, metavar="DIR", help="the generated images")
    p.add_argument("--output_dir", required=True, metavar="OUT", help="where the proposals go (see above)")
    threshold = p.add_mutually_exclusive_group()
    threshold.add_argument("--conf", type=float, default=0.25, help="confidence threshold of a proposal")
    threshold.add_argument("--calibrate_data", metavar="REAL.yaml",
                           help="a data YAML with the detector's classes (--open_vocabulary: --classes): pick "
                                "the threshold with the best F1 on its --calibrate_split split")
    p.add_argument("--calibrate_split", choices=("val", "train"), default="val",
                   help="the split of --calibrate_data to calibrate on: train for prepare_data.py's fewshot.yaml "
                        "(the instance photos, when there is no other labelled photo)")
    p.add_argument("--iou", type=float, default=0.45, help="NMS IoU (per class), as in the paper")
    p.add_argument("--imgsz", type=int, default=768, help="the detector's image size (--weights; an open-vocabulary "
                   "model's processor sizes its own input)")
    p.add_argument("--device", default=None, help="e.g. 0, cuda or cpu (default: ultralytics' choice; with "
                   "--open_vocabulary, cpu)")
    p.add_argument("--image_url_prefix", default="/data/local-files/?d=",
                   help="put before each image's absolute path (without its leading /) in the Label Studio "
                        "tasks: Label Studio's local files with LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=/")
    p.add_argument("--preview_per_sheet", type=int, default=12, help="images per contact sheet in OUT/preview/")
    p.add_argument("--preview_cell", type=int, default=400, help="longer side of an image on a contact sheet, px")
    i = commands.add_parser(
        "import", help="reviewed labels -> a YOLO dataset for train_detectors.py", formatter_class=HelpFormatter,
        description="A review (Label Studio, COCO or YOLO export) -> OUT/images/, OUT/labels/, OUT/data.yaml,\n"
                    "OUT/unreviewed.txt, and with --proposals OUT/review_report.json (what the review changed).",
        epilog="examples:\n"
               "  python propose_boxes.py import --reviewed project-1-at-2025-01-01.json --images GEN/images \\\n"
               "      --proposals PROP --output_dir GF\n"
               "  python propose_boxes.py import --reviewed cvat_yolo_export.zip --images GEN/images --output_dir GF\n")
    i.add_argument("--reviewed", required=True, metavar="FILE|ZIP|DIR", help="a Label Studio export (JSON, JSON-MIN, "
                   "COCO or YOLO: the .json, the .zip it hands out, or the unpacked folder), a COCO JSON, or a YOLO "
                   "folder")
    i.add_argument("--images", required=True, metavar="DIR", help="the generated images the review is of")
    i.add_argument("--output_dir", required=True, metavar="OUT", help="where the reviewed dataset goes (see above)")
    i.add_argument("--proposals", metavar="PROP", help="propose's --output_dir: measure how the review changed the "
                   "proposals (OUT/review_report.json)")
    i.add_argument("--classes", type=class_list, metavar="A,B", help="the classes, in id order; the review's labels "
                   "are matched to them by name (default: --proposals' data.yaml names, else one class, apple)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "propose" and args.labels and args.calibrate_data:
        parser.error("--calibrate_data picks a detector's threshold: not with --labels")
    if args.command == "propose" and args.weights and args.classes:
        parser.error("--classes names the classes of --labels and --open_vocabulary: a detector has its own "
                     "(model.names)")
    if args.command == "propose" and args.queries and not args.open_vocabulary:
        parser.error("--queries are what an open-vocabulary model looks for: only with --open_vocabulary")
    if args.command == "propose" and args.calibrate_split != "val" and not args.calibrate_data:
        parser.error("--calibrate_split chooses the split of --calibrate_data: give that too")
    if args.command == "propose" and (args.preview_per_sheet < 1 or args.preview_cell < 32):
        parser.error("--preview_per_sheet must be at least 1 and --preview_cell at least 32 px")
    try:
        {"propose": run_propose, "import": run_import}[args.command](args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
