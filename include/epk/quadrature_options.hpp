// epk/quadrature_options.hpp — how the integral along each step is evaluated
// (segment.hpp); a plain struct so the precision-agnostic engine can carry it.
#pragma once

#include <cstddef>

namespace epk {

struct quadrature_options {
    std::size_t first_nodes = 4;    // smooth pieces: first rule
    std::size_t max_nodes = 128;    // per piece before it is bisected
    std::size_t max_depth = 12;     // bisection depth limit
    double tolerance_factor = 0;    // τ; 0 = the default of analyse_segment_structure
    std::size_t kink_samples = 16;  // per piece, activation layers from the first smooth one on
    std::size_t max_evaluations = 100000;  // per segment: beyond it no piece is refined further
    std::size_t fixed_nodes = 0;    // > 0: one fixed n-point Gauss rule on [0,1], no pieces (for comparisons)
    // For comparisons: J at t = 0 only (the per-step tangent kernel), or the trapezoid rule on [0,1].
    enum class endpoints { none, left, trapezoid };
    endpoints endpoint_rule = endpoints::none;
};

}  // namespace epk
