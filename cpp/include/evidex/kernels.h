// The index's replaceable kernels (kernel_abi.h): the built-in set, and sets
// loaded from a compiled kernel library (a CRINN winner) with dlopen.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "evidex/kernel_abi.h"

namespace evidex {

struct KernelSet {
    evx_search_fn search = nullptr;
    evx_select_fn select = nullptr;
    evx_refine_fn refine = nullptr;
    // Optional: without it, filtered searches run the index's own.
    evx_search_filtered_fn search_filtered = nullptr;
    // Where each slot comes from: "builtin" or the library's path.
    std::string search_source = "builtin", select_source = "builtin", refine_source = "builtin";
    std::string search_filtered_source = "builtin";
    std::shared_ptr<void> library;  // keeps the shared object loaded while in use
};

// The built-in kernels, compiled into the package.
const KernelSet& builtin_kernels();

// Nodes expanded (hops) by this thread's searches with the built-in kernels, a
// running count: the index reads it around each query for its statistics.
std::uint64_t& search_expansions();

// Slots found in the library at `path` replace those of `base`; the others stay.
// Throws std::runtime_error if it declares CPU features this machine lacks (or
// none at all), cannot be loaded, has no or another ABI version, or exports none
// of the slots. The CPU check reads the file and runs none of its code.
std::shared_ptr<KernelSet> load_kernel_library(const std::string& path,
                                                     const KernelSet& base);

// The CPU features a library declares (its .evidex_cpu section), without loading it.
std::vector<std::string> kernel_library_cpu_features(const std::string& path);

}  // namespace evidex
