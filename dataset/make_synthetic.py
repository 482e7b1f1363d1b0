"""Write small datasets in exactly the formats MiniGPT-4 trains on, from scikit-image's photos.

    python dataset/make_synthetic.py --out data/synthetic

writes, in a few seconds:

* ``OUT/laion/`` and ``OUT/cc_sbu/``: img2dataset webdataset output, i.e. shards ``00000.tar``,
  ``00001.tar``, ... holding ``<key>.jpg``, ``<key>.txt`` (the caption) and ``<key>.json``
  (img2dataset's metadata with ``caption``), each with ``NNNNN_stats.json`` and, when pyarrow is
  installed, ``NNNNN.parquet``. Images are squares of ``--size`` pixels, fitted with a black
  border as img2dataset's default ``resize_mode: border`` does;
* ``OUT/cc_sbu_align/``: ``filter_cap.json`` (``{"annotations": [{"image_id", "caption"}]}``) and
  ``image/<image_id>.jpg``, with multi-sentence descriptions like the stage-2 data.

Every sample is a real photo that ships with scikit-image (astronaut, chelsea the cat, coffee,
rocket, ...), varied by a random crop and a horizontal flip, with one of the captions written for
that photo below. The same ``--seed`` gives the same files.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: the package is one folder up

from minigpt4.datasets.shard_writer import ShardSample, jpeg_bytes, write_img2dataset_shards


@dataclass(frozen=True)
class Photo:
    loader: str  # the skimage.data function
    captions: tuple[str, ...]  # short web-style captions (stage 1)
    description: str  # a detailed description (stage 2)


PHOTOS = (
    Photo(
        "astronaut",
        (
            "A smiling astronaut in an orange flight suit, holding her helmet.",
            "portrait of a woman astronaut next to the U.S. flag and a space shuttle model",
            "NASA astronaut posing for her official photo",
        ),
        "The image shows a smiling woman with short light-brown hair wearing an orange pressure suit "
        "with mission patches. She holds a white and black helmet in her lap. Behind her on the left "
        "is the flag of the United States, and on the right stands a model of a space shuttle on its "
        "launch stack. The photo looks like an official portrait.",
    ),
    Photo(
        "chelsea",
        (
            "close-up of a tabby cat with green eyes",
            "An orange tabby cat looking at the camera!",
            "a curious cat face with long whiskers",
        ),
        "This is a close-up photo of a tabby cat with orange and brown striped fur. The cat has large "
        "green-yellow eyes, a pink nose and long white whiskers, and it is looking slightly past the "
        "camera with a calm, curious expression. The background is blurred.",
    ),
    Photo(
        "coffee",
        (
            "a cup of espresso on a red saucer",
            "Coffee cup with a spoon on a wooden table.",
            "espresso with crema served in a red cup",
        ),
        "The picture shows a red cup of espresso with a light brown crema on top, standing on a "
        "matching red saucer. A small silver spoon rests on the saucer next to the cup. The cup is on "
        "a dark wooden table, photographed from above at an angle.",
    ),
    Photo(
        "rocket",
        (
            "a rocket on the launch pad at dusk",
            "Rocket standing between launch towers under a blue evening sky.",
            "launch site lit up at night",
        ),
        "A tall white rocket stands on its launch pad in the evening. It is surrounded by several "
        "lattice towers, and bright lights at the base of the pad glow against the deep blue sky. "
        "The scene is calm, and the rocket seems ready for launch.",
    ),
    Photo(
        "camera",
        (
            "black and white photo of a man with a camera on a tripod",
            "A photographer in a dark coat looking through his camera.",
            "cameraman standing on a lawn",
        ),
        "This black and white photograph shows a man in a dark coat standing on a grassy field. He "
        "is looking through a camera mounted on a tripod, adjusting it with his hand. Buildings and "
        "a tower can be seen far away in the background.",
    ),
    Photo(
        "coins",
        (
            "old coins arranged in rows",
            "A collection of ancient coins on a dark background.",
            "grey photo of many silver coins",
        ),
        "The image shows about two dozen old coins laid out in neat rows on a dark surface. They are "
        "photographed in grey tones, and many show faces or figures in relief. Their sizes differ a "
        "little, and some are worn at the edges.",
    ),
    Photo(
        "hubble_deep_field",
        (
            "deep space image full of distant galaxies",
            "Hubble deep field: thousands of galaxies in a dark sky.",
            "colorful galaxies scattered across black space",
        ),
        "This is an astronomical image of a small patch of the night sky. Against the black "
        "background there are many tiny points and smudges of light in white, yellow, orange and "
        "blue. Almost every one of them is a distant galaxy rather than a star.",
    ),
    Photo(
        "immunohistochemistry",
        (
            "microscope image of stained tissue",
            "Tissue section with brown and blue stained cells.",
            "histology slide under a microscope",
        ),
        "The picture is a microscope view of a thin tissue section. Curved bands of cells are stained "
        "brown, and the space between them is filled with pale blue cell nuclei. The pattern is "
        "typical of an immunohistochemistry stain used in pathology.",
    ),
    Photo(
        "page",
        (
            "a page of printed text about image segmentation",
            "Scanned book page with a heading and a code example.",
            "grey photo of printed text",
        ),
        "The image shows part of a printed page. At the top is the heading 'Region-based "
        "segmentation', followed by a paragraph that explains how markers for coins and background "
        "are chosen. The last line is a short line of program code. The lighting is uneven.",
    ),
    Photo(
        "moon",
        (
            "grey surface of the moon with craters",
            "Close view of a cratered lunar landscape.",
            "moon surface photographed from above",
        ),
        "This grey image shows a patch of a rocky surface seen from above, with a few small round "
        "craters and darker spots. The light comes from one side, so every crater casts a short "
        "shadow. It looks like a view of the moon.",
    ),
    Photo(
        "horse",
        (
            "silhouette of a horse",
            "A black horse shape on a white background.",
            "simple drawing of a standing horse",
        ),
        "The picture is a black silhouette of a horse standing sideways on a plain white "
        "background. Its head is raised, its tail hangs down, and all four legs are visible. There "
        "are no other details or colors.",
    ),
    Photo(
        "logo",
        (
            "the scikit-image logo",
            "A round green and orange logo with a snake.",
            "logo with a snake drawn over two colored halves",
        ),
        "The image is a round logo split into a green upper half and an orange lower half by a "
        "curved white line. A drawing of a snake crosses both halves, shown in fine dark lines on "
        "the green side and as a photo texture on the orange side.",
    ),
    Photo(
        "retina",
        (
            "photo of the back of a human eye",
            "Retina image with red blood vessels.",
            "fundus photograph of a retina",
        ),
        "This is a medical photograph of the inside of an eye. The round image is orange-red, with "
        "dark red blood vessels branching out from a bright yellow spot on the left, the optic disc. "
        "A darker area near the middle marks the macula.",
    ),
    Photo(
        "colorwheel",
        (
            "a color wheel",
            "Circle showing every hue with white at the center.",
            "rainbow colored disc on black",
        ),
        "The image shows a round color wheel on a black background. The hues change around the "
        "circle from red through yellow, green, cyan and blue to magenta, and they fade to white "
        "toward the center.",
    ),
    Photo(
        "stereo_motorcycle",
        (
            "a red motorcycle parked in a garage",
            "Red and black motorbike in a workshop.",
            "motorcycle standing next to shelves and boxes",
        ),
        "A red motorcycle with a black seat and chrome engine stands inside a garage. Behind it are "
        "shelves with cardboard boxes and tools, and a wooden bench stands on the left. The floor is "
        "grey concrete.",
    ),
    Photo(
        "text",
        (
            "handwritten math on a chalkboard",
            "Equations written in chalk.",
            "photo of formulas on a blackboard",
        ),
        "The picture shows a chalkboard, photographed at an angle, covered with handwritten "
        "mathematics. There are several lines of formulas with brackets, plus signs and numbers. The "
        "lighting is soft and the board is grey.",
    ),
    Photo(
        "brick",
        (
            "a brick wall",
            "Grey bricks laid in a regular pattern.",
            "texture of a brick pavement",
        ),
        "This grey image shows a surface made of long rectangular bricks laid in staggered rows. "
        "The joints between them are narrow and darker. The pattern fills the whole picture.",
    ),
    Photo(
        "grass",
        (
            "close-up of grass",
            "Green grass seen from above, in grey.",
            "texture of a lawn",
        ),
        "The image is a close view of grass, shown in grey tones. Thin blades point in many "
        "directions and overlap, so the picture looks like a dense, even texture with no single "
        "subject.",
    ),
    Photo(
        "gravel",
        (
            "small stones of gravel",
            "A gravel path seen from above.",
            "texture of many little pebbles",
        ),
        "This grey photo shows a layer of gravel seen from above. Hundreds of small angular stones "
        "lie close together, each with a light top and a dark shadow, forming a rough texture.",
    ),
)


def _load_photo(photo: Photo) -> Image.Image:
    pixels = getattr(skdata, photo.loader)()
    if isinstance(pixels, tuple):  # stereo_motorcycle: (left, right, disparity)
        pixels = pixels[0]
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    return Image.fromarray(pixels).convert("RGB")


def _vary(image: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    """A random crop of 60-100% of each side, flipped left-right half of the time."""
    width, height = image.size
    crop_w, crop_h = int(width * rng.uniform(0.6, 1.0)), int(height * rng.uniform(0.6, 1.0))
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    image = image.crop((left, top, left + crop_w, top + crop_h))
    flipped = rng.random() < 0.5
    if flipped:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image, f"crop={left},{top},{crop_w},{crop_h}{'&flip' if flipped else ''}"


def _fit(image: Image.Image, size: int, square: bool) -> Image.Image:
    """Shrink so that the longer side is ``size``; with ``square``, centre the result on a black
    square (img2dataset's border mode)."""
    image = image.copy()
    image.thumbnail((size, size), Image.Resampling.BICUBIC)
    if not square:
        return image
    canvas = Image.new("RGB", (size, size))
    canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return canvas


def _write_parquet(path: Path, records: list[dict]) -> bool:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    pq.write_table(pa.Table.from_pylist(records), path)
    return True


def write_shards(
    out: Path, photos: list[Image.Image], rng: random.Random, *, count: int, size: int, shard_size: int
) -> dict[str, int | bool]:
    """img2dataset's webdataset output with ``count`` samples in shards of ``shard_size``."""

    def sample(number: int, _key: str) -> ShardSample:
        photo_index = number % len(PHOTOS)
        image, variation = _vary(photos[photo_index], rng)
        jpg = jpeg_bytes(_fit(image, size, square=True))
        caption = rng.choice(PHOTOS[photo_index].captions)
        url = f"skimage://{PHOTOS[photo_index].loader}?{variation}"
        return ShardSample(jpg, caption, url, size=(size, size), original_size=image.size)

    shards = write_img2dataset_shards(out, count, shard_size, sample)
    written = [_write_parquet(out / f"{shard_id:05d}.parquet", records) for shard_id, records in enumerate(shards)]
    return {"shards": len(shards), "samples": count, "parquet": all(written)}


def write_align(out: Path, photos: list[Image.Image], count: int, size: int, rng: random.Random) -> dict[str, int]:
    """A ``cc_sbu_align`` folder with ``count`` described images."""
    (out / "image").mkdir(parents=True, exist_ok=True)
    annotations = []
    for index in range(count):
        photo_index = index % len(PHOTOS)
        image, _ = _vary(photos[photo_index], rng)
        image_id = str(index)
        _fit(image, size, square=False).save(out / "image" / f"{image_id}.jpg", format="JPEG", quality=95)
        annotations.append({"image_id": image_id, "caption": PHOTOS[photo_index].description})
    (out / "filter_cap.json").write_text(json.dumps({"annotations": annotations}, indent=1))
    return {"samples": count}


def make_synthetic(
    out: Path,
    *,
    size: int = 128,
    laion_samples: int = 240,
    cc_sbu_samples: int = 120,
    align_samples: int = 60,
    shard_size: int = 100,
    seed: int = 0,
) -> dict[str, dict[str, int | bool]]:
    """Write the three datasets under ``out``; returns what was written per dataset."""
    rng = random.Random(seed)
    photos = [_load_photo(photo) for photo in PHOTOS]
    return {
        "laion": write_shards(out / "laion", photos, rng, count=laion_samples, size=size, shard_size=shard_size),
        "cc_sbu": write_shards(out / "cc_sbu", photos, rng, count=cc_sbu_samples, size=size, shard_size=shard_size),
        "cc_sbu_align": write_align(out / "cc_sbu_align", photos, align_samples, size, rng),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write laion/, cc_sbu/, cc_sbu_align/ into")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (img2dataset used 256)")
    parser.add_argument("--laion-samples", type=int, default=240, help="laion samples (default: 240)")
    parser.add_argument("--cc-sbu-samples", type=int, default=120, help="cc_sbu samples (default: 120)")
    parser.add_argument("--align-samples", type=int, default=60, help="cc_sbu_align images (default: 60)")
    parser.add_argument("--shard-size", type=int, default=100, help="samples per shard (img2dataset: 10000)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the images and captions (default: 0)")
    args = parser.parse_args(argv)
    written = make_synthetic(
        args.out,
        size=args.size,
        laion_samples=args.laion_samples,
        cc_sbu_samples=args.cc_sbu_samples,
        align_samples=args.align_samples,
        shard_size=args.shard_size,
        seed=args.seed,
    )
    for name in ("laion", "cc_sbu"):
        info = written[name]
        last = info["shards"] - 1
        print(
            f"{name}: {info['samples']} samples in {info['shards']} shards: {args.out / name}/{{00000..{last:05d}}}.tar"
        )
    if not written["laion"]["parquet"]:
        print("pyarrow is not installed: the NNNNN.parquet files were not written (training does not read them)")
    print(f"cc_sbu_align: {written['cc_sbu_align']['samples']} described images: {args.out / 'cc_sbu_align'}")


if __name__ == "__main__":
    from minigpt4.common.cli import run_main

    run_main(main, "dataset/make_synthetic.py")
