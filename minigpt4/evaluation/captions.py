"""Caption metrics from ``pycocoevalcap`` with its PTB tokenisation: BLEU-1..4, METEOR, ROUGE-L,
CIDEr and SPICE, exactly as the COCO caption evaluation computes them.

Files: the COCO captions annotation format (COCO Karpathy test ``coco_karpathy_test_gt.json``,
COCO ``captions_val2014.json``, NoCaps ``nocaps_val_4500_captions.json``):
``{"images": [{"id", "file_name", ...}], "annotations": [{"image_id", "id", "caption"}]}``; used:
``annotations[].image_id`` and ``caption``. Predictions: the COCO results format, a JSON list of
``{"image_id", "caption"}``, or the same objects one per line (JSONL).

Every score is computed on the output of the PTB tokeniser, which runs on Java, and METEOR and
SPICE are Java programs too, so without Java no caption score runs at all (BLEU, ROUGE-L and CIDEr
on another tokenisation would be different numbers). SPICE also needs Stanford CoreNLP 3.6.0
(:data:`SPICE_CORENLP_JARS` in ``pycocoevalcap/spice/lib/``), which ``pycocoevalcap`` downloads on
its first run. Where ``pycocoevalcap``, Java or the CoreNLP jars are missing, or a scorer fails,
the score is left out and ``missing`` says why: no score is ever replaced by a look-alike computed
another way.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from minigpt4.evaluation.files import ScoringInputError, field_of, read_json

logger = logging.getLogger(__name__)

CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
# spice-1.0.jar's cache serialiser reads private JDK fields, which Java 9 and later refuse unless the
# packages are opened; the launcher of Java 9+ reads JDK_JAVA_OPTIONS (Java 8 ignores it and needs none).
SPICE_JAVA_OPTIONS = " ".join(
    f"--add-opens=java.base/{package}=ALL-UNNAMED"
    for package in ("java.lang", "java.util", "java.util.concurrent", "java.math", "java.net", "java.text", "java.io")
)


def missing_requirements() -> list[str]:
    """Why the caption metrics cannot run here, in words (empty when they can)."""
    reasons = []
    if importlib.util.find_spec("pycocoevalcap") is None:
        reasons.append("the pycocoevalcap package is not installed (pip install pycocoevalcap)")
    if shutil.which("java") is None:
        reasons.append(
            "no java on PATH: the PTB tokenisation every caption score is computed on, METEOR and SPICE run on "
            "Java (Debian: apt-get install openjdk-17-jre-headless)"
        )
    return reasons


def spice_library_dir() -> Path:
    """``pycocoevalcap/spice/lib``, where SPICE looks for the Stanford CoreNLP jars."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise ScoringInputError("the pycocoevalcap package is not installed (pip install pycocoevalcap)")
    return Path(next(iter(spec.submodule_search_locations))) / "spice" / "lib"


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


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """pycocoevalcap prints its BLEU counts and download progress; they go to the debug log, so
    that a scoring run prints only its table."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        if buffer.getvalue().strip():
            logger.debug("pycocoevalcap: %s", buffer.getvalue().strip())


@contextlib.contextmanager
def _spice_java_options() -> Iterator[None]:
    previous = os.environ.get("JDK_JAVA_OPTIONS")
    os.environ["JDK_JAVA_OPTIONS"] = f"{previous} {SPICE_JAVA_OPTIONS}" if previous else SPICE_JAVA_OPTIONS
    try:
        yield
    finally:
        if previous is None:
            del os.environ["JDK_JAVA_OPTIONS"]
        else:
            os.environ["JDK_JAVA_OPTIONS"] = previous


def _spice_reason(error: Exception) -> str:
    library = spice_library_dir()
    absent = [name for name in SPICE_CORENLP_JARS if not (library / name).is_file()]
    if absent:
        return (
            f"SPICE needs Stanford CoreNLP 3.6.0 ({', '.join(absent)} in {library}); pycocoevalcap downloads "
            f"it on first use and that failed ({type(error).__name__}: {error}); see README, Evaluation"
        )
    return f"{type(error).__name__}: {error}"


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


def _tokenize(captions: Mapping[str, list[str]]) -> dict[str, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokens = PTBTokenizer().tokenize({key: [{"caption": c} for c in texts] for key, texts in captions.items()})
    if any(len(tokens.get(key, ())) != len(texts) for key, texts in captions.items()):
        raise subprocess.SubprocessError("the PTB tokeniser (java) returned fewer lines than it was given")
    return tokens


def score_captions(predictions: Mapping[str, str], references: Mapping[str, list[str]], ids: Iterable[str]) -> dict:
    """``{"scores": {metric: value}, "missing": {metric: reason}, "images": n}``; scores are the
    COCO evaluation's values times 100 (CIDEr 1.17 is reported as 117)."""
    ids = list(ids)
    reasons = missing_requirements()
    if reasons:
        reason = "; ".join(reasons)
        return {"scores": {}, "missing": dict.fromkeys(CAPTION_METRICS, reason), "images": len(ids)}
    try:
        gts = _tokenize({key: list(references[key]) for key in ids})
        res = _tokenize({key: [predictions[key]] for key in ids})
    except (OSError, subprocess.SubprocessError) as error:
        reason = f"PTB tokenisation failed: {type(error).__name__}: {error}"
        return {"scores": {}, "missing": dict.fromkeys(CAPTION_METRICS, reason), "images": len(ids)}
    scores: dict[str, float] = {}
    missing: dict[str, str] = {}
    for names, scorer in _scorers():
        spice = names == ("SPICE",)
        try:
            with _quiet_stdout(), _spice_java_options() if spice else contextlib.nullcontext():
                # Meteor and Spice start Java (Spice fetches CoreNLP) when constructed, so build them here.
                instance = scorer() if isinstance(scorer, type) else scorer
                value, _ = instance.compute_score(gts, res)
        except (OSError, ValueError, subprocess.SubprocessError) as error:
            reason = _spice_reason(error) if spice else f"{type(error).__name__}: {error}"
            logger.warning("%s missing: %s", "/".join(names), reason)
            missing.update(dict.fromkeys(names, reason))
            continue
        values = value if isinstance(value, list) else [value]
        scores.update({name: 100.0 * float(v) for name, v in zip(names, values, strict=True)})
    return {"scores": scores, "missing": missing, "images": len(ids)}
