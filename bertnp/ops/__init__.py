"""Every BERT operation as a pair of pure functions: ``x_forward(...) -> (out, cache)`` and
``x_backward(dout, cache) -> gradients`` (CS231n's convention), one file per operation."""
from bertnp.ops.activations import (activation_backward, activation_forward, gelu_backward,
                                    gelu_forward, relu_backward, relu_forward, tanh_backward,
                                    tanh_forward)
from bertnp.ops.attention import AttentionGrads, attention_backward, attention_forward
from bertnp.ops.dropout import dropout_backward, dropout_forward
from bertnp.ops.embedding import embedding_backward, embedding_forward
from bertnp.ops.layernorm import layernorm_backward, layernorm_forward
from bertnp.ops.linear import linear_backward, linear_forward
from bertnp.ops.losses import cross_entropy_backward, cross_entropy_forward
from bertnp.ops.softmax import softmax_backward, softmax_forward

__all__ = [name for name in dir() if name.endswith(("_forward", "_backward"))] + ["AttentionGrads"]
