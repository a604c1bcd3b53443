"""Figures (matplotlib, imported only when a figure is drawn).

Figures are built on ``matplotlib.figure.Figure`` directly, not through pyplot, so drawing one never
changes the process's matplotlib backend (a notebook's inline figures keep working) and needs no
display.

    from bertnp.viz import plot_training
    plot_training("runs/demo/metrics.jsonl", "runs/demo/training.png")
"""
from __future__ import annotations

import json
from pathlib import Path


def _new_figure(**kwargs):
    """A pyplot-free matplotlib Figure; ImportError says what to install."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("figures need matplotlib: pip install 'bertnp[viz]'") from exc
    return Figure(**kwargs)


def read_metrics(path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (a line cut short by a crash is skipped)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


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
