"""The caption scores through the real pycocoevalcap against values worked out by hand from the
metrics' definitions, and what is reported where Java or the SPICE models are missing."""

from __future__ import annotations

import math
import shutil
import subprocess

import pytest

from minigpt4.evaluation import captions

# After the PTB tokenisation (lower case, punctuation tokens dropped) the first reference is
# "a dog runs on the grass": the capital and the full stop must not count as tokens.
REFERENCES = {"1": ["A dog runs on the grass.", "the dog is on grass"], "2": ["a cat sits down"]}
PREDICTIONS = {"1": "A dog runs on grass", "2": "a cat cat"}


def _bleu(n: int) -> float:
    """Corpus BLEU with the closest reference length. n-grams of the two predictions, matched with
    clipping against the references: 1-grams 5/5 + 2/3 ("cat" counts once), 2-grams 4/4 + 1/2,
    3-grams 2/3 + 0/1, 4-grams 1/2 + 0/0; closest reference lengths 5 (of 6 and 5) and 4 against
    predictions of 5 and 3 words: brevity penalty exp(1 - 9/8)."""
    precisions = [7 / 8, 5 / 6, 2 / 4, 1 / 2]
    return 100 * math.exp(1 - 9 / 8) * math.prod(precisions[:n]) ** (1 / n)


def _rouge_l() -> float:
    """Per image F = (1 + b^2) P R / (R + b^2 P), b = 1.2, with the best precision and the best
    recall over the references (longest common subsequences: 5 of 5/6 words and 3 of 5/5 words for
    image 1, 2 of 3/4 words for image 2), averaged over images."""

    def f(p: float, r: float) -> float:
        return (1 + 1.44) * p * r / (r + 1.44 * p)

    return 100 * (f(max(5 / 5, 3 / 5), max(5 / 6, 3 / 5)) + f(2 / 3, 2 / 4)) / 2


def _cider_d() -> float:
    """CIDEr-D: per n = 1..4 the cosine of tf-idf vectors with the prediction's weights clipped to
    the reference's, times exp(-(difference in bigram count)^2 / (2 * 6^2)), averaged over n and
    over the references, times 10. The idf is log(2 images / document frequency): "a" is in both
    images' references (idf 0); every other n-gram gets log 2, so the cosines reduce to counts of
    shared n-grams other than "a"."""
    s3, s5, s6 = math.sqrt(3), math.sqrt(5), math.sqrt(6)
    g = math.exp(-1 / 72)  # one bigram fewer than the reference
    # image 1, reference 1 ("a dog runs on the grass", 5 bigrams to the prediction's 4)
    ref1 = (4 / (2 * s5) + 3 / (2 * s5) + 2 / (s3 * 2) + 1 / (math.sqrt(2) * s3)) / 4 * g
    # image 1, reference 2 ("the dog is on grass", 4 bigrams): dog/on/grass; "on grass"
    ref2 = (3 / (2 * s5) + 1 / 4) / 4
    # image 2: "cat" counts once against the reference's one (clipping); "a cat"
    image2 = (1 / (2 * s3) + 1 / s6) / 4 * g
    return 100 * 10 * ((ref1 + ref2) / 2 + image2) / 2


@pytest.fixture
def no_downloads(monkeypatch):
    """SPICE fetches Stanford CoreNLP over http when its jars are absent: through a proxy on a
    closed local port that fails at once instead of downloading hundreds of MB in a test."""
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")


@pytest.mark.slow
def test_scores_match_the_definitions_worked_by_hand(no_downloads):
    if captions.missing_requirements():
        pytest.skip("; ".join(captions.missing_requirements()))
    result = captions.score_captions(PREDICTIONS, REFERENCES, ["1", "2"])
    scores = result["scores"]
    assert result["images"] == 2
    for n in range(1, 5):
        # pycocoevalcap adds 1e-15 / 1e-9 to every count ratio: agreement to about 1e-9
        assert scores[f"BLEU-{n}"] == pytest.approx(_bleu(n), rel=1e-8)
    assert scores["ROUGE-L"] == pytest.approx(_rouge_l(), rel=1e-12)
    assert scores["CIDEr"] == pytest.approx(_cider_d(), rel=1e-12)
    assert 0 < scores["METEOR"] < 100  # stems and paraphrase tables: not worked by hand
    jars = [captions.spice_library_dir() / name for name in captions.SPICE_CORENLP_JARS]
    if all(jar.is_file() for jar in jars):
        assert 0 < scores["SPICE"] <= 100
    else:
        assert "SPICE" not in scores
        reason = result["missing"]["SPICE"]
        assert "stanford-corenlp-3.6.0-models.jar" in reason and str(jars[0].parent) in reason
    assert set(scores) | set(result["missing"]) == set(captions.CAPTION_METRICS)


def test_without_java_every_score_is_named_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    result = captions.score_captions(PREDICTIONS, REFERENCES, ["1", "2"])
    assert result["scores"] == {}
    assert set(result["missing"]) == set(captions.CAPTION_METRICS)
    for reason in result["missing"].values():
        assert "no java on PATH" in reason and "openjdk-17-jre-headless" in reason


@pytest.mark.skipif(shutil.which("java") is None, reason="no java on PATH")
def test_the_java_options_spice_runs_with_are_accepted_by_the_installed_java():
    java = shutil.which("java")
    run = subprocess.run(
        [java, "-version"], env={"JDK_JAVA_OPTIONS": captions.SPICE_JAVA_OPTIONS}, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "add-opens" in run.stderr or 'version "1.8' in run.stderr
