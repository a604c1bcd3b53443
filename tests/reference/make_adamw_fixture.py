"""Write adamw_trajectory_f64.npz: 12 training steps of a tiny float64 BertForPreTraining with
torch.optim.AdamW, a linear warmup/decay schedule and global-norm clipping -- the reference that
bertnp's optimizer, schedule and clipping (and forward/backward at a standard init) must follow.

    pip install torch==2.13.0 transformers
    HF_HUB_OFFLINE=1 python tests/reference/make_adamw_fixture.py

Model: fixture_common.TINY config (V=99, H=24, L=2, nh=3, I=40), built with torch.manual_seed(0),
.double(), eval() mode (dropout OFF for every step), eager attention, then re-initialized with a
torch.Generator seeded 2 in model.named_parameters() order: weights (Linear + the three
embedding tables) N(0, 0.02) (not truncated), every bias 0, LayerNorm weight 1, bias 0. The word
embedding is tied to the MLM decoder and is ONE parameter: model.parameters() yields it once, so
it gets one AdamW state and one weight-decay term, and its gradient is the sum of both uses.

Batch: the same single fixed batch every step (fixture_common.make_inputs(): B=3, T=11, lengths
11/8/5, labels -100 except 4 real positions per row) and next_sentence_label [0, 1, 0].
Loss: HF's total loss = mean MLM cross-entropy over labels != -100 + mean NSP cross-entropy.

The algorithm, step t = 1 .. N (N = 12, W = 3 warm-up steps, base lr = 1e-3):

    g      = d loss(p_{t-1}) / d p                     (losses[t-1] is this loss)
    norm   = sqrt(sum over ALL params of sum(g**2))    (grad_norms[t-1]; pre-clip)
    coef   = min(1, 1.0 / (norm + 1e-6))               (torch.nn.utils.clip_grad_norm_, max_norm 1;
    g      = g * coef                                    note the +1e-6, applied even when < 1)
    lr_t   = 1e-3 * f(t - 1),   f(s) = s / W                 if s < W
                                f(s) = max(0, (N - s) / (N - W))  otherwise
             (LambdaLR == transformers.get_linear_schedule_with_warmup(W, N); lrs[t-1] = lr_t:
              0, 1/3, 2/3, 1, 8/9, 7/9, ..., 1/9 times 1e-3 -- the FIRST update has lr 0, so it
              only fills m and v: losses[1] == losses[0] exactly)
    wd     = 0.01 for every weight except biases and LayerNorm weights/biases (0.0 for those);
             the embedding tables, the tied word embedding included, ARE decayed
    p      = p * (1 - lr_t * wd)                       (decoupled decay on the old weights, first)
    m      = 0.9 * m + 0.1 * g                         (m, v start at 0)
    v      = 0.999 * v + 0.001 * g * g
    p      = p - (lr_t / (1 - 0.9**t)) * m / (sqrt(v) / sqrt(1 - 0.999**t) + 1e-6)
             (eps 1e-6 added AFTER bias-correcting sqrt(v); torch's single-tensor AdamW, amsgrad
              off, foreach=False -- the multi-tensor path agrees to rounding)

Keys (names are HF state-dict names; tied duplicates never stored):
    config_json, versions, tied_names, schedule_json   0-d unicode arrays holding JSON
    param/<name>        initial parameters (float64)
    input_ids, attention_mask, token_type_ids, labels (B, T) int64; next_sentence_label (B,) int64
    grad0/<name>        unclipped gradient at the initial parameters (= the gradient of steps 1
                        and 2, since step 1 does not move the weights)
    losses (12,)        loss before each update;   mlm_losses, nsp_losses (12,) its two parts
    grad_norms (12,)    pre-clip global gradient norm;   clip_coefs (12,) the applied coef
    lrs (12,)           lr used by each update;    weight_decay/<name> 0-d, the group's decay
    step2/<name>        parameters after update 2 (the first that moves them)
    final/<name>        parameters after update 12;  final_loss 0-d, the loss there
    exp_avg/<name>, exp_avg_sq/<name>   AdamW's m and v after update 12
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from transformers import BertForPreTraining, get_linear_schedule_with_warmup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_common import (TIED_PRETRAINING, config_json, is_layernorm, make_inputs,  # noqa: E402
                            rerandomize_, tiny_config, to_np, versions_json)

HERE = Path(__file__).resolve().parent
N_STEPS, WARMUP, LR = 12, 3, 1e-3
BETAS, EPS, WD, MAX_NORM = (0.9, 0.999), 1e-6, 0.01, 1.0


def lr_lambda(s: int) -> float:
    """Multiplier of the base lr for the update that follows s completed updates."""
    if s < WARMUP:
        return s / WARMUP
    return max(0.0, (N_STEPS - s) / (N_STEPS - WARMUP))


def no_decay(name: str) -> bool:
    return name.endswith(".bias") or name == "cls.predictions.bias" or is_layernorm(name)


def main() -> dict[str, np.ndarray]:
    torch.use_deterministic_algorithms(True)
    cfg = tiny_config()
    torch.manual_seed(0)
    model = BertForPreTraining(cfg).double().eval()
    rerandomize_(model, seed=2, weight_std=0.02, bias_std=0.0, ln_std=0.0)
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    assert "cls.predictions.decoder.weight" not in params  # tied: appears once

    ids, mask, types, labels = (torch.from_numpy(a) for a in make_inputs())
    nsp = torch.tensor([0, 1, 0], dtype=torch.int64)

    groups = [
        {"params": [params[n] for n in names if not no_decay(n)], "weight_decay": WD},
        {"params": [params[n] for n in names if no_decay(n)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS, foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    # The same schedule as transformers' helper (checked on a throwaway optimizer).
    dummy = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=LR)
    hf = get_linear_schedule_with_warmup(dummy, WARMUP, N_STEPS)
    hf_lrs = []
    for _ in range(N_STEPS):
        hf_lrs.append(hf.get_last_lr()[0])
        dummy.step()
        hf.step()

    out: dict[str, np.ndarray] = {}
    out["config_json"] = np.array(config_json(cfg))
    out["versions"] = np.array(versions_json())
    out["tied_names"] = np.array(json.dumps(sorted(TIED_PRETRAINING)))
    out["schedule_json"] = np.array(json.dumps(dict(
        optimizer="torch.optim.AdamW", lr=LR, betas=list(BETAS), eps=EPS, weight_decay=WD,
        no_decay="biases (incl. cls.predictions.bias) and LayerNorm weights/biases",
        schedule="linear warmup then linear decay (LambdaLR)", warmup_steps=WARMUP,
        total_steps=N_STEPS, clip_grad_norm=MAX_NORM, clip_formula="g *= min(1, max_norm/(norm+1e-6))",
    ), sort_keys=True))
    for n in names:
        out[f"param/{n}"] = to_np(params[n])
        out[f"weight_decay/{n}"] = np.array(0.0 if no_decay(n) else WD)
    out["input_ids"], out["attention_mask"], out["token_type_ids"] = to_np(ids), to_np(mask), to_np(types)
    out["labels"], out["next_sentence_label"] = to_np(labels), to_np(nsp)

    def forward():
        o = model(input_ids=ids, attention_mask=mask, token_type_ids=types,
                  labels=labels, next_sentence_label=nsp)
        mlm = torch.nn.functional.cross_entropy(o.prediction_logits.reshape(-1, cfg.vocab_size),
                                                labels.reshape(-1), ignore_index=-100)
        nspl = torch.nn.functional.cross_entropy(o.seq_relationship_logits, nsp)
        assert torch.equal(o.loss, mlm + nspl)
        return o.loss, mlm, nspl

    losses, mlms, nsps, norms, coefs, lrs = [], [], [], [], [], []
    for step in range(1, N_STEPS + 1):
        opt.zero_grad(set_to_none=True)
        loss, mlm, nspl = forward()
        loss.backward()
        if step == 1:
            for n in names:
                out[f"grad0/{n}"] = to_np(params[n].grad)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
        lr_t = sched.get_last_lr()[0]
        assert lr_t == LR * lr_lambda(step - 1) and lr_t == hf_lrs[step - 1]
        opt.step()
        sched.step()
        losses.append(loss.item()); mlms.append(mlm.item()); nsps.append(nspl.item())
        norms.append(norm.item()); lrs.append(lr_t)
        coefs.append(min(1.0, (MAX_NORM / (norm + 1e-6)).item()))
        print(f"step {step:2d}  lr {lr_t:.6f}  loss {losses[-1]:.10f}  grad_norm {norms[-1]:.6f}"
              f"  clip {coefs[-1]:.6f}")
        if step == 2:
            for n in names:
                out[f"step2/{n}"] = to_np(params[n])

    with torch.no_grad():
        final_loss, _, _ = forward()
    print(f"final loss {final_loss.item():.10f}")
    out["losses"], out["mlm_losses"], out["nsp_losses"] = (np.array(x) for x in (losses, mlms, nsps))
    out["grad_norms"], out["clip_coefs"], out["lrs"] = (np.array(x) for x in (norms, coefs, lrs))
    out["final_loss"] = to_np(final_loss)
    for n in names:
        p = params[n]
        out[f"final/{n}"] = to_np(p)
        out[f"exp_avg/{n}"] = to_np(opt.state[p]["exp_avg"])
        out[f"exp_avg_sq/{n}"] = to_np(opt.state[p]["exp_avg_sq"])
        assert opt.state[p]["step"].item() == N_STEPS
    return out


if __name__ == "__main__":
    arrays = main()
    for k, v in arrays.items():
        assert v.dtype.kind in "fiU" and (v.dtype.kind != "f" or v.dtype == np.float64), k
    path = HERE / "adamw_trajectory_f64.npz"
    np.savez_compressed(path, **arrays)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB, {len(arrays)} arrays)")
