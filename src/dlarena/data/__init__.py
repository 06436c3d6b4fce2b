"""Real data for the accuracy scenarios, as NumPy arrays in the network's input form; no framework inside.

Readers for the published formats (MNIST idx, CIFAR-10 python batches, IMDB as Keras' npz or as
Stanford's text, Penn Treebank text), a cache folder with one sub-folder per data set, an import of
local files and a download, both checked against the published checksums (of the data itself, for a
gzipped idx file: see verify.py). The 1,797 digits that scikit-learn ships need neither.
"""

from __future__ import annotations

from dlarena.data.cache import data_home, dataset_folder
from dlarena.data.catalogue import DATASETS, Content, DataFile, DataSetInfo
from dlarena.data.dataset import DataError, DataMissing, Dataset, Split
from dlarena.data.registry import (
    DataSetStatus,
    dataset_info,
    dataset_status,
    download_dataset,
    import_dataset,
    load_dataset,
)

__all__ = [
    "DATASETS",
    "Content",
    "DataError",
    "DataFile",
    "DataMissing",
    "DataSetInfo",
    "DataSetStatus",
    "Dataset",
    "Split",
    "data_home",
    "dataset_folder",
    "dataset_info",
    "dataset_status",
    "download_dataset",
    "import_dataset",
    "load_dataset",
]
