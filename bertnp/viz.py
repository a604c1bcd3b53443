"""Every figure bertnp draws (matplotlib, imported only when a figure is drawn).

    from bertnp.viz import plot_training, plot_attention, plot_attention_heads, plot_instance
    plot_training("runs/demo/metrics.jsonl", "runs/demo/training.png")   # loss and accuracy curves

    from bertnp.inference import attention_maps
    maps = attention_maps(model, tokenizer, "The cat sat on the mat.", "It was tired.")
    plot_attention(maps, layer=0, head=3, path="attn_l0_h3.png")   # one head (or head=None: mean of heads)
    plot_attention_heads(maps, layer=5, path="attn_l5.png")        # every head of a layer, one grid

    plot_instance(dataset[3], tokenizer)                           # one pretraining pair and its masks

Figures are built on ``matplotlib.figure.Figure`` directly, not through pyplot, so drawing one never
changes the process's matplotlib backend (a notebook's inline figures keep working) and needs no
display; in a notebook the returned figure shows itself, and with ``path`` it is written as a PNG.
:func:`plot_instance` alone uses pyplot (the lessons show it with ``plt.show()``).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["read_metrics", "plot_training", "plot_attention", "plot_attention_heads", "plot_instance"]


def _new_figure(**kwargs):
    """A pyplot-free matplotlib Figure; ImportError says what to install."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("figures need matplotlib: pip install 'bertnp[viz]'") from exc
    return Figure(**kwargs)


def read_metrics(path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (a damaged line -- cut short by a crash, not UTF-8 --
    is skipped)."""
    from bertnp.checkpoint import read_jsonl
    return read_jsonl(path)


def plot_training(metrics, path=None, baseline: float | None = None):
    """Loss (left) and MLM / NSP accuracy (right) against the step, train and held-out.

    ``metrics``: a ``metrics.jsonl`` path or its records. The held-out records' unigram baseline
    (``baseline_mlm_acc``, always predicting the most frequent token) is drawn as a dotted line.
    Writes a PNG to ``path`` when given (returns the path), else returns the figure.
    """
    records = read_metrics(metrics) if isinstance(metrics, (str, Path)) else list(metrics)
    train = [r for r in records if r.get("split") == "train"]
    ev = [r for r in records if r.get("split") == "eval"]
    fig = _new_figure(figsize=(11, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)

    def line(ax, recs, key, **kw):
        if recs:
            ax.plot([r["step"] for r in recs], [r[key] for r in recs], **kw)

    line(ax_loss, train, "loss", color="C0", alpha=0.8, label="train loss (MLM + NSP)")
    line(ax_loss, train, "mlm_loss", color="C0", alpha=0.5, ls="--", label="train MLM loss")
    line(ax_loss, ev, "loss", color="C3", marker="o", ms=3, label="held-out loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("cross-entropy (nats)")
    ax_loss.set_title("loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()

    line(ax_acc, train, "mlm_acc", color="C0", alpha=0.8, label="train MLM acc")
    line(ax_acc, train, "nsp_acc", color="C2", alpha=0.5, label="train NSP acc")
    line(ax_acc, ev, "mlm_acc", color="C3", marker="o", ms=3, label="held-out MLM acc")
    line(ax_acc, ev, "nsp_acc", color="C1", marker="s", ms=3, label="held-out NSP acc")
    if baseline is None and ev:
        baseline = ev[-1].get("baseline_mlm_acc")
    if baseline is not None:
        ax_acc.axhline(baseline, color="gray", ls=":", label=f"unigram baseline ({baseline:.3f})")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(0, 1)
    ax_acc.set_title("accuracy")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    if path is None:
        return fig
    from bertnp.checkpoint import atomic_write
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))

    return path


# ============================================================================ attention maps
# Rows are queries (the token that attends), columns keys (the tokens attended to); each row sums to 1.

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
    fig = _new_figure(figsize=(side + 1.0, side), layout="constrained")
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
    fig = _new_figure(figsize=(cell * ncols + 0.8, cell * nrows + 0.4), layout="constrained")
    image = None
    for h in range(heads):
        ax = fig.add_subplot(nrows, ncols, h + 1)
        image = _draw(ax, att[layer, h], toks, f"head {h}", show_labels=show, vmax=1.0)
    fig.suptitle(f"attention of layer {layer}: rows attend to columns")
    fig.colorbar(image, ax=fig.axes, shrink=0.6, label="probability")
    return _finish(fig, path)


# ============================================================================ a pretraining instance

def plot_instance(instance, tokenizer, max_tokens: int = 48, ax=None):
    """A matplotlib picture of one instance: the original tokens above the model input, one box
    per token, shaded by segment, masked positions coloured by what masking did.
    Returns the Figure (matplotlib is imported here, only when called)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    from bertnp.data import _kind, _token_strings

    names = _token_strings(tokenizer)
    mask_id = tokenizer.mask_token_id
    n = min(max_tokens, len(instance.tokens))
    per_row = 16
    rows = -(-n // per_row)
    if ax is None:
        fig, ax = plt.subplots(figsize=(per_row * 0.9, rows * 1.3 + 0.6))
    else:
        fig = ax.figure
    colours = {"mask": "#f4a261", "random": "#e76f51", "kept": "#2a9d8f"}
    for p in range(n):
        r, c = divmod(p, per_row)
        y = -r * 1.3
        kind = _kind(instance, p, mask_id)
        seg_colour = "#e9ecef" if instance.segment_ids[p] == 0 else "#cfe2ff"
        ax.add_patch(Rectangle((c, y), 0.95, 0.5, facecolor=seg_colour, edgecolor="grey", lw=0.5))
        ax.add_patch(Rectangle((c, y - 0.55), 0.95, 0.5, facecolor=colours.get(kind, seg_colour),
                               edgecolor="grey", lw=0.5))
        ax.text(c + 0.475, y + 0.25, names[instance.tokens[p]], ha="center", va="center", fontsize=7)
        ax.text(c + 0.475, y - 0.30, names[instance.input_ids[p]], ha="center", va="center", fontsize=7)
    ax.set_xlim(-0.1, per_row)
    ax.set_ylim(-(rows - 1) * 1.3 - 0.7, 0.6)
    ax.axis("off")
    nsp = "random next (label 1)" if instance.is_random_next else "IsNext (label 0)"
    ax.set_title(f"top: original tokens, bottom: model input; NSP: {nsp}", fontsize=9)
    ax.legend(handles=[Patch(color="#e9ecef", label="segment A"), Patch(color="#cfe2ff", label="segment B"),
                       Patch(color=colours["mask"], label="[MASK] (80%)"),
                       Patch(color=colours["random"], label="random (10%)"),
                       Patch(color=colours["kept"], label="kept (10%)")],
              loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=5, fontsize=7, frameon=False)
    return fig
