"""The three charts every system reuses: roofline, latency CDF, Pareto front.

matplotlib with the Agg backend (no display needed); each function writes one PNG and
returns its path, so a bench case can list it and the docs can include it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .devices import DeviceSpec  # noqa: E402
from .stats import cdf  # noqa: E402


def _save(fig, path: str | Path) -> str:
    """Save as ``path``, a PNG if it names no format (matplotlib would add the ".png"
    itself, and the name returned would be a file that does not exist)."""
    path = Path(path)
    path = path if path.suffix else path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def roofline_chart(device: DeviceSpec, points: Sequence[dict], path: str | Path,
                   dtype: str = "fp32", title: str | None = None) -> str:
    """Log-log roofline of ``device`` with measured points.

    Each point is ``{"label", "intensity" (FLOP/byte), "flops" (achieved FLOP/s)}``.
    """
    peak, bw = device.peak(dtype), device.mem_bandwidth
    ridge = peak / bw
    lo = min([ridge / 100] + [p["intensity"] / 2 for p in points])
    hi = max([ridge * 100] + [p["intensity"] * 2 for p in points])
    x = np.logspace(np.log10(lo), np.log10(hi), 200)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.loglog(x, np.minimum(peak, x * bw), "k-", lw=2, label=f"roofline ({dtype})")
    ax.axvline(ridge, color="gray", ls=":", lw=1)
    ax.annotate(f"ridge {ridge:.1f} FLOP/B", (ridge, peak / 3), rotation=90, fontsize=8,
                color="gray", ha="right")
    for p in points:
        ax.loglog(p["intensity"], p["flops"], "o")
        ax.annotate(p["label"], (p["intensity"], p["flops"]), fontsize=8,
                    xytext=(4, -10), textcoords="offset points")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("FLOP/s")
    ax.set_title(title or device.name, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def latency_cdf(series: dict[str, Sequence[float]], path: str | Path, unit: str = "ms",
                slo: float | None = None, title: str = "latency CDF") -> str:
    """Empirical CDFs of latency samples (one line per series), with the SLO marked."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, samples in series.items():
        if len(samples) == 0:  # nothing answered: no curve (cdf refuses an empty sample)
            continue
        x, y = cdf(samples)
        ax.plot(x, y, label=name)
    if slo is not None:
        ax.axvline(slo, color="red", ls="--", lw=1, label=f"SLO {slo:g} {unit}")
    ax.set_xscale("log")
    ax.set_xlabel(f"latency ({unit})")
    ax.set_ylabel("fraction of requests")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def pareto_chart(rows: Sequence[dict], front: Sequence[dict], x: str, y: str,
                 path: str | Path, label: str = "name", title: str = "Pareto front",
                 logx: bool = True) -> str:
    """Scatter of all rows on (x, y) with the Pareto-optimal ones joined by a line."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r[x] for r in rows], [r[y] for r in rows], color="lightgray", zorder=2)
    fr = sorted(front, key=lambda r: r[x])
    ax.plot([r[x] for r in fr], [r[y] for r in fr], "o-", color="C0", zorder=3,
            label="Pareto front")
    for r in rows:
        ax.annotate(str(r[label]), (r[x], r[y]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def line_chart(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path,
               xlabel: str, ylabel: str, title: str = "", logx: bool = False,
               logy: bool = False) -> str:
    """Several (x, y) curves on one axis (loss over time, best throughput over trials)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, label=name)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing to plot (e.g. no successful trial)
        ax.legend(fontsize=8)
    return _save(fig, path)
