"""CC3M+CC12M+SBU's BLIP synthetic captions to a TSV for img2dataset (dataset/README_1_STAGE.md).

python convert_cc_sbu.py [ccs_synthetic_filtered_large.json] [ccs_synthetic_filtered_large.tsv]
"""

from json_to_tsv import main

if __name__ == "__main__":
    main("ccs_synthetic_filtered_large.json", "ccs_synthetic_filtered_large.tsv")
