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
    // For comparisons, a plain composite rule on [0, 1] with `panels` equal panels:
    // left = J at each panel's start (one panel: the per-step tangent kernel J(w_s)),
    // midpoint = at each panel's middle, trapezoid = (J(start) + J(end))/2 per panel.
    enum class simple_rule { none, left, midpoint, trapezoid };
    simple_rule composite = simple_rule::none;
    std::size_t panels = 1;
};

}  // namespace epk
