"""epk.torch — record a PyTorch training run as an epk trace, and verify it in-process.

    import epk.torch
    rec = epk.torch.Recorder(model, opt, loss_fn, X, y, x_test=X_test)
    for s in range(steps):
        idx = batches[s]                       # the rows of X in this step's batch (None = all)
        opt.zero_grad(); loss_fn(model(X[idx]), y[idx]).backward(); opt.step()
        rec.step(idx)                          # after opt.step(); a scheduler may step before or after
        sched.step()
    rec.save("RUN")                            # a trace directory (docs/trace-format.md)
    report = rec.verify()                      # epk.verify on the arrays in memory

What it records: the parameters before the first step and after every step (params.npy, in the
model's dtype), each step's batch (batches.npy), each step's learning rate as the optimizer
used it (learning_rates.npy when it varies: any scheduler), the optimizer's hyper-parameters and,
for a run resumed from a checkpoint, its state at the first recorded step (init_exp_avg.npy, ...,
optimizer.initial_step).  The manifest's model is derived from the modules by isinstance:
nn.Sequential (nested ones are flattened), Linear, Conv2d, MaxPool2d, AvgPool2d, Flatten,
LayerNorm, ReLU, LeakyReLU, Tanh, Sigmoid, Softplus (beta 1), GELU, Identity, and
``epk.torch.Residual(body, shortcut)`` for a skip connection; anything else is refused with its
dotted name and the reason.  Dropout (p > 0) in training mode is left out of the manifest with a
warning: the run is then not the trace's training, and ``verify`` says at which step.  BatchNorm
is refused (it couples the samples of a batch).

Sequence models (transformers) on token ids: the inputs X (and x_test) are integer tensors
``[N, T]`` (torch.long), written as ``<i8`` with ``"input_dtype": "int64"`` in the manifest's
model, and the first layer is an nn.Embedding (without padding_idx, max_norm,
scale_grad_by_freq, sparse).  The sequence layers, each acting on one sample ``[T, D]``
(batched ``[B, T, D]``, batch first), are the modules of this file:

    epk.torch.PositionalEmbedding(T, D)    x + weight, a learned [T, D] (init N(0, 1), as nn.Embedding)
    epk.torch.SelfAttention(D, num_heads, bias=True, causal=False)
                                           nn.MultiheadAttention(D, num_heads, bias=bias, batch_first=True,
                                           dropout 0) as self.attn, called attn(x, x, x, need_weights=False,
                                           attn_mask=the causal mask or None)
    epk.torch.Select(index=-1)             x[:, index]: [T, D] -> [D] (one token, e.g. the last)
    epk.torch.MeanTokens()                 x.mean(dim=1): [T, D] -> [D]

and Linear, LayerNorm and the activations act on the last axis of ``[T, D]``, Residual wraps any
of them.  A transformer block is then, e.g.::

    nn.Sequential(nn.Embedding(V, D), epk.torch.PositionalEmbedding(T, D),
                  epk.torch.Residual(nn.Sequential(nn.LayerNorm(D), epk.torch.SelfAttention(D, 4, causal=True))),
                  epk.torch.Residual(nn.Sequential(nn.LayerNorm(D), nn.Linear(D, 4 * D), nn.GELU(),
                                                   nn.Linear(4 * D, D))),
                  nn.LayerNorm(D), epk.torch.Select(-1), nn.Linear(D, C))

A bare nn.MultiheadAttention is refused (its forward takes (query, key, value) and returns a
tuple, so it cannot sit in an nn.Sequential): wrap it as epk.torch.SelfAttention.  So are
nn.Transformer* modules (dropout, and the layers are not visible): build the block as above.

The recorder wraps ``optimizer.step`` (the instance's method) so that the rate is read *before*
the step and the parameters right after it; ``rec.step(batch)`` then only adds the batch.  Loss:
nn.CrossEntropyLoss or nn.MSELoss (reduction mean or sum; no weights, no label smoothing), or
``loss="cross_entropy"|"mse"`` with ``reduction=``.  Optimizers: torch.optim.SGD, Adam, AdamW with
one param group holding every parameter in ``model.parameters()`` order (not maximize).
"""

import numbers
import warnings

import numpy as np
import torch

import epk

nn = torch.nn


class Residual(nn.Module):
    """body(x) + shortcut(x) (shortcut None or an empty nn.Sequential = identity); epk's `residual` layer."""

    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body = body if isinstance(body, nn.Sequential) else nn.Sequential(body)
        self.shortcut = shortcut if isinstance(shortcut, nn.Sequential) else \
            nn.Sequential() if shortcut is None else nn.Sequential(shortcut)

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


class PositionalEmbedding(nn.Module):
    """x + weight, a learned position embedding ``weight`` [T, D] (epk's `positional_embedding` layer).

    Input [B, T, D] (or one sample [T, D]); the sequence length must be T.  ``weight`` starts N(0, 1),
    as nn.Embedding's; set it as you like (nn.init.zeros_(pe.weight), ...), only its values are recorded.
    """

    def __init__(self, num_positions, embedding_dim):
        super().__init__()
        self.num_positions, self.embedding_dim = int(num_positions), int(embedding_dim)
        self.weight = nn.Parameter(torch.empty(self.num_positions, self.embedding_dim))
        nn.init.normal_(self.weight)

    def forward(self, x):
        return x + self.weight


def causal_mask(T, device=None):
    """The boolean [T, T] mask of causal self-attention: True above the diagonal = not attended
    (position i attends to j <= i), nn.MultiheadAttention's attn_mask convention."""
    return torch.triu(torch.ones(T, T, dtype=torch.bool, device=device), diagonal=1)


class SelfAttention(nn.Module):
    """Multi-head self-attention on [B, T, D] (epk's `self_attention` layer): ``self.attn`` is
    ``nn.MultiheadAttention(D, num_heads, bias=bias, batch_first=True)`` (dropout 0), called as
    ``attn(x, x, x, need_weights=False, attn_mask=causal_mask(T) if causal else None)``.

    Parameters, in order: attn.in_proj_weight [3D, D] (the rows of W_q, W_k, W_v), attn.in_proj_bias
    [3D], attn.out_proj.weight [D, D], attn.out_proj.bias [D] (the biases only with bias=True); torch's
    init: in_proj_weight Xavier-uniform, out_proj.weight as nn.Linear's, the biases 0.

    torch 1.13: in eval mode under torch.no_grad, without a mask (causal=False) and with an even
    num_heads, MultiheadAttention takes its "fast path" (torch._native_multi_head_attention), which
    fails with bias=False ("qkv_bias must be Tensor"); training mode or autograd on takes the ordinary
    path, which is the one the format describes.
    """

    def __init__(self, embed_dim, num_heads, bias=True, causal=False):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, dropout=0.0, bias=bias, batch_first=True)
        self.causal = bool(causal)

    @property
    def num_heads(self):
        return self.attn.num_heads

    @property
    def embed_dim(self):
        return self.attn.embed_dim

    def forward(self, x):
        mask = causal_mask(x.shape[-2], x.device) if self.causal else None
        return self.attn(x, x, x, need_weights=False, attn_mask=mask)[0]


class Select(nn.Module):
    """x[:, index]: one token of each sequence, [B, T, D] -> [B, D] (epk's `select` layer; -1 = the last)."""

    def __init__(self, index=-1):
        super().__init__()
        self.index = int(index)

    def forward(self, x):
        return x[..., self.index, :]  # x[:, index] for a batch [B, T, D]

    def extra_repr(self):
        return "index=%d" % self.index


class MeanTokens(nn.Module):
    """x.mean(dim=1): the mean over the tokens, [B, T, D] -> [B, D] (epk's `mean_tokens` layer)."""

    def forward(self, x):
        return x.mean(dim=-2)  # dim=1 for a batch [B, T, D]


class UnsupportedModule(ValueError):
    """A module epk cannot represent: .name is its dotted name in the model."""

    def __init__(self, name, reason):
        super().__init__("%s: %s" % (name or "<model>", reason))
        self.name = name


def _pair(v):
    return list(v) if isinstance(v, (tuple, list, torch.Size)) else v


def _fields(m, keys):
    return {k: _pair(getattr(m, k)) for k in keys}


def _layers(module, prefix, warn_dropout):
    """The manifest's layer list of `module` (a Sequential or one module)."""
    items = list(module.named_children()) if isinstance(module, nn.Sequential) else [("", module)]
    out = []
    for child_name, m in items:
        name = "%s.%s" % (prefix, child_name) if prefix and child_name else (prefix or child_name)
        if isinstance(m, nn.Sequential):
            out += _layers(m, name, warn_dropout)
        elif isinstance(m, Residual):
            out.append({"type": "residual", "body": _layers(m.body, name + ".body", warn_dropout),
                        "shortcut": _layers(m.shortcut, name + ".shortcut", warn_dropout)})
        elif isinstance(m, nn.Linear):
            out.append({"type": "linear", "in_features": m.in_features, "out_features": m.out_features,
                        "bias": m.bias is not None})
        elif isinstance(m, nn.Conv2d):
            layer = {"type": "conv2d", **_fields(m, ["in_channels", "out_channels", "kernel_size", "stride", "padding",
                                                      "dilation", "groups", "padding_mode"]),
                     "bias": m.bias is not None}
            out.append(layer)
        elif isinstance(m, nn.MaxPool2d):
            out.append({"type": "max_pool2d", **_fields(m, ["kernel_size", "stride", "padding", "dilation",
                                                            "ceil_mode", "return_indices"])})
        elif isinstance(m, nn.AvgPool2d):
            out.append({"type": "avg_pool2d", **_fields(m, ["kernel_size", "stride", "padding", "ceil_mode",
                                                            "count_include_pad", "divisor_override"])})
        elif isinstance(m, nn.Flatten):
            out.append({"type": "flatten", **_fields(m, ["start_dim", "end_dim"])})
        elif isinstance(m, nn.LayerNorm):
            layer = {"type": "layer_norm", **_fields(m, ["normalized_shape", "eps", "elementwise_affine"])}
            if m.elementwise_affine:
                layer["bias"] = m.bias is not None
            out.append(layer)
        elif isinstance(m, nn.ReLU):
            out.append({"type": "relu"})
        elif isinstance(m, nn.LeakyReLU):
            out.append({"type": "leaky_relu", "negative_slope": m.negative_slope})
        elif isinstance(m, nn.Tanh):
            out.append({"type": "tanh"})
        elif isinstance(m, nn.Sigmoid):
            out.append({"type": "sigmoid"})
        elif isinstance(m, nn.Softplus):
            if m.beta != 1:
                raise UnsupportedModule(name, "Softplus with beta %g: epk's softplus has beta 1" % m.beta)
            out.append({"type": "softplus"})
        elif isinstance(m, nn.GELU):
            if getattr(m, "approximate", "none") != "none":
                raise UnsupportedModule(name, "GELU(approximate=%r): epk's gelu is the exact erf form" % m.approximate)
            out.append({"type": "gelu"})
        elif isinstance(m, nn.Identity):
            continue
        elif isinstance(m, nn.Embedding):
            for field, default in (("padding_idx", None), ("max_norm", None), ("scale_grad_by_freq", False),
                                   ("sparse", False)):
                if getattr(m, field) != default:
                    raise UnsupportedModule(name, "Embedding(%s=%r): epk's embedding is the plain lookup weight[id] "
                                                  "(padding_idx, max_norm, scale_grad_by_freq and sparse are not "
                                                  "implemented)" % (field, getattr(m, field)))
            out.append({"type": "embedding", "num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim})
        elif isinstance(m, PositionalEmbedding):
            out.append({"type": "positional_embedding"})
        elif isinstance(m, SelfAttention):
            a = m.attn
            why = ("dropout=%g (random masks a trace does not record)" % a.dropout if a.dropout else
                   "add_bias_kv" if a.bias_k is not None or a.bias_v is not None else
                   "add_zero_attn" if a.add_zero_attn else
                   "kdim/vdim other than embed_dim" if not a._qkv_same_embed_dim else
                   "batch_first=False" if not a.batch_first else
                   "in_proj_bias and out_proj.bias not both present or both absent"
                   if (a.in_proj_bias is None) != (a.out_proj.bias is None) else None)
            if why:
                raise UnsupportedModule(name, "SelfAttention whose MultiheadAttention has %s: epk's self_attention is "
                                              "MultiheadAttention(D, H, bias=, batch_first=True) with dropout 0"
                                        % why)
            out.append({"type": "self_attention", "num_heads": a.num_heads, "bias": a.in_proj_bias is not None,
                        "causal": bool(m.causal)})
        elif isinstance(m, Select):
            out.append({"type": "select", "index": int(m.index)})
        elif isinstance(m, MeanTokens):
            out.append({"type": "mean_tokens"})
        elif isinstance(m, nn.MultiheadAttention):
            raise UnsupportedModule(name, "a bare MultiheadAttention takes (query, key, value) and returns a tuple, "
                                          "so it is not a layer of a Sequential: use epk.torch.SelfAttention(D, "
                                          "num_heads, bias=, causal=), which wraps one and calls attn(x, x, x, "
                                          "need_weights=False, attn_mask=)")
        elif isinstance(m, (nn.Transformer, nn.TransformerEncoder, nn.TransformerDecoder, nn.TransformerEncoderLayer,
                            nn.TransformerDecoderLayer)):
            raise UnsupportedModule(name, "%s is not a layer epk supports (its layers are hidden in its forward, with "
                                          "dropout by default): build the block from epk.torch.Residual, "
                                          "nn.LayerNorm, epk.torch.SelfAttention, nn.Linear and an activation"
                                    % type(m).__name__)
        elif isinstance(m, nn.Dropout):
            if m.p > 0:
                warn_dropout.append(name)
            continue  # identity at evaluation; in training its random masks are not recorded
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            raise UnsupportedModule(name, "%s couples the samples of a batch (its statistics): not a per-sample "
                                          "network, so no path kernel; use LayerNorm" % type(m).__name__)
        else:
            raise UnsupportedModule(name, "%s is not a layer epk supports (Linear, Conv2d, MaxPool2d, AvgPool2d, "
                                          "Flatten, LayerNorm, ReLU, LeakyReLU, Tanh, Sigmoid, Softplus, GELU, "
                                          "Identity, Dropout, Sequential, Embedding, epk.torch.Residual, "
                                          "epk.torch.PositionalEmbedding, epk.torch.SelfAttention, epk.torch.Select, "
                                          "epk.torch.MeanTokens)" % type(m).__name__)
    return out


def model_manifest(model, input_shape, input_dtype="float"):
    """The manifest's model section for `model` on samples of `input_shape` (UnsupportedModule if it cannot).

    input_dtype "int64": the samples are token ids [T] and the first layer must be an nn.Embedding; the
    section then says ``"input_dtype": "int64"`` (left out for "float", the format's default)."""
    if input_dtype not in ("float", "int64"):
        raise ValueError("epk.torch: input_dtype %r: expected 'float' or 'int64'" % (input_dtype,))
    dropped = []
    layers = _layers(model, "", dropped)
    if dropped and model.training:
        warnings.warn("epk.torch: %s: Dropout in training mode changes the function with random masks that a "
                      "trace does not record; it is left out of the manifest, so epk will find the recorded path "
                      "is not the declared training (model.eval() or p=0 to record an exact run)"
                      % ", ".join(dropped), stacklevel=3)
    embedding_first = bool(layers) and layers[0]["type"] == "embedding"
    if input_dtype == "int64" and not embedding_first:
        raise ValueError("epk.torch: the inputs are integers (token ids) but the model does not begin with an "
                         "nn.Embedding (give float inputs, or an embedding first)")
    if input_dtype == "int64" and len(input_shape) != 1:
        raise ValueError("epk.torch: token inputs must be [N, T] (one sequence of ids per row), found a sample "
                         "shape %s" % (list(input_shape),))
    if input_dtype == "float" and embedding_first:
        raise ValueError("epk.torch: the model begins with an nn.Embedding but the inputs are not integers: give "
                         "the token ids as an integer tensor (torch.long)")
    part = {"input_shape": [int(v) for v in input_shape]}
    if input_dtype == "int64":
        part["input_dtype"] = "int64"
    part["layers"] = layers
    return part


def _loss_manifest(loss, reduction):
    if isinstance(loss, str):
        if loss not in ("cross_entropy", "mse"):
            raise ValueError("epk.torch: loss %r: expected 'cross_entropy' or 'mse'" % loss)
        return {"type": loss, "reduction": reduction}
    if isinstance(loss, nn.CrossEntropyLoss):
        if loss.weight is not None or getattr(loss, "label_smoothing", 0.0) != 0 or loss.ignore_index != -100:
            raise ValueError("epk.torch: CrossEntropyLoss with weight, label_smoothing or ignore_index is not "
                             "supported (plain cross entropy only)")
        kind = "cross_entropy"
    elif isinstance(loss, nn.MSELoss):
        kind = "mse"
    else:
        raise ValueError("epk.torch: the loss %s is not supported (nn.CrossEntropyLoss, nn.MSELoss, or "
                         "loss='cross_entropy'|'mse')" % type(loss).__name__)
    if loss.reduction not in ("mean", "sum"):
        raise ValueError("epk.torch: loss reduction %r: expected 'mean' or 'sum'" % loss.reduction)
    return {"type": kind, "reduction": loss.reduction}


_STATE_KEYS = {"momentum_buffer": "init_momentum_buffer", "exp_avg": "init_exp_avg",
               "exp_avg_sq": "init_exp_avg_sq", "max_exp_avg_sq": "init_max_exp_avg_sq"}


def _numpy(t):
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy()
    return np.asarray(t)


class Recorder:
    """Records a torch training run step by step; ``save`` writes an epk trace, ``verify`` checks it."""

    def __init__(self, model, optimizer, loss, x_train, y_train, x_test=None, reduction="mean", initial_step=None):
        self.model, self.optimizer = model, optimizer
        params = list(model.parameters())
        if len(optimizer.param_groups) != 1 or [id(p) for p in optimizer.param_groups[0]["params"]] != \
                [id(p) for p in params]:
            raise ValueError("epk.torch: the optimizer must hold one param group with every parameter of the model, "
                             "in model.parameters() order")
        self._params = params
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1 or next(iter(dtypes)) not in (torch.float32, torch.float64):
            raise ValueError("epk.torch: the parameters must all be float32 or all float64, not %s" % sorted(map(str, dtypes)))
        self.dtype = np.float32 if next(iter(dtypes)) == torch.float32 else np.float64
        self.x_train = np.ascontiguousarray(_numpy(x_train))
        self.y_train = np.ascontiguousarray(_numpy(y_train))
        if self.y_train.dtype.kind in "iu":
            self.y_train = self.y_train.astype(np.int64)
        self.x_test = None if x_test is None else np.ascontiguousarray(_numpy(x_test))
        # token ids (integer inputs) are written as <i8, and the manifest says input_dtype int64
        tokens = self.x_train.dtype.kind in "iu"
        if self.x_test is not None and (self.x_test.dtype.kind in "iu") != tokens:
            raise ValueError("epk.torch: x_train is %s but x_test is %s: both token ids (integers) or both real"
                             % (self.x_train.dtype, self.x_test.dtype))
        if tokens:
            self.x_train = self.x_train.astype(np.int64)
            if self.x_test is not None:
                self.x_test = self.x_test.astype(np.int64)
        self.model_part = model_manifest(model, self.x_train.shape[1:], "int64" if tokens else "float")
        self.loss_part = _loss_manifest(loss, reduction)
        self.group = optimizer.param_groups[0]
        self.kind = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam", torch.optim.AdamW: "adamw"}.get(type(optimizer))
        if self.kind is None:
            raise ValueError("epk.torch: %s is not supported (torch.optim.SGD, Adam, AdamW)" % type(optimizer).__name__)
        if self.group.get("maximize", False):
            raise ValueError("epk.torch: maximize=True is not supported")
        self.state, self.initial_step = self._initial_state(initial_step)
        self.rows = [self._flat()]
        self.rates, self.batches, self._pending = [], [], None
        original = optimizer.step

        def step(*args, **kwargs):  # the rate before the step, the parameters after it
            rate = float(self.group["lr"])
            out = original(*args, **kwargs)
            self._pending = (rate, self._flat())
            return out

        if hasattr(original, "_with_counter"):  # a scheduler made before the recorder counts through us
            step._with_counter = True
        optimizer.step = step

    def _flat(self):
        with torch.no_grad():
            return torch.nn.utils.parameters_to_vector(self._params).detach().cpu().numpy().astype(self.dtype)

    def _initial_state(self, initial_step):
        st = self.optimizer.state
        # (torch's plain SGD keeps momentum_buffer = None: no state)
        if not any(v is not None for p in self._params for v in st[p].values()):
            if initial_step not in (None, 0):
                raise ValueError("epk.torch: initial_step=%r but the optimizer has no state" % initial_step)
            return {}, 0
        out, steps = {}, set()
        for key, file in _STATE_KEYS.items():
            if all(key in st[p] and st[p][key] is not None for p in self._params):
                out[file] = torch.nn.utils.parameters_to_vector([st[p][key] for p in self._params]) \
                    .detach().cpu().numpy().astype(np.float64)
        for p in self._params:
            if "step" in st[p]:
                steps.add(float(st[p]["step"]))
        if len(steps) > 1:
            raise ValueError("epk.torch: the parameters disagree on the optimizer's step count %s" % sorted(steps))
        if steps:
            found = int(steps.pop())
            if initial_step not in (None, found):
                raise ValueError("epk.torch: initial_step=%r but the optimizer's state says %d" % (initial_step, found))
            return out, found
        if initial_step is None or initial_step < 1:
            raise ValueError("epk.torch: a resumed SGD run (a momentum buffer exists): give initial_step=, the steps "
                             "taken before (torch's SGD does not count them)")
        return out, int(initial_step)

    def step(self, batch=None):
        """Record the step just taken (call after ``optimizer.step()``): ``batch`` = the indices of the
        training rows in it (an int tensor or array), None for the full batch."""
        if self._pending is None:
            raise RuntimeError("epk.torch: rec.step() without an optimizer.step() since the last one")
        rate, row = self._pending
        self._pending = None
        if batch is not None:
            b = np.asarray(_numpy(batch)).reshape(-1)
            if b.dtype.kind not in "iu":
                raise ValueError("epk.torch: batch indices must be integers, not %s" % b.dtype)
            batch = b.astype(np.int64)
        if self.batches and (self.batches[0] is None) != (batch is None):
            raise ValueError("epk.torch: step %d: every step is full-batch or every step has indices" % len(self.rates))
        if self.batches and batch is not None and len(batch) != len(self.batches[0]):
            raise ValueError("epk.torch: step %d: batch of %d rows, earlier steps had %d (the format has one batch "
                             "size)" % (len(self.rates), len(batch), len(self.batches[0])))
        self.rates.append(rate)
        self.batches.append(batch)
        self.rows.append(row)

    def _optimizer_part(self):
        g = self.group
        o = {"type": self.kind, "steps": len(self.rates)}
        rates = np.asarray(self.rates, dtype=np.float64)
        constant = len(rates) > 0 and np.all(rates == rates[0])
        if constant:
            o["learning_rate"] = float(rates[0])
        if self.kind == "sgd":
            o.update(momentum=float(g["momentum"]), dampening=float(g["dampening"]), nesterov=bool(g["nesterov"]),
                     weight_decay=float(g["weight_decay"]))
        else:
            b1, b2 = g["betas"]
            o.update(betas=[float(b1), float(b2)], eps=float(g["eps"]), weight_decay=float(g["weight_decay"]),
                     amsgrad=bool(g["amsgrad"]))
        if self.initial_step:
            o["initial_step"] = self.initial_step
        return o, (None if constant else rates)

    def arrays(self):
        """The trace as a dict for ``epk.load`` / ``epk.verify``."""
        if not self.rates:
            raise RuntimeError("epk.torch: no step recorded")
        optimizer, rates = self._optimizer_part()
        d = {"manifest": {"format": "epk-trace", "version": 3, "model": self.model_part, "loss": self.loss_part,
                          "optimizer": optimizer},
             "x_train": self.x_train, "y_train": self.y_train, "params": np.stack(self.rows)}
        if rates is not None:
            d["learning_rates"] = rates
        if self.batches[0] is not None:
            d["batches"] = np.stack(self.batches)
        if self.x_test is not None:
            d["x_test"] = self.x_test
        d.update(self.state)
        return d

    def trace(self):
        """The validated ``epk.Trace`` (epk.TraceError naming the array and rule if it breaks one)."""
        return epk.load(self.arrays(), name="recorder")

    def save(self, directory):
        """Write the trace directory (created; it must not exist or be empty)."""
        epk.save(self.trace(), directory)

    def verify(self, precision="double", **kw):
        """``epk.verify`` of the recorded run in-process; ``epk.UnexplainedStepsError`` (naming the step) when
        the recorded steps are not the declared training — gradient clipping, a dropout left out, ..."""
        return epk.verify(self.trace(), precision=precision, name="recorder", **kw)

    def kernel(self, precision="double", **kw):
        return epk.kernel(self.trace(), precision=precision, name="recorder", **kw)
