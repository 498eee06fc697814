#!/usr/bin/env python3
"""Timing peer: the exact path kernel of an epk MLP trace, the structured PyTorch way.

This script does NOT use epk. It is an independent, straightforward float64
PyTorch implementation of the path kernel's per-step work on an MLP trace
(linear layers z_l = W_l h_l + b_l with elementwise activations between them),
written the way a competent PyTorch user would: per-layer factors and dense
batched products over all test points at once, no Python loop over test or
training points, no hand tuning beyond that. Reading the trace (the model as a
function of a flat parameter vector, the loss, batches, rates, test points,
the path) is examples/epk_trace.py's; bench/functorch_kernel.py is the naive
full-Jacobian peer with the same interface.

Per timed step s (batch B_s of b rows, rate eta, w = w_s, Delta = w_{s+1} - w_s):

  training side at w   forward the batch rows; seeds dL/df [b, C] by autograd
                       through torch's loss (so rho = 1/|B|, 1/(|B| C) or 1 is
                       torch's); backward them through the net: per linear
                       layer l the output adjoints E_l [b, out_l] and inputs
                       Htr_l [b, in_l]. Point i's gradient share g_i has the
                       layer-l blocks E_l[i] (x) Htr_l[i] (weight), E_l[i] (bias).
  test side            a fixed n-point Gauss-Legendre rule on [0, 1] (--nodes):
                       at each node t_q, W(t) = W + t dW, b(t) = b + t db;
                       forward all M test points, backward C one-hot seeds at
                       once: D_l [M, C, out_l] (adjoint of z_l for each output)
                       and H_l [M, in_l] (input of layer l).
  plain SGD            phi_i = -eta g_i is rank one per layer, so
  (momentum 0)           contributions[m, i, c] += sum_q om_q sum_l
                             (D_l[m,c,:] . E_l[i,:]) (H_l[m,:] . Htr_l[i,:] + [bias])
                       with E_l scaled by -eta: the products D_l E_l^T
                       [M C, b] and H_l Htr_l^T [M, b], scattered into the
                       batch's rows with index_add_ (an index may repeat).
  momentum, Adam,      the update splits exactly into per-training-point shares
  AdamW                phi_i and the optimizer's own term omega
                       (include/epk/optimizer_kernel.hpp's formulas, written here
                       from docs/trace-format.md):
                         SGD:   b_i = g^_i (run's first step) else mu b_i + (1-tau) g^_i,
                                phi_i = -eta (g^_i + mu b_i) (nesterov) or -eta b_i
                         Adam:  m_i = beta1 m_i + (1-beta1) g^_i,
                                phi_i = -(eta/c1) m_i / (sqrt(v)/sqrt(c2) + eps)
                       with g^_i = point i's gradient share (zero when i is not
                       in the batch), v (or amsgrad's max) the optimizer's own
                       second moment from the whole batch gradient (+ lambda w
                       for Adam's coupled decay); omega runs the same recursion
                       on lambda w (SGD / Adam L2 decay) from the recorded
                       initial state, plus -eta lambda w for AdamW's decoupled
                       decay. One dense P-vector per training point (all N
                       rows, kept per layer as [N, out, in] and [N, out]); the
                       test side is contracted with each:
                         contributions[m, i, c] += sum_q om_q sum_l
                             D_l[m,c,:] . (Phi_l,i H_l[m,:] + phi_b,l,i)
                       as the GEMM H_l [M, in] x Phi_l^T [in, N out] and a
                       batched product with D_l over the test points.
  remainder and        r = Delta - sum_i phi_i - omega; r and omega are each
  optimizer term       contracted like a single share:
                         remainder[m, c] += sum_q om_q sum_l D_l[m,c,:] . (R_l H_l[m,:] + r_b,l)
                       (and optimizer term[m, c] likewise with omega).

and reconstruction = f(x; w_0) + contributions.sum(1) + optimizer term +
remainder, compared with f(x; w_K) after the K timed steps. The integral is
exact only up to the fixed rule's quadrature error: geometric convergence in
--nodes for smooth activations, not exact for relu / leaky_relu (kinks).

With Adam, a point's share phi_i = -(eta/c1) m_i / (sqrt(v)/...) can be far
larger than the step where the batch's gradients cancel (v small), so
per-point contributions are sensitive to the rounding of v (how the batch
gradient is summed): two correct implementations may differ there by more
than rounding of the contributions' size. Their sum, and the reconstruction,
are not.

Node batching (--node-batch): "all" runs the test side for all n nodes in one
set of batched products (W(t) as [n, out, in]; the first layer's input, the
same at every node, is used once); "one" loops over the nodes with the same
code for n = 1. Measured with 8 nodes, 2 threads, 200 steps on the digits
64-128-128-10 net (500 training rows, batch 100, 100 test points; OpenBLAS
0.3.21, 2-core AMD EPYC VM, runs taken while the machine was otherwise idle):
plain SGD (rank-1 shares) tanh 6.9-9.7 s (one) vs 9.0-12.2 s (all), gelu
8.1 s vs 11.0-12.0 s, relu 6.7-9.2 s vs 7.7-9.4 s (run-to-run spread about
30 % on this VM): the per-node products are small and stay in cache; dense
shares (AdamW) 106 s (all, twice) vs 167 s (one): the [n M, in] x
[in, N out] GEMM is taller and the first layer's is done once. The default "auto" takes the
faster: one node at a time for rank-1 shares, all nodes for dense shares
(which then holds an [n M, N out] product per layer: 410 MB here).

Timing ("seconds") covers only the kernel work of the timed steps: the
training side, the optimizer split, the test side and the contractions. Not
timed: loading, the path (params.npy rows, or a replay from init_params.npy:
plain SGD as examples/epk_trace.py does, any other optimizer with
examples/independent_optimizer_replay.py's update rule), f(x; w_0) and the
final check.

Threads: torch.set_num_threads(T); torch's BLAS is found at run time in
/proc/self/maps after a matmul (reported as "blas"). torch built against the
generic BLAS interface does not pass T on to OpenBLAS, so when the mapped BLAS
is OpenBLAS its openblas_set_num_threads(T) (or --blas-threads) is called as
well. "cpu_seconds" is the process's CPU time over the same timed work.

Usage:
    /usr/bin/python3 bench/structured_peer.py TRACE_DIR [--nodes N] [--steps K]
                                              [--threads T] [--blas-threads T2]
                                              [--node-batch auto|all|one]
Output: one JSON line on stdout. Bad input: a message on stderr, exit 2.
Requires Python 3, NumPy and PyTorch (>= 1.13).
"""

import argparse
import ctypes
import json
import math
import os
import re
import sys
import time

# torch's OpenMP threads (libgomp) and OpenBLAS's own pthreads share the cores: with
# libgomp's default spin-waiting, the idle OpenMP workers spin while OpenBLAS's threads
# need the cores, which made runs 2-8x slower here. Passive waiting avoids that (read
# when libgomp starts, so before torch is imported; an explicit setting is kept).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "examples"))
from epk_trace import DT, Trace  # noqa: E402  (examples/epk_trace.py)


class BadInput(Exception):
    """A trace or an option this script cannot use (exit 2)."""


def gauss_legendre_01(n):
    """Nodes t_q and weights omega_q of the n-point Gauss-Legendre rule on [0, 1]."""
    xi, om = np.polynomial.legendre.leggauss(n)
    return 0.5 * (xi + 1.0), 0.5 * om


# ------------------------------------------------------------------ BLAS

def blas_in_use(threads):
    """The BLAS library torch calls, from the process's mapped files after a
    double matmul; sets OpenBLAS's thread count to `threads` when it is OpenBLAS."""
    a = torch.ones((64, 64), dtype=DT)
    (a @ a).sum().item()
    libs = []
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 6 and parts[5].startswith("/"):
                base = os.path.basename(parts[5]).lower()
                if re.search(r"blas|mkl_|libmkl|blis|accelerate|atlas", base) and parts[5] not in libs:
                    libs.append(parts[5])
    info = {"libraries": libs, "name": None, "config": None, "blas_threads": None}
    # Debian's torch calls the BLAS behind the soname libblas.so.3 (an alternatives link);
    # numpy may map OpenBLAS as well, so the soname decides when it resolves to a mapped file.
    for cand in ("/usr/lib/x86_64-linux-gnu/libblas.so.3", "/lib/x86_64-linux-gnu/libblas.so.3"):
        if os.path.exists(cand):
            real = os.path.realpath(cand)
            if any(os.path.realpath(p) == real for p in libs) and "openblas" not in real.lower():
                info["name"] = ("reference BLAS " if "/blas/" in real else "") + real
                return info
            break
    for path in libs:
        if "openblas" in os.path.basename(path).lower():
            info["name"] = "OpenBLAS " + path
            try:
                lib = ctypes.CDLL(path)
                lib.openblas_get_config.restype = ctypes.c_char_p
                info["config"] = lib.openblas_get_config().decode()
                lib.openblas_set_num_threads(ctypes.c_int(threads))
                info["blas_threads"] = int(lib.openblas_get_num_threads())
            except (OSError, AttributeError):
                pass
            return info
    for path in libs:
        if "mkl" in os.path.basename(path).lower():
            info["name"] = "MKL " + path
            return info
    if libs:
        info["name"] = libs[0]
    elif torch.backends.mkl.is_available():
        info["name"] = "MKL (linked into torch)"
    else:
        m = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
        info["name"] = "unknown (no BLAS library mapped; torch BLAS_INFO=%s)" % (m.group(1) if m else "?")
    return info


# ------------------------------------------------------------------ optimizer

def optimizer_of(manifest):
    """The manifest's optimizer with the format's names, synonyms and defaults."""
    o = dict(manifest["optimizer"])
    kinds = {"sgd": "sgd", "SGD": "sgd", "adam": "adam", "Adam": "adam", "adamw": "adamw", "AdamW": "adamw"}
    if o.get("type") not in kinds:
        raise ValueError("optimizer type %r is not supported (sgd, adam, adamw)" % o.get("type"))
    kind = kinds[o["type"]]
    if o.get("maximize", False):
        raise ValueError("maximize=true is not implemented")
    if kind == "adam" and o.get("decoupled_weight_decay", False):
        kind = "adamw"
    r = {"type": kind,
         "weight_decay": float(o.get("weight_decay", 0.01 if o["type"] in ("adamw", "AdamW") else 0.0)),
         "initial_step": int(o.get("initial_step", 0))}
    if kind == "sgd":
        r.update(momentum=float(o.get("momentum", 0.0)), dampening=float(o.get("dampening", 0.0)),
                 nesterov=bool(o.get("nesterov", False)))
    else:
        betas = o.get("betas", [o.get("beta1", 0.9), o.get("beta2", 0.999)])
        r.update(beta1=float(betas[0]), beta2=float(betas[1]), eps=float(o.get("eps", 1e-8)),
                 amsgrad=bool(o.get("amsgrad", False)))
    return r


STATE_FILES = {"momentum_buffer": "init_momentum_buffer.npy", "exp_avg": "init_exp_avg.npy",
               "exp_avg_sq": "init_exp_avg_sq.npy", "max_exp_avg_sq": "init_max_exp_avg_sq.npy"}


def initial_state(d, P):
    """The recorded optimizer state before step 0 (flat [P] float64 tensors)."""
    state = {}
    for key, name in STATE_FILES.items():
        path = os.path.join(d, name)
        if os.path.exists(path):
            v = np.load(path, allow_pickle=False).astype(np.float64)
            if v.shape != (P,):
                raise ValueError("%s has shape %s, expected (%d,)" % (name, v.shape, P))
            state[key] = torch.from_numpy(v)
    return state


# ------------------------------------------------------------------ the net

def act_and_derivative(name, slope, z):
    """sigma(z) and sigma'(z), closed forms (left-hand derivative at kinks)."""
    if name == "relu":
        return torch.relu(z), (z > 0).to(z.dtype)
    if name == "leaky_relu":
        pos = z > 0
        return torch.where(pos, z, slope * z), torch.where(pos, torch.ones_like(z), torch.full_like(z, slope))
    if name == "tanh":
        h = torch.tanh(z)
        return h, 1.0 - h * h
    if name == "sigmoid":
        h = torch.sigmoid(z)
        return h, h * (1.0 - h)
    if name == "softplus":
        return torch.logaddexp(z, torch.zeros_like(z)), torch.sigmoid(z)
    if name == "gelu":
        cdf = 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))
        pdf = torch.exp(-0.5 * z * z) * (1.0 / math.sqrt(2.0 * math.pi))
        return z * cdf, cdf + z * pdf
    if name == "identity":
        return z, None
    raise ValueError("unsupported activation " + name)


class StructuredNet:
    """The trace's MLP, forward and backward by hand with per-layer factors.

    Parameters come per linear layer as (W, b): W [out, in] and b [out] (or
    None), or with a leading node axis, W [n, out, in] and b [n, out]."""

    def __init__(self, model):
        self.model = model
        self.C = model.C
        self.ops = model.ops
        self.linears = [op for op in model.ops if op[0] == "linear"]   # (_, w_off, out, in, b_off)

    def forward(self, x, layers):
        """f for the rows x [rows, D] (shared by every node), the input H_l of every
        linear layer ([rows, in], or [n, M, in] after the first layer when the
        layers carry a node axis) and sigma' of every activation (None: identity)."""
        h = x
        H, derivs = [], []
        k = 0
        for op in self.ops:
            if op[0] == "linear":
                W, b = layers[k]
                k += 1
                H.append(h)
                h = torch.matmul(h, W.transpose(-1, -2))
                if b is not None:
                    h = h + b.unsqueeze(-2)
            else:
                h, d = act_and_derivative(op[1], op[2], h)
                derivs.append(d)
        return h, H, derivs

    def backward(self, layers, derivs, seeds):
        """The adjoint of every linear layer's output z_l.

        seeds [rows, C] (the training side, one parameter set): per layer [rows, out].
        seeds [n, M, C, C] (the test side, C seeds per point, layers with a node
        axis): per layer [n, M, C, out], each product over all n M C rows at once."""
        adj = seeds
        test = seeds.dim() == 4
        adjs = [None] * len(self.linears)
        k = len(self.linears)
        a = len(derivs)
        for op in reversed(self.ops):
            if op[0] == "linear":
                k -= 1
                adjs[k] = adj
                if k == 0:
                    break
                W = layers[k][0]
                o, i = W.shape[-2], W.shape[-1]
                if test:   # [n, M, C, o] -> [n, M C, o] @ W [n, o, i]
                    adj = torch.matmul(adj.reshape(W.shape[:-2] + (-1, o)), W).view(adj.shape[:-1] + (i,))
                else:
                    adj = adj @ W
            else:
                a -= 1
                d = derivs[a]
                if d is not None:
                    adj = adj * (d.unsqueeze(-2) if test else d)
        return adjs

    def test_side(self, x, layers):
        """H_l [n, M, in] ([M, in] for the first layer: the same at every node) and
        D_l [n, M, C, out] for the test points x [M, D] at the nodes' layers."""
        f, H, derivs = self.forward(x, layers)
        C = self.C
        seeds = torch.eye(C, dtype=f.dtype).expand(f.shape[:-1] + (C, C))
        return H, self.backward(layers, derivs, seeds)


# ------------------------------------------------------------------ the kernel

class StructuredPathKernel:
    def __init__(self, tr, opt, nodes, node_batch, state):
        self.tr = tr
        self.net = StructuredNet(tr.model)
        self.o = opt
        t, om = gauss_legendre_01(nodes)
        self.t = torch.from_numpy(t)
        self.om = torch.from_numpy(om)
        # memoryless SGD: phi_i = -eta g_i, rank one per layer
        self.rank1 = opt["type"] == "sgd" and opt["momentum"] == 0
        if node_batch == "auto":   # the faster one, measured (module docstring)
            node_batch = "one" if self.rank1 else "all"
        self.node_batch = node_batch
        self.M = tr.x_eval.shape[0]
        self.N = tr.N
        self.C = tr.model.C
        self.first = opt["initial_step"] == 0
        self.t_opt = opt["initial_step"]
        P = tr.model.P
        self.blocks = blocks = tr.model.unpack     # flat [P] -> per layer (W [out, in], b [out] | None)
        if not self.rank1:
            # one P-vector per training point (its b or m), per layer: [N, out, in], [N, out]
            self.acc = [(torch.zeros((self.N,) + W.shape, dtype=DT),
                         None if b is None else torch.zeros((self.N,) + b.shape, dtype=DT))
                        for W, b in blocks(torch.zeros(P, dtype=DT))]
            # the optimizer term's own b or m, and Adam's second moments
            key = "momentum_buffer" if opt["type"] == "sgd" else "exp_avg"
            own = state.get(key, torch.zeros(P, dtype=DT)).clone()
            self.own = [(W.clone(), None if b is None else b.clone()) for W, b in blocks(own)]
            if opt["type"] != "sgd":
                self.v = blocks(state.get("exp_avg_sq", torch.zeros(P, dtype=DT)).clone())
                self.vmax = blocks(state.get("max_exp_avg_sq", torch.zeros(P, dtype=DT)).clone())

    # -------------------------------------------------------------- test side

    def node_groups(self):
        """(t [n], omega [n]) for each product group: all nodes, or one at a time."""
        if self.node_batch == "all":
            return [(self.t, self.om)]
        return [(self.t[q:q + 1], self.om[q:q + 1]) for q in range(self.t.shape[0])]

    @staticmethod
    def layers_at(layers, dlayers, t):
        """Per layer W + t dW [n, out, in], b + t db [n, out] for the nodes t [n]."""
        tt = t.view(-1, 1, 1)
        return [(W + tt * dW, None if b is None else b + t.view(-1, 1) * db)
                for (W, b), (dW, db) in zip(layers, dlayers)]

    @staticmethod
    def contract_vector(H, D, vec, om):
        """sum_q om_q sum_l D_l[q,m,c,:] . (V_l H_l[q,m,:] + v_b,l): [M, C].
        vec: per layer (V [out, in], v_b [out] or None)."""
        out = None
        for Hl, Dl, (V, vb) in zip(H, D, vec):
            Y = torch.matmul(Hl, V.T)                               # [n, M, o]
            if vb is not None:
                Y = Y + vb
            Z = torch.matmul(Dl, Y.unsqueeze(-1)).squeeze(-1)       # [n, M, C]
            out = Z if out is None else out + Z
        return torch.tensordot(om, out, dims=1)                     # [M, C]

    # -------------------------------------------------------------- one step

    def step(self, s, w, w_next, contributions, opt_term, remainder):
        tr, net = self.tr, self.net
        idx = tr.batch(s)
        xb, yb = tr.x_train[idx], tr.y_train[idx]
        eta = tr.rate(s)
        layers = self.blocks(w)
        dlayers = self.blocks(w_next - w)
        # training side at w_s
        f, Htr, derivs = net.forward(xb, layers)
        dl = tr.dloss_df(f, yb)                                      # dL/df [b, C]
        if self.rank1:   # E_l [b, out] carry -eta: phi_i's blocks are E_l[i] (x) Htr_l[i]
            E = net.backward(layers, derivs, -eta * dl)
            self.step_rank1(eta, idx, E, Htr, layers, dlayers, contributions, opt_term, remainder)
        else:            # g^_i's blocks are E_l[i] (x) Htr_l[i]
            E = net.backward(layers, derivs, dl)
            self.step_dense(eta, idx, E, Htr, layers, dlayers, contributions, opt_term, remainder)
        self.first = False

    def step_rank1(self, eta, idx, E, Htr, layers, dlayers, contributions, opt_term, remainder):
        """Plain SGD (momentum 0): phi_i = -eta g_i; omega = -eta lambda w."""
        net, lam = self.net, self.o["weight_decay"]
        has_bias = [b is not None for _, b in layers]
        # omega and r = Delta - sum_i phi_i - omega, per layer
        omega = [(-eta * lam * W, None if b is None else -eta * lam * b) for W, b in layers]
        r = []
        for El, Hl, (dW, db), (oW, ob) in zip(E, Htr, dlayers, omega):
            r.append((dW - El.T @ Hl - oW, None if db is None else db - El.sum(0) - ob))
        S = None
        for t, om in self.node_groups():
            H, D = net.test_side(self.tr.x_eval, self.layers_at(layers, dlayers, t))
            n = t.shape[0]
            for Hl, Dl, El, Htl, hb in zip(H, D, E, Htr, has_bias):
                A = torch.matmul(Dl.reshape(n, -1, Dl.shape[-1]), El.T)     # [n, M C, b]
                G = torch.matmul(Hl, Htl.T)                                 # [n, M, b]
                if hb:
                    G = G + 1.0
                G = G * om.view(-1, 1, 1)
                T = (A.view(n, self.M, self.C, -1) * G.unsqueeze(2)).sum(0)  # [M, C, b]
                S = T if S is None else S + T
            remainder += self.contract_vector(H, D, r, om)
            if lam != 0:
                opt_term += self.contract_vector(H, D, omega, om)
        contributions.index_add_(1, idx, S.transpose(1, 2))

    def step_dense(self, eta, idx, E, Htr, layers, dlayers, contributions, opt_term, remainder):
        """Momentum / Adam / AdamW: dense per-point shares phi_i [N, P] (per layer)."""
        net, o = self.net, self.o
        lam = o["weight_decay"]
        N = self.N
        self.t_opt += 1
        phi, omega = [], []
        if o["type"] == "sgd":
            mu, damp, nest = o["momentum"], o["dampening"], o["nesterov"]
            for (W, b), El, Hl, (AW, Ab), (OW, Ob) in zip(layers, E, Htr, self.acc, self.own):
                out_l = []
                for A, Ow, g_rows, par in ((AW, OW, torch.einsum("bo,bi->boi", El, Hl), W),
                                           (Ab, Ob, El, b)):
                    if A is None:
                        out_l.append((None, None))
                        continue
                    d_own = lam * par                                  # L2 decay: the optimizer term's input
                    if self.first:
                        A.zero_()
                        A.index_add_(0, idx, g_rows)
                        Ow.copy_(d_own)
                    else:
                        A.mul_(mu)
                        A.index_add_(0, idx, g_rows, alpha=1.0 - damp)
                        Ow.mul_(mu).add_(d_own, alpha=1.0 - damp)
                    if nest:
                        P_ = A * (-eta * mu)
                        P_.index_add_(0, idx, g_rows, alpha=-eta)
                        om_ = -eta * (d_own + mu * Ow)
                    else:
                        P_ = A * -eta
                        om_ = -eta * Ow
                    out_l.append((P_, om_))
                phi.append((out_l[0][0], out_l[1][0]))
                omega.append((out_l[0][1], out_l[1][1]))
        else:
            b1, b2, eps, ams = o["beta1"], o["beta2"], o["eps"], o["amsgrad"]
            adamw = o["type"] == "adamw"
            c1 = 1.0 - b1 ** self.t_opt
            c2 = 1.0 - b2 ** self.t_opt
            for k, ((W, b), El, Hl) in enumerate(zip(layers, E, Htr)):
                grads = (El.T @ Hl, El.sum(0))                         # the batch gradient, per tensor
                rows = (torch.einsum("bo,bi->boi", El, Hl), El)
                out_l = []
                for j, par in enumerate((W, b)):
                    if par is None:
                        out_l.append((None, None))
                        continue
                    A, Ow, v, vmax = self.acc[k][j], self.own[k][j], self.v[k][j], self.vmax[k][j]
                    g = grads[j]
                    d_own = None
                    if lam != 0 and not adamw:
                        d_own = lam * par
                        g = g + d_own
                    v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
                    if ams:
                        torch.maximum(vmax, v, out=vmax)
                    denom = (vmax if ams else v).sqrt() / math.sqrt(c2) + eps
                    scale = (-eta / c1) / denom
                    A.mul_(b1)
                    A.index_add_(0, idx, rows[j], alpha=1.0 - b1)
                    Ow.mul_(b1)
                    if d_own is not None:
                        Ow.add_(d_own, alpha=1.0 - b1)
                    om_ = Ow * scale
                    if adamw and lam != 0:
                        om_ = om_ - (eta * lam) * par
                    out_l.append((A * scale, om_))
                phi.append((out_l[0][0], out_l[1][0]))
                omega.append((out_l[0][1], out_l[1][1]))
        # r = Delta - sum_i phi_i - omega
        r = []
        for (dW, db), (PW, Pb), (oW, ob) in zip(dlayers, phi, omega):
            r.append((dW - PW.sum(0) - oW, None if db is None else db - Pb.sum(0) - ob))
        acc = None
        for t, om in self.node_groups():
            H, D = net.test_side(self.tr.x_eval, self.layers_at(layers, dlayers, t))
            for Hl, Dl, (PW, Pb) in zip(H, D, phi):
                o_, i_ = PW.shape[1], PW.shape[2]
                Dw = Dl * om.view(-1, 1, 1, 1)                                 # [n, M, C, o]
                if Hl.dim() == 2:   # the first layer's input is the same at every node
                    Dw = Dw.sum(0, keepdim=True)
                Yt = torch.matmul(Hl.reshape(-1, i_), PW.view(N * o_, i_).T)   # [n M, N o]
                if Pb is not None:
                    Yt += Pb.reshape(1, N * o_)
                Z = torch.bmm(Dw.reshape(-1, self.C, o_), Yt.view(-1, N, o_).transpose(1, 2))  # [n M, C, N]
                Z = Z.view(-1, self.M, self.C, N).sum(0)
                acc = Z if acc is None else acc + Z
            remainder += self.contract_vector(H, D, r, om)
            opt_term += self.contract_vector(H, D, omega, om)
        contributions += acc.transpose(1, 2)


# ------------------------------------------------------------------ driver

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("trace", help="trace directory (docs/trace-format.md)")
    p.add_argument("--nodes", type=int, default=8, help="Gauss-Legendre nodes per step")
    p.add_argument("--steps", type=int, default=None, help="time only the first K steps (None: all S)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (and OpenBLAS's)")
    p.add_argument("--blas-threads", type=int, default=None,
                   help="OpenBLAS's thread count (None: --threads)")
    p.add_argument("--node-batch", choices=("auto", "all", "one"), default="auto",
                   help="test side for all nodes in one set of batched products, or one node at a "
                        "time; auto: one for plain SGD (rank-1 shares), all for dense shares")
    return p.parse_args(argv)


def run(opt):
    if opt.nodes < 1:
        raise BadInput("--nodes must be >= 1, got %d" % opt.nodes)
    if opt.threads < 1:
        raise BadInput("--threads must be >= 1, got %d" % opt.threads)
    if not os.path.isdir(opt.trace):
        raise BadInput("%s: not a directory" % opt.trace)
    if not os.path.isfile(os.path.join(opt.trace, "manifest.json")):
        raise BadInput("%s: no manifest.json (not an epk trace)" % opt.trace)
    torch.set_num_threads(opt.threads)
    if opt.blas_threads is not None and opt.blas_threads < 1:
        raise BadInput("--blas-threads must be >= 1, got %d" % opt.blas_threads)
    blas = blas_in_use(opt.threads if opt.blas_threads is None else opt.blas_threads)

    try:
        tr = Trace(opt.trace)
        man = tr.manifest
        if man.get("format") != "epk-trace":
            raise ValueError("format is not 'epk-trace'")
        if man.get("version") not in (1, 2, 3):
            raise ValueError("version %r is not supported" % man.get("version"))
        o = optimizer_of(man)
        state = initial_state(opt.trace, tr.model.P)
        if o["initial_step"] < 0:
            raise ValueError("optimizer.initial_step must be >= 0")
        if o["initial_step"] > 0:
            need = (["momentum_buffer"] if o["type"] == "sgd" and o["momentum"] != 0 else
                    [] if o["type"] == "sgd" else
                    ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if o["amsgrad"] else []))
            missing = [STATE_FILES[k] for k in need if k not in state]
            if missing:
                raise ValueError("initial_step %d needs %s" % (o["initial_step"], ", ".join(missing)))
    except KeyError as e:
        raise BadInput("%s: manifest.json has no field %s" % (opt.trace, e)) from e
    except (OSError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise BadInput("%s: %s" % (opt.trace, e)) from e
    S = tr.S
    K = S if opt.steps is None else opt.steps
    if not 0 <= K <= S:
        raise BadInput("--steps %d out of range [0, %d]" % (K, S))
    model = tr.model
    x_eval = tr.x_eval
    M, N, C, P = x_eval.shape[0], tr.N, model.C, model.P
    plain = o["type"] == "sgd" and o["momentum"] == 0 and o["weight_decay"] == 0

    # the path (not timed): recorded rows, plain SGD replayed by epk_trace, other optimizers
    # replayed by examples/independent_optimizer_replay.py's update rule
    if tr.recorded or plain:
        next_params = tr.next_params
    else:
        from independent_optimizer_replay import Optimizer, optimizer_of as replay_optimizer_of
        replay = Optimizer(replay_optimizer_of(man), P, {k: v.numpy().copy() for k, v in state.items()})

        def next_params(s, w):
            idx = tr.batch(s)
            g = tr.loss_grad_w(tr.x_train[idx], tr.y_train[idx], w).numpy()
            return torch.from_numpy(replay.step(w.numpy().copy(), g, tr.rate(s)))

    kernel = StructuredPathKernel(tr, o, opt.nodes, opt.node_batch, state)
    w = tr.w0()
    bias = model.outputs(x_eval, w)
    contributions = torch.zeros((M, N, C), dtype=DT)
    opt_term = torch.zeros((M, C), dtype=DT)
    remainder = torch.zeros((M, C), dtype=DT)
    seconds = cpu_seconds = 0.0
    with torch.no_grad():
        for s in range(K):
            w_next = next_params(s, w)          # the path: not timed
            t0, c0 = time.perf_counter(), time.process_time()
            kernel.step(s, w, w_next, contributions, opt_term, remainder)
            seconds += time.perf_counter() - t0
            cpu_seconds += time.process_time() - c0
            w = w_next

    reconstruction = bias + contributions.sum(dim=1) + opt_term + remainder
    err = float((reconstruction - model.outputs(x_eval, w)).abs().max()) if M else 0.0
    return {
        "implementation": "structured torch float64",
        "torch": torch.__version__,
        "threads": opt.threads,
        "blas": blas["name"],
        "blas_libraries": blas["libraries"],
        "blas_config": blas["config"],
        "blas_threads": blas["blas_threads"],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "nodes": opt.nodes,
        "node_batch": kernel.node_batch,
        "optimizer": o["type"] if o["type"] != "sgd" else
        ("sgd" + (" momentum" if o["momentum"] else "") + (" nesterov" if o["nesterov"] else "")
         + (" weight_decay" if o["weight_decay"] else "")),
        "shares": "rank-1 per layer" if kernel.rank1 else "dense [N, P]",
        "path": tr.path,
        "steps_timed": K,
        "steps_total": S,
        "seconds": seconds,
        "seconds_per_step": seconds / K if K else 0.0,
        "cpu_seconds": cpu_seconds,
        "test_points": M,
        "n_train": N,
        "parameters": P,
        "reconstruction_max_abs_error": err,
    }


def main(argv=None):
    opt = parse_args(argv)
    try:
        result = run(opt)
    except BadInput as e:
        print("structured_peer: error: %s" % e, file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
