#!/usr/bin/env bash
# The GPU check in one command (benchmarks/gpu/README.md): installs the carried wheels, runs a
# short test smoke on the GPU, then the speed figures, each part under `timeout` and inside one
# overall budget, and writes every figure as JSON lines into OUT_DIR:
#
#   env.jsonl          machine, package versions, devices, cuDNN
#   attention.jsonl    the attention core per implementation (benchmarks/attention_core.py)
#   smoke.jsonl        one line per smoke test (pytest on the GPU)
#   train_*.jsonl      benchmarks/train_step.py, one file per figure
#   input_pipeline.jsonl   benchmarks/input_pipeline.py at 8 and 16 workers
#   finetune_e2e.jsonl a synthetic fine-tune through personvit_jax.main: img/s and mAP
#   parts.jsonl        one status row per part: ok | failed | timeout | skipped, seconds
#   results.jsonl      all of the above, each line tagged with its file
#   *.log              each part's stderr
#
#   bash benchmarks/gpu/run.sh OUT_DIR         # on the H200 (about 8 minutes)
#   bash benchmarks/gpu/run.sh OUT_DIR --cpu   # the same parts, tiny, on this CPU (~1 min)
#
# A failing or hanging part is recorded and the script goes on; it exits 0 once the table is
# printed. GPU_CHECK_BUDGET_S (default 470 s) bounds the whole run: a part gets at most what is
# left of it. GPU_CHECK_PARTS="name ..." runs only those parts (e.g. to redo one that failed;
# the wheels are installed regardless).
set -uo pipefail

OUT=${1:?usage: run.sh OUT_DIR [--cpu]}
MODE=${2:-gpu}
[[ $MODE == gpu || $MODE == --cpu ]] || { echo "usage: run.sh OUT_DIR [--cpu]" >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: > "$OUT/parts.jsonl"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")  # data and run folders (not returned)
trap 'rm -rf "$WORK"' EXIT
START=$SECONDS
BUDGET=${GPU_CHECK_BUDGET_S:-470}
PY=${PYTHON:-python3}
REPORT="$REPO/benchmarks/gpu/report.py"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

# part NAME LIMIT_S CMD...: runs CMD (a command or one of the functions below) under `timeout`,
# its JSON stdout lines to NAME.jsonl, its stderr to NAME.log, and a status row to parts.jsonl.
# `timeout` signals its whole process group: Python and any Grain workers with it.
part() {
  local name=$1 limit=$2 left rc t0
  shift 2
  if [[ -n ${GPU_CHECK_PARTS:-} && $name != install && " $GPU_CHECK_PARTS " != *" $name "* ]]; then
    return
  fi
  left=$((BUDGET - (SECONDS - START)))
  ((limit > left)) && limit=$left
  t0=$SECONDS
  if ((limit < 15)); then
    rc=-1  # skipped: the budget is spent
    echo "skipped: ${left} s of the budget left" > "$OUT/$name.log"
  else
    echo "== $name (limit ${limit} s)" >&2
    timeout -k 10 "$limit" bash -c "$DEFS"$'\n''"$@"' "$name" "$@" \
      > "$WORK/$name.out" 2> "$OUT/$name.log"
    rc=$?
    grep '^{' "$WORK/$name.out" > "$OUT/$name.jsonl"
  fi
  "$PY" "$REPORT" status "$name" "$rc" "$((SECONDS - t0))" "$OUT/$name.log" >> "$OUT/parts.jsonl"
}

if [[ $MODE == gpu ]]; then
  unset JAX_PLATFORMS XLA_FLAGS  # the GPU, not the tests' fake CPU devices
  # The wheels benchmarks/gpu/wheels.sh prepared; protobuf only where the image's is older
  # than the generated code in them needs.
  install() {
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || return 1
    "$PY" - <<'EOF' && return 0
import sys, google.protobuf as p
sys.exit(tuple(int(x) for x in p.__version__.split(".")[:3]) < (6, 33, 5))
EOF
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/protobuf/*.whl
  }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  SMOKE=(tests/test_finetune.py::test_init_from_loads_backbone_only
         tests/test_pretrain.py::test_resume_from_mid_run_checkpoint_is_bit_exact)
  ATTN=("--batch=256 --tokens=129 --heads=6" "--batch=256 --tokens=129 --heads=12"
        "--batch=1024 --tokens=33 --heads=6")  # ViT-S / ViT-B 256x128, ViT-S local crops
  FT=(--batch=256 --dtype=bfloat16 --steps=10)
  PT_S=(--batch=128 --dtype=bfloat16 --steps=10)
  PT_B=(--batch=64 --dtype=bfloat16 --steps=10)
  PIPE=(--workers=8,16 --batches=30 --batch=256)
  E2E=(--config.model.name=vit_small --config.model.depth=0 "--config.data.image_size=(256,128)"
       "--config.model.pos_grid=(16,8)" --config.data.pad=10 --config.data.num_ids_per_batch=32
       --config.model.compute_dtype=bfloat16 --config.data.num_workers=12
       --config.optim.epochs=30 --config.optim.warmup_epochs=3 --config.eval.every_epochs=0
       --config.log_every_steps=20 --config.checkpoint_every_steps=100000)
  TRAIN_FLAGS=(--peak_tflops=989)  # MFU vs the datasheet dense bf16 peak; the JSON also
  #                                   has the fraction of an 8192^3 matmul timed there (~790)
  LIMIT_TRAIN=100 LIMIT_E2E=180
else
  export JAX_PLATFORMS=cpu XLA_FLAGS=""  # one CPU device
  # A dry run: compile fast rather than run fast, and reuse compilations across parts (the tiny
  # ViT-B runs below are the tiny ViT-S programs).
  export JAX_DISABLE_MOST_OPTIMIZATIONS=1 JAX_COMPILATION_CACHE_DIR="$WORK/jax_cache"
  export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
  SMOKE=(tests/test_fused_attention.py::test_attention_implementation_by_backend_and_dtype)
  ATTN=("--batch=2 --tokens=17 --heads=2 --head_dim=8 --reps=1")
  TINY=(--set model.depth=1 --set model.width=64 --set model.num_heads=2)
  FT=(--batch=8 --steps=1 "${TINY[@]}" --set "data.image_size=(64,32)")
  PT_S=(--batch=2 --steps=1 "${TINY[@]}" --set "data.global_size=(64,32)"
        --set "data.local_size=(32,16)" --set data.num_local_crops=2 --set head.out_dim=64
        --set head.patch_out_dim=64 --set head.hidden_dim=32 --set head.bottleneck_dim=16)
  PT_B=("${PT_S[@]}" --set head.norm_last_layer=False)  # as ViT-S: the same program
  PIPE=(--workers=0 --batches=1 --batch=8)
  E2E=("--config.data.image_size=(64,32)" --config.data.num_ids_per_batch=4 --config.data.pad=4
       --config.model.width=64 --config.model.depth=1 --config.model.num_heads=2
       --config.model.patch_size=8 --config.model.patch_stride=8 "--config.model.pos_grid=(8,4)"
       --config.optim.epochs=1 --config.optim.warmup_epochs=0 --config.eval.batch_size=32
       --config.log_every_steps=2 --config.data.synthetic.num_train_ids=8
       --config.data.synthetic.num_test_ids=6 --config.data.synthetic.num_distractors=10
       --config.data.synthetic.num_junk=5 "--config.data.synthetic.images_per_id=(6,10)")
  TRAIN_FLAGS=(--matmul_n=256)  # the CPU peak is no figure here
  LIMIT_TRAIN=60 LIMIT_E2E=90
fi

attention() {
  local a
  for a in "${ATTN[@]}"; do
    # shellcheck disable=SC2086  # each entry is a list of flags
    "$PY" benchmarks/attention_core.py $a || return
  done
}
smoke() {
  PERSONVIT_TESTS_ON_DEVICE=1 "$PY" -m pytest -q -p no:cacheprovider \
    --junitxml="$WORK/smoke.xml" "${SMOKE[@]}" >&2
  local rc=$?
  "$PY" "$REPORT" junit "$WORK/smoke.xml"
  return $rc
}
train() { "$PY" benchmarks/train_step.py "${TRAIN_FLAGS[@]}" "$@"; }

e2e() {
  local t0=$SECONDS
  "$PY" -m personvit_jax.main --config=configs/finetune.py:synthetic --workdir="$WORK/e2e" \
    --config.data.data_dir="$WORK/data" "${E2E[@]}" >&2 || return
  "$PY" "$REPORT" finetune "$WORK/e2e" "$((SECONDS - t0))"
}

# What each part's `bash -c` needs of this script (arrays cannot be exported).
DEFS=$(declare -p PY REPORT WORK ATTN SMOKE E2E TRAIN_FLAGS
       declare -f install attention smoke train e2e 2>/dev/null)

[[ $MODE == gpu ]] && part install 90 install
part env 30 "$PY" "$REPORT" env
part attention 60 attention
part smoke 120 smoke
part train_finetune_vit_small "$LIMIT_TRAIN" train --stage=finetune --model=vit_small "${FT[@]}"
part train_finetune_vit_base "$LIMIT_TRAIN" train --stage=finetune --model=vit_base "${FT[@]}"
part train_pretrain_vit_small "$LIMIT_TRAIN" train --stage=pretrain --model=vit_small "${PT_S[@]}"
part train_pretrain_vit_base "$LIMIT_TRAIN" train --stage=pretrain --model=vit_base "${PT_B[@]}"
part finetune_e2e "$LIMIT_E2E" e2e

# Host-side only: on the CPU backend, so no worker can take GPU memory.
part input_pipeline 90 env JAX_PLATFORMS=cpu "$PY" benchmarks/input_pipeline.py --pipeline=both \
  --data_dir="$WORK/pipeline_data" "${PIPE[@]}"

# Remat last: the same models at the same batch, a memory trade-off, the least urgent figure.
part train_pretrain_vit_small_remat "$LIMIT_TRAIN" \
  train --stage=pretrain --model=vit_small --remat "${PT_S[@]}"
part train_pretrain_vit_base_remat "$LIMIT_TRAIN" \
  train --stage=pretrain --model=vit_base --remat "${PT_B[@]}"

# Everything in one file, each line tagged with the file it came from, then the table.
for f in "$OUT"/*.jsonl; do
  name=$(basename "$f" .jsonl)
  [[ $name == results ]] && continue
  "$PY" -c 'import json, sys
for line in open(sys.argv[1]):
    print(json.dumps({"file": sys.argv[2], **json.loads(line)}))' "$f" "$name"
done > "$WORK/results.jsonl" && mv "$WORK/results.jsonl" "$OUT/results.jsonl"
"$PY" "$REPORT" table "$OUT"
echo "total: $((SECONDS - START)) s; JSON in $OUT"
