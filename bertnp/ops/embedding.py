"""Embedding lookup: ``out[..., :] = table[ids[...], :]``.

The backward is a scatter-add: every occurrence of an id adds its upstream gradient to that id's
row. ``dtable[ids] += dout`` would be wrong -- with repeated ids NumPy applies the += only once --
so we use :func:`bertnp.backend.scatter_add` (``np.add.at`` / ``cupyx.scatter_add``).
"""
from __future__ import annotations

from typing import NamedTuple

from bertnp import backend
from bertnp.ops._checks import require_float, require_int


class EmbeddingCache(NamedTuple):
    ids: object          # (...)  integer ids that were looked up
    table_shape: tuple   # (V, C)
    dtype: object
    padding_idx: int | None   # a row that receives no gradient from the lookup (PyTorch's padding_idx)


def embedding_forward(ids, table, check_range: bool = True, padding_idx: int | None = None):
    """ids: (...) int, table: (V, C) -> out: (..., C). Returns (out, cache).

    ``padding_idx`` (as in ``torch.nn.Embedding``, which Hugging Face's BERT uses for the word
    embeddings with the [PAD] id): that row's lookups send no gradient back, so [PAD] stays put.

    ``check_range`` verifies 0 <= ids < V (it reads the ids' min and max, which on a GPU waits for
    the device; the model validates its inputs on the host and passes False).
    """
    require_int("ids", ids)
    require_float("table", table)
    if table.ndim != 2:
        raise ValueError(f"table must be 2-D (num_embeddings, dim), got shape {tuple(table.shape)}")
    if check_range and ids.size:
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= table.shape[0]:
            raise ValueError(
                f"ids must lie in [0, {table.shape[0]}) for a table of {table.shape[0]} rows; "
                f"got values from {low} to {high}")
    out = table[ids]                                   # fancy indexing: (...) -> (..., C), a copy
    return out, EmbeddingCache(ids, tuple(table.shape), table.dtype, padding_idx)


def embedding_backward(dout, cache: EmbeddingCache, out=None):
    """dout: (..., C) -> dtable: (V, C).

    ``out``: a (V, C) array to add the gradient into, in place (the model passes its accumulated
    gradient, so no (V, C) table of zeros is made and added each step); it is returned."""
    xp = backend.xp()
    ids, (vocab, dim), dtype, padding_idx = cache
    if out is None:
        dtable = xp.zeros((vocab, dim), dtype=dtype)
    else:
        if tuple(out.shape) != (vocab, dim) or out.dtype != dtype:
            raise ValueError(f"out must be a ({vocab}, {dim}) array of {dtype}, got {tuple(out.shape)} {out.dtype}")
        dtable = out
    # TASK 1.7 embedding_backward: a scatter-add over repeated ids (lesson 05)
    if padding_idx is not None:
        frozen = dtable[padding_idx].copy()    # (C,) what the padding row holds before this lookup's share
    # out[n] = table[ids[n]], so each row n sends dout[n] back to row ids[n]; repeats accumulate.
    if dtable.flags.c_contiguous:
        # the same scatter on the flattened table, one element at a time: NumPy's add.at is ~5x
        # faster on 1-D targets than row by row. Element (n, c) goes to ids[n] * C + c.
        flat_index = (ids.reshape(-1, 1) * dim + xp.arange(dim)).reshape(-1)   # (N, 1) + (C,) -> (N*C,)
        backend.scatter_add(dtable.reshape(-1), flat_index, dout.reshape(-1))  # (V*C,) <- (N*C,)
    else:
        backend.scatter_add(dtable, ids.reshape(-1), dout.reshape(-1, dim))   # (..., C) -> (N, C) rows
    if padding_idx is not None:
        dtable[padding_idx] = frozen   # the padding row gets nothing from the lookup (torch.nn.Embedding)
    # END TASK 1.7
    return dtable
