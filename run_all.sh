#!/usr/bin/env bash
# Genfusion end to end, the paper's experiment (Figure 6):
#   prepare -> dreambooth green and red (one shared class folder) -> generate (as many green and red
#   trees as the real train split has) -> baseline detectors on real data -> proposals on the
#   generated images -> (a person's review) -> detectors on the generated data -> Table 1.
#
#   bash run_all.sh --demo [--work DIR]        synthetic photos, tiny random diffusion model, yolov8n
#                                              from scratch, CPU, no download; shows the plumbing only
#   bash run_all.sh --minneapple DATA/detection --work DIR [options]
#
# Options: --test_annotations FILE  --model ID_OR_PATH (Stable Diffusion; default SD 2.1)
#          --reviewed_labels FILE_OR_DIR (a person's review; without it the proposals are used as they are)
#          --models LIST  --seeds LIST  --epochs N  --quick (2 models x 2 seeds)
#          --init pretrained|scratch  --weights_dir DIR  (detector start, see train_detectors.py)
#
# Makes .venv and installs requirements.txt the first time. Each stage skips work already done, so
# a killed run continues where it stopped; every stage's command and time go to WORK/run_all.log;
# the run stops at the first failing stage and names it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || { echo "run_all.sh: $1 needs a value" >&2; usage 2; }; }
demo=0; minneapple=""; work=""; model="stabilityai/stable-diffusion-2-1"; test_annotations=(); reviewed=""
models=""; seeds=""; epochs=""; init=""; weights_dir=()
while [ $# -gt 0 ]; do
  case "$1" in
    --demo) demo=1; shift ;;
    --quick) models="yolov8n,yolov5nu"; seeds="0,1"; shift ;;
    --minneapple) need_value "$@"; minneapple="$2"; shift 2 ;;
    --work) need_value "$@"; work="$2"; shift 2 ;;
    --model) need_value "$@"; model="$2"; shift 2 ;;
    --test_annotations) need_value "$@"; test_annotations=(--test_annotations "$2"); shift 2 ;;
    --reviewed_labels) need_value "$@"; reviewed="$2"; shift 2 ;;
    --models) need_value "$@"; models="$2"; shift 2 ;;
    --seeds) need_value "$@"; seeds="$2"; shift 2 ;;
    --epochs) need_value "$@"; epochs="$2"; shift 2 ;;
    --init) need_value "$@"; init="$2"; shift 2 ;;
    --weights_dir) need_value "$@"; weights_dir=(--weights_dir "$2"); shift 2 ;;
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
  echo "Demo: synthetic photos, a tiny random diffusion model and detectors trained for a few epochs;" \
       "its numbers show the plumbing, not the paper's result." | tee -a "$log"
  prepare=(--source synthetic --num_images 24 --resolution 256 --num_instances 3)
  dreambooth=(--pretrained_model_name_or_path tiny-random --resolution 64 --num_class_images 4
              --max_train_steps 10 --validation_steps 10)
  generate=(--height 64 --width 64 --num_inference_steps 10)
  detectors=(--models "${models:-yolov8n}" --seeds "${seeds:-0}" --epochs "${epochs:-3}" --imgsz 128
             --init "${init:-scratch}" --workers 0)
  propose=(--imgsz 128 --conf 0.01)
else
  prepare=(--source minneapple --input "$minneapple" "${test_annotations[@]}")
  dreambooth=(--pretrained_model_name_or_path "$model")
  generate=()
  detectors=(--init "${init:-pretrained}" "${weights_dir[@]}")
  [ -n "$models" ] && detectors+=(--models "$models")
  [ -n "$seeds" ] && detectors+=(--seeds "$seeds")
  [ -n "$epochs" ] && detectors+=(--epochs "$epochs")
  propose=(--calibrate_data "$work/data/real.yaml")
fi
test_images="$work/data/real/test/images"

stage prepare "$python" "$root/prepare_data.py" "${prepare[@]}" --output_dir "$work/data"
for colour in green red; do
  stage "dreambooth $colour" "$python" "$root/train_dreambooth.py" "${dreambooth[@]}" \
    --instance_data_dir "$work/data/instances/$colour" --class_data_dir "$work/class_images" \
    --output_dir "$work/models/$colour" --resume_from_checkpoint latest
done
read -r green red < <("$python" -c 'import json, sys; c = json.load(open(sys.argv[1]))["colours"]["train"]; print(c["green"], c["red"])' "$work/data/stats.json")
stage generate "$python" "$root/generate.py" --model "$work/models/green:$green" --model "$work/models/red:$red" \
  "${generate[@]}" --output_dir "$work/generated"
stage "detectors baseline" "$python" "$root/train_detectors.py" --data "baseline=$work/data/real.yaml" \
  "${detectors[@]}" --test_images "$test_images" --project "$work/detectors"

# The proposals come from the first baseline run (first model, first seed).
proposer=$(ls -d "$work"/detectors/baseline/*/seed*/weights/best.pt | head -n 1)
stage propose "$python" "$root/propose_boxes.py" propose --weights "$proposer" --images "$work/generated/images" \
  "${propose[@]}" --output_dir "$work/proposals"
if [ -n "$reviewed" ]; then
  stage import "$python" "$root/propose_boxes.py" import --reviewed "$reviewed" --images "$work/generated/images" \
    --output_dir "$work/genfusion"
  genfusion_yaml="$work/genfusion/data.yaml"; labels_note="reviewed by a person ($reviewed)"
else
  genfusion_yaml="$work/proposals/data.yaml"; labels_note="the baseline's proposals as they are, NOT reviewed"
  echo "note: no --reviewed_labels: the generated images are labelled with $labels_note" | tee -a "$log"
fi
stage "detectors genfusion" "$python" "$root/train_detectors.py" --data "genfusion=$genfusion_yaml" \
  "${detectors[@]}" --test_images "$test_images" --project "$work/detectors"

stage evaluate "$python" "$root/evaluate.py" collect --runs "$work/detectors" --gt "$work/data/real/test" \
  --out "$work/results/results.csv"
stage table "$python" "$root/evaluate.py" table --results "$work/results/results.csv" --out_dir "$work/results"
printf '\nGenerated labels: %s.\n' "$labels_note" >> "$work/results/table1.md"
[ "$demo" = 1 ] && printf 'Demo run: synthetic photos and a tiny random model; these numbers show the plumbing, not the paper.\n' >> "$work/results/table1.md"

cat "$work/results/table1.md"
echo "Results:"
echo "  table:          $work/results/table1.md, table1.png, table1.csv"
echo "  contact sheet:  $work/generated/contact_sheet.png"
echo "  loss curves:    $work/models/green/loss.png, $work/models/red/loss.png"
echo "  data:           $work/data (real.yaml, manifest.csv, stats.json, instances/)"
echo "  log:            $log"
