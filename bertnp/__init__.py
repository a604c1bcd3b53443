"""bertnp: BERT pretraining (masked LM + next-sentence prediction) written from scratch in NumPy.

    import bertnp as bn
    cfg = bn.BertConfig.preset("mini", vocab_size=8000)
    model = bn.BertForPreTraining(cfg, seed=0, dtype="float32")
    out = model(input_ids=ids, attention_mask=mask, token_type_ids=types,
                labels=labels, next_sentence_label=nsp)
    grads = model.backward()
"""
from bertnp import backend
from bertnp.backend import get_backend, set_backend
from bertnp.config import BertConfig
from bertnp.model import (BertForPreTraining, BertForSequenceClassification, BertModel,
                          BaseModelOutput, PreTrainingOutput, SequenceClassifierOutput)

__version__ = "0.1.0"

backend.default_backend_from_env()

__all__ = [
    "backend", "get_backend", "set_backend", "__version__",
    "BertConfig", "BertModel", "BertForPreTraining", "BertForSequenceClassification",
    "BaseModelOutput", "PreTrainingOutput", "SequenceClassifierOutput",
    # imported on first use (see __getattr__)
    "BertTokenizer", "BasicTokenizer", "WordpieceTokenizer", "train_wordpiece",
    "AdamW", "LinearWarmupDecay", "clip_grad_norm", "fill_mask", "next_sentence_probability",
    "sentence_embeddings", "mean_pooling", "cosine_similarity", "classify", "attention_maps",
    "plot_attention", "plot_attention_heads", "FinetuneConfig", "Finetuner", "read_examples",
    "TrainConfig", "Trainer", "pretrain", "PretrainingDataset", "PretrainingLoader",
    "read_corpus", "bundled_corpus",
]


def __getattr__(name):
    """Import the heavier or optional parts only when first used (tokenizer, data, optimizer ...)."""
    lazy = {
        "BertTokenizer": "bertnp.tokenizer", "BasicTokenizer": "bertnp.tokenizer",
        "WordpieceTokenizer": "bertnp.tokenizer", "train_wordpiece": "bertnp.wordpiece_trainer",
        "AdamW": "bertnp.optim", "LinearWarmupDecay": "bertnp.optim", "clip_grad_norm": "bertnp.optim",
        "fill_mask": "bertnp.inference", "next_sentence_probability": "bertnp.inference",
        "sentence_embeddings": "bertnp.inference", "mean_pooling": "bertnp.inference",
        "cosine_similarity": "bertnp.inference", "classify": "bertnp.inference",
        "attention_maps": "bertnp.inference",
        "plot_attention": "bertnp.viz", "plot_attention_heads": "bertnp.viz",
        "FinetuneConfig": "bertnp.finetune", "Finetuner": "bertnp.finetune",
        "read_examples": "bertnp.finetune",
        "TrainConfig": "bertnp.train", "Trainer": "bertnp.train", "pretrain": "bertnp.train",
        "PretrainingDataset": "bertnp.data", "PretrainingLoader": "bertnp.data",
        "read_corpus": "bertnp.data", "bundled_corpus": "bertnp.corpus",
    }
    if name in lazy:
        import importlib
        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(f"module 'bertnp' has no attribute {name!r}")
