"""Plots of an evaluation: ROC, FROC and calibration PNGs drawn from a ``metrics.json`` dict.

Matplotlib's object API on the Agg canvas, without pyplot: no global backend, no display, safe
in a server process and inside Slicer.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["PLOTTERS", "plot_calibration", "plot_froc", "plot_roc"]


def _figure(width: float, height: float) -> Any:
    """A matplotlib figure on the Agg canvas, without pyplot (no global backend, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _auc_label(name: str, block: dict[str, Any]) -> str:
    auc, ci = block.get("auc"), block.get("auc_ci95")
    text = f"{name}: AUC {auc:.3f}" if auc is not None else f"{name}: AUC n/a"
    if ci:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text + f" (n+={block['n_positive']}, n-={block['n_negative']})"


def plot_roc(metrics: dict[str, Any]) -> bytes:
    """ROC curves: lesion benign-vs-malignant (matched lesions), image and breast risk (malignant
    vs the rest), and, dashed, the image's lesion-vs-none curve of the detection score."""
    fig = _figure(6.0, 5.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    for name, block, colour, style in (
        ("lesion (matched)", metrics["lesion_level"]["auc_benign_vs_malignant_matched"], "tab:purple", "-"),
        ("image", metrics["image_level"]["auc"], "tab:blue", "-"),
        ("breast", metrics["breast_level"]["auc"], "tab:orange", "-"),
        # Absent from reports written before 2026-12-03 (same schema: the field was added).
        ("image, lesion vs none", metrics["image_level"].get("detection_auc"), "tab:green", "--"),
    ):
        if block is None or block.get("auc") is None:
            continue
        roc = block["roc"]
        ax.plot(roc["fpr"], roc["tpr"], color=colour, linestyle=style, linewidth=1.8, label=_auc_label(name, block))
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("1 - specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (malignant; dashed: any lesion)")
    ax.set_title(f"ROC, 95% CI by bootstrap (n={metrics['n_bootstrap']})", fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def plot_froc(metrics: dict[str, Any]) -> bytes:
    """FROC: lesion sensitivity against false positives per image (log scale), table points marked."""
    fig = _figure(6.0, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    froc = metrics["detection"]["froc"]
    curve = froc["curve"]
    x = np.asarray(curve["fp_per_image"], dtype=np.float64)
    y = np.asarray([v if v is not None else np.nan for v in curve["sensitivity"]], dtype=np.float64)
    order = np.lexsort((y, x))
    floor_x = 1 / 16
    ax.step(np.maximum(x[order], floor_x), y[order], where="post", color="tab:blue", linewidth=1.8, label="all lesions")
    pts = {float(k): v for k, v in froc["sensitivity_at_fp_per_image"].items() if v is not None}
    if pts:
        ax.plot(list(pts), list(pts.values()), "o", color="tab:red", label="sensitivity at 1/8 ... 8 FP/image")
        for r, v in pts.items():
            ax.annotate(f"{v:.2f}", (r, v), textcoords="offset points", xytext=(0, -12), ha="center", fontsize=7)
    ax.axvline(
        max(metrics["detection"]["fp_per_image"] or floor_x, floor_x),
        color="0.5",
        linestyle=":",
        label=f"operating point (score >= {metrics['score_threshold']:.2f})",
    )
    ax.set_xscale("log", base=2)
    ax.set_xlim(floor_x, 16)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("lesion sensitivity")
    ax.set_title(
        f"FROC ({metrics['n_images']} images, {metrics['lesion_level']['n_lesions']} lesions; "
        f"scores >= {froc['min_score']:.2f})",
        fontsize=10,
    )
    ax.legend(loc="lower right", fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return _png(fig)


def _reliability_panel(ax: Any, title: str, tables: list[tuple[str, dict[str, Any], str]], ylabel: str) -> None:
    """One reliability diagram: a line per (label, calibration_bins table, colour)."""
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    lines = [title]
    for label, cal, colour in tables:
        bins = [b for b in cal["bins"] if b["n"]]
        if bins:
            xs = [b["mean_predicted"] for b in bins]
            ys = [b["observed_rate"] for b in bins]
            sizes = [20 + 180 * b["n"] / max(cal["n"], 1) for b in bins]
            ax.plot(xs, ys, color=colour, linewidth=1, label=label or None)
            ax.scatter(xs, ys, s=sizes, color=colour, zorder=3)
        brier = "n/a" if cal["brier"] is None else f"{cal['brier']:.3f}"
        ece = "n/a" if cal["ece"] is None else f"{cal['ece']:.3f}"
        lines.append(f"{label + ': ' if label else ''}n={cal['n']}, Brier {brier}, ECE {ece}")
    ax.set_title("\n".join(lines), fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel(ylabel, fontsize=8)
    if any(label for label, _, _ in tables):
        ax.legend(loc="upper left", fontsize=7)
    ax.grid(alpha=0.3)


def plot_calibration(metrics: dict[str, Any]) -> bytes:
    """Reliability diagrams: lesion p_malignant and lesion score before (raw) and after the
    model's calibration, then image and breast risk."""
    fig = _figure(9.0, 8.4)
    cal = metrics.get("calibration")
    if cal is not None:
        before_after = [
            ("lesion p_malignant (matched)", cal["p_malignant_matched"], "observed fraction malignant"),
            ("lesion score (all marks)", cal["lesion_score"], "observed fraction true marks"),
        ]
        for k, (title, block, ylabel) in enumerate(before_after):
            _reliability_panel(
                fig.add_subplot(2, 2, k + 1),
                title,
                [("raw", block["raw"], "tab:red"), ("calibrated", block["calibrated"], "tab:blue")],
                ylabel,
            )
    else:  # a metrics.json from before calibration existed
        _reliability_panel(
            fig.add_subplot(2, 2, 1),
            "lesion p_malignant (matched)",
            [("", metrics["lesion_level"]["calibration_p_malignant_matched"], "tab:blue")],
            "observed fraction malignant",
        )
    for k, (title, block) in enumerate(
        (("image risk", metrics["image_level"]["calibration"]), ("breast risk", metrics["breast_level"]["calibration"]))
    ):
        _reliability_panel(
            fig.add_subplot(2, 2, k + 3), title, [("", block, "tab:blue")], "observed fraction malignant"
        )
    fig.tight_layout()
    return _png(fig)


PLOTTERS: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "roc.png": plot_roc,
    "froc.png": plot_froc,
    "calibration.png": plot_calibration,
}
