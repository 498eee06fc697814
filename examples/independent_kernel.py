#!/usr/bin/env python3
"""Independent float64 computation of the exact path kernel of an epk trace.

This script does NOT use epk. Given a trace directory (docs/trace-format.md, as
written by examples/pytorch_trace.py) it recomputes, in float64 with PyTorch:

  * the per-step kernels, for the steps listed with --steps,
        K_s(x_m, x_i) = int_0^1 J(x_m; w_s + t (w_{s+1} - w_s)) dt  J(x_i; w_s)^T    [M, N, C, C]
    (zero for training points i that are not in the batch of step s);
  * the per-training-point contributions
        c(x_m, x_i) = sum_s K_s(x_m, x_i) a_{i,s},   a_{i,s} = -eta_s dL_s/df(x_i; w_s)   [M, N, C]
    (dL_s/df is taken by autograd through torch's own cross_entropy / mse_loss
    with the trace's reduction, so rho = 1/|B|, 1/(|B| C) or 1 comes from torch);
  * the bias f(x_m; w_0), the remainder term sum_s int J dt . r_s with
    r_s = w_{s+1} - w_s - sum_i J(x_i; w_s)^T a_{i,s} (zero up to rounding for a
    replayed path), and f(x_m; w_S).

Test points are x_test.npy if present, else the first min(10, N) training rows.
The path is params.npy (recorded) if present, else SGD replayed from
init_params.npy in float64 torch. Reading the trace, the model, the loss and the
path are examples/epk_trace.py's (shared with examples/independent_compare.py).

The integral over t:
  * relu / leaky_relu networks: the activation pattern (sign of every hidden
    pre-activation feeding a kink) of each test point is sampled at
    --kink-grid + 1 equally spaced t in [0, 1] with batched torch forward
    passes; every unit whose sign differs between neighbouring samples is
    bisected (on that unit's own pre-activation, which is continuous in t) to
    an interval of width <= --bisect-tol. Between consecutive breakpoints J is
    a polynomial in t of degree <= L - 1 (L linear layers), integrated exactly
    by a --gl-nodes point Gauss-Legendre rule. As a guard against two crossings
    hiding between neighbouring samples, the pattern at every node of a piece
    must agree; a piece where it does not is re-sampled densely (and that is
    reported).
  * identity networks: J is a polynomial of degree <= L - 1; one GL rule.
  * smooth activations (tanh, sigmoid, softplus, gelu): composite
    Gauss-Legendre, --smooth-subintervals x --smooth-nodes.
Jacobians J(x; w) = df/dw come from torch autograd (one backward pass per
output over a batch of independent parameter rows). softplus is evaluated as
logaddexp(z, 0), i.e. exactly log(1 + e^z) as the trace format prescribes.

Self-check (independent of epk): for every step and test point the fundamental
theorem of calculus requires int J dt . (w_{s+1} - w_s) = f(x; w_{s+1}) - f(x; w_s);
the largest violation is reported as ftc_max_abs, and the reconstruction
bias + sum_i c + remainder - f(x; w_S) as reconstruction_max_abs.

Outputs, in --out (created; existing files of the same names are replaced):
  kernel_step_<s>.npy [M,N,C,C], contributions.npy [M,N,C], bias.npy [M,C],
  remainder.npy [M,C], outputs_final.npy [M,C], summary.json.

Requires Python 3, NumPy and PyTorch (Debian: /usr/bin/python3 with python3-torch),
and examples/epk_trace.py beside this script.

Example:
    /usr/bin/python3 examples/pytorch_trace.py --out /tmp/t --activation relu --hidden 16,16 --steps 20
    /usr/bin/python3 examples/independent_kernel.py /tmp/t --out /tmp/t-indep --steps 0,10,19
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from epk_trace import DT, KINK_ACTIVATIONS, Model, Trace  # noqa: E402  (examples/epk_trace.py)


# ------------------------------------------------------------------ the model

class KernelModel(Model):
    """epk_trace.Model plus what the kernel integral needs: the kinked
    pre-activations along a segment, and per-row Jacobians."""

    def __init__(self, manifest):
        super().__init__(manifest)
        if self.has_kinks and self.smooth:
            raise ValueError("mixed kinked and smooth activations are not supported by this checker")

    def preacts_grid(self, x, w0, dw, ts):
        """Kinked pre-activations at points x [M, D] for parameters w0 + t dw,
        t in ts [T]: returns [T, M, U] (weights shared over the M points)."""
        T = ts.shape[0]
        h = x.unsqueeze(0).expand(T, -1, -1)
        pre = []
        for op in self.ops:
            if op[0] == "linear":
                _, w_off, out, inp, b_off = op
                W = (w0[w_off:w_off + out * inp].unsqueeze(0)
                     + ts[:, None] * dw[w_off:w_off + out * inp].unsqueeze(0)).reshape(T, out, inp)
                h = torch.einsum("toi,tmi->tmo", W, h)
                if b_off is not None:
                    b = w0[b_off:b_off + out].unsqueeze(0) + ts[:, None] * dw[b_off:b_off + out].unsqueeze(0)
                    h = h + b[:, None, :]
            else:
                _, name, slope = op
                if name in KINK_ACTIVATIONS:
                    pre.append(h)
                h = self._act(name, slope, h)
        return torch.cat(pre, dim=2)

    def jacobian_rows(self, x, w):
        """J(x[b]; w[b]) for every row: [B, C, P] (one backward pass per output;
        the leaves are the per-layer weight and bias rows, so the gradient of
        row b's output lands in row b only)."""
        layers = [(W.detach().clone().requires_grad_(True),
                   None if b is None else b.detach().clone().requires_grad_(True))
                  for W, b in self.unpack(w.detach())]
        leaves = [t for W, b in layers for t in ((W,) if b is None else (W, b))]
        B = x.shape[0]
        with torch.enable_grad():
            f = self.forward_layers(x, layers)
            rows = []
            for c in range(self.C):
                grads = torch.autograd.grad(f[:, c].sum(), leaves, retain_graph=c + 1 < self.C)
                rows.append(torch.cat([g.reshape(B, -1) for g in grads], dim=1))  # parameters_to_vector order
        return torch.stack(rows, dim=1)


# ------------------------------------------------------------------ the steps to write

def parse_steps(text, S):
    if text == "all":
        return list(range(S))
    if text == "" or text == "none":
        return []
    out = []
    for item in text.split(","):
        if "-" in item:
            lo, hi = (int(v) for v in item.split("-"))
            out.extend(range(lo, hi + 1))
        else:
            out.append(int(item))
    for s in out:
        if not 0 <= s < S:
            raise ValueError("step %d out of range [0, %d)" % (s, S))
    return out


# ------------------------------------------------------------------ quadrature

def gauss_legendre(n):
    xi, om = np.polynomial.legendre.leggauss(n)
    return torch.from_numpy(xi), torch.from_numpy(om)


def map_rule(a, b, xi, om):
    """Nodes and weights of the rule on [a, b]."""
    h = 0.5 * (b - a)
    return a + h * (xi + 1.0), h * om


def bisect_rows(model, x_rows, units, lo, hi, w0, dw, tol, max_iter=200):
    """For each row r, the sign of pre-activation `units[r]` of x_rows[r]
    differs at lo[r] and hi[r]; shrink [lo, hi] to width <= tol. Returns midpoints."""
    def positive(t):
        w = w0.unsqueeze(0) + t[:, None] * dw.unsqueeze(0)
        _, pre = model.forward(x_rows, w, want_pre=True)
        return pre.gather(1, units[:, None]).squeeze(1) > 0
    p_lo = positive(lo)
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        # width <= tol, or lo and hi adjacent doubles (mid rounds to one of them): done
        active = ((hi - lo) > tol) & (mid != lo) & (mid != hi)
        if not bool(active.any()):
            break
        p_mid = positive(mid)
        same = p_mid == p_lo
        lo = torch.where(active & same, mid, lo)
        hi = torch.where(active & ~same, mid, hi)
    return 0.5 * (lo + hi)


def find_breakpoints(model, x, w0, dw, a, b, grid, tol):
    """Breakpoints in (a, b) of the activation pattern of each point x[m] along
    w0 + t dw. Returns a list (per point) of sorted float tensors."""
    M = x.shape[0]
    ts = torch.linspace(a, b, grid + 1, dtype=DT)
    ts[0], ts[-1] = a, b
    pre = model.preacts_grid(x, w0, dw, ts)            # [T, M, U]
    pos = pre > 0
    k, m, u = torch.nonzero(pos[1:] != pos[:-1], as_tuple=True)
    out = [[] for _ in range(M)]
    if k.numel() == 0:
        return [torch.zeros(0, dtype=DT) for _ in range(M)]
    roots = bisect_rows(model, x[m], u, ts[k].clone(), ts[k + 1].clone(), w0, dw, tol)
    for mi in range(M):
        sel = roots[m == mi]
        out[mi] = torch.sort(sel).values
    return out


def segment_integral(model, x, w0, dw, opt, stats):
    """int_0^1 J(x[m]; w0 + t dw) dt for every point: [M, C, P]."""
    M = x.shape[0]
    if model.has_kinks:
        xi, om = gauss_legendre(opt.gl_nodes)
        bps = find_breakpoints(model, x, w0, dw, 0.0, 1.0, opt.kink_grid, opt.bisect_tol)
        pieces = []   # per point: list of (a, b)
        for mi in range(M):
            edges = [0.0] + [float(v) for v in bps[mi]] + [1.0]
            pieces.append([(edges[j], edges[j + 1]) for j in range(len(edges) - 1)])
        # Guard: the pattern must be constant over the nodes of each piece; if
        # not, a pair of crossings hid between two samples -- resample that piece.
        for _round in range(5):
            bad = []
            rows_x, rows_t, owner = [], [], []
            for mi in range(M):
                for pj, (pa, pb) in enumerate(pieces[mi]):
                    tn, _ = map_rule(pa, pb, xi, om)
                    rows_t.append(tn)
                    rows_x.append(x[mi].expand(tn.shape[0], -1))
                    owner.extend([(mi, pj)] * tn.shape[0])
            tt = torch.cat(rows_t)
            _, pre = model.forward(torch.cat(rows_x), w0.unsqueeze(0) + tt[:, None] * dw.unsqueeze(0),
                                        want_pre=True)
            pos = pre > 0
            n = opt.gl_nodes
            pos = pos.reshape(-1, n, pos.shape[1])
            varies = (pos != pos[:, :1, :]).any(dim=2).any(dim=1)
            for r in torch.nonzero(varies).flatten().tolist():
                bad.append(owner[r * n])
            if not bad:
                break
            if _round == 4:
                stats["unresolved_pieces"] += len(set(bad))
                break
            stats["refined_pieces"] += len(bad)
            for mi, pj in sorted(set(bad), reverse=True):
                pa, pb = pieces[mi][pj]
                sub = find_breakpoints(model, x[mi:mi + 1], w0, dw, pa, pb, opt.kink_grid, opt.bisect_tol)[0]
                edges = [pa] + [float(v) for v in sub if pa < float(v) < pb] + [pb]
                pieces[mi][pj:pj + 1] = [(edges[j], edges[j + 1]) for j in range(len(edges) - 1)]
        for mi in range(M):
            stats["breakpoints"][mi] += len(pieces[mi]) - 1
        rule = []
        for mi in range(M):
            ts, ws = zip(*(map_rule(pa, pb, xi, om) for pa, pb in pieces[mi]))
            rule.append((torch.cat(ts), torch.cat(ws)))
    elif model.smooth:
        xi, om = gauss_legendre(opt.smooth_nodes)
        k = opt.smooth_subintervals
        ts, ws = zip(*(map_rule(j / k, (j + 1) / k, xi, om) for j in range(k)))
        one = (torch.cat(ts), torch.cat(ws))
        rule = [one] * M
    else:  # identity / no hidden layer: a polynomial of degree <= L - 1
        xi, om = gauss_legendre(max(opt.gl_nodes, model.n_linear))
        rule = [map_rule(0.0, 1.0, xi, om)] * M

    counts = [r[0].shape[0] for r in rule]
    tt = torch.cat([r[0] for r in rule])
    ww = torch.cat([r[1] for r in rule])
    xx = torch.cat([x[mi].expand(counts[mi], -1) for mi in range(M)])
    stats["jacobian_evaluations"] += int(tt.shape[0])
    out = torch.zeros((M, model.C, model.P), dtype=DT)
    start = 0
    chunk = max(1, opt.chunk_rows)
    J_all = []
    for c0 in range(0, tt.shape[0], chunk):
        tc = tt[c0:c0 + chunk]
        J_all.append(model.jacobian_rows(xx[c0:c0 + chunk], w0.unsqueeze(0) + tc[:, None] * dw.unsqueeze(0)))
    J = torch.cat(J_all)
    for mi in range(M):
        n = counts[mi]
        out[mi] = torch.einsum("q,qcp->cp", ww[start:start + n], J[start:start + n])
        start += n
    return out


# ------------------------------------------------------------------ main

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("trace", help="trace directory")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--steps", default="", help="steps whose kernels to write: '0,5,10-12', 'all' or ''")
    p.add_argument("--kink-grid", type=int, default=2000, help="samples of the activation pattern per segment")
    p.add_argument("--bisect-tol", type=float, default=0.0,
                   help="bisection stops at this interval width (0: at adjacent doubles)")
    p.add_argument("--gl-nodes", type=int, default=8, help="Gauss-Legendre nodes per piece (kinked / identity nets)")
    p.add_argument("--smooth-subintervals", type=int, default=8, help="composite GL subintervals (smooth nets)")
    p.add_argument("--smooth-nodes", type=int, default=16, help="GL nodes per subinterval (smooth nets)")
    p.add_argument("--chunk-rows", type=int, default=4096, help="Jacobian rows per autograd batch")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    opt = p.parse_args(argv)
    torch.set_num_threads(opt.threads)
    t_start = time.time()

    tr = Trace(opt.trace, KernelModel)
    model = tr.model
    S, N = tr.S, tr.N
    X, Y, XE = tr.x_train, tr.y_train, tr.x_eval
    M, C, P = XE.shape[0], model.C, model.P
    kernel_steps = set(parse_steps(opt.steps, S))

    w = tr.w0()
    bias = model.outputs(XE, w)
    contributions = torch.zeros((M, N, C), dtype=DT)
    remainder = torch.zeros((M, C), dtype=DT)
    kernels = {}
    stats = {"breakpoints": [0] * M, "refined_pieces": 0, "unresolved_pieces": 0, "jacobian_evaluations": 0}
    ftc_max = 0.0
    remainder_step_max = 0.0

    for s in range(S):
        idx = tr.batch(s)
        xb, yb = X[idx], Y[idx]
        nb = xb.shape[0]
        eta = tr.rate(s)
        # training side: J(x_i; w_s) and a_{i,s} = -eta dL/df_i
        Jtr = model.jacobian_rows(xb, w.unsqueeze(0).expand(nb, -1))           # [nb, C, P]
        a = -eta * tr.dloss_df(model.outputs(xb, w), yb)                       # [nb, C]
        # the path
        w_next = tr.next_params(s, w)
        dw = w_next - w
        r = dw - torch.einsum("icp,ic->p", Jtr, a)
        remainder_step_max = max(remainder_step_max, float(r.abs().max()))
        # test side: int_0^1 J(x_m; w_s(t)) dt
        Jint = segment_integral(model, XE, w, dw, opt, stats)                  # [M, C, P]
        ftc = torch.einsum("mcp,p->mc", Jint, dw) - (model.outputs(XE, w_next) - model.outputs(XE, w))
        ftc_max = max(ftc_max, float(ftc.abs().max()))
        Kb = torch.einsum("mcp,idp->micd", Jint, Jtr)                         # [M, nb, C, C]
        contributions[:, idx, :] += torch.einsum("micd,id->mic", Kb, a)
        remainder += torch.einsum("mcp,p->mc", Jint, r)
        if s in kernel_steps:
            K = torch.zeros((M, N, C, C), dtype=DT)
            K[:, idx] = Kb
            kernels[s] = K
        w = w_next

    final = model.outputs(XE, w)
    recon = bias + contributions.sum(dim=1) + remainder
    recon_err = float((recon - final).abs().max())

    os.makedirs(opt.out, exist_ok=True)
    save = lambda name, arr: np.save(os.path.join(opt.out, name), np.ascontiguousarray(arr.numpy()), allow_pickle=False)
    save("bias.npy", bias)
    save("contributions.npy", contributions)
    save("remainder.npy", remainder)
    save("outputs_final.npy", final)
    for s, K in kernels.items():
        save("kernel_step_%d.npy" % s, K)
    summary = {
        "trace": opt.trace, "path": tr.path, "steps": S,
        "test_points": M, "train_points": N, "outputs": C, "parameters": P,
        "method": ("piecewise Gauss-Legendre (%d nodes) between bisected pattern changes, grid %d, tol %g"
                   % (opt.gl_nodes, opt.kink_grid, opt.bisect_tol)) if model.has_kinks else
                  ("composite Gauss-Legendre %d x %d" % (opt.smooth_subintervals, opt.smooth_nodes))
                  if model.smooth else "Gauss-Legendre (polynomial integrand)",
        "breakpoints": stats["breakpoints"], "breakpoints_total": int(sum(stats["breakpoints"])),
        "refined_pieces": stats["refined_pieces"], "unresolved_pieces": stats["unresolved_pieces"],
        "jacobian_evaluations": stats["jacobian_evaluations"],
        "ftc_max_abs": ftc_max, "reconstruction_max_abs": recon_err,
        "step_remainder_max_abs": remainder_step_max,
        "kernel_steps": sorted(kernels), "seconds": time.time() - t_start,
    }
    with open(os.path.join(opt.out, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
        fh.write("\n")
    print("independent kernel of %s (%s path, %d steps, M=%d N=%d C=%d P=%d): %s; breakpoints %d; "
          "ftc max %.3e; reconstruction max %.3e; %.2f s"
          % (opt.trace, summary["path"], S, M, N, C, P, summary["method"], summary["breakpoints_total"],
             ftc_max, recon_err, summary["seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
