"""The evaluation figures (paper Figs. 3, 4, 6, 7a) as PNG files, with matplotlib's Agg backend.

Every function takes the rows that ``nann-tf evaluate --sweep`` also writes to CSV (see
:mod:`nann_tf.evaluation.sweep`), so a figure shows nothing that is not in the CSV. Files are written
to a temporary name and renamed into place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["plot_curves", "plot_eps", "plot_perturbation"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    from nann_tf.fsutil import atomic_path

    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    return path


def _series(rows: Sequence[Mapping]) -> dict[str, list[Mapping]]:
    out: dict[str, list[Mapping]] = {}
    for r in rows:
        out.setdefault(str(r["series"]), []).append(r)
    return out


def _envelope(x: Sequence[float], y: Sequence[float]) -> tuple[list, list]:
    """The points of (x, y) that no point with a smaller or equal x beats in y, by x."""
    ex, ey, best = [], [], float("-inf")
    for a, b in sorted(zip(x, y), key=lambda p: (p[0], -p[1])):
        if b > best:
            ex.append(a)
            ey.append(b)
            best = b
    return ex, ey


def plot_curves(rows: Sequence[Mapping], ms: Sequence[int], path: str | os.PathLike,
                title: str) -> Path:
    """coverage@M and recall-retrieval@M against the fraction of the corpus scored.

    Every point of a ``series`` is drawn faintly; the line joins its upper envelope (the points
    no cheaper point beats), the best value reachable at that cost. recall-all@M of each series'
    model is drawn as a dashed line. One row of panels per M.

    Args:
      rows: sweep rows (``series``, ``scored_fraction``, ``coverage@M``, ``recall_retrieval@M``,
        ``recall_all@M``).
      ms: the M values.
      path: the PNG to write.
      title: figure title.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(len(ms), 2, figsize=(10, 3.6 * len(ms)), squeeze=False)
    for i, m in enumerate(ms):
        for j, (name, pts) in enumerate(_series(rows).items()):
            color = f"C{j}"
            for ax, key in ((axes[i, 0], f"coverage@{m}"), (axes[i, 1], f"recall_retrieval@{m}")):
                x = [100 * r["scored_fraction"] for r in pts]
                y = [r[key] for r in pts]
                ax.plot(x, y, "o", color=color, alpha=0.35, ms=4)
                ex, ey = _envelope(x, y)
                ax.plot(ex, ey, "o-", color=color, label=name)
            axes[i, 1].axhline(pts[0][f"recall_all@{m}"], ls="--", lw=1, color=color,
                               label=f"{name}: recall-all")
        axes[i, 0].set_ylabel(f"coverage@{m}")
        axes[i, 1].set_ylabel(f"recall-retrieval@{m}")
        for ax in axes[i]:
            ax.set_xlabel("% of the corpus scored per query")
            ax.grid(alpha=0.3)
        axes[i, 0].legend(fontsize=8)
        axes[i, 1].legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def _yerr(pts: Sequence[Mapping], key: str):
    """Error bars from the ``<key>_ci95_lo/_hi`` columns (None when a row has none)."""
    try:
        lo = [r[key] - float(r[f"{key}_ci95_lo"]) for r in pts]
        hi = [float(r[f"{key}_ci95_hi"]) - r[key] for r in pts]
    except (KeyError, TypeError, ValueError):
        return None
    return [lo, hi]


def plot_eps(rows: Sequence[Mapping], ms: Sequence[int], path: str | os.PathLike) -> Path:
    """coverage@M and recall-all@M against the FGSM eps (Fig. 7a; symlog x axis, 0 allowed),
    with their 95% intervals as error bars."""
    plt = _pyplot()
    pts = sorted(rows, key=lambda r: r["fgsm_eps"])
    eps = [float(r["fgsm_eps"]) for r in pts]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for m in ms:
        for ax, key, label in ((axes[0], f"coverage@{m}", f"coverage@{m}"),
                               (axes[1], f"recall_all@{m}", f"recall-all@{m}")):
            ax.errorbar(eps, [r[key] for r in pts], yerr=_yerr(pts, key), fmt="o-",
                        capsize=3, label=label)
    positive = [e for e in eps if e > 0]
    for ax, label in zip(axes, ("coverage", "recall-all")):
        if positive:
            ax.set_xscale("symlog", linthresh=min(positive))
        ax.set_xlabel("FGSM eps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if pts:
        r = pts[0]
        fig.suptitle(f"Sensitivity to eps (Fig. 7a): beam ef={r['ef']} T={r['T']}; "
                     f"bars: 95% intervals over {r['users']} users")
    return _save(fig, path)


def plot_perturbation(rows: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Histograms of ``|s_u(e_v) - s_u(e_v + delta)|`` per model (Fig. 6), from bin rows."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, bins in _series(rows).items():
        bins = sorted(bins, key=lambda r: r["bin_lo"])
        total = max(sum(r["count"] for r in bins), 1)
        edges = [bins[0]["bin_lo"]] + [r["bin_hi"] for r in bins]
        ax.stairs([r["count"] / total for r in bins], edges, label=name)
    if rows:
        ax.set_title(f"|s(e_v) - s(e_v + delta)|, |delta| = {rows[0]['radius']:.3g}, "
                     f"top-{rows[0]['top_m']} items (Fig. 6)")
    ax.set_xlabel("|score change| (last bin: everything above)")
    ax.set_ylabel("fraction of (user, item) pairs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
