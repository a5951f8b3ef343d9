"""recfm: recommendation foundation models on one data layer and one evaluation protocol."""

__version__ = "0.1.0"
