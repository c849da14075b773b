"""Information-plane paths during training: a recorder called at each evaluation step.

The binning paper (Li and Liu, "Information Bottleneck Methods on Convolutional Neural
Networks") follows each layer's (I(X; T), I(T; Y)) over training; the cellVIB paper reads
the KL bounds and H(Y) - CE. :class:`InfoPlaneRecorder` measures both on a fixed probe set
(:func:`~facevib.info.plane.measure_plane`) whenever ``record(step)`` is called and writes
the history to the run folder (``infoplane.json``, ``infoplane_paths.png``,
``infoplane_depth.png``) and, when given a writer, to TensorBoard (``info/<layer>/...``, bits).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from facevib.info.binning import DEFAULT_BIN_SIZE
from facevib.info.entropy import to_bits
from facevib.info.plane import InfoPlane, Samples, measure_plane
from facevib.info.plots import plot_depth, plot_paths

__all__ = ["InfoPlaneRecorder", "recorder_for_recordio"]

HISTORY_FILE = "infoplane.json"


class InfoPlaneRecorder:
    """Records the information plane of ``model`` on a fixed probe set.

    Args:
        model: the network being trained (an iResNet backbone or a registered cell family);
            measured in eval mode and returned to its mode.
        train: samples the per-layer probes are fitted on.
        test: held-out samples every estimate is computed on.
        every: steps between records for loops that ask :meth:`due` (0: only when the
            caller calls :meth:`record`, e.g. at its evaluations).
        bin_size: binning width.
        batch_size: forward batch size of the measurement.
    """

    def __init__(
        self,
        model: nn.Module,
        train: Samples,
        test: Samples,
        every: int,
        bin_size: float = DEFAULT_BIN_SIZE,
        batch_size: int = 128,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"InfoPlaneRecorder: every must be an int >= 0, got {every!r}")
        self.model = model
        self.train = train
        self.test = test
        self.every = every
        self.bin_size = bin_size
        self.batch_size = batch_size
        self.history: list[dict[str, Any]] = []
        self.last_plane: InfoPlane | None = None
        self._logged = 0  # records already sent to TensorBoard

    def due(self, step: int) -> bool:
        """Whether ``step`` is a recording step."""
        return self.every > 0 and step % self.every == 0

    def record(self, step: int) -> dict[str, Any]:
        """Measure now; returns (and keeps) ``{"step", "layers": {name: {...}}}`` in nats."""
        plane = measure_plane(self.model, self.train, self.test, batch_size=self.batch_size, bin_size=self.bin_size)
        self.last_plane = plane
        entry = {
            "step": int(step),
            "h_y": plane.h_y,
            "layers": {
                layer.name: {
                    "depth": layer.depth,
                    "kl_bound": layer.kl_bound,
                    "label_mi_train": layer.label_mi_train,
                    "label_mi_test": layer.label_mi_test,
                    "binning": layer.binning.to_dict(),
                }
                for layer in plane.layers
            },
        }
        self.history.append(entry)
        return entry

    def write(self, run_dir: str | os.PathLike[str], tb_writer: Any | None = None) -> Path:
        """Write the history (JSON, PNGs) to ``run_dir`` and new records to ``tb_writer``.

        Returns:
            The JSON path.
        """
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "units": "nats",
            "bin_size": self.bin_size,
            "num_test": int(self.test.x.shape[0]),
            "records": self.history,
        }
        path = run_dir / HISTORY_FILE
        tmp = run_dir / f".{HISTORY_FILE}.tmp"
        tmp.write_text(json.dumps(payload, indent=1) + "\n")
        os.replace(tmp, path)
        if self.history:
            plot_paths(self.history, run_dir / "infoplane_paths.png")
        if self.last_plane is not None:
            plot_depth([self.last_plane], run_dir / "infoplane_depth.png")
        if tb_writer is not None:
            for entry in self.history[self._logged :]:
                for key, value in self.scalars(entry).items():
                    tb_writer.add_scalar(f"info/{key}", value, entry["step"])
            tb_writer.flush()
            self._logged = len(self.history)
        return path

    def scalars(self, entry: dict[str, Any] | None = None) -> dict[str, float]:
        """``{"<layer>/<quantity>_bits": value}`` of one record (default: the latest), in bits."""
        entry = entry if entry is not None else self.history[-1]
        return {
            f"{name}/{key}": value for name, layer in entry["layers"].items() for key, value in _scalars(layer).items()
        }


def recorder_for_recordio(
    model: nn.Module, rec: str | os.PathLike[str], max_classes: int, per_class: int, bin_size: float = DEFAULT_BIN_SIZE
) -> InfoPlaneRecorder:
    """A recorder for a face training run, its probe set drawn from the training RecordIO.

    ``max_classes`` identities with ``per_class`` images each, alternately split between the
    probe's fitting half and the held-out half (see :func:`facevib.info.sources.load_samples`).
    """
    from facevib.info.sources import load_samples

    train, test, _ = load_samples(str(rec), max_classes=max_classes, per_class=per_class)
    return InfoPlaneRecorder(model, train, test, every=0, bin_size=bin_size)


def _scalars(layer: dict[str, Any]) -> dict[str, float]:
    """A layer record's TensorBoard scalars, in bits."""
    out = {"izy_test_bits": to_bits(layer["label_mi_test"]), "izy_train_bits": to_bits(layer["label_mi_train"])}
    if layer["kl_bound"] is not None:
        out["kl_bound_bits"] = to_bits(layer["kl_bound"])
    binning = layer["binning"]
    out["binning_ixt_bits"] = to_bits(binning["i_xt"])
    if binning["i_ty"] is not None:
        out["binning_ity_bits"] = to_bits(binning["i_ty"])
    out["binning_saturated"] = float(binning["saturated"])
    return out
