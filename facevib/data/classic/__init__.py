"""The cellVIB paper's other data sets, read from their published file formats, and digits.

Nothing here downloads: each loader names the files it expects when they are missing.

* MNIST: the four IDX files (``train-images-idx3-ubyte`` ..., gzipped or not).
* CIFAR-10: the python pickle batches (``cifar-10-batches-py/data_batch_1`` ... ``test_batch``);
  CIFAR-10-C: one ``<corruption>.npy`` per corruption plus ``labels.npy``.
* PACS: ``<root>/<domain>/<class>/<image>`` folders.
* Symmetric label noise at an exact rate (cellVIB eq. 8).
* scikit-learn's 8x8 digits, which ship offline, and "shifted digits", the shiftedMNIST
  construction of the information-flow-maximisation paper on top of them.
"""

from facevib.data.classic.cifar import CIFAR10C_CORRUPTIONS, load_cifar10, load_cifar10c
from facevib.data.classic.digits import load_digits_split, make_shifted_digits, make_textures
from facevib.data.classic.mnist import load_mnist, read_idx
from facevib.data.classic.noise import symmetric_label_noise
from facevib.data.classic.pacs import PACS_CLASSES, PACS_DOMAINS, PACSDataset, list_pacs

__all__ = [
    "CIFAR10C_CORRUPTIONS",
    "PACS_CLASSES",
    "PACS_DOMAINS",
    "PACSDataset",
    "list_pacs",
    "load_cifar10",
    "load_cifar10c",
    "load_digits_split",
    "load_mnist",
    "make_shifted_digits",
    "make_textures",
    "read_idx",
    "symmetric_label_noise",
]
