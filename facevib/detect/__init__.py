"""Face detection that works offline, on ONNX Runtime with numpy and OpenCV around it (no torch).

* :class:`~facevib.detect.mtcnn.MTCNN`, the built-in detector: MTCNN (Zhang et al., "Joint
  Face Detection and Alignment using Multi-task Cascaded Convolutional Networks", IEEE SPL 2016,
  arXiv:1604.02878) with its three networks shipped as ONNX files inside this package.
* :class:`~facevib.detect.scrfd.SCRFD`, a plug-in for the SCRFD ONNX files of insightface's
  model packs (``det_*.onnx``; Guo et al., "Sample and Computation Redistribution for
  Efficient Face Detection", arXiv:2105.04714).

Callers use :func:`load_detector` and the :class:`~facevib.detect.base.Detector` interface.
"""

from __future__ import annotations

from pathlib import Path

from facevib.detect.base import Detector, Face, largest_first

__all__ = ["BUILTIN", "Detector", "Face", "largest_first", "load_detector"]

BUILTIN = "mtcnn"


def load_detector(
    spec: str | Path | None = None, *, providers: list[str] | None = None, threads: int = 0, device: str = "cpu"
) -> Detector:
    """The detector named by ``spec``.

    Args:
        spec: ``None`` or ``"mtcnn"``: the built-in MTCNN; a path to an ``.onnx`` file: an SCRFD
            model (insightface's ``det_*.onnx`` layout).
        providers: ONNX Runtime execution providers (default: chosen from ``device``).
        device: ``cpu`` (default), ``cuda``, ``cuda:N`` or ``auto``: the CUDA provider when asked
            for and this onnxruntime build has it (:func:`facevib.detect.providers.choose_providers`);
            ``describe()`` names the providers in use and why CUDA is not among them.
        threads: ONNX Runtime intra-op threads per call (0: ONNX Runtime's default, all cores);
            callers that detect in several threads at once (the server) pass 1.

    Raises:
        FileNotFoundError: ``spec`` looks like a path and no such file exists.
        ValueError: the file is not an ONNX model with the SCRFD layout (the message names it), or
            ``device`` is not one of those above.
    """
    if spec is None or str(spec).strip().lower() == BUILTIN:
        from facevib.detect.mtcnn import MTCNN

        return MTCNN(providers=providers, threads=threads, device=device)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"detector {str(spec)!r} is neither {BUILTIN!r} (the built-in detector) nor an existing file "
            "(an SCRFD det_*.onnx)"
        )
    from facevib.detect.scrfd import SCRFD

    return SCRFD(path, providers=providers, threads=threads, device=device)
