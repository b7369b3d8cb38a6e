#!/usr/bin/env bash
# One-GPU check (<= 10 minutes on one H100): the SmolLM2 knowledge-incorporation table at the paper's sleep budget
# and the GPU rows of `make bench`, results under one folder and printed as tables.
#
#   experiments/gpu_check.sh [--tiny] [OUTDIR]        # OUTDIR defaults to $OUT, else runs/gpu_check
#
# Knowledge incorporation (experiments/knowledge_incorporation.py, configs/sleep.py: SmolLM2-135M-Instruct with
# 2 x rank-16 expert pools): 3 held-out passages, seed 0, rows base (before), fine-tuning, SEAL-style, sleep KS, sleep
# KS + Dreaming, at Table 5's sleep budget: 100 Knowledge Seeding updates of batch 32 = sleep.ks.prompts_per_step 8
# x sleep.ks.group_size 4 student completions. Bench (experiments/benchmarks/suite.py --sections=gpu): a bfloat16
# AdamW train step of a Llama-3.2-1B-shaped random model, batch 8 x 2048, its TFLOP/s and MFU against the measured
# bf16 matmul peak and the device's data-sheet peak, naming the device.
#
# --tiny (or GPU_CHECK_TINY=1): the same script on the tiny random model and the byte tokenizer (configs/sleep.py:smoke),
# 1 passage, 4 KS updates of 2 x 2, 1 Dreaming round, the bench row at tiny size on any backend: checks the script on a CPU in ~2 min.
# Each stage has a time limit (GPU_CHECK_KI_S, GPU_CHECK_BENCH_S seconds); a stage that fails or runs out is
# reported and the script goes on, exiting non-zero at the end; a knowledge-incorporation run cut by its limit is
# tabled over the passages that finished (results.json is saved after each).
set -uo pipefail
cd "$(dirname "$0")/.."

TINY=${GPU_CHECK_TINY:-0}
DIR=""
for a in "$@"; do
  case "$a" in
    --tiny) TINY=1 ;;
    -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $a (use --tiny and/or an output folder)" >&2; exit 2 ;;
    *) DIR="$a" ;;
  esac
done
DIR=${DIR:-${OUT:-runs/gpu_check}}
mkdir -p "$DIR"
PY=${PYTHON:-python}
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "$TINY" = 1 ]; then
  KI_CONFIG=configs/sleep.py:smoke
  KI_ARGS=(--passages=1 --config.sleep.ks.steps=4 --config.sleep.ks.prompts_per_step=2 --config.sleep.ks.group_size=2
           --config.sleep.dream.rounds=1)
  BENCH_ARGS=(--gpu_size=tiny --gpu_any_backend --reps=1)
  KI_S=${GPU_CHECK_KI_S:-480}; BENCH_S=${GPU_CHECK_BENCH_S:-120}
else
  KI_CONFIG=configs/sleep.py
  KI_ARGS=(--passages=3 --config.sleep.ks.steps=100 --config.sleep.ks.prompts_per_step=8 --config.sleep.ks.group_size=4)
  BENCH_ARGS=(--gpu_size=1b --reps=3)
  KI_S=${GPU_CHECK_KI_S:-420}; BENCH_S=${GPU_CHECK_BENCH_S:-150}
fi

status=0
if ! dev=$("$PY" -c 'import jax; d = jax.devices()[0]; print(jax.default_backend(), len(jax.devices()), "x", d.device_kind)'); then
  echo "gpu_check.sh: $PY cannot import jax; set PYTHON=/path/to/venv/bin/python (make setup creates .venv)" >&2
  exit 2
fi
echo "== gpu_check: $dev -> $DIR"
t0=$SECONDS
timeout "$KI_S" "$PY" -m experiments.knowledge_incorporation --config="$KI_CONFIG" "${KI_ARGS[@]}" \
    --seeds=0 --variants=finetune,seal,ks,sleep --workdir="$DIR/ki" > "$DIR/ki.log" 2>&1
rc=$?; echo "knowledge incorporation: exit $rc in $((SECONDS - t0)) s (log $DIR/ki.log)"
[ $rc -ne 0 ] && { status=1; tail -20 "$DIR/ki.log"; }
if [ $rc -ne 0 ] && [ -f "$DIR/ki/results.json" ]; then   # results.json is saved after each passage: table what finished
  echo "(partial table: the passages that finished within ${KI_S} s)"
  cp "$DIR/ki/results.json" "$DIR/ki_partial.json"
  "$PY" -m experiments.knowledge_incorporation --from_results="$DIR/ki_partial.json" --workdir="$DIR/ki" \
      --variants=finetune,seal,ks,sleep >> "$DIR/ki.log" 2>&1
fi

t0=$SECONDS
timeout "$BENCH_S" "$PY" -m experiments.benchmarks.suite --sections=gpu --skip_hf "${BENCH_ARGS[@]}" \
    --out="$DIR/bench.json" > "$DIR/bench.log" 2>&1
rc=$?; echo "bench (gpu rows): exit $rc in $((SECONDS - t0)) s (log $DIR/bench.log)"
[ $rc -ne 0 ] && { status=1; tail -20 "$DIR/bench.log"; }

echo
echo "== knowledge incorporation ($KI_CONFIG; rows: before = base, finetune, seal = SEAL-style, ks = sleep KS, sleep = KS + Dreaming)"
if [ -f "$DIR/ki/table.md" ]; then cat "$DIR/ki/table.md"; else echo "(no table: see $DIR/ki.log)"; status=1; fi
echo
echo "== GPU bench row"
if [ -f "$DIR/bench.json" ]; then
  "$PY" - "$DIR/bench.json" <<'PYEOF'
import json, sys
g = json.load(open(sys.argv[1])).get('gpu')
if not g:
  print('(no gpu row: no GPU backend)')
else:
  spec = f"{100 * g['mfu_spec']:.1f}% of {g['spec_bf16_tflops']:.0f}" if g.get('spec_bf16_tflops') else 'n/a'
  print('| device | model | batch | step s | TFLOP/s | MFU vs measured bf16 matmul peak | MFU vs data-sheet bf16 peak |')
  print('|---|---|---|---:|---:|---|---|')
  print(f"| {g['device']} ({g.get('backend', '?')}) | {g['params_b'] * 1e3:.1f}M params | {g['batch'][0]}x{g['batch'][1]} | "
        f"{g['step_s']:.3f} | {g['tflops']:.2f} | {100 * g['mfu']:.1f}% of {g['bf16_matmul_peak_tflops']:.3g} | {spec} |")
PYEOF
else
  echo "(no bench.json: see $DIR/bench.log)"; status=1
fi
exit $status
