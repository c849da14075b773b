"""Memory and checkpoint time of the Partial FC at WebFace42M scale, per rank (gloo, CPU).

Phases, each reported as peak resident memory of the rank (VmHWM, reset between phases)
against the shard's weight + momentum, the issue's goal being <= 1.5x at every phase:

* init — build the sharded PartialFC (shard-only draw of the N(0, 0.01) centres);
* step — one SGD step (momentum allocated here) on a global batch of embeddings, with the
  centres' update folded into the step as training runs it
  (:meth:`facevib.partial_fc.PartialFC.fold_sgd_updates`: no (C_local, D) gradient; the
  issue's goal for this phase is <= 1.25x);
* save — ``torch.distributed.checkpoint`` of the weight and momentum shards;
* load — a fresh PartialFC + optimizer reading them back (resharding path).

``--compare-classes N`` also measures init + step at N classes with the folded update
and with the dense gradient (``weight.grad`` + fused SGD, the previous step), side by side.

``--legacy`` also measures the previous design in the same run (every rank draws the full
matrix then slices; a checkpoint all-gathers the full weight and momentum on every rank),
at ``--legacy-classes`` (it needs ~4 full matrices per rank, so at full scale it does not
fit beside the new design on a 24 GB machine; its cost is linear in the class count).

    torchrun --standalone --nproc_per_node=2 benchmarks/partial_fc_scale.py --out pfc_scale.json
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from facevib.config import OptimConfig
from facevib.distributed import gather_rows, init_distributed, shard_range, shutdown_distributed
from facevib.engine.checkpoint import load_sharded, sharded_entries
from facevib.engine.optim import build_optimizer
from facevib.losses import CombinedMarginLoss
from facevib.partial_fc import PartialFC

GIB = 1 << 30
OPTIM = OptimConfig(name="sgd", momentum=0.9, weight_decay=5e-4)  # the MS1MV3 recipe's optimizer


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _phase(name: str, results: dict, fn) -> object:
    dist.barrier()
    _reset_peak()
    start = time.perf_counter()
    value = fn()
    dist.barrier()
    results[name] = {"seconds": time.perf_counter() - start, "peak_rss": _status("VmHWM")}
    return value


def _step(pfc: PartialFC, optimizer: torch.optim.Optimizer, batch: int, dim: int, classes: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed + dist.get_rank())
    embeddings = torch.randn(batch, dim, generator=generator, requires_grad=True)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    optimizer.zero_grad(set_to_none=True)
    pfc(embeddings, labels).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure_step(args: argparse.Namespace, classes: int, fold: bool) -> dict:
    """init + step only, at ``classes``, with the folded or the dense centre update."""
    results: dict = {}
    pfc = _phase(
        "init",
        results,
        lambda: PartialFC(CombinedMarginLoss(), args.dim, classes, seed=0),
    )
    optimizer = build_optimizer(OPTIM, {"partial_fc": pfc}, lr=0.1)
    if fold:
        pfc.fold_sgd_updates(optimizer)
    _phase("step", results, lambda: _step(pfc, optimizer, args.batch, args.dim, classes, 1))
    return results


def measure_new(args: argparse.Namespace, folder: Path) -> dict:
    results: dict = {}
    margin = CombinedMarginLoss()
    pfc = _phase("init", results, lambda: PartialFC(margin, args.dim, args.classes, seed=0))
    optimizer = build_optimizer(OPTIM, {"partial_fc": pfc}, lr=0.1)  # as training builds it
    pfc.fold_sgd_updates(optimizer)
    _phase("step", results, lambda: _step(pfc, optimizer, args.batch, args.dim, args.classes, 1))
    path = folder / "ckpt"

    def save() -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save(pfc.sharded_state_dict(optimizer), checkpoint_id=path / "partial_fc")

    _phase("save", results, save)
    pfc.weight.data = torch.empty(0)  # free the trained shard before measuring the load
    optimizer.state.clear()

    def load() -> None:
        fresh = PartialFC(margin, args.dim, args.classes, device="cpu", seed=9)
        fresh_optimizer = build_optimizer(OPTIM, {"partial_fc": fresh}, lr=0.1)
        load_sharded(path, fresh.sharded_state_dict(fresh_optimizer, sharded_entries(path)))

    _phase("load", results, load)
    results["checkpoint_bytes"] = sum(f.stat().st_size for f in (path / "partial_fc").iterdir())
    return results


def measure_legacy(args: argparse.Namespace, folder: Path) -> dict:
    """The previous design, reproduced: full draw then slice; all-gather full matrices."""
    results: dict = {}
    classes, rank, world = args.legacy_classes, dist.get_rank(), dist.get_world_size()
    start, stop = shard_range(classes, rank, world)

    def init() -> torch.nn.Parameter:
        full = torch.empty(classes, args.dim).normal_(0.0, 0.01, generator=torch.Generator().manual_seed(0))
        return torch.nn.Parameter(full[start:stop].clone())

    weight = _phase("init", results, init)
    momentum = weight.detach().clone()

    def save() -> None:
        state = {"weight": gather_rows(weight.detach(), classes), "momentum": gather_rows(momentum, classes)}
        if rank == 0:
            torch.save(state, folder / "legacy.pt")

    _phase("save", results, save)

    def load() -> None:
        state = torch.load(folder / "legacy.pt", map_location="cpu", weights_only=True)
        with torch.no_grad():
            weight.copy_(state["weight"][start:stop])
            momentum.copy_(state["momentum"][start:stop])

    _phase("load", results, load)
    results["shard_classes"] = stop - start
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=2_059_906, help="identities (WebFace42M: 2,059,906)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32, help="embeddings per rank in the step")
    parser.add_argument("--compare-classes", type=int, default=None, help="also: folded vs dense step at N classes")
    parser.add_argument("--skip-full", action="store_true", help="only the --compare-classes / --legacy rows")
    parser.add_argument("--legacy", action="store_true", help="also measure the previous design")
    parser.add_argument("--legacy-classes", type=int, default=200_000)
    parser.add_argument("--folder", type=Path, default=None, help="where checkpoints go (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    env = init_distributed("cpu")
    if not env.distributed:
        parser.error("run under torchrun (e.g. --nproc_per_node=2)")
    torch.set_num_threads(1)
    folder = args.folder or Path(tempfile.mkdtemp(prefix="pfc_scale_"))
    if env.is_main:
        folder.mkdir(parents=True, exist_ok=True)
    baseline_rss = _status("VmRSS")
    rows = [] if args.skip_full else [("new", args.classes, measure_new(args, folder))]
    gc.collect()
    if args.compare_classes:
        for design, fold in (("folded", True), ("dense", False)):
            rows.append((design, args.compare_classes, measure_step(args, args.compare_classes, fold=fold)))
            gc.collect()  # the fold's step hook makes a cycle: free that shard before the next
    if args.legacy:
        rows.append(("previous", args.legacy_classes, measure_legacy(args, folder)))
    gathered: list = [None] * env.world_size
    dist.all_gather_object(gathered, {"rank": env.rank, "baseline_rss": baseline_rss, "rows": rows})
    if env.is_main:
        report(args, gathered)
        shutil.rmtree(folder, ignore_errors=True)
    env.barrier()
    shutdown_distributed()
    return 0


def report(args: argparse.Namespace, gathered: list) -> None:
    print(f"{'design':<9} {'classes':>10} {'rank':>4} {'phase':<5} {'peak RSS GiB':>12} {'above start':>11} "
          f"{'shard w+m GiB':>13} {'ratio':>6} {'seconds':>8}")  # fmt: skip
    table = []
    for entry in gathered:
        for design, classes, phases in entry["rows"]:
            start, stop = shard_range(classes, entry["rank"], args.world if hasattr(args, "world") else len(gathered))
            shard = 2 * (stop - start) * args.dim * 4
            for phase in ("init", "step", "save", "load"):
                if phase not in phases:
                    continue
                peak = phases[phase]["peak_rss"] - entry["baseline_rss"]
                row = {
                    "design": design, "classes": classes, "rank": entry["rank"], "phase": phase,
                    "peak_rss_bytes": phases[phase]["peak_rss"], "peak_above_start_bytes": peak,
                    "shard_weight_momentum_bytes": shard, "ratio": peak / shard, "seconds": phases[phase]["seconds"],
                }  # fmt: skip
                table.append(row)
                print(f"{design:<9} {classes:>10} {entry['rank']:>4} {phase:<5} {phases[phase]['peak_rss'] / GIB:12.2f} "
                      f"{peak / GIB:11.2f} {shard / GIB:13.2f} {peak / shard:6.2f} {phases[phase]['seconds']:8.2f}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out), "folder": None},
                                        "torch": torch.__version__, "results": table}, indent=2) + "\n")  # fmt: skip
        print(f"wrote {args.out}")


if __name__ == "__main__":
    raise SystemExit(main())
