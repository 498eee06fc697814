#!/usr/bin/env python3
"""From memorising training pairs to the algorithm: the exact path kernel on a + b mod p.

A one-layer transformer (examples/models/modadd-transformer.json) is trained by
full-batch AdamW on a seeded fraction of the p*p pairs (a, b), labelled
(a + b) mod p. At K checkpoints k along the run, `epk kernel` writes the exact
path kernel of the run's first k steps,

    f(x; w_k) = f(x; w_0) + sum_i c(x, x_i) + (optimizer term) + (remainder),

and this script asks where the sum over training pairs comes from, for the
correct logit y of each test pair (a, b):

  * same residue     training pairs (a', b') with a' + b' = y (mod p): they share
                     the answer but (for a held-out pair) no operand -- only a
                     network that computes the sum can carry them over;
  * shared operand   a' = a or b' = b, but another residue;
  * rest             everything else;

as each group's signed sum of c_y(x, x_i) and its share of sum_i |c_y(x, x_i)|,
the share of the 5 largest |c_y|, and, for training pairs evaluated as test
points, the share of a pair's own contribution c_y(x_i, x_i) (memorisation).

Usage (numpy only; /usr/bin/python3 on Debian 12):

    python3 examples/modadd_study.py --epk build/epk --out /tmp/modadd-study
    python3 examples/modadd_study.py --epk build/epk --out /tmp/q --quick   # about a minute

Writes into --out (a new or empty directory): run/ (the trace), prefix_<k>/ and
kernel_<k>/ (each checkpoint's prefix trace and `epk kernel` output), curve.csv
(accuracies along the whole run, from `epk predict` on one-row traces),
study.csv (one row per checkpoint), study.svg, compare.json and compare.csv
(`epk compare`), commands.log and report.md.

The checkpoint kernels are the cost: a kernel over k steps costs about
k * (test points) * (training pairs) * C^2 * P flops, so K evenly spaced checkpoints
cost about (K + 1)/2 kernels of the whole run.
"""

import argparse
import csv
import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_FILE = os.path.join(HERE, "models", "modadd-transformer.json")

GROUPS = ("same_residue", "shared_operand", "rest")


# ------------------------------------------------------------------ running epk

class Runner:
    """Runs epk commands, logs each with its wall time, stops on failure."""

    def __init__(self, epk, out):
        self.epk = epk
        self.out = out
        self.log = []                       # (phase, command line, seconds, exit status)
        self.logfile = open(os.path.join(out, "commands.log"), "w")

    def __call__(self, phase, args, capture=True):
        cmd = [self.epk] + [str(a) for a in args]
        line = " ".join(shlex.quote(c) for c in cmd)
        t0 = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True)
        dt = time.time() - t0
        self.log.append((phase, line, dt, r.returncode))
        self.logfile.write(f"# {phase}: {dt:.2f} s, exit {r.returncode}\n{line}\n")
        if r.stderr.strip():
            tail = r.stderr.strip().splitlines()[-3:]
            self.logfile.write("".join(f"#   {t}\n" for t in tail))
        self.logfile.flush()
        if r.returncode != 0:
            sys.stderr.write(r.stdout[-2000:] + r.stderr[-4000:])
            raise SystemExit(f"modadd_study: failed (exit {r.returncode}): {line}")
        return r.stdout, dt


def say(msg):
    print(msg, flush=True)


# ------------------------------------------------------------------ traces

def write_trace(dst, manifest, steps, params, x_train, y_train, x_test,
                batches=None, learning_rates=None):
    """A trace directory: the run's manifest with optimizer.steps = steps."""
    os.makedirs(dst)
    m = json.loads(json.dumps(manifest))
    m["optimizer"]["steps"] = int(steps)
    with open(os.path.join(dst, "manifest.json"), "w") as f:
        json.dump(m, f, indent=1)
    assert params.shape[0] == steps + 1
    np.save(os.path.join(dst, "params.npy"), np.ascontiguousarray(params))
    np.save(os.path.join(dst, "x_train.npy"), x_train)
    np.save(os.path.join(dst, "y_train.npy"), y_train)
    np.save(os.path.join(dst, "x_test.npy"), np.ascontiguousarray(x_test))
    if batches is not None and steps > 0:
        np.save(os.path.join(dst, "batches.npy"), np.ascontiguousarray(batches[:steps]))
    if learning_rates is not None and steps > 0:
        np.save(os.path.join(dst, "learning_rates.npy"), np.ascontiguousarray(learning_rates[:steps]))


def load_optional(path):
    return np.load(path) if os.path.exists(path) else None


# ------------------------------------------------------------------ metrics

def group_masks(a, b, y, x_train, y_train, exclude=None):
    """Boolean masks over the training pairs for the test pair (a, b) with label y."""
    same = y_train == y
    operand = ((x_train[:, 0] == a) | (x_train[:, 1] == b)) & ~same
    rest = ~same & ~operand
    masks = {"same_residue": same, "shared_operand": operand, "rest": rest}
    if exclude is not None:
        for g in masks.values():
            g[exclude] = False
    return masks


def sem(values):
    """Standard error of the mean (nan for fewer than 2 values)."""
    v = np.asarray(values, dtype=float)
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def checkpoint_metrics(p, x_train, y_train, x_test, n_heldout, n_memo, arrays):
    """The study's numbers for one checkpoint's kernel (arrays from epk kernel).

    The label baseline: a training pair of residue c pushes the logit c at every
    input (the last layer's bias and whatever features all inputs share), so the
    same-residue group is compared with the same measure for the other logits:
    at the same x, the pairs of residue c in logit c, c != y. Only the excess over
    that baseline is specific to x's answer (a + b).
    """
    contrib = arrays["contributions"]               # [M, N, C]
    f = arrays["outputs_final"]                     # [M, C]
    N, C = x_train.shape[0], contrib.shape[2]
    y_all = (x_test[:, 0] + x_test[:, 1]) % p
    onehot = (y_train[:, None] == np.arange(C)[None, :]).astype(float)      # [N, C]
    label_sum = np.einsum("mic,ic->mc", contrib, onehot)                    # sum_{i: y_i = c} c_c(x_m, x_i)
    abs_all = np.abs(contrib).sum(axis=1)                                   # sum_i |c_c(x_m, x_i)|
    label_share = np.einsum("mic,ic->mc", np.abs(contrib), onehot) / abs_all
    out = {}

    def others(v, y):
        return float(np.delete(v, y).mean())

    # held-out pairs
    signed = {g: [] for g in GROUPS}
    share = {g: [] for g in GROUPS}
    size = {g: [] for g in GROUPS}
    top5, sum_abs, base_share, base_signed, exc_share, exc_signed = [], [], [], [], [], []
    for m in range(n_heldout):
        a, b, y = int(x_test[m, 0]), int(x_test[m, 1]), int(y_all[m])
        cy = contrib[m, :, y]
        tot = np.abs(cy).sum()
        for g, mask in group_masks(a, b, y, x_train, y_train).items():
            signed[g].append(cy[mask].sum())
            share[g].append(np.abs(cy[mask]).sum() / tot)
            size[g].append(mask.sum() / N)
        top5.append(np.sort(np.abs(cy))[-5:].sum() / tot)
        sum_abs.append(tot)
        base_share.append(others(label_share[m], y))
        base_signed.append(others(label_sum[m], y))
        exc_share.append(share["same_residue"][-1] - base_share[-1])
        exc_signed.append(signed["same_residue"][-1] - base_signed[-1])
    for g in GROUPS:
        out[f"{g}_signed"] = float(np.mean(signed[g]))
        out[f"{g}_share"] = float(np.mean(share[g]))
        out[f"{g}_pairs"] = float(np.mean(size[g]))     # the group's fraction of the N pairs
    # the label baseline: residue-c pairs in logit c, c != y, at the same x
    out["same_residue_share_baseline"] = float(np.mean(base_share))
    out["same_residue_signed_baseline"] = float(np.mean(base_signed))
    out["same_residue_share_excess"] = out["same_residue_share"] - out["same_residue_share_baseline"]
    out["same_residue_signed_excess"] = out["same_residue_signed"] - out["same_residue_signed_baseline"]
    # standard errors of the two excesses over the held-out points
    out["same_residue_share_excess_se"] = sem(exc_share)
    out["same_residue_signed_excess_se"] = sem(exc_signed)
    out["top5_share"] = float(np.mean(top5))
    out["sum_abs_y"] = float(np.mean(sum_abs))          # mean over x of sum_i |c_y(x, x_i)|
    pred = f[:n_heldout].argmax(axis=1)
    out["heldout_acc"] = float(np.mean(pred == y_all[:n_heldout]))
    # the correct logit, split as epk splits it (means over the held-out test points)
    idx = np.arange(n_heldout)
    yy = y_all[:n_heldout]
    out["f_y"] = float(f[idx, yy].mean())
    out["bias_y"] = float(arrays["bias"][idx, yy].mean())
    out["training_sum_y"] = float(contrib[idx, :, yy].sum(axis=1).mean())
    out["optimizer_term_y"] = float(arrays["optimizer_term"][idx, yy].mean())
    out["remainder_y"] = float(arrays["remainder"][idx, yy].mean())

    # training pairs as test points: the pair's own contribution
    self_share, self_signed, memo_same, memo_per_pair, memo_top5, memo_excess = [], [], [], [], [], []
    for t in range(n_memo):
        m = n_heldout + t
        a, b, y = int(x_test[m, 0]), int(x_test[m, 1]), int(y_all[m])
        assert (x_train[t] == x_test[m]).all() and y_train[t] == y
        cy = contrib[m, :, y]
        tot = np.abs(cy).sum()
        self_share.append(cy[t] / tot)
        self_signed.append(cy[t])
        masks = group_masks(a, b, y, x_train, y_train, exclude=t)
        same = masks["same_residue"]
        memo_same.append(np.abs(cy[same]).sum() / tot)
        memo_per_pair.append(np.abs(cy[same]).sum() / tot / max(1, same.sum()))
        memo_top5.append(np.sort(np.abs(cy))[-5:].sum() / tot)
        # the other same-residue pairs (not the pair itself) against the label baseline
        memo_excess.append(label_sum[m, y] - cy[t] - others(label_sum[m], y))
    nan = float("nan")
    out["memo_self_share"] = float(np.mean(self_share)) if n_memo else nan
    out["memo_self_share_se"] = sem(self_share)
    out["memo_self_signed"] = float(np.mean(self_signed)) if n_memo else nan
    out["memo_same_residue_share"] = float(np.mean(memo_same)) if n_memo else nan
    out["memo_same_residue_share_per_pair"] = float(np.mean(memo_per_pair)) if n_memo else nan
    out["memo_same_residue_signed_excess"] = float(np.mean(memo_excess)) if n_memo else nan
    out["memo_same_residue_signed_excess_se"] = sem(memo_excess)
    out["memo_top5_share"] = float(np.mean(memo_top5)) if n_memo else nan
    out["memo_train_acc"] = (float(np.mean(f[n_heldout:].argmax(axis=1) == y_all[n_heldout:]))
                             if n_memo else nan)
    return out


# ------------------------------------------------------------------ SVG

def fmt_tick(v):
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 0.01:
        return f"{v:.0e}"
    return f"{v:.6g}"


def nice_ticks(lo, hi, n=5):
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw), default=10 * mag)
    start = math.floor(lo / step) * step
    ticks = []
    v = start
    while True:
        ticks.append(round(v, 12))
        if v >= hi - 1e-9 * step:
            break
        v += step
    return ticks


def svg_panel(x0, y0, w, h, title, xlabel, series, xmax, ylim=None):
    """One panel: series = [(label, color, dashed, xs, ys, markers)]."""
    out = []
    ys_all = [v for s in series for v in s[4] if np.isfinite(v)]
    if ylim is None:
        lo, hi = min(ys_all + [0.0]), max(ys_all + [0.0])
        pad = 0.05 * (hi - lo or 1.0)
        ticks = nice_ticks(lo - pad, hi + pad)
        ylo, yhi = ticks[0], ticks[-1]
    else:
        ylo, yhi = ylim
        ticks = nice_ticks(ylo, yhi)
    xticks = nice_ticks(0, xmax)
    xhi = xticks[-1]

    def X(v):
        return x0 + w * v / xhi

    def Y(v):
        return y0 + h - h * (v - ylo) / (yhi - ylo)

    out.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#444"/>')
    out.append(f'<text x="{x0 + w / 2}" y="{y0 - 10}" text-anchor="middle" font-size="14">{title}</text>')
    for t in ticks:
        yy = Y(t)
        out.append(f'<line x1="{x0}" y1="{yy:.1f}" x2="{x0 + w}" y2="{yy:.1f}" stroke="#ddd"/>')
        out.append(f'<line x1="{x0 - 4}" y1="{yy:.1f}" x2="{x0}" y2="{yy:.1f}" stroke="#444"/>')
        out.append(f'<text x="{x0 - 7}" y="{yy + 4:.1f}" text-anchor="end" font-size="11">{fmt_tick(t)}</text>')
    for t in xticks:
        xx = X(t)
        out.append(f'<line x1="{xx:.1f}" y1="{y0 + h}" x2="{xx:.1f}" y2="{y0 + h + 4}" stroke="#444"/>')
        out.append(f'<text x="{xx:.1f}" y="{y0 + h + 17}" text-anchor="middle" font-size="11">{fmt_tick(t)}</text>')
    out.append(f'<text x="{x0 + w / 2}" y="{y0 + h + 34}" text-anchor="middle" font-size="12">{xlabel}</text>')
    if ylo < 0 < yhi:
        out.append(f'<line x1="{x0}" y1="{Y(0):.1f}" x2="{x0 + w}" y2="{Y(0):.1f}" stroke="#888"/>')
    for label, color, dashed, xs, ys, markers in series:
        pts = " ".join(f"{X(a):.1f},{Y(b):.1f}" for a, b in zip(xs, ys) if np.isfinite(b))
        dash = ' stroke-dasharray="6,4"' if dashed else ""
        out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        if markers:
            for a, b in zip(xs, ys):
                if np.isfinite(b):
                    out.append(f'<circle cx="{X(a):.1f}" cy="{Y(b):.1f}" r="3" fill="{color}"/>')
    # legend, to the right of the panel
    lx, ly = x0 + w + 15, y0 + 10
    for i, (label, color, dashed, _, _, _) in enumerate(series):
        yy = ly + 18 * i
        dash = ' stroke-dasharray="6,4"' if dashed else ""
        out.append(f'<line x1="{lx}" y1="{yy}" x2="{lx + 24}" y2="{yy}" stroke="{color}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{lx + 30}" y="{yy + 4}" font-size="11">{label}</text>')
    return out


def write_svg(path, rows, curve, title):
    steps = [r["step"] for r in rows]
    xmax = max(max(steps), max(c["step"] for c in curve))
    W, H = 920, 1190
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
             f'viewBox="0 0 {W} {H}" font-family="sans-serif">',
             f'<rect width="{W}" height="{H}" fill="white"/>',
             f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">{title}</text>']
    col = {"same_residue": "#1f77b4", "shared_operand": "#ff7f0e", "rest": "#7f7f7f",
           "self": "#d62728", "top5": "#2ca02c", "base": "#17becf"}
    s1 = [("same residue a'+b'=y", col["same_residue"], False, steps, [r["same_residue_share"] for r in rows], True),
          ("label baseline (logits c≠y)", col["base"], True, steps,
           [r["same_residue_share_baseline"] for r in rows], True),
          ("shared operand", col["shared_operand"], False, steps, [r["shared_operand_share"] for r in rows], True),
          ("rest", col["rest"], False, steps, [r["rest_share"] for r in rows], True),
          ("top-5 pairs", col["top5"], False, steps, [r["top5_share"] for r in rows], True),
          ("train x: own pair", col["self"], False, steps, [r["memo_self_share"] for r in rows], True),
          ("train x: same residue", col["self"], True, steps, [r["memo_same_residue_share"] for r in rows], True)]
    parts += svg_panel(70, 60, 560, 210, "share of Σ_i |c_y(x, x_i)| (held-out x unless marked; y its answer)",
                       "step", s1, xmax, ylim=(0.0, 1.0))
    s2 = [("held-out x", col["same_residue"], False, steps, [r["same_residue_signed_excess"] for r in rows], True),
          ("train x (own pair left out)", col["self"], True, steps,
           [r["memo_same_residue_signed_excess"] for r in rows], True),
          ("train x: own pair c_y(x_i, x_i)", col["self"], False, steps, [r["memo_self_signed"] for r in rows], True)]
    parts += svg_panel(70, 345, 560, 210, "same-residue Σc_y minus the label baseline; own pair c_y(x_i, x_i)",
                       "step", s2, xmax)
    s3 = [("same residue", col["same_residue"], False, steps, [r["same_residue_signed"] for r in rows], True),
          ("label baseline", col["base"], True, steps, [r["same_residue_signed_baseline"] for r in rows], True),
          ("shared operand", col["shared_operand"], False, steps, [r["shared_operand_signed"] for r in rows], True),
          ("rest", col["rest"], False, steps, [r["rest_signed"] for r in rows], True),
          ("optimizer term", "#9467bd", True, steps, [r["optimizer_term_y"] for r in rows], True),
          ("f_y(x; w_k) − f_y(x; w_0)", "#000000", True, steps, [r["f_y"] - r["bias_y"] for r in rows], True)]
    parts += svg_panel(70, 630, 560, 210, "signed sums of c_y(x, x_i) per group (mean over held-out x)",
                       "step", s3, xmax)
    cs = [c["step"] for c in curve]
    s4 = [("train accuracy", "#d62728", False, cs, [c["train_acc"] for c in curve], False),
          ("held-out accuracy (all)", "#1f77b4", False, cs, [c["heldout_acc_all"] for c in curve], False),
          ("held-out (kernel's points)", "#1f77b4", True, steps, [r["heldout_acc"] for r in rows], True)]
    parts += svg_panel(70, 915, 560, 210, "accuracy (epk predict at every few steps)", "step", s4, xmax,
                       ylim=(0.0, 1.0))
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


# ------------------------------------------------------------------ report helpers

def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def f3(v):
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"


def g3(v):
    return f"{v:+.3g}"


# ------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epk", required=True, help="the epk binary (copied into --out first)")
    ap.add_argument("--out", required=True, help="a new or empty directory")
    ap.add_argument("--p", type=int, default=None, help="the modulus (default 23; --quick: 7)")
    ap.add_argument("--fraction", type=float, default=None,
                    help="fraction of the p^2 pairs used for training (default 0.5)")
    ap.add_argument("--steps", type=int, default=None, help="AdamW steps (default 400; --quick: 60)")
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default 6e-3; --quick: 1e-2)")
    ap.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default 2)")
    ap.add_argument("--betas", default="0.9,0.99", help="AdamW betas (default 0.9,0.99)")
    ap.add_argument("--lr-decay", type=float, default=None,
                    help="per-step rates lr*G^s (epk train --lr-decay; default 0.998, --quick: none)")
    ap.add_argument("--checkpoints", type=int, default=None,
                    help="K checkpoints evenly spaced, the last at the final step (default 4; --quick 3), "
                         "plus the cheap early ones of --early")
    ap.add_argument("--early", default=None,
                    help="extra early checkpoints as fractions of the steps (default 0.0625,0.125; "
                         "--quick: none; '' for none)")
    ap.add_argument("--n-test", type=int, default=None, help="held-out test pairs M (default 16)")
    ap.add_argument("--n-memo", type=int, default=None,
                    help="training pairs evaluated as test points (default 8)")
    ap.add_argument("--compare-points", type=int, default=None,
                    help="held-out pairs given to epk compare (default 2; 0 = all M)")
    ap.add_argument("--compare-methods", default=None,
                    help="epk compare --methods LIST (default: epk's default set)")
    ap.add_argument("--curve-points", type=int, default=40,
                    help="rows of the path at which accuracy is evaluated (default 40)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: p = 7, 60 steps, 3 checkpoints (about a minute)")
    args = ap.parse_args()

    q = args.quick
    p = args.p if args.p is not None else (7 if q else 23)
    fraction = args.fraction if args.fraction is not None else 0.5
    S = args.steps if args.steps is not None else (60 if q else 400)
    lr = args.lr if args.lr is not None else (1e-2 if q else 6e-3)
    wd = args.weight_decay if args.weight_decay is not None else 2.0
    decay = args.lr_decay if args.lr_decay is not None else (None if q else 0.998)
    K = args.checkpoints if args.checkpoints is not None else (3 if q else 4)
    early = args.early if args.early is not None else ("" if q else "0.0625,0.125")
    early = [float(v) for v in early.split(",") if v.strip()]
    M = args.n_test if args.n_test is not None else (8 if q else 16)
    T = args.n_memo if args.n_memo is not None else (6 if q else 8)
    Mc = args.compare_points if args.compare_points is not None else 2
    if p < 2 or S < 1 or K < 1 or M < 1 or T < 0:
        raise SystemExit("modadd_study: need p >= 2, steps >= 1, checkpoints >= 1, n-test >= 1, n-memo >= 0")

    out = os.path.abspath(args.out)
    if os.path.exists(out) and os.listdir(out):
        raise SystemExit(f"modadd_study: {out} exists and is not empty")
    os.makedirs(out, exist_ok=True)
    t_start = time.time()
    load0 = os.getloadavg()

    # a private copy of the binary, so that a relink during the study changes nothing
    src = os.path.abspath(args.epk)
    for _ in range(30):
        if os.path.exists(src):
            break
        time.sleep(10)
    epk = os.path.join(out, "epk")
    shutil.copy2(src, epk)
    with open(epk, "rb") as fbin:
        sha = hashlib.sha256(fbin.read()).hexdigest()
    run = Runner(epk, out)
    version = run("version", ["version"])[0].strip()
    say(f"epk: {src} (copied to {epk}; sha256 {sha[:16]}; {version})")

    # the model, for this p
    with open(MODEL_FILE) as fm:
        model = json.load(fm)
    layers = model["layers"]
    assert layers[0]["type"] == "embedding" and layers[-1]["type"] == "linear"
    layers[0]["num_embeddings"] = p + 1
    layers[-1]["out_features"] = p
    model_path = os.path.join(out, "model.json")
    with open(model_path, "w") as fm:
        json.dump(model, fm, indent=1)

    # 1. train
    rundir = os.path.join(out, "run")
    n_pairs = p * p
    train_args = ["train", "--out", rundir, "--data", f"modadd:{p}:{fraction}", "--model", model_path,
                  "--optimizer", "adamw", "--lr", lr, "--weight-decay", wd, "--betas", args.betas,
                  "--steps", S, "--n-test", M, "--seed", args.seed]
    if decay is not None:
        train_args += ["--lr-decay", decay]
    say(f"training: p = {p}, fraction {fraction}, AdamW lr {lr}"
        + (f" x {decay}^s" if decay is not None else "")
        + f", weight decay {wd}, betas {args.betas}, {S} full-batch steps")
    train_out, t_train = run("train", train_args)
    for line in train_out.strip().splitlines():
        say("  " + line.strip())

    with open(os.path.join(rundir, "manifest.json")) as fm:
        manifest = json.load(fm)
    params = np.load(os.path.join(rundir, "params.npy"))
    x_train = np.load(os.path.join(rundir, "x_train.npy"))
    y_train = np.load(os.path.join(rundir, "y_train.npy"))
    x_test = np.load(os.path.join(rundir, "x_test.npy"))
    batches = load_optional(os.path.join(rundir, "batches.npy"))
    rates = load_optional(os.path.join(rundir, "learning_rates.npy"))
    N, P = x_train.shape[0], params.shape[1]
    M = x_test.shape[0]
    T = min(T, N)
    assert params.shape[0] == S + 1, params.shape
    assert (y_train == (x_train[:, 0] + x_train[:, 1]) % p).all()
    assert (x_train[:, 2] == p).all() and (x_test[:, 2] == p).all()
    say(f"  N = {N} training pairs of {n_pairs}, M = {M} held-out test pairs, P = {P} parameters")

    all_pairs = np.array([[a, b, p] for a in range(p) for b in range(p)], dtype=np.int64)
    all_y = (all_pairs[:, 0] + all_pairs[:, 1]) % p
    train_set = set(map(tuple, x_train.tolist()))
    is_train = np.array([tuple(r) in train_set for r in all_pairs.tolist()])
    assert is_train.sum() == N

    checkpoints = sorted(({int(round(j * S / K)) for j in range(1, K + 1)}
                          | {int(round(e * S)) for e in early if 0 < e < 1}) - {0})

    # 2. accuracy along the run: one-row traces (0 steps) evaluated by epk predict
    say("accuracy along the run (epk predict on one-row traces)")
    curve_rows = sorted(set(np.linspace(0, S, min(args.curve_points, S + 1)).round().astype(int).tolist())
                        | set(checkpoints) | {0})
    curve = []
    t_curve = 0.0
    curve_dir = os.path.join(out, "curve")
    os.makedirs(curve_dir)
    xe_test = np.concatenate([x_test, all_pairs])
    pred_final_at = {}
    for k in curve_rows:
        d = os.path.join(curve_dir, f"row_{k}")
        write_trace(d, manifest, 0, params[k:k + 1], x_train, y_train, xe_test)
        js, dt = run("curve", ["predict", d, "--json"])
        t_curve += dt
        fo = np.array(json.loads(js)["outputs_final"])
        pred_final_at[k] = fo[:M]
        fa = fo[M:]
        pr = fa.argmax(axis=1)
        lse = np.log(np.exp(fa - fa.max(axis=1, keepdims=True)).sum(axis=1)) + fa.max(axis=1)
        nll = lse - fa[np.arange(len(all_y)), all_y]
        curve.append({"step": k,
                      "train_acc": float((pr == all_y)[is_train].mean()),
                      "heldout_acc_all": float((pr == all_y)[~is_train].mean()),
                      "train_loss": float(nll[is_train].mean()),
                      "heldout_loss": float(nll[~is_train].mean()),
                      "weight_norm": float(np.linalg.norm(params[k]))})
        shutil.rmtree(d)
    os.rmdir(curve_dir)
    with open(os.path.join(out, "curve.csv"), "w", newline="") as fc:
        wr = csv.DictWriter(fc, fieldnames=list(curve[0].keys()))
        wr.writeheader()
        wr.writerows(curve)
    curve_at = {c["step"]: c for c in curve}
    say(f"  {len(curve_rows)} rows in {t_curve:.1f} s; final train {curve[-1]['train_acc']:.3f}, "
        f"held-out {curve[-1]['heldout_acc_all']:.3f}")

    # 3. checkpoints: prefix traces and their exact kernels
    x_kernel = np.concatenate([x_test, x_train[:T]])
    rows = []
    for k in checkpoints:
        pre = os.path.join(out, f"prefix_{k}")
        kdir = os.path.join(out, f"kernel_{k}")
        write_trace(pre, manifest, k, params[:k + 1], x_train, y_train, x_kernel, batches, rates)
        say(f"checkpoint {k}: epk kernel over {k} steps, {len(x_kernel)} test points x {N} training pairs")
        _, dt = run("kernel", ["kernel", pre, "--out", kdir])
        arrays = {name: np.load(os.path.join(kdir, f"{name}.npy"))
                  for name in ("bias", "contributions", "outputs_final", "remainder")}
        opt_path = os.path.join(kdir, "optimizer_term.npy")
        arrays["optimizer_term"] = (np.load(opt_path) if os.path.exists(opt_path)
                                    else np.zeros_like(arrays["bias"]))
        with open(os.path.join(kdir, "audit.json")) as fa:
            audit = json.load(fa)
        C = arrays["bias"].shape[1]
        assert arrays["contributions"].shape == (len(x_kernel), N, C), arrays["contributions"].shape
        assert C == p
        # epk's identity, as this script reads the files
        recon = (arrays["bias"] + arrays["contributions"].sum(axis=1)
                 + arrays["optimizer_term"] + arrays["remainder"])
        ident = float(np.abs(recon - arrays["outputs_final"]).max())
        scale = float(np.abs(arrays["outputs_final"]).max())
        # the size of the terms summed: the contributions cancel each other to a large extent
        terms = float((np.abs(arrays["bias"]) + np.abs(arrays["contributions"]).sum(axis=1)
                       + np.abs(arrays["optimizer_term"]) + np.abs(arrays["remainder"])).max())
        assert ident <= 1e-12 * max(1.0, terms), \
            f"checkpoint {k}: bias + sum_i c + optimizer term + remainder differs from outputs_final by {ident:.3g}"
        # the prefix's f(x; w_k) is the run's row k (epk predict on the one-row trace)
        same_row = float(np.abs(arrays["outputs_final"][:M] - pred_final_at[k]).max())
        assert same_row <= 1e-12 * max(1.0, scale), f"checkpoint {k}: outputs_final != f(x; w_k): {same_row:.3g}"
        r = {"step": k, "train_acc": curve_at[k]["train_acc"]}
        met = checkpoint_metrics(p, x_train, y_train, x_kernel, M, T, arrays)
        r["heldout_acc"] = met.pop("heldout_acc")
        r["heldout_acc_all"] = curve_at[k]["heldout_acc_all"]
        r.update(met)
        r["identity_max_abs"] = ident
        r["identity_relative_to_terms"] = ident / max(1.0, terms)
        r["epk_residual_max_abs"] = audit.get("audit", {}).get("residual_with_remainder_max_abs", float("nan"))
        r["outputs_max_abs"] = scale
        r["terms_max_abs"] = terms
        r["kernel_seconds"] = dt
        rows.append(r)
        say(f"  {dt:.1f} s; identity {ident:.2e}; train acc {r['train_acc']:.3f}, held-out {r['heldout_acc']:.3f}; "
            f"shares: same residue {r['same_residue_share']:.3f}, operand {r['shared_operand_share']:.3f}, "
            f"rest {r['rest_share']:.3f}, top-5 {r['top5_share']:.3f}, own pair {r['memo_self_share']:.3f}")

    with open(os.path.join(out, "study.csv"), "w", newline="") as fs:
        wr = csv.DictWriter(fs, fieldnames=list(rows[0].keys()))
        wr.writeheader()
        for r in rows:
            wr.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_svg(os.path.join(out, "study.svg"), rows, curve,
              f"exact path kernel on a+b mod {p}: {N} training pairs, AdamW lr {lr:g}, wd {wd:g}")

    # 4. epk compare on the run (on its first Mc test points)
    cmp_trace = rundir
    if Mc and Mc < M:
        cmp_trace = os.path.join(out, "run_compare")
        write_trace(cmp_trace, manifest, S, params, x_train, y_train, x_test[:Mc], batches, rates)
    cmp_args = ["compare", cmp_trace, "--json"]
    if args.compare_methods:
        cmp_args += ["--methods", args.compare_methods]
    say(f"epk compare on {Mc if Mc and Mc < M else M} held-out pairs, {S} steps")
    cmp_out, t_cmp = run("compare", cmp_args)
    cmp = json.loads(cmp_out)
    with open(os.path.join(out, "compare.json"), "w") as fj:
        json.dump(cmp, fj, indent=1)
    fS = np.array(cmp["outputs_final"])
    cmp_rows = []
    for name, v in sorted(cmp["methods"].items(), key=lambda kv: kv[1]["error_max_abs"]):
        cmp_rows.append((name, v["error_max_abs"], v["error_max_abs"] / np.abs(fS).max(), v.get("seconds", float("nan"))))
    with open(os.path.join(out, "compare.csv"), "w", newline="") as fc:
        wr = csv.writer(fc)
        wr.writerow(["method", "error_max_abs", "relative_to_max_abs_output", "seconds"])
        for row in cmp_rows:
            wr.writerow([row[0], f"{row[1]:.6g}", f"{row[2]:.6g}", f"{row[3]:.3f}"])
    for row in cmp_rows:
        say(f"  {row[0]:18s} max error {row[1]:.3g}  ({row[3]:.1f} s)")

    total = time.time() - t_start
    write_report(out, run, rows, curve, cmp_rows, fS, dict(
        p=p, fraction=fraction, S=S, lr=lr, wd=wd, betas=args.betas, decay=decay, K=K, M=M, T=T, N=N, P=P,
        seed=args.seed, quick=q, Mc=(Mc if Mc and Mc < M else M), sha=sha, version=version, src=src,
        t_train=t_train, t_curve=t_curve, t_cmp=t_cmp, total=total, argv=sys.argv,
        fmax=float(np.abs(fS).max()), load0=load0, load1=os.getloadavg(), ncpu=os.cpu_count()))
    say(f"wrote {out}: study.csv, study.svg, curve.csv, compare.json, compare.csv, report.md "
        f"({total:.0f} s in all)")


def write_report(out, run, rows, curve, cmp_rows, fS, c):
    t_kernel = sum(r["kernel_seconds"] for r in rows)
    first, last = rows[0], rows[-1]
    L = []
    L.append(f"# From memorising pairs to the algorithm: the exact path kernel on a + b mod {c['p']}\n")
    L.append(f"Written by `examples/modadd_study.py` ({'--quick, ' if c['quick'] else ''}"
             f"{time.strftime('%Y-%m-%d %H:%M')}). epk: `{c['src']}`, `{c['version']}`, "
             f"sha256 `{c['sha'][:16]}…` (run from a copy in this directory).\n")
    L.append("## Setup\n")
    L.append(f"- Data: all {c['p']}² pairs (a, b) as tokens `[a, b, {c['p']}]`, label (a + b) mod {c['p']}; "
             f"N = {c['N']} training pairs (fraction {c['fraction']}, seed {c['seed']}), the rest held out.")
    L.append(f"- Model: examples/models/modadd-transformer.json with vocabulary {c['p'] + 1} and {c['p']} outputs "
             f"(P = {c['P']} parameters).")
    L.append(f"- Training: {c['S']} full-batch AdamW steps, lr {c['lr']:g}"
             + (f" × {c['decay']:g}^s (learning_rates.npy)" if c['decay'] is not None else "")
             + f", weight decay {c['wd']:g}, betas {c['betas']}, in double.")
    L.append(f"- Kernel: at K = {len(rows)} checkpoints k, the prefix trace of the first k steps (params rows 0..k) "
             f"and `epk kernel` (double) at M = {c['M']} held-out pairs (the run's x_test) and the first "
             f"{c['T']} training pairs, in one call per checkpoint (x_test = both, concatenated).")
    L.append("- Accuracies along the run: `epk predict` on one-row (0-step) traces holding row k of params.npy, "
             "at all p² pairs.\n")
    L.append("## Commands and timings\n")
    L.append("```")
    L.append("python3 " + " ".join(shlex.quote(a) for a in c["argv"]))
    L.append("```\n")
    L.append("epk calls (`commands.log` has every one):\n")
    L.append("```")
    curve_calls = [x for x in run.log if x[0] == "curve"]
    for phase, line, dt, rc in run.log:
        if phase == "curve":
            continue
        L.append(f"{line}    # {dt:.1f} s")
    if curve_calls:
        L.append(f"{curve_calls[0][1]}    # and {len(curve_calls) - 1} more rows: "
                 f"{sum(x[2] for x in curve_calls):.1f} s in all")
    L.append("```\n")
    L.append(md_table(["phase", "seconds"], [
        ("train", f"{c['t_train']:.1f}"), ("accuracy curve (predict)", f"{c['t_curve']:.1f}"),
        ("checkpoint kernels", f"{t_kernel:.1f}"), ("compare", f"{c['t_cmp']:.1f}"),
        ("total wall time (incl. Python)", f"{c['total']:.1f}")]))
    L.append("")
    L.append(f"On {c['ncpu']} cores; load average (1, 5, 15 min) {c['load0'][0]:.2f} {c['load0'][1]:.2f} "
             f"{c['load0'][2]:.2f} at the start and {c['load1'][0]:.2f} {c['load1'][1]:.2f} {c['load1'][2]:.2f} "
             f"at the end (other jobs on the machine slow every timing here).\n")
    L.append("## Metrics per checkpoint (study.csv)\n")
    L.append("Held-out x = (a, b), correct logit y = (a + b) mod p; c_y(x, x_i) the exact contribution of training "
             "pair i. Shares are of Σ_i |c_y(x, x_i)|, averaged over the held-out test points; signed sums are "
             "Σ_{i in group} c_y(x, x_i), averaged. \"own pair\" is c_y(x_i, x_i) / Σ_j |c_y(x_i, x_j)| for "
             "training pairs x_i as test points.\n")
    hdr = ["step", "train acc", "held-out acc (all)", "held-out acc (M)", "same-res. share",
           "label baseline", "excess ± se", "operand share", "rest share", "top-5 share",
           "own pair share (train x) ± se", "same-res. share per pair (train x)"]
    tab = []
    for r in rows:
        tab.append((r["step"], f3(r["train_acc"]), f3(r["heldout_acc_all"]), f3(r["heldout_acc"]),
                    f3(r["same_residue_share"]), f3(r["same_residue_share_baseline"]),
                    f"{r['same_residue_share_excess']:+.4f} ± {r['same_residue_share_excess_se']:.4f}",
                    f3(r["shared_operand_share"]), f3(r["rest_share"]), f3(r["top5_share"]),
                    f"{r['memo_self_share']:.3f} ± {r['memo_self_share_se']:.3f}",
                    f"{r['memo_same_residue_share_per_pair']:.4f}"))
    L.append(md_table(hdr, tab))
    L.append("")
    L.append("Signed sums of c_y(x, x_i), means over the held-out x (the last two columns: over the training x):\n")
    hdr = ["step", "same residue", "label baseline", "excess ± se", "shared operand", "rest", "Σ_i |c_y|",
           "optimizer term", "f_y − f_y(w_0)", "own pair c_y(x_i, x_i)", "same-res. excess (train x) ± se"]
    tab = []
    for r in rows:
        tab.append((r["step"], g3(r["same_residue_signed"]), g3(r["same_residue_signed_baseline"]),
                    f"{r['same_residue_signed_excess']:+.3g} ± {r['same_residue_signed_excess_se']:.2g}",
                    g3(r["shared_operand_signed"]), g3(r["rest_signed"]),
                    f"{r['sum_abs_y']:.3g}", g3(r["optimizer_term_y"]), g3(r["f_y"] - r["bias_y"]),
                    g3(r["memo_self_signed"]),
                    f"{r['memo_same_residue_signed_excess']:+.3g} ± {r['memo_same_residue_signed_excess_se']:.2g}"))
    L.append(md_table(hdr, tab))
    L.append("")
    L.append("\"label baseline\": at the same held-out x, the same measure for the other logits c ≠ y with the "
             "pairs of residue c (which is not x's answer), averaged over c. A training pair of residue c pushes "
             "logit c at every input (through the last layer's bias and whatever all inputs share), so only the "
             "excess over this baseline is about x's answer. \"own pair\" is c_y(x_i, x_i) for a training pair "
             "x_i as test point, as a share of Σ_j |c_y(x_i, x_j)|; \"same-res. share per pair\" is the share "
             "of one other pair with the same residue, for comparison. ± se: the standard error of the mean over "
             "the test points (their spread, not a rounding error: every number here is exact to ~1e-12).\n")
    L.append(f"Group sizes (fraction of the N training pairs, mean over the held-out points): same residue "
             f"{first['same_residue_pairs']:.3f}, shared operand {first['shared_operand_pairs']:.3f}, rest "
             f"{first['rest_pairs']:.3f}. A group whose share of Σ|c_y| equals its size is not singled out.\n")
    L.append("The identity bias + Σ_i contributions + optimizer term + remainder = outputs_final, as read from "
             "the files, per checkpoint: " + ", ".join(
                 f"k={r['step']}: {r['identity_max_abs']:.1e} (epk's residual {r['epk_residual_max_abs']:.1e})"
                 for r in rows) + f"; outputs up to {max(r['outputs_max_abs'] for r in rows):.1f}, the summed terms "
             f"(|bias| + Σ_i |c| + |optimizer term| + |remainder|) up to {max(r['terms_max_abs'] for r in rows):.3g}; "
             f"the script asserts at most 1e-12 of the latter.\n")
    L.append("![shares, signed sums and accuracies](study.svg)\n")
    L.append(f"## The exact kernel against the approximations (`epk compare`, {c['S']} steps, "
             f"{c['Mc']} held-out pairs)\n")
    L.append(f"max |reconstruction − f(x; w_S)| over the {c['Mc']} pairs and {c['p']} outputs "
             f"(outputs up to {np.abs(fS).max():.2f}):\n")
    L.append(md_table(["method", "max error", "relative to max |f|", "seconds"],
                      [(n, f"{e:.3g}", f"{rel:.3g}", f"{s:.1f}") for n, e, rel, s in cmp_rows]))
    L.append("")
    L.append("## Interpretation\n")
    L += interpretation(rows, curve, cmp_rows, c)
    with open(os.path.join(out, "report.md"), "w") as fr:
        fr.write("\n".join(L) + "\n")


def interpretation(rows, curve, cmp_rows, c):
    """Sentences that follow from the numbers; each states what it compares."""
    first, last = rows[0], rows[-1]
    size = last["same_residue_pairs"]

    def series(key, fmt="{:+.3g}"):
        return ", ".join(f"{r['step']}: " + fmt.format(r[key]) for r in rows)

    out = []
    best = max(curve, key=lambda r: r["heldout_acc_all"])
    t100 = next((r["step"] for r in curve if r["train_acc"] == 1.0), None)
    out.append(f"- Training: train accuracy {curve[-1]['train_acc']:.3f} at the end"
               + (f" (first 100% at step {t100})" if t100 is not None else " (100% at no evaluated row)")
               + f"; held-out accuracy (all {c['p'] ** 2 - c['N']} held-out pairs) {curve[0]['heldout_acc_all']:.3f} "
               f"at step 0, {curve[-1]['heldout_acc_all']:.3f} at the end (best {best['heldout_acc_all']:.3f} "
               f"at step {best['step']}).")
    out.append(f"- Same-residue pairs are {size:.1%} of the training pairs and carry {first['same_residue_share']:.3f} "
               f"→ {last['same_residue_share']:.3f} of Σ|c_y| at held-out x (steps {first['step']} → {last['step']}): "
               f"{first['same_residue_share'] / size:.1f}× → {last['same_residue_share'] / size:.1f}× their number. "
               f"The label baseline (the share the pairs of residue c carry of logit c at the same x, for the "
               f"residues c that are not x's answer) is {first['same_residue_share_baseline']:.3f} → "
               f"{last['same_residue_share_baseline']:.3f}; the excess over it, by checkpoint: "
               f"{series('same_residue_share_excess')}.")
    out.append(f"- Signed: same-residue pairs push f_y by {series('same_residue_signed', '{:+.4g}')}; the label baseline "
               f"by {series('same_residue_signed_baseline', '{:+.4g}')}; the excess is "
               f"{series('same_residue_signed_excess')}. The other groups: shared operand "
               f"{first['shared_operand_signed']:+.3g} → {last['shared_operand_signed']:+.3g}, rest "
               f"{first['rest_signed']:+.3g} → {last['rest_signed']:+.3g}.")
    out.append(f"- Cancellation: Σ_i |c_y| averages {first['sum_abs_y']:.3g} → {last['sum_abs_y']:.3g} at held-out x, "
               f"against a net Σ_i c_y of {first['training_sum_y']:+.3g} → {last['training_sum_y']:+.3g} and outputs "
               f"of a few units: the training pairs' contributions are large and nearly cancel, so shares of Σ|c| "
               f"describe the cancelling mass more than the prediction.")
    out.append(f"- Memorisation: a training pair's own contribution is {series('memo_self_share', '{:.3f}')} of "
               f"Σ_j |c_y(x_i, x_j)| at its own input (one of {c['N']} pairs: {1 / c['N']:.4f} if nothing were "
               f"singled out; another pair of the same residue: {first['memo_same_residue_share_per_pair']:.4f} → "
               f"{last['memo_same_residue_share_per_pair']:.4f}); in value {series('memo_self_signed')}. At training x "
               f"the other same-residue pairs exceed the label baseline by {series('memo_same_residue_signed_excess')}.")
    out.append(f"- Concentration: the 5 largest |c_y| carry {series('top5_share', '{:.3f}')} of Σ|c_y| at held-out x "
               f"(5 of {c['N']} pairs: {5 / c['N']:.3f} if uniform).")
    out.append(f"- The optimizer term (AdamW's weight decay, attributed to no pair) moves the correct logit by "
               f"{first['optimizer_term_y']:+.3g} → {last['optimizer_term_y']:+.3g} on average, while the training "
               f"pairs' sum moves it by {first['training_sum_y']:+.3g} → {last['training_sum_y']:+.3g}.")
    out.append("")
    out += conclusions(rows, curve, c)
    out.append("")
    names = {n: e for n, e, _, _ in cmp_rows}
    if "exact" in names:
        others = [f"{n} {e:.2g}" for n, e, _, _ in cmp_rows if n != "exact"]
        out.append(f"- `epk compare`: the exact kernel reconstructs f(x; w_S) to {names['exact']:.2g}; the "
                   f"approximations miss by {', '.join(others)} (outputs up to {c['fmax']:.2g}).")
    return out


def conclusions(rows, curve, c):
    """What shifts and what does not: statements chosen by the numbers, with the numbers."""
    first, last = rows[0], rows[-1]
    out = ["**Reading.**"]
    exc = [r["same_residue_share_excess"] for r in rows]
    share_min = min(r["same_residue_share"] for r in rows)
    size = last["same_residue_pairs"]
    if max(abs(e) for e in exc) < 0.1 * share_min:
        out.append(f"- What does not shift: the same-residue pairs' large share ({first['same_residue_share'] / size:.1f}× "
                   f"→ {last['same_residue_share'] / size:.1f}× their number) is the label effect. At every checkpoint "
                   f"it is within {max(abs(e) for e in exc):.3f} of the share the pairs of residue c carry of logit c "
                   f"when c is not the answer, and it falls with that baseline. Read without the baseline, it would look "
                   f"like the algorithm from step {first['step']} on.")
    else:
        out.append(f"- The same-residue share departs from the label baseline by up to {max(exc, key=abs):+.3f}.")
    # a late, positive excess?
    def beyond(r, key):
        return r[key] > 2 * r[key + "_se"]

    tail = 0
    for r in reversed(rows):
        if beyond(r, "same_residue_share_excess") and beyond(r, "same_residue_signed_excess"):
            tail += 1
        else:
            break
    prev = rows[-tail - 1] if tail < len(rows) else {"step": 0, "heldout_acc_all": curve[0]["heldout_acc_all"]}
    if tail:
        k0 = rows[-tail]["step"]
        when = (f"at the last checkpoint (step {k0})" if tail == 1 else f"from step {k0} on")
        out.append(f"- What shifts, late and by little: {when} the same-residue pairs exceed the baseline "
                   f"in share and in value (at step {last['step']}: {last['same_residue_share_excess']:+.4f} of Σ|c_y|, "
                   f"{last['same_residue_signed_excess']:+.3g} in f_y, against Σ|c_y| = {last['sum_abs_y']:.3g}), "
                   f"while held-out accuracy has risen from {prev['heldout_acc_all']:.3f} (step {prev['step']}) to "
                   f"{last['heldout_acc_all']:.3f}. The kernel "
                   f"machine's sum at held-out x begins to lean on the pairs that share the answer; it is far from "
                   f"being carried by them.")
    else:
        out.append(f"- What does not shift measurably: the same-residue pairs' excess over the label baseline "
                   f"(the part that is about x's answer) is not two standard errors above zero at the last checkpoint "
                   f"(step {last['step']}: share {last['same_residue_share_excess']:+.4f} ± "
                   f"{last['same_residue_share_excess_se']:.4f}, value {last['same_residue_signed_excess']:+.3g} ± "
                   f"{last['same_residue_signed_excess_se']:.2g}; by checkpoint, value: "
                   + ", ".join(f"{r['step']}: {r['same_residue_signed_excess']:+.3g} ± {r['same_residue_signed_excess_se']:.2g}"
                               for r in rows)
                   + f"). With {c['M']} held-out points the kernel machine shows no measurable lean onto the pairs "
                   f"that share the answer while held-out accuracy goes from {first['heldout_acc_all']:.3f} to "
                   f"{last['heldout_acc_all']:.3f}; a shift smaller than the spread between test points is not "
                   f"excluded.")
    selfs = [r["memo_self_share"] for r in rows]
    monotone = all(b >= a for a, b in zip(selfs, selfs[1:]))
    rose = last["heldout_acc_all"] > first["heldout_acc_all"] + 0.05
    if last["memo_self_share"] > first["memo_self_share"]:
        ratio = last["memo_self_share"] / last["memo_same_residue_share_per_pair"]
        out.append(f"- What grows throughout is memorisation: a training pair's own share of Σ|c_y| at its own input "
                   f"rises {first['memo_self_share']:.3f} → {last['memo_self_share']:.3f} ({ratio:.1f}× that of another "
                   f"pair with the same residue at step {last['step']}; {last['memo_self_signed']:+.3g} in value)"
                   + (", and at training x the other same-residue pairs fall below the label baseline "
                      f"({first['memo_same_residue_signed_excess']:+.3g} → {last['memo_same_residue_signed_excess']:+.3g})"
                      if last["memo_same_residue_signed_excess"] < first["memo_same_residue_signed_excess"] < 0 else "")
                   + (". It grows at every checkpoint" + (", also while held-out accuracy rises." if rose else ".")
                      if monotone else ". It does not grow at every checkpoint."))
    else:
        out.append(f"- The own-pair share does not grow: {first['memo_self_share']:.3f} → {last['memo_self_share']:.3f}.")
    top = [r["top5_share"] for r in rows]
    out.append(f"- The 5 largest pairs carry {min(top):.3f}–{max(top):.3f} of Σ|c_y| at held-out x across the "
               f"checkpoints (5 of {c['N']} pairs: {5 / c['N']:.3f} if uniform)"
               + (": no concentration onto a few pairs appears or disappears." if max(top) - min(top) < 0.05 else "."))
    out.append(f"- Caveats: Σ|c_y| ({last['sum_abs_y']:.3g}) is {last['sum_abs_y'] / max(1e-300, abs(last['training_sum_y'])):.0f}× "
               f"the net sum over pairs ({last['training_sum_y']:+.3g}), so every share above describes mass that "
               f"cancels; the weight-decay term ({last['optimizer_term_y']:+.3g} on f_y) belongs to no pair; "
               f"{c['M']} held-out points, {c['T']} training "
               f"points as test points, one seed; the run ends at {last['heldout_acc_all']:.0%} held-out accuracy, "
               f"before any full generalisation.")
    return out


if __name__ == "__main__":
    main()
