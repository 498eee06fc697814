// epk/dataset.hpp — labelled data sets: the embedded ones and CSV files.
//
// A data set is N rows of D features (binary64) and an integer class label
// in [0, classes).  CSV rule: comma-separated numbers, one row per line, the
// last column the label (a non-negative integer); a first line that does not
// parse as numbers (sklearn's "150,4,setosa,..." header) is skipped; every
// row has the same number of columns; no NaN/inf; blank lines only at the end.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace epk {

struct dataset {
    std::string name;
    std::size_t rows = 0, features = 0, classes = 0;
    std::vector<double> x;              // rows * features, row-major
    std::vector<std::int64_t> labels;   // rows
    std::vector<std::size_t> image_shape;  // [C, H, W] when the rows are images (digits: [1, 8, 8]); else empty
    std::size_t vocabulary = 0;          // > 0: the rows are token ids in [0, vocabulary) (modadd)
    double train_fraction = 0;           // > 0: the data set's own train/test split (modadd's FRACTION)
};

// Modular addition: all P² pairs (a, b) as the tokens [a, b, P] (P is the '=' token, so the
// vocabulary is P + 1), labelled (a + b) mod P, a ascending then b.  2 <= P <= 1000;
// train_fraction as given (0 < FRACTION < 1).  Throws input_error otherwise.
dataset modadd_dataset(std::size_t P, double fraction);
// "modadd:P" or "modadd:P:FRACTION" (FRACTION default 0.3) → modadd_dataset; input_error
// naming the argument for a malformed one.
dataset parse_modadd_argument(const std::string& arg);

// Embedded: "digits" (1797 x 64, pixels scaled by 1/16 so they lie in [0, 1])
// and "iris" (150 x 4, raw centimetres).  Throws input_error for another name.
dataset embedded_dataset(const std::string& name);
dataset parse_csv_dataset(const std::string& text, const std::string& name);
dataset read_csv_dataset(const std::filesystem::path& file);

}  // namespace epk
