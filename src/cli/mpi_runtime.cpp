// mpi_session: MPI for the command-line tool (see mpi_runtime.hpp).  The only file that
// includes mpi.h; the engine sees a work_split and a gather function.
#include "mpi_runtime.hpp"

#include <fcntl.h>
#include <mpi.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <stdexcept>
#include <thread>
#include <vector>

#include "epk/error.hpp"
#include "epk/work_split.hpp"

namespace epk::cli {

namespace {

work_split split_state;
// EPK_MPI_STATS: rank 0's account of the exchange (bench/mpi_scaling.sh reads it).
std::size_t rounds = 0, bytes_received = 0;
double gather_seconds = 0;
constexpr int tag_size = 1, tag_bytes = 2;
constexpr std::size_t piece = std::size_t{1} << 30;  // MPI counts are ints: bytes in pieces of 1 GiB

// An MPI call that fails (another rank gone, the transport broken) is an internal error (exit 3),
// not bad input.
void check(int rc, const char* what) {
    if (rc != MPI_SUCCESS) throw std::runtime_error(std::string("MPI: ") + what + " failed");
}

// Every rank's bytes to rank 0, rank by rank (point to point, so any size).
std::vector<std::vector<unsigned char>> gather_to_root(std::vector<unsigned char> mine) {
    int rank = 0, ranks = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks);
    if (rank != 0) {
        const std::uint64_t n = mine.size();
        check(MPI_Send(&n, 1, MPI_UINT64_T, 0, tag_size, MPI_COMM_WORLD), "MPI_Send");
        for (std::size_t off = 0; off < mine.size(); off += piece)
            check(MPI_Send(mine.data() + off, static_cast<int>(std::min(piece, mine.size() - off)), MPI_UNSIGNED_CHAR, 0,
                           tag_bytes, MPI_COMM_WORLD),
                  "MPI_Send");
        return {};
    }
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::vector<unsigned char>> all(static_cast<std::size_t>(ranks));
    all[0] = std::move(mine);
    for (int r = 1; r < ranks; ++r) {
        std::uint64_t n = 0;
        check(MPI_Recv(&n, 1, MPI_UINT64_T, r, tag_size, MPI_COMM_WORLD, MPI_STATUS_IGNORE), "MPI_Recv");
        std::vector<unsigned char>& b = all[static_cast<std::size_t>(r)];
        b.resize(static_cast<std::size_t>(n));
        for (std::size_t off = 0; off < b.size(); off += piece)
            check(MPI_Recv(b.data() + off, static_cast<int>(std::min(piece, b.size() - off)), MPI_UNSIGNED_CHAR, r,
                           tag_bytes, MPI_COMM_WORLD, MPI_STATUS_IGNORE),
                  "MPI_Recv");
        bytes_received += b.size();
    }
    ++rounds;
    gather_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return all;
}

}  // namespace

namespace {
// Whether a launcher started this process as a rank (OpenMPI's mpirun, a PMIx or PMI launcher
// such as srun --mpi=pmix or MPICH's mpiexec).  Started by hand it is the single-process tool
// and does not initialise MPI at all: a singleton MPI_Init starts a daemon and resolves the
// host name, which takes seconds where the name does not resolve.
bool launched_as_rank() {
    for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
        if (std::getenv(name) != nullptr) return true;
    return false;
}
}  // namespace

mpi_session::mpi_session(int* argc, char*** argv) {
    if (!launched_as_rank()) return;  // one process: no MPI
    initialized_ = true;
    MPI_Init(argc, argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks_);
    if (ranks_ <= 1) return;  // one rank: the single-process tool, exactly
    // Errors are returned to us (MPI_Abort on a failure, below), not MPI's default abort.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    split_state.rank = static_cast<std::size_t>(rank_);
    split_state.ranks = static_cast<std::size_t>(ranks_);
    split_state.gather = gather_to_root;
    set_active_work_split(&split_state);
    if (rank_ != 0) {
        err_fd_ = dup(STDERR_FILENO);
        const int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, STDOUT_FILENO);
            dup2(null, STDERR_FILENO);
            close(null);
        }
    }
}

mpi_session::~mpi_session() {
    if (ranks_ > 1 && rank_ == 0 && std::getenv("EPK_MPI_STATS") != nullptr)
        std::fprintf(stderr, "epk: mpi: %d ranks, %zu bytes to rank 0 in %zu rounds, %.3f s in the gathers at rank 0\n",
                     ranks_, bytes_received, rounds, gather_seconds);
    set_active_work_split(nullptr);
    if (initialized_) MPI_Finalize();
}

void mpi_session::fail(const std::string& line, int code) const {
    if (rank_ != 0) std::this_thread::sleep_for(std::chrono::seconds(2));
    const std::string text = "epk: rank " + std::to_string(rank_) + ": " + line + "\n";
    [[maybe_unused]] const ssize_t w = write(err_fd_, text.data(), text.size());
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
}

}  // namespace epk::cli
