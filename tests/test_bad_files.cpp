// The regression corpus of bad inputs (tests/corpus/bad, written by
// tests/corpus/make_corpus.py): one or more files per rule of docs/trace-format.md and
// of the CSV reader.  Each must be rejected with exactly the message recorded in
// tests/corpus/expected.tsv ("kind<TAB>path<TAB>message"), and every file or trace
// directory in the corpus must have a line.  EPK_CORPUS_PRINT=1 prints the actual
// messages in that format instead of checking (to review a new case).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

#include "epk/dataset.hpp"
#include "epk/error.hpp"
#include "epk/file_io.hpp"
#include "epk/npy.hpp"
#include "epk/trace.hpp"

namespace {

namespace fs = std::filesystem;

const fs::path corpus = EPK_CORPUS_DIR;

// The message the reader gives for `rel` (a path relative to the corpus root), or "accepted".
std::string rejection(const std::string& kind, const std::string& rel) {
    try {
        if (kind == "trace") {
            (void)epk::read_trace(rel);
        } else {
            const std::string bytes = epk::read_file_capped(rel, std::uintmax_t{16} << 20);
            if (kind == "npy") {
                (void)epk::parse_npy({reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size()}, rel);
            } else if (kind == "manifest") {
                epk::trace t;
                epk::parse_manifest(bytes, rel, t);
            } else if (kind == "csv") {
                (void)epk::parse_csv_dataset(bytes, rel);
            } else {
                return "unknown kind " + kind;
            }
        }
    } catch (const epk::input_error& e) {
        return e.what();
    } catch (const std::exception& e) {
        return std::string("not an input_error: ") + e.what();
    }
    return "accepted";
}

struct cwd_guard {
    fs::path saved = fs::current_path();
    explicit cwd_guard(const fs::path& to) { fs::current_path(to); }
    ~cwd_guard() { fs::current_path(saved); }
};

TEST(BadFiles, EachRejectedWithItsExactMessage) {
    cwd_guard in(corpus);
    // Every case in the corpus: files under bad/{npy,manifest,csv}, directories under bad/trace.
    std::set<std::string> cases;
    for (const char* kind : {"npy", "manifest", "csv", "trace"})
        for (const auto& e : fs::directory_iterator(fs::path("bad") / kind)) cases.insert(std::string(kind) + "\t" + e.path().string());
    if (const char* p = std::getenv("EPK_CORPUS_PRINT"); p != nullptr && std::string(p) == "1") {
        for (const std::string& c : cases) {
            const std::string kind = c.substr(0, c.find('\t')), rel = c.substr(c.find('\t') + 1);
            std::cout << kind << "\t" << rel << "\t" << rejection(kind, rel) << "\n";
        }
        GTEST_SKIP() << "printed the messages";
    }
    std::ifstream in_file("expected.tsv");
    ASSERT_TRUE(in_file) << "tests/corpus/expected.tsv missing";
    std::string line;
    std::size_t checked = 0;
    std::set<std::string> listed;
    while (std::getline(in_file, line)) {
        if (line.empty() || line[0] == '#') continue;
        const std::size_t a = line.find('\t'), b = line.find('\t', a + 1);
        ASSERT_NE(b, std::string::npos) << "bad line: " << line;
        const std::string kind = line.substr(0, a), rel = line.substr(a + 1, b - a - 1), expected = line.substr(b + 1);
        listed.insert(kind + "\t" + rel);
        EXPECT_EQ(rejection(kind, rel), expected) << kind << " " << rel;
        // One line, naming the file.
        EXPECT_EQ(expected.find('\n'), std::string::npos);
        EXPECT_EQ(expected.rfind(rel, 0), 0u) << "the message must start with the path: " << expected;
        ++checked;
    }
    for (const std::string& c : cases) EXPECT_TRUE(listed.count(c)) << "no expected message for " << c;
    EXPECT_GE(checked, 60u);
}

// params.npy read on demand (EPK_STREAM_MIB=0: every params.npy stays on disk):
// every trace case gives the same message, and every bad .npy file is refused by
// open_npy with parse_npy's message.
TEST(BadFiles, StreamedParamsGiveTheSameMessages) {
    cwd_guard in(corpus);
    std::ifstream in_file("expected.tsv");
    ASSERT_TRUE(in_file);
    ASSERT_EQ(setenv("EPK_STREAM_MIB", "0", 1), 0);
    std::string line;
    std::size_t traces = 0, files = 0;
    while (std::getline(in_file, line)) {
        if (line.empty() || line[0] == '#') continue;
        const std::size_t a = line.find('\t'), b = line.find('\t', a + 1);
        const std::string kind = line.substr(0, a), rel = line.substr(a + 1, b - a - 1), expected = line.substr(b + 1);
        if (kind == "trace") {
            EXPECT_EQ(rejection(kind, rel), expected) << rel;
            ++traces;
        } else if (kind == "npy") {
            std::string got = "accepted";
            try {
                (void)epk::open_npy(rel, rel);
            } catch (const epk::input_error& e) {
                got = e.what();
            } catch (const std::exception& e) {
                got = std::string("not an input_error: ") + e.what();
            }
            EXPECT_EQ(got, expected) << rel;
            ++files;
        }
    }
    unsetenv("EPK_STREAM_MIB");
    EXPECT_GE(traces, 20u);
    EXPECT_GE(files, 15u);
}

}  // namespace
