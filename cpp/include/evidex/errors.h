// Exception types that the Python bindings translate into precise Python errors.
#pragma once

#include <stdexcept>
#include <string>

namespace evidex {

// A saved index that fails validation: wrong magic, newer format, truncated,
// checksum mismatch or inconsistent contents. Python: evidex.CorruptIndexError.
struct CorruptIndexError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// An operating-system failure on a file; carries errno. Python: OSError.
struct FileError : std::runtime_error {
    FileError(const std::string& what, int err, std::string path)
        : std::runtime_error(what), error_number(err), filename(std::move(path)) {}
    int error_number;
    std::string filename;
};

// A label that is not in the index. Python: KeyError.
struct LabelNotFound : std::out_of_range {
    using std::out_of_range::out_of_range;
};

// A method of an index called from inside a callback (a search filter) that runs
// while the same index is locked by this thread. Python: RuntimeError.
struct ReentrantCall : std::logic_error {
    using std::logic_error::logic_error;
};

}  // namespace evidex
