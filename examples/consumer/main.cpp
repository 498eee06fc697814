// epk_consumer TRACE: verify a trace with the installed library (find_package(epk)) and
// print the residual, the audit's verdict and the first test point's reconstruction.
#include <cstdio>
#include <exception>

#include "epk/engine.hpp"
#include "epk/error.hpp"
#include "epk/trace.hpp"

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: epk_consumer TRACE\n");
        return 2;
    }
    try {
        const epk::trace t = epk::read_trace(argv[1]);
        const epk::kernel_report k = epk::compute_kernel(t, epk::parse_precision("double"), {});
        const epk::audit_verdict v = epk::judge_audit(k);
        std::printf("residual %.3e (%s), audit %.3g units (%s), f_0 = %.17g, reconstruction %.17g\n", k.residual_max_abs,
                    k.ok ? "within budget" : "OUTSIDE budget", v.units, v.explained ? "explained" : "NOT explained",
                    k.outputs_final.values.at(0), k.reconstruction.values.at(0));
        return k.ok && v.explained ? 0 : 1;
    } catch (const epk::input_error& e) {
        std::fprintf(stderr, "epk_consumer: %s\n", e.what());
        return 2;
    }
}
