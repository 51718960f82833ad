#include "evidex/cpu_features.h"

#include <algorithm>
#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

namespace evidex {
namespace {

struct Bit {
    const char* name;
    unsigned leaf, subleaf, reg, bit;  // reg: 0 eax, 1 ebx, 2 ecx, 3 edx
    int state;                         // register state the OS must save: 0, 1 AVX, 2 AVX-512
};

// (AMX is left out: it also needs a per-process permission a library cannot ask for.)
constexpr Bit kBits[] = {
    {"sse3", 1, 0, 2, 0, 0},          {"pclmul", 1, 0, 2, 1, 0},
    {"ssse3", 1, 0, 2, 9, 0},         {"fma", 1, 0, 2, 12, 1},
    {"cx16", 1, 0, 2, 13, 0},         {"sse4.1", 1, 0, 2, 19, 0},
    {"sse4.2", 1, 0, 2, 20, 0},       {"movbe", 1, 0, 2, 22, 0},
    {"popcnt", 1, 0, 2, 23, 0},       {"aes", 1, 0, 2, 25, 0},
    {"xsave", 1, 0, 2, 26, 0},        {"avx", 1, 0, 2, 28, 1},
    {"f16c", 1, 0, 2, 29, 1},         {"rdrnd", 1, 0, 2, 30, 0},
    {"sse", 1, 0, 3, 25, 0},          {"sse2", 1, 0, 3, 26, 0},
    {"bmi", 7, 0, 1, 3, 0},           {"avx2", 7, 0, 1, 5, 1},
    {"bmi2", 7, 0, 1, 8, 0},          {"avx512f", 7, 0, 1, 16, 2},
    {"avx512dq", 7, 0, 1, 17, 2},     {"rdseed", 7, 0, 1, 18, 0},
    {"adx", 7, 0, 1, 19, 0},          {"avx512ifma", 7, 0, 1, 21, 2},
    {"avx512cd", 7, 0, 1, 28, 2},     {"sha", 7, 0, 1, 29, 0},
    {"avx512bw", 7, 0, 1, 30, 2},     {"avx512vl", 7, 0, 1, 31, 2},
    {"avx512vbmi", 7, 0, 2, 1, 2},    {"avx512vbmi2", 7, 0, 2, 6, 2},
    {"gfni", 7, 0, 2, 8, 0},          {"vaes", 7, 0, 2, 9, 1},
    {"vpclmulqdq", 7, 0, 2, 10, 1},   {"avx512vnni", 7, 0, 2, 11, 2},
    {"avx512bitalg", 7, 0, 2, 12, 2}, {"avx512vpopcntdq", 7, 0, 2, 14, 2},
    {"avx512vp2intersect", 7, 0, 3, 8, 2}, {"avx512fp16", 7, 0, 3, 23, 2},
    {"avxvnni", 7, 1, 0, 4, 1},       {"avx512bf16", 7, 1, 0, 5, 2},
    {"lzcnt", 0x80000001u, 0, 2, 5, 0}, {"sse4a", 0x80000001u, 0, 2, 6, 0},
    {"prfchw", 0x80000001u, 0, 2, 8, 0}, {"fma4", 0x80000001u, 0, 2, 16, 1},
};

std::vector<std::string> detect() {
    std::vector<std::string> out;
#if defined(__x86_64__) || defined(_M_X64)
    unsigned a, b, c, d;
    const unsigned max_leaf = __get_cpuid_max(0, nullptr);
    const unsigned max_ext = __get_cpuid_max(0x80000000u, nullptr);
    // Which register state the OS saves on a context switch (XCR0).
    std::uint64_t xcr0 = 0;
    if (__get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 27))) {  // OSXSAVE
        std::uint32_t lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        xcr0 = (static_cast<std::uint64_t>(hi) << 32) | lo;
    }
    const bool avx_state = (xcr0 & 0x6) == 0x6;
    const bool avx512_state = avx_state && (xcr0 & 0xe0) == 0xe0;
    for (const Bit& f : kBits) {
        const bool ext = f.leaf >= 0x80000000u;
        if ((ext && f.leaf > max_ext) || (!ext && f.leaf > max_leaf)) continue;
        __cpuid_count(f.leaf, f.subleaf, a, b, c, d);
        const unsigned regs[4] = {a, b, c, d};
        if (!(regs[f.reg] & (1u << f.bit))) continue;
        if ((f.state == 1 && !avx_state) || (f.state == 2 && !avx512_state)) continue;
        out.emplace_back(f.name);
    }
#endif
    return out;
}

}  // namespace

const std::vector<std::string>& known_cpu_features() {
    static const std::vector<std::string> names = [] {
        std::vector<std::string> v;
        for (const Bit& f : kBits) v.emplace_back(f.name);
        return v;
    }();
    return names;
}

const std::vector<std::string>& cpu_features() {
    static const std::vector<std::string> features = detect();
    return features;
}

std::vector<std::string> missing_cpu_features(const std::vector<std::string>& required) {
    const auto& have = cpu_features();
    std::vector<std::string> missing;
    for (const std::string& name : required)
        if (std::find(have.begin(), have.end(), name) == have.end() &&
            std::find(missing.begin(), missing.end(), name) == missing.end())
            missing.push_back(name);
    return missing;
}

}  // namespace evidex
