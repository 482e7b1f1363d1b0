"""Benchmark scorers with the benchmarks' own metrics, usable without a model.

* :mod:`.vqa`: VQAv2 / OK-VQA accuracy (the official answer normalisation and the ten
  leave-one-out subsets of the human answers);
* :mod:`.gqa`: GQA exact match after the same normalisation;
* :mod:`.pope`: POPE yes/no parsing, accuracy, precision, recall, F1 and yes-ratio per split;
* :mod:`.captions`: BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE through ``pycocoevalcap``;
* :mod:`.score`: ``python -m minigpt4.evaluation.score``, scoring a predictions file.
"""
