"""RecBench-MD style benchmark: pairwise click prediction with foundation models.

Modules (import them directly; this package imports nothing heavy on its own):

- ``recfm.bench.metrics``: ``click_metrics`` (AUC, GAUC, NDCG@K, MRR over grouped candidate lists).
- ``recfm.bench.tasks``: ``ClickTaskConfig``, ``build_pairs`` / ``cached_pairs`` (leakage-free
  user-item click pairs from any ``SequenceDataset``), ``ClickPairs`` (save/load, no pickle),
  ``sample_pairs`` (cut a set down by whole candidate lists).
"""
