#!/usr/bin/env python3
"""propose_boxes.py: a detector proposes boxes on generated images; a person's review comes back.

The paper's annotation step (section 2.3.1): a baseline detector trained on real photos proposes
boxes, a person removes the false ones and adds the missed ones in a labelling tool, and the
reviewed labels become the training set.

  propose  In:  --weights BEST.pt, --images DIR (generate.py's images/)
           Out: OUT/images/ (links to the images), OUT/labels/<stem>.txt (YOLO, one file per
                image, empty when nothing is proposed), OUT/proposals.csv (with confidences),
                OUT/label_studio_tasks.json (tasks with 'predictions', boxes in percent),
                OUT/coco_predictions.json (COCO, with scores), OUT/data.yaml (train on the
                proposals as they are: the unreviewed path), OUT/proposals.json (threshold, how chosen).
                --conf sets the threshold; --calibrate_data REAL.yaml picks the one with the best
                F1 at IoU 0.5 on the real val split.
  import   In:  --reviewed FILE_OR_DIR: a Label Studio JSON export, a COCO JSON, or a YOLO folder
                (CVAT, Roboflow, X-AnyLabeling export one), and --images DIR.
           Out: OUT/images/, OUT/labels/, OUT/data.yaml (for train_detectors.py), OUT/unreviewed.txt
                (images without a review: listed, and left out of the dataset).
Matching is by file name (Label Studio's upload prefix '1a2b3c4d-' is ignored). One class: apple.
"""
import argparse
import csv
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
import yaml
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LABEL = "apple"


class InputError(Exception):
    """Bad input; the message names the file."""


# ---------------------------------------------------------------------------------------------
# Boxes and formats (boxes are x1 y1 x2 y2 in pixels)
# ---------------------------------------------------------------------------------------------
def yolo_text(boxes, width, height):
    return "".join(f"0 {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                   f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}\n" for x1, y1, x2, y2 in boxes)


def read_yolo(path, width, height):
    boxes = []
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
        if label != 0:
            raise InputError(f"{path}:{number}: class {fields[0]}: this toolkit has one class, 0 = apple")
        boxes.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
    return boxes


def label_studio_task(image_ref, width, height, boxes, scores, model_version):
    """A Label Studio task for one image with the proposals as a prediction (values in percent)."""
    result = [{"id": f"p{i}", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
               "original_width": width, "original_height": height, "image_rotation": 0, "score": float(score),
               "value": {"x": 100 * x1 / width, "y": 100 * y1 / height, "width": 100 * (x2 - x1) / width,
                         "height": 100 * (y2 - y1) / height, "rotation": 0, "rectanglelabels": [LABEL]}}
              for i, ((x1, y1, x2, y2), score) in enumerate(zip(boxes, scores))]
    return {"data": {"image": image_ref},
            "predictions": [{"model_version": model_version, "result": result,
                             "score": float(np.mean(scores)) if len(scores) else 0.0}]}


REGION_TYPES = {"polygonlabels", "polygon", "keypointlabels", "keypoint", "brushlabels", "brush", "ellipselabels",
                "ellipse"}


def label_studio_boxes(results, width, height, where):
    """Label Studio rectangle results (percent) -> boxes in pixels of a width x height image.
    Other region kinds, other labels and rotated boxes are errors naming `where`; non-region
    results (choices, text) are not boxes and are passed over."""
    boxes = []
    for item in results:
        kind = item.get("type")
        if kind in REGION_TYPES:
            raise InputError(f"{where}: a {kind} region cannot become a box; draw rectangles")
        if kind not in ("rectanglelabels", "rectangle"):
            continue
        v = item["value"]
        labels = v.get("rectanglelabels", [LABEL])
        if labels != [LABEL]:
            raise InputError(f"{where}: a box labelled {labels}; the only class is {LABEL!r}")
        rotation = v.get("rotation", 0) % 360
        if min(rotation, 360 - rotation) > 1e-6:
            raise InputError(f"{where}: a box rotated by {v['rotation']} degrees cannot become a YOLO box")
        x1, y1 = v["x"] / 100 * width, v["y"] / 100 * height
        boxes.append([x1, y1, x1 + v["width"] / 100 * width, y1 + v["height"] / 100 * height])
    return boxes


def coco_document(entries):
    """[(file_name, width, height, boxes, scores or None)] -> a COCO dataset dict (ids from 1)."""
    images, annotations = [], []
    for image_id, (name, width, height, boxes, scores) in enumerate(entries, start=1):
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            annotation = {"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                          "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
            if scores is not None:
                annotation["score"] = float(scores[k])
            annotations.append(annotation)
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": LABEL}]}


def reference_name(reference):
    """A Label Studio image reference ('/data/local-files/?d=a/b.png', '/data/upload/1/x.png') -> its file name."""
    return Path(unquote(str(reference).split("?d=")[-1])).name


def iou_matrix(a, b):
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    left, top = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    right, bottom = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


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


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def list_images(folder):
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder of images")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise InputError(f"{folder}: no images")
    stems = {}
    for image in images:
        if image.stem in stems:
            raise InputError(f"{image} and {stems[image.stem]} share a name stem, so they would share a label file")
        stems[image.stem] = image
    return images


def check_images(images):
    """Decode every image whole, so that a truncated or broken one is named here, before ultralytics
    meets it."""
    from tqdm import tqdm
    for path in tqdm(images, desc="checking images", unit="image", leave=False):
        try:
            with Image.open(path) as image:
                image.load()
        except Exception as error:  # PIL and its plugins raise many kinds
            raise InputError(f"{path}: unreadable image ({error!r})")


def check_output_dir(out, images_dir):
    """Create OUT and check it can be written, and that neither OUT nor the OUT/images/ and
    OUT/labels/ this writes is the input folder or lies inside it."""
    out, images_dir = Path(out), Path(images_dir).resolve()
    for target in (out, out / "images", out / "labels"):
        if target.resolve() == images_dir or images_dir in target.resolve().parents:
            raise InputError(f"--output_dir {out}: it would write into the input folder {images_dir}; give another "
                             f"folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=out, prefix=".write_test").close()
    except OSError as error:
        problem = "is a file, not a folder" if out.is_file() else "cannot be created or written"
        raise InputError(f"--output_dir {out}: {problem} ({error.strerror or error})")


def image_size(path):
    try:
        with Image.open(path) as image:
            return image.size
    except Exception as error:  # PIL and its plugins raise many kinds
        raise InputError(f"{path}: unreadable image ({error!r})")


def link_or_copy(source, target):
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_dataset(out_dir, labelled, note):
    """out_dir/{images,labels}/ and data.yaml from [(image path, boxes)], built in a temporary folder
    that replaces the old one, so a crash leaves no half dataset."""
    out_dir = Path(out_dir)
    tmp = out_dir / ".dataset_tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    (tmp / "labels").mkdir()
    for image, boxes in labelled:
        width, height = image_size(image)
        link_or_copy(image, tmp / "images" / image.name)
        (tmp / "labels" / f"{image.stem}.txt").write_text(yolo_text(boxes, width, height))
    data = {"path": str(out_dir.resolve()), "train": "images", "val": "images", "names": {0: LABEL}}
    (tmp / "data.yaml").write_text(f"# {note}\n# val = train: model selection sees no real photo\n"
                                   + yaml.safe_dump(data, sort_keys=False))
    (out_dir / "data.yaml").unlink(missing_ok=True)
    for entry in ("images", "labels", "data.yaml"):
        if (out_dir / entry).is_dir():
            shutil.rmtree(out_dir / entry)
        os.replace(tmp / entry, out_dir / entry)
    tmp.rmdir()


def write_json(path, document):
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    tmp.write_text(json.dumps(document, indent=1))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# propose
# ---------------------------------------------------------------------------------------------
def detect(weights, images, imgsz, iou, device):
    """{image path: (boxes in pixels, confidences)} at confidence >= 0.001."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO
    try:
        model = YOLO(str(weights))
    except Exception as error:
        raise InputError(f"{weights}: not a YOLO weights file ultralytics can load ({error!r})")
    from tqdm import tqdm
    found = {}
    results = model.predict(source=[str(p) for p in images], imgsz=imgsz, conf=0.001, iou=iou, max_det=300,
                            device=device, stream=True, verbose=False)
    for result in tqdm(results, total=len(images), desc="detecting", unit="image"):
        found[Path(result.path)] = (result.boxes.xyxy.tolist(), result.boxes.conf.tolist())
    return found


def calibration_split(data_yaml):
    """The val images of a data YAML and their ground-truth boxes (from the sibling labels/)."""
    try:
        data = yaml.safe_load(Path(data_yaml).read_text())
        root = Path(data.get("path") or Path(data_yaml).parent)  # relative: from the working folder, as ultralytics
        folder = root / data["val"]
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as error:
        raise InputError(f"--calibrate_data {data_yaml}: expected a data YAML with a 'val' folder ({error!r})")
    images = list_images(folder)
    truths = {}
    labels = Path("/labels/".join(f"{folder}/".rsplit("/images/", 1)))  # ultralytics' images -> labels rule
    for image in images:
        label = labels / f"{image.stem}.txt"
        truths[image] = read_yolo(label, *image_size(image)) if label.exists() else []
    return images, truths


def propose(args):
    images = list_images(args.images)
    check_output_dir(args.output_dir, args.images)
    if not Path(args.weights).is_file():
        raise InputError(f"{args.weights}: no such weights file")
    meta = {"weights": str(Path(args.weights).resolve()), "iou": args.iou, "imgsz": args.imgsz}
    val_images, truths = calibration_split(args.calibrate_data) if args.calibrate_data else ([], {})
    check_images(images + val_images)
    if args.calibrate_data:
        found = detect(args.weights, val_images, args.imgsz, args.iou, args.device)
        predictions = {image: [(*box, conf) for box, conf in zip(*found[image])] for image in val_images}
        threshold, f1, table = best_f1_threshold(predictions, truths)
        meta.update(conf=threshold, chosen_by=f"best F1 ({f1:.3f}) at IoU 0.5 on {args.calibrate_data} val",
                    calibration=[dict(zip(("threshold", "precision", "recall", "f1"), row)) for row in table])
        print(f"calibrated threshold {threshold:.3f} (F1 {f1:.3f} on the real val split)")
    else:
        meta.update(conf=args.conf, chosen_by="--conf")
    found = detect(args.weights, images, args.imgsz, args.iou, args.device)

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    labelled, tasks, coco_entries, rows = [], [], [], []
    for image in images:
        width, height = image_size(image)
        kept = [(box, conf) for box, conf in zip(*found[image]) if conf >= meta["conf"]]
        boxes, scores = [b for b, _ in kept], [c for _, c in kept]
        labelled.append((image, boxes))
        tasks.append(label_studio_task(f"{args.image_url_prefix}{quote(image.resolve().as_posix().lstrip('/'))}",
                                       width, height, boxes, scores, Path(args.weights).name))
        coco_entries.append((image.name, width, height, boxes, scores))
        rows += [{"file": image.name, "x1": round(b[0], 2), "y1": round(b[1], 2), "x2": round(b[2], 2),
                  "y2": round(b[3], 2), "conf": round(c, 5)} for b, c in kept]
    (out / "proposals.json").unlink(missing_ok=True)  # written last: present = finished
    write_dataset(out, labelled, "proposals as they are, not reviewed by a person")
    write_json(out / "label_studio_tasks.json", tasks)
    write_json(out / "coco_predictions.json", coco_document(coco_entries))
    with open(out / ".proposals.csv.tmp", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["file", "x1", "y1", "x2", "y2", "conf"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(out / ".proposals.csv.tmp", out / "proposals.csv")
    write_json(out / "proposals.json", meta)
    print(f"{len(rows)} boxes proposed on {len(images)} images at confidence >= {meta['conf']:.3f}; "
          f"review {out / 'label_studio_tasks.json'} in Label Studio, or train on {out / 'data.yaml'} as it is")


# ---------------------------------------------------------------------------------------------
# import
# ---------------------------------------------------------------------------------------------
def reviewed_from_label_studio(tasks, sizes, source):
    """{file name: boxes} of the tasks a person annotated (tasks with only predictions are not reviewed)."""
    reviewed = {}
    for number, task in enumerate(tasks, start=1):
        name = reference_name(task.get("data", {}).get("image", ""))
        if name not in sizes:
            name = re.sub(r"^[0-9a-f]{8}-", "", name)
        annotations = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
        if name not in sizes or not annotations:
            continue
        if name in reviewed:
            raise InputError(f"{source}: task {number} reviews {name} again; export one task per image")
        # the ground-truth annotation if one is marked, else the latest
        chosen = max(annotations, key=lambda a: (bool(a.get("ground_truth")), str(a.get("updated_at", ""))))
        results = chosen.get("result", [])
        width, height = sizes[name]
        for item in results:
            got = (item.get("original_width", width), item.get("original_height", height))
            if got != (width, height):
                raise InputError(f"{source}: task {number} ({name}) was reviewed at {got[0]}x{got[1]}, but the "
                                 f"image is {width}x{height}")
        reviewed[name] = label_studio_boxes(results, width, height, f"{source}: task {number} ({name})")
    return reviewed


def reviewed_from_coco(document, sizes):
    names = {img["id"]: Path(img["file_name"]).name for img in document["images"]}
    reviewed = {name: [] for name in names.values() if name in sizes}
    for ann in document.get("annotations", []):
        name = names[ann["image_id"]]
        if name in reviewed:
            x, y, w, h = ann["bbox"]
            reviewed[name].append([x, y, x + w, y + h])
    return reviewed


def reviewed_from_yolo(folder, images):
    folder = Path(folder)
    labels = folder / "labels" if (folder / "labels").is_dir() else folder
    reviewed = {}
    for image in images:
        label = labels / f"{image.stem}.txt"
        if label.exists():
            reviewed[image.name] = read_yolo(label, *image_size(image))
    return reviewed


def import_reviewed(args):
    images = list_images(args.images)
    check_output_dir(args.output_dir, args.images)
    sizes = {image.name: image_size(image) for image in images}
    source = Path(args.reviewed)
    if source.is_dir():
        reviewed, kind = reviewed_from_yolo(source, images), "YOLO folder"
    else:
        try:
            document = json.loads(source.read_text())
        except (OSError, ValueError) as error:
            raise InputError(f"{source}: not a readable JSON file or YOLO folder ({error})")
        try:
            if isinstance(document, list):
                reviewed, kind = reviewed_from_label_studio(document, sizes, source), "Label Studio export"
            elif isinstance(document, dict) and "images" in document:
                reviewed, kind = reviewed_from_coco(document, sizes), "COCO JSON"
            else:
                raise InputError(f"{source}: neither a Label Studio export (a list of tasks) nor a COCO JSON")
        except (KeyError, TypeError) as error:
            raise InputError(f"{source}: malformed review file (missing {error})")
    if not reviewed:
        raise InputError(f"{source} ({kind}) reviews none of the images in {args.images} (matched by file name)")
    unreviewed = [image.name for image in images if image.name not in reviewed]
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_dataset(out, [(image, reviewed[image.name]) for image in images if image.name in reviewed],
                  f"reviewed labels from {source} ({kind})")
    tmp = out / ".unreviewed.txt.tmp"
    tmp.write_text("".join(f"{name}\n" for name in unreviewed))
    os.replace(tmp, out / "unreviewed.txt")
    print(f"{len(reviewed)} reviewed images ({sum(len(b) for b in reviewed.values())} boxes) from the {kind} "
          f"-> {out / 'data.yaml'}")
    if unreviewed:
        print(f"warning: {len(unreviewed)} images have no review and are left out (listed in "
              f"{out / 'unreviewed.txt'}): {', '.join(unreviewed[:5])}{' ...' if len(unreviewed) > 5 else ''}")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Detector proposals for review, and reviewed labels back.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("propose", help="boxes from a detector, in YOLO, Label Studio and COCO form",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", required=True, help="the baseline detector (train_detectors.py's best.pt)")
    p.add_argument("--images", required=True, help="the generated images")
    p.add_argument("--output_dir", required=True)
    threshold = p.add_mutually_exclusive_group()
    threshold.add_argument("--conf", type=float, default=0.25, help="confidence threshold of a proposal")
    threshold.add_argument("--calibrate_data", help="a data YAML: pick the threshold with the best F1 on its val split")
    p.add_argument("--iou", type=float, default=0.45, help="NMS IoU (the paper's)")
    p.add_argument("--imgsz", type=int, default=768, help="the detector's image size")
    p.add_argument("--device", default=None, help="e.g. 0 or cpu (default: ultralytics' choice)")
    p.add_argument("--image_url_prefix", default="/data/local-files/?d=",
                   help="put before each image's absolute path (without its leading /) in the Label Studio "
                        "tasks: Label Studio's local files with LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=/")
    i = commands.add_parser("import", help="reviewed labels -> a YOLO dataset for train_detectors.py",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    i.add_argument("--reviewed", required=True, help="Label Studio JSON export, COCO JSON, or a YOLO folder")
    i.add_argument("--images", required=True, help="the generated images the review is of")
    i.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    try:
        propose(args) if args.command == "propose" else import_reviewed(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
