"""epk.torch: recorder -> trace -> epk.verify round trips; misdescribed runs caught; refusals by name."""
import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import epk  # noqa: E402
import epk.torch  # noqa: E402
from conftest import run_epk  # noqa: E402

nn = torch.nn


def data(shape, n=24, classes=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


def train(model, opt, X, y, steps, batch=None, sched=None, clip=None, loss_fn=None, seed=1, x_test=None,
          record=True, **kw):
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    rec = epk.torch.Recorder(model, opt, loss_fn, X, y, x_test=x_test, **kw) if record else None
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randperm(len(X), generator=g)[:batch] if batch else None
        xb, yb = (X, y) if idx is None else (X[idx], y[idx])
        opt.zero_grad()
        loss_fn(model(xb), yb).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if rec:
            rec.step(idx)
        if sched is not None:
            sched.step()
    return rec


def mlp(dtype, act=nn.Tanh):
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 8), act(), nn.Linear(8, 3)).to(dtype)


CASES = {
    "sgd_f64_full": lambda m: (torch.optim.SGD(m.parameters(), lr=0.5), None),
    "momentum_nesterov": lambda m: (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                                    weight_decay=1e-3), None),
    "adam_steplr": lambda m: (lambda o: (o, torch.optim.lr_scheduler.StepLR(o, 2, gamma=0.5)))(
        torch.optim.Adam(m.parameters(), lr=0.01)),
    "adamw_amsgrad_exp": lambda m: (lambda o: (o, torch.optim.lr_scheduler.ExponentialLR(o, 0.9)))(
        torch.optim.AdamW(m.parameters(), lr=0.01, amsgrad=True)),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip(case, dtype, tmp_path):
    X, y = data((4,), dtype=dtype)
    model = mlp(dtype)
    opt, sched = CASES[case](model)
    rec = train(model, opt, X, y, steps=6, batch=None if case == "sgd_f64_full" else 8, sched=sched, x_test=X[:5])
    r = rec.verify()
    assert r["ok"] and r["path_explained"], r["audit"]
    assert r["audit"]["deviation_max_over_recording_u"] <= epk.audit_rounding_units
    assert r["audit"]["path_precision"] == ("float64" if dtype == torch.float64 else "float32")
    # the trace on disk: the CLI gives the same numbers
    rec.save(tmp_path / "run")
    status, out, _ = run_epk("verify", tmp_path / "run", "--json")
    cli = json.loads(out)
    assert status == 0 and cli["residual_max_abs"] == r["residual_max_abs"]
    assert np.array_equal(np.asarray(cli["reconstruction"]), r["reconstruction"])
    # f(x; w_S) is torch's model at the test points
    with torch.no_grad():
        ref = model(X[:5]).double().numpy()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert np.max(np.abs(r["outputs_final"] - ref)) <= tol * max(1.0, np.max(np.abs(ref)))
    if sched is not None:
        assert (tmp_path / "run" / "learning_rates.npy").exists()


def test_cnn_with_residual_and_layer_norm():
    X, y = data((1, 6, 6), n=16)
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        epk.torch.Residual(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())),
        nn.AvgPool2d(3), nn.Flatten(), nn.LayerNorm(3), nn.Linear(3, 3)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    rec = train(model, opt, X, y, steps=3, batch=8, x_test=X[:3])
    r = rec.verify()
    assert r["ok"] and r["path_explained"]
    layers = rec.trace().manifest["model"]["layers"]
    assert [l["type"] for l in layers][:4] == ["conv2d", "relu", "max_pool2d", "residual"]
    k = rec.kernel()
    rec_sum = k["bias"] + k["contributions"].sum(axis=1) + k["optimizer_term"] + k["remainder"]
    assert np.max(np.abs(rec_sum - k["outputs_final"])) < 1e-12


def test_a_resumed_run():
    X, y = data((4,))
    model = mlp(torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    train(model, opt, X, y, steps=3, batch=8, record=False)
    rec = train(model, opt, X, y, steps=4, batch=8, seed=2)
    assert rec.initial_step == 3 and set(rec.state) == {"init_exp_avg", "init_exp_avg_sq"}
    assert rec.verify()["ok"]
    m2 = mlp(torch.float64)
    o2 = torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9)
    train(m2, o2, X, y, steps=2, record=False)
    with pytest.raises(ValueError, match="initial_step"):
        epk.torch.Recorder(m2, o2, nn.CrossEntropyLoss(), X, y)
    rec2 = train(m2, o2, X, y, steps=3, initial_step=2)
    assert rec2.verify()["ok"]


def test_gradient_clipping_is_caught_at_its_step():
    X, y = data((4,))
    model = mlp(torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    rec = epk.torch.Recorder(model, opt, nn.CrossEntropyLoss(), X, y)
    for s in range(5):
        opt.zero_grad()
        nn.CrossEntropyLoss()(model(X), y).backward()
        if s == 3:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-2)
        opt.step()
        rec.step()
    with pytest.raises(epk.UnexplainedStepsError) as e:
        rec.verify()
    assert e.value.step == 3 and "step 3" in str(e.value)
    # clipped on every step, in float32
    X32, y32 = data((4,), dtype=torch.float32)
    m32 = mlp(torch.float32)
    rec32 = train(m32, torch.optim.SGD(m32.parameters(), lr=0.5), X32, y32, steps=4, clip=1e-2)
    with pytest.raises(epk.UnexplainedStepsError):
        rec32.verify()


def test_dropout_in_training_mode_warns_and_is_caught():
    X, y = data((4,))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with pytest.warns(UserWarning, match="Dropout"):
        rec = train(model, opt, X, y, steps=3)
    with pytest.raises(epk.UnexplainedStepsError):
        rec.verify()
    # evaluation mode: dropout is the identity and the run is exact
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = train(model, opt, X, y, steps=3)
    assert rec.verify()["ok"]


class Skip(nn.Module):  # a skip connection epk.torch cannot see
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return x + self.lin(x)


@pytest.mark.parametrize("model, name, reason", [
    (lambda: nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.ReLU(), nn.BatchNorm1d(8)), nn.Linear(8, 3)), "1.1",
     "couples the samples"),
    (lambda: nn.Sequential(nn.Linear(4, 8), Skip(), nn.Linear(8, 3)), "1", "Skip is not a layer"),
    (lambda: nn.Sequential(nn.Linear(4, 8), nn.GELU(approximate="tanh"), nn.Linear(8, 3)), "1", "erf"),
    (lambda: nn.Sequential(nn.Linear(4, 8), nn.Softplus(beta=2), nn.Linear(8, 3)), "1", "beta"),
])
def test_unsupported_modules_are_refused_by_name(model, name, reason):
    X, y = data((4,), dtype=torch.float32)
    m = model()
    with pytest.raises(epk.torch.UnsupportedModule) as e:
        epk.torch.Recorder(m, torch.optim.SGD(m.parameters(), lr=0.1), nn.CrossEntropyLoss(), X, y)
    assert e.value.name == name and reason in str(e.value)


def test_bad_setups_are_refused():
    X, y = data((4,))
    m = mlp(torch.float64)
    with pytest.raises(ValueError, match="RMSprop"):
        epk.torch.Recorder(m, torch.optim.RMSprop(m.parameters()), nn.CrossEntropyLoss(), X, y)
    with pytest.raises(ValueError, match="param group"):
        epk.torch.Recorder(m, torch.optim.SGD(list(m.parameters())[:2], lr=0.1), nn.CrossEntropyLoss(), X, y)
    with pytest.raises(ValueError, match="label_smoothing"):
        epk.torch.Recorder(m, torch.optim.SGD(m.parameters(), lr=0.1), nn.CrossEntropyLoss(label_smoothing=0.1), X, y)
    rec = epk.torch.Recorder(m, torch.optim.SGD(m.parameters(), lr=0.1), nn.CrossEntropyLoss(), X, y)
    with pytest.raises(RuntimeError, match="without an optimizer.step"):
        rec.step()


def test_a_saved_trace_edited_to_misdescribe_the_run_is_caught(tmp_path):
    """A schedule left out of the trace, a skip connection dropped from it: verify raises naming the step."""
    X, y = data((1, 6, 6), n=16)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(),
                          epk.torch.Residual(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Tanh())),
                          nn.Flatten(), nn.Linear(72, 3)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.8)
    rec = train(model, opt, X, y, steps=4, batch=8, sched=sched)
    rec.save(tmp_path / "run")
    assert epk.verify(tmp_path / "run")["ok"]
    # the schedule left out: the trace says a constant rate (the first step's)
    d = epk.load(tmp_path / "run").manifest
    arrays = {"manifest": dict(d, optimizer=dict(d["optimizer"], learning_rate=0.1))}
    for name in ("x_train", "y_train", "params", "batches"):
        arrays[name] = np.load(tmp_path / "run" / (name + ".npy"))
    with pytest.raises(epk.UnexplainedStepsError) as e:
        epk.verify(arrays)
    assert e.value.step >= 1  # step 0 used the rate the trace declares
    # the skip connection dropped: the residual's body written in its place
    layers = []
    for l in d["layers"] if "layers" in d else d["model"]["layers"]:
        layers += l["body"] if l["type"] == "residual" else [l]
    arrays["manifest"] = dict(d, model=dict(d["model"], layers=layers))
    arrays["learning_rates"] = np.load(tmp_path / "run" / "learning_rates.npy")
    with pytest.raises(epk.UnexplainedStepsError) as e:
        epk.verify(arrays)
    assert "step %d" % e.value.step in str(e.value)
    status, _, err = run_epk("verify", tmp_path / "run", check=False)
    assert status == 0
