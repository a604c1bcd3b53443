"""The pretraining story in one figure (matplotlib, imported only when drawn): what ``make demo``
draws in ``runs/demo/training.png``.

    from bertnp.viz_demo import plot_pretraining_story
    plot_pretraining_story("runs/demo/metrics.jsonl", "runs/demo/training.png",
                           unigram_ce=6.1, baseline_mlm_acc=0.067)

Four panels, each against its reference line, because a curve alone does not say whether the model
learned anything:

* MLM loss, training and held-out, against the **unigram cross-entropy** (the loss of a model that
  knows only word frequencies): a BERT that learned from context goes below it.
* MLM accuracy against the **unigram baseline** (always guessing the most frequent token), on an
  axis scaled to the data, not 0-1, so the gap is visible.
* NSP accuracy against **chance** (0.5).
* The **learning rate**: warmup, then the linear decay (a time-budget run may move its end).

A run in two phases (``phase1_end``: the first steps on short sequences) has them shaded: the
held-out pairs are full length, so their accuracy lags while positions past the short length are
untrained, then jumps once the model, which learned to read its neighbours, sees whole sequences.
"""
from __future__ import annotations

import math
from pathlib import Path

__all__ = ["plot_pretraining_story"]


def plot_pretraining_story(metrics, path=None, unigram_ce: float | None = None,
                           baseline_mlm_acc: float | None = None, title: str | None = None,
                           phase1_end: int | None = None, phase1_label: str = "phase 1: short sequences"):
    """Draw the four panels from ``metrics`` (a ``metrics.jsonl`` path or its records: training
    records ``split == "train"`` and held-out ones ``split == "eval"``, as the Trainer writes them).

    ``unigram_ce``: the unigram model's cross-entropy on the held-out masked tokens (nats);
    ``baseline_mlm_acc``: the most-frequent-token accuracy (default: the held-out records'
    ``baseline_mlm_acc``). ``phase1_end``: the last step of a first phase on short sequences,
    shaded in every panel (``phase1_label`` in the legend). Writes a PNG to ``path`` and returns the
    path, or returns the figure."""
    from bertnp.viz import _new_figure, read_metrics
    records = read_metrics(metrics) if isinstance(metrics, (str, Path)) else list(metrics)
    train = [r for r in records if r.get("split") == "train"]
    held = [r for r in records if r.get("split") == "eval"]
    if baseline_mlm_acc is None and held:
        baseline_mlm_acc = held[-1].get("baseline_mlm_acc")

    fig = _new_figure(figsize=(11, 7.5))
    (ax_loss, ax_mlm), (ax_nsp, ax_lr) = fig.subplots(2, 2, sharex=True)

    def curve(ax, recs, key, **style):
        points = [(r["step"], r[key]) for r in recs if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), **style)
        return [v for _, v in points]

    held_style = dict(color="C3", marker="o", ms=3.5, lw=1.2)
    # 1. MLM loss against the unigram cross-entropy
    curve(ax_loss, train, "mlm_loss", color="C0", alpha=0.7, lw=1, label="training MLM loss")
    curve(ax_loss, held, "mlm_loss", label="held-out MLM loss", **held_style)
    if unigram_ce is not None:
        ax_loss.axhline(unigram_ce, color="k", ls="--", lw=1,
                        label=f"unigram cross-entropy ({unigram_ce:.2f}): word frequencies only")
    ax_loss.set_ylabel("cross-entropy (nats)")
    ax_loss.set_title("masked-LM loss: below the dashed line = learned from context")

    # 2. MLM accuracy against the unigram baseline, on a scale that shows the gap
    values = curve(ax_mlm, train, "mlm_acc", color="C0", alpha=0.7, lw=1, label="training MLM accuracy")
    values += curve(ax_mlm, held, "mlm_acc", label="held-out MLM accuracy", **held_style)
    if baseline_mlm_acc is not None:
        ax_mlm.axhline(baseline_mlm_acc, color="k", ls="--", lw=1,
                       label=f"unigram baseline ({baseline_mlm_acc:.3f}): always the most frequent token")
        values.append(baseline_mlm_acc)
    top = max(values) if values else 1.0
    ax_mlm.set_ylim(0, min(1.0, math.ceil(top * 1.15 * 20) / 20 or 0.05))
    ax_mlm.set_ylabel("accuracy on masked tokens")
    ax_mlm.set_title("masked-LM accuracy")

    # 3. NSP accuracy against chance
    curve(ax_nsp, train, "nsp_acc", color="C2", alpha=0.7, lw=1, label="training NSP accuracy")
    curve(ax_nsp, held, "nsp_acc", label="held-out NSP accuracy", **held_style)
    ax_nsp.axhline(0.5, color="k", ls="--", lw=1, label="chance (0.5)")
    ax_nsp.set_ylim(0.3, 1.0)
    ax_nsp.set_ylabel("accuracy")
    ax_nsp.set_title("next-sentence prediction")

    # 4. the learning rate
    curve(ax_lr, train, "lr", color="C4", lw=1.5, label="learning rate (warmup, linear decay)")
    ax_lr.set_ylim(bottom=0)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_title("learning-rate schedule")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))

    for ax in (ax_loss, ax_mlm, ax_nsp, ax_lr):
        if phase1_end:
            ax.axvspan(0, phase1_end, color="0.85", alpha=0.5, lw=0, label=phase1_label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for ax in (ax_nsp, ax_lr):
        ax.set_xlabel("step")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    if path is None:
        return fig
    from bertnp.checkpoint import atomic_write
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    return path
