#!/usr/bin/env bash
# The README's performance rows for one device: test/benchmark.py for each stage, plain, with
# run.length_grouping's batches and compiled, one JSON and one log per run under OUT_DIR; the
# table rows last.
#
#   bash test/benchmark_table.sh                       # 7B, both stages, on the first CUDA device
#   DEVICE=npu bash test/benchmark_table.sh            # Ascend
#   SIZE=tiny DEVICE=cpu STEPS=2 bash test/benchmark_table.sh   # a check in seconds
#
# Knobs (environment variables): SIZE (7b), DEVICE (cuda), STAGES ("1 2"), VARIANTS
# ("plain grouped compiled"), STEPS (16, a multiple of GROUPING so every grouped batch is timed
# equally often), GROUPING (16), OUT_DIR (output/benchmark), PYTHON (.venv/bin/python, else python),
# EXTRA (more benchmark.py arguments, e.g. "--dtype fp16").
set -euo pipefail

: "${SIZE:=7b}" "${DEVICE:=cuda}" "${STAGES:=1 2}" "${VARIANTS:=plain grouped compiled}"
: "${STEPS:=16}" "${GROUPING:=16}" "${OUT_DIR:=output/benchmark}" "${EXTRA:=}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi

mkdir -p "$OUT_DIR"
rows=()
for stage in $STAGES; do
    for variant in $VARIANTS; do
        case "$variant" in
            plain) args=() ;;
            grouped) args=(--length-grouping "$GROUPING") ;;
            compiled) args=(--compile --warmup 5) ;;
            *) echo "unknown variant '$variant' (plain, grouped, compiled)" >&2; exit 2 ;;
        esac
        name="${SIZE}_stage${stage}_${variant}"
        echo "=== $name"
        # EXTRA is a list of arguments; args[@]+ keeps an empty array valid under set -u on old bash
        # shellcheck disable=SC2086
        "$PYTHON" test/benchmark.py --size "$SIZE" --stage "$stage" --device "$DEVICE" --steps "$STEPS" \
            ${args[@]+"${args[@]}"} $EXTRA --json "$OUT_DIR/$name.json" 2>&1 | tee "$OUT_DIR/$name.log"
        rows+=("$(grep '^| ' "$OUT_DIR/$name.log")")
    done
done
echo "| Stage | Setup | Device | Batch/device | TokensPerSec (total) | per device | Date |"
printf '%s\n' "${rows[@]}"
