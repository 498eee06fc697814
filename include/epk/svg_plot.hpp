// epk/svg_plot.hpp — small, dependency-free SVG line plots for `epk study`
// (log or linear axes, one polyline with markers per series, a legend).
#pragma once

#include <string>
#include <vector>

namespace epk {

struct plot_series {
    std::string name;
    std::vector<double> x, y;  // points with a non-finite or (on a log axis) non-positive coordinate are skipped
    bool dashed = false;       // reference lines (theory slopes, y = u)
};

struct plot_spec {
    std::string title, x_label, y_label;
    bool log_x = true, log_y = true;
    std::vector<plot_series> series;
};

// The whole SVG document (640 × 420).  A plot with no drawable point still
// yields a valid document that says so.
std::string render_svg(const plot_spec& p);

}  // namespace epk
