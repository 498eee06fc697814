#!/usr/bin/env bash
# check_layers_against_pytorch.sh — train small CNNs, ResNets and a pre-norm
# MLP (trace format version 3: conv2d, max_pool2d, avg_pool2d, flatten,
# layer_norm, residual) in PyTorch, hand each run to epk as a trace, and
# compare epk's outputs after the last step with torch's.
#
# The networks are the model files in examples/models/ (JSON lists of
# layers), given to examples/pytorch_trace.py with --model. For every
# configuration below the generator runs twice:
#   --record params  epk evaluates the network at the recorded final row of
#                    params.npy; agreement should be at roundoff (~1e-15);
#   --record init    epk replays the S optimizer steps itself in double from
#                    init_params.npy (and the recorded optimizer state of a
#                    resumed run); roundoff amplified by the training.
# Checks (exit 1 if any fails):
#   predict  `epk predict DIR --json` gives outputs_final (M x C);
#                max relative error = max|epk - torch| / max|torch| <= TOL
#            (torch = reference_outputs.npy, the torch model after the last step);
#   indep    recorded paths only, a check of the trace writer that involves
#            neither epk nor the generator's model builder: the Python below
#            rebuilds the torch model from manifest.json alone (canonical or
#            torch class names, torch's defaults for absent fields), checks that
#            P = the parameter count the layout rules of docs/trace-format.md
#            give for the manifest (and the tensor shapes, in order), loads the
#            last row of params.npy with vector_to_parameters and compares its
#            outputs with reference_outputs.npy (<= TOL; "exact" when bit for bit).
# One float32 trace (trained in float32) is also read through `epk predict`
# (must exit 0; its error is informational: float32 training against double
# evaluation).
#
# usage: examples/check_layers_against_pytorch.sh
# environment:
#   EPK     the epk binary (default ./build/epk, relative to the repository root)
#   PYTHON  python3 with numpy and torch (default: python3 or /usr/bin/python3, whichever imports torch)
#   TOL     tolerance for float64 runs (default 1e-12)
#   ONLY    run only the configurations whose name contains this string
#   KEEP=1  keep the temporary trace directories
set -u -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work_prefix=epk-layers
# shellcheck source=torch_env.sh
source "$here/torch_env.sh"
TOL="${TOL:-1e-12}"
ONLY="${ONLY:-}"
models="$here/models"

# name | model file (examples/models/) | pytorch_trace.py options
configs=(
    "cnn_relu_maxpool_digits_sgd|cnn_relu_maxpool.json|--data digits --input-shape 1,8,8 --loss cross_entropy --reduction mean --steps 30 --lr 0.2 --n-train 64 --n-test 8"
    "resnet_tanh_proj_momentum_mb|resnet_tanh_proj.json|--input-shape 1,8,8 --momentum 0.9 --loss cross_entropy --reduction mean --batch-size 16 --steps 30 --lr 0.05 --n-train 48 --n-test 6 --seed 1"
    "prenorm_mlp_mse_sum|prenorm_mlp.json|--input-shape 16 --loss mse --reduction sum --steps 30 --lr 0.002 --n-train 48 --n-test 6 --seed 2"
    "resnet_relu_maxpool_torchnames|resnet_relu_maxpool.json|--input-shape 2,8,8 --manifest-layers torch --loss cross_entropy --reduction mean --batch-size 16 --per-step-lr --steps 30 --lr 0.1 --n-train 48 --n-test 6 --seed 3"
    "resnet_relu_maxpool_digits_sgd|resnet_relu_maxpool.json|--data digits --loss cross_entropy --reduction sum --batch-size 16 --steps 30 --lr 0.01 --n-train 64 --n-test 8 --seed 4"
    "prenorm_mlp_adamw_resumed_mb|prenorm_mlp.json|--input-shape 16 --optimizer adamw --resume-after 5 --loss cross_entropy --reduction mean --batch-size 16 --steps 25 --lr 0.01 --n-train 48 --n-test 6 --seed 5"
)
float32_entry="float32_cnn_relu_maxpool_digits|cnn_relu_maxpool.json|--dtype float32 --data digits --batch-size 16 --steps 20 --lr 0.1 --n-train 64 --n-test 8 --seed 6"

# Prints "max_rel_err max_abs_err path" comparing epk's JSON (file $1) with reference (file $2).
compare() {
    "$PYTHON" - "$1" "$2" <<'EOF'
import json, sys
import numpy as np
j = json.load(open(sys.argv[1]))
a = np.array(j["outputs_final"], dtype=np.float64)
b = np.load(sys.argv[2])
if a.shape != b.shape:
    print("shape-mismatch %s %s %s" % (a.shape, b.shape, j.get("path")))
    sys.exit(0)
d = np.max(np.abs(a - b))
print("%.3e %.3e %s" % (d / np.max(np.abs(b)), d, j.get("path")))
EOF
}

# Rebuilds the trace's model (directory $1) from manifest.json alone and prints
# "max_rel_err P" (max_rel_err "exact" when bit for bit) or "ERROR: reason".
independent() {
    "$PYTHON" - "$1" <<'EOF'
import json, os, sys
import numpy as np
import torch
nn = torch.nn
d = sys.argv[1]
m = json.load(open(os.path.join(d, "manifest.json")))
if m.get("version") != 3:
    print("ERROR: manifest version %r, expected 3" % m.get("version")); sys.exit(0)
shape0 = m["model"]["input_shape"] if "input_shape" in m["model"] else [m["model"]["input_dim"]]
CANON = {"Linear": "linear", "Conv2d": "conv2d", "MaxPool2d": "max_pool2d", "AvgPool2d": "avg_pool2d",
         "Flatten": "flatten", "LayerNorm": "layer_norm", "Residual": "residual", "ReLU": "relu",
         "LeakyReLU": "leaky_relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "Softplus": "softplus",
         "GELU": "gelu", "Identity": "identity"}

class Residual(nn.Module):
    def __init__(self, body, shortcut):
        super().__init__(); self.body, self.shortcut = body, shortcut
    def forward(self, x): return self.body(x) + self.shortcut(x)

def two(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)

def out_hw(shape, k, s, p, dl):
    k, s, p, dl = two(k), two(s), two(0 if p == "valid" else p), two(dl)
    return [(shape[1 + a] + 2 * p[a] - dl[a] * (k[a] - 1) - 1) // s[a] + 1 for a in (0, 1)]

def seq(layers, shape):
    """nn.Sequential, the parameter shapes by the layout rules, the shape flowing out."""
    mods, pshapes = [], []
    for l in layers:
        t = CANON.get(l["type"], l["type"])
        g = l.get
        if t == "linear":
            o, b = l["out_features"], g("bias", True)
            mods.append(nn.Linear(shape[-1], o, bias=b))
            pshapes += [(o, shape[-1])] + ([(o,)] if b else [])
            shape = shape[:-1] + [o]
        elif t == "conv2d":
            o, k, grp, b = l["out_channels"], two(l["kernel_size"]), g("groups", 1), g("bias", True)
            pad = g("padding", 0)
            mods.append(nn.Conv2d(shape[0], o, k, stride=two(g("stride", 1)), padding=0 if pad == "valid" else two(pad),
                                  dilation=two(g("dilation", 1)), groups=grp, bias=b))
            pshapes += [(o, shape[0] // grp) + k] + ([(o,)] if b else [])
            shape = [o] + out_hw(shape, k, g("stride", 1), pad, g("dilation", 1))
        elif t in ("max_pool2d", "avg_pool2d"):
            k = l["kernel_size"]
            s = g("stride") if g("stride") is not None else k
            if t == "max_pool2d":
                mods.append(nn.MaxPool2d(two(k), stride=two(s), padding=two(g("padding", 0)), dilation=two(g("dilation", 1))))
            else:
                mods.append(nn.AvgPool2d(two(k), stride=two(s), padding=two(g("padding", 0))))
            shape = [shape[0]] + out_hw(shape, k, s, g("padding", 0), g("dilation", 1) if t == "max_pool2d" else 1)
        elif t == "flatten":
            mods.append(nn.Flatten()); shape = [int(np.prod(shape))]
        elif t == "layer_norm":
            ns = l["normalized_shape"]; ns = list(ns) if isinstance(ns, list) else [ns]
            aff, b = g("elementwise_affine", True), g("bias", True)
            if aff and not b:
                raise SystemExit("ERROR: layer_norm without bias needs torch >= 2.1")
            mods.append(nn.LayerNorm(ns, eps=g("eps", 1e-5), elementwise_affine=aff))
            pshapes += [tuple(ns), tuple(ns)] if aff else []
        elif t == "residual":
            body, pb, sb = seq(l["body"], shape)
            short, ps, ss = seq(g("shortcut", []), shape)
            if sb != ss:
                raise SystemExit("ERROR: residual branches end in %s and %s" % (sb, ss))
            mods.append(Residual(body, short)); pshapes += pb + ps; shape = sb
        elif t == "relu": mods.append(nn.ReLU())
        elif t == "leaky_relu": mods.append(nn.LeakyReLU(g("negative_slope", 0.01)))
        elif t == "tanh": mods.append(nn.Tanh())
        elif t == "sigmoid": mods.append(nn.Sigmoid())
        elif t == "softplus": mods.append(nn.Softplus())
        elif t == "gelu": mods.append(nn.GELU())
        elif t == "identity": mods.append(nn.Identity())
        else:
            raise SystemExit("ERROR: unknown layer type %r" % l["type"])
    return nn.Sequential(*mods), pshapes, shape

model, pshapes, out_shape = seq(m["model"]["layers"], list(shape0))
params = np.load(os.path.join(d, "params.npy"))
x = np.load(os.path.join(d, "x_train.npy"))
dtype = torch.float64 if params.dtype == np.float64 else torch.float32
model = model.to(dtype)
P = sum(int(np.prod(s)) for s in pshapes)
if params.shape[1] != P:
    print("ERROR: params.npy has P = %d, the manifest's layout gives %d" % (params.shape[1], P)); sys.exit(0)
got = [tuple(p.shape) for p in model.parameters()]
if got != pshapes:
    print("ERROR: torch's parameter shapes %s differ from the layout rules' %s" % (got, pshapes)); sys.exit(0)
if list(x.shape[1:]) != list(shape0):
    print("ERROR: x_train.npy is %s, input_shape %s" % (list(x.shape), shape0)); sys.exit(0)
with torch.no_grad():
    torch.nn.utils.vector_to_parameters(torch.from_numpy(params[-1].copy()), model.parameters())
    xt = os.path.join(d, "x_test.npy")
    pts = np.load(xt) if os.path.exists(xt) else x[:min(10, len(x))]
    out = model(torch.from_numpy(pts)).to(torch.float64).numpy()
ref = np.load(os.path.join(d, "reference_outputs.npy"))
if out.shape != ref.shape:
    print("ERROR: outputs %s, reference %s" % (out.shape, ref.shape)); sys.exit(0)
diff = float(np.max(np.abs(out - ref)))
print("%s %d" % ("exact" if diff == 0 else "%.3e" % (diff / np.max(np.abs(ref))), P))
EOF
}

fail=0
printf '%-34s %-7s %-9s %12s %12s %10s  %s\n' "configuration" "record" "path" "max rel err" "max abs err" "indep" "status"
for entry in "${configs[@]}" "$float32_entry"; do
    IFS='|' read -r name model opts <<<"$entry"
    [[ -n "$ONLY" && "$name" != *"$ONLY"* ]] && continue
    for record in params init; do
        dir="$work/$name-$record"
        # shellcheck disable=SC2086  # opts is a list of options
        if ! "$PYTHON" "$GEN" --out "$dir" --record "$record" --model "$models/$model" $opts >"$dir.gen.log" 2>&1; then
            printf '%-34s %-7s %s\n' "$name" "$record" "pytorch_trace.py FAILED:"; sed 's/^/    /' "$dir.gen.log"
            fail=1; continue
        fi
        if ! "$EPK" predict "$dir" --json >"$dir.json" 2>"$dir.err"; then
            printf '%-34s %-7s %s\n' "$name" "$record" "epk predict REJECTED the trace:"; sed 's/^/    /' "$dir.err"
            fail=1; continue
        fi
        read -r rel abs path < <(compare "$dir.json" "$dir/reference_outputs.npy")
        status=ok
        if [[ "$rel" == shape-mismatch ]]; then
            status="FAIL (output shape mismatch: $abs $path)"; fail=1
        elif [[ "$name" == float32_* ]]; then
            status="ok (read; float32 vs double evaluation, informational)"
        elif ! awk -v r="$rel" -v t="$TOL" 'BEGIN { exit !(r <= t) }'; then
            status="FAIL (> $TOL)"; fail=1
        fi
        indep=-
        if [[ "$record" == params ]]; then
            indep_out="$(independent "$dir" 2>&1)"
            read -r indep _ <<<"$indep_out"
            if [[ "$indep" != exact && ! "$indep" =~ ^[0-9.]+e[-+][0-9]+$ ]]; then
                status="FAIL (indep: $(tail -n 1 <<<"$indep_out"))"; indep=error; fail=1
            elif [[ "$indep" != exact && "$name" != float32_* ]] &&
                ! awk -v r="$indep" -v t="$TOL" 'BEGIN { exit !(r <= t) }'; then
                status="FAIL (indep > $TOL)"; fail=1
            fi
        fi
        printf '%-34s %-7s %-9s %12s %12s %10s  %s\n' "$name" "$record" "$path" "$rel" "$abs" "$indep" "$status"
    done
done

if [[ $fail -ne 0 ]]; then
    echo "FAILED: at least one configuration disagrees with PyTorch beyond $TOL or was rejected"
    exit 1
fi
echo "all configurations agree with PyTorch within $TOL"
