#!/usr/bin/env python3
"""Worked example: a naive path kernel, and how `epk check` catches it.

A network trained by SGD is a kernel machine,

    f(x; w_S) = f(x; w_0) + sum_s sum_i K_s(x, x_i) a_{i,s},
    K_s(x, x') = int_0^1 J(x; w_s + t dw_s) dt  J(x'; w_s)^T,   a_{i,s} = -eta_s dL_s/df(x_i; w_s),

with dw_s = w_{s+1} - w_s. The obvious way to compute K_s is a fixed
quadrature rule in t, here n-point Gauss-Legendre on [0, 1] (--nodes, default
4). On a ReLU net that is wrong: J jumps wherever an activation changes sign
along the step, and a rule that does not look for those kinks misses the
integral in the 2nd-3rd digit; more nodes shrink that error only slowly.

This script
  1. trains a 4-16-16-3 ReLU MLP with torch.optim.SGD (float64, lr 1.0, 20
     full-batch steps, cross-entropy mean, 32 training and 4 test points of
     synthetic Gaussian blobs, seed 0) and writes the run as an epk trace
     (docs/trace-format.md; params.npy is the recorded path);
  2. computes the naive kernel and writes it in the shapes `epk kernel`
     writes: bias, outputs_final, coefficients, contributions, reconstruction
     (= bias + sum_i contributions) and kernel_step_<s> for two steps;
  3. runs `epk verify` (the exact kernel reconstructs f(x; w_S) to ~1e-15),
     `epk check --against` the naive arrays (exit 1: the kernel-dependent
     arrays are off by 1e-4..1e-2 relative; bias, outputs, coefficients agree),
     and, as the sanity case, `epk kernel` + `epk check` against epk's own
     arrays (exit 0).
It exits 0 if all three behave so, else 1.

Usage: [EPK=BIN] [KEEP=1] examples/naive_kernel_example.sh [--nodes N]
       /usr/bin/python3 examples/naive_kernel_example.py [--epk BIN] [--nodes N] [--out DIR | --keep]
Requires NumPy and PyTorch; reuses examples/pytorch_trace.py (model, writer)
and examples/epk_trace.py (trace reader, model as a function of a flat w).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from epk_trace import Trace  # noqa: E402
from pytorch_trace import build, flat, save  # noqa: E402

KERNEL_STEPS = (0, 10)


def train_and_write_trace(trace_dir, seed=0, n_train=32, n_test=4, dim=4, classes=3, steps=20, lr=1.0):
    """SGD on a ReLU MLP in float64 torch; the run written as an epk trace."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    centres = rng.normal(0.0, 1.5, size=(classes, dim))
    labels = rng.integers(0, classes, size=n_train + n_test)
    x = centres[labels] + rng.normal(0.0, 1.0, size=(n_train + n_test, dim))
    arch = argparse.Namespace(hidden=[16, 16], activation="relu", negative_slope=0.01, no_bias=False)
    model, model_manifest = build(arch, dim, classes, torch.float64)
    X, Y = torch.from_numpy(x[:n_train]), torch.from_numpy(labels[:n_train].astype(np.int64))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    rows = [flat(model)]
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X), Y, reduction="mean").backward()
        opt.step()
        rows.append(flat(model))
    os.makedirs(trace_dir)
    manifest = {"format": "epk-trace", "version": 1, "model": model_manifest,
                "loss": {"type": "cross_entropy", "reduction": "mean"},
                "optimizer": {"type": "sgd", "learning_rate": lr, "steps": steps}}
    with open(os.path.join(trace_dir, "manifest.json"), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2)
    save(os.path.join(trace_dir, "x_train.npy"), x[:n_train])
    save(os.path.join(trace_dir, "y_train.npy"), labels[:n_train].astype(np.int64))
    save(os.path.join(trace_dir, "x_test.npy"), x[n_train:])
    save(os.path.join(trace_dir, "params.npy"), np.stack(rows))


def naive_kernel(trace_dir, out_dir, nodes):
    """K_s by an n-node Gauss-Legendre rule along each step, no breakpoints."""
    tr = Trace(trace_dir)                        # any reader of the format would do
    model, X, XE = tr.model, tr.x_train, tr.x_eval
    M, N, C, S = XE.shape[0], tr.N, model.C, tr.S
    jac = lambda x, w: torch.autograd.functional.jacobian(  # J(x; w) = df/dw: [rows, C, P]
        lambda v: model.forward(x, v), w, vectorize=True)
    xi, om = np.polynomial.legendre.leggauss(nodes)
    ts, ws = (xi + 1.0) / 2.0, om / 2.0          # the rule mapped to [0, 1]
    bias = model.outputs(XE, tr.params[0])
    coefficients = torch.zeros((S, N, C), dtype=torch.float64)
    contributions = torch.zeros((M, N, C), dtype=torch.float64)
    for s in range(S):
        w, dw = tr.params[s], tr.params[s + 1] - tr.params[s]
        idx = tr.batch(s)
        a = -tr.rate(s) * tr.dloss_df(model.outputs(X[idx], w), tr.y_train[idx])   # a_{i,s}: [B, C]
        J_train = jac(X[idx], w)                                                    # [B, C, P]
        J_bar = sum(float(wq) * jac(XE, w + float(tq) * dw) for tq, wq in zip(ts, ws))  # [M, C, P]
        K = torch.einsum("mcp,idp->micd", J_bar, J_train)                           # [M, B, C, C]
        coefficients[s, idx] = a
        contributions[:, idx] += torch.einsum("micd,id->mic", K, a)
        if s in KERNEL_STEPS:
            K_full = torch.zeros((M, N, C, C), dtype=torch.float64)
            K_full[:, idx] = K
            save(os.path.join(out_dir, "kernel_step_%d.npy" % s), K_full.numpy())
    final = model.outputs(XE, tr.params[S])
    reconstruction = bias + contributions.sum(dim=1)   # the kernel machine
    for name, arr in (("bias", bias), ("outputs_final", final), ("coefficients", coefficients),
                      ("contributions", contributions), ("reconstruction", reconstruction)):
        save(os.path.join(out_dir, name + ".npy"), arr.numpy())
    return final.numpy(), reconstruction.numpy()


def run(epk, args, cwd, explanation):
    """Run `epk ARGS` in cwd, print it with its output, return its exit status."""
    print("\n$ epk " + " ".join(args) + "\n# " + explanation)
    proc = subprocess.run([epk] + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    print("\n".join("    " + line for line in proc.stdout.rstrip("\n").split("\n")))
    if proc.returncode not in (0, 1):  # 2 bad input, 3 internal error: show why
        print(proc.stderr.rstrip("\n"), file=sys.stderr)
    print("  -> exit %d" % proc.returncode)
    return proc.returncode


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="working directory, new or empty (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the temporary working directory")
    p.add_argument("--nodes", type=int, default=4, help="Gauss-Legendre nodes per step of the naive rule")
    p.add_argument("--epk", default=os.environ.get("EPK", "./build/epk"), help="the epk binary")
    opt = p.parse_args(argv)
    if opt.nodes < 1:
        p.error("--nodes must be >= 1")
    if opt.out and os.path.isdir(opt.out) and os.listdir(opt.out):
        p.error("--out %s is not empty" % opt.out)
    if not (os.path.isfile(opt.epk) and os.access(opt.epk, os.X_OK)):
        p.error("epk binary %s not found (build it, or pass --epk / set EPK)" % opt.epk)
    torch.set_num_threads(1)
    t0 = time.time()
    work = opt.out or tempfile.mkdtemp(prefix="epk-naive.")
    trace, naive, exact = (os.path.join(work, d) for d in ("trace", "naive", "epk"))
    steps = ",".join(str(s) for s in KERNEL_STEPS)
    epk = os.path.abspath(opt.epk)
    try:
        train_and_write_trace(trace)
        os.makedirs(naive)
        final, recon = naive_kernel(trace, naive, opt.nodes)
        miss = np.abs(recon - final).max()
        print("working directory %s" % work)
        print("trace/  a 4-16-16-3 ReLU MLP trained by torch.optim.SGD (20 full-batch steps, lr 1.0)")
        print("naive/  its kernel by %d Gauss-Legendre nodes per step, no breakpoints; that kernel machine\n"
              "        f(x; w_0) + sum_i c(x, x_i) misses f(x; w_S) by %.3e (%.2e of max|f| = %.3f)"
              % (opt.nodes, miss, miss / np.abs(final).max(), np.abs(final).max()))
        print("epk     %s" % epk)
        rc_verify = run(epk, ["verify", "trace"], work,
                        "epk's exact kernel reconstructs f(x; w_S) to rounding (expect exit 0, ~1e-15)")
        rc_naive = run(epk, ["check", "trace", "--against", "naive"], work,
                       "the naive arrays against epk's exact kernel (expect exit 1: the kernel-dependent "
                       "arrays are off, bias/outputs/coefficients agree)")
        rc_kernel = run(epk, ["kernel", "trace", "--out", "epk", "--steps", steps], work,
                        "epk writes its own exact arrays, the same files and shapes")
        rc_exact = run(epk, ["check", "trace", "--against", "epk"], work,
                       "sanity case: epk's own arrays pass the check (expect exit 0)")
        if rc_kernel == 0:
            e = {n: np.load(os.path.join(exact, n + ".npy")) for n in ("bias", "contributions", "outputs_final")}
            exact_miss = np.abs(e["bias"] + e["contributions"].sum(axis=1) - e["outputs_final"]).max()
            print("\nmax |kernel machine - f(x; w_S)|: naive (%d nodes) %.3e, epk's exact kernel %.3e"
                  % (opt.nodes, miss, exact_miss))
        ok = rc_verify == 0 and rc_naive == 1 and rc_kernel == 0 and rc_exact == 0
        print("%s: verify exit %d (want 0), check naive exit %d (want 1), kernel exit %d, check epk exit %d "
              "(want 0); %.1f s" % ("OK" if ok else "UNEXPECTED", rc_verify, rc_naive, rc_kernel, rc_exact,
                                    time.time() - t0))
        return 0 if ok else 1
    finally:
        if opt.out is None and not opt.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif opt.out is None:
            print("kept %s" % work)


if __name__ == "__main__":
    sys.exit(main())
