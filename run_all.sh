#!/usr/bin/env bash
# Genfusion end to end. Stages so far: prepare (prepare_data.py), dreambooth green and red
# (train_dreambooth.py, one shared class folder), generate (generate.py, as many green and red
# trees as the real train split has) and, in the demo, an evaluate plumbing check. Later issues
# add the detectors and Table 1.
#
#   bash run_all.sh --demo [--work DIR]          synthetic photos, tiny random model, CPU, no download
#   bash run_all.sh --minneapple DATA/detection --work DIR [--test_annotations FILE] [--model ID_OR_PATH]
#
# Makes .venv and installs requirements.txt the first time. Each stage skips work already done;
# every stage's command and time go to WORK/run_all.log; the run stops at the first failing stage.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || { echo "run_all.sh: $1 needs a value" >&2; usage 2; }; }
demo=0; minneapple=""; work=""; model="stabilityai/stable-diffusion-2-1"; test_annotations=()
while [ $# -gt 0 ]; do
  case "$1" in
    --demo) demo=1; shift ;;
    --minneapple) need_value "$@"; minneapple="$2"; shift 2 ;;
    --work) need_value "$@"; work="$2"; shift 2 ;;
    --model) need_value "$@"; model="$2"; shift 2 ;;
    --test_annotations) need_value "$@"; test_annotations=(--test_annotations "$2"); shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "run_all.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done
if [ "$demo" = 1 ] && [ -n "$minneapple" ]; then
  echo "run_all.sh: give --demo or --minneapple, not both" >&2; usage 2
elif [ "$demo" = 1 ]; then
  work="${work:-$root/work/demo}"
elif [ -z "$minneapple" ] || [ -z "$work" ]; then
  echo "run_all.sh: give --demo, or --minneapple DIR and --work DIR" >&2; usage 2
fi
mkdir -p "$work"
work="$(cd "$work" && pwd)"
log="$work/run_all.log"

bash "$root/setup_env.sh"
python="$root/.venv/bin/python"

stage() {  # stage NAME COMMAND...: run, log the command and its time, stop the run on failure
  local name="$1"; shift
  echo "== $name: $*" | tee -a "$log"
  local start=$SECONDS
  if ! "$@" 2>&1 | tee -a "$log"; then
    echo "run_all.sh: stage '$name' failed (see $log)" | tee -a "$log" >&2
    exit 1
  fi
  echo "== $name done in $((SECONDS - start)) s" | tee -a "$log"
}

if [ "$demo" = 1 ]; then
  echo "Demo: synthetic photos and a tiny random diffusion model; its numbers show the plumbing, not the paper's result." | tee -a "$log"
  stage prepare "$python" "$root/prepare_data.py" --source synthetic --num_images 24 \
    --resolution 256 --num_instances 3 --output_dir "$work/data"
  dreambooth_flags=(--pretrained_model_name_or_path tiny-random --resolution 64 --num_class_images 4
                    --max_train_steps 10 --validation_steps 10)
  generate_flags=(--height 64 --width 64 --num_inference_steps 10)
else
  stage prepare "$python" "$root/prepare_data.py" --source minneapple --input "$minneapple" \
    "${test_annotations[@]}" --output_dir "$work/data"
  dreambooth_flags=(--pretrained_model_name_or_path "$model")
  generate_flags=()
fi
for colour in green red; do
  stage "dreambooth $colour" "$python" "$root/train_dreambooth.py" "${dreambooth_flags[@]}" \
    --instance_data_dir "$work/data/instances/$colour" --class_data_dir "$work/class_images" \
    --output_dir "$work/models/$colour" --resume_from_checkpoint latest
done

# As many green and red trees as the real train split has (the paper: 54 and 482).
read -r green red < <("$python" -c 'import json, sys; c = json.load(open(sys.argv[1]))["colours"]["train"]; print(c["green"], c["red"])' "$work/data/stats.json")
stage generate "$python" "$root/generate.py" --model "$work/models/green:$green" --model "$work/models/red:$red" \
  "${generate_flags[@]}" --output_dir "$work/generated"

if [ "$demo" = 1 ]; then
  # Until detectors land (train_detectors.py), score the test labels against themselves: the
  # prepare -> evaluate contract must give AP 1.0.
  mkdir -p "$work/self_check"
  for label in "$work"/data/real/test/labels/*.txt; do
    [ -e "$label" ] || continue
    sed 's/$/ 1.0/' "$label" > "$work/self_check/$(basename "$label")"
  done
  stage evaluate "$python" "$root/evaluate.py" score --gt "$work/data/real/test" \
    --pred "$work/self_check" --out "$work/results/self_check.json"
fi
echo "Results:"
echo "  data:        $work/data (real.yaml, manifest.csv, stats.json, instances/)"
echo "  models:      $work/models/{green,red} (loss.png, training_log.csv, validation/)"
echo "  generated:   $work/generated (images/, manifest.csv, contact_sheet.png)"
[ "$demo" = 1 ] && echo "  self check:  $work/results/self_check.json"
exit 0
