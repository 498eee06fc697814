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

Reading the trace, the model, the loss and the path are examples/epk_trace.py's
(shared with examples/independent_kernel.py).

Also reported: outputs_final = f(X; w_S) and each method's error
max |reconstruction - outputs_final| (computed here, independently of epk).

Output: JSON on stdout (and in --out FILE if given), shaped like epk's:
  {"methods": {name: {"reconstruction": [[...C...] x M], "error_max_abs": e}},
   "outputs_final": [[...]], "path": "recorded"|"replayed", "steps": S, ...}

Requires Python 3, NumPy and PyTorch (Debian: /usr/bin/python3 with python3-torch),
and examples/epk_trace.py beside this script.

Example:
    /usr/bin/python3 examples/pytorch_trace.py --out /tmp/t --activation tanh --hidden 16,16 --steps 20
    /usr/bin/python3 examples/independent_compare.py /tmp/t --out /tmp/t-compare.json
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from epk_trace import DT, Trace  # noqa: E402  (examples/epk_trace.py)

METHODS = ("tangent_per_step", "ntk_init", "linearized")


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

    tr = Trace(opt.trace)
    model = tr.model
    S = tr.S
    X, Y, XE = tr.x_train, tr.y_train, tr.x_eval
    P = model.P

    w0 = tr.w0()
    f0 = model.outputs(XE, w0)

    # One pass along the true path: tangent_per_step and ntk_init's sum.
    tangent = f0.clone()
    ntk_total = torch.zeros(P, dtype=DT)
    w = w0.clone()
    for s in range(S):
        idx = tr.batch(s)
        xb, yb = X[idx], Y[idx]
        eta = tr.rate(s)
        gw = tr.loss_grad_w(xb, yb, w)                               # grad L_s(w_s)
        if "tangent_per_step" in methods:
            tangent += jvp(model, XE, w, -eta * gw)                  # J(X; w_s) (-eta_s grad L_s(w_s))
        if "ntk_init" in methods:
            a = -eta * tr.dloss_df(model.outputs(xb, w), yb)         # a_{i,s}, true path
            ntk_total += vjp(model, xb, w0, a)                       # sum_i J(x_i; w_0)^T a_{i,s}
        w = tr.next_params(s, w, gw)
    final = model.outputs(XE, w)

    results = {}
    if "tangent_per_step" in methods:
        results["tangent_per_step"] = tangent
    if "ntk_init" in methods:
        results["ntk_init"] = f0 + jvp(model, XE, w0, ntk_total)
    if "linearized" in methods:
        f0_train = model.outputs(X, w0)
        wl = w0.clone()
        for s in range(S):
            idx = tr.batch(s)
            xb, yb = X[idx], Y[idx]
            fb = f0_train[idx] + jvp(model, xb, w0, wl - w0)         # f_lin(x_B; w)
            g = vjp(model, xb, w0, tr.dloss_df(fb, yb))              # J(x_B; w_0)^T dL/df
            wl = wl - tr.rate(s) * g
        results["linearized"] = f0 + jvp(model, XE, w0, wl - w0)

    out = {
        "methods": {name: {"reconstruction": rec.tolist(),
                           "error_max_abs": float((rec - final).abs().max()) if rec.numel() else 0.0}
                    for name, rec in results.items()},
        "outputs_final": final.tolist(),
        "path": tr.path,
        "steps": S,
        "test_points": tr.x_eval_source,
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
