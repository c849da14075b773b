"""Which ONNX Runtime execution providers a session runs on, chosen from ``--device``.

One rule for the detectors and the embedding runtime (:mod:`facevib.serve.runtime`, which
passes ``use="serving"`` and its own CUDA options): ``cpu`` is the CPU provider; ``cuda``, ``cuda:N`` and ``auto`` put the CUDA provider first (device N, default 0,
with cuDNN's heuristic algorithm choice, because detector input shapes vary from photo to
photo) and the CPU provider after it, when this onnxruntime build has the CUDA provider; without one,
``auto`` quietly means the CPU and an explicit ``cuda`` runs on the CPU with a note saying why.
ONNX Runtime also falls back to the CPU without an error when the CUDA provider is built in but
cannot start (missing CUDA or cuDNN libraries), so :func:`fallback_note` compares the session's
providers with the request after the session exists.

:func:`choose_providers` is a pure function of the device and the available list, so the choice
is tested against ``onnxruntime.get_available_providers()`` of any build, and with lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "CPU",
    "CUDA",
    "DETECTOR_CUDA_OPTIONS",
    "ProviderChoice",
    "check_device",
    "choose_providers",
    "fallback_note",
    "session_notes",
    "session_providers",
]

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# MTCNN's P-Net sees a new input shape at every pyramid level of every photo size, and each
# new shape costs the CUDA provider a cuDNN algorithm search unless the search is heuristic.
DETECTOR_CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}


def check_device(device: str) -> str:
    """``device`` lower-cased when it is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        ValueError: any other value (named).
    """
    name = str(device).strip().lower()
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")


@dataclass(frozen=True)
class ProviderChoice:
    """The providers to open a session with (ONNX Runtime's ``providers=`` argument), and why.

    ``providers`` holds names, or ``(name, options)`` for the CUDA provider's ``device_id``;
    ``notes`` says why CUDA was asked for and not chosen (empty otherwise).
    """

    providers: list
    notes: list[str] = field(default_factory=list)

    @property
    def wants_cuda(self) -> bool:
        """The CUDA provider is first in :attr:`providers`."""
        first = self.providers[0]
        return (first[0] if isinstance(first, tuple) else first) == CUDA


def choose_providers(
    device: str, available: list[str], *, use: str = "detection", cuda_options: dict | None = None
) -> ProviderChoice:
    """The providers for ``device`` given the build's ``available`` providers (see the module docstring).

    ``use`` names the session's job in the notes; ``cuda_options`` are the CUDA provider's
    options besides ``device_id`` (default: :data:`DETECTOR_CUDA_OPTIONS`).

    Raises:
        ValueError: ``device`` is not ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """
    name = check_device(device)
    if name == "cpu":
        return ProviderChoice([CPU])
    if CUDA not in available:
        notes = []
        if name.startswith("cuda"):
            notes.append(
                f"CUDA was requested for {use} (device={name}) but this onnxruntime build has no {CUDA} "
                f"(available: {', '.join(available)}); install onnxruntime-gpu. {use.capitalize()} runs on the CPU"
            )
        return ProviderChoice([CPU], notes)
    index = name.partition(":")[2]
    extra = DETECTOR_CUDA_OPTIONS if cuda_options is None else cuda_options
    return ProviderChoice([(CUDA, {"device_id": int(index or 0), **extra}), CPU])


def fallback_note(choice: ProviderChoice, active: list[str], device: str, use: str = "detection") -> str | None:
    """Why the session runs on the CPU although CUDA was chosen; None when it runs as chosen."""
    if choice.wants_cuda and (not active or active[0] != CUDA):
        return (
            f"CUDA was requested for {use} (device={device}) but ONNX Runtime runs it on "
            f"{active[0] if active else 'no provider'}: the CUDA provider failed to start (check the CUDA and "
            f"cuDNN libraries onnxruntime-gpu needs); {use} runs on the CPU"
        )
    return None


def session_providers(device: str = "cpu", providers: list | None = None) -> ProviderChoice:
    """The providers for a detector session: ``providers`` when the caller names them, else
    :func:`choose_providers` for ``device`` and this onnxruntime build."""
    if providers:
        return ProviderChoice(list(providers))
    import onnxruntime as ort

    return choose_providers(device, ort.get_available_providers())


def session_notes(choice: ProviderChoice, active: list[str], device: str) -> list[str]:
    """:attr:`ProviderChoice.notes` plus the :func:`fallback_note` of a session running on ``active``."""
    note = fallback_note(choice, active, device)
    return [*choice.notes, *([note] if note else [])]
