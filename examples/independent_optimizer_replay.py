#!/usr/bin/env python3
"""Replay a trace's optimizer without epk and without torch.optim.

For a trace of format version 1 or 2 (docs/trace-format.md), this script
redoes the optimizer's update rule in float64 NumPy, written from the format's
text (SGD with momentum, dampening, nesterov, weight decay; Adam and AdamW with
betas, eps, weight decay, amsgrad; a recorded initial state with
optimizer.initial_step), with gradients by torch autograd through the trace's
model (examples/epk_trace.py's Model, float64). It is a check of the trace
itself, independent of both epk and torch.optim:

  replayed   from init_params.npy (or the first row of params.npy) and the
             recorded state, S steps: f(x; w_S) at the test points, compared
             with torch's reference_outputs.npy when the trace has one
             (max|replay - torch| / max|torch|);
  one-step   with params.npy: every recorded row w[s+1] against the update
             applied to the recorded w[s], the optimizer's state carried
             along the recorded path: max_s ||w[s+1] - U(w[s])||_inf /
             ||w[s+1]||_inf, in units of the path's unit roundoff
             (float64 2^-53, float32 2^-24). A writer whose manifest or state
             files do not describe the run it recorded shows orders of
             magnitude above 1 here.

usage: independent_optimizer_replay.py TRACE [--json FILE]
Prints one line (or writes the JSON object to FILE): optimizer, path,
replay_vs_reference, one_step_max_over_u.

Requires Python 3, NumPy and PyTorch.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from epk_trace import Model  # noqa: E402  (the trace's network as a function of flat parameters)

DT = torch.float64


def optimizer_of(manifest):
    """The manifest's optimizer with the format's names, synonyms and defaults."""
    o = dict(manifest["optimizer"])
    kind = {"sgd": "sgd", "SGD": "sgd", "adam": "adam", "Adam": "adam",
            "adamw": "adamw", "AdamW": "adamw"}[o["type"]]
    lr = o.get("learning_rate", o.get("lr"))
    r = {"type": kind, "steps": int(o["steps"]), "lr": None if lr is None else float(lr),
         "weight_decay": float(o.get("weight_decay", 0.01 if kind == "adamw" else 0.0)),
         "initial_step": int(o.get("initial_step", 0))}
    if kind == "adam" and o.get("decoupled_weight_decay", False):
        r["type"] = "adamw"
    if kind == "sgd":
        r.update(momentum=float(o.get("momentum", 0.0)), dampening=float(o.get("dampening", 0.0)),
                 nesterov=bool(o.get("nesterov", False)))
    else:
        betas = o.get("betas", [o.get("beta1", 0.9), o.get("beta2", 0.999)])
        r.update(beta1=float(betas[0]), beta2=float(betas[1]), eps=float(o.get("eps", 1e-8)),
                 amsgrad=bool(o.get("amsgrad", False)))
    return r


class Optimizer:
    """The format's update rules, element by element, in float64 NumPy."""

    def __init__(self, o, P, state):
        self.o = o
        self.t = o["initial_step"]  # steps taken
        zero = np.zeros(P)
        self.b = state.get("momentum_buffer")  # None until the first step of the run
        self.m = state.get("exp_avg", zero.copy())
        self.v = state.get("exp_avg_sq", zero.copy())
        self.vmax = state.get("max_exp_avg_sq", zero.copy())

    def copy(self):
        c = Optimizer.__new__(Optimizer)
        c.o, c.t = self.o, self.t
        c.b = None if self.b is None else self.b.copy()
        c.m, c.v, c.vmax = self.m.copy(), self.v.copy(), self.vmax.copy()
        return c

    def step(self, w, g, eta):
        """w after one step with gradient g at rate eta (the state advances)."""
        o, lam = self.o, self.o["weight_decay"]
        if o["type"] == "sgd":
            d = g + lam * w if lam != 0 else g.copy()
            mu = o["momentum"]
            if mu != 0:
                if self.b is None:
                    self.b = d.copy()
                else:
                    self.b = mu * self.b + (1.0 - o["dampening"]) * d
                d = d + mu * self.b if o["nesterov"] else self.b
            self.t += 1
            return w - eta * d
        self.t += 1
        b1, b2 = o["beta1"], o["beta2"]
        if o["type"] == "adamw":
            w = w * (1.0 - eta * lam)
        elif lam != 0:
            g = g + lam * w
        self.m = b1 * self.m + (1.0 - b1) * g
        self.v = b2 * self.v + (1.0 - b2) * g * g
        v = self.v
        if o["amsgrad"]:
            self.vmax = np.maximum(self.vmax, self.v)
            v = self.vmax
        c1 = 1.0 - b1 ** self.t
        c2 = 1.0 - b2 ** self.t
        return w - (eta / c1) * self.m / (np.sqrt(v) / math.sqrt(c2) + o["eps"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--json", help="write the result as JSON to this file")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    d = a.trace
    ld = lambda name: np.load(os.path.join(d, name), allow_pickle=False)
    ex = lambda name: os.path.exists(os.path.join(d, name))
    with open(os.path.join(d, "manifest.json"), encoding="utf-8") as fh:
        man = json.load(fh)
    o = optimizer_of(man)
    model = Model(man)
    S, P = o["steps"], model.P
    x_train = torch.from_numpy(ld("x_train.npy").astype(np.float64))
    loss_type, reduction = man["loss"]["type"], man["loss"]["reduction"]
    y = ld("y_train.npy")
    y_train = torch.from_numpy(y.astype(np.int64) if loss_type == "cross_entropy" else y.astype(np.float64))
    N = x_train.shape[0]
    batches = ld("batches.npy").astype(np.int64) if ex("batches.npy") else None
    rates = ld("learning_rates.npy").astype(np.float64) if ex("learning_rates.npy") else np.full(S, o["lr"])
    params = ld("params.npy") if ex("params.npy") else None
    path_u = 2.0 ** -53
    if params is not None:
        path_u = 2.0 ** -24 if params.dtype == np.float32 else 2.0 ** -53
        params = params.astype(np.float64)
        w0 = params[0].copy()
    else:
        w0 = ld("init_params.npy").astype(np.float64)
    files = {"momentum_buffer": "init_momentum_buffer.npy", "exp_avg": "init_exp_avg.npy",
             "exp_avg_sq": "init_exp_avg_sq.npy", "max_exp_avg_sq": "init_max_exp_avg_sq.npy"}
    state = {k: ld(f).astype(np.float64) for k, f in files.items() if ex(f)}
    for k, v in state.items():
        if v.shape != (P,):
            raise SystemExit("%s has shape %s, expected (%d,)" % (files[k], v.shape, P))
    x_eval = torch.from_numpy(ld("x_test.npy").astype(np.float64)) if ex("x_test.npy") \
        else x_train[:min(10, N)].clone()

    def grad(s, w):
        idx = torch.from_numpy(batches[s]) if batches is not None else torch.arange(N)
        wl = torch.from_numpy(w.copy()).requires_grad_(True)
        f = model.forward(x_train[idx], wl)
        if loss_type == "cross_entropy":
            L = torch.nn.functional.cross_entropy(f, y_train[idx], reduction=reduction)
        else:
            L = torch.nn.functional.mse_loss(f, y_train[idx], reduction=reduction)
        (gw,) = torch.autograd.grad(L, wl)
        return gw.detach().numpy()

    # free replay from w0 and the recorded state
    opt = Optimizer(o, P, state)
    w = w0.copy()
    for s in range(S):
        w = opt.step(w, grad(s, w), float(rates[s]))
    out = model.outputs(x_eval, torch.from_numpy(w)).numpy()
    res = {"trace": d, "optimizer": o, "path": "recorded" if params is not None else "replayed",
           "outputs_final_replayed": out.tolist()}
    if ex("reference_outputs.npy"):
        ref = ld("reference_outputs.npy")
        res["replay_vs_reference"] = float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))
    # one step at a time along the recorded path, the state carried along it
    if params is not None:
        opt = Optimizer(o, P, state)
        worst = 0.0
        for s in range(S):
            w_next = opt.step(params[s], grad(s, params[s]), float(rates[s]))
            worst = max(worst, float(np.max(np.abs(w_next - params[s + 1])) /
                                     max(np.max(np.abs(params[s + 1])), 1e-300)))
        res["one_step_max_rel"] = worst
        res["one_step_max_over_u"] = worst / path_u
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump(res, fh)
    else:
        print("%s: %s%s, %s path: replay vs torch %s, one-step max %s u" % (
            d, o["type"], " (initial_step %d)" % o["initial_step"] if o["initial_step"] else "", res["path"],
            "%.3e" % res["replay_vs_reference"] if "replay_vs_reference" in res else "n/a",
            "%.2f" % res["one_step_max_over_u"] if "one_step_max_over_u" in res else "n/a"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
