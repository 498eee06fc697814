"""Reading an epk trace into float64 PyTorch: shared by the independent checkers.

This module does NOT use epk. It holds what examples/independent_kernel.py and
examples/independent_compare.py both need to redo a trace (docs/trace-format.md)
in float64 torch:

  * Model: the trace's torch.nn.Sequential as a function of a flat parameter
    vector in torch's parameters_to_vector order (for each linear layer, its
    weight [out, in] row-major, then its bias). Activations act exactly as the
    format prescribes (softplus is log(1 + e^z) with no threshold; gelu the
    exact erf form).
  * Trace: the arrays of a trace directory, taken exactly into float64; the
    loss (torch's own cross_entropy / mse_loss with the trace's reduction); the
    batch and rate of every step; the test points (x_test.npy, else the first
    min(10, N) training rows); and the path w_0..w_S: params.npy (recorded) if
    present, else plain SGD replayed from init_params.npy,
    w_{s+1} = w_s - eta_s grad L_s(w_s), as torch.optim.SGD does.

Requires Python 3, NumPy and PyTorch.
"""

import json
import os

import numpy as np
import torch
import torch.nn.functional as F

DT = torch.float64
KINK_ACTIVATIONS = ("relu", "leaky_relu")
SMOOTH_ACTIVATIONS = ("tanh", "sigmoid", "softplus", "gelu")


# ------------------------------------------------------------------ the model

class Model:
    """A functional version of the trace's torch.nn.Sequential.

    Parameters are a flat vector in torch's parameters_to_vector order: for each
    linear layer, its weight [out, in] row-major, then its bias. `forward`
    takes either one vector w [P], shared by every input row, or one vector
    per input row, w [B, P].
    """

    def __init__(self, manifest):
        m = manifest["model"]
        self.input_dim = int(m["input_dim"])
        self.ops = []           # ("linear", w_off, out, in, b_off|None) or ("act", name, slope)
        width, off = self.input_dim, 0
        self.n_linear = 0
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
                self.n_linear += 1
            elif kind in KINK_ACTIVATIONS + SMOOTH_ACTIVATIONS + ("identity",):
                self.ops.append(("act", kind, float(layer.get("negative_slope", 0.01))))
            else:
                raise ValueError("unsupported layer type " + kind)
        self.P = off
        self.C = width
        acts = {op[1] for op in self.ops if op[0] == "act"}
        self.has_kinks = bool(acts & set(KINK_ACTIVATIONS))
        self.smooth = bool(acts & set(SMOOTH_ACTIVATIONS))

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

    def unpack(self, w):
        """Flat w [P] -> per linear layer (W [out, in], b [out] or None);
        flat rows w [B, P] -> (W [B, out, in], b [B, out] or None)."""
        lead = tuple(w.shape[:-1])
        out = []
        for op in self.ops:
            if op[0] == "linear":
                _, w_off, o, i, b_off = op
                out.append((w[..., w_off:w_off + o * i].reshape(lead + (o, i)),
                            None if b_off is None else w[..., b_off:b_off + o]))
        return out

    def forward_layers(self, x, layers, want_pre=False):
        """f(x[b]) for every row of x [B, D] with the per-layer parameters
        `layers` (see unpack: shared by all rows, or one set per row). Returns
        f [B, C] and, with want_pre, the concatenated pre-activations feeding
        kinked activations [B, U]."""
        h = x
        pre = []
        k = 0
        for op in self.ops:
            if op[0] == "linear":
                W, b = layers[k]
                k += 1
                h = h @ W.T if W.dim() == 2 else torch.einsum("boi,bi->bo", W, h)
                if b is not None:
                    h = h + b
            else:
                _, name, slope = op
                if want_pre and name in KINK_ACTIVATIONS:
                    pre.append(h)
                h = self._act(name, slope, h)
        if want_pre:
            return h, (torch.cat(pre, dim=1) if pre else h.new_zeros((h.shape[0], 0)))
        return h

    def forward(self, x, w, want_pre=False):
        """f(x[b]; w) for one flat vector w [P], or f(x[b]; w[b]) for rows w [B, P]."""
        return self.forward_layers(x, self.unpack(w), want_pre)

    def outputs(self, x, w):
        """f(x; w) without autograd: [B, C]."""
        with torch.no_grad():
            return self.forward(x, w)


# ------------------------------------------------------------------ the trace

class Trace:
    """A trace directory read into float64 torch, with its model (an instance
    of model_class, Model or a subclass) and loss."""

    def __init__(self, d, model_class=Model):
        with open(os.path.join(d, "manifest.json"), encoding="utf-8") as fh:
            self.manifest = json.load(fh)
        ld = lambda name: np.load(os.path.join(d, name), allow_pickle=False)
        ex = lambda name: os.path.exists(os.path.join(d, name))
        man = self.manifest
        self.loss_type, self.reduction = man["loss"]["type"], man["loss"]["reduction"]
        self.x_train = torch.from_numpy(ld("x_train.npy").astype(np.float64))
        y = ld("y_train.npy")
        self.y_train = torch.from_numpy(y.astype(np.int64) if self.loss_type == "cross_entropy"
                                        else y.astype(np.float64))
        self.N = self.x_train.shape[0]
        self.S = S = int(man["optimizer"]["steps"])
        self.params = torch.from_numpy(ld("params.npy").astype(np.float64)) if ex("params.npy") else None
        self.init = torch.from_numpy(ld("init_params.npy").astype(np.float64)) if ex("init_params.npy") else None
        if self.params is None and self.init is None:
            raise ValueError("trace has neither params.npy nor init_params.npy")
        self.recorded = self.params is not None
        self.path = "recorded" if self.recorded else "replayed"
        self.batches = ld("batches.npy").astype(np.int64) if ex("batches.npy") else None
        self.rates = (ld("learning_rates.npy").astype(np.float64) if ex("learning_rates.npy")
                      else np.full(S, float(man["optimizer"]["learning_rate"])))
        if ex("x_test.npy"):
            self.x_eval = torch.from_numpy(ld("x_test.npy").astype(np.float64))
            self.x_eval_source = "x_test"
        else:
            self.x_eval = self.x_train[:min(10, self.N)].clone()
            self.x_eval_source = "x_train[:%d]" % min(10, self.N)
        self.model = model_class(man)
        P = self.model.P
        if self.recorded and self.params.shape != (S + 1, P):
            raise ValueError("params.npy has shape %s, expected %s" % (tuple(self.params.shape), (S + 1, P)))
        if not self.recorded and self.init.shape != (P,):
            raise ValueError("init_params.npy has shape %s, expected %s" % (tuple(self.init.shape), (P,)))

    # -------------------------------------------------------------- steps

    def batch(self, s):
        """Indices into x_train of the batch of step s (all of them without batches.npy)."""
        return torch.from_numpy(self.batches[s]) if self.batches is not None else torch.arange(self.N)

    def rate(self, s):
        """eta_s."""
        return float(self.rates[s])

    # -------------------------------------------------------------- the loss

    def loss(self, f, y):
        """L(f, y): torch's own cross_entropy / mse_loss with the trace's reduction."""
        if self.loss_type == "cross_entropy":
            return F.cross_entropy(f, y, reduction=self.reduction)
        return F.mse_loss(f, y, reduction=self.reduction)

    def dloss_df(self, f, y):
        """dL/df at outputs f [B, C], by autograd through the torch loss."""
        fl = f.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.loss(fl, y), fl)
        return g.detach()

    def loss_grad_w(self, xb, yb, w):
        """grad_w L(f(x_B; w), y_B) for one flat vector w: [P]."""
        wl = w.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.loss(self.model.forward(xb, wl), yb), wl)
        return g.detach()

    # -------------------------------------------------------------- the path

    def w0(self):
        """w_0: the first recorded row, or init_params.npy (a copy)."""
        return (self.params[0] if self.recorded else self.init).clone()

    def next_params(self, s, w, grad=None):
        """w_{s+1} from w = w_s: the recorded row, or the SGD step
        w - eta_s grad L_s(w) (torch.optim.SGD: p += -lr * g); `grad`, if
        given, is grad L_s(w), else it is computed here."""
        if self.recorded:
            return self.params[s + 1].clone()
        if grad is None:
            idx = self.batch(s)
            grad = self.loss_grad_w(self.x_train[idx], self.y_train[idx], w)
        return w - self.rate(s) * grad
