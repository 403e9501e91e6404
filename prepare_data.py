#!/usr/bin/env python3
"""prepare_data.py: raw orchard photos -> YOLO datasets + the DreamBooth instance photos.

In (one of):
  --source minneapple --input DIR   MinneApple's detection/ folder: train/images/*.png (720x1280),
                                    train/masks/*.png (one instance-id mask per photo, 0 =
                                    background), test/images/*.png and, if you have them,
                                    test/masks/*.png or --test_annotations COCO.json
  --source yolo --input DIR         images/ + labels/ (all train), or {train,val,test}/{images,labels}
  --source coco --input DIR --annotations FILE.json
                                    the photos in DIR, all train, labelled by a COCO detection JSON
  --source coco --input DIR         DIR/{train,val,test}/ (val/ or Roboflow's valid/), each holding
                                    its photos and exactly one COCO *.json (Roboflow's export;
                                    for CVAT's, move images/S/ and annotations/instances_S.json
                                    into S/)
  --source synthetic --num_images N procedural MinneApple-layout photos (no download), written to
                                    OUT/synthetic_source/ and then prepared like MinneApple
                                    (--apple_scale: larger, fewer apples)

Out (the folder contract, see docs/folder-contract.md):
  OUT/real/{train,val,test}/{images,labels}/  centre crop -> resize; YOLO txt, classes 0..K-1
  OUT/real.yaml                               ultralytics data YAML (relative to its folder) with
                                              the class names
  OUT/instances/<group>/                      train photos picked for diversity, for DreamBooth: one
                                              folder per --group_by group (green and red by default)
  OUT/fewshot.txt, OUT/fewshot.yaml           the few-shot control: ultralytics data YAML training
                                              on the instance photos (their paths in
                                              OUT/real/train/images/, listed in fewshot.txt) and
                                              validating on OUT/real/val/images
  OUT/manifest.csv                            one row per photo
  OUT/stats.json                              counts (boxes per class too), colours, dropped
                                              boxes, skipped files, config

Classes come from the data: MinneApple and the synthetic photos have one, apple; a YOLO folder
names its classes in data.yaml (`names`, a list or {id: name}) or classes.txt (one a line, Label
Studio's YOLO export), and without either its labels may only use class 0, apple; a COCO JSON's
categories are its classes, matched by name across the JSON files, in the order first listed
(a category that no annotation uses is left out, with a warning). --classes a,b keeps those, in
that order; the boxes of the others are dropped and counted. The kept classes are renumbered
0..K-1, and their names go into every YAML.

COCO: boxes are bbox [x, y, width, height] in pixels; a JSON image is matched with a photo by
its file_name's base name, and its width and height must be the photo's. An image listed without
annotations has no boxes; an image listed but not in the folder is an error; a photo in the
folder that the JSON does not list is left out, with a warning on every run. MinneApple's
--test_annotations are apples: one category, or the one named 'apple' (any case).

Boxes from masks follow MinneApple's own loader: x1 = smallest, x2 = largest pixel x of the id
(so a 3-px-wide apple is 2 px wide), boxes with zero width or height are dropped. The whole output
is built in OUT/.prepare_tmp and moved into place at the end; a re-run with the same arguments and
the same input files does nothing.
"""
import argparse
import contextlib
import csv
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path, PureWindowsPath

import numpy as np
import yaml
from PIL import Image, ImageOps
from tqdm import tqdm

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
COLOURS = ("green", "red")
GROUP_RULES = ("colour", "class", "none")  # --group_by's rules; anything else is a CSV file
SPLITS = ("train", "val", "test")
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid"), "test": ("test",)}  # Roboflow: valid/
# Hue ranges in degrees, read on chromatic pixels only (saturation and value above the floors).
RED_HUES = ((0.0, 20.0), (330.0, 360.0))
GREEN_HUES = ((40.0, 170.0),)
MIN_SATURATION, MIN_VALUE = 0.25, 0.15
# Boxes only give a rectangle: the inscribed ellipse shrunk to this fraction holds mostly apple.
BOX_CORE_FRACTION = 0.8
# MinneApple's 331 of 1001 photos are test; the synthetic source keeps that share.
SYNTHETIC_TEST_SHARE = 331 / 1001
SYNTHETIC_SIZE = (720, 1280)  # width, height, as MinneApple
MANIFEST_FIELDS = ["split", "file", "source_file", "colour", "red_fraction", "labelled",
                   "boxes_kept", "boxes_dropped", "boxes_per_class", "instance"]
# What prepare() moves into OUT, stats.json last: it marks a finished output.
OUTPUT_ENTRIES = ("real", "instances", "manifest.csv", "real.yaml", "fewshot.txt", "fewshot.yaml", "stats.json")


class InputError(Exception):
    """Bad input: the message names the file (or flag) and what is wrong with it."""


# ---------------------------------------------------------------------------------------------
# The whole dataset: prepare() builds OUT from the jobs
# ---------------------------------------------------------------------------------------------
def prepare(jobs, config, out_dir, workers=1, group_file=None):
    """Build the whole output in out_dir/.prepare_tmp, then move it into place (group_file: see
    photo_groups). -> stats dict."""
    out_dir = Path(out_dir).resolve()
    tmp = out_dir / ".prepare_tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    rows, skipped = prepare_photos(jobs, config, tmp / "pool", workers)
    move_val_photos(rows, config)
    place_photos(rows, tmp / "pool", tmp)
    groups = photo_groups(rows, config, group_file)
    instances, warnings = pick_instances(rows, groups, config, tmp)
    ungrouped = sum(r["split"] == "train" and r.get("group") is None for r in rows)
    if ungrouped and config["group_by"] != "colour":  # colour: the photos without apples, as ever
        warnings.append(f"{ungrouped} train photos are in no --group_by {config['group_by']} group")
    unlabelled = [r["file"] for r in rows if r["labelled"] == "no"]
    if unlabelled:
        warnings.append(f"{len(unlabelled)} test photos have no labels (no test/masks/, not in "
                        f"--test_annotations): they are written without label files, and "
                        f"evaluate.py refuses them")
    rows.sort(key=lambda r: (SPLITS.index(r["split"]), r["file"]))
    write_manifest(tmp / "manifest.csv", rows)
    # no `path`: ultralytics reads the entries from the YAML's own folder, so a moved dataset still works;
    # a flat source has no test photos, and no test split to list
    data_yaml = {"train": "real/train/images", "val": "real/val/images",
                 **({"test": "real/test/images"} if any(r["split"] == "test" for r in rows) else {}),
                 "names": dict(enumerate(config["classes"]))}
    (tmp / "real.yaml").write_text(yaml.safe_dump(data_yaml, sort_keys=False))
    fewshot_listing, fewshot_yaml = fewshot_files(instances, config["classes"])
    (tmp / "fewshot.txt").write_text(fewshot_listing)
    (tmp / "fewshot.yaml").write_text(fewshot_yaml)
    stats = dataset_stats(rows, config, instances, skipped, warnings, len(unlabelled))
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
    move_into_place(tmp, out_dir)
    return stats


def prepare_photos(jobs, config, pool_dir, workers):
    """process_photo for every job, in `workers` processes, into pool_dir/{images,labels}/ ->
    (manifest rows, the problems of the photos --skip_bad skipped). Bad input stops it, naming the
    photo, unless --skip_bad; so does a source left without one good train photo."""
    for kind in ("images", "labels"):
        (pool_dir / kind).mkdir(parents=True)
    work = [(job, config, str(pool_dir)) for job in jobs]
    rows, skipped = [], []
    # one worker runs in this process: simpler tracebacks, no forking
    with multiprocessing.Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        results = pool.imap(_process_or_report, work, chunksize=4) if pool else map(_process_or_report, work)
        for row, error in tqdm(results, total=len(work), desc="preparing photos", unit="photo"):
            if error is None:
                rows.append(row)
            elif config["skip_bad"]:
                skipped.append(error)
            else:
                raise InputError(error + "\n(--skip_bad skips such photos and lists them)")
    if not rows:
        raise InputError("every photo was skipped as bad input: " + "; ".join(skipped[:3]))
    if not any(r["split"] == "train" for r in rows):
        raise InputError("no train photo could be prepared: " + "; ".join(skipped[:3]))
    return rows, skipped


def move_val_photos(rows, config):
    """A source without its own val: move --num_val train photos (choose_val) to val. Val is chosen
    among the photos that were prepared, so --skip_bad cannot shrink it."""
    if any(r["split"] == "val" for r in rows):
        return
    train_stems = [r["stem"] for r in rows if r["split"] == "train"]
    num_val = config["num_val"] if config["num_val"] is not None else round(0.2 * len(train_stems))
    val = choose_val(train_stems, num_val, config["seed"], config["split_by"])
    for row in rows:
        if row["split"] == "train" and row["stem"] in val:
            row["split"] = "val"


def place_photos(rows, pool_dir, tmp):
    """Move each prepared photo and its label file from pool_dir into tmp/real/<split>/; sets each
    row's file."""
    for split in SPLITS:
        for kind in ("images", "labels"):
            (tmp / "real" / split / kind).mkdir(parents=True)
    for row in rows:
        row["file"] = f"real/{row['split']}/images/{row['image_name']}"
        os.replace(pool_dir / "images" / row["image_name"], tmp / row["file"])
        if row["labelled"] == "yes":
            os.replace(pool_dir / "labels" / f"{row['stem']}.txt",
                       tmp / "real" / row["split"] / "labels" / f"{row['stem']}.txt")
    shutil.rmtree(pool_dir)


def pick_instances(rows, groups, config, tmp):
    """The DreamBooth instance photos: per group (photo_groups), --num_instances of its train photos
    spread out in appearance (farthest_point_sampling), copied to tmp/instances/<group>/; marks their
    rows. -> ({group: [file name]}, warnings when a group has fewer train photos than asked for)."""
    warnings, instances = [], {}
    for group in groups:
        (tmp / "instances" / group).mkdir(parents=True)
        candidates = [r for r in rows if r["split"] == "train" and r.get("group") == group]
        picks = farthest_point_sampling([r["embedding"] for r in candidates],
                                        config["num_instances"], config["seed"])
        if len(picks) < config["num_instances"]:
            warnings.append(f"only {len(picks)} {group} train photos for the {config['num_instances']} "
                            f"{group} instance photos asked for")
        instances[group] = []
        for index in picks:
            row = candidates[index]
            row["instance"] = group
            shutil.copyfile(tmp / row["file"], tmp / "instances" / group / Path(row["file"]).name)
            instances[group].append(Path(row["file"]).name)
    return instances, warnings


def photo_groups(rows, config, group_file):
    """Set each train row's DreamBooth group by --group_by: colour (green or red; a photo without
    coloured boxes has none), class (the class with most boxes, the first on a tie; none without
    boxes), none (one group, all) or the CSV's group (group_file: {file name: group}; a photo it
    does not list has none). -> the group names, in order."""
    train = [r for r in rows if r["split"] == "train"]
    if config["group_by"] == "colour":
        groups = list(COLOURS)
        for row in train:
            row["group"] = row["colour"] if row["colour"] in COLOURS else None
    elif config["group_by"] == "class":
        groups = [folder_name(name) for name in config["classes"]]
        if len(set(groups)) < len(groups):
            raise InputError(f"--group_by class: the classes {name_list(config['classes'])} give the folder "
                             f"names {name_list(groups)}, not all distinct: group them with a CSV")
        for row in train:
            counts = [row["boxes_per_class"].get(name, 0) for name in config["classes"]]
            row["group"] = groups[counts.index(max(counts))] if max(counts) else None
    elif config["group_by"] == "none":
        groups = ["all"]
        for row in train:
            row["group"] = "all"
    else:
        groups = list(dict.fromkeys(group_file.values()))
        for row in train:
            row["group"] = group_file.get(Path(row["source_file"]).name)
    return groups


def folder_name(name):
    """A class name as a group folder's name: runs of characters other than letters, digits, '_', '.'
    and '-' become '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "_"


def read_group_file(path, jobs):
    """--group_by FILE.csv (columns file, group: a photo's file name in --input and its group) ->
    {file name: group}. A file that is not one of the photos, a photo listed twice, or a group name
    that cannot be a folder name is an error naming the line."""
    names = {Path(job["image"]).name for job in jobs}
    groups = {}
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if not {"file", "group"} <= set(reader.fieldnames or ()):
                raise InputError(f"{path}: expected a CSV with the columns file and group, got {reader.fieldnames}")
            for number, row in enumerate(reader, start=2):
                file, group = (row["file"] or "").strip(), (row["group"] or "").strip()
                if file not in names:
                    raise InputError(f"{path}:{number}: {file!r} is not a photo of the source (a file name, e.g. IMG_1.jpg)")
                if file in groups:
                    raise InputError(f"{path}:{number}: {file} is listed twice")
                if not group or folder_name(group) != group:
                    raise InputError(f"{path}:{number}: group {group!r}: use letters, digits, '_', '.' and '-'")
                groups[file] = group
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path}: unreadable CSV ({error})")
    if not groups:
        raise InputError(f"{path}: lists no photo")
    return groups


def write_manifest(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, MANIFEST_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "instance": row.get("instance", ""),
                             "boxes_per_class": ";".join(f"{name}={n}" for name, n in row["boxes_per_class"].items())})


def fewshot_files(instances, classes):
    """(fewshot.txt, fewshot.yaml) texts: the few-shot control's ultralytics train list, the
    instance photos in OUT/real/train/images/ as ./ paths (ultralytics reads them from the list's
    folder, and finds each label by replacing /images/ with /labels/), and its data YAML, validated
    on the baseline's val; both relative, so a moved OUT still works."""
    listing = "".join(f"./real/train/images/{name}\n" for names in instances.values() for name in names)
    data_yaml = {"train": "fewshot.txt", "val": "real/val/images", "names": dict(enumerate(classes))}
    return listing, yaml.safe_dump(data_yaml, sort_keys=False)


def dataset_stats(rows, config, instances, skipped, warnings, unlabelled):
    """stats.json's content: the config, the classes, the groups (their train photos), and per split
    the photos, the boxes kept (in all and per class), dropped by the crop and of classes left
    out, and the colours."""
    groups = {group: sum(r["split"] == "train" and r.get("group") == group for r in rows) for group in instances}
    stats = {"config": config, "classes": config["classes"], "groups": groups, "photos": {}, "boxes_kept": {},
             "boxes_per_class": {},
             "boxes_dropped": {}, "boxes_other_classes": {}, "colours": {}, "unlabelled_test_photos": unlabelled,
             "instances": instances, "skipped": skipped, "warnings": warnings}
    for split in SPLITS:
        split_rows = [r for r in rows if r["split"] == split]
        stats["photos"][split] = len(split_rows)
        stats["boxes_kept"][split] = sum(r["boxes_kept"] for r in split_rows)
        stats["boxes_per_class"][split] = {name: sum(r["boxes_per_class"].get(name, 0) for r in split_rows)
                                           for name in config["classes"]}
        stats["boxes_dropped"][split] = sum(r["boxes_dropped"] for r in split_rows)
        stats["boxes_other_classes"][split] = sum(r["boxes_other_classes"] for r in split_rows)
        stats["colours"][split] = {c: sum(r["colour"] == c for r in split_rows) for c in (*COLOURS, "none")}
    return stats


def move_into_place(tmp, out_dir):
    """Replace OUT's entries by tmp's. stats.json marks a finished output: removed first, moved in last."""
    (out_dir / "stats.json").unlink(missing_ok=True)
    for entry in OUTPUT_ENTRIES:
        target = out_dir / entry
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp / entry, target)
    shutil.rmtree(tmp)


def up_to_date(out_dir, config):
    """True when out_dir holds a finished output made with this exact config."""
    try:
        stats = json.loads((Path(out_dir) / "stats.json").read_text())
    except (OSError, ValueError):
        return False
    return stats.get("config") == config and all((Path(out_dir) / entry).exists() for entry in OUTPUT_ENTRIES)


def summary(stats):
    lines = ["photos: " + ", ".join(f"{s} {stats['photos'][s]}" for s in SPLITS)]
    for split in SPLITS:
        colours = stats["colours"][split]
        per_class = (" (" + ", ".join(f"{name} {n}" for name, n in stats["boxes_per_class"][split].items()) + ")"
                     if len(stats["classes"]) > 1 else "")
        other = (f", {stats['boxes_other_classes'][split]} of classes left out"
                 if stats["boxes_other_classes"][split] else "")
        lines.append(f"  {split}: {stats['boxes_kept'][split]} boxes kept{per_class}, "
                     f"{stats['boxes_dropped'][split]} dropped{other}; green {colours['green']}, "
                     f"red {colours['red']}, no apples {colours['none']}")
    lines.append("groups (train photos): " + ", ".join(f"{g} {n}" for g, n in stats["groups"].items()))
    lines.append("instances: " + ", ".join(f"{c} {len(v)}" for c, v in stats["instances"].items()))
    lines += [f"warning: {w}" for w in stats["warnings"]]
    lines += [f"skipped: {s}" for s in stats["skipped"]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# One photo: crop, resize, boxes, colour
# ---------------------------------------------------------------------------------------------
def process_photo(job, config, pool):
    """Crop, resize, write one photo and its labels to pool/{images,labels}/ -> manifest row."""
    image = rgb_image(ImageOps.exif_transpose(open_image(job["image"])), job["image"])
    width, height = image.size
    crop = config["crop_size"] or min(width, height)
    try:
        left, top = centre_crop_window(width, height, crop)
    except ValueError as error:
        raise InputError(f"{job['image']}: {error}")
    row = {"split": job["split"], "source_file": job["image"], "colour": "none", "red_fraction": "",
           "labelled": "yes" if job["labels"] else "no", "boxes_kept": 0, "boxes_dropped": 0,
           "boxes_per_class": {}, "boxes_other_classes": 0}
    if job["labels"]:
        boxes, box_classes, mask_pixels, degenerate = load_source_boxes(job, image)
        selected = np.array([name in config["classes"] for name in box_classes], dtype=bool)
        boxes, box_classes = boxes[selected], [name for name in box_classes if name in config["classes"]]
        kept, keep = crop_resize_boxes(boxes, left, top, crop, config["resolution"],
                                       config["min_visible"], pixel_boxes=job["labels"][0] == "mask")
        class_ids = [config["classes"].index(name) for name, k in zip(box_classes, keep) if k]
        per_class = Counter(class_ids)
        apple_pixels = mask_pixels if mask_pixels is not None else boxes_core_mask((height, width), boxes)
        fraction = red_fraction(image, apple_pixels)
        row.update(colour=colour_label(fraction, config["red_threshold"]),
                   red_fraction="" if np.isnan(fraction) else round(fraction, 4),
                   boxes_kept=len(kept), boxes_dropped=int((~keep).sum()) + degenerate,
                   boxes_per_class={name: per_class[k] for k, name in enumerate(config["classes"]) if per_class[k]},
                   boxes_other_classes=int((~selected).sum()))
    resized = image.crop((left, top, left + crop, top + crop)).resize(
        (config["resolution"], config["resolution"]), Image.BICUBIC)
    image_name = f"{job['stem']}.{config['image_format']}"
    resized.save(Path(pool, "images", image_name), **({"quality": 95} if config["image_format"] == "jpg" else {}))
    if job["labels"]:
        Path(pool, "labels", f"{job['stem']}.txt").write_text(
            yolo_label_text(kept, class_ids, config["resolution"], config["resolution"]))
    row.update(stem=job["stem"], image_name=image_name, embedding=diversity_embedding(resized))
    return row


def _process_or_report(args):
    job, config, pool = args
    try:
        return process_photo(job, config, pool), None
    except InputError as error:
        return None, str(error)


def load_source_boxes(job, image):
    """-> (boxes in source pixels, the class name of each, the mask's pixels to read the colour from
    or None (then the boxes' cores are read), boxes dropped as degenerate)."""
    kind, value = job["labels"][:2]
    width, height = image.size
    if kind == "mask":
        if not Path(value).exists():
            raise InputError(f"{job['image']}: no mask: expected {value}")
        mask_image = open_image(value)
        if mask_image.mode not in ("L", "P", "I", "I;16"):
            raise InputError(f"{value}: expected a single-channel instance-id mask (8 or 16 bit), "
                                f"got mode {mask_image.mode}")
        if mask_image.size != image.size:
            raise InputError(f"{value}: mask is {mask_image.size[0]}x{mask_image.size[1]} but "
                                f"its image {job['image']} is {width}x{height}")
        mask = np.asarray(mask_image)
        boxes, degenerate = boxes_from_mask(mask)
        return boxes, ["apple"] * len(boxes), mask > 0, degenerate
    if kind == "yolo":
        if not Path(value).exists():
            raise InputError(f"{job['image']}: no label file: expected {value} (an empty file "
                                f"means no boxes)")
        boxes, box_classes = read_yolo_boxes(value, width, height, job["labels"][2])
    else:
        boxes, box_classes, coco_size, problem = job["labels"][2:]
        if problem:
            raise InputError(problem)
        if coco_size is not None and tuple(coco_size) != (width, height):
            raise InputError(f"{job['image']}: the COCO annotations give {coco_size[0]}x{coco_size[1]} "
                                f"but the photo is {width}x{height}")
    return boxes, box_classes, None, 0


def boxes_from_mask(mask):
    """Instance-id mask (H, W) -> (boxes float (N, 4) x1 y1 x2 y2 in order of id, degenerate).

    Every non-zero id is one apple, however many pieces its pixels form; ids need not be
    consecutive. x2/y2 are the largest pixel x/y (MinneApple's convention). Boxes with zero width
    or height are dropped as MinneApple's loader does; their number is returned."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return np.zeros((0, 4)), 0
    ids = mask[ys, xs]
    order = np.argsort(ids, kind="stable")
    ids, xs, ys = ids[order], xs[order], ys[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    boxes = np.stack([np.minimum.reduceat(xs, starts), np.minimum.reduceat(ys, starts),
                      np.maximum.reduceat(xs, starts), np.maximum.reduceat(ys, starts)], axis=1)
    boxes = boxes.astype(np.float64)
    usable = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[usable], int((~usable).sum())


def read_yolo_boxes(path, width, height, names):
    """YOLO label file -> (boxes x1 y1 x2 y2 in pixels, the class name of each, from names: the
    source's names by class id, or None when it names none and only class 0, apple, is known); a
    malformed line or an unnamed class raises naming file:line."""
    boxes, box_classes = [], []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise InputError(f"{path}:{number}: expected 'class cx cy w h' numbers, got {line!r}")
        if len(values) != 5 or not all(0.0 <= v <= 1.0 for v in values[1:]):
            raise InputError(f"{path}:{number}: expected 'class cx cy w h' with cx cy w h "
                                f"normalised to 0..1, got {line!r}")
        known = names or ["apple"]
        if values[0] != int(values[0]) or not 0 <= values[0] < len(known):
            raise InputError(f"{path}:{number}: class {fields[0]}: " + (
                f"the classes are 0..{len(known) - 1} ({name_list(known)})" if names else
                "the folder names no classes (data.yaml or classes.txt), so only class 0, apple, is known"))
        class_id, cx, cy, w, h = values
        boxes.append([(cx - w / 2) * width, (cy - h / 2) * height,
                      (cx + w / 2) * width, (cy + h / 2) * height])
        box_classes.append(known[int(class_id)])
    return np.array(boxes, dtype=np.float64).reshape(-1, 4), box_classes


def boxes_core_mask(shape, boxes):
    """Boolean (H, W) mask of the central ellipse of every box: the pixels most likely apple."""
    mask = np.zeros(shape, dtype=bool)
    for x1, y1, x2, y2 in boxes:
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        rx = max((x2 - x1) / 2 * BOX_CORE_FRACTION, 0.5)
        ry = max((y2 - y1) / 2 * BOX_CORE_FRACTION, 0.5)
        r0, r1 = max(int(cy - ry), 0), min(int(np.ceil(cy + ry)) + 1, shape[0])
        c0, c1 = max(int(cx - rx), 0), min(int(np.ceil(cx + rx)) + 1, shape[1])
        yy, xx = np.mgrid[r0:r1, c0:c1]
        mask[r0:r1, c0:c1] |= ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    return mask


def centre_crop_window(width, height, crop_size):
    """Left and top of a centred crop_size x crop_size window."""
    if crop_size > min(width, height):
        raise ValueError(f"crop size {crop_size} is larger than the {width}x{height} image")
    return (width - crop_size) // 2, (height - crop_size) // 2


def crop_resize_boxes(boxes, left, top, crop_size, resolution, min_visible, pixel_boxes=False):
    """Boxes in source pixels -> (the kept boxes in output pixels, which boxes were kept).

    Each box is shifted into the crop, clipped to it, and kept when the clipped area is at least
    min_visible of its full area; kept boxes are scaled by resolution / crop_size. pixel_boxes:
    x2/y2 are the last pixel's index (boxes from masks), so the crop ends at crop_size - 1, as
    for an apple whose last pixel is the crop's last; otherwise boxes are continuous."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    shifted = boxes - [left, top, left, top]
    clipped = np.clip(shifted, 0, crop_size - 1 if pixel_boxes else crop_size)
    full_area = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
    visible_area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = (full_area > 0) & (visible_area >= min_visible * full_area) & (visible_area > 0)
    return clipped[keep] * (resolution / crop_size), keep


def yolo_label_text(boxes, class_ids, width, height):
    """Boxes x1 y1 x2 y2 in pixels and their class ids -> YOLO label text (normalised centre and size)."""
    lines = []
    for (x1, y1, x2, y2), class_id in zip(boxes, class_ids):
        lines.append(f"{class_id} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                     f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}\n")
    return "".join(lines)


def red_fraction(image, apple_pixels):
    """Share of red among the red or green chromatic apple pixels (0..1; NaN with none)."""
    pixels = np.asarray(image)[apple_pixels].reshape(1, -1, 3)
    if pixels.shape[1] == 0:
        return float("nan")
    hsv = np.asarray(Image.fromarray(pixels).convert("HSV")).reshape(-1, 3).astype(np.float64)
    hue, saturation, value = hsv[:, 0] * 360 / 255, hsv[:, 1] / 255, hsv[:, 2] / 255
    chromatic = (saturation > MIN_SATURATION) & (value > MIN_VALUE)
    red = np.count_nonzero(chromatic & _in_ranges(hue, RED_HUES))
    green = np.count_nonzero(chromatic & _in_ranges(hue, GREEN_HUES))
    return red / (red + green) if red + green else float("nan")


def _in_ranges(hue, ranges):
    return np.logical_or.reduce([(hue >= lo) & (hue < hi) for lo, hi in ranges])


def colour_label(fraction, red_threshold):
    """'red', 'green', or 'none' when the photo has no coloured apple pixels."""
    if np.isnan(fraction):
        return "none"
    return "red" if fraction >= red_threshold else "green"


def diversity_embedding(image):
    """Small appearance vector of an RGB image: an 8x8 thumbnail plus 8-bin hue/sat/value histograms."""
    thumbnail = np.asarray(image.resize((8, 8), Image.BOX), dtype=np.float64).ravel() / 255
    hsv = np.asarray(image.resize((64, 64), Image.BOX).convert("HSV")).reshape(-1, 3)
    histograms = [np.bincount(hsv[:, c] // 32, minlength=8) / len(hsv) for c in range(3)]
    return np.concatenate([thumbnail, *histograms])


# ---------------------------------------------------------------------------------------------
# The val split and the instance photos
# ---------------------------------------------------------------------------------------------
def choose_val(stems, num_val, seed, split_by):
    """The stems that go to val. 'random': num_val photos; 'sequence': whole sequences, shuffled,
    until at least num_val photos (so val can be a little larger)."""
    stems = sorted(stems)
    if num_val >= len(stems):
        raise InputError(f"--num_val {num_val} leaves no training photos: only {len(stems)} "
                            f"train photos were found")
    rng = np.random.default_rng(seed)
    if split_by == "random":
        return {stems[i] for i in rng.permutation(len(stems))[:num_val]}
    groups = {}
    for stem in stems:
        groups.setdefault(sequence_of(stem), []).append(stem)
    val = set()
    for key in [sorted(groups)[i] for i in rng.permutation(len(groups))]:
        if len(val) >= num_val:
            break
        val.update(groups[key])
    if len(val) == len(stems):
        raise InputError(f"--split_by sequence: the {len(groups)} sequences cannot be split "
                            f"into train and val with --num_val {num_val}")
    return val


def sequence_of(stem):
    """The video sequence of a photo: its name without the trailing frame number
    ('20150919_174151_image12' -> '20150919_174151', 'DSC_1342_17kv39r15k_1' -> 'DSC_1342_17kv39r15k')."""
    return re.sub(r"[_-]?(image|frame|img)?\d+$", "", stem, flags=re.IGNORECASE) or stem


def farthest_point_sampling(features, count, seed):
    """Indices of `count` rows spread out in feature space (standardised Euclidean distance).

    The first pick is drawn with the seed; each next pick is the row farthest from all picks."""
    features = np.asarray(features, dtype=np.float64)
    count = min(count, len(features))
    if count == 0:
        return []
    scaled = (features - features.mean(0)) / (features.std(0) + 1e-9)
    picks = [int(np.random.default_rng(seed).integers(len(scaled)))]
    nearest = np.linalg.norm(scaled - scaled[picks[0]], axis=1)
    while len(picks) < count:
        nxt = int(np.argmax(nearest))
        picks.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(scaled - scaled[nxt], axis=1))
    return picks


# ---------------------------------------------------------------------------------------------
# Sources: the photos of each --source, as jobs
# ---------------------------------------------------------------------------------------------
def collect_jobs(args, out_dir):
    """(the jobs of --source (see collect_minneapple), the classes kept (select_classes)), checked
    before any work: unique name stems, and enough train photos for --num_val. Warns of a kept val
    split, a missing test split, and COCO categories that no annotation uses."""
    available, used = ["apple"], None
    if args.source == "synthetic":
        jobs = collect_minneapple(make_synthetic_source(out_dir, args))
    elif args.source == "minneapple":
        jobs = collect_minneapple(args.input, args.test_annotations)
    elif args.source == "coco":
        jobs, unlisted_warnings, (available, used) = collect_coco(args.input, args.annotations)
        for warning in unlisted_warnings:
            print(f"warning: {warning}", file=sys.stderr)
    else:
        jobs, names = collect_yolo(args.input)
        available = names or available
    classes = select_classes(available, used, args.classes, args.input or "the source")
    check_unique_stems(jobs)
    if any(job["split"] == "val" for job in jobs):
        if args.num_val is not None or args.split_by != "random":
            print(f"warning: {args.input} has its own val split, which is kept: --num_val and "
                  f"--split_by do not apply", file=sys.stderr)
    elif (args.num_val or 1) >= sum(job["split"] == "train" for job in jobs):
        raise InputError(f"--num_val {args.num_val or 1} leaves no training photos: only "
                         f"{sum(job['split'] == 'train' for job in jobs)} train photos were found")
    if not any(job["split"] == "test" for job in jobs):
        print(f"warning: {args.input or 'the source'} has no test photos: the test split is empty",
              file=sys.stderr)
    return jobs, classes


def select_classes(available, used, requested, where):
    """The classes kept, in order: --classes (requested, 'a,b'), each one of the available names;
    else every available class that the annotations use (used; None: all of them), with a warning
    naming the ones left out."""
    if requested:
        classes = [name.strip() for name in requested.split(",") if name.strip()]
        unknown = [name for name in classes if name not in available]
        if unknown or len(set(classes)) != len(classes) or not classes:
            raise InputError(f"--classes {requested!r}: give distinct names among {where}'s classes: "
                             f"{name_list(available, shown=20)}")
        return classes
    classes = [name for name in available if used is None or name in used]
    if len(classes) < len(available):
        print(f"warning: {where}: no annotation uses the categories {name_list([n for n in available if n not in classes])}"
              f", which are left out", file=sys.stderr)
    if not classes:
        raise InputError(f"{where}: no annotation uses any category: there are no boxes to learn from")
    return classes


def collect_minneapple(root, test_annotations=None):
    """Jobs for MinneApple's detection/ layout. A job: split, stem, image, and its labels as
    ('mask', path), ('yolo', path, names), ('coco', path, boxes, their class names, size, problem)
    (see read_coco), or None (an unlabelled test photo). --test_annotations images are matched by
    file name stem; their apples are the category apple_names finds."""
    root = Path(root)
    train_images = root / "train" / "images"
    if not train_images.is_dir():
        raise InputError(f"{root}: wrong layout: expected {train_images}/ with the photos "
                            f"(point --input at MinneApple's detection/ folder)")
    if not (root / "train" / "masks").is_dir():
        raise InputError(f"{root}: wrong layout: expected {root / 'train' / 'masks'}/ with one "
                            f"instance-id mask PNG per photo")
    if test_annotations and (root / "test" / "masks").is_dir():
        raise InputError(f"{root / 'test' / 'masks'} and --test_annotations both label the test "
                            f"photos: give one of them")
    coco = {}
    if test_annotations:
        labels, _, used = read_coco(test_annotations)
        rename = apple_names(used, test_annotations)
        coco = {Path(name).stem: (*label[:3], [rename.get(c, c) for c in label[3]], *label[4:])
                for name, label in labels.items()}
    jobs = []
    for split in ("train", "test"):
        folder = root / split / "images"
        if not folder.is_dir():
            continue
        masks = root / split / "masks"
        mask_files = {p.stem: p for p in list_images(masks)} if masks.is_dir() else {}
        for image in list_images(folder):
            if split == "train" or masks.is_dir():
                labels = ("mask", mask_files.get(image.stem, masks / f"{image.stem}.png"))
            elif image.stem in coco:
                labels = coco[image.stem]
            else:
                labels = None
            jobs.append({"split": split, "stem": image.stem, "image": str(image), "labels": labels})
    if not any(job["split"] == "train" for job in jobs):
        raise InputError(f"{train_images}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    if coco and not any(job["labels"] and job["labels"][0] == "coco" for job in jobs):
        raise InputError(f"{test_annotations}: none of its {len(coco)} images is in "
                            f"{root / 'test' / 'images'} (matched by file name stem)")
    return jobs


def collect_yolo(root):
    """(jobs, class names (yolo_class_names)) for images/ + labels/ (all train) or
    {train,val,test}/{images,labels}. A missing label file is an error in train and val, and an
    unlabelled photo in test."""
    root = Path(root)
    if (root / "images").is_dir():
        layout = {"train": root}
    else:
        layout = {split: root / split for split in SPLITS if (root / split / "images").is_dir()}
    if "train" not in layout:
        raise InputError(f"{root}: wrong layout: expected images/ + labels/, or "
                            f"train/images/ + train/labels/ (and optionally val/ and test/)")
    names = yolo_class_names(root)
    jobs = []
    for split, folder in layout.items():
        for image in list_images(folder / "images"):
            label = folder / "labels" / f"{image.stem}.txt"
            labels = ("yolo", label, names) if split != "test" or label.exists() else None
            jobs.append({"split": split, "stem": image.stem, "image": str(image), "labels": labels})
    if not any(job["split"] == "train" for job in jobs):
        raise InputError(f"{layout['train'] / 'images'}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    return jobs, names


def yolo_class_names(root):
    """The class names of a YOLO folder by id: data.yaml's `names` (a list, or {id: name} with ids
    0..K-1), else classes.txt's lines (Label Studio's YOLO export); None when it has neither."""
    root = Path(root)
    if (root / "data.yaml").is_file():
        try:
            names = yaml.safe_load(read_text(root / "data.yaml"))["names"]
        except (yaml.YAMLError, TypeError, KeyError) as error:
            raise InputError(f"{root / 'data.yaml'}: expected a data YAML with names, a list or "
                             f"{{id: name}} ({error!r})")
        if isinstance(names, dict):
            if sorted(names) != list(range(len(names))):
                raise InputError(f"{root / 'data.yaml'}: names' ids must be 0..{len(names) - 1}, got "
                                 f"{name_list([str(k) for k in names])}")
            names = [names[k] for k in range(len(names))]
        if not isinstance(names, list) or not names:
            raise InputError(f"{root / 'data.yaml'}: names must be a list or {{id: name}}, got {names!r}")
        return [str(name) for name in names]
    if (root / "classes.txt").is_file():
        names = [line.strip() for line in read_text(root / "classes.txt").splitlines() if line.strip()]
        if not names:
            raise InputError(f"{root / 'classes.txt'}: names no class")
        return names
    return None


def collect_coco(root, annotations=None):
    """(jobs for photos labelled by COCO JSON, warnings, (the category names in the order first
    listed, the names annotations use)): the photos in root labelled by `annotations` (all
    train), or root/{train,val,test}/ (see coco_split_folders).

    Photos are matched with the JSON's images by base name. A photo the JSON lists but its folder
    lacks is an error; a photo in the folder that the JSON does not list is left out with a warning
    (the JSON says which photos were labelled: listed without annotations = no apples)."""
    if annotations:
        if not Path(root).is_dir():
            raise InputError(f"{root}: not a folder: --input is the folder of the photos that "
                                f"--annotations {annotations} labels")
        layout = {"train": (Path(root), Path(annotations))}
    else:
        layout = coco_split_folders(root)
    jobs, warnings, available, used = [], [], [], set()
    for split, (folder, json_file) in layout.items():
        labels, names, used_names = read_coco(json_file)
        available += [name for name in names if name not in available]
        used |= used_names
        photos = list_images(folder)
        missing = sorted(set(labels) - {photo.name for photo in photos})
        if missing:
            raise InputError(f"{json_file}: {len(missing)} of its images are not photos in {folder} "
                                f"({', '.join(IMAGE_EXTENSIONS)}; matched by base name): {name_list(missing)}")
        unlisted = [photo.name for photo in photos if photo.name not in labels]
        if unlisted:
            warnings.append(f"{len(unlisted)} photos in {folder} are not in {json_file} and are left out "
                            f"(list them there without annotations for photos with no apples): "
                            f"{name_list(unlisted)}")
        jobs += [{"split": split, "stem": photo.stem, "image": str(photo), "labels": labels[photo.name]}
                 for photo in photos if photo.name in labels]
    if not any(job["split"] == "train" for job in jobs):
        raise InputError(f"{layout['train'][1]}: lists no images")
    return jobs, warnings, (available, used)


def coco_split_folders(root):
    """{split: (folder, its COCO JSON)} of root/{train,val,test}/ (val may be Roboflow's valid/),
    each holding its photos and exactly one *.json; train is required."""
    root = Path(root)
    layout = {}
    for split, names in SPLIT_FOLDERS.items():
        folders = [root / name for name in names if (root / name).is_dir()]
        if len(folders) > 1:
            raise InputError(f"{root}: both {folders[0].name}/ and {folders[1].name}/ hold val photos: keep one")
        if folders:
            json_files = sorted(folders[0].glob("*.json"))
            if len(json_files) != 1:
                found = f"{len(json_files)}: {name_list([f.name for f in json_files])}" if json_files else "none"
                raise InputError(f"{folders[0]}: expected exactly one COCO *.json beside the photos, found {found}")
            layout[split] = (folders[0], json_files[0])
    if "train" not in layout:
        raise InputError(f"{root}: wrong layout: expected --annotations FILE.json with the photos in "
                            f"{root}, or train/ (and optionally val/ or valid/, and test/) each holding its "
                            f"photos and one COCO *.json")
    return layout


def read_coco(path):
    """COCO detection JSON -> ({image base name: ('coco', path, boxes x1 y1 x2 y2, their category
    names, (width, height) or None, problem)}, the labels of a job; the category names in the
    JSON's order; the names that annotations use).

    An image without annotations has no boxes. problem is None, or why the image's annotations
    cannot be used (see coco_image_boxes): it is raised when the photo is prepared, so that
    --skip_bad can skip that photo alone. A file that is not a COCO JSON, or two images with one
    base name, raise here."""
    try:
        data = json.loads(read_text(path))
        ids = [image["id"] for image in data["images"]]
        base_names = [coco_base_name(image["file_name"]) for image in data["images"]]
        annotations = {image_id: [] for image_id in ids}
        for annotation in data.get("annotations", []):
            if annotation["image_id"] not in annotations:
                raise InputError(f"{path}: annotation {annotation.get('id', '?')} refers to image_id "
                                    f"{annotation['image_id']}, which 'images' does not list")
            annotations[annotation["image_id"]].append(annotation)
        categories = {category["id"]: str(category["name"]).strip() for category in data.get("categories", [])}
        used = {categories[a["category_id"]] for a in data.get("annotations", []) if a["category_id"] in categories}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise InputError(f"{path}: expected a COCO JSON with 'images' (id, file_name, width, height), "
                            f"'annotations' (image_id, category_id, bbox) and 'categories' (id, name): "
                            f"{error!r}")
    repeated = [str(value) for counts in (Counter(ids), Counter(base_names)) for value, count in counts.items()
                if count > 1]
    if repeated:
        raise InputError(f"{path}: images listed more than once (the same id, or the same file name's base "
                            f"name, by which photos are matched): {name_list(repeated)}")
    labels = {}
    for image_id, image, base_name in zip(ids, data["images"], base_names):
        size = (image["width"], image["height"]) if image.get("width") and image.get("height") else None
        try:
            boxes, names = coco_image_boxes(annotations[image_id], categories, f"{path}: image {image['file_name']}")
            problem = None
        except InputError as error:
            boxes, names, problem = np.zeros((0, 4)), [], str(error)
        labels[base_name] = ("coco", str(path), boxes, names, size, problem)
    return labels, list(dict.fromkeys(categories.values())), used


def apple_names(used, path):
    """{category name: 'apple'} for MinneApple's test annotations: the category named 'apple' (any
    case), else the only one the annotations use. Several used, none named 'apple', raises."""
    named = [name for name in used if name.lower() == "apple"]
    if len(named) > 1:
        raise InputError(f"{path}: categories {', '.join(sorted(named))} are all apple: keep one")
    if not named and len(used) > 1:
        raise InputError(f"{path}: the annotations use {len(used)} categories, {', '.join(sorted(used))}, and "
                         f"none is named 'apple': MinneApple's test boxes are apples; keep the apples only, or "
                         f"name their category 'apple'")
    return {(named or list(used) or ["apple"])[0]: "apple"}


def coco_image_boxes(annotations, categories, where):
    """One image's COCO annotations -> (boxes x1 y1 x2 y2 in pixels, their category names). A
    category that 'categories' does not list, or a bbox that is not [x, y, width, height] with
    width and height >= 0, raises naming `where` (the file and the image) and the annotation."""
    boxes, names = [], []
    for annotation in annotations:
        which = f"{where}: annotation {annotation.get('id', '?')}"
        if annotation["category_id"] not in categories:
            raise InputError(f"{which}: category_id {annotation['category_id']!r} is not in 'categories'")
        names.append(categories[annotation["category_id"]])
        bbox = annotation.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, (int, float)) and np.isfinite(v) for v in bbox)
                and bbox[2] >= 0 and bbox[3] >= 0):
            raise InputError(f"{which}: expected bbox [x, y, width, height] in pixels with width and "
                                f"height >= 0, got {bbox!r}")
        x, y, w, h = bbox
        boxes.append([x, y, x + w, y + h])
    return np.array(boxes, dtype=np.float64).reshape(-1, 4), names


def coco_base_name(file_name):
    """An image's file_name in a COCO JSON -> its base name ('images/train/x.jpg', 'x.jpg' and
    'C:\\data\\x.jpg' -> 'x.jpg'), by which it is matched with the photos in a folder."""
    return PureWindowsPath(str(file_name)).name


def check_unique_stems(jobs):
    seen = {}
    for job in jobs:
        if job["stem"] in seen:
            raise InputError(f"{job['image']}: another photo has the same name stem "
                                f"({seen[job['stem']]}); output files are named by stem")
        seen[job["stem"]] = job["image"]


def input_fingerprint(jobs):
    """Hash of every input file's path, size and modification time: photos, masks, label files
    and COCO JSON files."""
    digest = hashlib.sha256()
    paths = {job["image"] for job in jobs} | {str(job["labels"][1]) for job in jobs if job["labels"]}
    for path in sorted(paths):
        try:
            stat = os.stat(path)
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}|missing\n".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# The synthetic source
# ---------------------------------------------------------------------------------------------
def make_synthetic_source(out_dir, args):
    """OUT/synthetic_source/detection/ (write_synthetic_source), kept when made_with.json says it was
    made with the same --num_images, --seed, --apple_scale and --bare_share. -> that folder."""
    marker = {"num_images": args.num_images, "seed": args.seed, "apple_scale": args.apple_scale,
              "bare_share": args.bare_share}
    marker_file = out_dir / "synthetic_source" / "made_with.json"
    if not (marker_file.exists() and json.loads(marker_file.read_text()) == marker):
        staging = out_dir / ".synthetic_tmp"
        shutil.rmtree(staging, ignore_errors=True)
        write_synthetic_source(staging / "detection", args.num_images, args.seed, args.apple_scale,
                               args.bare_share)
        (staging / "made_with.json").write_text(json.dumps(marker))
        shutil.rmtree(out_dir / "synthetic_source", ignore_errors=True)
        os.replace(staging, out_dir / "synthetic_source")
    return out_dir / "synthetic_source" / "detection"


def write_synthetic_source(folder, num_images, seed, apple_scale=1.0, bare_share=0.0):
    """MinneApple-layout folder {train,test}/{images,masks}/*.png."""
    rng = np.random.default_rng(seed)
    num_test = max(1, round(num_images * SYNTHETIC_TEST_SHARE)) if num_images > 1 else 0
    for index in tqdm(range(num_images), desc="synthetic photos", unit="photo"):
        split = "test" if index >= num_images - num_test else "train"
        colour = synthetic_colour(index, bare_share)
        image, mask = draw_synthetic_photo(rng, colour, apple_scale=apple_scale)
        stem = f"synthetic_{colour}_{index:04d}"
        for kind, array in (("images", image), ("masks", mask)):
            out = Path(folder, split, kind)
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(out / f"{stem}.png")


def synthetic_colour(index, bare_share):
    """The apples of synthetic photo number index: bare_share of the photos, evenly spread, have
    none ('none'); of the others, one in three is green, the rest red."""
    if int((index + 1) * bare_share) > int(index * bare_share):
        return "none"
    return "green" if index % 3 == 0 else "red"


def draw_synthetic_photo(rng, colour, width=SYNTHETIC_SIZE[0], height=SYNTHETIC_SIZE[1], apple_scale=1.0):
    """A procedural tree photo -> (RGB uint8 image, uint8 instance-id mask); colour 'green', 'red',
    or 'none' for a tree without apples.

    Like MinneApple masks: apples touch, overlap (later ones occlude earlier ones), are cut by the
    image border, are split into two pieces by a branch, and ids have gaps. apple_scale multiplies
    the apples' radius (14-30 px) and divides their number (18-35) by its square root, so larger
    apples still leave leaves between them."""
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    sky = np.array([150, 185, 225], np.float32) * (1 - 0.3 * yy[..., None] / height)
    image = sky + rng.normal(0, 4, (height, width, 1)).astype(np.float32)
    ground = yy > height * rng.uniform(0.8, 0.9)
    image[ground] = np.array([95, 80, 55], np.float32) + rng.normal(0, 12, (ground.sum(), 1))
    image[(np.abs(xx - width / 2) < width * 0.05) & (yy > height * 0.55)] = (80, 60, 40)
    canopy = (((xx - width / 2) / (width * 0.62)) ** 2 + ((yy - height * 0.45) / (height * 0.42)) ** 2) < 1
    leaf_noise = rng.normal(0, 1, (height // 8 + 1, width // 8 + 1))
    leaf_shade = np.kron(leaf_noise, np.ones((8, 8)))[:height, :width, None]
    leaves = np.array([50, 105, 35], np.float32) + leaf_shade * np.array([12, 22, 8])
    image = np.where(canopy[..., None], leaves, image)
    if colour == "none":
        return np.clip(image, 0, 255).astype(np.uint8), np.zeros((height, width), np.uint8)

    base = np.array([175, 28, 32] if colour == "red" else [150, 192, 70], np.float32)
    count = max(1, round(int(rng.integers(18, 36)) / np.sqrt(apple_scale)))
    ids = np.sort(rng.choice(np.arange(1, 250), size=count, replace=False))
    mask = np.zeros((height, width), np.uint8)
    centres = []
    for k, apple_id in enumerate(ids):
        radius = rng.uniform(14, 30) * apple_scale
        if k % 6 == 1 and centres:  # touching the previous apple
            angle = rng.uniform(0, 2 * np.pi)
            px, py, pr = centres[-1]
            cx, cy = px + (pr + radius) * np.cos(angle), py + (pr + radius) * np.sin(angle)
        elif k % 9 == 2:  # cut by the left or right image border
            cx, cy = rng.choice([rng.uniform(-radius / 2, 0), width + rng.uniform(0, radius / 2)]), rng.uniform(0.15, 0.8) * height
        else:
            cx, cy = rng.uniform(0.05, 0.95) * width, rng.uniform(0.15, 0.85) * height
        centres.append((cx, cy, radius))
        window = (slice(max(int(cy - radius), 0), max(int(cy + radius) + 2, 0)),
                  slice(max(int(cx - radius), 0), max(int(cx + radius) + 2, 0)))
        wy, wx = yy[window], xx[window]
        disc = np.hypot(wx - cx, wy - cy) < radius
        shade = np.clip(1.15 - 0.45 * np.hypot(wx - cx + radius / 3, wy - cy + radius / 3) / radius, 0.55, 1.2)
        patch = image[window]
        patch[disc] = (base * shade[..., None])[disc] + rng.normal(0, 5, (disc.sum(), 3))
        mask[window][disc] = apple_id
    for cx, cy, radius in centres[::7]:  # a branch across every 7th apple splits it in two
        window = (slice(max(int(cy - radius), 0), max(int(cy + radius) + 2, 0)),
                  slice(max(int(cx - 1.6 * radius), 0), max(int(cx + 1.6 * radius) + 2, 0)))
        branch = np.abs(yy[window] - cy - (xx[window] - cx) * 0.3) < 2.5
        image[window][branch] = (70, 50, 35)
        mask[window][branch] = 0
    return np.clip(image, 0, 255).astype(np.uint8), mask


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def list_images(folder):
    """The images in a folder (by extension), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def name_list(names, shown=5):
    """'a, b, c' for at most `shown` names, then how many more."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def read_text(path):
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: unreadable text file ({error})")


def open_image(path):
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except Exception as error:  # PIL and its plugins raise many kinds
        raise InputError(f"{path}: unreadable image file ({error!r})")


def rgb_image(image, path):
    """A PIL image -> an 8-bit RGB one. 16-bit grey (mode I;16 or I) is scaled to 8 bits: PIL's
    convert("RGB") would clip every value above 255 to white."""
    if image.mode.startswith("I;16") or image.mode == "I":  # Pillow reads 16-bit grey as I;16 or I
        values = np.asarray(image, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise InputError(f"{path}: mode {image.mode} with values outside 0..65535: save it as an 8- or 16-bit image")
        return Image.fromarray(np.round(values / 257).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        raise InputError(f"{path}: a floating-point image (mode F) has no fixed range: save it as an 8- or "
                         f"16-bit image")
    return image.convert("RGB")


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


EXAMPLES = """examples:
  python prepare_data.py --source minneapple --input detection --output_dir OUT
  python prepare_data.py --source yolo --input DIR --output_dir OUT
  python prepare_data.py --source coco --input PHOTOS --annotations PHOTOS.json --output_dir OUT
  python prepare_data.py --source coco --input ROBOFLOW_EXPORT --output_dir OUT
  python prepare_data.py --source synthetic --num_images 48 --output_dir OUT"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Turn raw orchard photos into YOLO datasets, DreamBooth instance photos and\n"
                    "the few-shot control's data YAML.",
        epilog=EXAMPLES, formatter_class=HelpFormatter)
    parser.add_argument("--source", choices=["minneapple", "yolo", "coco", "synthetic"], required=True,
                        help="minneapple: detection/ folder with instance masks; yolo: images + "
                             "YOLO labels; coco: images + COCO detection JSON; synthetic: procedural "
                             "photos, no download")
    parser.add_argument("--input", help="the source folder (not for --source synthetic); for coco without "
                                        "--annotations: DIR/{train,val,test}/ (val/ or Roboflow's valid/; "
                                        "val and test optional), each holding its photos and one COCO *.json")
    parser.add_argument("--output_dir", required=True,
                        help="where real/, instances/, fewshot.yaml and the rest go")
    parser.add_argument("--annotations", help="--source coco: the COCO JSON labelling the photos in --input, "
                        "all train (val is chosen with --num_val)")
    parser.add_argument("--test_annotations", help="COCO JSON with the MinneApple test boxes "
                        "(when test/masks/ is absent)")
    parser.add_argument("--classes", help="comma-separated class names to keep, in this order, e.g. "
                        "green_apple,red_apple; the others' boxes are dropped and counted (default: every "
                        "class: YOLO's data.yaml or classes.txt names, COCO's categories in use, MinneApple's apple)")
    parser.add_argument("--num_images", type=int,
                        help="synthetic photos in all, default 48 (a third become test, as "
                             "MinneApple's 331/1001); only for --source synthetic")
    parser.add_argument("--apple_scale", type=float, default=1.0,
                        help="synthetic apples this many times larger (and fewer), e.g. 4 so that they "
                             "stay detectable at a small --resolution; only for --source synthetic")
    parser.add_argument("--bare_share", type=float, default=0.0,
                        help="share of synthetic trees without apples; only for --source synthetic")
    parser.add_argument("--crop_size", type=int, default=None,
                        help="side of the centre crop in source pixels (default: the photo's "
                             "shorter side, 720 for MinneApple)")
    parser.add_argument("--resolution", type=int, default=768, help="side of the output images")
    parser.add_argument("--min_visible", type=float, default=0.5,
                        help="drop a box that keeps less than this share of its area in the crop")
    parser.add_argument("--num_val", type=int, default=None,
                        help="train photos moved to val (default: 20%%, 134 of MinneApple's 670); "
                             "a source with its own val/ keeps it")
    parser.add_argument("--split_by", choices=["random", "sequence"], default="random",
                        help="sequence keeps the frames of one video sequence in one split")
    parser.add_argument("--num_instances", type=int, default=10,
                        help="instance photos picked per group for DreamBooth")
    parser.add_argument("--group_by", default="colour",
                        help="the DreamBooth groups, one instances/<group>/ each: colour (green and red apples, "
                             "the paper's), class (each photo's most frequent class), none (one group, all), or "
                             "a CSV with columns file,group (a photo's file name and its group)")
    parser.add_argument("--red_threshold", type=float, default=0.4,
                        help="a photo is red when at least this share of its red-or-green apple "
                             "pixels is red")
    parser.add_argument("--image_format", choices=["png", "jpg"], default="png",
                        help="format of the written images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, instance pick "
                        "and synthetic photos")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes that prepare photos in parallel")
    parser.add_argument("--skip_bad", action="store_true",
                        help="skip unreadable or inconsistent photos and list them, instead of stopping")
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    return args


def check_arguments(parser, args):
    """parser.error (exit 2, with the usage) for flags that do not go together or are out of range;
    fills in --num_images' default for --source synthetic."""
    if args.source == "synthetic":
        if args.input:
            parser.error("--source synthetic makes its own photos: drop --input")
        args.num_images = 48 if args.num_images is None else args.num_images
        if args.num_images < 2:
            parser.error("--num_images must be at least 2 (train and test)")
        if not 0.1 <= args.apple_scale <= 10:
            parser.error("--apple_scale must be between 0.1 and 10")
        if not 0 <= args.bare_share < 1:
            parser.error("--bare_share must be at least 0 and below 1")
    else:
        if not args.input:
            parser.error(f"--source {args.source} needs --input DIR")
        if args.num_images is not None or args.apple_scale != 1.0 or args.bare_share:
            parser.error("--num_images, --apple_scale and --bare_share are for --source synthetic")
    if args.test_annotations and args.source != "minneapple":
        parser.error("--test_annotations is for --source minneapple")
    if args.annotations and args.source != "coco":
        parser.error("--annotations is for --source coco")
    if not 0 <= args.min_visible <= 1 or not 0 <= args.red_threshold <= 1:
        parser.error("--min_visible and --red_threshold must be between 0 and 1")
    if args.resolution < 8 or (args.crop_size is not None and args.crop_size < 1):
        parser.error("--resolution must be at least 8 and --crop_size positive")
    if (args.num_val is not None and args.num_val < 1) or args.num_instances < 0 or args.workers < 1:
        parser.error("--num_val and --workers must be at least 1, --num_instances at least 0")


def main(argv=None):
    args = parse_args(argv)
    out_dir = Path(args.output_dir).resolve()
    try:
        check_output_folder(out_dir, "--output_dir", inputs=[args.input] if args.input else [],
                            written=("real", "instances", "synthetic_source", ".prepare_tmp"))
        jobs, classes = collect_jobs(args, out_dir)
        config = {key: value for key, value in vars(args).items() if key not in ("workers",)}
        group_file = read_group_file(args.group_by, jobs) if args.group_by not in GROUP_RULES else None
        config.update(classes=classes, input=str(Path(args.input).resolve()) if args.input else None,
                      output_dir=str(out_dir), input_fingerprint=input_fingerprint(jobs),
                      group_file=group_file)
        if up_to_date(out_dir, config):
            print(f"{out_dir} is up to date (same arguments, same input files): nothing to do")
            return 0
        stats = prepare(jobs, config, out_dir, args.workers, group_file)
    except InputError as error:
        shutil.rmtree(out_dir / ".prepare_tmp", ignore_errors=True)
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary(stats))
    print(f"wrote {out_dir}/real/, real.yaml, instances/, fewshot.txt, fewshot.yaml, manifest.csv, stats.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
