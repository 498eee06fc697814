#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/corpus/<target>/) from small traces
made by `epk train`.  Run once by a developer (python3, no NumPy needed); the seeds
are committed, so neither the build nor CI runs this.

usage: fuzz/make_seeds.py EPK_BINARY
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

NAMES = ["manifest.json", "x_train.npy", "y_train.npy", "params.npy", "init_params.npy",
         "batches.npy", "learning_rates.npy", "x_test.npy",
         "init_momentum_buffer.npy", "init_exp_avg.npy", "init_exp_avg_sq.npy", "init_max_exp_avg_sq.npy"]
P = 4 * 3 + 3 + 3 * 3 + 3  # iris, --hidden 3


def npy_f8(values):
    """A 1-d <f8 .npy file (format 1.0), as numpy.save writes it."""
    head = "{'descr': '<f8', 'fortran_order': False, 'shape': (%d,), }" % len(values)
    pad = (64 - (10 + len(head) + 1) % 64) % 64
    head = (head + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head + struct.pack("<%dd" % len(values), *values)


def resume(d, fields, state):
    """Turns trace d into a resumed version 2 trace: optimizer fields and recorded state."""
    path = os.path.join(d, "manifest.json")
    m = json.load(open(path))
    m["version"] = 2
    m["optimizer"].update(fields)
    json.dump(m, open(path, "w"))
    for name, values in state.items():
        open(os.path.join(d, name), "wb").write(npy_f8(values))


def main():
    epk = sys.argv[1]
    here = os.path.dirname(os.path.abspath(__file__))
    out = {t: os.path.join(here, "corpus", t) for t in ("npy", "manifest", "csv", "trace")}
    for d in out.values():
        os.makedirs(d, exist_ok=True)
    small = ["--n-train", "6", "--n-test", "2", "--hidden", "3", "--steps", "2", "--data", "iris"]
    runs = {
        "recorded": [],
        "replayed_batches": ["--init-only", "--batch-size", "3"],
        "mse_lr_decay": ["--loss", "mse", "--lr-decay", "0.5", "--activation", "relu"],
        "float32": ["--precision", "float"],
        # trace format version 2
        "adamw_amsgrad": ["--optimizer", "adamw", "--amsgrad", "--betas", "0.8,0.99"],
        "sgd_nesterov_init": ["--init-only", "--momentum", "0.9", "--nesterov", "--weight-decay", "0.0001",
                              "--batch-size", "3"],
        "adam_resumed": ["--optimizer", "adam", "--init-only"],
        "sgd_momentum_resumed": ["--momentum", "0.5", "--dampening", "0.1"],
    }
    resumed = {
        "adam_resumed": ({"initial_step": 3}, {"init_exp_avg.npy": [0.01 * (k % 7 - 3) for k in range(P)],
                                               "init_exp_avg_sq.npy": [1e-4 * (k % 5) for k in range(P)]}),
        "sgd_momentum_resumed": ({"initial_step": 10}, {"init_momentum_buffer.npy": [0.02 * (k % 3 - 1) for k in range(P)]}),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in runs.items():
            d = os.path.join(tmp, name)
            subprocess.run([epk, "train", "--out", d] + small + extra, check=True, capture_output=True)
            if name in resumed:
                resume(d, *resumed[name])
            record = b""
            for k, f in enumerate(NAMES):
                p = os.path.join(d, f)
                if not os.path.exists(p):
                    continue
                data = open(p, "rb").read()
                record += bytes([k]) + struct.pack("<I", len(data)) + data
                target = "manifest" if f.endswith(".json") else "npy"
                open(os.path.join(out[target], name + "_" + f), "wb").write(data)
            open(os.path.join(out["trace"], name), "wb").write(record)
    csvs = {
        "plain.csv": "1,2,0\n3.5,-4e-3,1\n0,0,2\n",
        "header.csv": "3,2,setosa,versicolor\n5.1,3.5,0\n4.9,3.0,1\n4.7,3.2,0\n",
        "blank_end.csv": "1,2,1\n3,4,0\n\n\n",
    }
    for name, text in csvs.items():
        open(os.path.join(out["csv"], name), "w").write(text)


if __name__ == "__main__":
    main()
