"""Tiny benchmark fixtures in each benchmark's real file format (a handful of questions, images
written here), and eval YAMLs that run them with the tiny random model.

``write_fixtures(root)`` lays out ``root`` as a user's data folder would be and returns, per
benchmark, the ``build_info`` that points at it; ``tiny_eval_config(name, ...)`` writes a YAML
whose ``datasets:`` section is ``eval_configs/<name>.yaml``'s (its prompt and generation
settings) and whose model is the tiny default's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from PIL import Image
from tiny_assets import REPO_ROOT, tiny_path_options

BENCHMARKS = (
    "coco_caption",
    "nocaps",
    "vqav2",
    "okvqa",
    "vizwiz",
    "textvqa",
    "gqa",
    "pope",
    "vsr",
    "hateful_memes",
)
COLOURS = ((200, 30, 30), (30, 160, 60), (40, 70, 210), (230, 200, 30), (20, 20, 20), (240, 240, 240))
COCO_IDS = (391895, 522418, 184613, 318219, 554625)


def write_image(path: Path, index: int, image_format: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (40 + 4 * index, 32), COLOURS[index % len(COLOURS)])
    image.paste(COLOURS[(index + 2) % len(COLOURS)], (4, 4, 20, 20))
    image.save(path, format=image_format)


def write_json(path: Path, content: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=1))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def ten(*answers: str) -> list[str]:
    """Ten human answers: the given ones, the last repeated."""
    return [*answers, *[answers[-1]] * (10 - len(answers))]


VQA_QUESTIONS = (
    ("What colour is the square?", ("red", "red", "red", "dark red")),
    ("How many squares are there?", ("one", "1", "1")),
    ("Is it a photo?", ("no", "no", "yes")),
    ("What is in the corner?", ("a square", "square", "box")),
    ("What is the background?", ("green",)),
)


def coco_val2014(root: Path) -> Path:
    folder = root / "coco" / "images" / "val2014"
    for index, image_id in enumerate(COCO_IDS):
        write_image(folder / f"COCO_val2014_{image_id:012d}.jpg", index)
    return folder


def vqa_files(folder: Path, questions_name: str, annotations_name: str, subtype: str) -> tuple[Path, Path]:
    questions, annotations = [], []
    for index, (question, answers) in enumerate(VQA_QUESTIONS):
        image_id, question_id = COCO_IDS[index], COCO_IDS[index] * 1000 + index
        questions.append({"image_id": image_id, "question": question, "question_id": question_id})
        humans = ten(*answers)
        annotations.append(
            {
                "question_type": question.split(" ")[0].lower(),
                "multiple_choice_answer": humans[0],
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(humans)
                ],
                "image_id": image_id,
                "answer_type": "number" if "How many" in question else "other",
                "question_id": question_id,
            }
        )
    header = {"info": {}, "license": {}, "data_subtype": subtype, "data_type": "mscoco"}
    return (
        write_json(folder / questions_name, {**header, "task_type": "Open-Ended", "questions": questions}),
        write_json(folder / annotations_name, {**header, "annotations": annotations}),
    )


def write_fixtures(root: Path) -> dict[str, dict[str, Any]]:
    """Every benchmark's files under ``root``; returns ``{benchmark: build_info}``."""
    val2014 = coco_val2014(root)
    info: dict[str, dict[str, Any]] = {}

    karpathy = [
        {"image": f"val2014/COCO_val2014_{image_id:012d}.jpg", "caption": [f"a picture number {i}", "a square"] * 2}
        for i, image_id in enumerate(COCO_IDS[:3])
    ]
    coco_test = write_json(root / "coco" / "annotations" / "coco_karpathy_test.json", karpathy)
    info["coco_caption"] = {"annotations": {"test": str(coco_test)}, "images": str(root / "coco" / "images")}

    nocaps_images = []
    for index, name in enumerate(("0013ea2087020901", "00223d0ae3d8d5a6", "0054c91397f2fe05")):
        write_image(root / "nocaps" / "images" / f"{name}.jpg", index)
        domain = ("in-domain", "near-domain", "out-domain")[index]
        nocaps_images.append({"id": index, "file_name": f"{name}.jpg", "open_images_id": name, "domain": domain,
                              "height": 32, "width": 40, "coco_url": ""})  # fmt: skip
    nocaps_annotations = [
        {"image_id": i, "id": 10 * i + j, "caption": f"caption {j} of image {i}"} for i in range(3) for j in range(10)
    ]
    nocaps = write_json(
        root / "nocaps" / "nocaps_val_4500_captions.json",
        {"licenses": [], "info": {}, "images": nocaps_images, "annotations": nocaps_annotations},
    )
    info["nocaps"] = {"annotations": {"val": str(nocaps)}, "images": str(root / "nocaps" / "images")}

    questions, annotations = vqa_files(
        root / "vqav2", "v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json", "val2014"
    )
    info["vqav2"] = {
        "annotations": {"questions": str(questions), "annotations": str(annotations)},
        "images": str(val2014),
    }
    questions, annotations = vqa_files(
        root / "okvqa", "OpenEnded_mscoco_val2014_questions.json", "mscoco_val2014_annotations.json", "val2014"
    )
    info["okvqa"] = {
        "annotations": {"questions": str(questions), "annotations": str(annotations)},
        "images": str(val2014),
    }

    vizwiz = []
    for index, (question, answers) in enumerate(VQA_QUESTIONS[:4]):
        name = f"VizWiz_val_{index:08d}.jpg"
        write_image(root / "vizwiz" / "val" / name, index)
        vizwiz.append(
            {
                "image": name,
                "question": question,
                "answers": [{"answer": a, "answer_confidence": "yes"} for a in ten(*answers)],
                "answer_type": "other",
                "answerable": 1,
            }
        )
    info["vizwiz"] = {"annotations": {"val": str(write_json(root / "vizwiz" / "val.json", vizwiz))},
                      "images": str(root / "vizwiz" / "val")}  # fmt: skip

    textvqa = []
    for index, (question, answers) in enumerate(VQA_QUESTIONS[:4]):
        image_id = f"{index:04d}c91397f2fe05"
        write_image(root / "textvqa" / "train_images" / f"{image_id}.jpg", index)
        textvqa.append({"question": question, "image_id": image_id, "image_classes": ["Poster"],
                        "flickr_original_url": "", "flickr_300k_url": "", "image_width": 40, "image_height": 32,
                        "answers": ten(*answers), "question_tokens": question.lower().split(),
                        "question_id": 34602 + index, "set_name": "val"})  # fmt: skip
    textvqa_file = write_json(
        root / "textvqa" / "TextVQA_0.5.1_val.json",
        {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": textvqa},
    )
    info["textvqa"] = {"annotations": {"val": str(textvqa_file)}, "images": str(root / "textvqa" / "train_images")}

    gqa = {}
    for index, (question, answers) in enumerate(VQA_QUESTIONS[:4]):
        image_id = f"n{288870 + index}"
        write_image(root / "gqa" / "images" / f"{image_id}.jpg", index)
        gqa[str(20968078 + index)] = {
            "semantic": [], "entailed": [], "equivalent": [str(20968078 + index)], "question": question,
            "imageId": image_id, "isBalanced": True, "groups": {"global": None, "local": "14-table_color"},
            "answer": answers[0], "semanticStr": "", "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
            "types": {"detailed": "existThatC", "semantic": "attr" if index % 2 else "obj",
                      "structural": "query" if index % 2 else "verify"},
            "fullAnswer": f"It is {answers[0]}.",
        }  # fmt: skip
    gqa_file = write_json(root / "gqa" / "testdev_balanced_questions.json", gqa)
    info["gqa"] = {"annotations": {"testdev": str(gqa_file)}, "images": str(root / "gqa" / "images")}

    pope = {}
    for split_index, split in enumerate(("adversarial", "popular", "random")):
        rows = [
            {"question_id": i + 1, "image": f"COCO_val2014_{COCO_IDS[(i + split_index) % 5]:012d}.jpg",
             "text": f"Is there a {('dog', 'car', 'cup', 'kite')[i]} in the image?", "label": ("yes", "no")[i % 2]}
            for i in range(4)
        ]  # fmt: skip
        pope[split] = str(write_jsonl(root / "pope" / f"coco_pope_{split}.json", rows))
    info["pope"] = {"annotations": pope, "images": str(val2014)}

    vsr = []
    for index, (caption, label) in enumerate((("The cat is left of the dog.", 1), ("The cup is on the car.", 0),
                                              ("The kite is above the person.", 1))):  # fmt: skip
        name = f"{85637 + index:012d}.jpg"
        write_image(root / "vsr" / "images" / name, index)
        vsr.append({"image": name, "image_link": "", "caption": caption, "label": label, "relation": "left of",
                    "annotator_id": 0, "vote_true_validator_id": [], "vote_false_validator_id": []})  # fmt: skip
    info["vsr"] = {"annotations": {"test": str(write_jsonl(root / "vsr" / "test.jsonl", vsr))},
                   "images": str(root / "vsr" / "images")}  # fmt: skip

    memes = []
    for index, (text, label) in enumerate((("a happy dog", 0), ("a mean sentence", 1), ("a cat on a mat", 0))):
        meme_id = 8291 + index
        write_image(root / "hateful_memes" / "img" / f"{meme_id:05d}.png", index, "PNG")
        memes.append({"id": meme_id, "img": f"img/{meme_id:05d}.png", "label": label, "text": text})
    info["hateful_memes"] = {"annotations": {"dev": str(write_jsonl(root / "hateful_memes" / "dev.jsonl", memes))},
                             "images": str(root / "hateful_memes")}  # fmt: skip
    return info


def tiny_model_section(tiny: Path) -> dict[str, Any]:
    """The tiny default's model (eval_configs/minigpt4_tiny_eval.yaml) with its weights in ``tiny``."""
    model = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "eval_configs" / "minigpt4_tiny_eval.yaml").model)
    for option in tiny_path_options(tiny, ()):
        key, value = option.split("=", 1)
        model[key.removeprefix("model.")] = value
    return model


def tiny_eval_config(
    config: str, build_info: dict[str, Any], tiny: Path, out: Path, *, batch_size: int = 2, max_new_tokens: int = 8
) -> Path:
    """A YAML: ``eval_configs/<config>.yaml``'s benchmark with ``build_info``, the tiny model, 56 px,
    and at most ``max_new_tokens`` (the random tiny LLM never stops on its own)."""
    source = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "eval_configs" / f"{config}.yaml"))
    (name, dataset), *_ = source["datasets"].items()
    dataset["benchmark"]["max_new_tokens"] = max_new_tokens
    dataset["build_info"] = build_info
    dataset["vis_processor"] = {"eval": {"name": "blip2_image_eval", "image_size": 56}}
    config = {
        "model": tiny_model_section(tiny),
        "datasets": {name: dataset},
        "run": {**source["run"], "batch_size_eval": batch_size, "num_workers": 0, "output_dir": str(out)},
    }
    path = out.with_name(f"{out.name}.yaml")
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    return path


__all__ = ["BENCHMARKS", "tiny_eval_config", "write_fixtures"]
