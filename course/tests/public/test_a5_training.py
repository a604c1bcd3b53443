"""Assignment 5 (public): AdamW, the learning-rate schedule, global-norm clipping, a training step,
and a short pretraining run that must beat the unigram baseline on held-out text."""
import math
import tempfile
from pathlib import Path

import numpy as np

from referee import CheckFailed, accumulation_batch, check, check_accumulation, close, cut, tiny_batch, tiny_model

import bertnp as bn
from bertnp.optim import LinearWarmupDecay, clip_grad_norm, linear_warmup_decay

FIXTURE = Path(__file__).with_name("data") / "adamw_steps.npz"
NAMES = ("layer.dense.weight", "layer.dense.bias", "layer.LayerNorm.weight")


def test_adamw():
    """Task 5.1: torch.optim.AdamW -- decoupled decay on the old weights (none on biases and
    LayerNorm), Adam's moments of the gradient only, bias-corrected, eps after the square root."""
    data = np.load(FIXTURE)
    # 1. the first step of Adam moves every entry by lr * g / (|g| + eps): bias correction at work
    params = {n: data[f"start/{n}"].copy() for n in NAMES}
    grads = {n: data[f"grad0/{n}"].copy() for n in NAMES}
    opt = bn.AdamW(params, grads=grads, lr=0.05, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0)
    opt.step()
    for n in NAMES:
        g = grads[n]
        expected = data[f"start/{n}"] - 0.05 * g / (np.abs(g) + 1e-6)
        moved = np.abs(params[n] - data[f"start/{n}"]).max()
        if not np.allclose(params[n], expected, rtol=1e-9, atol=1e-12):
            raise CheckFailed(f"AdamW's first step (no decay) on {n}: every entry must move by lr * g / (|g| + eps) "
                              f"= about lr = 0.05; the largest move was {moved:.4g}"
                              + (" -- without the bias correction m / (1 - b1^t), v / (1 - b2^t) the first step is "
                                 "about 3.16 x lr" if moved > 0.1 else ""))
    # 2. with a zero gradient a step only decays: weights by (1 - lr * wd), biases and LayerNorm not at all
    params = {n: data[f"start/{n}"].copy() for n in NAMES}
    zero = {n: np.zeros_like(v) for n, v in params.items()}
    opt = bn.AdamW(params, grads=zero, lr=0.5, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.1)
    for _ in range(3):
        opt.step()
    close("a weight after 3 steps with zero gradient: p * (1 - lr * wd)^3 (decoupled decay; the decay "
          "must not enter Adam's moments, which would move it by about lr a step)",
          params["layer.dense.weight"], data["start/layer.dense.weight"] * (1 - 0.5 * 0.1) ** 3, rtol=1e-12)
    for n in ("layer.dense.bias", "layer.LayerNorm.weight"):
        close(f"{n} after 3 steps with zero gradient: unchanged (no weight decay on biases and LayerNorm)",
              params[n], data[f"start/{n}"], rtol=0, atol=0)
    # 3. three full steps against the reference numbers
    params = {n: data[f"start/{n}"].copy() for n in NAMES}
    grads = {n: np.zeros_like(v) for n, v in params.items()}
    opt = bn.AdamW(params, grads=grads, lr=0.05, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.1)
    for t in range(3):
        for n in NAMES:
            grads[n][...] = data[f"grad{t}/{n}"]
        opt.step()
        for n in NAMES:
            close(f"{n} after step {t + 1} (lr 0.05, weight decay 0.1)", params[n], data[f"after{t}/{n}"], rtol=1e-10)


def test_warmup_decay():
    """Task 5.2: lr multiplier step/warmup during warmup (0 at step 0), then linear decay to 0."""
    for step, expected in [(0, 0.0), (1, 0.1), (5, 0.5), (10, 1.0), (20, 0.8), (55, 0.1), (60, 0.0), (70, 0.0)]:
        got = linear_warmup_decay(step, 10, 60)
        check(math.isclose(got, expected, abs_tol=1e-12), f"linear_warmup_decay({step}, warmup_steps=10, "
              "total_steps=60)", got, expected)
    opt = bn.AdamW({"w.weight": np.zeros(2)}, grads={"w.weight": np.zeros(2)}, lr=1e-3)
    schedule = LinearWarmupDecay(opt, warmup_steps=4, total_steps=8)
    seen = []
    for _ in range(8):
        seen.append(opt.lr)
        schedule.step()
    close("the learning rates of 8 updates (warmup 4, total 8, base 1e-3)", seen,
          [0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 7.5e-4, 5e-4, 2.5e-4], rtol=1e-12, atol=1e-15)


def test_clip_grad_norm():
    """Task 5.3: ONE coefficient for all tensors, from their global norm sqrt(sum of all g^2)."""
    r = np.random.default_rng(3)
    grads = {"a.weight": r.standard_normal((3, 4)) * 5, "b.bias": r.standard_normal(6) * 0.1,
             "c.weight": r.standard_normal((2, 2)) * 2}
    before = {k: v.copy() for k, v in grads.items()}
    total = math.sqrt(sum(float((v * v).sum()) for v in before.values()))
    norm = clip_grad_norm(grads, 1.0)
    check(math.isclose(float(norm), total, rel_tol=1e-12), "clip_grad_norm returns the global norm before clipping",
          float(norm), total)
    coefficients = {k: float(np.linalg.norm(grads[k]) / np.linalg.norm(before[k])) for k in grads}
    if max(coefficients.values()) - min(coefficients.values()) > 1e-9:
        shown = ", ".join(f"{k} x {c:.4f}" for k, c in coefficients.items())
        raise CheckFailed(f"clip_grad_norm scaled the tensors by different factors ({shown}): clipping is GLOBAL -- "
                          f"every tensor is multiplied by max_norm / (global norm + 1e-6) = {1.0 / (total + 1e-6):.4f}")
    close("the tensors after clipping: g * max_norm / (global norm + 1e-6)", np.concatenate([g.ravel() for g in grads.values()]),
          np.concatenate([g.ravel() for g in before.values()]) * (1.0 / (total + 1e-6)), rtol=1e-12)
    small = {k: v / (10 * total) for k, v in before.items()}
    kept = {k: v.copy() for k, v in small.items()}
    clip_grad_norm(small, 1.0)
    for k in small:
        close(f"{k} with a global norm of 0.1 < max_norm: unchanged", small[k], kept[k], rtol=0, atol=0)


class RecordingOptimizer:
    """Stands in for AdamW: records the gradients each step() sees, changes nothing."""

    def __init__(self, model):
        self.model, self.seen, self.lr = model, [], 1e-3

    def step(self):
        self.seen.append({k: np.array(v, copy=True) for k, v in self.model.grads.items()})

    def zero_grad(self):
        self.model.zero_grad()


def _global_norm(grads):
    return math.sqrt(sum(float((np.asarray(g) ** 2).sum()) for g in grads.values()))


def test_train_step():
    """Task 5.4: zero_grad, forward, backward, clip, step -- the gradients of THIS batch only."""
    from bertnp.course.training import train_step
    model = tiny_model(21, layers=1)
    batch = tiny_batch()
    model.zero_grad()
    out = model(**batch)
    fresh = {k: np.array(v, copy=True) for k, v in model.backward().items()}
    fresh_norm = _global_norm(fresh)
    model.zero_grad()
    opt = RecordingOptimizer(model)
    first = train_step(model, opt, batch, max_grad_norm=1e9)
    check(set(first) >= {"loss", "mlm_loss", "nsp_loss", "grad_norm"}, "train_step's result keys", sorted(first),
          ["grad_norm", "loss", "mlm_loss", "nsp_loss"])
    close("train_step's loss is this batch's forward loss", first["loss"], float(out.loss), rtol=1e-12)
    close("train_step's grad_norm is the global norm before clipping", first["grad_norm"], fresh_norm, rtol=1e-9)
    second = train_step(model, opt, batch, max_grad_norm=1e9)
    check(len(opt.seen) == 2, "optimizer.step() calls after two train_steps", len(opt.seen), 2)
    ratio = _global_norm(opt.seen[1]) / _global_norm(opt.seen[0])
    if abs(ratio - 1) > 1e-9:
        raise CheckFailed(f"the second train_step's gradients are {ratio:.3f} x the first's on the same batch: "
                          "gradients accumulate across backward() calls until zeroed -- zero them at the start of a step")
    close("the gradients step() sees are the batch's gradients", opt.seen[1]["cls.predictions.bias"],
          fresh["cls.predictions.bias"], rtol=1e-10)
    train_step(model, opt, batch, max_grad_norm=1e-3)
    seen_norm = _global_norm(opt.seen[-1])
    check(seen_norm <= 1e-3 * (1 + 1e-6), "global norm of the gradients step() sees with max_grad_norm=1e-3 "
          "(clip BEFORE the step)", seen_norm, "<= 1e-3")
    check(math.isclose(second["loss"], first["loss"], rel_tol=1e-12), "the loss of a step that changed nothing",
          second["loss"], first["loss"])


# ---------------------------------------------------------------------- the short pretraining run

def _pretraining_data():
    from bertnp.corpus import bundled_corpus
    from bertnp.data import PretrainingDataset, read_corpus
    documents = read_corpus(bundled_corpus("train"))
    heldout = read_corpus(bundled_corpus("heldout"))
    folder = Path(tempfile.mkdtemp(prefix="bertnp-course-5.5-"))
    sentences = [s for d in documents for s in d][::6]
    bn.train_wordpiece("\n".join(sentences), vocab_size=1000, vocab_file=folder / "vocab.txt", show_progress=False)
    tokenizer = bn.BertTokenizer(str(folder / "vocab.txt"))
    options = dict(max_seq_length=32, max_predictions_per_seq=6)
    train = PretrainingDataset(documents[::3], tokenizer, seed=1, **options)
    held = PretrainingDataset(heldout, tokenizer, seed=2, **options)
    return tokenizer, train, held


def test_pretraining_run():
    """Task 5.5: 400 updates of a tiny BERT on the bundled corpus with your loop (AdamW, warmup and
    decay, clipping). Graded on held-out masked tokens: the model must predict them better than the
    unigram baseline (always the most frequent training token) by 10%."""
    from bertnp.course.training import pretrain
    from bertnp.data import PretrainingLoader
    from bertnp.train import unigram_baseline
    tokenizer, train, held = _pretraining_data()
    V = tokenizer.vocab_size
    config = bn.BertConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=256, max_position_embeddings=32, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
    model = bn.BertForPreTraining(config, seed=0)
    optimizer = bn.AdamW(model, lr=3e-3, weight_decay=0.01)
    steps = 400
    schedule = LinearWarmupDecay(optimizer, warmup_steps=20, total_steps=steps)
    loader = PretrainingLoader(train, 32, seed=0)

    def batches():
        while True:
            yield from loader
    losses = pretrain(model, optimizer, schedule, batches(), steps)
    check(len(losses) == steps, "pretrain returns one loss per step", len(losses), steps)
    check(all(math.isfinite(x) for x in losses), "every training loss is finite", [x for x in losses if not math.isfinite(x)][:3], [])
    model.eval()
    held_batches = list(PretrainingLoader(held, 64, shuffle=False))
    _, unigram = unigram_baseline(train.documents, held_batches, tokenizer.all_special_ids)     # task 5.7
    correct = total = 0
    for batch in held_batches:
        predicted = np.asarray(model(**batch).prediction_logits).argmax(-1)     # (N,) labelled positions, row-major
        labels = batch["labels"][batch["labels"] != -100]
        correct += int((predicted == labels).sum())
        total += labels.size
    accuracy = correct / total
    print(f"held-out MLM accuracy {accuracy:.4f}, unigram baseline {unigram:.4f} ({total} masked tokens); "
          f"training loss {np.mean(losses[:10]):.2f} -> {np.mean(losses[-10:]):.2f}")
    if accuracy < 1.1 * unigram:
        raise CheckFailed(f"held-out MLM accuracy {accuracy:.4f} does not beat the unigram baseline {unigram:.4f} "
                          f"by 10% (needed {1.1 * unigram:.4f}); training loss {np.mean(losses[:10]):.2f} -> "
                          f"{np.mean(losses[-10:]):.2f}. Does the learning rate follow the schedule (it starts at 0)?")


# ---------------------------------------------------------------------- gradient accumulation (5.6)

def test_grad_accumulation():
    """Task 5.6: K micro-batches give exactly the whole batch's loss and gradient (float64, 1e-12):
    MLM normalised by the update's labelled tokens, NSP by its sequences -- not the mean of means."""
    model = tiny_model(31, layers=1)
    batch = accumulation_batch(0)
    # the model alone: with the update's counts, a micro-batch's loss is its share of the update's mean
    first = cut(batch, [2, 3])[0]
    own = model(**first)
    n_first = int((first["labels"] != -100).sum())
    N, B = int((batch["labels"] != -100).sum()), len(batch["next_sentence_label"])
    shared = model(**first, mlm_denominator=N, nsp_denominator=B)
    close(f"out.mlm_loss with mlm_denominator={N} for a micro-batch of {n_first} labelled tokens: its mean x "
          f"{n_first}/{N} (its summed loss / the update's count)", float(shared.mlm_loss),
          float(own.mlm_loss) * n_first / N, rtol=1e-12)
    close(f"out.nsp_loss with nsp_denominator={B} for a micro-batch of 2 sequences: its mean x 2/{B}",
          float(shared.nsp_loss), float(own.nsp_loss) * 2 / B, rtol=1e-12)
    # one update in micro-batches, as the Trainer runs it
    check_accumulation(model, batch, [2, 1, 2])


# ---------------------------------------------------------------------- the unigram baseline (5.7)

def test_unigram_baseline():
    """Task 5.7: the baselines an MLM curve is read against: always guessing the most frequent
    TRAINING token (accuracy), and the add-one smoothed training frequencies (cross-entropy, nats),
    special tokens excluded, scored on the held-out LABELLED positions only."""
    from bertnp.demo import unigram_cross_entropy
    from bertnp.train import unigram_baseline
    specials = [0, 1, 2, 3, 4]                                   # [PAD] [UNK] [CLS] [SEP] [MASK]; words 5-9
    documents = [[[5, 7, 6, 1], [7, 1, 7]], [[5, 7, 1, 1, 1]]]   # words: 5 x2, 6 x1, 7 x4 (N = 7); [UNK] x5
    held_out = [{"input_ids": np.array([[2, 4, 8, 4, 4, 3]]), "labels": np.array([[-100, 7, -100, 5, 5, -100]])},
                {"input_ids": np.array([[2, 4, 6, 3, 0, 0]]), "labels": np.array([[-100, 9, -100, -100, -100, -100]])}]
    # the held-out targets: 7, 5, 5, 9
    top, accuracy = unigram_baseline(documents, held_out, specials)
    hints = {1: " -- that is [UNK], a special token: the model is never asked to predict those",
             5: " -- that is the most frequent HELD-OUT target: the baseline may only know the training text"}
    check(top == 7, "the most frequent training token (specials excluded)" + hints.get(top, ""), top, 7)
    check(math.isclose(accuracy, 1 / 4, rel_tol=1e-12), "the accuracy of always guessing 7 on the 4 labelled "
          "held-out positions (7, 5, 5, 9)" + (" -- only the labelled positions count, not all 12"
                                               if math.isclose(accuracy, 1 / 12) else ""), accuracy, 1 / 4)
    cross_entropy = unigram_cross_entropy(documents, held_out, 10, specials)
    # p(t) = (count + 1) / (N + number of non-special tokens): 5 -> 3/12, 7 -> 5/12, 9 -> 1/12
    expected = -(math.log(5 / 12) + 2 * math.log(3 / 12) + math.log(1 / 12)) / 4
    with_specials = -(math.log(5 / 22) + 2 * math.log(3 / 22) + math.log(1 / 22)) / 4     # + [PAD]..[MASK]: 22
    known = {with_specials: "the special tokens ([UNK] here) are in your counts: they are no words, count only the others",
             math.inf: "token 9 never occurs in the training text: without add-one smoothing its probability is 0",
             expected / math.log(2): "that is in bits (log2): a loss is in nats (natural log)"}
    hint = next((h for value, h in known.items() if math.isclose(cross_entropy, value, rel_tol=1e-9)
                 or cross_entropy == value), None)
    check(math.isclose(cross_entropy, expected, rel_tol=1e-12), "the unigram cross-entropy (nats) of the held-out "
          "targets" + (f" -- {hint}" if hint else ""), cross_entropy, expected)

