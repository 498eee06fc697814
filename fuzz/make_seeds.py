#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/corpus/<target>/) from small traces
made by `epk train`.  Run once by a developer (python3, no NumPy needed); the seeds
are committed, so neither the build nor CI runs this.

usage: fuzz/make_seeds.py EPK_BINARY
"""
import os
import struct
import subprocess
import sys
import tempfile

NAMES = ["manifest.json", "x_train.npy", "y_train.npy", "params.npy", "init_params.npy",
         "batches.npy", "learning_rates.npy", "x_test.npy"]


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
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in runs.items():
            d = os.path.join(tmp, name)
            subprocess.run([epk, "train", "--out", d] + small + extra, check=True, capture_output=True)
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
