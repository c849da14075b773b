"""Row-sharded tensors that ``torch.distributed.checkpoint`` saves and reshards by itself.

A class-parallel matrix (Partial FC centres and their optimizer state) lives as one
contiguous row range per rank (``facevib.distributed.shard_range``: rank r holds
``C // W + (r < C % W)`` rows). DTensor's ``Shard(0)`` splits like ``torch.chunk`` (ceil
sizes), which is a different layout, and ShardedTensor is deprecated, so :class:`RowShard`
implements the small protocol DCP uses for both (``__create_write_items__``,
``__create_chunk_list__``, ``__get_tensor_shard__``) for an arbitrary row range:

* saving writes this rank's rows as blocks of at most ``block_rows`` rows, so every
  storage item (and every read buffer on load) is bounded, whatever the shard size;
* loading at another world size reads, for this rank's rows, only the overlapping parts
  of the saved blocks, in place into the live tensor; no rank ever holds the full matrix;
* it works with and without a process group (a single process saves and loads all rows).

A RowShard has the *global* shape (what DCP records and checks) but no storage of its
own: it supports no tensor operations; the data is :attr:`RowShard.local`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorProperties
from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType

__all__ = ["RowShard", "DEFAULT_BLOCK_BYTES", "block_rows_for"]

# One storage item per 64 MiB: large enough for fast sequential I/O, small enough that the
# per-item read buffer DCP allocates on load stays a few percent of a WebFace42M shard.
DEFAULT_BLOCK_BYTES = 64 << 20


def block_rows_for(row_shape: torch.Size | tuple[int, ...], dtype: torch.dtype, block_bytes: int) -> int:
    """Rows per block so that one block holds at most ``block_bytes`` (at least one row)."""
    row_bytes = torch.Size(row_shape).numel() * torch.empty((), dtype=dtype).element_size()
    return max(1, block_bytes // max(1, row_bytes))


class RowShard(torch.Tensor):
    """Rows ``[row_offset, row_offset + len(local))`` of a ``(total_rows, *local.shape[1:])`` tensor.

    Args:
        local: this rank's rows (any device, contiguous); DCP reads into it in place.
        row_offset: global index of ``local``'s first row.
        total_rows: rows of the global tensor.
        block_bytes: largest storage item written per block of rows.
    """

    local: torch.Tensor
    row_offset: int
    block_rows: int

    @staticmethod
    def __new__(cls, local: torch.Tensor, row_offset: int, total_rows: int, block_bytes: int = DEFAULT_BLOCK_BYTES):
        if local.dim() < 1 or not local.is_contiguous():
            raise ValueError(f"RowShard needs a contiguous tensor with rows, got shape {tuple(local.shape)}")
        if not 0 <= row_offset <= row_offset + local.shape[0] <= total_rows:
            raise ValueError(f"rows [{row_offset}, {row_offset + local.shape[0]}) outside a tensor of {total_rows}")
        shape = torch.Size([total_rows, *local.shape[1:]])
        shard = torch.Tensor._make_wrapper_subclass(cls, shape, dtype=local.dtype, device=local.device)
        shard.local = local
        shard.row_offset = row_offset
        shard.block_rows = block_rows_for(local.shape[1:], local.dtype, block_bytes)
        return shard

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        raise TypeError(f"RowShard is a checkpoint view and supports no tensor operation ({func}); use .local")

    def __repr__(self) -> str:  # the default repr would run tensor operations
        stop = self.row_offset + self.local.shape[0]
        return f"RowShard(rows [{self.row_offset}, {stop}) of {tuple(self.shape)}, {self.dtype})"

    def _blocks(self) -> Iterator[tuple[int, int]]:
        """(first local row, row count) of each block."""
        rows = self.local.shape[0]
        for start in range(0, rows, self.block_rows):
            yield start, min(self.block_rows, rows - start)

    def _chunk(self, start: int, rows: int) -> ChunkStorageMetadata:
        zeros = [0] * (self.local.dim() - 1)
        return ChunkStorageMetadata(
            offsets=torch.Size([self.row_offset + start, *zeros]), sizes=torch.Size([rows, *self.local.shape[1:]])
        )

    # --- the protocol torch.distributed.checkpoint's default planners call -------------

    def __create_write_items__(self, fqn: str, obj: Any) -> list[WriteItem]:
        properties = TensorProperties.create_from_tensor(self.local)
        items = []
        for start, rows in self._blocks():
            chunk = self._chunk(start, rows)
            items.append(
                WriteItem(
                    index=MetadataIndex(fqn, chunk.offsets),
                    type=WriteItemType.SHARD,
                    tensor_data=TensorWriteData(chunk=chunk, properties=properties, size=self.shape),
                )
            )
        return items

    def __create_chunk_list__(self) -> list[ChunkStorageMetadata]:
        return [self._chunk(start, rows) for start, rows in self._blocks()]

    def __get_tensor_shard__(self, index: MetadataIndex) -> torch.Tensor:
        if index.offset is None:
            raise ValueError(f"{index.fqn}: a RowShard is looked up by offset")
        start = index.offset[0] - self.row_offset
        if start < 0 or start >= self.local.shape[0] or start % self.block_rows:
            raise ValueError(f"{index.fqn}: no block of this shard starts at global row {index.offset[0]}")
        return self.local.narrow(0, start, min(self.block_rows, self.local.shape[0] - start))
