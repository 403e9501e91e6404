#!/usr/bin/env python3
"""train_detectors.py: train the paper's YOLO matrix (or other ultralytics detectors), predict on the test photos.

In:  --data NAME=YAML (repeatable: ultralytics data YAMLs, e.g. baseline=OUT/real.yaml and
     genfusion=WORK/genfusion/data.yaml; NAME=YAML1+YAML2 is a union: the train splits of both,
     YAML1's val and names, e.g. mixed=OUT/real.yaml+WORK/genfusion/data.yaml), --models, --seeds,
     --test_images DIR.
Out: PROJECT/<dataset>/data.yaml                  a union's data YAML (absolute paths), what it trains on
     PROJECT/<dataset>/<model>/seed<k>/           ultralytics' run folder (weights/best.pt, ...); <model> is
                                                   the model's name, or a --models file's stem
     PROJECT/<dataset>/<model>/seed<k>/test_predictions/<stem>.txt
                                                   'class cx cy w h conf' per detection, what
                                                   `evaluate.py score --pred` reads
     PROJECT/<dataset>/<model>/seed<k>/run.json    written last: the run is finished
     PROJECT/runs.csv                              dataset, model, seed, epochs, seconds, status,
                                                   val_map50_95 (ultralytics' own, best epoch)

--models takes any ultralytics detection model: a name (yolov8n, yolo11s, yolo26n, rtdetr-l, ...: ultralytics'
model YAML with --init scratch, its COCO weights with --init pretrained), a .yaml file (an architecture,
trained from scratch) or a .pt file (a detector, e.g. a run's best.pt, trained on from its weights).
ultralytics' guess_model_task on the model's YAML decides the task: a model that is not a detector
(-seg, -cls, -pose, ...), an open-vocabulary one (YOLO-World, YOLOE) or a name ultralytics does not know
is refused before any training. RT-DETR trains with ultralytics' RTDETR class, the others with YOLO.

The paper's Table 2 are the defaults: SGD (set explicitly: ultralytics' 'auto' ignores lr0),
lr0 0.01, momentum 0.937, weight decay 5e-4, batch 8, AMP on a GPU (fp32 on the CPU, on --threads
cores), NMS IoU 0.45, 768 px, and every augmentation off (--augment: ultralytics' defaults). --nbs
is ultralytics' nominal batch size (gradients of round(nbs / batch) batches per optimizer step).
Finished runs (run.json) are skipped; one finished with other settings is refused. A killed run
(its folder without run.json) is deleted and trained again from epoch 0 with the settings asked
now, which costs up to one run's training time: ultralytics' resume is not exact (its last.pt keeps
no live weights, only the EMA in fp16, SGD momentum in fp16, and no RNG or dataloader state), so a
resumed run would not give an unbroken run's predictions; a rerun with the same seed gives them
byte for byte. No run's last.pt is read for bookkeeping (.pt files are pickles: load them only from
sources you trust; a --models .pt file is loaded to check it, as ultralytics loads it to train).
Nothing reaches for the network: ultralytics' settings live in PROJECT/.ultralytics, its font is a
local one, it installs nothing, and --init pretrained without local weights fails at once offline.
"""
import argparse
import csv
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import yaml

# ultralytics' IMG_FORMATS: the files a data YAML's folder or list contributes as images.
ULTRALYTICS_IMAGE_SUFFIXES = ("avif", "bmp", "dng", "heic", "heif", "jp2", "jpeg", "jpeg2000", "jpg", "mpo", "png",
                              "tif", "tiff", "webp")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Table 2 of the paper (Appendix B.1).
PAPER_SETTINGS = {"optimizer": "SGD", "lr0": 0.01, "momentum": 0.937, "weight_decay": 5e-4, "iou": 0.45}
AUGMENTATIONS_OFF = {"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "degrees": 0.0, "translate": 0.0, "scale": 0.0,
                     "shear": 0.0, "perspective": 0.0, "flipud": 0.0, "fliplr": 0.0, "bgr": 0.0, "mosaic": 0.0,
                     "mixup": 0.0, "cutmix": 0.0, "copy_paste": 0.0, "close_mosaic": 0, "multi_scale": 0.0,
                     "erasing": 0.0, "auto_augment": None,
                     "augmentations": []}  # no Albumentations transforms (ultralytics adds blur etc. when installed)
PREDICT_SETTINGS = {"conf": 0.001, "iou": 0.45, "max_det": 300}
RUN_FIELDS = ["dataset", "model", "seed", "epochs", "seconds", "status", "val_map50_95", "run_dir"]


class InputError(Exception):
    """Bad input: the message names the file (or flag) and what is wrong with it."""


# ---------------------------------------------------------------------------------------------
# The matrix: plan every run, train and predict each
# ---------------------------------------------------------------------------------------------
def plan(args):
    """Every (dataset, model, seed) run of this shard, after checking every input."""
    data = parse_data_specs(args.data)
    for parts in data.values():
        for part in parts:
            check_data_yaml(part)
    unions = {name: union_data(parts) for name, parts in data.items() if len(parts) > 1}
    entries = parse_list(args.models, "--models")
    try:
        seeds = [int(s) for s in parse_list(args.seeds, "--seeds")]
    except ValueError:
        raise InputError(f"--seeds {args.seeds!r}: expected whole numbers, e.g. 0,1,2,3,4")
    if not Path(args.test_images).is_dir() or not list_images(args.test_images):
        raise InputError(f"--test_images {args.test_images}: missing or holds no images")
    shard = parse_shard(args.shard)
    check_output_folder(args.project, "--project")  # a bad input above creates no folder
    offline_safe_environment(args.project)  # before the model checks import ultralytics, whose settings go there
    models = model_specs(entries, args.init, args.weights_dir)
    project = Path(args.project).resolve()
    data_yamls = {name: str(write_union_yaml(project / name / "data.yaml", unions[name])) if name in unions
                  else parts[0] for name, parts in data.items()}
    runs = [{"dataset": name, "data_yaml": data_yamls[name], **model, "seed": seed,
             "union_of": [str(Path(part).resolve()) for part in data[name]] if name in unions else None,
             "run_dir": str(project / name / model["model"] / f"seed{seed}"), "epochs": args.epochs,
             "imgsz": args.imgsz, "batch": args.batch, "nbs": args.nbs, "warmup_epochs": args.warmup_epochs,
             "augment": args.augment, "workers": args.workers, "plots": args.plots, "test_images": args.test_images}
            for name in data for model in models for seed in seeds]
    return [run for index, run in enumerate(runs) if index % shard[1] == shard[0]]


def run_one(spec, device):
    """Train one (dataset, model, seed) from epoch 0 and predict on the test images -> its row. A
    killed run's folder is deleted first (ultralytics' resume would not reproduce an unbroken run)."""
    run_dir = Path(spec["run_dir"])
    done = run_dir / "run.json"
    if done.exists():
        row = json.loads(done.read_text())
        if row.get("config") != run_config(spec):
            raise InputError(f"{run_dir} finished with other settings ({row.get('config')}); use another --project "
                             f"or delete that run folder")
        return {**row, "status": "skipped (done)"}
    if run_dir.exists():
        print(f"{run_dir} has no run.json (killed or failed): deleting it and training again from epoch 0")
        shutil.rmtree(run_dir)
    started = time.time()
    arguments = train_arguments(spec["data_yaml"], run_dir, spec["seed"], spec["epochs"], spec["imgsz"],
                                spec["batch"], device, spec["workers"], spec["augment"], spec["nbs"],
                                spec["warmup_epochs"], spec["plots"])
    detector = detector_class(spec["architecture"])(spec["source"])
    detector.train(**arguments)
    import torch
    precision = {"amp": bool(detector.trainer.amp), "threads": torch.get_num_threads()}
    predict_to_folder(run_dir / "weights" / "best.pt", spec["architecture"], list_images(spec["test_images"]),
                      run_dir / "test_predictions", spec["imgsz"], device)
    row = {"dataset": spec["dataset"], "model": spec["model"], "seed": spec["seed"], "epochs": spec["epochs"],
           "seconds": round(time.time() - started, 1), "status": "done", "val_map50_95": best_val_map(run_dir),
           "run_dir": str(run_dir), **precision, "config": run_config(spec)}
    tmp = done.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(row, indent=2))
    os.replace(tmp, done)
    return row


def train_arguments(data_yaml, run_dir, seed, epochs, imgsz, batch, device, workers, augment, nbs,
                    warmup_epochs=3.0, plots=True):
    """The keyword arguments given to ultralytics' train(): the paper's settings, augmentations off
    (or ultralytics' defaults with augment), the nominal batch size nbs, the warm-up and whether it plots."""
    # cls_remap=False: a new head for our class, as the YOLO repositories of the paper's time did
    # (ultralytics 8.4 would copy the COCO 'apple' row of a pretrained head into ours)
    return {"data": str(Path(data_yaml).resolve()), "project": str(run_dir.parent.resolve()), "name": run_dir.name,
            "exist_ok": True, "seed": seed, "deterministic": True, "epochs": epochs, "imgsz": imgsz,
            "batch": batch, "nbs": nbs, "warmup_epochs": warmup_epochs, "device": device, "workers": workers,
            "amp": True, "verbose": False, "plots": plots, "cls_remap": False, **PAPER_SETTINGS, **({} if augment else AUGMENTATIONS_OFF)}


def run_config(spec):
    """What defines a run's result; a finished run made otherwise is refused, not silently kept. A
    union's config has its combined data YAML and the parts it was made of (union_of); a --models file's,
    its contents' hash (source_sha256); a warm-up other than ultralytics' own, its warmup_epochs."""
    union = {"union_of": spec["union_of"]} if spec["union_of"] else {}
    contents = {"source_sha256": spec["source_sha256"]} if spec.get("source_sha256") else {}
    warmup = {"warmup_epochs": spec["warmup_epochs"]} if spec["warmup_epochs"] != 3.0 else {}  # 3: ultralytics'
    return {"data": str(Path(spec["data_yaml"]).resolve()), **union, "source": spec["source"], **contents,
            "epochs": spec["epochs"], "imgsz": spec["imgsz"], "batch": spec["batch"], "nbs": spec["nbs"],
            **warmup, "augment": spec["augment"]}


def predict_to_folder(weights, architecture, images, out_dir, imgsz, device):
    """One 'class cx cy w h conf' file per test image (empty when nothing is found), written to a
    temporary folder that replaces out_dir at the end. RT-DETR has no NMS: its iou is unused."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model = detector_class(architecture)(str(weights))
    for result in model.predict(source=[str(p) for p in images], imgsz=imgsz, device=device, stream=True,
                                verbose=False, **PREDICT_SETTINGS):
        boxes = result.boxes
        lines = [f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f} {s:.6f}\n"
                 for c, (x, y, w, h), s in zip(boxes.cls.tolist(), boxes.xywhn.tolist(), boxes.conf.tolist())]
        (tmp / f"{Path(result.path).stem}.txt").write_text("".join(lines))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


def best_val_map(run_dir):
    """The best epoch's mAP50-95 on val, from ultralytics' results.csv."""
    with open(Path(run_dir) / "results.csv", newline="") as handle:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(handle)]
    return max(float(r["metrics/mAP50-95(B)"]) for r in rows) if rows else None


def run_or_report(spec, device):
    """run_one, with a failure reported as a row instead of ending the whole matrix."""
    try:
        return run_one(spec, device)
    except Exception as error:
        return {**{k: spec[k] for k in ("dataset", "model", "seed")}, "status": f"failed: {error!r}",
                "val_map50_95": None}


_DEVICE = None


def _init_worker(devices):
    global _DEVICE
    _DEVICE = devices.get()


def _run_on_worker_device(spec):
    return run_or_report(spec, _DEVICE)


def write_runs_csv(project):
    """runs.csv from every finished run's run.json (so shards and parallel runs never collide)."""
    rows = [json.loads(p.read_text()) for p in sorted(Path(project).glob("*/*/seed*/run.json"))]
    tmp = Path(project) / f".runs.csv.{socket.gethostname()}.{os.getpid()}.tmp"  # shards may share the folder
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, RUN_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, Path(project) / "runs.csv")
    return rows


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def parse_data_specs(specs):
    """['NAME=YAML', 'NAME=YAML1+YAML2', ...] -> {NAME: [YAML, ...]}: one YAML, or the parts of a
    union (a path that exists is one YAML, '+' in its name or not)."""
    data = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        parts = [path] if Path(path).exists() else path.split("+")
        if not sep or not name or not all(parts):
            raise InputError(f"--data {spec!r}: expected NAME=YAML or NAME=YAML1+YAML2, e.g. baseline=OUT/real.yaml")
        if name in data:
            raise InputError(f"--data {name} is given twice")
        data[name] = parts
    return data


def check_data_yaml(path):
    """An ultralytics data YAML whose train and val splits (image folders, or .txt lists of images)
    exist, hold images and have YOLO label files."""
    data = read_data_yaml(path)
    for split in ("train", "val"):
        for entry in split_folders(path, data, split):
            if entry.is_file() and entry.suffix == ".txt":
                images = listed_images(entry)
                missing = [str(image) for image in images if not label_file_of(image).is_file()]
                if not images or missing:
                    raise InputError(f"{path}: the {split} list {entry} is empty or names images without a label "
                                     f"file: {', '.join(missing[:3])}")
                continue
            if not entry.is_dir() or not list_images(entry):
                raise InputError(f"{path}: the {split} folder {entry} is missing or holds no images")
            if not any(label_file_of(image).is_file() for image in list_images(entry)):
                raise InputError(f"{path}: no YOLO label files for the {split} images in {entry} (ultralytics looks "
                                 f"for {label_file_of(entry / 'IMAGE.png')})")


def read_data_yaml(path):
    """An ultralytics data YAML -> its dict, which must have train and val."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise InputError(f"{path}: not a readable data YAML ({error})")
    if not isinstance(data, dict) or "train" not in data or "val" not in data:
        raise InputError(f"{path}: a data YAML is a mapping with train and val (and path, test, names)")
    return data


def split_folders(path, data, split):
    """The image folders of one split of a data YAML (path, its dict), as absolute paths; relative
    ones count from its `path` (ultralytics: a relative `path` counts from the working folder;
    without one, from the YAML's folder)."""
    root = Path(data.get("path") or Path(path).parent)
    entries = data[split] if isinstance(data[split], list) else [data[split]]
    return [(root / entry).resolve() for entry in entries]


def list_images(folder):
    """The images in a folder (by extension), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


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


def label_file_of(image_path):
    """ultralytics' label file of an image: the last /images/ of its path made /labels/, the suffix .txt."""
    path = str(image_path)
    return Path(f"{os.sep}labels{os.sep}".join(path.rsplit(f"{os.sep}images{os.sep}", 1)).rsplit(".", 1)[0] + ".txt")


def union_data(parts):
    """The data YAML dict of a union of data YAMLs (each already checked by check_data_yaml): train =
    every part's train folders, val = the first part's val, names = the first part's (which every part
    must share), all paths absolute."""
    data = [read_data_yaml(part) for part in parts]
    for part, part_data in zip(parts[1:], data[1:]):
        if part_data.get("names") != data[0].get("names"):
            raise InputError(f"{part}: names {part_data.get('names')} differ from {parts[0]}'s "
                             f"{data[0].get('names')}: a union needs the same classes")
    val = [str(folder) for folder in split_folders(parts[0], data[0], "val")]
    return {"train": [str(folder) for part, part_data in zip(parts, data)
                      for folder in split_folders(part, part_data, "train")],
            "val": val if isinstance(data[0]["val"], list) else val[0], "names": data[0].get("names")}


def write_union_yaml(path, data):
    """Write a union's data YAML (union_data) to path atomically (a temp file of this process, renamed:
    shards may share the folder) -> path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    try:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def parse_list(text, flag):
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise InputError(f"{flag} is empty")
    return items


def parse_shard(text):
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise InputError(f"--shard {text!r}: expected i/n with 0 <= i < n")
    return int(match.group(1)), int(match.group(2))


# ---------------------------------------------------------------------------------------------
# Models: any ultralytics detector, by name or file
# ---------------------------------------------------------------------------------------------
def model_specs(entries, init, weights_dir):
    """--models entries -> their model_spec()s; two entries that would share a run folder are refused."""
    specs, given = {}, {}
    for entry in entries:
        spec = model_spec(entry, init, weights_dir)
        folder = spec["model"]
        if folder in specs:
            raise InputError(f"--models {entry} is given twice" if specs[folder]["source"] == spec["source"] else
                             f"--models {given[folder]} and {entry} would share the run folder "
                             f"PROJECT/<dataset>/{folder}: rename one of them")
        specs[folder], given[folder] = spec, entry
    return list(specs.values())


def model_spec(entry, init, weights_dir):
    """One --models entry -> {model: its run folder's name, source: what ultralytics loads, architecture:
    the ultralytics class that trains it (detector_architecture)}. A name (yolo26n, rtdetr-l, ...) is
    ultralytics' model YAML with --init scratch, its COCO weights with --init pretrained. A .yaml file
    (an architecture) trains from scratch and a .pt file (a detector, e.g. a run's best.pt) from its
    weights, whatever --init; its run folder is its stem, and its contents' hash is in the run's config."""
    path = Path(entry)
    if path.suffix.lower() in (".yaml", ".yml", ".pt"):
        if not path.is_file():
            raise InputError(f"--models {entry}: no such file (ultralytics' own models are named without a "
                             f"suffix, e.g. yolo26n)")
        return {"model": path.stem, "source": str(path.resolve()),
                "architecture": detector_architecture(entry, load_model_file(path)), "source_sha256": sha256(path)}
    if path.name != entry or ":" in entry:  # ultralytics would look a URL up online, a folder nowhere
        raise InputError(f"--models {entry}: neither an ultralytics model name (yolo26n, rtdetr-l, ...) nor a "
                         f".yaml or .pt file")
    architecture = detector_architecture(entry, ultralytics_model_yaml(entry))
    return {"model": entry, "source": model_source(entry, init, weights_dir), "architecture": architecture}


def ultralytics_model_yaml(name):
    """ultralytics' own model YAML of a model name, as its yaml_model_load reads it (yolo26n: yolo26.yaml
    at scale n) -> the YAML's dict."""
    import ultralytics
    from ultralytics.nn.tasks import yaml_model_load
    try:
        return yaml_model_load(f"{name}.yaml")
    except FileNotFoundError:
        raise InputError(f"--models {name}: not a model of ultralytics {ultralytics.__version__} (it has no "
                         f"{name}.yaml; e.g. yolov8n, yolo11s, yolo26n, rtdetr-l)")


def load_model_file(path):
    """A --models file -> its model YAML's dict: the file's own (.yaml, .yml) or the one a checkpoint's model
    was built from (.pt, a pickle: loaded as ultralytics loads it to train, which it would do anyway)."""
    from ultralytics.nn.tasks import load_checkpoint, yaml_model_load
    try:
        return getattr(load_checkpoint(path)[0], "yaml", None) if path.suffix.lower() == ".pt" else \
            yaml_model_load(path)
    except Exception as error:  # whatever the file's loader raises (YAML, pickle, zip, a checkpoint's own check)
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise InputError(f"--models {path}: not a readable ultralytics model ({reason})")


def detector_architecture(entry, cfg):
    """The ultralytics class that trains a model (its model YAML's dict): 'RTDETR' for an RT-DETR decoder
    head, as ultralytics' YOLO() decides, else 'YOLO'. InputError unless it is a detector of its own
    classes: ultralytics' task must be 'detect', and YOLO-World and YOLOE (prompted, open-vocabulary)
    are refused."""
    from ultralytics.nn.tasks import guess_model_task
    head = output_module(cfg)
    if not head:
        raise InputError(f"--models {entry}: not an ultralytics model (its model YAML has no backbone and head)")
    if "RTDETR" in head:  # the RTDETR class trains 'detect' only (guess_model_task does not know its head)
        return "RTDETR"
    task = guess_model_task(cfg)
    if task != "detect":
        raise InputError(f"--models {entry}: not a detector (ultralytics' task for it is {task!r}, not 'detect')")
    if head in ("WorldDetect", "YOLOEDetect"):
        raise InputError(f"--models {entry}: an open-vocabulary detector ({head}: YOLO-World or YOLOE), which "
                         f"train_detectors.py does not train")
    return "YOLO"


def output_module(cfg):
    """The module of a model YAML's last head layer (Detect, Segment, RTDETRDecoder, ...), or None when
    cfg is no model YAML (a backbone and a head of [from, repeats, module, args] layers)."""
    try:
        return str(cfg["head"][-1][-2]) if cfg["backbone"] else None
    except (KeyError, IndexError, TypeError):
        return None


def detector_class(architecture):
    """ultralytics' YOLO or RTDETR class (detector_architecture's answer)."""
    import ultralytics
    return getattr(ultralytics, architecture)


def sha256(path):
    """The SHA-256 of a file's contents, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_source(model, init, weights_dir):
    """What a model name loads: ultralytics' model YAML (scratch) or COCO weights (pretrained)."""
    if init == "scratch":
        return f"{model}.yaml"
    if weights_dir:
        local = Path(weights_dir) / f"{model}.pt"
        if local.exists():
            return str(local)
        raise InputError(f"--init pretrained: no {local} (put the ultralytics COCO weights there)")
    if not online():
        raise InputError(f"--init pretrained needs {model}.pt, and this machine is offline: give "
                         f"--weights_dir DIR with local .pt files, or train with --init scratch")
    return f"{model}.pt"


# ---------------------------------------------------------------------------------------------
# Offline-safe ultralytics on every core
# ---------------------------------------------------------------------------------------------
def offline_safe_environment(project):
    """Settings in PROJECT/.ultralytics, a local font as Arial, no auto-install, no events. Must
    run before ultralytics is imported."""
    config = Path(project).resolve() / ".ultralytics"
    fonts = config / "Ultralytics"
    fonts.mkdir(parents=True, exist_ok=True)
    import matplotlib
    local_font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (fonts / name).exists():
            shutil.copyfile(local_font, fonts / name)
    os.environ.update(YOLO_CONFIG_DIR=str(config), YOLO_AUTOINSTALL="False", YOLO_OFFLINE="1")


def offline_amp_check():
    """ultralytics' AMP check downloads yolo26n.pt on every GPU run; without that file, a CUDA run skips
    the check (AMP stays on) instead of reaching for the network. Off CUDA the answer is ultralytics'
    own: no AMP, so a CPU run trains in fp32 (its autocast would be bfloat16, emulated on many CPUs)."""
    import ultralytics.engine.trainer as trainer
    from ultralytics.utils import WEIGHTS_DIR
    from ultralytics.utils.checks import check_amp as check

    def check_amp(model):
        on_cuda = next(model.parameters()).device.type == "cuda"
        return check(model) if not on_cuda or (WEIGHTS_DIR / "yolo26n.pt").is_file() else True
    trainer.check_amp = check_amp


def use_threads(threads):
    """ultralytics sets torch to min(8, cpu_count - 1) threads whenever it picks the CPU (one on a
    2-core machine); use this many instead."""
    import torch
    import ultralytics.utils.torch_utils as torch_utils
    torch_utils.NUM_THREADS = threads
    torch.set_num_threads(threads)


def available_cores():
    """The cores this process may run on (its CPU affinity, which a container or taskset narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def online(timeout=3.0):
    """Whether ultralytics' weight downloads are reachable."""
    try:
        socket.create_connection(("github.com", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Command line
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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help with descriptions and examples kept as written, and '(default: X)' only where X is a
    value one could type: not for None (the help says what happens), an empty text or list, or a switch."""

    def _get_help_string(self, action):
        switch = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)
        if switch or action.default is None or action.default in ("", []):
            return action.help
        return super()._get_help_string(action)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train ultralytics detectors (the paper's: YOLOv5u and YOLOv8) with "
                                                 "the paper's Table 2 settings and predict on the real test photos.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--data", action="append", required=True, metavar="NAME=YAML",
                        help="a dataset to train on, repeatable (baseline=OUT/real.yaml genfusion=...); "
                             "NAME=YAML1+YAML2 trains on the union of their train splits and validates on "
                             "YAML1's val (mixed=OUT/real.yaml+WORK/genfusion/data.yaml), through the data YAML "
                             "it writes to PROJECT/NAME/data.yaml")
    parser.add_argument("--models", default="yolov8n,yolov8s,yolov8m,yolov8l,yolov8x,"
                                            "yolov5nu,yolov5su,yolov5mu,yolov5lu,yolov5xu",
                        help="comma-separated ultralytics detection models: names (yolov5*u is ultralytics' "
                             "anchor-free YOLOv5u), .yaml architectures or .pt detectors (run folder: the file's "
                             "stem). Tried, 1 epoch from scratch: YOLOv3-tinyu, YOLOv5u, YOLOv6, YOLOv8 (and "
                             "-p2), YOLOv9, YOLOv10, YOLO11, YOLO12, YOLO26, RT-DETR (rtdetr-l, yolov8-rtdetr; "
                             "ultralytics' RTDETR class). Refused: -seg, -cls, -pose, -obb and other non-detect "
                             "tasks, and the open-vocabulary YOLO-World and YOLOE")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated; one run per seed (the paper: 5)")
    parser.add_argument("--epochs", type=int, default=100, help="the paper does not state its epochs; "
                        "ultralytics' own value")
    parser.add_argument("--imgsz", type=int, default=768, help="training and test image size")
    parser.add_argument("--batch", type=int, default=8, help="batch size (the paper's Table 2)")
    parser.add_argument("--nbs", type=int, default=64, help="ultralytics' nominal batch size: gradients of "
                        "round(nbs / batch) batches make one optimizer step (8 at batch 8), and weight decay is "
                        "scaled to it; --nbs equal to --batch steps at every batch")
    parser.add_argument("--warmup_epochs", type=float, default=3.0, help="ultralytics' warm-up (its own value): over "
                        "the first epochs the learning rate rises from 0 and the bias's falls from 0.1; 0 turns it off")
    parser.add_argument("--augment", action="store_true", help="ultralytics' own augmentations (mosaic, flips, "
                        "HSV, scale, translate, ...); without it none, as the paper's Table 2")
    parser.add_argument("--init", choices=["pretrained", "scratch"], default="pretrained",
                        help="for model names: COCO weights (ultralytics fetches them online, or --weights_dir) or "
                             "the model YAML; a .yaml file always starts from scratch, a .pt file from its weights")
    parser.add_argument("--weights_dir", help="folder with <model>.pt COCO weights for --init pretrained")
    parser.add_argument("--test_images", required=True, help="the real test photos to predict on")
    parser.add_argument("--project", required=True, help="where the runs go; a finished run (run.json) is "
                        "skipped, a killed one is deleted and trained again from epoch 0 (up to one run's training "
                        "time; ultralytics' resume would not reproduce an unbroken run)")
    parser.add_argument("--devices", help="e.g. 0,1,2,3: independent runs side by side, one per GPU; without it "
                        "GPU 0 when there is one, else the CPU")
    parser.add_argument("--ddp", action="store_true", help="hand each run to ultralytics' DDP over --devices")
    parser.add_argument("--shard", default="0/1", help="i/n: only the runs with index %% n == i (job arrays)")
    parser.add_argument("--workers", type=int, default=8, help="dataloader workers per run")
    parser.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                        help="ultralytics' plots in each run folder (labels, training batches, curves, confusion "
                             "matrix); --no-plots saves about 3 s a run on a CPU and changes no result")
    parser.add_argument("--threads", type=int, default=available_cores(),
                        help="torch threads of a CPU run: all the cores this process may use")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch < 1 or args.nbs < 1 or args.threads < 1 or args.imgsz < 32:
        parser.error("--epochs, --batch, --nbs and --threads must be at least 1, --imgsz at least 32")
    if args.ddp and len([d for d in (args.devices or "").split(",") if d.strip()]) < 2:
        parser.error("--ddp needs two or more --devices")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        runs = plan(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import torch
    devices = ([d.strip() for d in (args.devices or "").split(",") if d.strip()]
               or (["0"] if torch.cuda.is_available() else ["cpu"]))
    bad = [d for d in devices if d != "cpu" and not (d.isdigit() and int(d) < torch.cuda.device_count())]
    if bad:
        print(f"error: --devices {', '.join(bad)}: this machine has {torch.cuda.device_count()} GPUs "
              f"(give GPU numbers from 0, or cpu)", file=sys.stderr)
        return 2
    offline_amp_check()
    use_threads(args.threads)
    print(f"{len(runs)} runs on {'DDP over ' if args.ddp else ''}{', '.join(devices)}")
    rows = []
    if args.ddp or len(devices) == 1:
        device = ",".join(devices) if args.ddp else devices[0]
        for spec in runs:
            rows.append(run_or_report(spec, device))
            print(f"{spec['dataset']} {spec['model']} seed {spec['seed']}: {rows[-1]['status']}, "
                  f"val mAP50-95 {rows[-1]['val_map50_95']}")
    else:
        import multiprocessing
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        for device in devices:
            queue.put(device)
        with context.Pool(len(devices), initializer=_init_worker, initargs=(queue,)) as pool:
            for row in pool.imap_unordered(_run_on_worker_device, runs):
                rows.append(row)
                print(f"{row['dataset']} {row['model']} seed {row['seed']}: {row['status']}")
    finished = write_runs_csv(args.project)
    print(f"{len(finished)} finished runs in {Path(args.project) / 'runs.csv'}")
    failed = [r for r in rows if r["status"].startswith("failed")]
    for row in failed:
        print(f"error: {row['dataset']} {row['model']} seed {row['seed']} {row['status']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
