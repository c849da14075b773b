"""Plant known bugs in a copy of the project and check that the test suite catches each one.

``make mutants`` (not part of ``make test``). Every mutant is one exact source edit in one
file, applied to a fresh copy of the tracked tree in a temporary folder; the tests named for
it then run against that copy (``PYTHONPATH`` puts the copy first, for the subprocesses the
tests launch too). A mutant is *caught* when some test fails; the first failing test is
printed. The run exits 1 when any mutant survives or when an edit no longer applies (the
code moved: update the table below, the one place that knows where the load-bearing lines are).

    .venv/bin/python tools/mutants.py               # all mutants
    .venv/bin/python tools/mutants.py -k margin     # those whose name contains "margin"
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    """One planted bug: replace ``old`` (which must occur exactly once) by ``new`` in ``path``."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


MUTANTS = (
    Mutant(
        "rank-scaling",
        "facevib/engine/task.py",
        "loss = margin_loss + kl_loss / world",
        "loss = margin_loss + kl_loss",
        ("tests/test_task_ranks.py",),
        "every rank adds its full local KL, and DDP sums the gradients: the KL counted W times",
    ),
    Mutant(
        "margin-sign",
        "facevib/losses/margin.py",
        "angle = m1 * theta + m2",
        "angle = m1 * theta - m2",
        ("tests/test_losses.py",),
        "ArcFace's additive angular margin made a bonus",
    ),
    Mutant(
        "kl-formula",
        "facevib/models/vib.py",
        "- 2.0 * log_sigma_w - 1.0)",
        "- log_sigma_w - 1.0)",
        ("tests/test_vib.py",),
        "the Gaussian KL with log sigma instead of log sigma^2",
    ),
    Mutant(
        "fused-kl",
        "facevib/models/vib.py",
        "excess = log_sigma.mul_(-2.0).addcmul_(sigma, sigma).sub_(1.0)",
        "excess = log_sigma.mul_(-1.0).addcmul_(sigma, sigma).sub_(1.0)",
        ("tests/test_vib.py",),
        "the same KL mistake in the fused training node (what training actually runs)",
    ),
    Mutant(
        "fused-kl-gradient",
        "facevib/models/vib.py",
        "grad_z.addcmul_(dlog_sigma, per_sample, value=-1.0)",
        "grad_z.addcmul_(dlog_sigma, per_sample, value=1.0)",
        ("tests/test_vib.py",),
        "the fused node's hand-written KL gradient with a sign flipped",
    ),
    Mutant(
        "merged-frame",
        "facevib/models/shared_input.py",
        "        _add_on_frame(out, image)\n",
        "",
        ("tests/test_vib.py",),
        "the merged heads' shift taken as constant up to the border, as if the zero padding were not there",
    ),
    Mutant(
        "merged-frame-gradient",
        "facevib/models/shared_input.py",
        "_SEEN_FROM_EDGES = ((-1.0, 1.0, 0.0), (0.0, 1.0, 0.0), (0.0, 1.0, -1.0))",
        "_SEEN_FROM_EDGES = ((0.0, 1.0, 0.0), (0.0, 1.0, 0.0), (0.0, 1.0, 0.0))",
        ("tests/test_vib.py",),
        "the merged heads' shift gradient summed over every pixel, the padded border included",
    ),
    Mutant(
        "compiled-noise-shape",
        "facevib/models/vib.py",
        "        return torch.randn_like(like, dtype=dtype, memory_format=torch.contiguous_format)\n",
        "        return torch.randn(like.shape, dtype=dtype, device=like.device, generator=generator)\n",
        ("tests/test_vib.py",),
        "the compiled cell's noise drawn with randn(mu.shape), which a dynamic-shape trace cannot take",
    ),
    Mutant(
        "ten-fold-threshold",
        "facevib/eval/verification.py",
        "best = int(np.argmax(_fold_accuracy(dist[train], same[train], INSIGHTFACE_THRESHOLDS)))",
        "best = int(np.argmax(_fold_accuracy(dist[test], same[test], INSIGHTFACE_THRESHOLDS)))",
        ("tests/test_eval_verification.py",),
        "the 10-fold threshold chosen on the fold it is scored on",
    ),
    Mutant(
        "exact-fpr-threshold",
        "facevib/eval/roc.py",
        "return [(float(ordered[n - 1 - k]) if k < n else -np.inf, k) for k in allowed]",
        "return [(float(ordered[max(n - 2 - k, 0)]) if k < n else -np.inf, k) for k in allowed]",
        ("tests/test_eval_roc.py",),
        "the TPR@FPR threshold one impostor too low (FPR above its target)",
    ),
    Mutant(
        "alignment-template",
        "facevib/contract.py",
        "(38.2946, 51.6963),",
        "(38.2946, 52.6963),",
        ("tests/test_align.py", "tests/test_detect_embed.py"),
        "the left eye of the ArcFace 5-point template moved by one pixel",
    ),
    Mutant(
        "recordio-length-mask",
        "facevib/data/recordio.py",
        "return word >> _LENGTH_BITS, word & (_MAX_RECORD - 1)",
        "return word >> _LENGTH_BITS, word & ((_MAX_RECORD << 1) - 1)",
        ("tests/test_recordio.py",),
        "a RecordIO part's length read with one continuation-flag bit in it",
    ),
    Mutant(
        "api-key-comparison",
        "facevib/serve/auth.py",
        'if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8")):',
        'if not hmac.compare_digest(given.encode("utf-8", "surrogateescape")[:4], expected.encode("utf-8")[:4]):',
        ("tests/test_serve_app.py",),
        "an API key accepted when only its first four bytes match",
    ),
    Mutant(
        "batcher-deadline",
        "facevib/serve/batcher.py",
        "done, _ = await asyncio.wait(futures, timeout=timeout_s)",
        "done, _ = await asyncio.wait(futures, timeout=None)",
        ("tests/test_serve_batcher.py",),
        "a request's deadline ignored: it waits for the model however long that takes",
    ),
)


def tracked_files() -> list[str]:
    """The files git tracks, plus untracked ones it does not ignore (work in progress)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    return [name for name in listed.decode().split("\0") if name and (ROOT / name).is_file()]


def copy_tree(files: list[str], destination: Path) -> None:
    """Copy ``files`` (relative to the project root) into ``destination``."""
    for name in files:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)


def plant(mutant: Mutant, tree: Path) -> None:
    """Apply ``mutant`` to the copy in ``tree``; ValueError when its source line moved."""
    path = tree / mutant.path
    source = path.read_text()
    count = source.count(mutant.old)
    if count != 1:
        raise ValueError(f"{mutant.name}: {mutant.path} holds {count} copies of {mutant.old!r}, expected 1")
    path.write_text(source.replace(mutant.old, mutant.new))


def run_tests(tree: Path, tests: tuple[str, ...], timeout_s: float) -> tuple[bool, str]:
    """``(passed, first failing test or reason)`` of pytest on ``tests`` inside ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout_s:.0f} s"
    if done.returncode == 0:
        return True, ""
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", done.stdout, flags=re.MULTILINE)
    return False, failed.group(1) if failed else done.stdout.strip().splitlines()[-1]


def check_copy_is_imported(tree: Path) -> None:
    """The copy, not the installed checkout, must be what ``import facevib`` finds."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    found = subprocess.run(
        [sys.executable, "-c", "import facevib; print(facevib.__file__)"],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"the copy is shadowed: import facevib found {found}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="run only mutants whose name contains this")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant's test run")
    parser.add_argument("--json", type=Path, default=ROOT / "build" / "mutants.json")
    args = parser.parse_args(argv)

    chosen = [m for m in MUTANTS if args.k in m.name]
    files = tracked_files()
    rows = []
    for mutant in chosen:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"facevib-mutant-{mutant.name}-") as folder:
            tree = Path(folder)
            copy_tree(files, tree)
            check_copy_is_imported(tree)
            try:
                plant(mutant, tree)
            except ValueError as exc:
                rows.append({**asdict(mutant), "status": "stale", "caught_by": str(exc)})
                print(f"{mutant.name:22s} STALE     {exc}", flush=True)
                continue
            passed, caught_by = run_tests(tree, mutant.tests, args.timeout)
        status = "survived" if passed else "caught"
        rows.append({**asdict(mutant), "status": status, "caught_by": caught_by, "seconds": time.monotonic() - started})
        print(f"{mutant.name:22s} {status.upper():9s} {caught_by}", flush=True)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    caught = sum(row["status"] == "caught" for row in rows)
    print(f"\n{caught}/{len(rows)} planted bugs caught ({args.json})")
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
