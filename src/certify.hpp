// certify.hpp — `epk certify`: rigorous enclosures of every term of the kernel identity in
// ball (midpoint–radius) arithmetic, Arb (libflint-arb-dev).  proofs-notes/011-certify.md.
//
// What is built (the rest is refused, never guessed):
// Arithmetic: balls with P + 64-bit midpoints (P = --bits), Arb's rigorous elementary functions.
//   * every layer of trace format version 3 (linear, conv2d, max/avg pools, residual, flatten,
//     layer_norm, the activations), compiled from the layer tree into ops over value slots.
//   * kinks (relu, leaky_relu, max pools): along each step's segment w_s + tΔ_s every switch is
//     isolated rigorously (interval evaluation over a t-interval, interval Newton on the
//     earliest undecided switching function, bisection otherwise); an unresolved interval is
//     enclosed by its width times the interval Jacobian over it.  Between switches a
//     piecewise-linear network's Jacobian is a polynomial of degree ≤ D−1 in t, integrated
//     exactly by ⌈D/2⌉-node Gauss–Legendre with ball nodes and weights.
//   * smooth layers (tanh, sigmoid, softplus, gelu, layer_norm), alone or mixed with kinks:
//     Gauss–Legendre with the proved error bound for integrands analytic in a Bernstein
//     ellipse, the bound on |J| there from the network (each kink on its piece's branch) run
//     in complex balls (acb) over a box containing the ellipse.
//   * every optimizer (SGD with momentum / nesterov / weight decay, Adam, AdamW, amsgrad,
//     resumed state): proofs-notes/007's shares in balls; any learning-rate schedule,
//     minibatches, cross_entropy and mse, mean or sum.
//   * recorded paths (params.npy rows taken as exact binary64 numbers) as given; a replayed
//     trace (init_params.npy only) is trained here in ball arithmetic: the exact-arithmetic
//     training, enclosed.
// Refused with the reason (supported = false; the CLI exits 1): a sign or maximum undecided at
// a training point, a smooth step too close to an activation's singularity, too many pieces.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "epk/engine.hpp"
#include "epk/trace.hpp"

namespace epk {

struct certify_options {
    long bits = 256;              // working precision of the balls' midpoints
    bool contributions = false;   // enclose every c(x_m, x_i) as well
    double max_width = -1;        // relative width asked for; < 0: 2^-(bits-40)
    std::size_t threads = 0;      // over test points; 0 = all cores (identical results for any count)
    // Testing only (tests/test_certify.cpp): with `contributions`, the largest |c(x_0, x_i)_0| is
    // moved by this many units of 2^-bits·|c| before the sums, which must then exclude the identity.
    double perturb_contribution_ulps = 0;
};

// An M × C (or M × N × C) table of enclosures.
struct ball_table {
    std::size_t rows = 0, cols = 0;
    std::vector<std::string> mid, rad;       // decimal strings; [mid ± rad] contains the value
    std::vector<double> mid_value, rad_value;  // binary64: mid rounded, rad rounded up
    bool contains_zero_everywhere = false;     // every entry's enclosure contains 0
};

struct certify_report {
    long bits = 0;
    std::size_t steps = 0, n_train = 0, classes = 0, test_points = 0;
    bool recorded_path = false;
    std::string test_points_name, optimizer, path_note;
    ball_table outputs_initial, outputs_final, reconstruction, optimizer_term, remainder_term, residual;
    ball_table contributions;  // rows = M·N, cols = C (when asked for)
    bool supported = true;     // false: `reason` says which layer/optimizer cannot be certified
    bool certified = false;    // every residual contains 0 and every width ≤ max_width
    std::string reason;        // why not certified (empty when certified)
    double max_width = 0;      // the relative width asked for
    double widest = 0;         // the largest relative width seen
    std::string widest_quantity;
    std::size_t widest_point = 0;
    std::size_t pieces = 0, kinks = 0, enclosed_intervals = 0;  // over all steps and test points
    std::size_t smooth_nodes = 0;  // smooth networks: Gauss nodes used (their analytic bounds chose them)
    double seconds = 0;
};

// Whether this build has Arb (EPK_HAVE_ARB).  Without it certify_trace throws usage_error.
bool certify_available();

certify_report certify_trace(const trace& t, const certify_options& o, const progress_fn& progress = {});

// Bytes the balls of certify_trace need at most, from the shapes (Ī per thread, the batch's
// shares, the contributions when asked for); the CLI refuses above memory_limit_bytes().
double certify_memory_estimate(const trace& t, const certify_options& o);

}  // namespace epk
