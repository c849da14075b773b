"""One cell block per stage: the plain block against the cell with its heads separate or merged.

The measurement behind :func:`facevib.models.shared_input.merging_pays`. For each stage of
an iResNet, block ``layerN[1]`` (stride 1, the stage's own width) runs forward + backward on
the activation the stage sees (the stem and the earlier stages of a plain model applied to
random images): the plain block, then the cellVIB block with the branches' first layers one
by one and merged. Variants run round-robin; the least time of ``--rounds`` is reported,
with the ratio to the plain block and what the rule chooses:

    python benchmarks/cell_blocks.py --models r50:8 demo_r18:32 --threads 1 --out cell_blocks.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from facevib.models import create_model
from facevib.models.iresnet import IBasicBlock
from facevib.models.shared_input import merging_pays

_HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("model_step", _HERE / "model_step.py")
model_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(model_step)

# variant -> (model prefix, IBasicBlock.merge_heads)
VARIANTS: dict[str, tuple[str, bool | None]] = {
    "plain": ("", None),
    "separate": ("cellvib_", False),
    "merged": ("cellvib_", True),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["r50:8", "demo_r18:32"], type=model_step._model_spec)
    parser.add_argument("--rounds", type=int, default=5, help="round-robin rounds; the least time is reported")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def block_step(block: IBasicBlock, x: torch.Tensor) -> Callable[[], None]:
    """Forward + backward of one block on ``x`` (a proxy loss: mean square, plus the KL)."""

    def step() -> None:
        block.zero_grad(set_to_none=True)
        inputs = x.detach().requires_grad_()
        if block.vib is None:
            loss = block(inputs).square().mean()
        else:
            out, kl = block(inputs, return_kl=True)
            loss = out.square().mean() + kl
        loss.backward()

    return step


def stage_inputs(shape: str, batch: int, seed: int) -> list[torch.Tensor]:
    """The input of each stage's second block, from a plain model on random images."""
    depth, overrides = model_step.SHAPES.get(shape, (shape, {}))
    torch.manual_seed(seed)
    plain = create_model(depth, **overrides).train()
    inputs = []
    with torch.no_grad():
        h = plain._stem(torch.rand(batch, 3, 112, 112) * 2 - 1)
        for stage in (plain.layer1, plain.layer2, plain.layer3, plain.layer4):
            inputs.append(stage[0](h))
            h = stage(h)
    return inputs


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run, print the table, optionally write JSON; returns the results."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = []
    for shape, batch in args.models:
        batch = batch or 8
        depth, overrides = model_step.SHAPES.get(shape, (shape, {}))
        models = {name: create_model(prefix + depth, **overrides).train() for name, (prefix, _) in VARIANTS.items()}
        for stage, x in enumerate(stage_inputs(shape, batch, args.seed), start=1):
            steps = {}
            for name, (_, merge) in VARIANTS.items():
                block = getattr(models[name], f"layer{stage}")[1]
                block.merge_heads = merge
                steps[name] = block_step(block, x)
                steps[name]()  # warm-up
            least = dict.fromkeys(steps, float("inf"))
            for _ in range(args.rounds):
                for name, step in steps.items():
                    start = time.perf_counter()
                    step()
                    least[name] = min(least[name], time.perf_counter() - start)
            cell = getattr(models["merged"], f"layer{stage}")[1]
            rows.append(
                {
                    "model": shape,
                    "batch": batch,
                    "stage": stage,
                    "input": list(x.shape),
                    "plain_ms": least["plain"] * 1e3,
                    "separate_ratio": least["separate"] / least["plain"],
                    "merged_ratio": least["merged"] / least["plain"],
                    "rule": "merge" if merging_pays(x, cell._heads()) else "separate",
                }
            )
    print(format_table(rows))
    results = {"threads": torch.get_num_threads(), "torch": torch.__version__, "rounds": args.rounds, "results": rows}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width table of the results."""
    header = f"{'model':<12}{'stage':>6}{'input':>22}{'plain ms':>10}{'separate x':>12}{'merged x':>10}{'rule':>10}"
    lines = [header, "-" * len(header)]
    for row in rows:
        shape = " x ".join(str(v) for v in row["input"])
        lines.append(
            f"{row['model']:<12}{row['stage']:>6}{shape:>22}{row['plain_ms']:>10.1f}"
            f"{row['separate_ratio']:>12.3f}{row['merged_ratio']:>10.3f}{row['rule']:>10}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
