"""PACS (Li et al. 2017) from its ``<root>/<domain>/<class>/<image>`` folders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from facevib.data.imagecodec import decode_rgb

__all__ = ["PACS_CLASSES", "PACS_DOMAINS", "PACSDataset", "list_pacs"]

PACS_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
PACS_CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def list_pacs(root: str | Path, domains: Sequence[str]) -> list[tuple[Path, int, str]]:
    """``(image path, class index, domain)`` for every image of ``domains``, sorted.

    Class indices follow :data:`PACS_CLASSES`. Files with other suffixes are skipped.

    Raises:
        ValueError: an unknown domain, or a class folder not in PACS.
        FileNotFoundError: a domain folder is missing, or a domain holds no images.
    """
    root = Path(root)
    items: list[tuple[Path, int, str]] = []
    for domain in domains:
        if domain not in PACS_DOMAINS:
            raise ValueError(f"unknown PACS domain {domain!r}; one of {', '.join(PACS_DOMAINS)}")
        folder = root / domain
        if not folder.is_dir():
            raise FileNotFoundError(
                f"PACS: expected the folder {folder} with one sub-folder per class "
                f"({', '.join(PACS_CLASSES)}); the data is not shipped or downloaded"
            )
        found = 0
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            if class_dir.name not in PACS_CLASSES:
                raise ValueError(f"PACS: {class_dir} is not a PACS class folder ({', '.join(PACS_CLASSES)})")
            label = PACS_CLASSES.index(class_dir.name)
            for image in sorted(class_dir.iterdir()):
                if image.suffix.lower() in _IMAGE_SUFFIXES:
                    items.append((image, label, domain))
                    found += 1
        if not found:
            raise FileNotFoundError(f"PACS: no .jpg/.png images under {folder}/<class>/")
    return items


class PACSDataset(Dataset):
    """PACS images of some domains as ``(float32 (3, size, size) in [-1, 1], label)``.

    The paper's PACS experiment trains a ResNet-18 on three domains and tests on the fourth
    (leave-one-domain-out); pass the domains of each side to two instances.
    """

    def __init__(self, root: str | Path, domains: Sequence[str], size: int = 224) -> None:
        self.items = list_pacs(root, domains)
        self.size = size
        self.domains = tuple(domains)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label, _ = self.items[index]
        image = decode_rgb(path.read_bytes(), where=str(path))
        if image.shape[:2] != (self.size, self.size):
            image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        return tensor / 127.5 - 1.0, label
