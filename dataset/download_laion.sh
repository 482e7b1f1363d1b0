#!/usr/bin/env bash
# Download the LAION images of the TSV written by convert_laion.py into webdataset shards
# (laion_dataset/00000.tar, ...), with the reference's img2dataset parameters.
#
#   bash download_laion.sh [URL_LIST] [OUTPUT_FOLDER]
#
# Environment knobs: PROCESSES_COUNT, THREAD_COUNT, IMAGE_SIZE, ENABLE_WANDB (img2dataset_shards.sh).
set -euo pipefail

url_list=${1:-laion_synthetic_filtered_large.tsv}
output_folder=${2:-laion_dataset}
source "$(dirname "${BASH_SOURCE[0]}")/img2dataset_shards.sh"
