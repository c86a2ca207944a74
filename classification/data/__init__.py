"""Datasets, transforms and loaders for classification training and evaluation."""
from .builders import build_datasets, build_eval_dataset, build_loaders, build_mixup, class_summary
from .defaults import DATASET_DEFAULTS
from .errors import DataError
from .loader import ShardedSampler

__all__ = ["DATASET_DEFAULTS", "DataError", "ShardedSampler", "build_datasets", "build_eval_dataset", "build_loaders",
           "build_mixup", "class_summary"]
