"""The face contract: known values, the size rule, and that its numbers are written once."""

from __future__ import annotations

from pathlib import Path

import pytest

from facevib import contract

LIBRARY = Path(__file__).resolve().parents[1] / "facevib"


def test_template_is_insightfaces_and_follows_the_size_rule() -> None:
    # insightface utils/face_align.py, arcface_dst (left eye first).
    assert contract.arcface_template(112)[0] == pytest.approx([38.2946, 51.6963])
    assert contract.arcface_template(112)[4] == pytest.approx([70.7299, 92.2041])
    assert contract.arcface_template(224)[2] == pytest.approx([2 * 56.0252, 2 * 71.7366])
    # 128 crops: the 112 template with 8 pixels of margin on each side.
    assert contract.arcface_template(128)[1] == pytest.approx([73.5318 + 8.0, 51.5014])
    assert contract.arcface_template(256)[3] == pytest.approx([2 * (41.5493 + 8.0), 2 * 92.3655])
    with pytest.raises(ValueError, match="size 100 is neither a multiple of 112 nor of 128"):
        contract.arcface_template(100)


def test_metadata_keys_are_prefixed_and_distinct() -> None:
    keys = list(contract.METADATA_KEYS.values())
    # The keys an exported file may carry (docs/serving.md lists them for other readers).
    assert sorted(keys) == sorted(
        f"facevib.{name}"
        for name in (
            "version",
            "model_name",
            "arch",
            "embedding_dim",
            "input_size",
            "preprocess",
            "config_digest",
            "outputs",
            "uncertainty",
            "quality",
            "calibration",
            "identification",
            "precision",
        )
    )
    assert contract.METADATA_KEYS["facevib_version"] == "facevib.version"
    assert all(key.startswith("facevib.") for key in keys)


def test_template_numbers_are_written_only_in_the_contract() -> None:
    # Every other module takes the template from facevib.contract; a second copy could drift.
    holders = [
        path.relative_to(LIBRARY).as_posix()
        for path in LIBRARY.rglob("*.py")
        if any(number in path.read_text(encoding="utf-8") for number in ("38.2946", "73.5318", "92.2041"))
    ]
    assert holders == ["contract.py"]
