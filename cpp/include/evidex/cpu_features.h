// CPU features by GCC's -m names (avx2, avx512f, ...), read from cpuid and the
// OS's saved register state (xgetbv), independent of the compiler's
// __builtin_cpu_supports list. A kernel library declares the features it was
// built for, and the loader checks them against these before running any of
// its code, so a library built on one machine is refused, not a SIGILL, on
// another.
#pragma once

#include <string>
#include <vector>

namespace evidex {

// Every feature name this evidex can check, in a fixed order.
const std::vector<std::string>& known_cpu_features();

// The known features this CPU (and its OS) supports.
const std::vector<std::string>& cpu_features();

// The names in `required` this CPU lacks; names evidex does not know count as
// lacking (a library needing them cannot be checked, so it is not loaded).
std::vector<std::string> missing_cpu_features(const std::vector<std::string>& required);

}  // namespace evidex
