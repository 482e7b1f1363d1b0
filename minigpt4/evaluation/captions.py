"""Caption metrics from ``pycocoevalcap`` with its PTB tokenisation: BLEU-1..4, METEOR, ROUGE-L,
CIDEr and SPICE, exactly as the COCO caption evaluation computes them.

Files: the COCO captions annotation format (COCO Karpathy test ``coco_karpathy_test_gt.json``,
COCO ``captions_val2014.json``, NoCaps ``nocaps_val_4500_captions.json``):
``{"images": [{"id", "file_name", ...}], "annotations": [{"image_id", "id", "caption"}]}``; used:
``annotations[].image_id`` and ``caption``. Predictions: the COCO results format, a JSON list of
``{"image_id", "caption"}``, or the same objects one per line (JSONL).

Every score needs the PTB tokeniser, which runs on Java, and METEOR and SPICE are Java programs
too; SPICE also fetches Stanford CoreNLP models on its first run. Where ``pycocoevalcap`` or Java
is missing, or a scorer fails, the score is left out and ``missing`` says why: no score is ever
replaced by a look-alike computed another way.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from minigpt4.evaluation.files import ScoringInputError, field_of, read_json

logger = logging.getLogger(__name__)

CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")


def missing_requirements() -> list[str]:
    """Why the caption metrics cannot run here, in words (empty when they can)."""
    reasons = []
    if importlib.util.find_spec("pycocoevalcap") is None:
        reasons.append("the pycocoevalcap package is not installed")
    if shutil.which("java") is None:
        reasons.append("no java on PATH (the PTB tokeniser, METEOR and SPICE run on Java)")
    return reasons


def load_coco_captions(path: str | Path) -> dict[str, list[str]]:
    """{image id (as a string): reference captions}."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ScoringInputError(f"{path}: a COCO captions file is a JSON object with an 'annotations' list")
    references: dict[str, list[str]] = defaultdict(list)
    for row in data["annotations"]:
        references[str(field_of(row, ["image_id"], path, "image_id"))].append(
            str(field_of(row, ["caption"], path, "caption"))
        )
    return dict(references)


def _scorers() -> list[tuple[Sequence[str], object]]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.spice.spice import Spice

    return [
        (CAPTION_METRICS[:4], Bleu(4)),
        (("METEOR",), Meteor),
        (("ROUGE-L",), Rouge()),
        (("CIDEr",), Cider()),
        (("SPICE",), Spice),
    ]


def score_captions(predictions: Mapping[str, str], references: Mapping[str, list[str]], ids: Iterable[str]) -> dict:
    """``{"scores": {metric: value}, "missing": {metric: reason}, "images": n}``."""
    ids = list(ids)
    reasons = missing_requirements()
    if reasons:
        reason = "; ".join(reasons)
        return {"scores": {}, "missing": dict.fromkeys(CAPTION_METRICS, reason), "images": len(ids)}

    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({key: [{"caption": c} for c in references[key]] for key in ids})
    res = tokenizer.tokenize({key: [{"caption": predictions[key]}] for key in ids})
    scores: dict[str, float] = {}
    missing: dict[str, str] = {}
    for names, scorer in _scorers():
        try:
            # Meteor and Spice start their Java process when constructed, so build them here.
            instance = scorer() if isinstance(scorer, type) else scorer
            value, _ = instance.compute_score(gts, res)
        except (OSError, subprocess.CalledProcessError) as error:
            logger.warning("%s failed: %s", "/".join(names), error)
            missing.update(dict.fromkeys(names, f"{type(error).__name__}: {error}"))
            continue
        values = value if isinstance(value, list) else [value]
        scores.update({name: 100.0 * float(v) for name, v in zip(names, values, strict=True)})
    return {"scores": scores, "missing": missing, "images": len(ids)}
