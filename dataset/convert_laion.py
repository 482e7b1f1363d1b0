"""LAION's BLIP synthetic captions to a TSV for img2dataset (dataset/README_1_STAGE.md).

python convert_laion.py [laion_synthetic_filtered_large.json] [laion_synthetic_filtered_large.tsv]
"""

import sys
from pathlib import Path

from json_to_tsv import main

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the package is one folder up
    from minigpt4.common.cli import run_main

    run_main(
        lambda: main("laion_synthetic_filtered_large.json", "laion_synthetic_filtered_large.tsv"), "convert_laion.py"
    )
