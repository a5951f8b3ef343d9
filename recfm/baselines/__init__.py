"""Classic sequential baselines: Pop, SASRec, GRU4Rec, their shared trainer and losses.

The rows that make them ``recfm train`` models are in :mod:`recfm.model_table`.
"""
