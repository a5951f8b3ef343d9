from recfm.data.dataset import SequenceDataset
from recfm.data.preprocess import PrepConfig, preprocess
from recfm.data.registry import DATASETS, load_dataset
from recfm.data.schema import DataFormatError, EmptyDatasetError, RawDataset
from recfm.data.split import EvalCases, LeaveOneOut

__all__ = [
    "DATASETS", "DataFormatError", "EmptyDatasetError", "EvalCases", "LeaveOneOut", "PrepConfig",
    "RawDataset", "SequenceDataset", "load_dataset", "preprocess",
]
