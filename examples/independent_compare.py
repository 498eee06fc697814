#!/usr/bin/env python3
"""Independent float64 computation of epk compare's approximate reconstructions.

This script does NOT use epk. Given a trace directory (docs/trace-format.md, as
written by examples/pytorch_trace.py) it recomputes, in float64 with PyTorch,
the reconstructions of f(X; w_S) that `epk compare TRACE --json` reports for
the methods tangent_per_step, ntk_init and linearized.

Test points X are x_test.npy if present, else the first min(10, N) training
rows. The path w_0..w_S is params.npy (recorded; float32 values are taken
exactly into float64) if present, else plain SGD replayed from init_params.npy
in float64 torch: w_{s+1} = w_s - eta_s grad L_s(w_s), L_s the loss (torch's
cross_entropy / mse_loss with the trace's reduction) on the batch B_s of step s
(batches.npy, else the full batch), eta_s from learning_rates.npy, else the
manifest's rate. With a_{i,s} = -eta_s dL_s/df(x_i; w_s) (autograd through the
torch loss) and f0 = f(X; w_0):

  tangent_per_step  f0 + sum_s J(X; w_s) (sum_{i in B_s} J(x_i; w_s)^T a_{i,s})
                      = f0 + sum_s J(X; w_s) (-eta_s grad L_s(w_s))
                    (one Jacobian-vector product per step; no step remainder);
  ntk_init          f0 + J(X; w_0) sum_s sum_{i in B_s} J(x_i; w_0)^T a_{i,s},
                    a from the true path (evaluated at w_s): one vector-Jacobian
                    product at w_0 per step, summed, then one JVP at w_0;
  linearized        f_lin(x; w) = f(x; w_0) + J(x; w_0)(w - w_0), trained by the
                    same SGD (same batches, rates, loss) from w_0; the gradient
                    of L(f_lin(x_B; w)) is J(x_B; w_0)^T dL/df at the f_lin
                    outputs; reports f_lin(X; w_lin,S).

Also reported: outputs_final = f(X; w_S) and each method's error
max |reconstruction - outputs_final| (computed here, independently of epk).

Output: JSON on stdout (and in --out FILE if given), shaped like epk's:
  {"methods": {name: {"reconstruction": [[...C...] x M], "error_max_abs": e}},
   "outputs_final": [[...]], "path": "recorded"|"replayed", "steps": S, ...}

Requires Python 3, NumPy and PyTorch (Debian: /usr/bin/python3 with python3-torch).

Example:
    /usr/bin/python3 examples/pytorch_trace.py --out /tmp/t --activation tanh --hidden 16,16 --steps 20
    /usr/bin/python3 examples/independent_compare.py /tmp/t --out /tmp/t-compare.json
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

DT = torch.float64
KINK_ACTIVATIONS = ("relu", "leaky_relu")
SMOOTH_ACTIVATIONS = ("tanh", "sigmoid", "softplus", "gelu")
METHODS = ("tangent_per_step", "ntk_init", "linearized")


# ------------------------------------------------------------------ the model
# (copied from examples/independent_kernel.py so that this script stays standalone)

class Model:
    """A functional version of the trace's torch.nn.Sequential.

    Parameters are a flat vector in torch's parameters_to_vector order: for each
    linear layer, its weight [out, in] row-major, then its bias.
    """

    def __init__(self, manifest):
        m = manifest["model"]
        self.input_dim = int(m["input_dim"])
        self.ops = []           # ("linear", w_off, out, in, b_off|None) or ("act", name, slope)
        width, off = self.input_dim, 0
        for layer in m["layers"]:
            kind = layer["type"]
            if kind == "linear":
                out = int(layer["out_features"])
                w_off = off
                off += out * width
                b_off = None
                if layer.get("bias", True):
                    b_off = off
                    off += out
                self.ops.append(("linear", w_off, out, width, b_off))
                width = out
            elif kind in KINK_ACTIVATIONS + SMOOTH_ACTIVATIONS + ("identity",):
                self.ops.append(("act", kind, float(layer.get("negative_slope", 0.01))))
            else:
                raise ValueError("unsupported layer type " + kind)
        self.P = off
        self.C = width

    @staticmethod
    def _act(name, slope, z):
        if name == "relu":
            return torch.relu(z)
        if name == "leaky_relu":
            return F.leaky_relu(z, negative_slope=slope)
        if name == "tanh":
            return torch.tanh(z)
        if name == "sigmoid":
            return torch.sigmoid(z)
        if name == "softplus":
            return torch.logaddexp(z, torch.zeros_like(z))  # log(1 + e^z), no threshold
        if name == "gelu":
            return F.gelu(z)  # exact erf form
        if name == "identity":
            return z
        raise ValueError(name)

    def forward(self, x, w):
        """f(x[b]; w) for every row of x [B, D], one flat parameter vector w [P]: [B, C]."""
        h = x
        for op in self.ops:
            if op[0] == "linear":
                _, w_off, o, i, b_off = op
                h = h @ w[w_off:w_off + o * i].reshape(o, i).T
                if b_off is not None:
                    h = h + w[b_off:b_off + o]
            else:
                _, name, slope = op
                h = self._act(name, slope, h)
        return h


# ------------------------------------------------------------------ the trace
# (copied from examples/independent_kernel.py)

def load_trace(d):
    with open(os.path.join(d, "manifest.json"), encoding="utf-8") as fh:
        manifest = json.load(fh)
    ld = lambda name: np.load(os.path.join(d, name), allow_pickle=False)
    ex = lambda name: os.path.exists(os.path.join(d, name))
    t = {"manifest": manifest}
    t["x_train"] = torch.from_numpy(ld("x_train.npy").astype(np.float64))
    y = ld("y_train.npy")
    t["y_train"] = torch.from_numpy(y.astype(np.int64) if manifest["loss"]["type"] == "cross_entropy"
                                    else y.astype(np.float64))
    S = int(manifest["optimizer"]["steps"])
    t["S"] = S
    t["params"] = torch.from_numpy(ld("params.npy").astype(np.float64)) if ex("params.npy") else None
    t["init"] = torch.from_numpy(ld("init_params.npy").astype(np.float64)) if ex("init_params.npy") else None
    if t["params"] is None and t["init"] is None:
        raise ValueError("trace has neither params.npy nor init_params.npy")
    t["batches"] = ld("batches.npy").astype(np.int64) if ex("batches.npy") else None
    t["rates"] = (ld("learning_rates.npy").astype(np.float64) if ex("learning_rates.npy")
                  else np.full(S, float(manifest["optimizer"]["learning_rate"])))
    N = t["x_train"].shape[0]
    t["x_eval"] = (torch.from_numpy(ld("x_test.npy").astype(np.float64)) if ex("x_test.npy")
                   else t["x_train"][:min(10, N)].clone())
    t["x_eval_source"] = "x_test" if ex("x_test.npy") else "x_train[:%d]" % min(10, N)
    return t


# ------------------------------------------------------------------ derivatives

def _pick_jvp():
    """Forward-mode JVP: torch.func.jvp (torch >= 2.0), functorch.jvp (1.13), else
    torch.autograd.functional.jvp (reverse-over-reverse)."""
    fn = getattr(getattr(torch, "func", None), "jvp", None)
    if fn is not None:
        return "torch.func.jvp", lambda f, w, v: fn(f, (w,), (v,))[1]
    try:
        import functorch  # noqa: F401  (torch 1.13)
        return "functorch.jvp", lambda f, w, v: functorch.jvp(f, (w,), (v,))[1]
    except ImportError:
        return ("torch.autograd.functional.jvp",
                lambda f, w, v: torch.autograd.functional.jvp(f, (w,), (v,))[1])


JVP_NAME, _JVP = _pick_jvp()


def jvp(model, x, w, v):
    """J(x; w) v: [B, C]."""
    return _JVP(lambda p: model.forward(x, p), w.detach(), v.detach()).detach()


def vjp(model, x, w, cot):
    """J(x; w)^T cot = sum_b J(x[b]; w)^T cot[b]: [P]."""
    wl = w.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(model.forward(x, wl), wl, grad_outputs=cot.detach())
    return g.detach()


# ------------------------------------------------------------------ main

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("trace", help="trace directory")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ", ".join(METHODS))
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    opt = p.parse_args(argv)
    torch.set_num_threads(opt.threads)
    methods = [m for m in opt.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            p.error("unknown method %r (known: %s)" % (m, ", ".join(METHODS)))
    t_start = time.time()

    tr = load_trace(opt.trace)
    man = tr["manifest"]
    model = Model(man)
    S, N = tr["S"], tr["x_train"].shape[0]
    X, Y, XE = tr["x_train"], tr["y_train"], tr["x_eval"]
    P = model.P
    loss_type, reduction = man["loss"]["type"], man["loss"]["reduction"]
    recorded = tr["params"] is not None
    if recorded and tr["params"].shape != (S + 1, P):
        raise ValueError("params.npy has shape %s, expected %s" % (tuple(tr["params"].shape), (S + 1, P)))
    if not recorded and tr["init"].shape != (P,):
        raise ValueError("init_params.npy has shape %s, expected %s" % (tuple(tr["init"].shape), (P,)))

    def loss_fn(f, y):
        if loss_type == "cross_entropy":
            return F.cross_entropy(f, y, reduction=reduction)
        return F.mse_loss(f, y, reduction=reduction)

    def dloss_df(f, y):
        """dL/df at outputs f [B, C], by autograd through the torch loss."""
        fl = f.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(loss_fn(fl, y), fl)
        return g.detach()

    def loss_grad_w(xb, yb, w):
        """grad_w L(f(x_B; w), y_B): [P]."""
        wl = w.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(loss_fn(model.forward(xb, wl), yb), wl)
        return g.detach()

    def batch(s):
        return torch.from_numpy(tr["batches"][s]) if tr["batches"] is not None else torch.arange(N)

    w0 = (tr["params"][0] if recorded else tr["init"]).clone()
    with torch.no_grad():
        f0 = model.forward(XE, w0)

    # One pass along the true path: tangent_per_step and ntk_init's sum.
    tangent = f0.clone()
    ntk_total = torch.zeros(P, dtype=DT)
    w = w0.clone()
    for s in range(S):
        idx = batch(s)
        xb, yb = X[idx], Y[idx]
        eta = float(tr["rates"][s])
        gw = loss_grad_w(xb, yb, w)                                  # grad L_s(w_s)
        if "tangent_per_step" in methods:
            tangent += jvp(model, XE, w, -eta * gw)                  # J(X; w_s) (-eta_s grad L_s(w_s))
        if "ntk_init" in methods:
            with torch.no_grad():
                fb = model.forward(xb, w)
            a = -eta * dloss_df(fb, yb)                              # a_{i,s}, true path
            ntk_total += vjp(model, xb, w0, a)                       # sum_i J(x_i; w_0)^T a_{i,s}
        w = tr["params"][s + 1].clone() if recorded else (w - eta * gw)
    w_final = w
    with torch.no_grad():
        final = model.forward(XE, w_final)

    results = {}
    if "tangent_per_step" in methods:
        results["tangent_per_step"] = tangent
    if "ntk_init" in methods:
        results["ntk_init"] = f0 + jvp(model, XE, w0, ntk_total)
    if "linearized" in methods:
        with torch.no_grad():
            f0_train = model.forward(X, w0)
        wl = w0.clone()
        for s in range(S):
            idx = batch(s)
            xb, yb = X[idx], Y[idx]
            eta = float(tr["rates"][s])
            fb = f0_train[idx] + jvp(model, xb, w0, wl - w0)         # f_lin(x_B; w)
            g = vjp(model, xb, w0, dloss_df(fb, yb))                 # J(x_B; w_0)^T dL/df
            wl = wl - eta * g
        results["linearized"] = f0 + jvp(model, XE, w0, wl - w0)

    out = {
        "methods": {name: {"reconstruction": rec.tolist(),
                           "error_max_abs": float((rec - final).abs().max()) if rec.numel() else 0.0}
                    for name, rec in results.items()},
        "outputs_final": final.tolist(),
        "path": "recorded" if recorded else "replayed",
        "steps": S,
        "test_points": tr["x_eval_source"],
        "jvp": JVP_NAME,
        "seconds": time.time() - t_start,
    }
    text = json.dumps(out, indent=1)
    if opt.out:
        with open(opt.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
