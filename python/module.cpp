// _epk — the C++ side of the Python package `epk` (python/epk/__init__.py wraps it).
//
// Every function takes a Trace (read from a directory or parsed from the files' bytes, with
// the same validation as the command line), releases the GIL while the engine runs, and
// returns what the CLI's --json prints (report_json.hpp, parsed by Python's json module: the
// same keys and the same binary64 numbers) plus, for `kernel`, the arrays as NumPy arrays
// that own the engine's buffers (no copy).  epk::input_error becomes epk.TraceError (a
// ValueError) with .file and .rule.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "epk/check.hpp"
#include "epk/engine.hpp"
#include "epk/error.hpp"
#include "epk/report_json.hpp"
#include "epk/trace.hpp"

namespace py = pybind11;

namespace {

PyObject* trace_error_type = nullptr;

py::object to_python(const nlohmann::json& j) { return py::module_::import("json").attr("loads")(j.dump()); }

// A NumPy array that owns `v` (moved, not copied).
py::array_t<double> owned_array(std::vector<double>&& v, const std::vector<py::ssize_t>& shape) {
    auto* held = new std::vector<double>(std::move(v));
    py::capsule owner(held, [](void* p) { delete static_cast<std::vector<double>*>(p); });
    return py::array_t<double>(shape, held->data(), owner);
}

py::ssize_t sz(std::size_t n) { return static_cast<py::ssize_t>(n); }

// The unexplained-steps message, or None when the path is the declared training.
py::object unexplained(const epk::kernel_report& k, const std::string& name) {
    if (epk::judge_audit(k).explained) return py::none();
    const epk::audit_verdict v = epk::judge_audit(k);
    py::dict d;
    d["message"] = epk::unexplained_steps_message(name, k);
    d["step"] = v.worst_step;
    d["units"] = v.units;
    return d;
}

epk::kernel_options options(std::size_t threads, bool structured) {
    epk::kernel_options o;
    o.threads = threads;
    o.structured = structured;
    return o;
}

// The memory check, then compute_kernel with the GIL released.
epk::kernel_report run_kernel(const epk::trace& t, const epk::precision& p, const epk::kernel_options& o,
                              const std::string& name) {
    epk::check_memory(t, p, o, true, name);
    py::gil_scoped_release release;
    return epk::compute_kernel(t, p, o);
}

py::tuple verify(const epk::trace& t, const std::string& name, const std::string& precision, std::size_t threads,
                 bool structured, bool allow_unexplained) {
    const epk::precision p = epk::parse_precision(precision);
    epk::kernel_options o = options(threads, structured);
    o.contributions = false;
    epk::kernel_report k = run_kernel(t, p, o, name);
    return py::make_tuple(to_python(epk::verify_json(k, p, allow_unexplained)), unexplained(k, name));
}

py::tuple predict(const epk::trace& t, const std::string& name, const std::string& precision, std::size_t threads,
                  bool allow_unexplained) {
    const epk::precision p = epk::parse_precision(precision);
    epk::check_memory(t, p, {}, false, name);
    epk::evaluation ev;
    std::optional<epk::kernel_report> audit;
    {
        py::gil_scoped_release release;
        ev = epk::evaluate_trace(t, p);
        if (t.params) audit = epk::audit_trace(t, p, threads);
    }
    py::object msg = audit ? unexplained(*audit, name) : py::none();
    return py::make_tuple(to_python(epk::predict_json(ev, audit ? &*audit : nullptr, p, allow_unexplained)), msg);
}

py::tuple kernel(const epk::trace& t, const std::string& name, const std::string& precision, std::size_t threads,
                 bool structured, const std::vector<std::size_t>& steps, bool allow_unexplained) {
    const epk::precision p = epk::parse_precision(precision);
    epk::kernel_options o = options(threads, structured);
    o.coefficients = true;
    if (!steps.empty()) {
        if (!t.optimizer.plain())
            throw epk::input_error("steps", "per-step kernels K_s are defined for plain SGD; " + name + " was trained with " +
                                                epk::describe_optimizer(t) + ": use contributions");
        std::vector<std::size_t> s = steps;
        std::sort(s.begin(), s.end());
        s.erase(std::unique(s.begin(), s.end()), s.end());
        if (s.back() >= t.steps())
            throw epk::input_error("steps", "step " + std::to_string(s.back()) + " is out of range (the trace has " +
                                                std::to_string(t.steps()) + " steps, numbered from 0)");
        o.kernel_steps = s;
    }
    epk::kernel_report k = run_kernel(t, p, o, name);
    const std::size_t m = k.outputs_final.rows, n = k.n_train, c = k.classes, S = k.steps;
    py::dict arrays;
    arrays["bias"] = owned_array(std::vector<double>(k.outputs_initial.values), {sz(m), sz(c)});
    arrays["outputs_final"] = owned_array(std::vector<double>(k.outputs_final.values), {sz(m), sz(c)});
    arrays["remainder"] = owned_array(std::vector<double>(k.remainder_term.values), {sz(m), sz(c)});
    if (k.optimizer_term.rows > 0)
        arrays["optimizer_term"] = owned_array(std::vector<double>(k.optimizer_term.values), {sz(m), sz(c)});
    py::dict step_kernels;
    for (auto& [s, kern] : k.step_kernels) step_kernels[py::int_(s)] = owned_array(std::move(kern), {sz(m), sz(n), sz(c), sz(c)});
    py::object report = to_python(epk::verify_json(k, p, allow_unexplained));
    arrays["contributions"] = owned_array(std::move(k.contributions), {sz(m), sz(n), sz(c)});
    arrays["coefficients"] = owned_array(std::move(k.coefficients), {sz(S), sz(n), sz(c)});
    arrays["kernel_steps"] = step_kernels;
    return py::make_tuple(report, arrays, unexplained(k, name));
}

py::tuple check(const epk::trace& t, const std::string& name, const std::vector<std::string>& against,
                const std::string& precision, double tolerance, std::size_t threads, bool allow_unexplained) {
    const epk::precision p = epk::parse_precision(precision);
    if (!(tolerance >= 0)) throw epk::input_error("tolerance", "must be >= 0");
    if (against.empty()) throw epk::input_error("against", "give the .npy files or directories to check");
    const std::vector<epk::check_file> files = epk::load_check_files(against);
    epk::check_report r;
    {
        py::gil_scoped_release release;
        r = epk::check_against(t, name, p, files, tolerance, threads);
    }
    return py::make_tuple(to_python(epk::check_json(r, name, tolerance, allow_unexplained)),
                          unexplained(r.reference, name));
}

py::tuple explain(const epk::trace& t, const std::string& name, const std::string& precision, std::size_t threads,
                  bool structured, std::size_t top, bool by_layer, bool by_step) {
    const epk::precision p = epk::parse_precision(precision);
    if (top < 1) throw epk::input_error("top", "must be >= 1");
    epk::kernel_options o = options(threads, structured);
    o.split_layers = by_layer;
    o.split_steps = by_step;
    epk::kernel_report k = run_kernel(t, p, o, name);
    return py::make_tuple(to_python(epk::explain_json(k, t, top)), unexplained(k, name));
}

epk::trace parse(const std::map<std::string, py::bytes>& files, const std::string& name) {
    std::map<std::string, std::string> bytes;
    for (const auto& [k, v] : files) bytes[k] = std::string(v);
    py::gil_scoped_release release;
    return epk::parse_trace(bytes, name);
}

}  // namespace

PYBIND11_MODULE(_epk, m) {
    m.doc() = "epk's engine (use the package epk)";
    trace_error_type = PyErr_NewExceptionWithDoc(
        "epk.TraceError",
        "A trace, an array or an argument that breaks a rule of the trace format or of the call: .file names "
        "the file (or argument), .rule the rule it breaks.",
        PyExc_ValueError, nullptr);
    m.attr("TraceError") = py::handle(trace_error_type);
    py::register_exception_translator([](std::exception_ptr e) {
        try {
            if (e) std::rethrow_exception(e);
        } catch (const epk::input_error& err) {
            py::object exc = py::reinterpret_borrow<py::object>(trace_error_type)(std::string(err.what()));
            exc.attr("file") = err.file();
            exc.attr("rule") = err.rule();
            PyErr_SetObject(trace_error_type, exc.ptr());
        }
    });

    py::class_<epk::trace>(m, "Trace", "A validated training trace (docs/trace-format.md).")
        .def_property_readonly("steps", &epk::trace::steps)
        .def_property_readonly("n_train", &epk::trace::n_train)
        .def_property_readonly("parameter_count", [](const epk::trace& t) { return t.model.parameter_count(); })
        .def_property_readonly("recorded", [](const epk::trace& t) { return t.params.has_value(); })
        .def_property_readonly("manifest", [](const epk::trace& t) { return to_python(nlohmann::json::parse(epk::manifest_text(t))); })
        .def_property_readonly("optimizer", [](const epk::trace& t) { return epk::describe_optimizer(t); });

    m.def("read_trace", [](const std::string& dir) {
        py::gil_scoped_release release;
        return epk::read_trace(dir);
    });
    m.def("parse_trace", &parse, py::arg("files"), py::arg("name"));
    m.def("write_trace", [](const std::string& dir, const epk::trace& t) { epk::write_trace(dir, t); });
    m.def("verify", &verify, py::arg("trace"), py::arg("name"), py::arg("precision"), py::arg("threads"),
          py::arg("structured"), py::arg("allow_unexplained"));
    m.def("predict", &predict, py::arg("trace"), py::arg("name"), py::arg("precision"), py::arg("threads"),
          py::arg("allow_unexplained"));
    m.def("kernel", &kernel, py::arg("trace"), py::arg("name"), py::arg("precision"), py::arg("threads"),
          py::arg("structured"), py::arg("steps"), py::arg("allow_unexplained"));
    m.def("check", &check, py::arg("trace"), py::arg("name"), py::arg("against"), py::arg("precision"),
          py::arg("tolerance"), py::arg("threads"), py::arg("allow_unexplained"));
    m.def("explain", &explain, py::arg("trace"), py::arg("name"), py::arg("precision"), py::arg("threads"),
          py::arg("structured"), py::arg("top"), py::arg("by_layer"), py::arg("by_step"));
    m.def("keep_freed_memory", &epk::keep_freed_memory);
    m.attr("audit_rounding_units") = epk::audit_rounding_units;
    m.attr("__version__") = "0.1.0";
}
