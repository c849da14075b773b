"""The one place that knows about torchrun, process groups and devices.

Launched by ``torchrun`` the environment carries ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and the
rendezvous address; launched as a plain ``python`` process it runs as a world of one with
no process group at all, so the same training code serves both.
"""

from __future__ import annotations

import datetime
import gc
import os
import shutil
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from facevib.config import ConfigError

__all__ = [
    "DistEnv",
    "cuda_mismatch",
    "visible_nvidia_gpus",
    "init_distributed",
    "shutdown_distributed",
    "all_gather_with_grad",
    "all_reduce_sum_with_identity_grad",
    "gather_rows",
    "shard_range",
    "wrap_ddp",
]


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: single process, no process group

    @property
    def is_main(self) -> bool:
        """Rank 0 logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def barrier(self) -> None:
        """Synchronise all ranks (no-op for a single process)."""
        if self.distributed:
            dist.barrier()


def visible_nvidia_gpus() -> int:
    """How many GPUs ``nvidia-smi -L`` lists (0 without the tool, or when it fails)."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return 0
    try:
        listed = subprocess.run([executable, "-L"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    if listed.returncode != 0:  # e.g. "NVIDIA-SMI has failed": no usable driver, so no GPU
        return 0
    return sum(line.startswith("GPU ") for line in listed.stdout.splitlines())


def cuda_mismatch() -> str | None:
    """One line saying why torch cannot use the GPUs ``nvidia-smi`` sees, or None.

    None when there are no GPUs or torch can use them. Otherwise the installed torch is a
    CPU-only build, or a CUDA build the driver is too old for; silently training on the
    CPU of a GPU machine is never what was meant.
    """
    gpus = visible_nvidia_gpus()
    if gpus == 0 or torch.cuda.is_available():
        return None
    build = torch.version.cuda
    why = "a CPU-only build" if build is None else f"built for CUDA {build}, which this driver does not run"
    return (
        f"nvidia-smi lists {gpus} GPU(s) but torch {torch.version.__version__} cannot use them ({why}); "
        "install a CUDA build of torch (`make install` does on this host) or set run.device=cpu"
    )


def _resolve_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        problem = cuda_mismatch()
        if problem is not None:
            raise ConfigError(f"run.device=auto: {problem}")
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' requested but CUDA is not available on this machine")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    if device != "cpu":
        raise ConfigError(f"device {device!r}: expected 'auto', 'cpu' or 'cuda'")
    return torch.device("cpu")


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistEnv:
    """Initialise from torchrun's environment, or return a single-process environment.

    nccl is used on CUDA and gloo on CPU. The rendezvous itself (address, port, node
    count) is torchrun's job; nothing here hard-codes a port.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = _resolve_device(device, local_rank)
    if world_size == 1 and "MASTER_ADDR" not in os.environ:
        return DistEnv(device=torch_device)
    backend = "nccl" if torch_device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs: dict = {"device_id": torch_device} if backend == "nccl" else {}
        timeout = datetime.timedelta(seconds=timeout_s)
        store = _restart_safe_store(rank, world_size, timeout)
        if store is not None:
            kwargs.update(store=store, rank=rank, world_size=world_size)
        dist.init_process_group(backend=backend, timeout=timeout, **kwargs)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=torch_device, backend=backend)


def _restart_safe_store(rank: int, world_size: int, timeout: datetime.timedelta) -> dist.Store | None:
    """torchrun's agent store, with keys scoped to this restart attempt.

    After an elastic restart, torchrun hands the new workers the same agent-hosted store
    as the failed ones, and the process-group bootstrap keys of the dead attempt are still
    in it: the new ranks would read their predecessors' addresses and fail to connect
    (pytorch/pytorch#167288). A per-attempt prefix keeps each attempt's keys apart.
    Returns None outside torchrun's agent (plain env:// initialisation is used then).
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    client = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False, timeout=timeout
    )
    return dist.PrefixStore(f"facevib/attempt_{attempt}", client)


def shutdown_distributed() -> None:
    """Destroy the process group if one exists.

    What holds the group must be freed first: a DDP reducer or an autograd graph with a
    collective in it, freed after the group is gone, sometimes made gloo abort the process
    at exit ("terminate called without an active exception", about one 2-rank run in ten).
    Garbage cycles (a finished Trainer and its DDP wrapper) are collected here; a caller
    deletes what it still references (a model, a loss with its graph) before calling.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def shard_range(num_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous ``[start, stop)`` of ``num_items`` owned by ``rank``, as ``torch.chunk`` and
    DTensor's ``Shard(0)`` split them: ``ceil(n / W)`` items per rank, the last non-empty rank
    takes the remainder, and ranks past the end get an empty range."""
    chunk = -(-num_items // world_size)
    start = min(rank * chunk, num_items)
    return start, min(start + chunk, num_items)


class _AllGather(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the gradients of every rank's copy."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        tensor = tensor.contiguous()
        # The list form works on every backend and torch version we support.
        pieces = [torch.empty_like(tensor) for _ in range(ctx.world)]
        dist.all_gather(pieces, tensor)
        return torch.cat(pieces)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank used the gathered tensor (against its own class shard); the local
        # input's gradient is the sum of all those uses.
        grad = grad.contiguous()
        local = grad.shape[0] // ctx.world
        if dist.get_backend() == "nccl":
            out = torch.empty((local, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter(out, list(grad.split(local)))
            return out
        dist.all_reduce(grad)  # gloo has no reduce_scatter
        return grad[ctx.rank * local : (ctx.rank + 1) * local].clone()


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` (equal shapes) along dim 0, differentiably."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _AllGather.apply(tensor)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; backward passes the gradient through unchanged.

    Used where every rank then computes the *same* replicated loss from the sum: each
    rank's local term then receives exactly d(loss)/d(sum), so no reduction is needed in
    backward (reducing would count the replicated loss once per rank).
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def all_reduce_sum_with_identity_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks (see :class:`_AllReduceSum` for the gradient rule)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _AllReduceSum.apply(tensor)


def gather_rows(shard: torch.Tensor, total_rows: int) -> torch.Tensor:
    """Reassemble a tensor sharded by :func:`shard_range` along dim 0 (on every rank)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return shard.detach().clone()
    world = dist.get_world_size()
    sizes = [shard_range(total_rows, r, world) for r in range(world)]
    longest = max(stop - start for start, stop in sizes)
    # all_gather needs equal shapes: pad every shard to the longest, then trim.
    padded = shard.new_zeros((longest, *shard.shape[1:]))
    padded[: shard.shape[0]] = shard.detach()
    pieces = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded)
    return torch.cat([p[: stop - start] for p, (start, stop) in zip(pieces, sizes, strict=True)])


def _sum_hook(process_group, bucket):  # no annotations: DDP checks them against real classes
    """DDP communication hook: all-reduce gradients as a *sum* (DDP's default averages)."""
    work = dist.all_reduce(bucket.buffer(), group=process_group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def wrap_ddp(module: nn.Module, env: DistEnv) -> nn.Module:
    """Wrap ``module`` in DDP whose gradient all-reduce sums over ranks.

    Summing is right here because every per-rank loss term is already scaled to its share
    of the global-batch objective (the Partial FC loss is the global mean, replicated; local
    terms such as the KL are divided by the world size), so the sum of the per-rank
    gradients is the gradient of the global objective, as one process would compute it.
    A single process gets the module back unchanged.
    """
    if not env.distributed:
        return module
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    ddp = DistributedDataParallel(module, device_ids=device_ids)
    ddp.register_comm_hook(state=None, hook=_sum_hook)
    return ddp
