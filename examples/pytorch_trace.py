#!/usr/bin/env python3
"""Train a small torch.nn.Sequential with plain SGD and write an epk trace.

The trace directory follows the epk training-trace format, version 1
(docs/trace-format.md): ``manifest.json``, ``x_train.npy``, ``y_train.npy``,
``params.npy`` ([S+1, P], the parameters before every step and after the
last) and/or ``init_params.npy`` ([P]), and optionally ``batches.npy``
([S, B] int64), ``learning_rates.npy`` ([S] float64) and ``x_test.npy``.

In addition it writes ``reference_outputs.npy`` (not part of the format):
the torch model's outputs after the last step, as float64 [M, C], at
``x_test`` or, when there is no test set, at the first min(10, N) training
points -- the same points ``epk predict`` reports, so the two can be compared
directly (see examples/check_against_pytorch.sh).

The data are synthetic Gaussian blobs drawn with NumPy from --seed: C class
centres N(0, 1.5^2 I) in D dimensions, each point its centre plus N(0, I).
For ``--loss mse`` the targets [N, C] are the one-hot labels or, with
``--mse-targets random``, standard-normal values.

Torch semantics reproduced by the format: ``cross_entropy`` / ``mse_loss``
with the chosen reduction (mse mean divides by |B|*C), GELU in its exact erf
form, leaky_relu with the given negative slope, softplus with beta = 1 (torch
switches to the identity above 20; keep inputs modest so that it never does).
The optimizer is torch.optim.SGD without momentum, dampening, weight decay or
Nesterov; with --per-step-lr the rate of every step is set on the optimizer's
param group before that step and recorded in learning_rates.npy.

Requires only Python 3, NumPy and PyTorch.

Example:
    python3 examples/pytorch_trace.py --out /tmp/t --activation tanh \\
        --hidden 16,16 --steps 50 --lr 0.1 --record params
    ./build/epk predict /tmp/t --json
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "softplus", "gelu", "identity")


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


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Train a torch.nn.Sequential with plain SGD and write an epk trace directory "
                    "(docs/trace-format.md) plus reference_outputs.npy.",
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
    p.add_argument("--steps", type=int, default=50, help="SGD steps S")
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
    p.add_argument("--input-dim", type=int, default=4, help="input dimension D")
    p.add_argument("--classes", type=int, default=3, help="number of classes / outputs C")
    args = p.parse_args(argv)

    if args.steps < 0 or args.n_train < 1 or args.n_test < 0 or args.input_dim < 1 or args.classes < 1:
        p.error("steps >= 0, n-train >= 1, n-test >= 0, input-dim >= 1, classes >= 1")
    if args.batch_size < 0 or args.batch_size > args.n_train:
        p.error("batch size must be in [0, n-train]")
    if args.loss == "cross_entropy" and args.classes < 2:
        p.error("cross_entropy needs at least 2 classes")

    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    np_dtype = np.float64 if args.dtype == "float64" else np.float32

    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # deterministic reductions, and one core only

    x_all, labels_all, targets_all = make_data(args, rng)
    n = args.n_train
    x_train = x_all[:n].astype(np_dtype)
    x_test = x_all[n:].astype(np_dtype)
    if args.loss == "cross_entropy":
        y_train = labels_all[:n].astype(np.int64)
    else:
        y_train = targets_all[:n].astype(np_dtype)

    model, model_manifest = build(args, args.input_dim, args.classes, dtype)

    full_batch = args.batch_size == 0
    batches = None
    if not full_batch:
        batches = np.stack([rng.permutation(n)[:args.batch_size] for _ in range(args.steps)]).astype(np.int64) \
            if args.steps > 0 else np.zeros((0, args.batch_size), dtype=np.int64)
    rates = learning_rate_schedule(args) if args.per_step_lr else None

    X = torch.from_numpy(x_train)
    Y = torch.from_numpy(y_train)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.0, dampening=0.0,
                          weight_decay=0.0, nesterov=False)

    def loss_fn(out, target):
        if args.loss == "cross_entropy":
            return torch.nn.functional.cross_entropy(out, target, reduction=args.reduction)
        return torch.nn.functional.mse_loss(out, target, reduction=args.reduction)

    rows = [flat(model)]
    for s in range(args.steps):
        if rates is not None:
            for group in opt.param_groups:
                group["lr"] = float(rates[s])
        if full_batch:
            xb, yb = X, Y
        else:
            idx = torch.from_numpy(batches[s])
            xb, yb = X[idx], Y[idx]
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        if args.record in ("params", "both"):
            rows.append(flat(model))
        if not torch.isfinite(loss):
            print("warning: non-finite loss at step %d" % s, file=sys.stderr)

    eval_x = x_test if args.n_test > 0 else x_train[:min(10, n)]
    with torch.no_grad():
        reference = model(torch.from_numpy(eval_x)).to(torch.float64).cpu().numpy()

    manifest = {
        "format": "epk-trace",
        "version": 1,
        "model": model_manifest,
        "loss": {"type": args.loss, "reduction": args.reduction},
        "optimizer": {"type": "sgd", "learning_rate": float(args.lr), "steps": args.steps},
    }

    os.makedirs(args.out, exist_ok=True)
    for name in ("params.npy", "init_params.npy", "batches.npy", "learning_rates.npy", "x_test.npy"):
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
    save(os.path.join(args.out, "reference_outputs.npy"), reference.astype(np.float64))

    print("wrote %s: P = %d, S = %d, final loss %.6g (%s)" % (
        args.out, rows[0].size, args.steps, float(loss.detach()) if args.steps > 0 else float("nan"),
        args.dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
