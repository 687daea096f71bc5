"""Data: batch sources (:mod:`.batches`) and the datasets kdzoo reads offline (:mod:`.datasets`)."""

from kdzoo.data.batches import (
    Batches,
    DataBundle,
    DistInfo,
    IterableBatches,
    LoaderBatches,
    Normalisation,
    TensorBatches,
    fits_on,
    shard,
    to_device,
)
from kdzoo.data.contents import DataContents
from kdzoo.data.datasets import DATASETS, load_data, load_digits_arrays, stratified_split

__all__ = [
    "DATASETS",
    "Batches",
    "DataBundle",
    "DataContents",
    "DistInfo",
    "IterableBatches",
    "LoaderBatches",
    "Normalisation",
    "TensorBatches",
    "fits_on",
    "load_data",
    "load_digits_arrays",
    "shard",
    "stratified_split",
    "to_device",
]
