#include "epk/svg_plot.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>

namespace epk {
namespace {

constexpr double width = 640, height = 420;
constexpr double left = 78, right = 190, top = 36, bottom = 56;  // margins; the legend sits on the right

std::string escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (c == '&') out += "&amp;";
        else if (c == '<') out += "&lt;";
        else if (c == '>') out += "&gt;";
        else if (c == '"') out += "&quot;";
        else out += c;
    }
    return out;
}

std::string num(double v) {
    char b[32];
    std::snprintf(b, sizeof b, "%.2f", v);
    return b;
}

std::string tick_label(double v, bool log) {
    char b[32];
    if (log) {
        const double e = std::round(std::log10(v));
        if (e >= -2 && e <= 3) std::snprintf(b, sizeof b, "%g", std::pow(10.0, e));
        else std::snprintf(b, sizeof b, "1e%d", static_cast<int>(e));
    } else {
        std::snprintf(b, sizeof b, "%g", v);
    }
    return b;
}

struct axis {
    bool log = true;
    double lo = 0, hi = 1;  // in transformed units (log10 when log)

    double transform(double v) const { return log ? std::log10(v) : v; }
    bool drawable(double v) const { return std::isfinite(v) && (!log || v > 0); }
    // Ticks: every decade (thinned to at most 10) on a log axis, a 1-2-5 step on a linear one.
    std::vector<double> ticks() const {
        std::vector<double> t;
        if (log) {
            const int a = static_cast<int>(std::ceil(lo - 1e-9)), b = static_cast<int>(std::floor(hi + 1e-9));
            const int stride = std::max(1, (b - a) / 9 + ((b - a) % 9 != 0 ? 1 : 0));
            for (int e = a; e <= b; e += stride) t.push_back(std::pow(10.0, e));
        } else {
            const double span = hi - lo, raw = span / 6;
            const double mag = std::pow(10.0, std::floor(std::log10(raw)));
            double step = mag;
            for (double m : {1.0, 2.0, 5.0, 10.0})
                if (m * mag >= raw) { step = m * mag; break; }
            for (double v = std::ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) t.push_back(v);
        }
        return t;
    }
};

axis fit_axis(bool log, const std::vector<double>& values) {
    axis a;
    a.log = log;
    double lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (double v : values) {
        if (!a.drawable(v)) continue;
        lo = std::min(lo, a.transform(v));
        hi = std::max(hi, a.transform(v));
    }
    if (!std::isfinite(lo)) lo = 0, hi = 1;
    if (log) {
        lo = std::floor(lo + 1e-9);
        hi = std::ceil(hi - 1e-9);
        if (hi <= lo) hi = lo + 1;
    } else {
        if (hi <= lo) hi = lo + 1;
        const double pad = 0.04 * (hi - lo);
        lo -= pad;
        hi += pad;
    }
    a.lo = lo;
    a.hi = hi;
    return a;
}

const char* palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
                         "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"};

}  // namespace

std::string render_svg(const plot_spec& p) {
    // Axis ranges from the points drawable in both coordinates.
    axis probe_x, probe_y;
    probe_x.log = p.log_x;
    probe_y.log = p.log_y;
    std::vector<double> xs, ys;
    for (const auto& s : p.series) {
        for (std::size_t k = 0; k < s.x.size() && k < s.y.size(); ++k) {
            if (!probe_x.drawable(s.x[k]) || !probe_y.drawable(s.y[k])) continue;
            xs.push_back(s.x[k]);
            ys.push_back(s.y[k]);
        }
    }
    const axis ax = fit_axis(p.log_x, xs), ay = fit_axis(p.log_y, ys);
    const double pw = width - left - right, ph = height - top - bottom;
    auto px = [&](double v) { return left + (ax.transform(v) - ax.lo) / (ax.hi - ax.lo) * pw; };
    auto py = [&](double v) { return top + ph - (ay.transform(v) - ay.lo) / (ay.hi - ay.lo) * ph; };

    std::ostringstream o;
    o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
      << "\" viewBox=\"0 0 " << width << ' ' << height << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
    o << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    o << "<text x=\"" << num(left + pw / 2) << "\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">" << escape(p.title)
      << "</text>\n";
    // Grid, ticks, labels.
    for (double t : ax.ticks()) {
        const double x = px(t);
        o << "<line x1=\"" << num(x) << "\" y1=\"" << num(top) << "\" x2=\"" << num(x) << "\" y2=\"" << num(top + ph)
          << "\" stroke=\"#e4e4e4\"/>\n";
        o << "<text x=\"" << num(x) << "\" y=\"" << num(top + ph + 16) << "\" text-anchor=\"middle\">"
          << tick_label(t, ax.log) << "</text>\n";
    }
    for (double t : ay.ticks()) {
        const double y = py(t);
        o << "<line x1=\"" << num(left) << "\" y1=\"" << num(y) << "\" x2=\"" << num(left + pw) << "\" y2=\"" << num(y)
          << "\" stroke=\"#e4e4e4\"/>\n";
        o << "<text x=\"" << num(left - 6) << "\" y=\"" << num(y + 4) << "\" text-anchor=\"end\">"
          << tick_label(t, ay.log) << "</text>\n";
    }
    o << "<rect x=\"" << num(left) << "\" y=\"" << num(top) << "\" width=\"" << num(pw) << "\" height=\"" << num(ph)
      << "\" fill=\"none\" stroke=\"black\"/>\n";
    o << "<text x=\"" << num(left + pw / 2) << "\" y=\"" << num(height - 14) << "\" text-anchor=\"middle\">"
      << escape(p.x_label) << "</text>\n";
    o << "<text transform=\"translate(18," << num(top + ph / 2) << ") rotate(-90)\" text-anchor=\"middle\">"
      << escape(p.y_label) << "</text>\n";

    // Series and legend.
    std::size_t drawn_points = 0, legend_row = 0;
    for (std::size_t k = 0; k < p.series.size(); ++k) {
        const plot_series& s = p.series[k];
        const char* colour = s.dashed ? "#555555" : palette[k % std::size(palette)];
        std::string points;
        std::ostringstream marks;
        for (std::size_t q = 0; q < s.x.size() && q < s.y.size(); ++q) {
            if (!ax.drawable(s.x[q]) || !ay.drawable(s.y[q])) continue;
            const double x = px(s.x[q]), y = py(s.y[q]);
            points += num(x) + "," + num(y) + " ";
            if (!s.dashed)
                marks << "<circle cx=\"" << num(x) << "\" cy=\"" << num(y) << "\" r=\"2.5\" fill=\"" << colour << "\"/>\n";
            ++drawn_points;
        }
        if (points.empty()) continue;
        o << "<polyline fill=\"none\" stroke=\"" << colour << "\" stroke-width=\"1.5\""
          << (s.dashed ? " stroke-dasharray=\"5,4\"" : "") << " points=\"" << points << "\"/>\n"
          << marks.str();
        const double ly = top + 10 + 18 * static_cast<double>(legend_row++);
        o << "<line x1=\"" << num(left + pw + 12) << "\" y1=\"" << num(ly) << "\" x2=\"" << num(left + pw + 34)
          << "\" y2=\"" << num(ly) << "\" stroke=\"" << colour << "\" stroke-width=\"2\""
          << (s.dashed ? " stroke-dasharray=\"5,4\"" : "") << "/>\n";
        o << "<text x=\"" << num(left + pw + 40) << "\" y=\"" << num(ly + 4) << "\">" << escape(s.name) << "</text>\n";
    }
    if (drawn_points == 0)
        o << "<text x=\"" << num(left + pw / 2) << "\" y=\"" << num(top + ph / 2)
          << "\" text-anchor=\"middle\">no drawable points</text>\n";
    o << "</svg>\n";
    return o.str();
}

}  // namespace epk
