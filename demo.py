"""The MiniGPT-4 web demo.

    python demo.py --cfg-path eval_configs/minigpt4_eval.yaml --gpu-id 0
    python demo.py --cfg-path eval_configs/minigpt4_tiny_eval.yaml --device cpu

The page is served on http://127.0.0.1:7860 (``--host``/``--port``), reachable only from this
machine unless ``--host 0.0.0.0`` or ``--share`` (a public gradio link) is given.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from minigpt4.common.cli import add_model_arguments, run_main

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The MiniGPT-4 web demo: chat about an image in the browser.")
    add_model_arguments(parser, default_device="cuda")
    parser.add_argument(
        "--gpu-id", type=int, default=0, help="the GPU to load the model on, when --device has no index (default: 0)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve the page on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve the page on (default: 7860)")
    parser.add_argument("--share", action="store_true", help="also publish the page through a public gradio link")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    # Imported once the arguments are parsed, so that --help answers without loading torch and gradio.
    from minigpt4.common.device import resolve_device
    from minigpt4.common.logger import setup_logger
    from minigpt4.conversation.demo_app import build_demo
    from minigpt4.conversation.launch import build_chat

    setup_logger()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own requests to the page
    device = resolve_device(args.device, local_rank=args.gpu_id)
    chat = build_chat(args.cfg_path, args.options, device, args.patch_generation)
    logger.info(
        "Serving on http://%s:%d%s",
        args.host,
        args.port,
        "" if args.share or args.host != "127.0.0.1" else " (this machine only; --host 0.0.0.0 or --share to open it)",
    )
    # gradio's own banner would point at launch(share=True); the --share flag is this script's way.
    demo = build_demo(chat).queue()
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, quiet=not args.share)


if __name__ == "__main__":
    run_main(main, "demo.py")
