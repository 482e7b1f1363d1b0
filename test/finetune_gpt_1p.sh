#!/usr/bin/env bash
# Stage 2 (fine-tuning on cc_sbu_align) on 1 device, with the Ascend port's settings: 2 epochs of
# 240 iterations at batch 10. Set model.ckpt in the config (or pass model.ckpt=...) to the stage-1
# checkpoint first. Works on GPU, NPU and, with a tiny config, on CPU:
#
#   bash test/finetune_gpt_1p.sh model.ckpt=output/minigpt4_stage1_pretrain/<job>/checkpoint_3.pth
#
# Knobs (environment variables) are listed in test/launch_train.sh; the last line printed is
# "summary: TokensPerSec=... samples/s=... step_time=...".
set -euo pipefail

: "${GPUS_PER_NODE:=1}" "${MASTER_PORT:=12346}"
DEFAULT_CONFIG=train_configs/minigpt4_stage2_finetune.yaml
DEFAULT_OPTIONS="run.max_epoch=2 run.iters_per_epoch=240 run.batch_size_train=10 run.batch_size_eval=10"
source "$(dirname "$0")/launch_train.sh"
