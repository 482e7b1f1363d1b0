"""Batch inference without the browser: images and questions in, answers out as JSONL.

    python inference.py --cfg-path eval_configs/minigpt4_eval.yaml --input photos/ \
        --question "Describe this image in detail." --output answers.jsonl

See minigpt4/conversation/batch_inference.py for the input forms and every option.
"""

from minigpt4.common.cli import run_main
from minigpt4.conversation.batch_inference import main

if __name__ == "__main__":
    run_main(main, "inference.py")
