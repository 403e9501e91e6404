#!/usr/bin/env python3
"""evaluate.py: COCO box AP of YOLO-format predictions, and the paper's Table 1 from many runs.

  score  In:  --gt DIR (images/ + labels/, YOLO txt) and --pred DIR (one YOLO txt per image with
              a 6th column, the confidence; a missing file means no detections on that image).
         Out: AP@0.5:0.95, AP50, AP75, AP small/medium/large and AR, all at --max_dets detections
              per image, printed and as JSON (--out); --export_coco DIR writes gt.json and
              predictions.json.
              AP is pycocotools' COCOeval, the scorer MinneApple's official evaluation uses; every
              figure is read from its accumulated arrays at --max_dets, as faster-coco-eval does
              (COCOeval.summarize takes AP@0.5:0.95 at 100 whatever the limit). Zero-size and
              duplicate ground-truth boxes are warned of (stderr) and count as COCOeval counts them.
  collect In: --runs DIR (train_detectors.py's project: DIR/<dataset>/<model>/seed<k>/test_predictions/)
              and --gt DIR (the real test split).
         Out: --out CSV, one row per run: dataset, model, seed, ap, ap50, ap75 (what table reads).
  table  In:  --results CSV, one row per trained detector: dataset, model, seed, ap, ap50, ap75.
         Out: table1.csv, table1.md, table1.png in --out_dir: mean and sample std over seeds, the
              gap of every dataset to --baseline, and the paper's Table 1 beside ours.
Outputs are checked before the work (an --out that is a folder, or lies where no file can be
created, is refused) and written through a temp file that never stays behind.
"""
import argparse
import contextlib
import csv
import io
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
METRICS = ("ap", "ap50", "ap75")
METRIC_TITLES = {"ap": "AP@0.5:0.95", "ap50": "AP@0.5", "ap75": "AP@0.75"}
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


class EvaluationInputError(Exception):
    """Input that cannot be scored; the message names the file (and line) at fault."""


# ---------------------------------------------------------------------------------------------
# score
# ---------------------------------------------------------------------------------------------
def read_yolo_rows(path, with_confidence):
    """YOLO txt -> {line number: [class, cx, cy, w, h(, conf)]}; any malformed line raises naming file:line."""
    columns = 6 if with_confidence else 5
    expected = "class cx cy w h" + (" conf" if with_confidence else "")
    rows = {}
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise EvaluationInputError(f"{path}: unreadable text file ({error})")
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise EvaluationInputError(f"{path}:{number}: expected '{expected}' numbers, got {line!r}")
        if len(values) != columns:
            raise EvaluationInputError(f"{path}:{number}: expected {columns} columns ({expected}), "
                                       f"got {len(values)}: {line!r}")
        if values[0] != 0:
            raise EvaluationInputError(f"{path}:{number}: class {fields[0]}: one class is scored, 0 = apple")
        if not all(0.0 <= v <= 1.0 for v in values[1:]):
            raise EvaluationInputError(f"{path}:{number}: values out of range: cx cy w h"
                                       f"{' conf' if with_confidence else ''} must lie in 0..1, got {line!r}")
        rows[number] = values
    return rows


def to_coco_bbox(row, width, height):
    """YOLO (class, cx, cy, w, h, ...) normalised -> COCO [x, y, w, h] in pixels."""
    # (YOLO boxes are continuous: x = (cx - w/2) * width, no half-pixel shift.)
    _, cx, cy, w, h = row[:5]
    return [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]


def suspect_gt_lines(rows, width, height):
    """{line number: row} of one label file -> (lines of zero-size boxes (w or h <= 0 px),
    {line of a duplicate (same class and box as an earlier line): line of its first copy})."""
    zero_size, duplicates, first_copy = [], {}, {}
    for number, row in rows.items():
        _, _, w, h = to_coco_bbox(row, width, height)
        if w <= 0 or h <= 0:
            zero_size.append(number)
        elif tuple(row) in first_copy:
            duplicates[number] = first_copy[tuple(row)]
        else:
            first_copy[tuple(row)] = number
    return zero_size, duplicates


def listed(items, shown=5):
    """'a, b, c' of the first `shown` items, '... and N more' beyond."""
    items = [str(item) for item in items]
    rest = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + rest


def gt_box_warning(path, zero_size, duplicates):
    """One warning line on a label file's zero-size and duplicate boxes (suspect_gt_lines), or None."""
    problems = []
    if zero_size:
        problems.append(f"zero-size boxes (w or h is 0 px) on lines {listed(zero_size)}")
    if duplicates:
        problems.append("duplicate boxes on lines "
                        + listed(f"{line} (= line {first})" for line, first in duplicates.items()))
    return f"warning: {path}: {'; '.join(problems)}" if problems else None


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


def read_ground_truth(gt_dir):
    """The YOLO split in gt_dir (images/ and labels/) as a COCO dict {images, annotations, categories};
    zero-size and duplicate boxes are warned of on stderr and kept.

    Image ids follow the sorted file names from 1; annotation ids start at 1 (COCOeval takes id 0
    for 'unmatched', so a ground-truth box with id 0 could never count as found). One category,
    apple (YOLO class 0): any other class is an error."""
    gt_dir = Path(gt_dir)
    images_dir, labels_dir = gt_dir / "images", gt_dir / "labels"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise EvaluationInputError(f"{folder}: no such folder (--gt needs images/ and labels/)")
    image_paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not image_paths:
        raise EvaluationInputError(f"{images_dir}: no images")
    stems = {}
    for path in image_paths:
        if path.stem in stems:
            raise EvaluationInputError(f"{path}: two images share the stem {path.stem!r}")
        stems[path.stem] = path
    unlabelled = [p.name for p in image_paths if not (labels_dir / f"{p.stem}.txt").exists()]
    if unlabelled:
        raise EvaluationInputError(
            f"{labels_dir}: {len(unlabelled)} images have no label file, so they cannot be scored "
            f"(unlabelled test photos? give prepare_data.py the test masks or --test_annotations): "
            f"{', '.join(unlabelled[:10])}{' ...' if len(unlabelled) > 10 else ''}")

    images, annotations, box_warnings = [], [], []
    for image_id, (stem, path) in enumerate(sorted(stems.items()), start=1):
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Exception as error:  # PIL and its plugins raise many kinds
            raise EvaluationInputError(f"{path}: unreadable image ({error!r})")
        images.append({"id": image_id, "file_name": path.name, "width": width, "height": height})
        label_path = labels_dir / f"{stem}.txt"
        rows = read_yolo_rows(label_path, with_confidence=False)
        for row in rows.values():
            box = to_coco_bbox(row, width, height)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
        warning = gt_box_warning(label_path, *suspect_gt_lines(rows, width, height))
        if warning:
            box_warnings.append(warning)
    if not annotations:
        raise EvaluationInputError(f"{labels_dir}: no ground-truth boxes at all: AP is undefined")
    warn_gt_boxes(box_warnings)
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "apple"}]}


def read_predictions(pred_dir, gt):
    """pred_dir's YOLO txt files with a confidence column, one per image of gt (read_ground_truth),
    named by its stem (a missing file means no detections) -> COCO detections."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise EvaluationInputError(f"{pred_dir}: no such folder (--pred needs one YOLO txt per image)")
    images = {Path(image["file_name"]).stem: image for image in gt["images"]}
    orphans = sorted(p.name for p in pred_dir.glob("*.txt") if p.stem not in images)
    if orphans:
        raise EvaluationInputError(f"{pred_dir}: prediction files for images that are not in the "
                                   f"ground truth: {', '.join(orphans[:10])}")
    detections = []
    for stem, image in images.items():
        pred_file = pred_dir / f"{stem}.txt"
        if pred_file.exists():
            for row in read_yolo_rows(pred_file, with_confidence=True).values():
                detections.append({"image_id": image["id"], "category_id": 1, "score": row[5],
                                   "bbox": to_coco_bbox(row, image["width"], image["height"])})
    return detections


def _quiet_coco(dataset):
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_figure(evaluator, array, iou, area, max_dets):
    """One summary figure of an accumulated COCOeval at a limit in its params.maxDets, taken as
    COCOeval.summarize takes it: the mean of the defined (> -1) values of eval[array] (precision
    [T,R,K,A,M] or recall [T,K,A,M]) at IoU threshold iou (None: all) in area range `area`, over all
    categories; None when no value is defined (no ground truth of that size)."""
    params = evaluator.params
    values = evaluator.eval[array][..., params.areaRngLbl.index(area), params.maxDets.index(max_dets)]
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
    coco_gt = _quiet_coco(gt)
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
    return metrics, summary


def score(gt_dir, pred_dir, max_dets=100, export_coco=None, echo=False):
    """COCO box metrics of the predictions in pred_dir against the YOLO dataset in gt_dir.
    export_coco: a folder for gt.json and predictions.json; echo: print the COCOeval-style summary."""
    gt = read_ground_truth(gt_dir)
    detections = read_predictions(pred_dir, gt)
    metrics, summary = cocoeval_metrics(gt, detections, max_dets)
    if echo:
        print(summary, end="")
    if export_coco:
        folder = Path(export_coco)
        write_atomic(folder / "gt.json", json.dumps(gt))
        write_atomic(folder / "predictions.json", json.dumps(detections))
    return metrics


def output_problem(path, folder=False):
    """Why no output file (folder=True: folder of output files) can be made at path, or None: what
    is there already, and whether the nearest existing folder at or above takes a new file."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        return "is a folder, not a file" if path.is_dir() else "is a file, not a folder"
    start = path if folder else path.parent
    existing = next(p for p in (start, *start.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        return f"cannot create files in {existing} ({error.strerror or error})"
    return None


def check_output(flag, path, folder=False):
    """Raise EvaluationInputError 'FLAG PATH: problem' when output_problem finds one."""
    problem = output_problem(path, folder)
    if problem:
        raise EvaluationInputError(f"{flag} {path}: {problem}")


@contextlib.contextmanager
def output_errors_named(flag, path):
    """An OSError while writing an output becomes EvaluationInputError 'FLAG PATH: cannot write (...)'."""
    try:
        yield
    except OSError as error:
        raise EvaluationInputError(f"{flag} {path}: cannot write ({error.strerror or error})") from error


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


def collect(runs_dir, gt_dir, max_dets=100):
    """Score every DIR/<dataset>/<model>/seed<k>/test_predictions/ -> result rows (the ground truth
    is read, and warned about, once)."""
    folders = sorted(Path(runs_dir).glob("*/*/seed*/test_predictions"))
    if not folders:
        raise EvaluationInputError(f"{runs_dir}: no <dataset>/<model>/seed<k>/test_predictions/ folders")
    gt = read_ground_truth(gt_dir)
    rows = []
    for folder in folders:
        metrics, _ = cocoeval_metrics(gt, read_predictions(folder, gt), max_dets)
        run = folder.parent
        rows.append({"dataset": run.parent.parent.name, "model": run.parent.name, "seed": run.name[len("seed"):],
                     **{m: metrics[m] for m in METRICS}})
    return rows


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
    """Results CSV -> list of dicts with dataset, model, seed and float ap, ap50, ap75."""
    required = ("dataset", "model", "seed", *METRICS)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = {name.strip().lower(): name for name in reader.fieldnames or []}
            missing = [name for name in required if name not in header]
            if missing:
                raise EvaluationInputError(f"{path}: missing columns {', '.join(missing)} "
                                           f"(needs {', '.join(required)})")
            rows, seen = [], set()
            for number, raw in enumerate(reader, start=2):
                row = {name: (raw[header[name]] or "").strip() for name in required}
                for name in required:
                    if not row[name]:
                        raise EvaluationInputError(f"{path}:{number}: the {name} column is empty")
                for metric in METRICS:
                    try:
                        row[metric] = float(row[metric])
                    except ValueError:
                        row[metric] = math.nan
                    if not 0 <= row[metric] <= 1:
                        raise EvaluationInputError(f"{path}:{number}: {metric} must be a number in 0..1, "
                                                   f"got {raw[header[metric]]!r}")
                key = (row["dataset"], row["model"], row["seed"])
                if key in seen:
                    raise EvaluationInputError(f"{path}:{number}: a second row for dataset {key[0]}, "
                                               f"model {key[1]}, seed {key[2]}")
                seen.add(key)
                rows.append(row)
    except (OSError, UnicodeDecodeError) as error:
        raise EvaluationInputError(f"{path}: cannot read ({error})")
    if not rows:
        raise EvaluationInputError(f"{path}: no result rows")
    return rows


def summarise(rows, baseline="baseline"):
    """One entry per (dataset, model) in order of first appearance: n, mean and sample std (ddof=1,
    0 for a single seed) of each metric, the gap to the baseline's mean for the same model
    (ours minus baseline, negative = worse), and the paper's values where it has that pair."""
    groups = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["model"]), []).append(row)
    means = {key: {m: float(np.mean([r[m] for r in group])) for m in METRICS}
             for key, group in groups.items()}
    table = []
    for (dataset, model), group in groups.items():
        entry = {"dataset": dataset, "model": model, "seeds": len(group)}
        for metric in METRICS:
            values = [r[metric] for r in group]
            entry[f"{metric}_mean"] = means[(dataset, model)][metric]
            entry[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            base = means.get((baseline, model))
            entry[f"{metric}_gap"] = (entry[f"{metric}_mean"] - base[metric]
                                      if base is not None and dataset != baseline else None)
        paper = PAPER_TABLE1.get((dataset.lower(), paper_model_name(model)))
        for i, metric in enumerate(METRICS):
            entry[f"paper_{metric}_mean"] = paper[2 * i] if paper else None
            entry[f"paper_{metric}_std"] = paper[2 * i + 1] if paper else None
        table.append(entry)
    return table


def _cell(mean, std, gap=None):
    text = f"{mean:.3f} ± {std:.3f}"
    return text + (f" **{gap:+.3f}**" if gap is not None else "")


def table_markdown(table, baseline, notes=()):
    lines = [f"| Dataset | Model | Seeds | {' | '.join(METRIC_TITLES.values())} | "
             f"{' | '.join('Paper ' + t for t in METRIC_TITLES.values())} |",
             "|" + "---|" * (3 + 2 * len(METRICS))]
    for e in table:
        ours = [_cell(e[f"{m}_mean"], e[f"{m}_std"], e[f"{m}_gap"]) for m in METRICS]
        paper = [f"{e[f'paper_{m}_mean']:.2f} ± {e[f'paper_{m}_std']:.3f}"
                 if e[f"paper_{m}_mean"] is not None else "–" for m in METRICS]
        lines.append(f"| {e['dataset']} | {e['model']} | {e['seeds']} | {' | '.join(ours)} | {' | '.join(paper)} |")
    lines.append("")
    lines.append(f"Mean ± sample std over seeds; in bold the gap to `{baseline}` for the same model "
                 f"(ours minus {baseline}). Paper: Table 1 of Voetman et al., MinneApple test set; our "
                 f"yolov5*u models stand for the paper's anchor-based YOLOv5.")
    lines += ["", *notes] if notes else []
    return "\n".join(lines) + "\n"


def plot_table(table, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(e["model"] for e in table))
    datasets = list(dict.fromkeys(e["dataset"] for e in table))
    lookup = {(e["dataset"], e["model"]): e for e in table}
    width = 0.8 / len(datasets)
    figure, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 4), squeeze=False)
    for axis, metric in zip(axes[0], METRICS):
        x = np.arange(len(models))
        for k, dataset in enumerate(datasets):
            entries = [lookup.get((dataset, m)) for m in models]
            offset = x + (k - (len(datasets) - 1) / 2) * width
            axis.bar(offset, [e[f"{metric}_mean"] if e else 0 for e in entries], width,
                     yerr=[e[f"{metric}_std"] if e else 0 for e in entries], capsize=3, label=dataset)
            paper = [(o, e[f"paper_{metric}_mean"]) for o, e in zip(offset, entries)
                     if e and e[f"paper_{metric}_mean"] is not None]
            if paper:
                axis.scatter(*zip(*paper), marker="D", s=30, facecolors="none", edgecolors="black",
                             zorder=3, label="paper" if k == 0 else None)
        axis.set_xticks(x, models, rotation=45, ha="right")
        axis.set_title(METRIC_TITLES[metric])
        axis.set_ylim(0, 1)
    axes[0][0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_table(results_csv, out_dir, baseline="baseline", notes=()):
    """results CSV -> out_dir/table1.csv, table1.md, table1.png; returns the table."""
    rows = read_results(results_csv)
    if not any(r["dataset"] == baseline for r in rows):
        datasets = sorted({r["dataset"] for r in rows})
        raise EvaluationInputError(f"{results_csv}: no rows of the baseline dataset {baseline!r} "
                                   f"(datasets: {', '.join(datasets)}); choose one with --baseline")
    table = summarise(rows, baseline)
    out_dir = Path(out_dir)
    text = io.StringIO()
    writer = csv.DictWriter(text, list(table[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    write_atomic(out_dir / "table1.csv", text.getvalue())
    write_atomic(out_dir / "table1.md", table_markdown(table, baseline, notes))
    create_atomic(out_dir / "table1.png", lambda tmp: plot_table(table, tmp))
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    score_parser = commands.add_parser("score", help="COCO AP of YOLO predictions on a labelled split",
                                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    score_parser.add_argument("--gt", required=True, help="folder with images/ and labels/ (YOLO txt)")
    score_parser.add_argument("--pred", required=True,
                              help="folder with one 'class cx cy w h conf' txt per image")
    score_parser.add_argument("--out", help="write the metrics to this JSON file")
    score_parser.add_argument("--max_dets", type=int, default=100,
                              help="detections per image that count, for every figure (COCO's default, "
                                   "as MinneApple's scorer)")
    score_parser.add_argument("--export_coco", help="write gt.json and predictions.json (COCO) here")
    collect_parser = commands.add_parser("collect", help="score every run of train_detectors.py into a results CSV",
                                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    collect_parser.add_argument("--runs", required=True, help="train_detectors.py's --project folder")
    collect_parser.add_argument("--gt", required=True, help="the labelled test split (images/ and labels/)")
    collect_parser.add_argument("--out", required=True, help="the results CSV to write")
    collect_parser.add_argument("--max_dets", type=int, default=100,
                                help="detections per image that count, for every figure")
    table_parser = commands.add_parser("table", help="Table 1 from one row per trained detector",
                                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    table_parser.add_argument("--results", required=True,
                              help="CSV with columns dataset, model, seed, ap, ap50, ap75")
    table_parser.add_argument("--out_dir", required=True, help="where table1.csv/.md/.png go")
    table_parser.add_argument("--baseline", default="baseline", help="dataset the gaps are measured to")
    table_parser.add_argument("--note", action="append", default=[], help="a line added under table1.md, repeatable "
                              "(e.g. how the generated images were labelled)")
    args = parser.parse_args(argv)
    if args.command in ("score", "collect") and args.max_dets < 1:
        parser.error("--max_dets must be at least 1")

    try:
        if args.command == "score":
            if args.out:
                check_output("--out", args.out)
            if args.export_coco:
                check_output("--export_coco", args.export_coco, folder=True)
            metrics = score(args.gt, args.pred, args.max_dets, args.export_coco, echo=True)
            print(json.dumps(metrics, indent=2))
            if args.out:
                with output_errors_named("--out", args.out):
                    write_atomic(args.out, json.dumps(metrics, indent=2) + "\n")
        elif args.command == "collect":
            check_output("--out", args.out)
            rows = collect(args.runs, args.gt, args.max_dets)
            text = io.StringIO()
            writer = csv.DictWriter(text, ["dataset", "model", "seed", *METRICS], lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            with output_errors_named("--out", args.out):
                write_atomic(args.out, text.getvalue())
            print(f"scored {len(rows)} runs -> {args.out}")
        else:
            check_output("--out_dir", args.out_dir, folder=True)
            with output_errors_named("--out_dir", args.out_dir):
                table = write_table(args.results, args.out_dir, args.baseline, args.note)
            print(table_markdown(table, args.baseline, args.note), end="")
            print(f"wrote {Path(args.out_dir) / 'table1.csv'}, table1.md, table1.png")
    except EvaluationInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
