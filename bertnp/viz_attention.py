"""Attention-map figures (matplotlib, imported only when a figure is drawn).

    from bertnp.inference import attention_maps
    from bertnp.viz_attention import plot_attention, plot_attention_heads
    maps = attention_maps(model, tokenizer, "The cat sat on the mat.", "It was tired.")
    plot_attention(maps, layer=0, head=3, path="attn_l0_h3.png")   # one head (or head=None: mean of heads)
    plot_attention_heads(maps, layer=5, path="attn_l5.png")        # every head of a layer, one grid

Rows are queries (the token that attends), columns keys (the tokens attended to); each row sums
to 1. The figures are built on ``matplotlib.figure.Figure`` directly, not pyplot: no display or
GUI backend is needed, and no global pyplot state is touched. In a notebook the returned figure
shows itself; with ``path`` it is written as a PNG (the folder is created) and the path returned.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["plot_attention", "plot_attention_heads"]


def _figure(figsize):
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("attention figures need matplotlib: pip install 'bertnp[viz]'") from exc
    return Figure(figsize=figsize, layout="constrained")


def _unpack(maps, tokens):
    """(attentions (L, H, T, T) float array, token labels) from AttentionMaps or an array."""
    if hasattr(maps, "attentions") and hasattr(maps, "tokens"):
        att, toks = np.asarray(maps.attentions), list(maps.tokens)
    else:
        att = np.asarray(maps)
        if att.ndim == 2:
            att = att[None, None]                              # (T, T) -> (1, 1, T, T)
        elif att.ndim == 3:
            att = att[None]                                    # (H, T, T) -> (1, H, T, T)
        toks = None
    if att.ndim != 4 or att.shape[-1] != att.shape[-2]:
        raise ValueError(f"attentions must be (layers, heads, T, T), got shape {att.shape}")
    if tokens is not None:
        toks = list(tokens)
    if toks is None:
        toks = [str(i) for i in range(att.shape[-1])]
    if len(toks) != att.shape[-1]:
        raise ValueError(f"tokens has {len(toks)} entries but the maps cover {att.shape[-1]} positions")
    return att.astype(np.float64), toks


def _check_index(name, value, size):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not -size <= value < size:
        raise ValueError(f"{name} must be an integer in [0, {size}), got {value!r}")
    return int(value) % size


def _draw(ax, grid, tokens, title, show_labels=True, vmax=None):
    image = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=vmax if vmax is not None else max(grid.max(), 1e-9),
                      aspect="equal", interpolation="nearest")
    n = len(tokens)
    if show_labels:
        size = 9 if n <= 20 else 7 if n <= 40 else 5
        ax.set_xticks(range(n), tokens, rotation=90, fontsize=size)
        ax.set_yticks(range(n), tokens, fontsize=size)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    return image


def _finish(fig, path):
    if path is None:
        return fig
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_attention(maps, tokens=None, layer: int = 0, head: int | None = None, path=None, title: str | None = None):
    """Heat map of one head's attention (``head=None``: the mean over the layer's heads).

    ``maps``: :class:`bertnp.inference.AttentionMaps`, or an array (L, H, T, T), (H, T, T) or
    (T, T) with ``tokens``. Returns the figure, or ``path`` after writing a PNG there."""
    att, toks = _unpack(maps, tokens)
    layer = _check_index("layer", layer, att.shape[0])
    if head is None:
        grid, which = att[layer].mean(axis=0), "mean of heads"
    else:
        head = _check_index("head", head, att.shape[1])
        grid, which = att[layer, head], f"head {head}"
    n = len(toks)
    side = min(12.0, 2.5 + 0.32 * n)
    fig = _figure((side + 1.0, side))
    ax = fig.add_subplot(1, 1, 1)
    image = _draw(ax, grid, toks, title or f"attention, layer {layer}, {which}")
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    fig.colorbar(image, ax=ax, shrink=0.8, label="probability")
    return _finish(fig, path)


def plot_attention_heads(maps, tokens=None, layer: int = 0, path=None, ncols: int = 4,
                         labels: bool | None = None):
    """Every head of one layer in a grid (shared colour scale 0..1), tokens on the axes when the
    text is short enough to read (``labels`` forces it on or off)."""
    att, toks = _unpack(maps, tokens)
    layer = _check_index("layer", layer, att.shape[0])
    heads = att.shape[1]
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}")
    ncols = min(ncols, heads)
    nrows = math.ceil(heads / ncols)
    show = (len(toks) <= 24) if labels is None else bool(labels)
    cell = 3.2 if show else 2.2
    fig = _figure((cell * ncols + 0.8, cell * nrows + 0.4))
    image = None
    for h in range(heads):
        ax = fig.add_subplot(nrows, ncols, h + 1)
        image = _draw(ax, att[layer, h], toks, f"head {h}", show_labels=show, vmax=1.0)
    fig.suptitle(f"attention of layer {layer}: rows attend to columns")
    fig.colorbar(image, ax=fig.axes, shrink=0.6, label="probability")
    return _finish(fig, path)
