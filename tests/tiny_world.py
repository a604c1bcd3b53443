"""A tiny pretraining world for the training-loop tests: a corpus in BERT's format, its vocab.txt
and a tiny model config.json (hidden 16, one layer), built in a folder in well under a second."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bertnp.config import BertConfig
from bertnp.train import TrainConfig

WORDS = ("the a one old young red blue green small big king queen man woman dog cat bird horse house "
         "river city tree stone saw found took gave loved built crossed left near under over by with "
         "and but then so").split()


def make_world(root, n_docs: int = 14, seed: int = 0) -> dict:
    """Write corpus.txt (n_docs documents of 4-8 sentences), vocab.txt and config.json in ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(int(rng.integers(4, 9))):
            n = int(rng.integers(4, 9))
            words = [WORDS[int(i)] for i in rng.integers(0, len(WORDS), size=n)]
            sentences.append(" ".join(words).capitalize() + ".")
        docs.append("\n".join(sentences))
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + WORDS) + "\n",
                     encoding="utf-8")
    config = root / "config.json"
    BertConfig(vocab_size=len(WORDS) + 7, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=24, max_position_embeddings=32).to_json_file(config)
    return {"corpus": str(corpus), "vocab": str(vocab), "config": str(config), "root": root}


def tiny_config(world, out, **kw) -> TrainConfig:
    """An 8-step run of batches of 4 x 24 tokens that logs, evaluates and checkpoints often."""
    options = dict(corpus=[world["corpus"]], vocab=world["vocab"], model_config=world["config"],
                   max_seq_length=24, batch_size=4, steps=8, lr=5e-3, warmup=2, out_dir=str(out),
                   eval_every=4, eval_batches=2, checkpoint_every=4, log_every=2, progress=False, seed=3)
    options.update(kw)
    return TrainConfig(**options)


def quiet(*_):
    pass
