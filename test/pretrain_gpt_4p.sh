#!/usr/bin/env bash
# Stage 1 (pretraining) on 4 devices of one node, with the Ascend port's settings: 4 epochs of
# 8000 iterations at batch 40 per device (the same 320,000 samples per device and epoch as the
# reference's 5000 x 64). Works on GPU, NPU and, with a tiny config, on CPU:
#
#   bash test/pretrain_gpt_4p.sh
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash test/pretrain_gpt_4p.sh   # then NODE_RANK=1 on the other
#   GPUS_PER_NODE=2 CONFIG=train_configs/minigpt4_stage1_tiny.yaml OPTIONS="run.iters_per_epoch=4" \
#       bash test/pretrain_gpt_4p.sh run.max_epoch=1
#
# Knobs (environment variables) are listed in test/launch_train.sh; the last line printed is
# "summary: TokensPerSec=... samples/s=... step_time=...".
set -euo pipefail

: "${GPUS_PER_NODE:=4}" "${MASTER_PORT:=12345}"
DEFAULT_CONFIG=train_configs/minigpt4_stage1_pretrain.yaml
DEFAULT_OPTIONS="run.max_epoch=4 run.iters_per_epoch=8000 run.batch_size_train=40 run.batch_size_eval=40"
source "$(dirname "$0")/launch_train.sh"
