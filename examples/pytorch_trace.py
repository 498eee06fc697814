#!/usr/bin/env python3
"""Train a small torch.nn.Sequential with torch.optim and write an epk trace.

The trace directory follows the epk training-trace format
(docs/trace-format.md): ``manifest.json``, ``x_train.npy``, ``y_train.npy``,
``params.npy`` ([S+1, P], the parameters before every step and after the
last) and/or ``init_params.npy`` ([P]), and optionally ``batches.npy``
([S, B] int64), ``learning_rates.npy`` ([S] float64) and ``x_test.npy``.
Plain SGD (the default) writes format version 1, exactly as before the
optimizer options existed; any other optimizer, or a recorded optimizer state,
writes version 2 (below); a model given with --model writes version 3 (below).

--misdescribe KIND writes a trace that does NOT describe the training, to test a verifier
(``epk verify`` must exit 1 on it): ``clip`` clips the gradient norm to half its first
value on every step (``clip_grad_norm_``); ``schedule`` decays the rate by 0.9 per step
with ``ExponentialLR`` and writes the constant rate; ``dropout`` trains with
``Dropout(0.2)`` after the first activation, left out of the manifest; ``skip`` (a --model
with a residual block of identity shortcut) writes the block's body without its skip
connection.

In addition it writes ``reference_outputs.npy`` (not part of the format):
the torch model's outputs after the last step, as float64 [M, C], at
``x_test`` or, when there is no test set, at the first min(10, N) training
points -- the same points ``epk predict`` reports, so the two can be compared
directly (see examples/check_against_pytorch.sh).

The data are synthetic Gaussian blobs drawn with NumPy from --seed: C class
centres N(0, 1.5^2 I) in D dimensions, each point its centre plus N(0, I)
(with --model, D = prod(input shape) and each point reshaped to the input
shape), or with ``--data digits`` the 8x8 digits of data/digits.csv (pixels
/ 16 in [0, 1], labels 0..9; the first --n-train rows for training, the next
--n-test as the test set; [N, 64] for the MLP, [N, *input_shape] with --model,
default 1x8x8). For ``--loss mse`` the targets [N, C] are the one-hot labels
or, with ``--mse-targets random``, standard-normal values.

Torch semantics reproduced by the format: ``cross_entropy`` / ``mse_loss``
with the chosen reduction (mse mean divides by |B|*C), GELU in its exact erf
form, leaky_relu with the given negative slope, softplus with beta = 1 (torch
switches to the identity above 20; keep inputs modest so that it never does).
With --per-step-lr the rate of every step is set on the optimizer's param
group before that step and recorded in learning_rates.npy.

Optimizers (torch.optim's own classes, single-tensor implementation:
``foreach=False`` where the installed torch accepts it):
  --optimizer sgd    torch.optim.SGD: --momentum, --dampening, --nesterov,
                     --weight-decay (all 0/off by default: plain SGD, version 1)
  --optimizer adam   torch.optim.Adam: --betas, --eps, --weight-decay (default 0),
                     --amsgrad
  --optimizer adamw  torch.optim.AdamW: the same, --weight-decay default 0.01
                     (torch's default)
Format version 2 writes every hyper-parameter explicitly in the manifest's
``optimizer`` object: sgd ``momentum``, ``dampening``, ``nesterov``,
``weight_decay``; adam/adamw ``betas`` [b1, b2], ``eps``, ``weight_decay``,
``amsgrad``. --manifest-optimizer minimal leaves out the fields at their
defaults (the reader's, torch's: AdamW's weight_decay 0.01), and
--manifest-optimizer torch writes the param group as torch holds it
(type "SGD"/"Adam"/"AdamW", "lr", "foreach", "maximize", ...), which the
format accepts as well.

--resume-after K trains K steps first with the same optimizer (rate --lr; the
minibatches, if any, drawn after the trace's own so that these are the same
for every K), and starts the trace there: the recorded or initial parameters
are those after K steps, ``optimizer.initial_step`` = K, and the optimizer's
state from ``opt.state_dict()`` is written flattened in parameters_to_vector
order as float64 [P]: ``init_momentum_buffer.npy`` (SGD with momentum),
``init_exp_avg.npy`` and ``init_exp_avg_sq.npy`` (Adam/AdamW),
``init_max_exp_avg_sq.npy`` (amsgrad). The S steps of the trace are the steps
after those K. Before writing, the script checks (and fails otherwise) that
the flattened state equals parameters_to_vector of the per-parameter state,
and that a fresh model and optimizer loaded from the written arrays continue
the run bit for bit as the uninterrupted one did.

Version 3 (--model FILE.json, --input-shape D or C,H,W): the network is
read from a model file, a JSON list of layers in the vocabulary of trace
format version 3 (docs/trace-format.md, "model": linear conv2d max_pool2d
avg_pool2d flatten layer_norm residual and the activations; canonical or
torch class names, torch's defaults for absent fields) or an object
{"input_shape": [...], "layers": [...]}; examples in examples/models/. It is
built as an nn.Sequential of nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d,
nn.Flatten, nn.LayerNorm, nn.Linear and the activations, a ``residual`` as
Residual(body, shortcut) (forward body(x) + shortcut(x), each an
nn.Sequential, body registered first); input sizes (in_features,
in_channels) follow from the shape flowing in. x_train.npy / x_test.npy are
[N, *input_shape] and the manifest's model is {"input_shape": [...],
"layers": [...]} with "version": 3: every field explicit under its canonical
name, or with ``--manifest-layers torch`` torch's class names (Conv2d,
ReLU, Residual, ...) with the modules' attributes as fields. Every optimizer,
record, batch and rate option works as for the MLP. Before training the script
checks (and fails otherwise) that each module maps the shape the format's rules
give, that the model's output is [C], that the parameter tensors torch
registers are, in order and shape, those the format's layout rules give for
the manifest (so P and the order of parameters_to_vector are the format's),
and that a torch-named manifest reads back as the same layers.

Requires only Python 3, NumPy and PyTorch.

Examples:
    python3 examples/pytorch_trace.py --out /tmp/t --activation tanh \\
        --hidden 16,16 --steps 50 --lr 0.1 --record params
    python3 examples/pytorch_trace.py --out /tmp/a --optimizer adamw --lr 0.01 \\
        --steps 30 --resume-after 10 --record init
    python3 examples/pytorch_trace.py --out /tmp/c --model examples/models/cnn_relu_maxpool.json \\
        --data digits --input-shape 1,8,8 --steps 30 --lr 0.2
    ./build/epk predict /tmp/t --json
"""

import argparse
import inspect
import json
import math
import os
import sys

import numpy as np
import torch

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "softplus", "gelu", "identity")
DIGITS_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "digits.csv")
DIGITS_ROWS = 1797


def parse_hidden(text):
    """'16,16' -> [16, 16]; '' or 'none' -> [] (no hidden layer)."""
    text = text.strip()
    if text == "" or text.lower() == "none":
        return []
    widths = [int(v) for v in text.split(",")]
    if any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError("hidden widths must be >= 1")
    return widths


def activation_module(name, negative_slope):
    if name == "relu":
        return torch.nn.ReLU()
    if name == "leaky_relu":
        return torch.nn.LeakyReLU(negative_slope=negative_slope)
    if name == "tanh":
        return torch.nn.Tanh()
    if name == "sigmoid":
        return torch.nn.Sigmoid()
    if name == "softplus":
        return torch.nn.Softplus(beta=1)  # threshold 20: identity above it
    if name == "gelu":
        return torch.nn.GELU(approximate="none")  # exact erf form
    if name == "identity":
        return torch.nn.Identity()
    raise ValueError("unknown activation " + name)


def activation_manifest(name, negative_slope):
    layer = {"type": name}
    if name == "leaky_relu":
        layer["negative_slope"] = float(negative_slope)
    return layer


def build(args, d, c, dtype):
    """The Sequential and the manifest's model section describing it."""
    modules, layers = [], []
    width_in = d
    for h in args.hidden:
        modules.append(torch.nn.Linear(width_in, h, bias=not args.no_bias))
        layers.append({"type": "linear", "out_features": h, "bias": not args.no_bias})
        modules.append(activation_module(args.activation, args.negative_slope))
        layers.append(activation_manifest(args.activation, args.negative_slope))
        width_in = h
    modules.append(torch.nn.Linear(width_in, c, bias=not args.no_bias))
    layers.append({"type": "linear", "out_features": c, "bias": not args.no_bias})
    model = torch.nn.Sequential(*modules).to(dtype)
    return model, {"input_dim": d, "layers": layers}


# ---------------------------------------------------------------------------
# Trace format version 3: a model of layers beyond the MLP (--model FILE.json)
# ---------------------------------------------------------------------------

class ModelError(ValueError):
    """A model file that breaks the version 3 rules (docs/trace-format.md, "model")."""


class Residual(torch.nn.Module):
    """body(x) + shortcut(x); body registered before shortcut (the parameter order)."""

    def __init__(self, body, shortcut):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


V3_KINDS = ("linear", "conv2d", "max_pool2d", "avg_pool2d", "flatten", "layer_norm", "residual") + ACTIVATIONS
TORCH_CLASS = {"linear": "Linear", "conv2d": "Conv2d", "max_pool2d": "MaxPool2d", "avg_pool2d": "AvgPool2d",
               "flatten": "Flatten", "layer_norm": "LayerNorm", "residual": "Residual", "relu": "ReLU",
               "leaky_relu": "LeakyReLU", "tanh": "Tanh", "sigmoid": "Sigmoid", "softplus": "Softplus",
               "gelu": "GELU", "identity": "Identity"}
FROM_TORCH_CLASS = {v: k for k, v in TORCH_CLASS.items()}
_BATCH_NORM = "batch norm in training mode couples the samples of a batch (f(x_i) depends on the other rows), " \
              "so there is no per-sample kernel"
_DROPOUT = "dropout draws random masks that the trace does not record"
REFUSED_LAYERS = dict(
    [(t, _BATCH_NORM) for t in ("batch_norm", "batch_norm1d", "batch_norm2d", "batch_norm3d", "BatchNorm1d",
                                "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm")] +
    [(t, _DROPOUT) for t in ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "Dropout",
                             "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout")])
# The fields a model file (and the reader) accepts for each kind, besides "type".
LAYER_FIELDS = {
    "linear": {"out_features", "bias", "in_features"},
    "conv2d": {"out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias", "in_channels",
               "padding_mode"},
    "max_pool2d": {"kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"},
    "avg_pool2d": {"kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"},
    "flatten": {"start_dim", "end_dim"},
    "layer_norm": {"normalized_shape", "eps", "elementwise_affine", "bias"},
    "residual": {"body", "shortcut"},
    "leaky_relu": {"negative_slope", "inplace"},
    "gelu": {"approximate", "inplace"},
}
# The torch attributes written by --manifest-layers torch (docs/trace-format.md, "Writing one from
# PyTorch"), plus "bias" (whether the module holds one) for Linear, Conv2d and LayerNorm.
TORCH_FIELDS = {
    "Linear": ["in_features", "out_features"],
    "Conv2d": ["in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
               "padding_mode"],
    "MaxPool2d": ["kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"],
    "AvgPool2d": ["kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"],
    "Flatten": ["start_dim", "end_dim"],
    "LayerNorm": ["normalized_shape", "eps", "elementwise_affine"],
    "LeakyReLU": ["negative_slope"],
    "GELU": ["approximate"],
}
LAYER_NORM_HAS_BIAS_ARG = "bias" in inspect.signature(torch.nn.LayerNorm.__init__).parameters  # torch >= 2.1


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _integer(v, what, lo):
    if not _is_int(v) or v < lo:
        raise ModelError("'%s' must be an integer >= %d, found %s" % (what, lo, json.dumps(v)))
    return v


def _boolean(v, what):
    if not isinstance(v, bool):
        raise ModelError("'%s' must be true or false, found %s" % (what, json.dumps(v)))
    return v


def _pair(v, what, lo):
    """A size of conv2d / the pools: an integer (both axes) or [h, w] -> [h, w]."""
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ModelError("'%s' must be an integer or a list [h, w]" % what)
        return [_integer(v[0], what + "[0]", lo), _integer(v[1], what + "[1]", lo)]
    n = _integer(v, what, lo)
    return [n, n]


def _require(ok, message):
    if not ok:
        raise ModelError(message)


def spatial_out(size, kernel, stride, padding, dilation):
    """torch's output size of a convolution / pool on one axis (ceil_mode false)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def read_layers(items, where, shape):
    """Validate a list of version 3 layers (canonical or torch class names, torch's defaults for
    absent fields) flowing from the sample shape `shape`. Returns (layers in canonical form with every
    field explicit -- the form epk's writer uses --, the shape flowing out)."""
    if not isinstance(items, list):
        raise ModelError("'%s' must be a list of layers" % where)
    out = []
    for i, item in enumerate(items):
        layer, shape = read_layer(item, "%s[%d]" % (where, i), shape)
        out.append(layer)
    return out, shape


def read_layer(l, where, shape):
    if not isinstance(l, dict):
        raise ModelError(where + " must be a JSON object")
    t = l.get("type")
    if not isinstance(t, str):
        raise ModelError("missing or non-string field '%s.type'" % where)
    if t in REFUSED_LAYERS:
        raise ModelError("%s: %s is not supported: %s" % (where, t, REFUSED_LAYERS[t]))
    kind = t if t in V3_KINDS else FROM_TORCH_CLASS.get(t)
    if kind is None:
        raise ModelError("unknown layer type '%s' (%s)" % (t, where))
    allowed = LAYER_FIELDS.get(kind, {"inplace"})
    for key in l:
        if key != "type" and key not in allowed:
            raise ModelError("unknown field '%s' in %s (%s)" % (key, where, t))
    f = lambda key: where + "." + key  # noqa: E731  (a field's path, for messages)
    shape = list(shape)

    if kind in ACTIVATIONS:
        if "inplace" in l:
            _boolean(l["inplace"], f("inplace"))
        layer = {"type": kind}
        if kind == "leaky_relu":
            slope = l.get("negative_slope", 0.01)
            if not isinstance(slope, (int, float)) or isinstance(slope, bool) or not math.isfinite(slope):
                raise ModelError("'%s' must be a finite number" % f("negative_slope"))
            layer["negative_slope"] = float(slope)
        if kind == "gelu" and l.get("approximate", "none") != "none":
            raise ModelError("gelu approximate %s is not implemented (%s)" % (json.dumps(l["approximate"]), where))
        return layer, shape

    if kind == "linear":
        _require("out_features" in l, "missing field '%s'" % f("out_features"))
        out = _integer(l["out_features"], f("out_features"), 1)
        if "in_features" in l and _integer(l["in_features"], f("in_features"), 1) != shape[-1]:
            raise ModelError("'%s' is %d but the width flowing into it is %d" % (
                f("in_features"), l["in_features"], shape[-1]))
        return {"type": kind, "out_features": out, "bias": _boolean(l.get("bias", True), f("bias"))}, \
            shape[:-1] + [out]

    if kind == "conv2d":
        for key in ("out_channels", "kernel_size"):
            _require(key in l, "missing field '%s'" % f(key))
        out = _integer(l["out_channels"], f("out_channels"), 1)
        kernel = _pair(l["kernel_size"], f("kernel_size"), 1)
        stride = _pair(l.get("stride", 1), f("stride"), 1)
        padding = l.get("padding", 0)
        if isinstance(padding, str):
            _require(padding == "valid", "'%s' must be an integer, [h, w] or \"valid\" (padding \"same\" is not "
                                         "implemented: give the integer padding)" % f("padding"))
            padding = 0
        padding = _pair(padding, f("padding"), 0)
        dilation = _pair(l.get("dilation", 1), f("dilation"), 1)
        groups = _integer(l.get("groups", 1), f("groups"), 1)
        bias = _boolean(l.get("bias", True), f("bias"))
        _require(l.get("padding_mode", "zeros") == "zeros",
                 "'%s' must be \"zeros\" (other padding modes are not implemented)" % f("padding_mode"))
        _require(len(shape) == 3, "%s: conv2d needs an input [C, H, W], found %s" % (where, shape))
        if "in_channels" in l and _integer(l["in_channels"], f("in_channels"), 1) != shape[0]:
            raise ModelError("'%s' is %d but the channels flowing into it are %d" % (
                f("in_channels"), l["in_channels"], shape[0]))
        _require(shape[0] % groups == 0 and out % groups == 0,
                 "%s: conv2d channels in (%d) and out (%d) must both be divisible by groups (%d)" % (
                     where, shape[0], out, groups))
        hw = [spatial_out(shape[1 + a], kernel[a], stride[a], padding[a], dilation[a]) for a in (0, 1)]
        _require(min(hw) >= 1, "%s: conv2d kernel %dx%d is larger than the padded input (a zero-size output)"
                 % (where, kernel[0], kernel[1]))
        return {"type": kind, "out_channels": out, "kernel_size": kernel, "stride": stride, "padding": padding,
                "dilation": dilation, "groups": groups, "bias": bias}, [out] + hw

    if kind in ("max_pool2d", "avg_pool2d"):
        _require("kernel_size" in l, "missing field '%s'" % f("kernel_size"))
        kernel = _pair(l["kernel_size"], f("kernel_size"), 1)
        stride = l.get("stride")
        stride = list(kernel) if stride is None else _pair(stride, f("stride"), 1)
        padding = _pair(l.get("padding", 0), f("padding"), 0)
        dilation = _pair(l.get("dilation", 1), f("dilation"), 1) if kind == "max_pool2d" else [1, 1]
        _require(not _boolean(l.get("ceil_mode", False), f("ceil_mode")),
                 "'%s' must be false (ceil_mode is not implemented)" % f("ceil_mode"))
        _require(not _boolean(l.get("return_indices", False), f("return_indices")),
                 "'%s' must be false" % f("return_indices"))
        _require(_boolean(l.get("count_include_pad", True), f("count_include_pad")),
                 "'%s' must be true (count_include_pad=False is not implemented)" % f("count_include_pad"))
        _require(l.get("divisor_override") is None,
                 "'%s' must be null (divisor_override is not implemented)" % f("divisor_override"))
        _require(len(shape) == 3, "%s: %s needs an input [C, H, W], found %s" % (where, kind, shape))
        _require(all(2 * padding[a] <= kernel[a] for a in (0, 1)),
                 "%s: %s padding must be at most half the kernel size" % (where, kind))
        hw = [spatial_out(shape[1 + a], kernel[a], stride[a], padding[a], dilation[a]) for a in (0, 1)]
        _require(min(hw) >= 1, "%s: %s kernel %dx%d is larger than the padded input (a zero-size output)"
                 % (where, kind, kernel[0], kernel[1]))
        layer = {"type": kind, "kernel_size": kernel, "stride": stride, "padding": padding}
        if kind == "max_pool2d":
            layer["dilation"] = dilation
        return layer, [shape[0]] + hw

    if kind == "flatten":
        _require(l.get("start_dim", 1) == 1 and _is_int(l.get("start_dim", 1)),
                 "'%s' must be 1 (flatten all but the batch axis)" % f("start_dim"))
        _require(l.get("end_dim", -1) == -1 and _is_int(l.get("end_dim", -1)),
                 "'%s' must be -1 (flatten all but the batch axis)" % f("end_dim"))
        return {"type": kind}, [int(np.prod(shape))]

    if kind == "layer_norm":
        _require("normalized_shape" in l, "missing field '%s'" % f("normalized_shape"))
        ns = l["normalized_shape"]
        if isinstance(ns, (list, tuple)):
            _require(len(ns) > 0, "'%s' must not be empty" % f("normalized_shape"))
            ns = [_integer(v, "%s[%d]" % (f("normalized_shape"), a), 1) for a, v in enumerate(ns)]
        else:
            ns = [_integer(ns, f("normalized_shape"), 1)]
        eps = l.get("eps", 1e-5)
        _require(isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and eps >= 0,
                 "'%s' must be a finite number >= 0" % f("eps"))
        affine = _boolean(l.get("elementwise_affine", True), f("elementwise_affine"))
        bias = _boolean(l.get("bias", True), f("bias"))
        _require(len(ns) <= len(shape) and shape[len(shape) - len(ns):] == ns,
                 "%s: layer_norm normalized_shape %s is not a suffix of the incoming shape %s" % (where, ns, shape))
        # "bias" says whether the layer holds a beta: never without elementwise_affine (torch's rule)
        return {"type": kind, "normalized_shape": ns, "eps": float(eps), "elementwise_affine": affine,
                "bias": affine and bias}, shape

    # residual
    _require("body" in l, "missing field '%s'" % f("body"))
    body, b = read_layers(l["body"], f("body"), shape)
    _require(len(body) > 0, "'%s' must not be empty" % f("body"))
    shortcut, s = read_layers(l.get("shortcut", []), f("shortcut"), shape)
    _require(b == s, "%s: residual branches end in different shapes: body %s, shortcut %s" % (where, b, s))
    return {"type": kind, "body": body, "shortcut": shortcut}, b


def _torch_size(pair):
    """[h, w] -> h when h == w (as one would write it in torch), else (h, w)."""
    return pair[0] if pair[0] == pair[1] else tuple(pair)


def torch_sequential(layers, shape):
    """nn.Sequential of the canonical `layers` on samples of `shape` (input sizes from the shape
    flowing in). Each module's output shape is checked against the formula by a forward pass of zeros."""
    modules = []
    for layer in layers:
        kind = layer["type"]
        if kind == "linear":
            m = torch.nn.Linear(shape[-1], layer["out_features"], bias=layer["bias"])
        elif kind == "conv2d":
            m = torch.nn.Conv2d(shape[0], layer["out_channels"], tuple(layer["kernel_size"]),
                                stride=tuple(layer["stride"]), padding=tuple(layer["padding"]),
                                dilation=tuple(layer["dilation"]), groups=layer["groups"], bias=layer["bias"],
                                padding_mode="zeros")
        elif kind == "max_pool2d":
            m = torch.nn.MaxPool2d(_torch_size(layer["kernel_size"]), stride=_torch_size(layer["stride"]),
                                   padding=_torch_size(layer["padding"]), dilation=_torch_size(layer["dilation"]))
        elif kind == "avg_pool2d":
            m = torch.nn.AvgPool2d(_torch_size(layer["kernel_size"]), stride=_torch_size(layer["stride"]),
                                   padding=_torch_size(layer["padding"]))
        elif kind == "flatten":
            m = torch.nn.Flatten()
        elif kind == "layer_norm":
            kw = {}
            if not layer["bias"] and layer["elementwise_affine"]:
                if not LAYER_NORM_HAS_BIAS_ARG:
                    raise ModelError("layer_norm bias false needs torch >= 2.1 (this is %s)" % torch.__version__)
                kw["bias"] = False
            m = torch.nn.LayerNorm(layer["normalized_shape"], eps=layer["eps"],
                                   elementwise_affine=layer["elementwise_affine"], **kw)
        elif kind == "residual":
            m = Residual(torch_sequential(layer["body"], shape), torch_sequential(layer["shortcut"], shape))
        else:
            m = activation_module(kind, layer.get("negative_slope", 0.01))
        _, expected = read_layer(layer, "layer", shape)
        with torch.no_grad():
            got = list(m(torch.zeros([1] + list(shape), dtype=torch.get_default_dtype())).shape[1:])
        if got != expected:
            raise RuntimeError("shape check: torch's %s maps %s to %s, the format's rules say %s" % (
                type(m).__name__, shape, got, expected))
        modules.append(m)
        shape = expected
    return torch.nn.Sequential(*modules)


def torch_layers(seq):
    """The manifest's layers as torch holds them (--manifest-layers torch): class names as types, the
    module's attributes as fields (tuples as lists)."""
    out = []
    for m in seq:
        name = "Residual" if isinstance(m, Residual) else type(m).__name__
        if name not in FROM_TORCH_CLASS:
            raise RuntimeError("no format type for torch module %s" % name)
        layer = {"type": name}
        if isinstance(m, Residual):
            layer.update(body=torch_layers(m.body), shortcut=torch_layers(m.shortcut))
        for key in TORCH_FIELDS.get(name, []):
            v = getattr(m, key)
            layer[key] = list(v) if isinstance(v, (tuple, list, torch.Size)) else v
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.LayerNorm)):
            layer["bias"] = m.bias is not None
        out.append(layer)
    return out


def layout_shapes(layers, shape):
    """The parameter tensors of `layers` (canonical) on samples of `shape`, in the order of
    docs/trace-format.md ("Parameter layout"), written from those rules alone: linear W [out, in]
    then b [out]; conv2d W [out, in/groups, kh, kw] then b [out]; layer_norm gamma then beta
    [normalized_shape] (only with elementwise_affine); residual: the body's, then the shortcut's."""
    shapes = []
    for layer in layers:
        kind = layer["type"]
        if kind == "linear":
            shapes.append((layer["out_features"], shape[-1]))
            if layer["bias"]:
                shapes.append((layer["out_features"],))
        elif kind == "conv2d":
            shapes.append((layer["out_channels"], shape[0] // layer["groups"]) + tuple(layer["kernel_size"]))
            if layer["bias"]:
                shapes.append((layer["out_channels"],))
        elif kind == "layer_norm" and layer["elementwise_affine"]:
            shapes.append(tuple(layer["normalized_shape"]))
            if layer["bias"]:
                shapes.append(tuple(layer["normalized_shape"]))
        elif kind == "residual":
            shapes += layout_shapes(layer["body"], shape) + layout_shapes(layer["shortcut"], shape)
        _, shape = read_layer(layer, "layer", shape)
    return shapes


def parse_shape(text):
    """'1,8,8' -> [1, 8, 8]; '16' -> [16]."""
    try:
        shape = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("an input shape is D or C,H,W (integers)") from None
    if not 1 <= len(shape) <= 3 or any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError("an input shape is 1 to 3 sizes >= 1: D or C,H,W")
    return shape


def load_model_file(path):
    """A model file: a JSON list of layers, or an object {"input_shape": [...], "layers": [...]} (a
    trace's "model"). Returns (layers, input_shape or None)."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    if isinstance(doc, list):
        return doc, None
    if not isinstance(doc, dict) or "layers" not in doc or set(doc) - {"layers", "input_shape", "input_dim"}:
        raise ModelError("%s: expected a list of layers or an object {\"input_shape\": [...], \"layers\": [...]}"
                         % path)
    if "input_shape" in doc and "input_dim" in doc:
        raise ModelError("%s: give input_shape or input_dim, not both" % path)
    if "input_dim" in doc:
        return doc["layers"], [_integer(doc["input_dim"], "input_dim", 1)]
    if "input_shape" in doc:
        s = doc["input_shape"]
        if not isinstance(s, list) or not 1 <= len(s) <= 3:
            raise ModelError("%s: input_shape must be a list of 1 to 3 sizes" % path)
        return doc["layers"], [_integer(v, "input_shape[%d]" % a, 1) for a, v in enumerate(s)]
    return doc["layers"], None


def check_model_v3(model, layers, input_shape, manifest_layers, classes):
    """Self-checks of a --model network before it trains: the output is [classes]; the parameters
    torch registered are, tensor by tensor and in order, those the manifest's layout rules give, so that
    parameters_to_vector(model.parameters()) is the format's w; the torch-named manifest (if written)
    reads back as the same canonical layers. Returns P."""
    with torch.no_grad():
        out = model(torch.zeros([2] + list(input_shape), dtype=next(model.parameters()).dtype))
    if list(out.shape) != [2, classes]:
        raise RuntimeError("shape check: the model maps [2, %s] to %s, expected [2, %d]" % (
            input_shape, list(out.shape), classes))
    expected = layout_shapes(layers, input_shape)
    got = [tuple(p.shape) for p in model.parameters()]
    if got != expected:
        raise RuntimeError("parameter layout check: torch registers %s, the manifest's layout rules give %s"
                           % (got, expected))
    count = sum(int(np.prod(s)) for s in expected)
    vec_len = torch.nn.utils.parameters_to_vector(model.parameters()).numel()
    if vec_len != count:
        raise RuntimeError("parameter layout check: P = %d, the manifest gives %d" % (vec_len, count))
    if manifest_layers is not layers:
        again, _ = read_layers(manifest_layers, "layers", input_shape)
        if again != layers:
            raise RuntimeError("torch-named manifest check: it reads back as %s, not %s" % (again, layers))
    return count


def load_digits(path, rows):
    """The first `rows` rows of the embedded digits CSV: pixels / 16 as float64 [rows, 64], labels [rows]."""
    data = np.loadtxt(path, delimiter=",", dtype=np.float64, max_rows=rows, ndmin=2)
    if data.shape[1] != 65:
        raise ValueError("%s: expected 65 columns (64 pixels and a label), found %d" % (path, data.shape[1]))
    labels = data[:, 64].astype(np.int64)
    if not np.array_equal(labels, data[:, 64]) or labels.min() < 0 or labels.max() > 9:
        raise ValueError("%s: labels must be integers 0..9" % path)
    return data[:, :64] / 16.0, labels


def make_data(args, rng):
    """Gaussian blobs: x [N+M, D] float64, labels [N+M] int64, mse targets [N+M, C]."""
    n = args.n_train + args.n_test
    d, c = args.input_dim, args.classes
    centres = rng.normal(0.0, 1.5, size=(c, d))
    labels = rng.integers(0, c, size=n).astype(np.int64)
    x = centres[labels] + rng.normal(0.0, 1.0, size=(n, d))
    if args.mse_targets == "onehot":
        targets = np.eye(c, dtype=np.float64)[labels]
    else:
        targets = rng.normal(0.0, 1.0, size=(n, c))
    return x, labels, targets


def without_skips(layers):
    """The layer list with every residual block of identity shortcut replaced by its body."""
    out = []
    for l in layers:
        kind = l.get("type")
        if kind in ("residual", "Residual") and not l.get("shortcut"):
            out += without_skips(l["body"])
        else:
            out.append(l)
    return out


def learning_rate_schedule(args):
    """Per-step rates: a cosine decay from lr to lr/10 with a small ripple."""
    s = args.steps
    rates = []
    for k in range(s):
        cosine = 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * k / max(s, 1)))
        ripple = 1.0 + 0.25 * math.sin(0.7 * k)
        rates.append(args.lr * cosine * ripple)
    return np.array(rates, dtype=np.float64)


def flat(model):
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().cpu().numpy().copy()


def save(path, array):
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    np.save(path, array, allow_pickle=False)


def parse_betas(text):
    """'0.9,0.999' -> (0.9, 0.999)."""
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError("betas must be two numbers B1,B2")
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError("betas must be two numbers B1,B2") from None


STATE_FILES = {  # torch state_dict key -> trace file of the recorded state
    "momentum_buffer": "init_momentum_buffer.npy",
    "exp_avg": "init_exp_avg.npy",
    "exp_avg_sq": "init_exp_avg_sq.npy",
    "max_exp_avg_sq": "init_max_exp_avg_sq.npy",
}


def is_plain_sgd(args):
    return args.optimizer == "sgd" and args.momentum == 0 and args.weight_decay == 0


def state_keys(args):
    """The per-parameter tensors the optimizer keeps (torch's state_dict keys)."""
    if args.optimizer == "sgd":
        return ["momentum_buffer"] if args.momentum != 0 else []
    return ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if args.amsgrad else [])


def make_optimizer(args, params):
    """torch.optim.SGD / Adam / AdamW with the options, single-tensor implementation."""
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[args.optimizer]
    if args.optimizer == "sgd":
        kw = dict(lr=args.lr, momentum=args.momentum, dampening=args.dampening,
                  weight_decay=args.weight_decay, nesterov=args.nesterov)
    else:
        kw = dict(lr=args.lr, betas=args.betas, eps=args.eps, weight_decay=args.weight_decay,
                  amsgrad=args.amsgrad)
    if "foreach" in inspect.signature(cls.__init__).parameters:
        kw["foreach"] = False  # the for-loop implementation (torch's CPU default anyway)
    return cls(params, **kw)


def optimizer_manifest(args, class_name, group, initial_step):
    """The manifest's optimizer object (format version 2): canonical names (with
    --manifest-optimizer minimal, only the fields not at their defaults), or with
    --manifest-optimizer torch the param group `group` as torch keeps it
    (dict(opt.param_groups[0]) without 'params': lr, foreach, maximize, ...) and
    the class name `class_name` as the type."""
    if args.manifest_optimizer == "torch":
        o = {"type": class_name, "steps": args.steps}
        o.update({k: v for k, v in group.items() if k != "params"})
        if "betas" in o:
            o["betas"] = [float(b) for b in o["betas"]]
    else:
        o = {"type": args.optimizer, "learning_rate": float(args.lr), "steps": args.steps}
        if args.optimizer == "sgd":
            o.update(momentum=float(args.momentum), dampening=float(args.dampening),
                     nesterov=bool(args.nesterov), weight_decay=float(args.weight_decay))
        else:
            o.update(betas=[float(b) for b in args.betas], eps=float(args.eps),
                     weight_decay=float(args.weight_decay), amsgrad=bool(args.amsgrad))
        if args.manifest_optimizer == "minimal":
            # leave out every field at the format's default (torch's): the reader supplies it
            defaults = {"momentum": 0.0, "dampening": 0.0, "nesterov": False, "betas": [0.9, 0.999],
                        "eps": 1e-8, "amsgrad": False,
                        "weight_decay": 0.01 if args.optimizer == "adamw" else 0.0}
            o = {k: v for k, v in o.items() if k not in defaults or v != defaults[k]}
    if initial_step > 0:
        o["initial_step"] = int(initial_step)
    return o


def flatten_state(opt, model, keys):
    """The optimizer's state as float64 [P] arrays in parameters_to_vector order.

    Taken from opt.state_dict() (keyed 0, 1, ... in the param group's order) and
    checked against parameters_to_vector of opt.state[p][key] for p in
    model.parameters(): the same values, and each tensor of its parameter's shape.
    Returns ({key: array}, the step count torch recorded, or None for SGD).
    """
    sd = opt.state_dict()
    params = list(model.parameters())
    ids = sd["param_groups"][0]["params"]
    if len(sd["param_groups"]) != 1 or len(ids) != len(params):
        raise RuntimeError("expected one param group holding every parameter")
    out, steps = {}, set()
    for key in keys:
        parts = []
        for i, p in zip(ids, params):
            t = sd["state"][i][key]
            if tuple(t.shape) != tuple(p.shape):
                raise RuntimeError("state %s of parameter %d has shape %s, not %s" % (
                    key, i, tuple(t.shape), tuple(p.shape)))
            parts.append(t.detach().reshape(-1))
        vec = torch.cat(parts)
        direct = torch.nn.utils.parameters_to_vector([opt.state[p][key] for p in params]).detach()
        if not torch.equal(vec, direct):
            raise RuntimeError("state_dict flattening of %s differs from parameters_to_vector order" % key)
        out[key] = vec.to(torch.float64).cpu().numpy().copy()
    for i in ids:
        if "step" in sd["state"].get(i, {}):
            steps.add(float(sd["state"][i]["step"]))
    if len(steps) > 1:
        raise RuntimeError("parameters disagree on the optimizer's step count: %s" % sorted(steps))
    return out, (steps.pop() if steps else None)


def load_flat_state(args, opt, model, state, initial_step):
    """Load the flattened [P] state arrays into a fresh optimizer (the inverse of flatten_state)."""
    sd = opt.state_dict()
    params = list(model.parameters())
    new_state = {}
    off = 0
    for i, p in zip(sd["param_groups"][0]["params"], params):
        n = p.numel()
        entry = {key: torch.from_numpy(vec[off:off + n].copy()).to(p.dtype).reshape(p.shape)
                 for key, vec in state.items()}
        if args.optimizer != "sgd":
            entry["step"] = torch.tensor(float(initial_step))
        if entry:
            new_state[i] = entry
        off += n
    sd["state"] = new_state
    opt.load_state_dict(sd)


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Train a torch.nn.Sequential with torch.optim (SGD, Adam, AdamW) and write an epk trace "
                    "directory (docs/trace-format.md) plus reference_outputs.npy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="trace directory to create (files in it are overwritten)")
    p.add_argument("--activation", choices=ACTIVATIONS, default="tanh", help="hidden activation")
    p.add_argument("--negative-slope", type=float, default=0.01, help="leaky_relu negative slope")
    p.add_argument("--hidden", type=parse_hidden, default=[16, 16],
                   help="hidden widths, comma separated, e.g. 16,16 ('' or none = no hidden layer)")
    p.add_argument("--no-bias", action="store_true", help="linear layers without bias")
    p.add_argument("--loss", choices=("cross_entropy", "mse"), default="cross_entropy", help="loss")
    p.add_argument("--reduction", choices=("mean", "sum"), default="mean", help="loss reduction")
    p.add_argument("--mse-targets", choices=("onehot", "random"), default="onehot",
                   help="mse targets: one-hot labels or standard-normal reals")
    p.add_argument("--steps", type=int, default=50, help="optimizer steps S in the trace")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate (peak rate with --per-step-lr)")
    p.add_argument("--per-step-lr", action="store_true",
                   help="vary the rate every step (cosine decay with ripple), write learning_rates.npy")
    p.add_argument("--batch-size", type=int, default=0,
                   help="minibatch size; 0 = full batch. Otherwise each step draws B distinct indices "
                        "at random (seeded) and they are recorded in batches.npy")
    p.add_argument("--record", choices=("params", "init", "both"), default="params",
                   help="params: params.npy [S+1,P]; init: init_params.npy [P] only (epk replays); both")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="training precision; float32 writes <f4 inputs and parameters")
    p.add_argument("--seed", type=int, default=0, help="seeds data, initialisation and batches")
    p.add_argument("--n-train", type=int, default=64, help="training points N")
    p.add_argument("--n-test", type=int, default=16, help="test points M written as x_test.npy (0 = none)")
    p.add_argument("--input-dim", type=int, default=4, help="input dimension D (of the MLP)")
    p.add_argument("--classes", type=int, default=None,
                   help="number of classes / outputs C (default 3; 10 with --data digits; with --model the "
                        "model's output size)")
    p.add_argument("--data", choices=("blobs", "digits"), default="blobs",
                   help="blobs: synthetic Gaussian blobs in D = prod(input shape) dimensions; digits: the "
                        "8x8 digits of --digits-csv (pixels / 16, labels 0..9), the first --n-train rows "
                        "for training and the next --n-test as the test set")
    p.add_argument("--digits-csv", default=DIGITS_CSV, help="the digits CSV (64 pixels and a label a row)")
    v = p.add_argument_group("version 3 model (writes trace format version 3)")
    v.add_argument("--model", metavar="FILE.json",
                   help="the network as a JSON list of layers of trace format version 3 (canonical or torch "
                        "class names, docs/trace-format.md) or an object {\"input_shape\": [...], "
                        "\"layers\": [...]}; replaces --hidden, --activation, --negative-slope, --no-bias "
                        "and --input-dim")
    v.add_argument("--input-shape", type=parse_shape, metavar="C,H,W",
                   help="the shape of one sample with --model: D or C,H,W (default: the model file's, or "
                        "1,8,8 with --data digits)")
    v.add_argument("--manifest-layers", choices=("canonical", "torch"), default="canonical",
                   help="the manifest's layers: canonical names with every field explicit, or torch's class "
                        "names with the module's attributes (Conv2d, ReLU, ...)")
    p.add_argument("--misdescribe", choices=("clip", "schedule", "dropout", "skip"), default=None,
                   help="write a trace that does not describe the training (for testing verifiers)")
    g = p.add_argument_group("optimizer (anything but plain SGD writes trace format version 2)")
    g.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default="sgd",
                   help="torch.optim.SGD, Adam or AdamW")
    g.add_argument("--momentum", type=float, default=0.0, help="SGD momentum")
    g.add_argument("--dampening", type=float, default=0.0, help="SGD dampening")
    g.add_argument("--nesterov", action="store_true", help="SGD Nesterov momentum")
    g.add_argument("--weight-decay", type=float, default=None,
                   help="weight decay (default: 0 for sgd and adam, 0.01 for adamw, as in torch)")
    g.add_argument("--betas", type=parse_betas, default=(0.9, 0.999), help="Adam/AdamW betas B1,B2")
    g.add_argument("--eps", type=float, default=1e-8, help="Adam/AdamW eps")
    g.add_argument("--amsgrad", action="store_true", help="Adam/AdamW amsgrad")
    g.add_argument("--resume-after", type=int, default=0, metavar="K",
                   help="train K steps first, then start the trace there with the optimizer's state "
                        "recorded (init_*.npy, optimizer.initial_step = K)")
    g.add_argument("--manifest-optimizer", choices=("canonical", "minimal", "torch"), default="canonical",
                   help="version 2 manifest's optimizer object: canonical names with every field; the same "
                        "without the fields at their defaults; or torch's param group as it is (type "
                        "'SGD'/'Adam'/'AdamW', lr, foreach, ...)")
    args = p.parse_args(argv)
    for action in p._actions:  # parse again without defaults: the options given on the command line
        action.default = argparse.SUPPRESS
    given = set(vars(p.parse_args(argv)))

    layers = input_shape = None
    if args.model is None:
        if "input_shape" in given or "manifest_layers" in given:
            p.error("--input-shape and --manifest-layers go with --model")
        if args.data == "digits":
            if "input_dim" in given and args.input_dim != 64:
                p.error("the digits have 64 pixels: --input-dim 64")
            args.input_dim = 64
        if args.classes is None:
            args.classes = 10 if args.data == "digits" else 3
    else:
        for option in ("hidden", "activation", "negative_slope", "no_bias", "input_dim"):
            if option in given:
                p.error("--%s describes the MLP; with --model the layers come from the model file"
                        % option.replace("_", "-"))
        try:
            layers_in, file_shape = load_model_file(args.model)
        except (OSError, ValueError) as e:  # ModelError and json's errors are ValueErrors
            p.error("--model %s: %s" % (args.model, e))
        if args.input_shape is not None and file_shape is not None and args.input_shape != file_shape:
            p.error("--input-shape %s differs from the model file's %s" % (args.input_shape, file_shape))
        input_shape = args.input_shape or file_shape or ([1, 8, 8] if args.data == "digits" else None)
        if input_shape is None:
            p.error("--model needs --input-shape (D or C,H,W) when the model file does not give one")
        if args.data == "digits" and int(np.prod(input_shape)) != 64:
            p.error("the digits have 64 pixels; --input-shape %s has %d" % (
                ",".join(map(str, input_shape)), int(np.prod(input_shape))))
        try:
            layers, out_shape = read_layers(layers_in, "layers", input_shape)
            if len(layers) == 0:
                raise ModelError("'model.layers' must not be empty")
            if len(out_shape) != 1:
                raise ModelError("the model's output must be a vector [C], found %s (end with flatten or a "
                                 "linear layer on a vector)" % out_shape)
            if not layout_shapes(layers, input_shape):
                raise ModelError("the model has no parameters")
        except ModelError as e:
            p.error("--model %s: %s" % (args.model, e))
        if args.classes is not None and args.classes != out_shape[0]:
            p.error("--classes %d, but the model's output is [%d]" % (args.classes, out_shape[0]))
        args.classes = out_shape[0]
        args.input_dim = int(np.prod(input_shape))
    if args.data == "digits":
        if args.classes != 10:
            p.error("the digits have 10 classes: the model's output must be [10] (--classes 10)")
        if args.n_train + args.n_test > DIGITS_ROWS:
            p.error("the digits have %d rows: --n-train + --n-test must not exceed it" % DIGITS_ROWS)

    if args.steps < 0 or args.n_train < 1 or args.n_test < 0 or args.input_dim < 1 or args.classes < 1:
        p.error("steps >= 0, n-train >= 1, n-test >= 0, input-dim >= 1, classes >= 1")
    if args.batch_size < 0 or args.batch_size > args.n_train:
        p.error("batch size must be in [0, n-train]")
    if args.loss == "cross_entropy" and args.classes < 2:
        p.error("cross_entropy needs at least 2 classes")
    if args.resume_after < 0:
        p.error("--resume-after must be >= 0")
    if args.optimizer == "sgd":
        if args.betas != (0.9, 0.999) or args.eps != 1e-8 or args.amsgrad:
            p.error("--betas, --eps and --amsgrad are Adam/AdamW options")
    elif args.momentum != 0 or args.dampening != 0 or args.nesterov:
        p.error("--momentum, --dampening and --nesterov are SGD options")
    if args.nesterov and (args.momentum <= 0 or args.dampening != 0):
        p.error("--nesterov needs --momentum > 0 and --dampening 0 (as torch.optim.SGD)")
    if args.weight_decay is None:
        args.weight_decay = 0.01 if args.optimizer == "adamw" else 0.0
    version2 = not is_plain_sgd(args) or args.resume_after > 0 or args.manifest_optimizer != "canonical"

    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    np_dtype = np.float64 if args.dtype == "float64" else np.float32

    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # deterministic reductions, and one core only

    if args.data == "digits":
        x_all, labels_all = load_digits(args.digits_csv, args.n_train + args.n_test)
        if args.mse_targets == "onehot":
            targets_all = np.eye(args.classes, dtype=np.float64)[labels_all]
        else:
            targets_all = rng.normal(0.0, 1.0, size=(len(labels_all), args.classes))
    else:
        x_all, labels_all, targets_all = make_data(args, rng)
    if input_shape is not None:
        x_all = x_all.reshape([len(x_all)] + list(input_shape))  # [N + M, *input_shape], C order
    n = args.n_train
    x_train = x_all[:n].astype(np_dtype)
    x_test = x_all[n:].astype(np_dtype)
    if args.loss == "cross_entropy":
        y_train = labels_all[:n].astype(np.int64)
    else:
        y_train = targets_all[:n].astype(np_dtype)

    if layers is None:
        def make_model():
            return build(args, args.input_dim, args.classes, dtype)
    else:
        def make_model():
            """The version 3 Sequential and the manifest's model section (canonical or torch-named layers)."""
            net = torch_sequential(layers, input_shape).to(dtype)
            written = torch_layers(net) if args.manifest_layers == "torch" else layers
            return net, {"input_shape": list(input_shape), "layers": written}
    model, model_manifest = make_model()
    if layers is not None:
        check_model_v3(model, layers, input_shape, model_manifest["layers"], args.classes)
    if args.misdescribe == "dropout":
        # trained with dropout after the first activation; the manifest keeps the model without it
        mods = list(model.children())
        model = torch.nn.Sequential(*mods[:2], torch.nn.Dropout(0.2), *mods[2:]).to(dtype)
        model.train()
    elif args.misdescribe == "skip":
        stripped = without_skips(model_manifest["layers"])
        if stripped == model_manifest["layers"]:
            raise SystemExit("--misdescribe skip needs a --model with a residual block of identity shortcut")
        model_manifest = dict(model_manifest, layers=stripped)

    full_batch = args.batch_size == 0
    batches = pre_batches = None
    if not full_batch:
        batches = np.stack([rng.permutation(n)[:args.batch_size] for _ in range(args.steps)]).astype(np.int64) \
            if args.steps > 0 else np.zeros((0, args.batch_size), dtype=np.int64)
        # the K steps before the trace draw after the trace's own, which are then the same for every K
        pre_batches = [rng.permutation(n)[:args.batch_size].astype(np.int64) for _ in range(args.resume_after)]
    rates = learning_rate_schedule(args) if args.per_step_lr else None

    X = torch.from_numpy(x_train)
    Y = torch.from_numpy(y_train)
    opt = make_optimizer(args, model.parameters())

    def loss_fn(out, target):
        if args.loss == "cross_entropy":
            return torch.nn.functional.cross_entropy(out, target, reduction=args.reduction)
        return torch.nn.functional.mse_loss(out, target, reduction=args.reduction)

    if args.misdescribe and (args.resume_after > 0 or args.per_step_lr):
        raise SystemExit("--misdescribe: not with --resume-after or --per-step-lr")
    misdescribe = args.misdescribe
    scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9) if misdescribe == "schedule" else None
    clip_norm = []

    def run(model, opt, step_batches, step_rates, count):
        """`count` optimizer steps; returns the parameters after each one and the last loss."""
        after, loss = [], None
        for s in range(count):
            if step_rates is not None:
                for group in opt.param_groups:
                    group["lr"] = float(step_rates[s])
            if step_batches is None:
                xb, yb = X, Y
            else:
                idx = torch.from_numpy(step_batches[s])
                xb, yb = X[idx], Y[idx]
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            if misdescribe == "clip":
                if not clip_norm:  # half the first step's gradient norm: every step is clipped
                    clip_norm.append(0.5 * float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))))
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm[0])
            opt.step()
            if scheduler is not None:
                scheduler.step()
            after.append(flat(model))
            if not torch.isfinite(loss):
                print("warning: non-finite loss at step %d" % s, file=sys.stderr)
        return after, loss

    state, initial_step = {}, 0
    if args.resume_after > 0:
        run(model, opt, pre_batches, None, args.resume_after)
        initial_step = args.resume_after
        state, torch_step = flatten_state(opt, model, state_keys(args))
        if torch_step is not None and torch_step != initial_step:
            raise RuntimeError("torch's state says step %r after %d steps" % (torch_step, initial_step))
    group0 = dict(opt.param_groups[0])  # the rates before the trace's first step
    rows = [flat(model)]
    after, loss = run(model, opt, batches, rates, args.steps)
    rows += after

    eval_x = x_test if args.n_test > 0 else x_train[:min(10, n)]
    with torch.no_grad():
        reference = model(torch.from_numpy(eval_x)).to(torch.float64).cpu().numpy()

    if args.resume_after > 0:
        # A fresh model and optimizer loaded from what the trace holds must continue the run
        # bit for bit: the flattened state is in parameters_to_vector order and complete.
        model2, _ = make_model()
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(torch.from_numpy(rows[0].copy()), model2.parameters())
        opt2 = make_optimizer(args, model2.parameters())
        load_flat_state(args, opt2, model2, state, initial_step)
        after2, _ = run(model2, opt2, batches, rates, args.steps)
        for s, (a, b) in enumerate(zip(after, after2)):
            if not np.array_equal(a, b):
                raise RuntimeError("resume check: the run restarted from the written state differs after "
                                   "step %d by %.3e" % (s, float(np.max(np.abs(a - b)))))
        print("resume check: restarted from the written state, torch repeats all %d steps bit for bit"
              % args.steps)

    if version2:
        optimizer = optimizer_manifest(args, type(opt).__name__, group0, initial_step)
    else:
        optimizer = {"type": "sgd", "learning_rate": float(args.lr), "steps": args.steps}
    manifest = {
        "format": "epk-trace",
        "version": 3 if layers is not None else 2 if version2 else 1,
        "model": model_manifest,
        "loss": {"type": args.loss, "reduction": args.reduction},
        "optimizer": optimizer,
    }

    os.makedirs(args.out, exist_ok=True)
    for name in ("params.npy", "init_params.npy", "batches.npy", "learning_rates.npy", "x_test.npy") + \
            tuple(STATE_FILES.values()):
        path = os.path.join(args.out, name)
        if os.path.exists(path):
            os.remove(path)  # a stale optional file would change the trace's meaning
    with open(os.path.join(args.out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    save(os.path.join(args.out, "x_train.npy"), x_train)
    save(os.path.join(args.out, "y_train.npy"), y_train)
    if args.record in ("params", "both"):
        save(os.path.join(args.out, "params.npy"), np.stack(rows).astype(np_dtype))
    if args.record in ("init", "both"):
        save(os.path.join(args.out, "init_params.npy"), rows[0].astype(np_dtype))
    if batches is not None:
        save(os.path.join(args.out, "batches.npy"), batches)
    if rates is not None:
        save(os.path.join(args.out, "learning_rates.npy"), rates)
    if args.n_test > 0:
        save(os.path.join(args.out, "x_test.npy"), x_test)
    for key, vec in state.items():
        save(os.path.join(args.out, STATE_FILES[key]), vec.astype(np.float64))
    save(os.path.join(args.out, "reference_outputs.npy"), reference.astype(np.float64))

    print("wrote %s: P = %d, S = %d, final loss %.6g (%s%s)" % (
        args.out, rows[0].size, args.steps, float(loss.detach()) if loss is not None else float("nan"),
        args.dtype, "" if not version2 and layers is None else ", %s, version %d%s" % (
            args.optimizer, manifest["version"],
            ", resumed after %d steps" % initial_step if initial_step else "")))
    return 0

if __name__ == "__main__":
    sys.exit(main())
