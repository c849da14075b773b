"""The ONNX Runtime session the server runs: provider choice, metadata, padding, warm-up.

Providers: CUDA then CPU when CUDA is asked for (``cuda``, ``cuda:N``) or, with ``auto``,
when this onnxruntime build has it. ONNX Runtime falls back to the CPU without an error
when the CUDA provider cannot start (missing CUDA/cuDNN libraries), so the providers are
read back from the session after it is created; when CUDA was wanted and is not active the
reason goes into :attr:`ModelRuntime.warnings`, which the server logs at start-up and shows
in ``/v1/info``.

On CUDA every new input shape costs a cuDNN algorithm search, so batches are zero-padded
to a few fixed sizes (powers of two up to ``max_batch``) that are all run once at start-up.
On the CPU shapes are free and batches run at their own size.

A batch runs in two steps, so that the batcher can overlap them (:mod:`facevib.serve.batcher`):
:meth:`ModelRuntime.stage` concatenates and pads its parts and copies them to the session's
device (an ``OrtValue`` on the GPU; on the CPU the array itself), and :meth:`ModelRuntime.run`
runs the session on the staged input through ONNX Runtime's IO binding and copies the outputs
back. On CUDA the next batch's host-to-device copy then runs in the staging thread while the
GPU computes the current one (:attr:`ModelRuntime.pipeline_depth` is 2 there).

ONNX Runtime's intra-op threads spin-wait for work between operators by default; on a machine
with few cores that spinning takes CPU time from the event loop and the image decoders, so
the server turns it off unless ``spinning`` is asked for.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facevib.contract import ALIGNMENT, EMBEDDING_OUTPUT, QUALITY_OUTPUT, UNCERTAINTY_OUTPUT, arcface_template
from facevib.detect.providers import CUDA, choose_providers, fallback_note
from facevib.onnx_meta import ModelMetadata, read_metadata

__all__ = ["ModelRuntime", "StagedBatch", "pad_sizes"]

logger = logging.getLogger("facevib.serve")


def pad_sizes(max_batch: int) -> tuple[int, ...]:
    """Batch sizes padded to on CUDA: 1, 2, 4, ... below ``max_batch``, and ``max_batch``."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch)


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class StagedBatch:
    """A batch on the session's device, ready to run: ``count`` real rows of ``value``'s
    (padding rows follow them); ``value`` is an ``onnxruntime.OrtValue``."""

    count: int
    value: object


@dataclass
class ModelRuntime:
    """A loaded model. :meth:`stage` may run in one thread while :meth:`run` runs in another;
    each of them (and :meth:`infer`) from one thread at a time."""

    path: Path
    session: object
    metadata: ModelMetadata
    input_name: str
    embedding_output: str
    uncertainty_output: str | None
    providers: list[str]
    requested_device: str
    intra_op_threads: int
    padded_sizes: tuple[int, ...] | None
    spinning: bool = False
    warnings: list[str] = field(default_factory=list)
    reference_output: np.ndarray | None = None
    quality_output: str | None = None

    @property
    def input_size(self) -> int:
        return int(self.metadata.input_size)

    @property
    def embedding_dim(self) -> int:
        return int(self.metadata.embedding_dim)

    @property
    def on_cuda(self) -> bool:
        return self.providers[0] == CUDA

    @property
    def pipeline_depth(self) -> int:
        """Batches the batcher may have in flight: 2 on CUDA (the next one is copied to the GPU
        while the current one computes), 1 on the CPU (copying is free there, and a second
        batch taken early would only be smaller)."""
        return 2 if self.on_cuda else 1

    @property
    def _device(self) -> tuple[str, int]:
        """ONNX Runtime's ``(device_type, device_id)`` of the session's inputs and outputs."""
        if not self.on_cuda:
            return "cpu", 0
        index = self.requested_device.partition(":")[2]
        return "cuda", int(index or 0)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        device: str = "auto",
        intra_op_threads: int = 0,
        max_batch: int = 32,
        spinning: bool = False,
    ) -> ModelRuntime:
        """Open ``path`` with ONNX Runtime and warm it up. ``spinning`` keeps ONNX Runtime's
        spin-waiting intra-op threads (its default); the server turns it off.

        The session's intra-op threads are created in the calling thread and inherit its
        priority (:mod:`facevib.serve.threads`).

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: ONNX Runtime cannot load the file, or its interface is not one
                ``(N, 3, S, S)`` input and an ``(N, D)`` embedding output.
        """
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist")
        choice = choose_providers(device, ort.get_available_providers(), use="serving", cuda_options={})
        warnings = list(choice.notes)
        providers = choice.providers
        threads = intra_op_threads or cpu_count()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        flag = "1" if spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", flag)
        options.add_session_config_entry("session.inter_op.allow_spinning", flag)
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as err:  # onnxruntime raises its own pybind types for bad files
            raise ValueError(f"{path}: ONNX Runtime cannot load it ({type(err).__name__}: {err})") from err
        active = list(session.get_providers())
        fallback = fallback_note(choice, active, device, use="serving")
        if fallback:
            warnings.append(fallback)
        metadata = read_metadata(session)  # MetadataError is a ValueError naming the key
        _check_alignment(metadata, warnings)
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ValueError(f"{path}: expected one (N, 3, S, S) input, got {[(i.name, i.shape) for i in inputs]}")
        size = inputs[0].shape[2]
        if isinstance(size, int) and size != metadata.input_size:
            raise ValueError(f"{path}: input is {size}x{size} but the metadata says {metadata.input_size}")
        names = [o.name for o in outputs]
        embedding = EMBEDDING_OUTPUT if EMBEDDING_OUTPUT in names else names[0]
        uncertainty = UNCERTAINTY_OUTPUT if UNCERTAINTY_OUTPUT in names else None
        quality = QUALITY_OUTPUT if QUALITY_OUTPUT in names else None
        runtime = cls(
            path=path,
            session=session,
            metadata=metadata,
            input_name=inputs[0].name,
            embedding_output=embedding,
            uncertainty_output=uncertainty,
            quality_output=quality,
            providers=active,
            requested_device=device,
            intra_op_threads=threads,
            padded_sizes=pad_sizes(max_batch) if active[0] == CUDA else None,
            spinning=spinning,
            warnings=warnings,
        )
        runtime._warm_up()
        return runtime

    def fixed_input(self, count: int = 1) -> np.ndarray:
        """A deterministic input (a smooth gradient in [-1, 1]): the health check's probe."""
        size = self.input_size
        ramp = np.linspace(-1.0, 1.0, size * size * 3, dtype=np.float32).reshape(1, 3, size, size)
        return np.repeat(ramp, count, axis=0)

    def _warm_up(self) -> None:
        started = time.perf_counter()
        for size in self.padded_sizes or (1,):
            self.infer(np.zeros((size, 3, self.input_size, self.input_size), np.float32))
        embedding = self.infer(self.fixed_input())[0]
        if embedding.shape != (1, self.embedding_dim):
            raise ValueError(
                f"{self.path}: embedding output has shape {embedding.shape[1:]}, metadata says {self.embedding_dim}"
            )
        self.reference_output = embedding[0]
        logger.info(
            "warmed up %s in %.2f s (batch sizes %s)",
            self.path.name,
            time.perf_counter() - started,
            ",".join(map(str, self.padded_sizes or (1,))),
        )

    @property
    def output_names(self) -> list[str]:
        """The outputs :meth:`run` returns, in order: the embedding, then uncertainty and quality if present."""
        extras = [name for name in (self.uncertainty_output, self.quality_output) if name]
        return [self.embedding_output, *extras]

    def stage(self, parts: list[np.ndarray]) -> StagedBatch:
        """``(n_i, 3, S, S)`` float32 parts -> one batch on the session's device (padded on CUDA)."""
        import onnxruntime as ort

        count = sum(len(part) for part in parts)
        target = count
        if self.padded_sizes is not None:
            target = next((s for s in self.padded_sizes if s >= count), count)
        if target > count:
            parts = [*parts, np.zeros((target - count, *parts[0].shape[1:]), dtype=np.float32)]
        batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        device_type, device_id = self._device
        return StagedBatch(count, ort.OrtValue.ortvalue_from_numpy(batch, device_type, device_id))

    def run(self, staged: StagedBatch) -> tuple[np.ndarray, ...]:
        """Run the session on a staged batch (IO binding: input and outputs stay on the device
        until the outputs are copied back here); the real rows' ``(embeddings (B, D), *per-face
        outputs (B,))`` in :attr:`output_names` order."""
        device_type, device_id = self._device
        binding = self.session.io_binding()  # type: ignore[attr-defined]
        binding.bind_ortvalue_input(self.input_name, staged.value)
        for name in self.output_names:
            binding.bind_output(name, device_type, device_id)
        self.session.run_with_iobinding(binding)  # type: ignore[attr-defined]
        outputs = binding.copy_outputs_to_cpu()
        count = staged.count
        embeddings = np.asarray(outputs[0], dtype=np.float32)[:count]
        extras = (np.asarray(out, dtype=np.float32).reshape(-1)[:count] for out in outputs[1:])
        return (embeddings, *extras)

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """``(B, 3, S, S)`` float32 -> outputs, :meth:`stage` then :meth:`run` in this thread."""
        return self.run(self.stage([batch]))

    def info(self) -> dict:
        """Providers and interface for ``/v1/info``."""
        return {
            "path": self.path.name,
            "providers": self.providers,
            "requested_device": self.requested_device,
            "cuda_active": self.on_cuda,
            "precision": self.metadata.weights_precision,  # the graph's arithmetic; its input is float32 either way
            "intra_op_threads": self.intra_op_threads,
            "padded_batch_sizes": list(self.padded_sizes) if self.padded_sizes else None,
            "pipeline_depth": self.pipeline_depth,
            "io_binding": True,
            "spinning": self.spinning,
            "input": {"name": self.input_name, "size": self.input_size},
            "outputs": self.output_names,
            "warnings": self.warnings,
        }


def _check_alignment(metadata: ModelMetadata, warnings: list[str]) -> None:
    """Landmark and detection modes warp onto the contract's ArcFace template: say so if the
    model was trained on another one."""
    preprocess = metadata.preprocess
    template = np.asarray(preprocess["template"], dtype=np.float64)
    ours = arcface_template(metadata.input_size)
    if preprocess["alignment"] != ALIGNMENT or not np.allclose(template, ours, atol=1e-3):
        warnings.append(
            f"the model's metadata names alignment {preprocess['alignment']!r} with template {template.tolist()}; "
            "the server aligns photos to the ArcFace 5-point template (aligned crops are used as sent)"
        )
