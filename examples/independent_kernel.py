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

Version 3 traces (conv2d, max_pool2d, avg_pool2d, flatten, layer_norm, residual;
plain SGD only: other optimizers are refused) use the torch modules that
examples/pytorch_trace.py builds from the manifest's layers (read_layers,
torch_sequential; nn.Softplus replaced by the exact log(1 + e^z)), in float64, as
functions of the flat parameter vector (functional_call), with one parameter
vector per row through functorch.vmap and J = vmap(jacrev(f)). The activation
pattern of a point is recorded by forward hooks: the sign of every ReLU /
LeakyReLU input and, for every MaxPool2d, the argmax of every window
(--pool-pattern argmax, what J depends on) or the order of every pair of entries
of every window (--pool-pattern pairs: the switching functions epk cuts at, so
that the breakpoint counts are comparable). The pattern of the whole network is
sampled at --kink-grid + 1 equally spaced t; every interval whose ends differ is
bisected on the whole pattern vector (each half whose ends differ is kept) to
width <= --bisect-tol or adjacent doubles. Pieces are integrated by a
max(--gl-nodes, number of linear and conv2d modules)-point Gauss-Legendre rule
(piecewise-linear nets), composite Gauss-Legendre --smooth-subintervals x
--smooth-nodes (smooth nets: tanh, sigmoid, softplus, gelu, layer_norm), or that
composite rule on every piece (both), with the same guard as above.

Self-check (independent of epk): for every step and test point the fundamental
theorem of calculus requires int J dt . (w_{s+1} - w_s) = f(x; w_{s+1}) - f(x; w_s);
the largest violation is reported as ftc_max_abs, and the reconstruction
bias + sum_i c + remainder - f(x; w_S) as reconstruction_max_abs.

Outputs, in --out (created; existing files of the same names are replaced):
  kernel_step_<s>.npy [M,N,C,C], contributions.npy [M,N,C], bias.npy [M,C],
  remainder.npy [M,C], outputs_final.npy [M,C], summary.json.

Requires Python 3, NumPy and PyTorch (Debian: /usr/bin/python3 with python3-torch),
and examples/epk_trace.py beside this script; for version 3 traces also functorch
(part of python3-torch 1.13) and examples/pytorch_trace.py beside this script.

Example:
    /usr/bin/python3 examples/pytorch_trace.py --out /tmp/t --activation relu --hidden 16,16 --steps 20
    /usr/bin/python3 examples/independent_kernel.py /tmp/t --out /tmp/t-indep --steps 0,10,19
    /usr/bin/python3 examples/pytorch_trace.py --out /tmp/c --model examples/models/cnn_relu_maxpool.json \
        --data digits --input-shape 1,8,8 --steps 10 --lr 0.2 --n-train 32 --n-test 4
    /usr/bin/python3 examples/independent_kernel.py /tmp/c --out /tmp/c-indep --steps 0,9
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

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
    if getattr(model, "v3", False):
        return segment_integral_v3(model, x, w0, dw, opt, stats)
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


# ------------------------------------------------------------------ version 3 models (torch modules)

def plain_sgd(optimizer):
    """Whether the manifest's optimizer object is plain SGD: type sgd/SGD, no momentum, no weight decay."""
    return (str(optimizer.get("type", "")).lower() == "sgd" and float(optimizer.get("momentum", 0) or 0) == 0
            and float(optimizer.get("weight_decay", 0) or 0) == 0 and not optimizer.get("maximize", False))


class Unsupported(ValueError):
    """A version 3 trace this script does not handle (an optimizer other than plain SGD)."""


class ExactSoftplus(torch.nn.Module):
    """log(1 + e^z) with no threshold, as the trace format prescribes (nn.Softplus returns z above 20)."""

    def forward(self, z):
        return torch.logaddexp(z, torch.zeros_like(z))


class TorchKernelModel:
    """A trace format version 3 model (conv2d, pools, layer norm, residual, ...): the torch module
    examples/pytorch_trace.py builds from the manifest's layers (read_layers, torch_sequential), in
    float64, as a function of the flat parameter vector w in parameters_to_vector order. Per-row
    parameters (one w per input row) go through functorch.vmap; the Jacobians are
    vmap(jacrev(f)). The activation pattern of a row is recorded by forward hooks: the sign of
    every ReLU / LeakyReLU input, and for every MaxPool2d either the argmax of every window
    (pool_pattern "argmax": what J depends on) or the order of every pair of entries in every
    window (pool_pattern "pairs": the switching functions h_p - h_q epk cuts at, which makes
    the breakpoint counts comparable)."""

    v3 = True
    SWITCHING = (torch.nn.ReLU, torch.nn.LeakyReLU, torch.nn.MaxPool2d)
    SMOOTH = (torch.nn.Tanh, torch.nn.Sigmoid, ExactSoftplus, torch.nn.Softplus, torch.nn.GELU, torch.nn.LayerNorm)

    def __init__(self, manifest, pool_pattern="argmax"):
        from pytorch_trace import read_layers, torch_sequential  # examples/pytorch_trace.py (its builder)
        import functorch
        from torch.nn.utils.stateless import functional_call
        self._vmap, self._jacrev, self._call = functorch.vmap, functorch.jacrev, functional_call
        if not plain_sgd(manifest["optimizer"]):
            raise Unsupported("only plain SGD is supported for version 3 traces (optimizer %s)"
                              % json.dumps(manifest["optimizer"]))
        m = manifest["model"]
        self.input_shape = [int(v) for v in m["input_shape"]] if "input_shape" in m else [int(m["input_dim"])]
        layers, out_shape = read_layers(m["layers"], "model.layers", self.input_shape)
        if len(out_shape) != 1:
            raise ValueError("the model's output is %s, not a vector" % out_shape)
        net = torch_sequential(layers, self.input_shape).to(DT)
        self._exact_softplus(net)
        net.eval()
        self.net = net
        self.names = [n for n, _ in net.named_parameters()]
        self.shapes = [tuple(p.shape) for _, p in net.named_parameters()]
        self.P = sum(int(np.prod(s)) for s in self.shapes)
        self.C = int(out_shape[0])
        mods = list(net.modules())
        self.has_kinks = any(isinstance(q, self.SWITCHING) for q in mods)
        self.smooth = any(isinstance(q, self.SMOOTH) for q in mods)
        # bilinear modules: J is a polynomial in t of degree < this on a piece of a piecewise-linear net
        self.n_linear = sum(isinstance(q, (torch.nn.Linear, torch.nn.Conv2d)) for q in mods)
        self.pool_pattern = pool_pattern
        self._stash = []
        for q in mods:
            if isinstance(q, self.SWITCHING):
                q.register_forward_hook(self._hook)

    @staticmethod
    def _exact_softplus(module):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.Softplus):
                setattr(module, name, ExactSoftplus())
            else:
                TorchKernelModel._exact_softplus(child)

    def _hook(self, mod, inp, out):
        h = inp[0]
        if not isinstance(mod, torch.nn.MaxPool2d):
            self._stash.append((h > 0).reshape(h.shape[0], -1).to(torch.int64))
            return
        two = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
        k, s, p, d = two(mod.kernel_size), two(mod.stride), two(mod.padding), two(mod.dilation)
        if self.pool_pattern == "argmax":  # torch's own argmax (first maximal entry of the window)
            _, idx = F.max_pool2d(h, k, s, p, d, return_indices=True)
            self._stash.append(idx.reshape(h.shape[0], -1))
            return
        # every pair of window entries: h_p > h_q (padding -inf, never chosen)
        hp = F.pad(h, (p[1], p[1], p[0], p[0]), value=-math.inf)
        Ho, Wo = out.shape[-2], out.shape[-1]
        ent = [hp[..., ky * d[0]: ky * d[0] + s[0] * (Ho - 1) + 1: s[0],
                  kx * d[1]: kx * d[1] + s[1] * (Wo - 1) + 1: s[1]]
               for ky in range(k[0]) for kx in range(k[1])]
        cmp = [(ent[a] > ent[b]).reshape(h.shape[0], -1) for a in range(len(ent)) for b in range(a + 1, len(ent))]
        self._stash.append(torch.cat(cmp, dim=1).to(torch.int64))

    def unflat(self, w):
        """Flat w [P] -> {name: view} in parameters_to_vector order."""
        out, off = {}, 0
        for n, s in zip(self.names, self.shapes):
            k = int(np.prod(s))
            out[n] = w[off:off + k].view(s)
            off += k
        return out

    def forward(self, x, w):
        """f(x[b]; w) for one flat vector w [P] (differentiable in w)."""
        self._stash.clear()
        f = self._call(self.net, self.unflat(w), (x,))
        self._stash.clear()
        return f

    def outputs(self, x, w):
        """f(x; w) without autograd: [B, C]."""
        with torch.no_grad():
            return self.forward(x, w)

    def _one(self, x, w):
        return self._call(self.net, self.unflat(w), (x.unsqueeze(0),))[0]

    def _pattern_one(self, x, w):
        self._stash.clear()
        self._call(self.net, self.unflat(w), (x.unsqueeze(0),))
        pat = torch.cat([p[0] for p in self._stash]) if self._stash else torch.zeros(0, dtype=torch.int64)
        self._stash.clear()
        return pat

    def rows_per_chunk(self, limit):
        return max(1, min(limit, (1 << 22) // max(1, self.C * self.P)))

    def pattern_rows(self, x, w, chunk=4096):
        """Activation pattern of x[b] at w[b]: [B, Q] int64."""
        with torch.no_grad():
            return torch.cat([self._vmap(self._pattern_one)(x[c:c + chunk], w[c:c + chunk])
                              for c in range(0, x.shape[0], chunk)])

    def jacobian_rows(self, x, w, chunk=4096):
        """J(x[b]; w[b]) for every row: [B, C, P]."""
        chunk = self.rows_per_chunk(chunk)
        jac = self._vmap(self._jacrev(self._one, argnums=1))
        with torch.enable_grad():
            return torch.cat([jac(x[c:c + chunk], w[c:c + chunk]).detach() for c in range(0, x.shape[0], chunk)])


def make_kernel_model(manifest, pool_pattern="argmax"):
    """KernelModel (the MLP of versions 1 and 2) or TorchKernelModel (version 3)."""
    if manifest.get("version") == 3:
        return TorchKernelModel(manifest, pool_pattern)
    return KernelModel(manifest)


def pattern_at(model, x_rows, t_rows, w0, dw):
    return model.pattern_rows(x_rows, w0.unsqueeze(0) + t_rows[:, None] * dw.unsqueeze(0))


def find_breakpoints_v3(model, x, w0, dw, a, b, grid, tol):
    """Breakpoints in (a, b) of the activation pattern of the whole network at each point x[m]
    along w0 + t dw: the pattern is sampled at grid + 1 equally spaced t; every interval where it
    differs is bisected on the whole pattern vector (a half whose ends differ is kept; both halves
    when both do) down to width <= tol or adjacent doubles. Returns a list (per point) of sorted
    float tensors."""
    M = x.shape[0]
    ts = torch.linspace(a, b, grid + 1, dtype=DT)
    ts[0], ts[-1] = a, b
    T = ts.shape[0]
    rows_x = x.repeat((T,) + (1,) * (x.dim() - 1))            # row k*M + m: x[m] at ts[k]
    pat = pattern_at(model, rows_x, ts.repeat_interleave(M), w0, dw).reshape(T, M, -1)
    k, m = torch.nonzero((pat[1:] != pat[:-1]).any(dim=2), as_tuple=True)
    lo, hi = ts[k].clone(), ts[k + 1].clone()
    p_lo, p_hi = pat[k, m], pat[k + 1, m]
    roots = [[] for _ in range(M)]
    for _ in range(400):
        if m.numel() == 0:
            break
        mid = 0.5 * (lo + hi)
        done = ((hi - lo) <= tol) | (mid == lo) | (mid == hi)
        for mi, r in zip(m[done].tolist(), mid[done].tolist()):
            roots[mi].append(r)
        keep = ~done
        m, lo, hi, mid, p_lo, p_hi = m[keep], lo[keep], hi[keep], mid[keep], p_lo[keep], p_hi[keep]
        if m.numel() == 0:
            break
        p_mid = pattern_at(model, x[m], mid, w0, dw)
        left, right = (p_mid != p_lo).any(dim=1), (p_mid != p_hi).any(dim=1)
        m = torch.cat([m[left], m[right]])
        lo, hi = torch.cat([lo[left], mid[right]]), torch.cat([mid[left], hi[right]])
        p_lo, p_hi = torch.cat([p_lo[left], p_mid[right]]), torch.cat([p_mid[left], p_hi[right]])
    else:
        raise RuntimeError("bisection did not terminate")
    return [torch.sort(torch.tensor(r, dtype=DT)).values for r in roots]


def segment_integral_v3(model, x, w0, dw, opt, stats):
    """int_0^1 J(x[m]; w0 + t dw) dt for every point of a version 3 model: [M, C, P].
    Piecewise-linear nets (relu, leaky_relu, max pool; no smooth module): --gl-nodes Gauss-Legendre
    on every piece between pattern changes (J is a polynomial of degree < number of linear/conv
    modules there). Smooth nets: composite Gauss-Legendre, --smooth-subintervals x --smooth-nodes.
    Both (kinks and smooth modules): the composite rule on every piece, ceil(k * length) subintervals."""
    M = x.shape[0]
    xi_k, om_k = gauss_legendre(max(opt.gl_nodes, model.n_linear))
    xi_s, om_s = gauss_legendre(opt.smooth_nodes)
    k_s = opt.smooth_subintervals

    def piece_rule(pa, pb):
        if not model.smooth:
            return map_rule(pa, pb, xi_k, om_k)
        k = k_s if (pa, pb) == (0.0, 1.0) else max(1, math.ceil(k_s * (pb - pa)))
        ts, ws = zip(*(map_rule(pa + (pb - pa) * j / k, pa + (pb - pa) * (j + 1) / k, xi_s, om_s)
                       for j in range(k)))
        return torch.cat(ts), torch.cat(ws)

    pieces = [[(0.0, 1.0)] for _ in range(M)]
    if model.has_kinks:
        bps = find_breakpoints_v3(model, x, w0, dw, 0.0, 1.0, opt.kink_grid, opt.bisect_tol)
        for mi in range(M):
            edges = [0.0] + [float(v) for v in bps[mi]] + [1.0]
            pieces[mi] = [(edges[j], edges[j + 1]) for j in range(len(edges) - 1)]
        # Guard: the pattern must be constant over the nodes of each piece; if not, a pair of
        # changes hid between two samples -- resample that piece densely and bisect again.
        for _round in range(5):
            rows_x, rows_t, owner = [], [], []
            for mi in range(M):
                for pj, (pa, pb) in enumerate(pieces[mi]):
                    tn, _ = piece_rule(pa, pb)
                    rows_t.append(tn)
                    owner.append((mi, pj, tn.shape[0]))
                    rows_x.append(x[mi].expand((tn.shape[0],) + tuple(x.shape[1:])))
            pat = pattern_at(model, torch.cat(rows_x), torch.cat(rows_t), w0, dw)
            bad, start = [], 0
            for mi, pj, n in owner:
                if bool((pat[start:start + n] != pat[start]).any()):
                    bad.append((mi, pj))
                start += n
            if not bad:
                break
            if _round == 4:
                stats["unresolved_pieces"] += len(bad)
                break
            stats["refined_pieces"] += len(bad)
            for mi, pj in sorted(bad, reverse=True):
                pa, pb = pieces[mi][pj]
                sub = find_breakpoints_v3(model, x[mi:mi + 1], w0, dw, pa, pb, opt.kink_grid, opt.bisect_tol)[0]
                edges = [pa] + [float(v) for v in sub if pa < float(v) < pb] + [pb]
                pieces[mi][pj:pj + 1] = [(edges[j], edges[j + 1]) for j in range(len(edges) - 1)]
        for mi in range(M):
            stats["breakpoints"][mi] += len(pieces[mi]) - 1

    rows_x, rows_t, rows_w, rows_m = [], [], [], []
    for mi in range(M):
        for pa, pb in pieces[mi]:
            tn, wn = piece_rule(pa, pb)
            rows_t.append(tn)
            rows_w.append(wn)
            rows_m.append(torch.full((tn.shape[0],), mi, dtype=torch.int64))
            rows_x.append(x[mi].expand((tn.shape[0],) + tuple(x.shape[1:])))
    xx, tt, ww, mm = torch.cat(rows_x), torch.cat(rows_t), torch.cat(rows_w), torch.cat(rows_m)
    stats["jacobian_evaluations"] += int(tt.shape[0])
    out = torch.zeros((M, model.C, model.P), dtype=DT)
    chunk = model.rows_per_chunk(max(1, opt.chunk_rows))
    for c0 in range(0, tt.shape[0], chunk):
        sl = slice(c0, c0 + chunk)
        J = model.jacobian_rows(xx[sl], w0.unsqueeze(0) + tt[sl, None] * dw.unsqueeze(0))
        out.index_add_(0, mm[sl], ww[sl, None, None] * J)
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
    p.add_argument("--pool-pattern", choices=("argmax", "pairs"), default="argmax",
                   help="version 3: a max pool's part of the activation pattern: the argmax of every window, "
                        "or the order of every pair of window entries (epk's switching functions)")
    opt = p.parse_args(argv)
    torch.set_num_threads(opt.threads)
    t_start = time.time()

    try:
        tr = Trace(opt.trace, lambda manifest: make_kernel_model(manifest, opt.pool_pattern))
    except Unsupported as e:
        print("independent_kernel.py: %s: %s" % (opt.trace, e), file=sys.stderr)
        return 2
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
    if getattr(model, "v3", False):
        summary["method"] = "version 3 (torch modules, vmap(jacrev)): " + (
            ("composite Gauss-Legendre %d x %d on every piece between bisected pattern changes (max pool %s), "
             "grid %d, tol %g" % (opt.smooth_subintervals, opt.smooth_nodes, opt.pool_pattern, opt.kink_grid,
                                  opt.bisect_tol)) if model.has_kinks and model.smooth else
            ("piecewise Gauss-Legendre (%d nodes) between bisected pattern changes (max pool %s), grid %d, tol %g"
             % (max(opt.gl_nodes, model.n_linear), opt.pool_pattern, opt.kink_grid, opt.bisect_tol))
            if model.has_kinks else
            ("composite Gauss-Legendre %d x %d" % (opt.smooth_subintervals, opt.smooth_nodes)) if model.smooth else
            "Gauss-Legendre (%d nodes, polynomial integrand)" % max(opt.gl_nodes, model.n_linear))
        summary["pool_pattern"] = opt.pool_pattern
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
