from recfm.evaluation.metrics import metrics_from_ranks, ranks_in_topk
from recfm.evaluation.protocol import Protocol, evaluate

__all__ = ["Protocol", "evaluate", "metrics_from_ranks", "ranks_in_topk"]
