"""Fixtures of the Python package's tests: traces written by the epk binary ($EPK)."""
import json
import os
import subprocess

import pytest

EPK = os.environ.get("EPK", "epk")


def run_epk(*args, check=True):
    """The epk binary's exit status, stdout and stderr."""
    p = subprocess.run([EPK, *map(str, args)], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError("epk %s: exit %d: %s" % (" ".join(map(str, args)), p.returncode, p.stderr[-500:]))
    return p.returncode, p.stdout, p.stderr


def edit_manifest(directory, change):
    path = os.path.join(directory, "manifest.json")
    with open(path) as f:
        m = json.load(f)
    change(m)
    with open(path, "w") as f:
        json.dump(m, f)


@pytest.fixture(scope="session")
def traces(tmp_path_factory):
    """Traces by name: recorded plain SGD, a replayed one, momentum, AdamW, a CNN, misdescribed runs."""
    base = tmp_path_factory.mktemp("traces")
    small = ["--n-train", "24", "--n-test", "5", "--hidden", "8", "--steps", "4"]
    out = {}

    def train(name, *extra):
        d = base / name
        run_epk("train", "--out", d, *small, *extra)
        out[name] = str(d)
        return d

    train("sgd")
    train("sgd_relu", "--activation", "relu", "--batch-size", "8", "--seed", "2")
    train("replayed", "--init-only")
    train("momentum", "--momentum", "0.9", "--nesterov", "--batch-size", "8")
    train("adamw", "--optimizer", "adamw", "--amsgrad")
    train("decay", "--lr-decay", "0.9")
    model = os.path.join(os.environ.get("EPK_SOURCE", "."), "examples", "models", "cnn_relu_maxpool.json")
    if os.path.exists(model):
        d = base / "cnn"
        run_epk("train", "--out", d, "--data", "digits", "--model", model, "--n-train", "16", "--n-test", "3",
                "--steps", "3", "--batch-size", "8", "--lr", "0.1")
        out["cnn"] = str(d)
    # misdescribed: the rate changed, the schedule dropped
    d = train("lr_wrong")
    edit_manifest(d, lambda m: m["optimizer"].update(learning_rate=0.11))
    d = train("schedule_dropped", "--lr-decay", "0.9")
    os.remove(d / "learning_rates.npy")
    return out
