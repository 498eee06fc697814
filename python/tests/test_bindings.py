"""The package epk: the same numbers as the command line, the strict audit, bad arrays refused."""
import json
import os
import threading
import time

import numpy as np
import pytest

import epk
from conftest import run_epk


def cli_json(*args):
    status, out, _ = run_epk(*args, "--json", check=False)
    return status, json.loads(out)


def same(py, cli, path="report"):
    """Every key of the CLI's JSON is in the Python result with an identical value."""
    if isinstance(cli, dict):
        for k, v in cli.items():
            assert k in py, "%s: %s missing" % (path, k)
            same(py[k], v, path + "." + k)
    elif isinstance(cli, (list, np.ndarray)) and isinstance(py, np.ndarray):
        assert np.array_equal(py, np.asarray(cli, dtype=np.float64)), path
    elif isinstance(cli, list):
        assert len(py) == len(cli), path
        for i, (a, b) in enumerate(zip(py, cli)):
            same(a, b, "%s[%d]" % (path, i))
    else:
        assert py == cli, "%s: %r != %r" % (path, py, cli)


@pytest.mark.parametrize("name", ["sgd", "sgd_relu", "replayed", "momentum", "adamw", "cnn"])
def test_verify_is_the_cli(traces, name):
    if name not in traces:
        pytest.skip("no model file")
    status, cli = cli_json("verify", traces[name])
    assert status == 0
    py = epk.verify(traces[name])
    assert py["ok"] is True and py["path_explained"] is True
    same(py, cli)


@pytest.mark.parametrize("precision", ["float", "long-double", "mpfr:128"])
def test_verify_in_other_precisions_is_the_cli(traces, precision):
    status, cli = cli_json("verify", traces["sgd"], "--precision", precision)
    py = epk.verify(traces["sgd"], precision=precision)
    assert status == (0 if cli["ok"] else 1)
    same(py, cli)
    if precision.startswith("mpfr"):
        assert "reconstruction_decimal" in py


def test_predict_is_the_cli(traces):
    for name in ("sgd", "replayed", "adamw"):
        status, cli = cli_json("predict", traces[name])
        assert status == 0
        same(epk.predict(traces[name]), cli)


def test_kernel_arrays_are_the_cli_files(traces, tmp_path):
    out = tmp_path / "k"
    run_epk("kernel", traces["sgd"], "--out", out, "--steps", "0,2")
    k = epk.kernel(traces["sgd"], steps=[2, 0])
    for name in ("bias", "contributions", "coefficients", "remainder", "outputs_final"):
        a = np.load(out / (name + ".npy"))
        assert k[name].dtype == np.float64 and k[name].shape == a.shape, name
        assert np.array_equal(k[name], a), name
    assert sorted(k["kernel_steps"]) == [0, 2]
    for s in (0, 2):
        assert np.array_equal(k["kernel_steps"][s], np.load(out / ("kernel_step_%d.npy" % s)))
    # zero-copy: the arrays own no copy of their data but hold the engine's buffer
    assert not k["contributions"].flags["OWNDATA"] and k["contributions"].base is not None
    # the kernel machine's identity
    rec = k["bias"] + k["contributions"].sum(axis=1) + k["remainder"]
    assert np.max(np.abs(rec - k["outputs_final"])) < 1e-12
    with open(out / "audit.json") as f:
        assert json.load(f)["audit"]["at_rounding_level"] == k["audit"]["at_rounding_level"] is True


def test_kernel_of_an_optimizer_run_has_its_term(traces):
    k = epk.kernel(traces["adamw"])
    assert k["optimizer_term"].shape == k["bias"].shape
    rec = k["bias"] + k["contributions"].sum(axis=1) + k["optimizer_term"] + k["remainder"]
    assert np.max(np.abs(rec - k["outputs_final"])) < 1e-12
    with pytest.raises(epk.TraceError) as e:
        epk.kernel(traces["adamw"], steps=[0])
    assert e.value.file == "steps" and "plain SGD" in e.value.rule


@pytest.mark.parametrize("name, step", [("lr_wrong", None), ("schedule_dropped", None)])
def test_misdescribed_runs_raise_naming_the_step(traces, name, step):
    status, cli = cli_json("verify", traces[name])
    assert status == 1 and cli["path_explained"] is False
    for call in (epk.verify, epk.predict, epk.kernel):
        with pytest.raises(epk.UnexplainedStepsError) as e:
            call(traces[name])
        assert e.value.step == cli["audit"]["worst_step"]
        assert e.value.units > epk.audit_rounding_units
        assert "is not the declared training: step %d" % e.value.step in str(e.value)
        assert e.value.report["path_explained"] is False
    r = epk.verify(traces[name], allow_unexplained_steps=True)
    assert r["ok"] is True and r["unexplained"]["step"] == cli["audit"]["worst_step"]
    same(r, dict(cli, ok=True))


def test_check(traces, tmp_path):
    k = epk.kernel(traces["sgd"], steps=[1])
    r = epk.check(traces["sgd"], against={"contributions": k["contributions"], "kernel_step_1": k["kernel_steps"][1]})
    assert r["ok"] is True and len(r["files"]) == 2
    bad = k["contributions"].copy()
    bad[0, 0, 0] += 1e-3
    r = epk.check(traces["sgd"], against={"contributions": bad})
    assert r["ok"] is False and r["files"][0]["worst"][0]["index"] == [0, 0, 0]
    # the arrays of a misdescribed run agree with epk's, and still the path is wrong
    km = epk.kernel(traces["lr_wrong"], allow_unexplained_steps=True)
    with pytest.raises(epk.UnexplainedStepsError):
        epk.check(traces["lr_wrong"], against={"contributions": km["contributions"]})
    r = epk.check(traces["lr_wrong"], against={"contributions": km["contributions"]}, allow_unexplained_steps=True)
    assert r["files_within_tolerance"] is True and r["path_explained"] is False
    np.save(tmp_path / "bias.npy", k["bias"])
    assert epk.check(traces["sgd"], against=[tmp_path / "bias.npy"])["ok"] is True


def arrays_of(directory):
    t = epk.load(directory)
    d = {"manifest": t.manifest}
    for f in os.listdir(directory):
        if f.endswith(".npy"):
            d[f[:-4]] = np.load(os.path.join(directory, f))
    return d


def test_arrays_in_memory_give_the_same_report(traces):
    for name in ("sgd_relu", "momentum", "cnn"):
        if name not in traces:
            continue
        a = epk.verify(traces[name])
        b = epk.verify(arrays_of(traces[name]))
        same(b, a)
    # strided and Fortran-ordered arrays are read as their values
    d = arrays_of(traces["sgd"])
    d["x_train"] = np.asfortranarray(d["x_train"])
    d["params"] = np.repeat(d["params"], 2, axis=1)[:, ::2]
    assert not d["params"].flags["C_CONTIGUOUS"]
    assert epk.verify(d)["reconstruction"].tolist() == epk.verify(traces["sgd"])["reconstruction"].tolist()


@pytest.mark.parametrize("key, make, rule", [
    ("x_train", lambda a: a.astype(np.float16), "dtype float16"),
    ("x_train", lambda a: a.astype(object), "dtype object"),
    ("x_train", lambda a: a > 0, "dtype bool"),
    ("x_train", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 3, np.nan, a), "NaN"),
    ("x_train", lambda a: a[:, :5], "input_dim"),
    ("params", lambda a: a[:, :-1], "params"),
    ("y_train", lambda a: a + 100, "y_train"),
    ("y_train", lambda a: a.astype(np.float64), "y_train"),
])
def test_bad_arrays_raise_trace_error(traces, key, make, rule):
    d = arrays_of(traces["sgd"])
    d[key] = make(d[key])
    with pytest.raises(epk.TraceError) as e:
        epk.verify(d, name="mine")
    assert e.value.file.startswith("mine/")
    assert rule.lower() in str(e.value).lower() or key in e.value.file


def test_bad_calls_raise_trace_error(traces):
    with pytest.raises(epk.TraceError) as e:
        epk.verify(traces["sgd"], precision="float17")
    assert e.value.file == "--precision"
    with pytest.raises(epk.TraceError):
        epk.verify("/nonexistent/trace")
    with pytest.raises(epk.TraceError):
        epk.verify({"manifest": {"format": "nope"}})
    with pytest.raises(epk.TraceError):
        epk.load({"x_train": np.zeros((2, 2)), "unknown": 1})
    with pytest.raises(TypeError):
        epk.verify(42)
    with pytest.raises(epk.TraceError):
        epk.kernel(traces["sgd"], steps=[99])


def test_save_round_trip(traces, tmp_path):
    epk.save(arrays_of(traces["sgd"]), tmp_path / "copy")
    for f in ("params.npy", "x_train.npy", "manifest.json"):
        assert (tmp_path / "copy" / f).read_bytes() == open(os.path.join(traces["sgd"], f), "rb").read(), f


def test_the_gil_is_released(traces):
    """Python threads run while the engine works."""
    done = threading.Event()
    result = {}

    def work():
        result["r"] = epk.verify(traces["sgd"], precision="mpfr:192")
        done.set()

    t = threading.Thread(target=work)
    t.start()
    ticks, start = 0, time.perf_counter()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    t.join()
    elapsed = time.perf_counter() - start
    assert result["r"]["ok"] is True
    if elapsed > 0.05:  # long enough to tell
        assert ticks > 10, (ticks, elapsed)


def test_explain_is_the_cli_and_adds_up(traces):
    status, cli = cli_json("explain", traces["sgd_relu"], "--top", "4")
    assert status == 0
    py = epk.explain(traces["sgd_relu"], top=4)
    same(py, cli)
    k = epk.kernel(traces["sgd_relu"], structured=False)  # the split by layer takes the full-Jacobian path
    y = np.load(os.path.join(traces["sgd_relu"], "y_train.npy"))
    for p in py["points"]:
        m, c = p["test_point"], p["predicted_class"]
        assert c == int(np.argmax(k["outputs_final"][m]))
        v = k["contributions"][m, :, c]
        assert [e["train_index"] for e in p["proponents"]] == [int(i) for i in np.argsort(-v, kind="stable")[:4] if v[i] > 0]
        assert [e["contribution"] for e in p["opponents"]] == sorted(v[v < 0])[:len(p["opponents"])]
        assert all(e["label"] == y[e["train_index"]] for e in p["proponents"] + p["opponents"])
        total = p["bias"] + p["training_points"] + p["optimizer_term"] + p["remainder"]
        assert abs(total - p["output"]) < 1e-12
    with pytest.raises(epk.UnexplainedStepsError):
        epk.explain(traces["lr_wrong"])


def test_explain_splits_add_up(traces):
    for name in ("sgd_relu", "momentum", "cnn"):
        if name not in traces:
            continue
        py = epk.explain(traces[name], top=3, by_step=True)
        status, cli = cli_json("explain", traces[name], "--top", "3", "--by-step")
        assert status == 0
        same(py, cli)
        for p in py["points"]:
            for e in p["proponents"] + p["opponents"]:
                by_layer = sum(l["contribution"] for l in e["layers"])
                assert abs(by_layer - e["contribution"]) <= 1e-13 * max(1.0, abs(e["contribution"]))
                assert abs(sum(e["steps"]) - e["contribution"]) <= 1e-13 * max(1.0, abs(e["contribution"]))
                assert len(e["steps"]) == py["steps"]
        assert "layers" not in epk.explain(traces[name], top=1, by_layer=False)["points"][0]["proponents"][0]
