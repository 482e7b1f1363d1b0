#!/usr/bin/env bash
# Download the CC3M+CC12M+SBU images of the TSV written by convert_cc_sbu.py into webdataset shards
# (cc_sbu_dataset/00000.tar, ...), with the reference's img2dataset parameters.
#
#   bash download_cc_sbu.sh [URL_LIST] [OUTPUT_FOLDER]
#
# Environment knobs: PROCESSES_COUNT, THREAD_COUNT, IMAGE_SIZE, ENABLE_WANDB (img2dataset_shards.sh).
set -euo pipefail

url_list=${1:-ccs_synthetic_filtered_large.tsv}
output_folder=${2:-cc_sbu_dataset}
source "$(dirname "${BASH_SOURCE[0]}")/img2dataset_shards.sh"
