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


# ---- sequence models (transformers) on token ids -------------------------------------------------

def modular_addition(p=5, n_test=4, seed=0):
    """All p² sequences [a, b, p] (p is the '=' token; vocabulary p + 1), label (a + b) mod p, as torch.long;
    the first p² - n_test (shuffled) for training, the rest as x_test."""
    pairs = torch.tensor([[a, b, p] for a in range(p) for b in range(p)], dtype=torch.long)
    labels = (pairs[:, 0] + pairs[:, 1]) % p
    perm = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))
    train_idx, test_idx = perm[:len(pairs) - n_test], perm[len(pairs) - n_test:]
    return pairs[train_idx], labels[train_idx], pairs[test_idx]


def transformer(causal, p=5, d=8, heads=2, seed=4):
    """T = 3, D = 8, 2 heads.  causal: two causally masked attention blocks around an MLP block, then
    select(-1) (with a single attention layer and select(-1) the mask would not change any output: the
    last token attends to every token either way); not causal: one block, then mean_tokens."""
    torch.manual_seed(seed)
    E = epk.torch
    if causal:
        return nn.Sequential(
            nn.Embedding(p + 1, d), E.PositionalEmbedding(3, d),
            E.Residual(nn.Sequential(nn.LayerNorm(d), E.SelfAttention(d, heads, causal=True))),
            E.Residual(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))),
            E.Residual(nn.Sequential(nn.LayerNorm(d), E.SelfAttention(d, heads, causal=True))),
            nn.LayerNorm(d), E.Select(-1), nn.Linear(d, p)).double()
    return nn.Sequential(
        nn.Embedding(p + 1, d), E.PositionalEmbedding(3, d),
        E.Residual(nn.Sequential(nn.LayerNorm(d), E.SelfAttention(d, heads))),
        nn.LayerNorm(d), E.MeanTokens(), nn.Linear(d, p)).double()


def _ln(d):
    return {"type": "layer_norm", "normalized_shape": [d], "eps": 1e-5, "elementwise_affine": True, "bias": True}


def _attn(causal, heads=2, bias=True):
    return {"type": "self_attention", "num_heads": heads, "bias": bias, "causal": causal}


def _lin(n_in, n_out):
    return {"type": "linear", "in_features": n_in, "out_features": n_out, "bias": True}


def expected_layers(causal, p=5, d=8):
    head = [{"type": "embedding", "num_embeddings": p + 1, "embedding_dim": d}, {"type": "positional_embedding"}]
    if causal:
        return head + [
            {"type": "residual", "body": [_ln(d), _attn(True)], "shortcut": []},
            {"type": "residual", "body": [_ln(d), _lin(d, 2 * d), {"type": "gelu"}, _lin(2 * d, d)], "shortcut": []},
            {"type": "residual", "body": [_ln(d), _attn(True)], "shortcut": []},
            _ln(d), {"type": "select", "index": -1}, _lin(d, p)]
    return head + [{"type": "residual", "body": [_ln(d), _attn(False)], "shortcut": []},
                   _ln(d), {"type": "mean_tokens"}, _lin(d, p)]


def sequence_fields(layers):
    """What every writer of the format keeps of a layer list: the types, and the sequence layers' fields
    (epk's own writer drops in_features and writes layer norm's and linear's fields in its way)."""
    keep = {"embedding": ("num_embeddings", "embedding_dim"), "self_attention": ("num_heads", "bias", "causal"),
            "select": ("index",)}
    out = []
    for l in layers:
        if l["type"] == "residual":
            out.append(("residual", sequence_fields(l["body"]), sequence_fields(l["shortcut"])))
        else:
            out.append((l["type"],) + tuple(l[k] for k in keep.get(l["type"], ())))
    return out


def train_transformer(causal):
    X, y, X_test = modular_addition()
    model = transformer(causal)
    if causal:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        rec = train(model, opt, X, y, steps=3, x_test=X_test)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        rec = train(model, opt, X, y, steps=3, batch=8, x_test=X_test)
    return model, rec, X, X_test


def test_sequence_modules():
    a = epk.torch.SelfAttention(8, 2, causal=True)
    assert [(n, tuple(t.shape)) for n, t in a.named_parameters()] == [
        ("attn.in_proj_weight", (24, 8)), ("attn.in_proj_bias", (24,)), ("attn.out_proj.weight", (8, 8)),
        ("attn.out_proj.bias", (8,))]
    assert [n for n, _ in epk.torch.SelfAttention(8, 2, bias=False).named_parameters()] == [
        "attn.in_proj_weight", "attn.out_proj.weight"]
    assert a.attn.batch_first and a.attn.dropout == 0
    x = torch.randn(4, 3, 8)
    # causal: token t sees tokens <= t, so changing the last token leaves the others' outputs alone
    x2 = x.clone()
    x2[:, 2] += 1
    assert torch.equal(a(x)[:, :2], a(x2)[:, :2]) and not torch.equal(a(x)[:, 2], a(x2)[:, 2])
    assert torch.equal(a(x), a.attn(x, x, x, need_weights=False,
                                    attn_mask=torch.triu(torch.ones(3, 3, dtype=torch.bool), diagonal=1))[0])
    pe = epk.torch.PositionalEmbedding(3, 8)
    assert [n for n, _ in pe.named_parameters()] == ["weight"] and tuple(pe.weight.shape) == (3, 8)
    assert torch.equal(pe(x), x + pe.weight)
    assert torch.equal(epk.torch.Select(-1)(x), x[:, -1]) and torch.equal(epk.torch.Select(0)(x), x[:, 0])
    assert torch.equal(epk.torch.MeanTokens()(x), x.mean(dim=1))


@pytest.mark.parametrize("causal", [True, False], ids=["causal_adamw", "mean_tokens_sgd_momentum"])
def test_transformer_trace_arrays(causal):
    """The recorder's trace of a transformer on token ids, before any C++ sees it: the manifest and dtypes."""
    model, rec, X, X_test = train_transformer(causal)
    d = rec.arrays()
    P = sum(t.numel() for t in model.parameters())
    assert d["manifest"]["version"] == 3
    assert d["manifest"]["model"] == {"input_shape": [3], "input_dtype": "int64", "layers": expected_layers(causal)}
    assert d["manifest"]["loss"] == {"type": "cross_entropy", "reduction": "mean"}
    if causal:
        assert d["manifest"]["optimizer"] == {"type": "adamw", "steps": 3, "learning_rate": 0.01, "betas": [0.9, 0.999],
                                              "eps": 1e-8, "weight_decay": 0.1, "amsgrad": False}
        assert "batches" not in d
    else:
        assert d["manifest"]["optimizer"] == {"type": "sgd", "steps": 3, "learning_rate": 0.5, "momentum": 0.9,
                                              "dampening": 0.0, "nesterov": False, "weight_decay": 0.0}
        assert d["batches"].dtype == np.int64 and d["batches"].shape == (3, 8)
    assert d["x_train"].dtype == np.int64 and d["x_train"].shape == (21, 3)
    assert d["x_test"].dtype == np.int64 and d["x_test"].shape == (4, 3)
    assert np.array_equal(d["x_train"], X.numpy()) and np.array_equal(d["x_test"], X_test.numpy())
    assert d["y_train"].dtype == np.int64 and d["y_train"].shape == (21,)
    assert d["params"].dtype == np.float64 and d["params"].shape == (4, P)
    assert P == (1037 if causal else 437)  # counted by hand from the layers
    assert np.array_equal(d["params"][-1], torch.nn.utils.parameters_to_vector(model.parameters()).detach().numpy())
    if causal:  # the mask matters in this model (so a reader that ignores it fails verify)
        for m in model.modules():
            if isinstance(m, epk.torch.SelfAttention):
                m.causal = False
        with torch.no_grad():
            unmasked = model(X).numpy()
        for m in model.modules():
            if isinstance(m, epk.torch.SelfAttention):
                m.causal = True
        with torch.no_grad():
            assert np.max(np.abs(model(X).numpy() - unmasked)) > 1e-3


def _engine_reads_sequence_layers():
    """Whether the built extension knows the sequence layers (the C++ side of trace format v3's
    transformers): a minimal token trace loads, or fails with anything but an unknown type/field."""
    manifest = {"format": "epk-trace", "version": 3,
                "model": {"input_shape": [2], "input_dtype": "int64",
                          "layers": [{"type": "embedding", "num_embeddings": 3, "embedding_dim": 2},
                                     {"type": "mean_tokens"}, {"type": "linear", "out_features": 2}]},
                "loss": {"type": "cross_entropy", "reduction": "mean"},
                "optimizer": {"type": "sgd", "learning_rate": 0.1, "steps": 0}}
    try:
        epk.load({"manifest": manifest, "x_train": np.array([[0, 2]], dtype=np.int64),
                  "y_train": np.array([1], dtype=np.int64), "params": np.zeros((1, 12))})
    except epk.TraceError as e:
        return not any(s in str(e) for s in ("unknown layer type", "unknown field 'model.input_dtype'"))
    return True


# NEEDS THE C++ SEQUENCE LAYERS (embedding, positional_embedding, self_attention, select, mean_tokens and
# input_dtype int64 in src/): rec.save and rec.verify go through the engine.  Skipped, saying so, while the
# built extension does not know the layer types; once it does, this runs and must pass.
needs_sequence_engine = pytest.mark.skipif(
    not _engine_reads_sequence_layers(),
    reason="the C++ side of the sequence layers (embedding, self_attention, ...) is not in this build yet")


@needs_sequence_engine
@pytest.mark.parametrize("causal", [True, False], ids=["causal_adamw", "mean_tokens_sgd_momentum"])
def test_transformer_save_and_verify(causal, tmp_path):
    model, rec, X, X_test = train_transformer(causal)
    P = sum(t.numel() for t in model.parameters())
    rec.save(tmp_path / "run")
    with open(tmp_path / "run" / "manifest.json") as f:
        m = json.load(f)
    assert m["version"] == 3
    assert m["model"]["input_shape"] == [3] and m["model"]["input_dtype"] == "int64"
    assert sequence_fields(m["model"]["layers"]) == sequence_fields(expected_layers(causal))
    assert m["optimizer"]["type"] == ("adamw" if causal else "sgd")
    arrays = {n: np.load(tmp_path / "run" / (n + ".npy")) for n in ("x_train", "y_train", "x_test", "params")}
    assert arrays["x_train"].dtype == np.dtype("<i8") and arrays["x_train"].shape == (21, 3)
    assert arrays["x_test"].dtype == np.dtype("<i8") and np.array_equal(arrays["x_test"], X_test.numpy())
    assert arrays["y_train"].dtype == np.dtype("<i8")
    assert arrays["params"].dtype == np.dtype("<f8") and arrays["params"].shape == (4, P)
    assert (tmp_path / "run" / "batches.npy").exists() == (not causal)
    # the kernel identity holds and the recorded path is the declared training
    r = rec.verify()
    assert r["ok"] and r["path_explained"], r["audit"]
    assert r["audit"]["deviation_max_over_recording_u"] <= epk.audit_rounding_units
    # f(x; w_S) is torch's model at the test points (training mode: MultiheadAttention's slow path)
    with torch.no_grad():
        ref = model(X_test).numpy()
    assert np.max(np.abs(r["outputs_final"] - ref)) <= 1e-12 * max(1.0, np.max(np.abs(ref)))
    status, out, _ = run_epk("verify", tmp_path / "run", "--json")
    cli = json.loads(out)
    assert status == 0 and cli["residual_max_abs"] == r["residual_max_abs"]


@pytest.mark.parametrize("model, name, reason", [
    (lambda: nn.Sequential(nn.Embedding(6, 8, padding_idx=0), epk.torch.MeanTokens(), nn.Linear(8, 3)), "0",
     "padding_idx"),
    (lambda: nn.Sequential(nn.Embedding(6, 8, max_norm=1.0), epk.torch.MeanTokens(), nn.Linear(8, 3)), "0",
     "max_norm"),
    (lambda: nn.Sequential(nn.Embedding(6, 8, sparse=True), epk.torch.MeanTokens(), nn.Linear(8, 3)), "0", "sparse"),
    (lambda: nn.Sequential(nn.Embedding(6, 8), nn.MultiheadAttention(8, 2, batch_first=True), epk.torch.MeanTokens(),
                           nn.Linear(8, 3)), "1", "epk.torch.SelfAttention"),
    (lambda: nn.Sequential(nn.Embedding(6, 8), epk.torch.Residual(nn.Sequential(
        nn.LayerNorm(8), nn.MultiheadAttention(8, 2))), epk.torch.MeanTokens(), nn.Linear(8, 3)), "1.body.1",
     "epk.torch.SelfAttention"),
    (lambda: nn.Sequential(nn.Embedding(6, 8), nn.TransformerEncoderLayer(8, 2, 16, batch_first=True),
                           epk.torch.MeanTokens(), nn.Linear(8, 3)), "1", "epk.torch.SelfAttention"),
])
def test_unsupported_sequence_modules_are_refused_by_name(model, name, reason):
    X = torch.randint(0, 6, (4, 3))
    y = torch.randint(0, 3, (4,))
    m = model()
    with pytest.raises(epk.torch.UnsupportedModule) as e:
        epk.torch.Recorder(m, torch.optim.SGD(m.parameters(), lr=0.1), nn.CrossEntropyLoss(), X, y)
    assert e.value.name == name and reason in str(e.value)


def test_token_inputs_and_embedding_go_together():
    X, y, X_test = modular_addition()
    m = transformer(False)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="not integers"):
        epk.torch.Recorder(m, opt, nn.CrossEntropyLoss(), X.double(), y)
    with pytest.raises(ValueError, match="x_test"):
        epk.torch.Recorder(m, opt, nn.CrossEntropyLoss(), X, y, x_test=X_test.double())
    mlp64 = mlp(torch.float64)
    with pytest.raises(ValueError, match="nn.Embedding"):
        epk.torch.Recorder(mlp64, torch.optim.SGD(mlp64.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                           torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
