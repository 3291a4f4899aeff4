"""PNG charts of a bench report. Every panel says in its title whether it shows a model or a measurement."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

__all__ = ["pyplot", "speedup_chart", "layer_chart"]


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _bars(ax, labels: Sequence[str], series: Dict[str, Sequence[Optional[float]]], fmt: str = "{:.2f}") -> None:
    """Grouped bars: one group per label, one bar per series (None = no bar)."""
    n = max(1, len(series))
    width = 0.8 / n
    for j, (name, values) in enumerate(series.items()):
        xs = [i + (j - (n - 1) / 2) * width for i in range(len(labels))]
        ys = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, ys, width, label=name)
        for b, v in zip(bars, values):
            if v is not None:
                ax.annotate(fmt.format(v), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                            va="bottom", fontsize=7)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.legend(fontsize=8)


def _empty(ax, title: str, text: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=9, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def speedup_chart(path: str, *, measured: List[dict], floors: Dict[str, Dict[str, float]], device: str,
                  title: str) -> None:
    """Left: measured speed-up over the best eager provider, per provider and mode. Right: modelled floors.

    Args:
        path: PNG to write.
        measured: measurement records (``provider``, ``mode``, ``speedup_vs_best_eager``).
        floors: ``{"<mode> <regime>": {device display name: ms}}`` from the traffic model.
        device: name of the device the measurements ran on.
        title: figure title (model, dtype, batches).
    """
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    modes = sorted({r["mode"] for r in measured})
    timed = [r for r in measured if r.get("speedup_vs_best_eager") is not None]
    if timed:
        provs = [p for p in dict.fromkeys(r["provider"] for r in timed)]
        series = {m: [next((r["speedup_vs_best_eager"] for r in timed if r["provider"] == p and r["mode"] == m),
                           None) for p in provs] for m in modes}
        _bars(ax1, provs, series)
        ax1.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax1.set_ylabel("speed-up over best eager (x)")
        ax1.set_title(f"MEASUREMENT on {device}: speed-up over the best eager layout", fontsize=9)
    else:
        _empty(ax1, f"MEASUREMENT on {device}", "no provider was timed here")
    if floors:
        labels = list(floors)
        devs = list(dict.fromkeys(d for v in floors.values() for d in v))
        _bars(ax2, labels, {d: [floors[lab].get(d) for lab in labels] for d in devs})
        ax2.set_ylabel("floor (ms)")
        ax2.set_title("MODEL (traffic model, not measured): roofline floor per regime", fontsize=9)
    else:
        _empty(ax2, "MODEL", "no device floors")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def layer_chart(path: str, *, model_bytes: Dict[str, Dict[str, int]], measured_ms: Dict[str, Dict[str, float]],
                device: str, title: str, model_label: str) -> None:
    """Left: modelled bytes per layer group per regime. Right: measured per-layer time per provider.

    Args:
        path: PNG to write.
        model_bytes: ``{regime: {group: bytes}}`` (inference).
        measured_ms: ``{provider: {group: ms}}`` (inference forward).
        device: the measuring device.
        title: figure title.
        model_label: what the model panel counts (batch, dtype).
    """
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    groups = list(dict.fromkeys(g for v in model_bytes.values() for g in v))
    if groups:
        _bars(ax1, groups, {reg: [v.get(g, 0) / 1e9 for g in groups] for reg, v in model_bytes.items()},
              fmt="{:.2f}")
        ax1.set_ylabel("GB moved")
        ax1.set_title(f"MODEL (not measured): bytes per layer, {model_label}", fontsize=9)
    else:
        _empty(ax1, "MODEL", "no model")
    if measured_ms:
        mgroups = list(dict.fromkeys(g for v in measured_ms.values() for g in v))
        _bars(ax2, mgroups, {p: [v.get(g) for g in mgroups] for p, v in measured_ms.items()}, fmt="{:.2f}")
        ax2.set_ylabel("ms (median)")
        ax2.set_title(f"MEASUREMENT on {device}: forward time per layer (inference)", fontsize=9)
    else:
        _empty(ax2, f"MEASUREMENT on {device}", "no per-layer measurement")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
