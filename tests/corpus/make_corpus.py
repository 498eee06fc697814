#!/usr/bin/env python3
"""Writes tests/corpus/bad/: one or more bad inputs per rule of docs/trace-format.md
and of the CSV reader, each rejected by epk with the exact message recorded in
tests/corpus/expected.tsv (checked by tests/test_bad_files.cpp, under ctest; the
npy, manifest and csv files also seed the fuzzers' regression runs, fuzz/run.sh).

Run once by a developer: tests/corpus/make_corpus.py EPK_BINARY (python3 only, no
NumPy).  The files are committed; the build never runs this.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BAD = os.path.join(HERE, "bad")


def npy(descr, shape, payload, fortran=False, version=(1, 0), magic=b"\x93NUMPY", raw_header=None):
    if raw_header is None:
        shape_text = "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
        raw_header = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (descr, "True" if fortran else "False", shape_text)
    head = raw_header.encode("latin1")
    length_bytes = 2 if version[0] == 1 else 4
    total = len(magic) + 2 + length_bytes + len(head) + 1
    pad = (64 - total % 64) % 64
    head = head + b" " * pad + b"\n"
    size = struct.pack("<H", len(head)) if length_bytes == 2 else struct.pack("<I", len(head))
    return magic + bytes(version) + size + head + payload


def f8(*values):
    return b"".join(struct.pack("<d", v) for v in values)


def write(rel, data):
    path = os.path.join(BAD, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def npy_cases():
    ok = f8(1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    write("npy/magic.npy", npy("<f8", (2, 3), ok, magic=b"\x93NUMPX"))
    write("npy/version_4.npy", npy("<f8", (2, 3), ok, version=(4, 0)))
    write("npy/empty.npy", b"")
    write("npy/truncated_header.npy", npy("<f8", (2, 3), ok)[:30])
    write("npy/header_length_beyond_file.npy", b"\x93NUMPY\x01\x00\xff\x7f{'descr'")
    write("npy/header_not_a_dict.npy", npy("<f8", (2, 3), ok, raw_header="['<f8', False, (2, 3)]"))
    write("npy/missing_descr.npy", npy("<f8", (2, 3), ok, raw_header="{'fortran_order': False, 'shape': (2, 3), }"))
    write("npy/dtype_f2.npy", npy("<f2", (2, 3), b"\0" * 12))
    write("npy/big_endian.npy", npy(">f8", (2, 3), ok))
    write("npy/object_dtype.npy", npy("|O", (2,), b"\0" * 16))
    write("npy/fortran_order.npy", npy("<f8", (2, 3), ok, fortran=True))
    write("npy/negative_dimension.npy", npy("<f8", (2, 3), ok, raw_header="{'descr': '<f8', 'fortran_order': False, 'shape': (2, -3), }"))
    write("npy/shape_overflow.npy", npy("<f8", (2 ** 40, 2 ** 40), ok))
    write("npy/payload_short.npy", npy("<f8", (2, 3), ok[:40]))
    write("npy/trailing_bytes.npy", npy("<f8", (2, 3), ok + b"\0"))
    write("npy/unknown_key.npy", npy("<f8", (2, 3), ok, raw_header="{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), 'x': 1, }"))


def manifest(**changes):
    m = {"format": "epk-trace", "version": 1,
         "model": {"input_dim": 4, "layers": [{"type": "linear", "out_features": 3, "bias": True}, {"type": "tanh"},
                                               {"type": "linear", "out_features": 3, "bias": True}]},
         "loss": {"type": "cross_entropy", "reduction": "mean"},
         "optimizer": {"type": "sgd", "learning_rate": 0.1, "steps": 2}}
    for path, value in changes.items():
        node = m
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        last = keys[-1]
        if value is DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return json.dumps(m)


DELETE = object()


def manifest_cases():
    write("manifest/not_json.json", "{\"format\": \"epk-trace\",")
    write("manifest/not_an_object.json", "[1, 2, 3]")
    write("manifest/format.json", manifest(format="torch"))
    write("manifest/version_4.json", manifest(version=4))
    write("manifest/missing_model.json", manifest(model=DELETE))
    write("manifest/no_layers.json", manifest(model__layers=[]))
    write("manifest/unknown_layer.json", manifest(model__layers__1={"type": "swish"}))
    write("manifest/out_features_zero.json", manifest(model__layers__2={"type": "linear", "out_features": 0}))
    write("manifest/input_dim_zero.json", manifest(model__input_dim=0))
    write("manifest/unknown_loss.json", manifest(loss__type="hinge"))
    write("manifest/unknown_reduction.json", manifest(loss__reduction="none"))
    write("manifest/unknown_optimizer.json", manifest(optimizer__type="rmsprop"))
    write("manifest/momentum_negative.json", manifest(optimizer__momentum=-0.9))
    write("manifest/negative_steps.json", manifest(optimizer__steps=-1))
    write("manifest/learning_rate_string.json", manifest(optimizer__learning_rate="0.1"))
    write("manifest/parameter_overflow.json",
          manifest(model__layers=[{"type": "linear", "out_features": 2 ** 62}, {"type": "linear", "out_features": 2 ** 62}]))
    write("manifest/nan_token.json", manifest().replace("0.1", "NaN"))
    # version 2: optimizer fields (docs/trace-format.md, "optimizer")
    adam = {"type": "adam", "learning_rate": 0.001, "steps": 2}
    write("manifest/v2_lr_and_learning_rate.json", manifest(version=2, optimizer__lr=0.1))
    write("manifest/v2_betas_out_of_range.json", manifest(version=2, optimizer=dict(adam, betas=[0.9, 1.0])))
    write("manifest/v2_betas_three.json", manifest(version=2, optimizer=dict(adam, betas=[0.9, 0.99, 0.5])))
    write("manifest/v2_betas_and_beta1.json", manifest(version=2, optimizer=dict(adam, betas=[0.9, 0.99], beta1=0.9)))
    write("manifest/v2_eps_negative.json", manifest(version=2, optimizer=dict(adam, eps=-1e-8)))
    write("manifest/v2_weight_decay_negative.json", manifest(version=2, optimizer=dict(adam, type="AdamW", weight_decay=-0.01)))
    write("manifest/v2_amsgrad_not_boolean.json", manifest(version=2, optimizer=dict(adam, amsgrad=1)))
    write("manifest/v2_adam_momentum.json", manifest(version=2, optimizer=dict(adam, momentum=0.9)))
    write("manifest/v2_sgd_betas.json", manifest(version=2, optimizer__betas=[0.9, 0.999]))
    write("manifest/v2_nesterov_without_momentum.json", manifest(version=2, optimizer__nesterov=True))
    write("manifest/v2_nesterov_dampening.json",
          manifest(version=2, optimizer__nesterov=True, optimizer__momentum=0.9, optimizer__dampening=0.1))
    write("manifest/v2_maximize.json", manifest(version=2, optimizer=dict(adam, maximize=True)))
    write("manifest/v2_foreach_string.json", manifest(version=2, optimizer__foreach="yes"))
    write("manifest/v2_initial_step_negative.json", manifest(version=2, optimizer__initial_step=-1))
    write("manifest/v2_initial_step_float.json", manifest(version=2, optimizer__initial_step=3.0))
    write("manifest/v2_adamw_not_decoupled.json",
          manifest(version=2, optimizer=dict(adam, type="AdamW", decoupled_weight_decay=False)))
    write("manifest/v2_unknown_field.json", manifest(version=2, optimizer=dict(adam, rho=0.9)))
    write("manifest/v1_with_bad_v2_field.json", manifest(optimizer__momentum="0.9"))
    # version 3: layers (docs/trace-format.md, "Layers"); errors name the layer's path
    def v3(shape, layers):
        return manifest(version=3, model={"input_shape": shape, "layers": layers})
    conv = lambda **f: dict({"type": "conv2d", "out_channels": 2, "kernel_size": 3}, **f)
    flat, relu = {"type": "flatten"}, {"type": "relu"}
    write("manifest/v3_kernel_larger_than_input.json", v3([1, 4, 4], [conv(kernel_size=5, padding=0), flat]))
    write("manifest/v3_zero_size_output.json", v3([1, 4, 4], [conv(dilation=2), relu, conv(), flat]))
    write("manifest/v3_residual_shapes.json",
          v3([1, 4, 4], [conv(padding=1), {"type": "residual", "body": [conv(padding=1, stride=2)], "shortcut": []}, flat]))
    write("manifest/v3_normalized_shape.json",
          v3([2, 4, 4], [{"type": "layer_norm", "normalized_shape": [2, 4]}, flat, {"type": "linear", "out_features": 2}]))
    write("manifest/v3_groups.json", v3([3, 4, 4], [conv(groups=2), flat]))
    write("manifest/v3_batch_norm.json",
          v3([1, 4, 4], [{"type": "residual", "body": [conv(padding=1), {"type": "BatchNorm2d", "num_features": 2}],
                          "shortcut": [conv(kernel_size=1)]}, flat]))
    write("manifest/v3_dropout.json", v3([4], [{"type": "linear", "out_features": 3}, {"type": "dropout", "p": 0.1},
                                               {"type": "linear", "out_features": 2}]))
    write("manifest/v3_layer_in_version_2.json", manifest(version=2, model={"input_dim": 16, "layers": [conv()]}))
    write("manifest/v3_input_shape_in_version_1.json", manifest(model__input_shape=[4]))
    write("manifest/v3_input_shape_and_dim.json",
          manifest(version=3, model={"input_dim": 4, "input_shape": [4], "layers": [{"type": "linear", "out_features": 2}]}))
    write("manifest/v3_output_not_vector.json", v3([1, 4, 4], [conv()]))
    write("manifest/v3_padding_same.json", v3([1, 4, 4], [conv(padding="same"), flat]))
    write("manifest/v3_unknown_conv_field.json", v3([1, 4, 4], [conv(bias_init="zeros"), flat]))
    write("manifest/v3_in_channels.json", v3([1, 4, 4], [conv(in_channels=3), flat]))
    write("manifest/v3_pool_padding.json", v3([1, 4, 4], [{"type": "max_pool2d", "kernel_size": 2, "padding": 2}, flat]))
    write("manifest/v3_ceil_mode.json", v3([1, 4, 4], [{"type": "avg_pool2d", "kernel_size": 2, "ceil_mode": True}, flat]))
    write("manifest/v3_linear_on_image_without_flatten.json", v3([1, 4, 4], [{"type": "linear", "out_features": 2}]))
    write("manifest/v3_empty_body.json", v3([4], [{"type": "residual", "body": []}, {"type": "linear", "out_features": 2}]))
    write("manifest/v3_no_parameters.json", v3([1, 4, 4], [{"type": "avg_pool2d", "kernel_size": 2}, flat]))
    write("manifest/v3_input_shape_rank.json", v3([1, 2, 2, 2], [flat, {"type": "linear", "out_features": 2}]))


def csv_cases():
    write("csv/empty.csv", "")
    write("csv/ragged.csv", "1,2,0\n3,1\n")
    write("csv/not_a_number.csv", "1,2,0\n3,x,1\n")
    write("csv/nan.csv", "1,2,0\nnan,4,1\n")
    write("csv/inf.csv", "1,2,0\n3,inf,1\n")
    write("csv/negative_label.csv", "1,2,0\n3,4,-1\n")
    write("csv/fractional_label.csv", "1,2,0\n3,4,0.5\n")
    write("csv/blank_line_inside.csv", "1,2,0\n\n3,4,1\n")
    write("csv/only_header.csv", "150,4,setosa,versicolor,virginica\n")


def trace_cases(epk):
    with tempfile.TemporaryDirectory() as tmp:
        good = os.path.join(tmp, "good")
        subprocess.run([epk, "train", "--out", good, "--data", "iris", "--n-train", "6", "--n-test", "2", "--hidden", "3",
                        "--steps", "2", "--batch-size", "3", "--lr-decay", "0.5"], check=True, capture_output=True)
        init = os.path.join(tmp, "init")
        subprocess.run([epk, "train", "--out", init, "--data", "iris", "--n-train", "6", "--n-test", "2", "--hidden", "3",
                        "--steps", "2", "--init-only"], check=True, capture_output=True)
        P = 4 * 3 + 3 + 3 * 3 + 3

        def case(name, base=good, drop=(), files=None, manifest_changes=None):
            d = os.path.join(BAD, "trace", name)
            if os.path.exists(d):
                shutil.rmtree(d)
            shutil.copytree(base, d)
            for f in drop:
                os.remove(os.path.join(d, f))
            for f, data in (files or {}).items():
                write(os.path.join("trace", name, f), data)
            if manifest_changes is not None:
                m = json.load(open(os.path.join(d, "manifest.json")))
                manifest_changes(m)
                write(os.path.join("trace", name, "manifest.json"), json.dumps(m))

        case("missing_manifest", drop=["manifest.json"])
        case("missing_x_train", drop=["x_train.npy"])
        case("no_parameters", drop=["params.npy"])
        case("both_parameter_files_disagree", base=init, files={"params.npy": npy("<f8", (3, P), f8(*([0.1] * 3 * P)))})
        case("params_rows", files={"params.npy": npy("<f8", (2, P), f8(*([0.1] * 2 * P)))})
        case("params_columns", files={"params.npy": npy("<f8", (3, P + 1), f8(*([0.1] * 3 * (P + 1))))})
        case("params_nan", files={"params.npy": npy("<f8", (3, P), f8(*([0.1] * (3 * P - 1) + [float("nan")])))})
        case("init_params_inf", base=init, files={"init_params.npy": npy("<f8", (P,), f8(*([0.1] * (P - 1) + [float("inf")])))})
        case("x_train_columns", files={"x_train.npy": npy("<f8", (6, 3), f8(*([0.5] * 18)))})
        case("x_train_int", files={"x_train.npy": npy("<i8", (6, 4), b"\0" * 192)})
        case("y_train_length", files={"y_train.npy": npy("<i8", (5,), b"\0" * 40)})
        case("label_out_of_range", files={"y_train.npy": npy("<i8", (6,), struct.pack("<6q", 0, 1, 2, 0, 1, 3))})
        case("label_float", files={"y_train.npy": npy("<f8", (6,), f8(0, 1, 2, 0, 1, 2))})
        case("batch_index_out_of_range", files={"batches.npy": npy("<i8", (2, 3), struct.pack("<6q", 0, 1, 2, 3, 4, 6))})
        case("batch_index_repeated", files={"batches.npy": npy("<i8", (2, 3), struct.pack("<6q", 0, 1, 1, 3, 4, 5))})
        case("batches_rows", files={"batches.npy": npy("<i8", (3, 3), struct.pack("<9q", 0, 1, 2, 3, 4, 5, 0, 1, 2))})
        case("learning_rates_length", files={"learning_rates.npy": npy("<f8", (3,), f8(0.1, 0.05, 0.025))})
        case("learning_rates_nan", files={"learning_rates.npy": npy("<f8", (2,), f8(0.1, float("nan")))})
        case("x_test_columns", files={"x_test.npy": npy("<f8", (2, 5), f8(*([0.5] * 10)))})
        case("x_test_dtype", files={"x_test.npy": npy("<f4", (2, 4), struct.pack("<8f", *([0.5] * 8)))})
        case("manifest_steps_lie", manifest_changes=lambda m: m["optimizer"].__setitem__("steps", 5))
        case("manifest_unknown_optimizer", manifest_changes=lambda m: m["optimizer"].__setitem__("type", "rmsprop"))

        # version 2: the recorded optimizer state (docs/trace-format.md, "Recorded optimizer state")
        def optimizer(**fields):
            def change(m):
                m["version"] = 2
                m["optimizer"] = dict({"type": "sgd", "learning_rate": 0.1, "steps": 2}, **fields)
            return change
        state = npy("<f8", (P,), f8(*([0.01] * P)))
        adam = dict(type="adam", initial_step=3)
        case("state_missing_exp_avg_sq", base=init, manifest_changes=optimizer(**adam), files={"init_exp_avg.npy": state})
        case("state_missing_exp_avg", base=init, manifest_changes=optimizer(**adam), files={"init_exp_avg_sq.npy": state})
        case("state_missing_max_exp_avg_sq", base=init, manifest_changes=optimizer(type="adamw", amsgrad=True, initial_step=3),
             files={"init_exp_avg.npy": state, "init_exp_avg_sq.npy": state})
        case("state_missing_momentum_buffer", manifest_changes=optimizer(momentum=0.9, initial_step=3))
        case("state_without_initial_step", base=init, manifest_changes=optimizer(type="adam"),
             files={"init_exp_avg.npy": state, "init_exp_avg_sq.npy": state})
        case("state_unused_exp_avg_sgd", files={"init_exp_avg.npy": state})
        case("state_unused_momentum_buffer_no_momentum", manifest_changes=optimizer(weight_decay=0.01, initial_step=3),
             files={"init_momentum_buffer.npy": state})
        case("state_unused_momentum_buffer_adam", base=init, manifest_changes=optimizer(**adam),
             files={"init_exp_avg.npy": state, "init_exp_avg_sq.npy": state, "init_momentum_buffer.npy": state})
        case("state_unused_max_without_amsgrad", base=init, manifest_changes=optimizer(**adam),
             files={"init_exp_avg.npy": state, "init_exp_avg_sq.npy": state, "init_max_exp_avg_sq.npy": state})
        case("state_shape", base=init, manifest_changes=optimizer(**adam),
             files={"init_exp_avg.npy": npy("<f8", (P + 1,), f8(*([0.01] * (P + 1)))), "init_exp_avg_sq.npy": state})
        case("state_dtype", base=init, manifest_changes=optimizer(**adam),
             files={"init_exp_avg.npy": state, "init_exp_avg_sq.npy": npy("<i8", (P,), b"\0" * 8 * P)})
        case("state_negative_exp_avg_sq", base=init, manifest_changes=optimizer(**adam),
             files={"init_exp_avg.npy": state, "init_exp_avg_sq.npy": npy("<f8", (P,), f8(*([0.01] * (P - 1) + [-0.5])))})
        case("state_nan_momentum_buffer", manifest_changes=optimizer(momentum=0.9, nesterov=True, initial_step=3),
             files={"init_momentum_buffer.npy": npy("<f8", (P,), f8(*([float("nan")] + [0.01] * (P - 1))))})
        case("state_truncated", base=init, manifest_changes=optimizer(**adam),
             files={"init_exp_avg.npy": state[:-8], "init_exp_avg_sq.npy": state})
        case("manifest_v2_bad_betas", manifest_changes=optimizer(type="Adam", betas=[1.5, 0.999]))

        # version 3: samples of shape input_shape ([N, 2, 2] for iris's 4 features as 1x2x2 images)
        def image_model(m):
            m["version"] = 3
            m["model"] = {"input_shape": [1, 2, 2], "layers": [{"type": "conv2d", "out_channels": 1, "kernel_size": 1},
                                                             {"type": "flatten"}, {"type": "linear", "out_features": 3}]}
        case("v3_x_train_not_images", manifest_changes=image_model)


def main():
    epk = sys.argv[1]
    if os.path.exists(BAD):
        shutil.rmtree(BAD)
    npy_cases()
    manifest_cases()
    csv_cases()
    trace_cases(epk)


if __name__ == "__main__":
    main()
