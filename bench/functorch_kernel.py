#!/usr/bin/env python3
"""Timing peer: the exact path kernel of an epk trace, the naive functorch way.

This script does NOT use epk. It exists only to time a peer implementation: what
a PyTorch user with functorch (vmap, grad, jacrev) would write for the path
kernel, in float64 on the CPU. Reading the trace (model as a function of a flat
parameter vector, loss, batches, rates, test points, the path w_0..w_S) is
examples/epk_trace.py's.

For every timed step s (batch B_s, segment w_s -> w_{s+1}, Delta_s = w_{s+1} - w_s):

  a_{i,s} = -eta_s dL_s/df(x_i; w_s)           coefficient [C]; autograd of torch's
                                              batch loss wrt the outputs, so rho
                                              (1/|B|, 1/(|B| C), 1) comes from torch
  g_{i,s} = J(x_i; w_s)^T a_{i,s}              per-sample gradients [B, P]:
                                              vmap(grad(params -> f(x_i) . a_i))
  I_s(x_m) = sum_q omega_q J(x_m; w_s + t_q Delta_s)
                                              [C, P] per test point: a fixed n-point
                                              Gauss-Legendre rule on [0, 1] (--nodes),
                                              each J a full materialised Jacobian
                                              from vmap(jacrev(f))
  contributions[m, i] += I_s(x_m) g_{i,s}     [M, N, C]
  remainder[m]        += I_s(x_m) r_s,  r_s = Delta_s - sum_i g_{i,s}

and reconstruction[m] = f(x_m; w_0) + sum_i contributions[m, i] + remainder[m],
compared with f(x_m; w_K), w_K the path point after the K timed steps.

This is deliberately the naive full-Jacobian approach (no Kronecker structure
of dense layers, no kink detection): the integral is exact only up to the
fixed rule's quadrature error. For smooth activations it converges
geometrically in --nodes; for relu / leaky_relu the Jacobian jumps where an
activation changes sign along the segment, so the reconstruction is close but
not exact however many nodes are used. Test points are processed in chunks of
--chunk so that the materialised Jacobians stay bounded: I_s for one chunk is
chunk x C x P doubles (a 784-256-256-10 net: 215 MB per 10 points).

The transforms differentiate with respect to the per-layer tensors (W_1, b_1,
W_2, ...), as with functional_call over a parameter dict, and the blocks are
concatenated into torch's parameters_to_vector order. --flat differentiates
with respect to the flat vector w [P] instead (sliced into the layers inside
f): the same numbers, but each slice's backward fills and adds a full-length
buffer per Jacobian row, which dominates on large nets (see FunctorchPathKernel).

Timing ("seconds") covers only the kernel work of the timed steps: the
coefficients, the per-sample gradients, the Jacobian integrals and the
contractions. Loading the trace, the path (reading params.npy or replaying SGD
from init_params.npy), the bias f(x; w_0) and the final check are not timed.
The Jacobians are large fresh allocations, which glibc's malloc takes from and
returns to the kernel each time (mmap), so page faults are a visible part of
the time on large nets; the environment MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=20000000000 keeps freed memory in the process instead.
The script leaves the allocator alone: that is what a user's run would see.

Usage:
    /usr/bin/python3 bench/functorch_kernel.py TRACE_DIR [--nodes N] [--steps K]
                                               [--threads T] [--chunk C] [--flat]
Output: one JSON line on stdout. Bad input: a message on stderr, exit 2.
Requires Python 3, NumPy and PyTorch >= 1.13 (torch.func, else functorch).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "examples"))
from epk_trace import DT, Trace  # noqa: E402  (examples/epk_trace.py)

try:  # torch >= 2.0
    from torch.func import grad, jacrev, vmap  # noqa: E402
except ImportError:  # torch 1.13 ships functorch as a separate module
    from functorch import grad, jacrev, vmap  # noqa: E402


class BadInput(Exception):
    """A trace or an option this script cannot use (exit 2)."""


def gauss_legendre_01(n):
    """Nodes t_q and weights omega_q of the n-point Gauss-Legendre rule on [0, 1]."""
    xi, om = np.polynomial.legendre.leggauss(n)
    return [0.5 * (float(v) + 1.0) for v in xi], [0.5 * float(v) for v in om]


class FunctorchPathKernel:
    """The per-step kernel work, written with functorch transforms over the
    model output f [C] for one input x [D].

    Two ways to hand the parameters to the transforms (--flat):
      * layers (default): f is a function of the tuple of per-layer tensors
        (W_1, b_1, W_2, ...), as with functional_call over a parameter dict;
        jacrev / grad return one block per tensor, concatenated (one copy) into
        parameters_to_vector order [.., P].
      * flat: f is a function of the flat vector w [P] itself, sliced into the
        layers inside f (epk_trace.Model.forward). Then every slice's backward
        writes a zero-filled full-length [.., P] buffer and adds it up, once
        per parameter tensor; on large nets that dominates the Jacobians.
    Both materialise the same full Jacobians; they agree to rounding.
    """

    def __init__(self, trace, nodes, chunk, flat=False):
        self.tr = trace
        self.model = trace.model
        self.t_nodes, self.weights = gauss_legendre_01(nodes)
        self.chunk = chunk
        self.flat = flat
        model = self.model

        if flat:
            def f(w, x):
                return model.forward(x.unsqueeze(0), w)[0]
        else:
            # (offset, shape) of every parameter tensor, in parameters_to_vector order
            self.blocks = []
            for op in model.ops:
                if op[0] == "linear":
                    _, w_off, o, i, b_off = op
                    self.blocks.append((w_off, (o, i)))
                    if b_off is not None:
                        self.blocks.append((b_off, (o,)))

            def f(leaves, x):
                layers, k = [], 0
                for op in model.ops:
                    if op[0] == "linear":
                        has_bias = op[4] is not None
                        layers.append((leaves[k], leaves[k + 1] if has_bias else None))
                        k += 2 if has_bias else 1
                return model.forward_layers(x.unsqueeze(0), layers)[0]

        def f_dot(w, x, a):
            return torch.dot(f(w, x), a)

        # J(x_i; w)^T a_i for every row (x_i, a_i): [B, P] (flat) or per-tensor blocks
        self._per_sample_grads = vmap(grad(f_dot), in_dims=(None, 0, 0))
        # J(x_m; w) for every row x_m, materialised: [m, C, P] (flat) or per-tensor blocks
        self._jacobians = vmap(jacrev(f), in_dims=(None, 0))

    def _args(self, w):
        """What f takes: w itself, or its per-layer tensors (views of w)."""
        if self.flat:
            return w
        return tuple(w[off:off + int(np.prod(shape))].view(shape) for off, shape in self.blocks)

    def _to_flat(self, blocks, lead):
        """Per-tensor blocks [*lead, *shape] -> [*lead, P] in parameters_to_vector order."""
        if self.flat:
            return blocks
        return torch.cat([b.reshape(lead + (-1,)) for b in blocks], dim=len(lead))

    def per_sample_grads(self, w, xb, a):
        """g_i = J(x_i; w)^T a_i for every row: [B, P]."""
        return self._to_flat(self._per_sample_grads(self._args(w), xb, a), (xb.shape[0],))

    def jacobians(self, w, x):
        """J(x_m; w) for every row x_m: [m, C, P]."""
        return self._to_flat(self._jacobians(self._args(w), x), (x.shape[0], self.model.C))

    def jacobian_integral(self, x, w, dw):
        """sum_q omega_q J(x[m]; w + t_q dw) for a chunk of points x [m, D]: [m, C, P]."""
        out = None
        for t, om in zip(self.t_nodes, self.weights):
            J = self.jacobians(w + t * dw, x)
            out = om * J if out is None else out.add_(J, alpha=om)
            del J
        return out

    def step(self, s, w, w_next, x_eval, contributions, remainder):
        """Add step s's terms to contributions [M, N, C] and remainder [M, C]."""
        tr = self.tr
        idx = tr.batch(s)
        xb, yb = tr.x_train[idx], tr.y_train[idx]
        # training side at w_s
        a = -tr.rate(s) * tr.dloss_df(self.model.outputs(xb, w), yb)      # [B, C]
        g = self.per_sample_grads(w, xb, a)                                # [B, P]
        dw = w_next - w
        r = dw - g.sum(dim=0)                                              # [P]
        # test side along the segment, one chunk of test points at a time
        for m0 in range(0, x_eval.shape[0], self.chunk):
            m1 = min(m0 + self.chunk, x_eval.shape[0])
            I = self.jacobian_integral(x_eval[m0:m1], w, dw)               # [m, C, P]
            contributions[m0:m1, idx, :] += torch.einsum("mcp,ip->mic", I, g)
            remainder[m0:m1] += torch.einsum("mcp,p->mc", I, r)
            del I


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("trace", help="trace directory (docs/trace-format.md)")
    p.add_argument("--nodes", type=int, default=2, help="Gauss-Legendre nodes per step")
    p.add_argument("--steps", type=int, default=None, help="time only the first K steps (None: all S)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--chunk", type=int, default=10, help="test points per materialised Jacobian batch")
    p.add_argument("--flat", action="store_true",
                   help="differentiate wrt the flat parameter vector (sliced inside f) "
                        "instead of the per-layer tensors")
    return p.parse_args(argv)


def run(opt):
    if opt.nodes < 1:
        raise BadInput("--nodes must be >= 1, got %d" % opt.nodes)
    if opt.threads < 1:
        raise BadInput("--threads must be >= 1, got %d" % opt.threads)
    if opt.chunk < 1:
        raise BadInput("--chunk must be >= 1, got %d" % opt.chunk)
    if not os.path.isdir(opt.trace):
        raise BadInput("%s: not a directory" % opt.trace)
    if not os.path.isfile(os.path.join(opt.trace, "manifest.json")):
        raise BadInput("%s: no manifest.json (not an epk trace)" % opt.trace)
    torch.set_num_threads(opt.threads)

    try:
        tr = Trace(opt.trace)
        if tr.manifest.get("format") != "epk-trace" or tr.manifest["optimizer"].get("type") != "sgd":
            raise ValueError("not a version-1 epk trace with plain SGD")
    except KeyError as e:
        raise BadInput("%s: manifest.json has no field %s" % (opt.trace, e)) from e
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise BadInput("%s: %s" % (opt.trace, e)) from e
    S = tr.S
    K = S if opt.steps is None else opt.steps
    if not 0 <= K <= S:
        raise BadInput("--steps %d out of range [0, %d]" % (K, S))
    model = tr.model
    x_eval = tr.x_eval
    M, N, C, P = x_eval.shape[0], tr.N, model.C, model.P

    kernel = FunctorchPathKernel(tr, opt.nodes, opt.chunk, opt.flat)
    w = tr.w0()
    bias = model.outputs(x_eval, w)
    contributions = torch.zeros((M, N, C), dtype=DT)
    remainder = torch.zeros((M, C), dtype=DT)
    seconds = 0.0
    for s in range(K):
        w_next = tr.next_params(s, w)          # the path: not timed
        t0 = time.perf_counter()
        kernel.step(s, w, w_next, x_eval, contributions, remainder)
        seconds += time.perf_counter() - t0
        w = w_next

    reconstruction = bias + contributions.sum(dim=1) + remainder
    err = float((reconstruction - model.outputs(x_eval, w)).abs().max()) if M else 0.0
    return {
        "implementation": "functorch float64",
        "torch": torch.__version__,
        "threads": opt.threads,
        "nodes": opt.nodes,
        "jacobian_wrt": "flat vector" if opt.flat else "layer tensors",
        "steps_timed": K,
        "steps_total": S,
        "seconds": seconds,
        "seconds_per_step": seconds / K if K else 0.0,
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
        print("functorch_kernel: error: %s" % e, file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
