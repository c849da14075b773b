"""Row-sharded matrices as ``torch.distributed.checkpoint`` sees them: DTensor ``Shard(0)``.

A class-parallel matrix (Partial FC centres and their optimizer state) lives as one
contiguous row range per rank, laid out exactly as DTensor's ``Shard(0)`` places rows:
``torch.chunk`` over the ranks, i.e. ``ceil(C / W)`` rows per rank and the remainder on the
last non-empty rank (:func:`facevib.distributed.shard_range`). :func:`checkpoint_view`
wraps a rank's rows in a DTensor over a one-dimensional device mesh of the default process
group, with public APIs only, so ``torch.distributed.checkpoint`` records the global
shape, writes each rank's rows, and on a load at another world size reads, for every rank,
only the overlapping parts of what was saved, in place into the live tensor. Checkpoints
written by the earlier row-block layout (any row ranges, several blocks per rank) load the
same way: DCP matches saved and wanted row ranges from the metadata alone.

In a single process (no process group) the view is the full matrix itself.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Shard

from facevib.distributed import shard_range

__all__ = ["checkpoint_view", "row_mesh"]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def row_mesh(device_type: str) -> DeviceMesh:
    """A one-dimensional mesh over every rank of the default process group."""
    return init_device_mesh(device_type, (dist.get_world_size(),))


def checkpoint_view(local: torch.Tensor, total_rows: int) -> torch.Tensor:
    """This rank's rows of a ``(total_rows, ...)`` matrix, as DCP should save and load them.

    Args:
        local: this rank's rows (contiguous; rows ``shard_range(total_rows, rank, world)``).
            The returned view shares its memory, so ``dcp.load`` restores into it.
        total_rows: rows of the global matrix.

    Returns:
        A DTensor placed ``Shard(0)`` when several ranks run, else ``local`` itself.
    """
    rank, world = _world()
    start, stop = shard_range(total_rows, rank, world)
    if local.dim() < 1 or not local.is_contiguous() or local.shape[0] != stop - start:
        raise ValueError(
            f"rank {rank} of {world} holds rows [{start}, {stop}) of {total_rows}, "
            f"got a tensor of shape {tuple(local.shape)} (contiguous: {local.is_contiguous()})"
        )
    if world == 1:
        return local
    shape = torch.Size([total_rows, *local.shape[1:]])
    return DTensor.from_local(
        local, row_mesh(local.device.type), [Shard(0)], run_check=False, shape=shape, stride=_contiguous_stride(shape)
    )


def _contiguous_stride(shape: torch.Size) -> tuple[int, ...]:
    stride, step = [], 1
    for size in reversed(shape):
        stride.append(step)
        step *= size
    return tuple(reversed(stride))
