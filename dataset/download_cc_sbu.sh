#!/usr/bin/env bash
# Download the CC3M+CC12M+SBU images of the TSV written by convert_cc_sbu.py into webdataset
# shards (cc_sbu_dataset/00000.tar, ...), with the reference's img2dataset parameters.
#
#   bash download_cc_sbu.sh [URL_LIST] [OUTPUT_FOLDER]
#
# Environment knobs (defaults are the reference's): PROCESSES_COUNT=16 THREAD_COUNT=128
# IMAGE_SIZE=256 ENABLE_WANDB=True (set ENABLE_WANDB=False to run without a wandb account).
set -euo pipefail

url_list=${1:-ccs_synthetic_filtered_large.tsv}
output_folder=${2:-cc_sbu_dataset}

img2dataset --url_list "$url_list" --input_format "tsv" \
    --url_col "url" --caption_col "caption" \
    --output_format webdataset --output_folder "$output_folder" \
    --processes_count "${PROCESSES_COUNT:-16}" --thread_count "${THREAD_COUNT:-128}" \
    --image_size "${IMAGE_SIZE:-256}" --enable_wandb "${ENABLE_WANDB:-True}"
