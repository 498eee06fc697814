// epk/work_split.hpp — one path kernel computation shared between processes (under MPI:
// src/cli/mpi_runtime.cpp; docs: README "Many machines (MPI)").
//
// The work of the test side is cut into fixed units, the same for any number of processes R:
//   * test points in chunks of `split_chunk_points` (16: a multiple of the structured paths'
//     chunks, so a chunk is processed by the same arithmetic wherever it runs), and
//   * steps in blocks of `split_block_steps` (8).  The smooth ladder's starting rule, which a
//     point otherwise carries from step to step, restarts at every block: a block's arithmetic
//     depends on nothing computed in another block's test side.
// Unit (chunk j, block k) belongs to rank (j + k) mod R, every rank taking every step's training
// side (the optimizer's state needs all earlier gradients) and the test side of its units; or,
// for plain SGD, whole blocks are dealt and a rank takes only its own steps (point_sink, in
// path_kernel.hpp).
// Each point-step record (what one step adds at one test point) goes to rank 0, which adds the
// records of every test point in step order — the order one process adds them in.  So every sum
// has one association, fixed by (step, point) alone: results are bit-identical for any R and any
// thread count, and equal to the single-process run's (proofs-notes/013).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "epk/error.hpp"
#include "epk/scalar.hpp"

namespace epk {

inline constexpr std::size_t split_chunk_points = 16;
inline constexpr std::size_t split_block_steps = 8;

struct work_split {
    std::size_t rank = 0, ranks = 1;
    // Called by every rank at the same points of the computation with its bytes; returns, on
    // rank 0, every rank's bytes (index = rank), elsewhere nothing.
    std::function<std::vector<std::vector<unsigned char>>(std::vector<unsigned char>)> gather;

    bool distributed() const { return ranks > 1; }
    std::size_t owner(std::size_t step, std::size_t point) const {
        return (step / split_block_steps + point / split_chunk_points) % ranks;
    }
    bool owns(std::size_t step, std::size_t point) const { return ranks <= 1 || owner(step, point) == rank; }
};

// The split the engine's computations on this thread take (null: one process, the default).
// The MPI runtime sets it once, on the main thread, at start (tests/test_work_split.cpp runs
// several ranks as threads of one process).
const work_split* active_work_split();
void set_active_work_split(const work_split* split);
// Whether this process writes the results (rank 0, or the only process).  The other ranks' results
// hold only what rank 0 needs of them; they write and print nothing.
inline bool is_output_rank() {
    const work_split* s = active_work_split();
    return s == nullptr || s->rank == 0;
}

// ------------------------------------------------------------------ bytes

// Values as bytes, exactly (a rank's records to rank 0): the hardware types and binary128 by
// their representation, MPFR numbers by their hexadecimal digits (all of them: mpfr_get_str
// with n = 0 gives a string that reads back to the same number at the same precision).
class byte_writer {
public:
    std::vector<unsigned char> bytes;

    void put_raw(const void* p, std::size_t n) {
        const auto* c = static_cast<const unsigned char*>(p);
        bytes.insert(bytes.end(), c, c + n);
    }
    void put(std::size_t v) {
        const std::uint64_t x = v;
        put_raw(&x, sizeof x);
    }
    void put(double v) { put_raw(&v, sizeof v); }
    void put(const std::string& s) {
        put(s.size());
        put_raw(s.data(), s.size());
    }
    template <Real T>
    void put_real(const T& v) {
        if constexpr (std::is_same_v<T, mpfr_real>) put(mpfr_real_to_hex(v));
        else if constexpr (std::is_same_v<T, float128>) {
            const __float128 x = v.backend().value();
            put_raw(&x, sizeof x);
        } else {
            static_assert(std::is_floating_point_v<T>);
            put_raw(&v, sizeof v);
        }
    }
    template <class V>
    void put_vector(const std::vector<V>& v) {
        put(v.size());
        for (const V& x : v) {
            if constexpr (std::is_same_v<V, std::size_t> || std::is_same_v<V, double>) put(x);
            else put_real(x);
        }
    }
    static std::string mpfr_real_to_hex(const mpfr_real& v);
};

class byte_reader {
public:
    byte_reader(const unsigned char* p, std::size_t n) : p_(p), end_(p + n) {}
    bool done() const { return p_ == end_; }

    void get_raw(void* out, std::size_t n) {
        if (static_cast<std::size_t>(end_ - p_) < n) throw usage_error("work_split: a rank's record is truncated");
        std::memcpy(out, p_, n);
        p_ += n;
    }
    std::size_t get_size() {
        std::uint64_t x = 0;
        get_raw(&x, sizeof x);
        return static_cast<std::size_t>(x);
    }
    double get_double() {
        double x = 0;
        get_raw(&x, sizeof x);
        return x;
    }
    std::string get_string() {
        const std::size_t n = get_size();
        if (static_cast<std::size_t>(end_ - p_) < n) throw usage_error("work_split: a rank's record is truncated");
        std::string s(reinterpret_cast<const char*>(p_), n);
        p_ += n;
        return s;
    }
    template <Real T>
    T get_real() {
        if constexpr (std::is_same_v<T, mpfr_real>) return mpfr_real_from_hex(get_string());
        else if constexpr (std::is_same_v<T, float128>) {
            __float128 x;
            get_raw(&x, sizeof x);
            return T(x);
        } else {
            T x;
            get_raw(&x, sizeof x);
            return x;
        }
    }
    template <class V>
    std::vector<V> get_vector() {
        const std::size_t n = get_size();
        if (n > static_cast<std::size_t>(end_ - p_)) throw usage_error("work_split: a rank's record is truncated");
        std::vector<V> v;
        v.reserve(n);
        for (std::size_t k = 0; k < n; ++k) {
            if constexpr (std::is_same_v<V, std::size_t>) v.push_back(get_size());
            else if constexpr (std::is_same_v<V, double>) v.push_back(get_double());
            else v.push_back(get_real<V>());
        }
        return v;
    }
    static mpfr_real mpfr_real_from_hex(const std::string& s);

private:
    const unsigned char* p_;
    const unsigned char* end_;
};

}  // namespace epk
