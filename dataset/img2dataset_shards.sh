# Shared by download_laion.sh and download_cc_sbu.sh (sourced, not run): img2dataset with the
# reference's parameters, from the TSV $url_list into webdataset shards in $output_folder.
#
# Environment knobs (defaults are the reference's): PROCESSES_COUNT=16 THREAD_COUNT=128
# IMAGE_SIZE=256 ENABLE_WANDB=True (set ENABLE_WANDB=False to run without a wandb account).

if ! command -v img2dataset >/dev/null; then
    echo "img2dataset is not installed: pip install img2dataset (a download tool, not needed for training)" >&2
    exit 1
fi
img2dataset --url_list "$url_list" --input_format "tsv" \
    --url_col "url" --caption_col "caption" \
    --output_format webdataset --output_folder "$output_folder" \
    --processes_count "${PROCESSES_COUNT:-16}" --thread_count "${THREAD_COUNT:-128}" \
    --image_size "${IMAGE_SIZE:-256}" --enable_wandb "${ENABLE_WANDB:-True}"
