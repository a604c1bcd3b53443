# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 9 — The whole model
#
# Lessons 1–8 wrote every operation of BERT as a forward/backward pair. `bertnp/model.py` composes them
# into `BertForPreTraining`. In this lesson you
#
# 1. **watch the model run**: the order of the operations in `model(...)` and `model.backward()`, with the
#    shape of every tensor that flows between them;
# 2. read its **state dict** under Hugging Face's names, and count BERT-base's 110 M parameters from the config;
# 3. compose **one encoder layer**'s forward from the ops and check it, layer by layer, against hidden
#    states Hugging Face computed — then **derive its backward** yourself (exercise): two residual sums,
#    two LayerNorms;
# 4. match Hugging Face's logits, losses and **every gradient** to ~$10^{-12}$, from numbers it wrote to a file
#    (no PyTorch needed);
# 5. check the whole model by finite differences, and see why it takes a 4th-order stencil.
#
# **Prerequisites:** lessons 1–8 (every operation's forward and backward; lesson 1's gradient checks and
# noise floor; lesson 4's training step). Math: the chain rule with a sum over paths.
#
# **Time:** about 75 minutes.

# %%
# %matplotlib inline
import sys
import time
from collections import Counter

import numpy as np
import matplotlib.pyplot as plt
import bertnp as bn
from bertnp import teach

bn.set_backend("numpy")                       # the lessons run on the CPU
np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)                # every random number below comes from this seed
from bertnp.gradcheck import check_model, numerical_gradient, rel_error
from bertnp.lesson_data.lessons_09_10 import load_l09
from bertnp.ops.activations import gelu_backward, gelu_forward
from bertnp.ops.attention import attention_backward, attention_forward
from bertnp.ops.layernorm import layernorm_backward, layernorm_forward
from bertnp.ops.linear import linear_backward, linear_forward

# %% [markdown]
# ## 1. Hugging Face's numbers, and the model they belong to
#
# `load_l09()` reads a small file that ships inside the package. Hugging Face `transformers` (on PyTorch,
# in float64) wrote it for a tiny `BertForPreTraining` — vocabulary 99, hidden size 24, 2 layers of 3 heads,
# all sizes different so that a swapped axis is an error — with its weights drawn at a scale of 0.2
# (not BERT's 0.02) so that every nonlinearity actually bends. It holds the weights, one padded batch with
# MLM labels and NSP labels, and what HF computed from them: logits, losses, every layer's hidden states
# and every parameter's gradient. We load HF's weights into a `bertnp` model:

# %%
hf = load_l09()
config = bn.BertConfig.from_dict(hf["config_json"])          # HF's own config.json, as a dict
model = bn.BertForPreTraining(config, dtype="float64").eval()  # float64, dropout off: a deterministic function
hf_params = {k[len("param/"):]: v for k, v in hf.items() if k.startswith("param/")}
model.load_state_dict(hf_params, strict=True)
batch = {k: hf[k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels", "next_sentence_label")}
print({k: v.shape for k, v in batch.items()})
print("attention_mask:\n", batch["attention_mask"])
print("labelled positions per sequence:", (batch["labels"] != -100).sum(axis=1), "   written by", hf["versions"]["transformers"],
      "on torch", hf["versions"]["torch"])

# %% [markdown]
# ## 2. Watching the model run
#
# `model.py` reads like the paper (its docstring is the summary). Rather than read all of it, watch it:
# Python's `sys.setprofile` calls a function of ours at every function call and return, and we keep those
# of the operations in `bertnp.ops` — each public forward and backward (not the private `_row` helpers the
# operations split their work into), with the shape of its first input and of its output. Calls made *inside* an operation (the attention's softmax) are indented.

# %%
print(bn.model.__doc__.split("Parameters live")[0])


def shape_of(value):
    """The shape of an array, or of the first array of an (out, cache) or gradients tuple."""
    if isinstance(value, tuple) and value and hasattr(value[0], "shape"):
        value = value[0]
    return tuple(value.shape) if hasattr(value, "shape") else None


def trace_ops(run):
    """Run run() and record every bertnp.ops forward/backward call: [depth, name, input shape, output shape]."""
    calls, open_calls = [], []

    def profiler(frame, event, arg):
        code = frame.f_code
        if event not in ("call", "return") or not code.co_name.endswith(("_forward", "_backward")) \
                or code.co_name.startswith("_") \
                or not frame.f_globals.get("__name__", "").startswith("bertnp.ops."):
            return
        if event == "call":
            first = frame.f_locals[code.co_varnames[0]] if code.co_argcount else None
            calls.append([len(open_calls), code.co_name, shape_of(first), None])
            open_calls.append(calls[-1])
        else:
            open_calls.pop()[3] = shape_of(arg)          # arg is the return value

    sys.setprofile(profiler)
    try:
        result = run()
    finally:
        sys.setprofile(None)
    return calls, result


forward_calls, out = trace_ops(lambda: model(**batch))
backward_calls, grads = trace_ops(lambda: model.backward())
for title, calls in (("FORWARD", forward_calls), ("BACKWARD", backward_calls)):
    print(f"---- {title}: {len(calls)} calls")
    for depth, name, shape_in, shape_out in calls:
        print(f"{'    ' * depth}{name:<24} {str(shape_in):>14} -> {shape_out}")

# %% [markdown]
# Read the forward from the top: two embedding lookups (word and token type — the position embedding is a
# slice of its table, no lookup needed), LayerNorm, dropout (a no-op in `eval()`, but called), then per layer:
# attention (one fused (C → 3C) projection, the softmax on (B, heads, T, T)), the output projection,
# dropout, LayerNorm, the feed-forward block (C → 40 → C), dropout, LayerNorm. Then the heads: the pooler
# on (B, C), the MLM head on only the 12 labelled rows (lesson 8), the decoder to 99 logits, NSP to 2, two
# cross-entropies.
#
# The backward walks the same graph in reverse: the MLM head first, then NSP, then the encoder from the last
# layer down to the embeddings. Every forward has exactly one backward, and inside the encoder the order is
# exactly reversed:

# %%
top_forward = [name for depth, name, *_ in forward_calls if depth == 0]
top_backward = [name for depth, name, *_ in backward_calls if depth == 0]
as_backward = lambda names: [n.replace("_forward", "_backward") for n in names]
teach.check_equal("count of each backward = count of its forward",
                  sorted(Counter(as_backward(n for _, n, *_ in forward_calls)).items()),
                  sorted(Counter(n for _, n, *_ in backward_calls).items()))
encoder = top_forward[:top_forward.index("tanh_forward") - 1]      # everything before the pooler's linear
teach.check_equal("the encoder's backward = its forward reversed",
                  top_backward[-len(encoder):], as_backward(encoder[::-1]))
L = config.num_hidden_layers
teach.check_equal("LayerNorms: embeddings + 2 per layer + MLM head", top_forward.count("layernorm_forward"), 1 + 2 * L + 1)
teach.check_equal("Linears outside attention: 3 per layer + pooler + MLM dense + decoder + NSP",
                  top_forward.count("linear_forward"), 3 * L + 4)

# %% [markdown]
# ## 3. The state dict under Hugging Face's names
#
# `model.state_dict()` maps Hugging Face's names to arrays, each tensor once. Linear weights are in PyTorch's
# layout, **(out, in)**: `intermediate.dense.weight` is (40, 24) and computes `x @ W.T + b`. That is why
# HF's weights above loaded with no renaming and no transposes.

# %%
sd = model.state_dict()
layer0 = {k: v for k, v in sd.items() if ".layer.0." in k}
for name, value in sd.items():
    if ".layer." not in name or ".layer.0." in name:                # one layer stands for all of them
        print(f"{name:<60} {str(value.shape):>10}")
print(f"... and the same {len(layer0)} tensors for each of the other {L - 1} layer(s).  "
      f"{len(sd)} tensors, {model.num_parameters():,} numbers")
teach.check_equal("intermediate.dense.weight is (out, in)", sd["bert.encoder.layer.0.intermediate.dense.weight"].shape,
                  (config.intermediate_size, config.hidden_size))

# %% [markdown]
# Each entry of the config decides some of these shapes, so the parameter count is a formula of the
# config. Write it down from the list above, test it on two models we can build, then apply it to BERT-base
# (vocabulary 30,522, hidden 768, 12 layers, intermediate 3,072, 512 positions) without building it:

# %%
def count_parameters(V, H, L, I, positions, types=2):
    """Parameters of BertForPreTraining, from the shapes in its state dict."""
    embeddings = V * H + positions * H + types * H + 2 * H              # three tables + LayerNorm
    layer = 4 * (H * H + H) + 2 * H + (I * H + I) + (H * I + H) + 2 * H   # Q, K, V, O; LN; FFN up, down; LN
    pooler = H * H + H
    heads = (H * H + H) + 2 * H + V + (2 * H + 2)                        # MLM dense, LN, decoder bias; NSP
    return embeddings + L * layer + pooler + heads                       # (the decoder's matrix is the embedding)


other = bn.BertForPreTraining(bn.BertConfig(vocab_size=37, hidden_size=8, num_hidden_layers=3, num_attention_heads=2,
                                            intermediate_size=14, max_position_embeddings=9))
for m in (model, other):
    c = m.config
    teach.check_equal(f"formula vs num_parameters() (H={c.hidden_size}, L={c.num_hidden_layers})",
                      count_parameters(c.vocab_size, c.hidden_size, c.num_hidden_layers, c.intermediate_size,
                                       c.max_position_embeddings), m.num_parameters())
base = count_parameters(V=30522, H=768, L=12, I=3072, positions=512)
print(f"BERT-base pretraining model: {base:,} parameters; the encoder alone "
      f"{base - (768 * 768 + 768 + 2 * 768 + 30522 + 2 * 768 + 2):,}")
teach.check_equal("BERT-base BertForPreTraining parameters", base, 110_106_428)

# %% [markdown]
# The encoder alone has the famous 109,482,240 (Hugging Face's `BertModel`), and the word embeddings are
# 23.4 M of them; untying the decoder would add 23.4 M more.
#
# Hugging Face's *full* state dict lists the tied matrix twice, as `bert.embeddings.word_embeddings.weight`
# and `cls.predictions.decoder.weight` (and the decoder bias as `cls.predictions.bias` and
# `cls.predictions.decoder.bias`). `load_state_dict` accepts that form, and refuses it when the two copies
# disagree — a checkpoint whose "tied" weights differ cannot be loaded into a model where they are one tensor:

# %%
full = dict(hf_params)
for duplicate, original in hf["tied_to"].items():
    full[duplicate] = hf_params[original]
model.load_state_dict(full, strict=True)
print("HF's full state dict with the tied duplicates: loaded")
broken = dict(full, **{"cls.predictions.decoder.weight": full["cls.predictions.decoder.weight"] + 1e-3})
try:
    model.load_state_dict(broken)
    refused = None
except ValueError as exc:
    refused = str(exc)
print("after changing one copy:", refused)
assert refused is not None and "cls.predictions.decoder.weight" in refused, \
    f"a tied duplicate that differs must be refused with its name, got {refused!r}"
_ = model.load_state_dict(hf_params)                   # (nothing was changed by the refused load; reload anyway)

# %% [markdown]
# ## 4. One encoder layer, by hand
#
# An encoder layer of BERT is post-LN (lesson 5): each sub-block's output is *added* to its input, then
# normalised.
#
# $$a = \text{Attention}(x)\,W_o^\top + b_o, \qquad h = \operatorname{LN}_1(x + a),$$
# $$f = \operatorname{gelu}(h\,W_1^\top + b_1)\,W_2^\top + b_2, \qquad y = \operatorname{LN}_2(h + f).$$
#
# (In training, dropout sits on $a$ and on $f$, before the sums; here it is off.) The function below composes
# the library's ops exactly so, and returns each op's cache for the backward. The parameters are passed
# under their names inside the layer (`attention.self.query.weight`, ..., `output.LayerNorm.bias`).

# %%
def encoder_layer_forward(x, p, additive_mask, num_heads, eps=1e-12):
    """x: (B, T, C); p: {name inside the layer: array}. Returns (y (B, T, C), caches of every op)."""
    cache = {}
    attended, cache["attention"] = attention_forward(
        x, p["attention.self.query.weight"], p["attention.self.query.bias"], p["attention.self.key.weight"],
        p["attention.self.key.bias"], p["attention.self.value.weight"], p["attention.self.value.bias"],
        num_heads, additive_mask)                                                          # (B, T, C)
    a, cache["attention_output"] = linear_forward(attended, p["attention.output.dense.weight"],
                                                  p["attention.output.dense.bias"])        # (B, T, C)
    h, cache["ln1"] = layernorm_forward(x + a, p["attention.output.LayerNorm.weight"],
                                        p["attention.output.LayerNorm.bias"], eps)          # residual, then LN
    f, cache["intermediate"] = linear_forward(h, p["intermediate.dense.weight"], p["intermediate.dense.bias"])  # (B, T, I)
    f, cache["gelu"] = gelu_forward(f)
    f, cache["output"] = linear_forward(f, p["output.dense.weight"], p["output.dense.bias"])  # (B, T, C)
    y, cache["ln2"] = layernorm_forward(h + f, p["output.LayerNorm.weight"], p["output.LayerNorm.bias"], eps)
    return y, cache


def layer_params(state_dict, i):
    """The parameters of encoder layer i, named as inside the layer."""
    prefix = f"bert.encoder.layer.{i}."
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def additive_mask_of(attention_mask, dtype=np.float64):
    """(B, T) of 1/0 -> (B, 1, 1, T): 0 for real keys, the dtype's most negative number for padding (as HF)."""
    return ((1.0 - attention_mask) * np.finfo(dtype).min)[:, None, None, :]


# %% [markdown]
# Hugging Face's file holds the input of every layer (`hidden_states[0]` is the embeddings' output) and the
# output of the last. Feed each layer HF's input and compare with HF's next hidden state; and check the
# embeddings too. If `bertnp` disagreed with HF somewhere, this is how you would find the first place where it does.

# %%
ids, types = batch["input_ids"], batch["token_type_ids"]
T = ids.shape[1]
embedded = sd["bert.embeddings.word_embeddings.weight"][ids] + sd["bert.embeddings.position_embeddings.weight"][:T] \
    + sd["bert.embeddings.token_type_embeddings.weight"][types]                               # (B, T, C)
embedded, _ = layernorm_forward(embedded, sd["bert.embeddings.LayerNorm.weight"], sd["bert.embeddings.LayerNorm.bias"],
                                config.layer_norm_eps)
teach.check_close("embeddings vs HF hidden_states[0]", embedded, hf["hidden_states"][0], rtol=1e-10, atol=1e-12)
mask = additive_mask_of(batch["attention_mask"])
for i in range(L):
    y, _ = encoder_layer_forward(hf["hidden_states"][i], layer_params(sd, i), mask, config.num_attention_heads,
                                 config.layer_norm_eps)
    teach.check_close(f"layer {i} vs HF hidden_states[{i + 1}]", y, hf["hidden_states"][i + 1], rtol=1e-10, atol=1e-12)

# %% [markdown]
# ### Exercise: the encoder layer's backward
#
# Given $\partial L/\partial y$ and the caches of `encoder_layer_forward`, return $\partial L/\partial x$ and
# the gradient of every parameter of the layer, under the same names as `p`. You have every op's backward:
#
# * `layernorm_backward(dout, cache) -> (dx, dgamma, dbeta)`, `linear_backward(dout, cache) -> (dx, dW, db)`,
#   `gelu_backward(dout, cache) -> dx`;
# * `attention_backward(dout, cache)` returns a named tuple with fields `x, query_weight, query_bias,
#   key_weight, key_bias, value_weight, value_bias`.
#
# The work is the composition. Draw the forward's graph first (every arrow, including the two that skip a
# sub-block), then walk it backwards: where a tensor fed **two** consumers, its gradient is the sum of what
# comes back from both. The check perturbs every input and every parameter of a small layer (2 sequences of
# 5 positions, one padded; width 6, 2 heads, 10 in the middle) and compares with finite differences.

# %% tags=["exercise"]
# EXERCISE: the backward of one post-LN encoder layer, composed from the ops' backward functions
def my_encoder_layer_backward(dy, cache):
    '''dy: (B, T, C) gradient of the layer's output. cache: from encoder_layer_forward.
    Returns (dx (B, T, C), grads {name inside the layer: gradient}).'''
    grads = {}
    ### BEGIN SOLUTION
    # y = LN2(h + f)
    dsum2, grads["output.LayerNorm.weight"], grads["output.LayerNorm.bias"] = layernorm_backward(dy, cache["ln2"])
    # f = gelu(h W1^T + b1) W2^T + b2: the feed-forward branch, in reverse
    dgelu, grads["output.dense.weight"], grads["output.dense.bias"] = linear_backward(dsum2, cache["output"])
    dpre = gelu_backward(dgelu, cache["gelu"])
    dh, grads["intermediate.dense.weight"], grads["intermediate.dense.bias"] = linear_backward(dpre, cache["intermediate"])
    dh = dh + dsum2                    # h fed the FFN and, directly, the sum h + f: add both gradients
    # h = LN1(x + a)
    dsum1, grads["attention.output.LayerNorm.weight"], grads["attention.output.LayerNorm.bias"] = \
        layernorm_backward(dh, cache["ln1"])
    dattended, grads["attention.output.dense.weight"], grads["attention.output.dense.bias"] = \
        linear_backward(dsum1, cache["attention_output"])
    g = attention_backward(dattended, cache["attention"])
    for proj in ("query", "key", "value"):
        grads[f"attention.self.{proj}.weight"] = getattr(g, proj + "_weight")
        grads[f"attention.self.{proj}.bias"] = getattr(g, proj + "_bias")
    dx = g.x + dsum1                   # x fed the attention and, directly, the sum x + a
    ### END SOLUTION
    return dx, grads


# %% tags=["check"]
check_rng = np.random.default_rng(90)
B, Tc, Cc, heads, Ic = 2, 5, 6, 2, 10
x = check_rng.standard_normal((B, Tc, Cc))
p = {}
for name, shape in [("attention.self.query", (Cc, Cc)), ("attention.self.key", (Cc, Cc)),
                    ("attention.self.value", (Cc, Cc)), ("attention.output.dense", (Cc, Cc)),
                    ("intermediate.dense", (Ic, Cc)), ("output.dense", (Cc, Ic))]:
    p[name + ".weight"] = 0.5 * check_rng.standard_normal(shape)
    p[name + ".bias"] = 0.3 * check_rng.standard_normal(shape[0])
for name in ("attention.output.LayerNorm", "output.LayerNorm"):
    p[name + ".weight"] = 1.0 + 0.3 * check_rng.standard_normal(Cc)
    p[name + ".bias"] = 0.3 * check_rng.standard_normal(Cc)
check_mask = additive_mask_of(np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]))   # the second sequence: 2 [PAD]s
dy = check_rng.standard_normal((B, Tc, Cc))                                    # random upstream gradient

y, layer_cache = encoder_layer_forward(x, p, check_mask, heads)
dx, layer_grads = my_encoder_layer_backward(dy, layer_cache)
objective = lambda: float((encoder_layer_forward(x, p, check_mask, heads)[0] * dy).sum())   # L = sum(y * dy)
numeric = {"x": teach.finite_differences(objective, x)}
numeric.update({name: teach.finite_differences(objective, value) for name, value in p.items()})
# the key bias's true gradient is exactly 0 (softmax ignores a shift shared by a query's scores):
# entries below 1e-9 on both sides are the finite differences' noise floor (lesson 1)
yours = {"x": dx, **layer_grads}


def is_wrong(name, threshold=1e-6, floor=1e-9):
    if yours.get(name) is None or np.shape(yours[name]) != numeric[name].shape or not np.all(np.isfinite(yours[name])):
        return True
    err = teach.rel_error_array(yours[name], numeric[name])
    err[(np.abs(yours[name]) < floor) & (np.abs(numeric[name]) < floor)] = 0.0
    return err.max() > threshold


# walk back from y: the first tensor whose gradient is wrong shows where the composition goes wrong
backward_order = ["output.LayerNorm.weight", "output.LayerNorm.bias", "output.dense.weight", "output.dense.bias",
                  "intermediate.dense.weight", "intermediate.dense.bias", "attention.output.LayerNorm.weight",
                  "attention.output.LayerNorm.bias", "attention.output.dense.weight", "attention.output.dense.bias"] \
    + [f"attention.self.{p}.{w}" for p in ("value", "key", "query") for w in ("weight", "bias")] + ["x"]
first_wrong = next((name for name in backward_order if is_wrong(name)), None)
if first_wrong is not None:
    right = backward_order[:backward_order.index(first_wrong)]
    wrong = [name for name in backward_order if is_wrong(name)]
    where = (f"every gradient down to {right[-1]} is right, the first wrong one is {first_wrong}" if right
             else f"already the first one, {first_wrong}, is wrong")
    mine, expected = yours.get(first_wrong), numeric[first_wrong]
    if mine is None:
        why = "you returned no gradient under that name"
    elif np.shape(mine) != expected.shape:
        why = f"yours has shape {np.shape(mine)}, the tensor has shape {expected.shape}"
    elif not np.all(np.isfinite(mine)):
        why = "yours is not finite"
    else:
        why = f"relative error {teach.rel_error_array(mine, expected).max():.1e} > 1e-6"
    hint = ("x is read twice in the forward (find both places): does dx collect what comes back from both?"
            if first_wrong == "x" else f"look at {first_wrong.rsplit('.', 1)[0]}'s backward and at the gradient you "
            "feed it: everything further back inherits the mistake")
    raise teach.CheckFailed(
        f"walking back from y, {where} ({why}); {len(wrong)} of {len(backward_order)} are wrong: {', '.join(wrong)}\n"
        f"  hint: {hint}")
errors = teach.check_gradients(yours, numeric, threshold=1e-6, floor=1e-9)

# %% [markdown]
# ### Solution notes
#
# Walk the graph from $y$ back to $x$:
#
# 1. $y = \operatorname{LN}_2(s_2)$ with $s_2 = h + f$: `layernorm_backward(dy, ln2)` gives $\partial L/\partial s_2$ (and
#    $\gamma_2, \beta_2$'s gradients). A sum passes its gradient unchanged to both terms, so $f$ and $h$ each
#    receive $\partial L/\partial s_2$.
# 2. Through the FFN branch ($W_2$, GELU, $W_1$) to $h$. Now $h$ has two consumers: the FFN and the sum $s_2$.
#    $\partial L/\partial h = (\text{FFN's share}) + \partial L/\partial s_2$. **This is the residual's gradient** — forget
#    it and the gradient must squeeze through the FFN alone.
# 3. $h = \operatorname{LN}_1(s_1)$, $s_1 = x + a$: `layernorm_backward(dh, ln1)` — the *first* LayerNorm's cache,
#    fed the *total* $\partial L/\partial h$.
# 4. Through the output projection and the attention to $x$; $x$ also fed $s_1$ directly:
#    $\partial L/\partial x = (\text{attention's share}) + \partial L/\partial s_1$.
#
# What the check catches: a missing residual term (every entry of `x`, or of everything below $h$, is off);
# the two LayerNorm caches swapped (each LayerNorm's backward must use the statistics of *its* input);
# adding $\partial L/\partial y$ instead of $\partial L/\partial s_2$ to $h$'s gradient — the pre-LN picture, where
# the residual skips the LayerNorm ($y = h + f(\operatorname{LN}(h))$). In post-LN the skip connection ends
# *before* the LayerNorm, so the gradient that reaches $h$ directly has already passed through
# $\operatorname{LN}_2$'s backward. That is also why, in a deep post-LN stack, every gradient on its way down
# passes through every LayerNorm (lesson 5): nothing skips them.
#
# ## 5. The whole model against Hugging Face
#
# The model composes two more blocks (embeddings and heads) around $L$ of these layers, and its backward
# walks back through all of them, summing wherever a tensor had two consumers (the residuals, the tied word
# embeddings). Compare everything HF wrote: logits at the labelled positions, NSP logits, losses, the last
# hidden state, and then all 46 gradients.

# %%
model.zero_grad()
out = model(**batch)
teach.check_close("MLM logits at the labelled positions", out.prediction_logits, hf["labelled_prediction_logits"],
                  rtol=1e-10, atol=1e-12)
teach.check_close("NSP logits", out.seq_relationship_logits, hf["seq_relationship_logits"], rtol=1e-10, atol=1e-12)
teach.check_close("last_hidden_state", out.last_hidden_state, hf["last_hidden_state"], rtol=1e-10, atol=1e-12)
teach.check_close("pooler_output", out.pooler_output, hf["pooler_output"], rtol=1e-10, atol=1e-12)
for key in ("mlm_loss", "nsp_loss", "loss"):
    teach.check_close(key, getattr(out, key), hf[key], rtol=1e-12)
grads = model.backward()
hf_grads = {k[len("grad/"):]: v for k, v in hf.items() if k.startswith("grad/")}
vs_hf = {name: float(np.abs(grads[name] - g).max() / np.abs(g).max()) for name, g in hf_grads.items()
         if "attention.self.key.bias" not in name}
key_bias = max(float(np.abs(grads[n]).max() + np.abs(hf_grads[n]).max()) for n in hf_grads if "key.bias" in n)
worst = max(vs_hf, key=vs_hf.get)
print(f"{len(vs_hf)} gradients: largest difference from HF {vs_hf[worst]:.1e} of the tensor's largest entry ({worst})")
print(f"key biases (true gradient exactly 0): |bertnp| + |HF| at most {key_bias:.1e}")
assert vs_hf[worst] < 1e-10, f"gradient {worst} differs from HF by {vs_hf[worst]:.1e} (relative to its largest entry)"
assert key_bias < 1e-12, f"a key-bias gradient should be rounding noise, got {key_bias:.1e}"

# %% [markdown]
# Agreement to ~$10^{-15}$ relative — float64 rounding — with a program that shares no code with ours. HF
# computes the decoder at every position and averages the loss over the labelled ones; `bertnp` gathers the
# labelled rows first (lesson 8); the numbers are the same.
#
# ## 6. The whole-model gradient check, and its stencil
#
# HF is one referee; finite differences are another, and they need nothing but the forward. `check_model`
# perturbs parameters one entry at a time and compares $\partial L/\partial\theta$ from `backward()` with
#
# $$\text{order 2:}\ \ \frac{L(\theta + h) - L(\theta - h)}{2h}, \qquad
# \text{order 4:}\ \ \frac{-L(\theta+2h) + 8L(\theta+h) - 8L(\theta-h) + L(\theta-2h)}{12h}.$$
#
# Order 4 cancels the $h^2$ term of the Taylor series as well, so its truncation error is $O(h^4)$, and it can
# take a larger step: $h = 10^{-3}$ instead of $10^{-5}$. The larger step is the point. The rounding error of each
# $L(\cdot)$ is about $\varepsilon |L| \approx 10^{-15}$ *absolute*, and dividing by $h$ magnifies it to
# $\sim 10^{-10}$ at $h = 10^{-5}$ but only $\sim 10^{-12}$ at $h = 10^{-3}$. A single layer's gradients are of order 1,
# where $10^{-10}$ does not matter; a whole model's are not: many entries are $10^{-5}$ or smaller.
#
# First, every tensor of HF's model, a sample of entries from each, with both stencils. Some entries need care: those
# whose true gradient is exactly 0 — the attention **key biases** (lesson 2), and the rows of the position table
# beyond this batch's 11 positions, which the loss never reads. Finite differences give them pure noise: even for a
# row the loss never reads, the stencil's own sum $-L + 8L - 8L + L$ rounds to about $10^{-15}$, and divided by $12h$
# that is $\sim 10^{-13}$. A relative error of "0 against noise" means nothing, so `check_model` gets a **floor**
# (lesson 1): entries that small are not judged by their relative error. We choose it from the noise, $10^{-5}$, and
# look at the key biases ourselves, every entry, with an absolute bound:

# %%
entries = teach.pick(40, 4)                # entries per tensor (every entry would take ~80,000 forward passes)
start = time.perf_counter()
order4 = check_model(model, batch, order=4, h=1e-3, max_entries=entries, floor=1e-5)
order2 = check_model(model, batch, order=2, h=1e-5, max_entries=entries, floor=1e-5)
print(f"{len(order4)} tensors x {entries} entries, both stencils: {time.perf_counter() - start:.1f} s")
key_biases = [n for n in order4 if n.endswith("attention.self.key.bias")]
rest4 = max(e for n, e in order4.items() if n not in key_biases)
rest2 = max(e for n, e in order2.items() if n not in key_biases)
print(f"largest relative error: order 4 {max(order4.values()):.1e}, order 2 {max(order2.values()):.1e};  "
      f"without the key biases: order 4 {rest4:.1e}, order 2 {rest2:.1e}")
assert max(order4.values()) <= 1e-6, f"order-4 check: {max(order4, key=order4.get)} has error {max(order4.values()):.1e}"
assert rest2 <= 1e-6, f"order 2 should pass away from the key biases, largest error {rest2:.1e}"
assert min(order2[n] for n in key_biases) > 1e-6, "order 2's noise over the floor should exceed 1e-6 at the key biases"

model.zero_grad()
model(**batch)
analytic = model.backward()
loss_of_model = lambda: float(model(**batch).loss)
for name in [n for n in hf_grads if n.endswith("attention.self.key.bias")]:
    numeric_key_bias = numerical_gradient(loss_of_model, model.parameters()[name], h=1e-3, order=4)
    largest = max(np.abs(analytic[name]).max(), np.abs(numeric_key_bias).max())
    print(f"{name}: |backward| and |finite differences| at most {largest:.1e}")
    assert largest < 1e-10, f"{name}'s gradient must be 0 up to the noise, got {largest:.1e}"

# %%
names = list(hf_grads)
short = [n.replace("bert.encoder.", "").replace("bert.", "").replace("attention.", "att.")
         .replace(".weight", ".W").replace(".bias", ".b") for n in names]
fig, ax = plt.subplots(figsize=(12, 4.2))
xs = np.arange(len(names))
ax.semilogy(xs, [max(order2[n], 1e-17) for n in names], "o", label="finite differences, order 2, h = 1e-5")
ax.semilogy(xs, [max(order4[n], 1e-17) for n in names], "s", label="finite differences, order 4, h = 1e-3")
ax.semilogy(xs, [max(vs_hf.get(n, 0.0), 1e-17) for n in names], "^", label="Hugging Face (float64)")
ax.axhline(1e-6, color="k", ls=":", label="threshold for a whole model")
ax.set_xticks(xs)
ax.set_xticklabels(short, rotation=90, fontsize=7)
ax.set_ylim(1e-18, 1e-2)
ax.set_ylabel("largest relative error (0 drawn at 1e-17)")
ax.set_title("Every parameter tensor of the model, three referees")
ax.legend(fontsize=8, loc="upper center", ncol=4); ax.grid(alpha=0.3, axis="y")
fig.tight_layout()
plt.show()

# %% [markdown]
# Hugging Face agrees to rounding everywhere (its key biases are drawn at the bottom: both sides are 0 up to
# $10^{-16}$, so they were left out of the comparison). The two tallest columns of the finite differences are the
# key biases too, and they are noise, not error: with a floor, `check_model` measures an entry whose gradient
# is below the floor *against the floor*, $|a - n| / 10^{-5}$, so what is drawn there is each stencil's noise divided
# by $10^{-5}$ — about $10^{-10}/10^{-5} = 10^{-5}$ for order 2, above the threshold, and about $10^{-12}/10^{-5}$ for
# order 4, below it. (That is why the key biases were also checked above with an absolute bound, entry by entry.)
#
# Away from the key biases both stencils pass: this model's weights were drawn at scale 0.2 and its gradients are large. At
# BERT's own initialisation (weights 0.02) the picture changes: most gradients are small, attention is nearly
# uniform, and the query/key gradients are tiny. Take a freshly initialised model and, for a few small tensors,
# look at **each entry's** relative error against the size of its gradient:

# %%
fresh = bn.BertForPreTraining(config, seed=0, dtype="float64").eval()     # N(0, 0.02) weights
fresh.zero_grad()
fresh(**batch)
fresh_grads = fresh.backward()
loss_of = lambda: float(fresh(**batch).loss)
probe = ["bert.encoder.layer.1.attention.self.query.bias", "bert.encoder.layer.0.attention.output.LayerNorm.weight",
         "bert.embeddings.LayerNorm.weight", "cls.predictions.transform.dense.bias",
         "bert.encoder.layer.0.intermediate.dense.bias"]
magnitudes, errors2, errors4 = [], [], []
for name in probe:
    parameter = fresh.parameters()[name]                    # the live array: perturbed in place, restored
    analytic = fresh_grads[name]
    numeric2 = numerical_gradient(loss_of, parameter, h=1e-5, order=2)
    numeric4 = numerical_gradient(loss_of, parameter, h=1e-3, order=4)
    magnitudes.append(np.abs(analytic).ravel())
    errors2.append((np.abs(analytic - numeric2) / np.maximum(np.abs(analytic) + np.abs(numeric2), 1e-30)).ravel())
    errors4.append((np.abs(analytic - numeric4) / np.maximum(np.abs(analytic) + np.abs(numeric4), 1e-30)).ravel())
magnitudes, errors2, errors4 = map(np.concatenate, (magnitudes, errors2, errors4))
small = magnitudes < 1e-4
print(f"{magnitudes.size} entries, {small.sum()} with |gradient| < 1e-4; median relative error there: "
      f"order 2 {np.median(errors2[small]):.1e}, order 4 {np.median(errors4[small]):.1e}")
assert np.median(errors2[small]) > 10 * np.median(errors4[small]), \
    f"order 4 should be >10x better on small entries: {np.median(errors2[small]):.1e} vs {np.median(errors4[small]):.1e}"

fig, ax = plt.subplots(figsize=(7.5, 4.2))
ax.loglog(magnitudes, np.maximum(errors2, 1e-16), ".", label="order 2, h = 1e-5")
ax.loglog(magnitudes, np.maximum(errors4, 1e-16), ".", label="order 4, h = 1e-3")
g = np.logspace(np.log10(magnitudes[magnitudes > 0].min()), 0, 50)
loss_value = abs(loss_of())
ax.loglog(g, 2.2e-16 * loss_value / 1e-5 / g, "C0--", lw=1, label=r"rounding $\varepsilon|L| / (h\,|g|)$, h = 1e-5")
ax.loglog(g, 2.2e-16 * loss_value / 1e-3 / g, "C1--", lw=1, label=r"same, h = 1e-3")
ax.axhline(1e-6, color="k", ls=":", lw=1)
ax.set_xlabel("|gradient entry|"); ax.set_ylabel("relative error of the entry")
ax.set_title("At BERT's initialisation: the noise floor decides")
ax.legend(fontsize=8); ax.grid(alpha=0.3, which="both")
fig.tight_layout()
plt.show()

# %% [markdown]
# The errors lie along lines of slope $-1$: an absolute rounding noise divided by the gradient's size. The
# larger step of the 4th-order stencil moves the whole cloud down a hundredfold. Still, an entry of $10^{-8}$ or
# less cannot be checked *relatively* by either stencil: it can only be held to an absolute bound near the noise, as
# the key biases were above. That is all the `floor` is for: chosen from the measured noise, never to make a real
# error go away.
#
# ## Summary
#
# * `model(...)` is ~40 op calls, `model.backward()` the same ops' backwards: the heads first, then the encoder in
#   exactly reversed order. Every forward has one backward.
# * The state dict uses Hugging Face's names and (out, in) layout; the tied decoder is stored once. The
#   parameter count is a formula of the config: 110,106,428 for BERT-base with its heads.
# * A post-LN layer's backward sums two gradients at each residual: at $h$ (from the FFN and from $\operatorname{LN}_2$'s
#   backward) and at $x$ (from the attention and from $\operatorname{LN}_1$'s backward).
# * `bertnp` matches Hugging Face's logits, losses and all gradients to float64 rounding.
# * A whole-model finite-difference check needs float64, `eval()`, weights that are not tiny, the 4th-order stencil
#   with $h = 10^{-3}$, and a floor for entries at the noise.
#
# Next: lesson 10 turns gradients into updates — AdamW, warmup, clipping.
