#!/usr/bin/env python3
"""Train a small torch.nn.Sequential with torch.optim and write an epk trace.

The trace directory follows the epk training-trace format
(docs/trace-format.md): ``manifest.json``, ``x_train.npy``, ``y_train.npy``,
``params.npy`` ([S+1, P], the parameters before every step and after the
last) and/or ``init_params.npy`` ([P]), and optionally ``batches.npy``
([S, B] int64), ``learning_rates.npy`` ([S] float64) and ``x_test.npy``.
Plain SGD (the default) writes format version 1, exactly as before the
optimizer options existed; any other optimizer, or a recorded optimizer state,
writes version 2 (below).

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

Requires only Python 3, NumPy and PyTorch.

Examples:
    python3 examples/pytorch_trace.py --out /tmp/t --activation tanh \\
        --hidden 16,16 --steps 50 --lr 0.1 --record params
    python3 examples/pytorch_trace.py --out /tmp/a --optimizer adamw --lr 0.01 \\
        --steps 30 --resume-after 10 --record init
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
    p.add_argument("--input-dim", type=int, default=4, help="input dimension D")
    p.add_argument("--classes", type=int, default=3, help="number of classes / outputs C")
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
            opt.step()
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
        model2, _ = build(args, args.input_dim, args.classes, dtype)
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
        "version": 2 if version2 else 1,
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
        args.dtype, "" if not version2 else ", %s, version 2%s" % (
            args.optimizer, ", resumed after %d steps" % initial_step if initial_step else "")))
    return 0

if __name__ == "__main__":
    sys.exit(main())
