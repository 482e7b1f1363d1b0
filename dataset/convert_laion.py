"""LAION's BLIP synthetic captions to a TSV for img2dataset (dataset/README_1_STAGE.md).

python convert_laion.py [laion_synthetic_filtered_large.json] [laion_synthetic_filtered_large.tsv]
"""

from json_to_tsv import main

if __name__ == "__main__":
    main("laion_synthetic_filtered_large.json", "laion_synthetic_filtered_large.tsv")
