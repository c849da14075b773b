"""The cellVIB and IFM papers' experiments, measured on scikit-learn's 8x8 digits (offline).

    OMP_NUM_THREADS=1 python benchmarks/digits_experiments.py --out runs/digits_experiments

1. MLP (cellVIB §4.1, widths scaled down for 1,797 images): deterministic MLP vs Deep VIB
   vs cellVIB test accuracy; the information plane across beta at the bottleneck (paper
   Fig. 5: I(Z;Y) >= H(Y) - CE against I(Z;X) <= KL) and per depth (Fig. 6: kernel
   pairwise-distance bounds on I(Z;X), a logistic probe's lower bound on I(Z;Y), binning).
2. Symmetric label noise 20% / 40% on the training labels: cellVIB vs the plain MLP,
   accuracy on clean test labels (cellVIB §4.2, Table 3).
3. IFM (Shen et al., §4) on shifted digits: the IFM paper's CNN with and without the IFM
   loss; digit and texture accuracy on test images with random backgrounds, at the epochs
   of best validation digit / texture accuracy (the paper's selection) and at the end.

Every number is a mean over seeds (each seed draws its own train/test split and init) with
a 95% t-interval; comparisons are paired by seed. Prints tables, writes results.json and
PNGs to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import facevib.experiments.models  # noqa: F401  (registers the research families)
from facevib.data.classic import load_digits_split, make_shifted_digits, make_textures, symmetric_label_noise
from facevib.experiments import ArrayDataset, OptimSettings, accuracy, fit_classifier
from facevib.info import binning_mi, kernel_mi_bounds, label_mi_lower_bound, probe_label_mi, to_bits, vib_kl_bound
from facevib.info.ifm import IFMRegularizer
from facevib.models import create_model

MLP_SIZE = {"input_dim": 64, "hidden": (256, 256), "bottleneck": 64, "num_classes": 10}
MLP_NAMES = {"mlp": "MLP", "deepvib_mlp": "Deep VIB", "cellvib_mlp": "cellVIB"}
IFM_PAIRS = ["conv1:conv2", "conv2:conv3", "conv3:conv4"]


def interval(values: list[float]) -> dict[str, float]:
    """Mean, sample std and the half-width of the 95% t-interval of the mean."""
    from scipy import stats

    arr = np.asarray(values, dtype=np.float64)
    half = float(stats.t.ppf(0.975, arr.size - 1) * arr.std(ddof=1) / math.sqrt(arr.size)) if arr.size > 1 else math.nan
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else math.nan,
        "ci95": half,
        "n": int(arr.size),
    }


def fmt(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    s = interval(values)
    return f"{s['mean'] * scale:.{digits}f} +- {s['ci95'] * scale:.{digits}f}"


# ----------------------------------------------------------------------------- part 1 and 2


def digits_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y, x_test, y_test = load_digits_split(0.3, seed)
    return x.reshape(len(x), -1), y, x_test.reshape(len(x_test), -1), y_test


def train_mlp(name: str, beta: float, seed: int, args: argparse.Namespace, noise: float = 0.0) -> dict[str, Any]:
    """One MLP run; returns accuracies and (for VIB models) the bottleneck bounds."""
    x, y, x_test, y_test = digits_split(seed)
    y_train = symmetric_label_noise(y, noise, 10, seed)[0] if noise else y
    torch.manual_seed(seed)
    kwargs = dict(MLP_SIZE) if name == "mlp" else {**MLP_SIZE, "beta": "constant", "beta_max": beta}
    model = create_model(name, **kwargs)
    settings = OptimSettings(name="adam", lr=args.lr, betas=(0.5, 0.999), decay_every=2, decay_gamma=0.97)
    fit_classifier(model, ArrayDataset(x, y_train), settings, epochs=args.epochs, batch_size=64, seed=seed)
    result: dict[str, Any] = {
        "model": name,
        "beta": beta,
        "seed": seed,
        "noise": noise,
        "test_acc": accuracy(model, ArrayDataset(x_test, y_test)),
        "model_obj": model,
        "split": (x, y, x_test, y_test),
    }
    if model.num_cells:
        with torch.no_grad():
            logits_train, logits_test = model(torch.from_numpy(x)), model(torch.from_numpy(x_test))
        kl_test = vib_kl_bound(model, [torch.from_numpy(x_test)])
        result["kl_cells_test_bits"] = to_bits(kl_test).tolist()
        result["izx_bits"] = float(to_bits(kl_test[-1]))
        result["izy_test_bits"] = float(to_bits(label_mi_lower_bound(logits_test, y_test, 10)))
        result["izy_train_bits"] = float(to_bits(label_mi_lower_bound(logits_train, y, 10)))
    return result


@torch.no_grad()
def layer_outputs(model: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    """Eval-mode outputs of every representation layer (the cells' means)."""
    captured: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[name].register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o))
        for name in model.layer_names
    ]
    try:
        model.eval()(torch.from_numpy(x))
    finally:
        for handle in handles:
            handle.remove()
    return [captured[name].numpy() for name in model.layer_names]


def depth_profile(run: dict[str, Any], noise_var: float) -> list[dict[str, Any]]:
    """Per layer: kernel bounds on I(Z;X), probe and binning I(Z;Y), binning saturation (nats)."""
    x, y, x_test, y_test = run["split"]
    train_layers = layer_outputs(run["model_obj"], x)
    test_layers = layer_outputs(run["model_obj"], x_test)
    profile = []
    for depth, (t_train, t_test) in enumerate(zip(train_layers, test_layers, strict=True), start=1):
        kernel = kernel_mi_bounds(t_test, noise_var, y_test)
        binned = binning_mi(t_test, y_test)
        profile.append(
            {
                "depth": depth,
                "izx_kernel_upper": kernel.upper,
                "izx_kernel_lower": kernel.lower,
                "izy_kernel_upper": kernel.label_upper,
                "izy_kernel_lower": kernel.label_lower,
                "izy_probe": probe_label_mi(t_train, y, t_test, y_test),
                "binning_ixt": binned.i_xt,
                "binning_ity": binned.i_ty,
                "binning_saturated": binned.saturated,
            }
        )
    return profile


# ----------------------------------------------------------------------------- part 3


def ifm_run(use_ifm: bool, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The IFM paper's CNN on shifted digits; accuracies on validation and test every epoch."""
    x, y, x_test, y_test = load_digits_split(0.3, seed)
    textures = make_textures(10, seed=seed)
    # A fifth of the training digits is held out for validation (IFM paper §4.1), with
    # random textures like the test set.
    count = len(x) // 5
    train_images, _ = make_shifted_digits(x[count:], y[count:], textures, tied=True, seed=seed)
    val_images, val_tex = make_shifted_digits(x[:count], y[:count], textures, tied=False, seed=seed + 1)
    test_images, test_tex = make_shifted_digits(x_test, y_test, textures, tied=False, seed=seed + 2)
    sets = {
        "val_digit": ArrayDataset(val_images, y[:count]),
        "val_texture": ArrayDataset(val_images, val_tex),
        "test_digit": ArrayDataset(test_images, y_test),
        "test_texture": ArrayDataset(test_images, test_tex),
    }
    torch.manual_seed(seed)
    model = create_model("ifm_cnn", in_channels=1, input_size=32, widths=tuple(args.cnn_widths))
    ifm = None
    if use_ifm:
        example = torch.from_numpy(train_images[:2])
        ifm = IFMRegularizer.for_model(model, IFM_PAIRS, example, weight=args.ifm_weight, locations=args.ifm_locations)
    per_epoch: list[dict[str, float]] = []

    def evaluate(epoch: int, record: dict[str, Any]) -> None:
        accs = {key: accuracy(model, data) for key, data in sets.items()}
        per_epoch.append({"epoch": epoch, **accs, "flows": record.get("flows")})

    settings = OptimSettings(name="sgd", lr=args.ifm_lr, momentum=0.9)
    fit_classifier(
        model,
        ArrayDataset(train_images, y[count:]),
        settings,
        epochs=args.ifm_epochs,
        batch_size=64,
        seed=seed,
        ifm=ifm,
        on_epoch=evaluate,
    )
    best_digit = max(per_epoch, key=lambda r: r["val_digit"])
    best_texture = max(per_epoch, key=lambda r: r["val_texture"])
    return {
        "ifm": use_ifm,
        "seed": seed,
        "per_epoch": per_epoch,
        "select_digit": best_digit,
        "select_texture": best_texture,
        "final": per_epoch[-1],
    }


# ----------------------------------------------------------------------------- plots


def plot_all(out: Path, results: dict[str, Any], sample_images: tuple[np.ndarray, np.ndarray]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    # Fig. 5: bottleneck I(Z;Y) vs I(Z;X) across beta.
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, split in zip(axes, ("train", "test"), strict=True):
        for name, color in (("deepvib_mlp", "tab:blue"), ("cellvib_mlp", "tab:red")):
            rows = results["beta_sweep"][name]
            xs = [interval(r["izx_bits"])["mean"] for r in rows]
            ys = [interval(r[f"izy_{split}_bits"]) for r in rows]
            ax.errorbar(
                xs,
                [s["mean"] for s in ys],
                yerr=[s["ci95"] for s in ys],
                marker="o",
                color=color,
                label=MLP_NAMES[name],
            )
            offset = (3, 5) if name == "deepvib_mlp" else (3, -11)
            for r, x_, s in zip(rows, xs, ys, strict=True):
                ax.annotate(
                    f"b={r['beta']:g}",
                    (x_, s["mean"]),
                    fontsize=7,
                    color=color,
                    xytext=offset,
                    textcoords="offset points",
                )
        ax.set_xscale("log")
        ax.axhline(math.log2(10), color="grey", lw=0.8, ls=":")
        ax.set_xlabel("I(Z;X) upper bound = bottleneck KL [bits]")
        ax.set_title(f"{split} set")
        ax.legend()
    axes[0].set_ylabel("I(Z;Y) lower bound = H(Y) - CE [bits]")
    fig.suptitle("Digits MLP: information plane across beta (mean, 95% CI over seeds)")
    fig.tight_layout()
    paths.append(out / "infoplane_beta.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    # Fig. 6: per depth.
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, color in zip(MLP_NAMES, ("tab:grey", "tab:blue", "tab:red"), strict=True):
        profiles = results["depth"][name]
        depths = [p["depth"] for p in profiles[0]]
        for ax, key, style in (
            (axes[0], "izx_kernel_upper", "-"),
            (axes[0], "izx_kernel_lower", "--"),
            (axes[1], "izy_probe", "-"),
            (axes[2], "binning_ity", "-"),
        ):
            if key == "binning_ity":  # saturated estimates are flagged, not plotted as signal
                kept = [
                    [to_bits(p[d][key]) for p in profiles if not p[d]["binning_saturated"]] for d in range(len(depths))
                ]
                shown = [(d, v) for d, v in zip(depths, kept, strict=True) if len(v) > 1]
                if shown:
                    stats_ = [interval(v) for _, v in shown]
                    ax.errorbar(
                        [d for d, _ in shown],
                        [s["mean"] for s in stats_],
                        yerr=[s["ci95"] for s in stats_],
                        marker="o",
                        color=color,
                        label=MLP_NAMES[name],
                    )
                continue
            values = [[to_bits(p[d][key]) for p in profiles] for d in range(len(depths))]
            stats_ = [interval(v) for v in values]
            label = f"{MLP_NAMES[name]} ({key.split('_')[-1]})" if ax is axes[0] else MLP_NAMES[name]
            ax.errorbar(
                depths,
                [s["mean"] for s in stats_],
                yerr=[s["ci95"] for s in stats_],
                ls=style,
                marker="o",
                color=color,
                label=label,
            )
        if name == "cellvib_mlp":
            kl = [
                interval([r["kl_cells_test_bits"][d] for r in results["accuracy_runs"][name]])
                for d in range(len(depths))
            ]
            axes[0].errorbar(
                depths,
                [s["mean"] for s in kl],
                yerr=[s["ci95"] for s in kl],
                ls=":",
                marker="s",
                color=color,
                label="cellVIB per-cell KL bound",
            )
    axes[0].set_yscale("log")
    axes[0].set_title(f"I(Z;X): kernel bounds (noise var {results['settings']['noise_var']})")
    axes[1].set_title("I(Z;Y): logistic probe lower bound")
    saturated = sum(p[d]["binning_saturated"] for ps in results["depth"].values() for p in ps for d in range(len(p)))
    total = sum(len(p) for ps in results["depth"].values() for p in ps)
    axes[2].set_title(f"I(Z;Y): binning (bin 0.67), {saturated}/{total} saturated")
    if saturated == total:
        axes[2].text(
            0.5,
            0.5,
            "every layer saturated:\nH(T) = log N, no signal\n(flagged, not plotted)",
            ha="center",
            va="center",
            transform=axes[2].transAxes,
        )
    for ax in axes:
        ax.set_xlabel("layer (3 = bottleneck K)")
        ax.set_ylabel("bits")
        ax.set_xticks(depths)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "infoplane_depth.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    # Label noise.
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, color in (("mlp", "tab:grey"), ("cellvib_mlp", "tab:red")):
        rates = sorted(results["label_noise"][name], key=float)
        stats_ = [interval(results["label_noise"][name][r]) for r in rates]
        ax.errorbar(
            [100 * float(r) for r in rates],
            [100 * s["mean"] for s in stats_],
            yerr=[100 * s["ci95"] for s in stats_],
            marker="o",
            color=color,
            label=MLP_NAMES[name],
        )
    ax.set_xlabel("symmetric label noise on training labels [%]")
    ax.set_ylabel("clean test accuracy [%]")
    ax.legend()
    ax.set_title("Digits MLP under label noise")
    fig.tight_layout()
    paths.append(out / "label_noise.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    # IFM: accuracy curves and examples.
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for use_ifm, color in ((False, "tab:grey"), (True, "tab:green")):
        runs = results["ifm"]["with" if use_ifm else "without"]
        epochs = [r["epoch"] for r in runs[0]["per_epoch"]]
        for key, style in (("test_digit", "-"), ("test_texture", "--")):
            curves = np.array([[r[key] for r in run["per_epoch"]] for run in runs])
            label = f"{'IFM' if use_ifm else 'baseline'} {key.split('_')[1]}"
            stats_ = [interval(list(column)) for column in curves.T]
            mean = np.array([100 * s["mean"] for s in stats_])
            half = np.array([100 * s["ci95"] for s in stats_])
            axes[0].plot(epochs, mean, ls=style, color=color, label=label)
            axes[0].fill_between(epochs, mean - half, mean + half, color=color, alpha=0.12)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("test accuracy, random backgrounds [%]")
    axes[0].legend(fontsize=8)
    axes[0].set_title("shifted digits: digit vs texture accuracy (95% CI)")
    for ax, (images, title) in zip(
        axes[1:],
        ((sample_images[0], "training (texture = class)"), (sample_images[1], "test (random texture)")),
        strict=True,
    ):
        grid = np.concatenate([np.concatenate(list(images[r * 5 : r * 5 + 5, 0]), axis=1) for r in range(2)], axis=0)
        ax.imshow(grid, cmap="gray", vmin=-1, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    paths.append(out / "ifm_shifted_digits.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------- main


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/digits_experiments")
    parser.add_argument("--seeds", type=int, default=5, help="seeds for accuracy and label noise")
    parser.add_argument("--sweep-seeds", type=int, default=3, help="seeds per beta of the information plane")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=1e-3, help="beta of the accuracy and noise runs")
    parser.add_argument("--betas", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2, 1e-1])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.2, 0.4])
    parser.add_argument("--noise-var", type=float, default=10.0, help="kernel bounds' noise variance")
    parser.add_argument("--ifm-seeds", type=int, default=3)
    parser.add_argument("--ifm-epochs", type=int, default=12)
    parser.add_argument("--ifm-lr", type=float, default=0.01)
    parser.add_argument("--ifm-weight", type=float, default=1.0)
    parser.add_argument("--ifm-locations", type=int, default=8)
    parser.add_argument("--cnn-widths", type=int, nargs=4, default=[8, 16, 32, 32])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    tic = time.perf_counter()
    seeds = list(range(args.seeds))
    results: dict[str, Any] = {
        "settings": {**vars(args), "mlp": {k: list(v) if isinstance(v, tuple) else v for k, v in MLP_SIZE.items()}}
    }

    # 1. accuracy (+ the 0% point of the noise curve), per-depth profiles.
    runs = {name: [train_mlp(name, args.beta, s, args) for s in seeds] for name in MLP_NAMES}
    results["depth"] = {name: [depth_profile(r, args.noise_var) for r in rs] for name, rs in runs.items()}
    results["accuracy"] = {name: interval([r["test_acc"] for r in rs]) for name, rs in runs.items()}
    for name in ("deepvib_mlp", "cellvib_mlp"):
        diff = [c["test_acc"] - b["test_acc"] for c, b in zip(runs[name], runs["mlp"], strict=True)]
        results["accuracy"][f"{name}_minus_mlp"] = interval(diff)
    print(
        f"\n1. digits MLP {MLP_SIZE['hidden']}-{MLP_SIZE['bottleneck']}, beta {args.beta:g}, {args.epochs} epochs, {len(seeds)} seeds: test accuracy % (mean +- 95% CI)"
    )
    for name, rs in runs.items():
        print(f"   {MLP_NAMES[name]:9s} {fmt([r['test_acc'] for r in rs])}")
    for name in ("deepvib_mlp", "cellvib_mlp"):
        d = results["accuracy"][f"{name}_minus_mlp"]
        print(f"   {MLP_NAMES[name]} - MLP (paired): {100 * d['mean']:+.2f} +- {100 * d['ci95']:.2f}")
    print("\n   per depth (bits, mean over seeds): I(Z;X) kernel upper | probe I(Z;Y) | binning I(T;Y) [saturated?]")
    for name in MLP_NAMES:
        for d in range(len(MLP_SIZE["hidden"]) + 1):
            rows = [p[d] for p in results["depth"][name]]
            sat = sum(r["binning_saturated"] for r in rows)
            print(
                f"   {MLP_NAMES[name]:9s} layer {d + 1}: {to_bits(np.mean([r['izx_kernel_upper'] for r in rows])):6.2f} | "
                f"{to_bits(np.mean([r['izy_probe'] for r in rows])):5.2f} | {to_bits(np.mean([r['binning_ity'] for r in rows])):5.2f} "
                f"[{sat}/{len(rows)} saturated]"
            )

    # 1b. information plane across beta at the bottleneck.
    sweep: dict[str, list[dict[str, Any]]] = {}
    for name in ("deepvib_mlp", "cellvib_mlp"):
        sweep[name] = []
        for beta in args.betas:
            rs = (
                runs[name][: args.sweep_seeds]
                if beta == args.beta
                else [train_mlp(name, beta, s, args) for s in range(args.sweep_seeds)]
            )
            sweep[name].append(
                {
                    "beta": beta,
                    "test_acc": [r["test_acc"] for r in rs],
                    "izx_bits": [r["izx_bits"] for r in rs],
                    "izy_test_bits": [r["izy_test_bits"] for r in rs],
                    "izy_train_bits": [r["izy_train_bits"] for r in rs],
                    "kl_cells_test_bits": [r["kl_cells_test_bits"] for r in rs],
                }
            )
    results["beta_sweep"] = sweep
    print(
        f"\n   bottleneck information plane across beta ({args.sweep_seeds} seeds; bits): I(Z;X)<=KL | I(Z;Y)>=H(Y)-CE test | train | acc %"
    )
    for name, rows in sweep.items():
        for row in rows:
            print(
                f"   {MLP_NAMES[name]:9s} beta {row['beta']:<7g} {np.mean(row['izx_bits']):8.2f} | {fmt(row['izy_test_bits'], 1, 3)} | "
                f"{np.mean(row['izy_train_bits']):.3f} | {fmt(row['test_acc'])}"
            )

    # 2. label noise.
    noise: dict[str, dict[str, list[float]]] = {}
    for name in ("mlp", "cellvib_mlp"):
        noise[name] = {"0.0": [r["test_acc"] for r in runs[name]]}
        for rate in args.noise:
            noise[name][str(rate)] = [train_mlp(name, args.beta, s, args, noise=rate)["test_acc"] for s in seeds]
    results["label_noise"] = noise
    results["label_noise_diff"] = {
        rate: interval([c - b for c, b in zip(noise["cellvib_mlp"][rate], noise["mlp"][rate], strict=True)])
        for rate in noise["mlp"]
    }
    print(f"\n2. symmetric label noise ({len(seeds)} seeds): clean test accuracy %")
    print(f"   {'noise':>6s} | {'MLP':>15s} | {'cellVIB':>15s} | cellVIB - MLP (paired)")
    for rate in noise["mlp"]:
        d = results["label_noise_diff"][rate]
        print(
            f"   {100 * float(rate):5.0f}% | {fmt(noise['mlp'][rate]):>15s} | {fmt(noise['cellvib_mlp'][rate]):>15s} | {100 * d['mean']:+.2f} +- {100 * d['ci95']:.2f}"
        )

    # 3. IFM on shifted digits.
    ifm_seeds = list(range(args.ifm_seeds))
    ifm_runs = {
        "without": [ifm_run(False, s, args) for s in ifm_seeds],
        "with": [ifm_run(True, s, args) for s in ifm_seeds],
    }
    results["ifm"] = ifm_runs
    print(
        f"\n3. shifted digits, IFM CNN widths {args.cnn_widths}, {args.ifm_epochs} epochs, {len(ifm_seeds)} seeds: test accuracy % on random backgrounds"
    )
    print(f"   {'model (selected by)':28s} | {'acc(digit)':>15s} | {'acc(texture)':>15s}")
    summary = {}
    for variant, label in (("without", "baseline"), ("with", "IFM")):
        for select in ("select_digit", "select_texture", "final"):
            digit = [r[select]["test_digit"] for r in ifm_runs[variant]]
            texture = [r[select]["test_texture"] for r in ifm_runs[variant]]
            summary[f"{variant}/{select}"] = {"digit": interval(digit), "texture": interval(texture)}
            print(
                f"   {label + ' (' + select.replace('select_', 'best val ') + ')':28s} | {fmt(digit):>15s} | {fmt(texture):>15s}"
            )
    for select in ("select_digit", "final"):
        for target in ("digit", "texture"):
            diff = [
                w[select][f"test_{target}"] - b[select][f"test_{target}"]
                for w, b in zip(ifm_runs["with"], ifm_runs["without"], strict=True)
            ]
            summary[f"ifm_minus_baseline/{select}/{target}"] = d = interval(diff)
            print(
                f"   IFM - baseline ({select.replace('select_', 'best val ')}), acc({target}), paired: {100 * d['mean']:+.2f} +- {100 * d['ci95']:.2f}"
            )
    results["ifm_summary"] = summary

    textures = make_textures(10, seed=0)
    x, y, x_test, y_test = load_digits_split(0.3, 0)
    samples = (
        make_shifted_digits(x[:10], y[:10], textures, True, 0)[0],
        make_shifted_digits(x_test[:10], y_test[:10], textures, False, 1)[0],
    )
    for rs in runs.values():
        for r in rs:
            r.pop("model_obj"), r.pop("split")
    results["accuracy_runs"] = runs
    paths = plot_all(out, results, samples)
    results["seconds"] = time.perf_counter() - tic
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(f"\nwrote {out / 'results.json'} and {', '.join(p.name for p in paths)} in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
