"""Read what training and evaluation left in a run folder.

The layout is the one the entry points write, nothing report-specific::

    RUN/config.json  metrics.jsonl  tensorboard/  checkpoint_*.pt  backbone.pt   train/arcface.py
    RUN/eval/verification.json                                              eval/verification.py --out RUN/eval
    RUN/eval/ijbc.json  ijbc_features.npz  ijbc_roc.png                     eval/ijb.py --out RUN/eval
    RUN/eval/fusion/ijbc.json                                               eval/ijb.py --uncertainty-fusion
                                                                                --out RUN/eval/fusion

Evaluation files are optional (a run may not have been evaluated on every protocol); a
missing ``config.json`` or ``metrics.jsonl`` means the folder is not a training run and
raises ``FileNotFoundError`` naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RunResults", "read_run", "read_jsonl"]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a truncated last line (a run killed mid-write) is dropped."""
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not JSON ({err.msg})") from err
    return records


def _json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from err


@dataclass
class RunResults:
    """One trained model and its evaluations (see the module docstring for the files)."""

    label: str
    root: Path
    config: dict[str, Any]
    train: list[dict[str, Any]]
    verification: dict[str, dict[str, Any]]
    ijb: dict[str, Any] | None
    ijb_fusion: dict[str, Any] | None

    @property
    def model_name(self) -> str:
        return str(self.config["model"]["name"])

    @property
    def steps(self) -> int:
        return int(self.train[-1]["step"]) if self.train else 0

    @property
    def backbone(self) -> Path:
        return self.root / "backbone.pt"

    @property
    def features(self) -> Path | None:
        """The IJB feature cache that ``eval/ijb.py`` wrote, when it did."""
        if self.ijb is None:
            return None
        path = Path(self.ijb.get("features", self.root / "eval" / "ijbc_features.npz"))
        return path if path.is_file() else None

    def train_seconds(self) -> float:
        """Wall time between the first and the last logged training step."""
        if len(self.train) < 2:
            return 0.0
        return float(self.train[-1]["time"] - self.train[0]["time"])


def read_run(label: str, root: str | Path) -> RunResults:
    """Read run folder ``root`` (written by ``train/arcface.py --output ROOT`` and the evaluations)."""
    root = Path(root)
    config_path, metrics_path = root / "config.json", root / "metrics.jsonl"
    for path in (config_path, metrics_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: is {root} a training run (train/arcface.py --output)?")
    config = _json(config_path) or {}
    config = config.get("config", config)
    records = read_jsonl(metrics_path)
    verification = _json(root / "eval" / "verification.json")
    return RunResults(
        label=label,
        root=root,
        config=config,
        train=[r for r in records if r.get("kind") == "train"],
        verification=(verification or {}).get("results", {}),
        ijb=_json(root / "eval" / "ijbc.json"),
        ijb_fusion=_json(root / "eval" / "fusion" / "ijbc.json"),
    )
