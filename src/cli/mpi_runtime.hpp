// The MPI side of the command-line tool (built with -DEPK_MPI=ON): `mpirun -n R epk verify|kernel|
// check|compare ...` shares the path kernel's test side between the R ranks (epk/work_split.hpp).
#pragma once

#include <string>

namespace epk::cli {

class mpi_session {
public:
    // MPI_Init when a launcher started this process (mpirun, srun, mpiexec; not when started by
    // hand: then it is the single-process tool, with no MPI); with more than one rank, sets the
    // engine's work split, and sends the output of every rank but 0 to /dev/null (rank 0 prints
    // and writes; errors keep a way out).
    mpi_session(int* argc, char*** argv);
    ~mpi_session();  // MPI_Finalize
    mpi_session(const mpi_session&) = delete;
    mpi_session& operator=(const mpi_session&) = delete;

    int rank() const { return rank_; }
    int ranks() const { return ranks_; }
    // A rank failed: one line "epk: rank R: <line>" on the job's stderr, then MPI_Abort(code),
    // which ends every rank (nothing is written: rank 0 writes only after every rank's records
    // arrived).  Ranks other than 0 wait a moment first, so that an error every rank meets (bad
    // input) is reported once, by rank 0.
    [[noreturn]] void fail(const std::string& line, int code) const;

private:
    int rank_ = 0, ranks_ = 1;
    bool initialized_ = false;
    int err_fd_ = 2;
};

}  // namespace epk::cli
