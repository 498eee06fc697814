"""epk — the exact path kernel, verified in any precision (Python bindings).

A network trained by gradient descent is a kernel machine,
f(x; w_S) = f(x; w_0) + sum_s sum_i K_s(x, x_i) a_{i,s}; epk computes every term and shows
that the two sides agree to the last bits of the chosen precision.  The same engine as the
``epk`` command line, in-process:

    import epk
    r = epk.verify("RUN")                     # a trace directory ...
    r = epk.verify({"manifest": {...}, "x_train": X, "y_train": y, "params": W})  # ... or arrays
    r["ok"], r["residual_max_abs"], r["reconstruction"]        # NumPy arrays for the tables
    k = epk.kernel("RUN", precision="mpfr:256")
    k["contributions"]                        # [M, N, C]: c(x_m, x_i)
    epk.predict("RUN"); epk.check("RUN", against=["theirs/contributions.npy"])
    epk.explain("RUN", top=5)                 # proponents and opponents of each prediction

Every function returns what ``epk COMMAND --json`` prints (the same keys and the same binary64
numbers) with the M x C tables as NumPy float64 arrays; the engine runs with the GIL released.
Errors: ``epk.TraceError`` (a ValueError with ``.file`` and ``.rule``) for a trace or argument
that breaks a rule; ``epk.UnexplainedStepsError`` when a recorded path is not the declared
training (the strict audit: gradient clipping, a learning-rate schedule left out, a layer
dropped...), unless ``allow_unexplained_steps=True``.  ``epk.torch`` records a PyTorch run.
"""

import io
import json
import os
import tempfile

import numpy as np

from . import _epk
from ._epk import Trace, TraceError

__all__ = ["Trace", "TraceError", "UnexplainedStepsError", "load", "save", "verify", "predict", "kernel", "check",
           "explain",
           "audit_rounding_units", "__version__"]
__version__ = _epk.__version__
audit_rounding_units = _epk.audit_rounding_units


class UnexplainedStepsError(RuntimeError):
    """The recorded path is not the training its trace declares (``epk verify`` exits 1).

    ``.step`` is the worst step, ``.units`` its deviation from the declared optimizer's step in
    units of rounding (the limit is ``epk.audit_rounding_units``), ``.report`` the full result.
    """

    def __init__(self, info, report):
        super().__init__(info["message"])
        self.step = info["step"]
        self.units = info["units"]
        self.report = report


def _trace_error(file, rule):
    e = TraceError("%s: %s" % (file, rule))
    e.file, e.rule = file, rule
    return e


# The arrays a trace may hold (docs/trace-format.md), by file name without .npy.
_TRACE_ARRAYS = ("x_train", "y_train", "params", "init_params", "batches", "learning_rates", "x_test",
                 "init_momentum_buffer", "init_exp_avg", "init_exp_avg_sq", "init_max_exp_avg_sq")


def _npy_bytes(name, value, where):
    a = np.asarray(value)
    if a.dtype.kind not in "fiu" or a.dtype.itemsize not in (4, 8):
        raise _trace_error("%s/%s.npy" % (where, name),
                           "dtype %s: expected float32, float64 or int64 (no objects, no bool, no float16)" % a.dtype)
    buf = io.BytesIO()
    # C order (a strided or Fortran-ordered view is copied), little-endian, never pickled.
    np.save(buf, np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False), allow_pickle=False)
    return buf.getvalue()


def load(trace, name=None):
    """A validated ``epk.Trace`` from a trace directory, a dict of arrays, or a Trace.

    The dict holds ``"manifest"`` (a dict, or the manifest.json text) and the arrays by name
    (``"x_train"``, ``"y_train"``, ``"params"`` or ``"init_params"``, optionally ``"batches"``,
    ``"learning_rates"``, ``"x_test"`` and the optimizer state; a ``.npy`` suffix is allowed).
    They are checked by the same rules as the files of a trace directory; errors name
    ``NAME/x_train.npy`` (NAME defaults to ``"arrays"``).
    """
    if isinstance(trace, Trace):
        return trace
    if isinstance(trace, (str, os.PathLike)):
        return _epk.read_trace(os.fspath(trace))
    if isinstance(trace, dict):
        where = name or "arrays"
        files = {}
        for key, value in trace.items():
            if not isinstance(key, str):
                raise _trace_error(where, "keys must be strings, got %r" % (key,))
            base = key[:-4] if key.endswith(".npy") else key[:-5] if key.endswith(".json") else key
            if base == "manifest":
                text = value if isinstance(value, str) else json.dumps(value)
                files["manifest.json"] = text.encode("utf-8")
            elif base in _TRACE_ARRAYS:
                if value is None:
                    continue
                files[base + ".npy"] = _npy_bytes(base, value, where)
            else:
                raise _trace_error("%s/%s" % (where, key), "unknown entry (expected manifest, %s)" % ", ".join(_TRACE_ARRAYS))
        return _epk.parse_trace(files, where)
    raise TypeError("epk: a trace is a directory path, a dict of arrays or an epk.Trace, not %s" % type(trace).__name__)


def save(trace, directory):
    """Write a trace (anything ``load`` accepts) as a trace directory (which must not exist or be empty)."""
    _epk.write_trace(os.fspath(directory), load(trace))


def _name(trace, name):
    if name:
        return name
    if isinstance(trace, (str, os.PathLike)):
        return os.fspath(trace)
    return "arrays"


_TABLES = ("outputs_initial", "outputs_final", "reconstruction", "kernel_reconstruction", "remainder_term",
           "optimizer_term", "residual", "budget", "quadrature_error_estimate")


def _arrays(report):
    for key in _TABLES:
        if key in report and isinstance(report[key], list):
            report[key] = np.asarray(report[key], dtype=np.float64)
    return report


def _strict(report, info, allow):
    report["unexplained"] = info
    if info is not None and not allow:
        raise UnexplainedStepsError(info, report)
    return report


def verify(trace, precision="double", threads=0, structured=True, allow_unexplained_steps=False, name=None):
    """``epk verify --json``: the reconstruction of f(x; w_S), its residual against the budget, the audit.

    ``ok`` is True when every residual is within its budget and the path is explained.  Raises
    ``UnexplainedStepsError`` for a recorded path that is not the declared training unless
    ``allow_unexplained_steps``.
    """
    n = _name(trace, name)
    report, info = _epk.verify(load(trace, n), n, precision, threads, structured, allow_unexplained_steps)
    return _strict(_arrays(report), info, allow_unexplained_steps)


def predict(trace, precision="double", threads=0, allow_unexplained_steps=False, name=None):
    """``epk predict --json``: f(x; w_0) and f(x; w_S) at the test points; a recorded path is audited."""
    n = _name(trace, name)
    report, info = _epk.predict(load(trace, n), n, precision, threads, allow_unexplained_steps)
    return _strict(_arrays(report), info, allow_unexplained_steps)


def kernel(trace, precision="double", steps=None, threads=0, structured=True, allow_unexplained_steps=False,
           name=None):
    """``epk kernel``: the kernel machine's terms as NumPy arrays (owned by them, not copied).

    Returns the report (as ``verify``, with ``audit``) plus ``bias`` [M, C], ``contributions``
    [M, N, C], ``coefficients`` [S, N, C], ``remainder`` [M, C], ``outputs_final`` [M, C],
    ``optimizer_term`` [M, C] (optimizers other than plain SGD) and ``kernel_steps`` {s: [M, N, C, C]}
    for the steps asked for (plain SGD).
    """
    n = _name(trace, name)
    t = load(trace, n)
    if steps == "all":
        steps = list(range(t.steps))
    report, arrays, info = _epk.kernel(t, n, precision, threads, structured, list(steps or []), allow_unexplained_steps)
    report = _arrays(report)
    report.update(arrays)
    return _strict(report, info, allow_unexplained_steps)


def check(trace, against, precision="double", tolerance=1e-10, threads=0, allow_unexplained_steps=False, name=None):
    """``epk check --json``: another implementation's arrays against epk's exact kernel.

    ``against``: paths of .npy files or directories, or a dict {quantity: array} with the names
    ``epk kernel`` writes (``contributions``, ``bias``, ``kernel_step_3``, ``outputs_final``,
    ``predictions``, ...).  ``ok`` is True when every array is within the tolerance, the reference
    is verified and the path is explained.
    """
    n = _name(trace, name)
    t = load(trace, n)
    if isinstance(against, (str, os.PathLike)):
        against = [against]
    if isinstance(against, dict):
        with tempfile.TemporaryDirectory(prefix="epk-check-") as d:
            paths = []
            for key, value in against.items():
                base = key[:-4] if key.endswith(".npy") else key
                path = os.path.join(d, base + ".npy")
                with open(path, "wb") as f:
                    f.write(_npy_bytes(base, value, "against"))
                paths.append(path)
            report, info = _epk.check(t, n, paths, precision, tolerance, threads, allow_unexplained_steps)
    else:
        report, info = _epk.check(t, n, [os.fspath(p) for p in against], precision, tolerance, threads,
                                  allow_unexplained_steps)
    return _strict(report, info, allow_unexplained_steps)


def explain(trace, top=5, by_layer=True, by_step=False, precision="double", threads=0, structured=True,
            allow_unexplained_steps=False, name=None):
    """``epk explain --json``: per test point the ``top`` training points that pushed its predicted class most
    (``proponents``) and most against it (``opponents``), by their contribution c(x, x_i) to that output, and
    f(x; w_S) split into ``bias`` (f(x; w_0)), ``training_points`` (the sum of the contributions),
    ``optimizer_term`` and ``remainder``.  Each listed point's contribution is split over the layers
    (``layers``: [{"layer", "contribution"}], unless ``by_layer=False``: the split takes the full-Jacobian
    path) and with ``by_step`` over the steps (``steps``: one share per step)."""
    n = _name(trace, name)
    report, info = _epk.explain(load(trace, n), n, precision, threads, structured, int(top), bool(by_layer),
                                bool(by_step))
    return _strict(report, info, allow_unexplained_steps)
