// The built-in kernels of the kernel ABI, and the loader of kernel libraries.
#include "evidex/kernels.h"

#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "evidex/cpu_features.h"

#include "evidex/beam.h"
#include "evidex/prune.h"

namespace evidex {
namespace {

inline const char* node_of(const evx_graph_view* g, std::uint32_t id) {
    return g->nodes + static_cast<std::size_t>(id) * g->node_bytes;
}
inline const float* vector_of(const evx_graph_view* g, std::uint32_t id) {
    return reinterpret_cast<const float*>(node_of(g, id) + g->vector_offset);
}
inline float distance_of(const evx_graph_view* g, const float* a, const float* b) {
    return evx_distance(g, a, b);
}

struct ViewVisited {
    evx_visited* v;
    void mark(std::uint32_t id) { v->tags[id] = v->epoch; }
    bool try_visit(std::uint32_t id) {
        if (v->tags[id] == v->epoch) return false;
        v->tags[id] = v->epoch;
        return true;
    }
};

extern "C" std::int64_t builtin_search(const evx_graph_view* g, const float* q,
                                       std::uint32_t entry, std::size_t ef, evx_visited* visited,
                                       std::uint32_t* out_ids, float* out_dists,
                                       std::uint64_t* dist_count) {
    thread_local BeamPool beam;
    thread_local std::vector<std::uint32_t> todo;
    todo.resize(g->max_links);
    ViewVisited vis{visited};
    const std::size_t pb = g->prefetch_bytes;
    const std::uint64_t computed = beam_search(
        [g](std::uint32_t id) { return reinterpret_cast<const std::uint32_t*>(node_of(g, id)); },
        [g, q](std::uint32_t id) { return distance_of(g, q, vector_of(g, id)); },
        [g, pb](std::uint32_t id) { prefetch_vector(node_of(g, id) + g->vector_offset, pb); },
        g->prefetch_ahead, (g->max_links + 1) * sizeof(std::uint32_t), entry, ef, vis, beam,
        todo.data(), &search_expansions());
    *dist_count += computed;
    const std::size_t n = beam.size();
    for (std::size_t i = 0; i < n; ++i) {
        out_ids[i] = beam.id(i);
        out_dists[i] = beam.dist(i);
    }
    return static_cast<std::int64_t>(n);
}

// hnswlib's heuristic (prune.h with alpha = 1).
extern "C" std::int64_t builtin_select(const evx_graph_view* g, std::uint32_t, std::uint32_t,
                                       const std::uint32_t* ids, const float* dists,
                                       std::size_t n, std::size_t m, std::uint32_t* out_ids,
                                       float* out_dists) {
    return static_cast<std::int64_t>(prune_neighbors(
        g, ids, dists, n, m, 1.0f,
        [g](const float* a, const float* b) { return distance_of(g, a, b); }, out_ids, out_dists,
        nullptr));
}

// The beam already holds exact float32 distances, sorted: the first k.
extern "C" std::int64_t builtin_refine(const evx_graph_view*, const float*,
                                       const std::uint32_t* ids, const float* dists,
                                       std::size_t n, std::size_t k, evx_visited*,
                                       std::uint32_t* out_ids, float* out_dists, std::uint64_t*) {
    const std::size_t m = std::min(n, k);
    std::copy(ids, ids + m, out_ids);
    std::copy(dists, dists + m, out_dists);
    return static_cast<std::int64_t>(m);
}

// The contents of section `name` of an ELF64 little-endian shared object, read
// with plain reads (no code of the file runs); `found` is false when absent.
std::string elf_section(const std::string& path, const char* name, bool& found) {
    found = false;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error("cannot open kernel library '" + path + "'");
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{fd};
    auto read_at = [&](std::uint64_t off, void* dst, std::size_t len) {
        char* p = static_cast<char*>(dst);
        while (len > 0) {
            const ssize_t got = ::pread(fd, p, len, static_cast<off_t>(off));
            if (got <= 0)
                throw std::runtime_error("kernel library '" + path + "' is not a valid ELF file");
            p += got;
            off += static_cast<std::uint64_t>(got);
            len -= static_cast<std::size_t>(got);
        }
    };
    Elf64_Ehdr eh;
    read_at(0, &eh, sizeof(eh));
    if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_ident[EI_CLASS] != ELFCLASS64 ||
        eh.e_ident[EI_DATA] != ELFDATA2LSB || eh.e_shentsize != sizeof(Elf64_Shdr) ||
        eh.e_shnum == 0 || eh.e_shnum > 4096 || eh.e_shstrndx >= eh.e_shnum)
        throw std::runtime_error("kernel library '" + path + "' is not an ELF64 shared object");
    std::vector<Elf64_Shdr> sections(eh.e_shnum);
    read_at(eh.e_shoff, sections.data(), sections.size() * sizeof(Elf64_Shdr));
    const Elf64_Shdr& strtab = sections[eh.e_shstrndx];
    if (strtab.sh_size > (1u << 20))
        throw std::runtime_error("kernel library '" + path + "' has an oversized section table");
    std::string names(strtab.sh_size, '\0');
    read_at(strtab.sh_offset, names.data(), names.size());
    for (const Elf64_Shdr& sh : sections) {
        if (sh.sh_name >= names.size() || std::strcmp(names.c_str() + sh.sh_name, name) != 0)
            continue;
        if (sh.sh_size > (1u << 16))
            throw std::runtime_error("kernel library '" + path + "' has an oversized " + name);
        std::string data(sh.sh_size, '\0');
        read_at(sh.sh_offset, data.data(), data.size());
        found = true;
        return data;
    }
    return {};
}

// The CPU features a library declares (EVIDEX_KERNEL_CPU_FEATURES in kernel_abi.h):
// names separated by spaces, commas or NULs (several declarations add up).
std::vector<std::string> declared_cpu_features(const std::string& path) {
    bool found = false;
    const std::string text = elf_section(path, ".evidex_cpu", found);
    if (!found)
        throw std::runtime_error(
            "kernel library '" + path +
            "' declares no CPU features (no .evidex_cpu section): build it with "
            "evidex.crinn.build_kernel, or declare them with EVIDEX_KERNEL_CPU_FEATURES "
            "(kernel_abi.h)");
    std::vector<std::string> out;
    std::string cur;
    for (const char c : text + '\0') {
        if (c == '\0' || c == ' ' || c == ',' || c == '\n' || c == '\t') {
            if (!cur.empty()) out.push_back(cur);
            cur.clear();
        } else {
            cur += c;
        }
    }
    return out;
}

std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
}

}  // namespace

std::uint64_t& search_expansions() {
    thread_local std::uint64_t count = 0;
    return count;
}

std::vector<std::string> kernel_library_cpu_features(const std::string& path) {
    return declared_cpu_features(path);
}

const KernelSet& builtin_kernels() {
    static const KernelSet set = [] {
        KernelSet s;
        s.search = builtin_search;
        s.select = builtin_select;
        s.refine = builtin_refine;
        return s;
    }();
    return set;
}

std::shared_ptr<KernelSet> load_kernel_library(const std::string& path,
                                                     const KernelSet& base) {
    // Checked before dlopen runs any of its code (constructors included).
    const std::vector<std::string> needed = declared_cpu_features(path);
    const std::vector<std::string> missing = missing_cpu_features(needed);
    if (!missing.empty())
        throw std::runtime_error("kernel library '" + path +
                                 "' needs CPU features this machine lacks: " + join(missing) +
                                 " (it was built for: " + join(needed) +
                                 "); rebuild it on this machine");
    // RTLD_LOCAL: a candidate's symbols never interpose on ours or on another's.
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        const char* why = dlerror();
        throw std::runtime_error("cannot load kernel library '" + path +
                                 "': " + (why ? why : "unknown error"));
    }
    std::shared_ptr<void> library(handle, [](void* h) { dlclose(h); });
    using VersionFn = std::uint32_t (*)();
    auto version = reinterpret_cast<VersionFn>(dlsym(handle, "evidex_kernel_abi_version"));
    if (!version)
        throw std::runtime_error("kernel library '" + path +
                                 "' does not export evidex_kernel_abi_version");
    if (version() != EVIDEX_KERNEL_ABI_VERSION)
        throw std::runtime_error("kernel library '" + path + "' has kernel ABI version " +
                                 std::to_string(version()) + ", this evidex needs " +
                                 std::to_string(EVIDEX_KERNEL_ABI_VERSION));
    auto set = std::make_shared<KernelSet>(base);
    bool any = false;
    if (auto f = reinterpret_cast<evx_search_fn>(dlsym(handle, "evidex_search"))) {
        set->search = f;
        set->search_source = path;
        any = true;
    }
    if (auto f = reinterpret_cast<evx_search_filtered_fn>(
            dlsym(handle, "evidex_search_filtered"))) {
        set->search_filtered = f;
        set->search_filtered_source = path;
        any = true;
    }
    if (auto f = reinterpret_cast<evx_select_fn>(dlsym(handle, "evidex_select_neighbors"))) {
        set->select = f;
        set->select_source = path;
        any = true;
    }
    if (auto f = reinterpret_cast<evx_refine_fn>(dlsym(handle, "evidex_refine"))) {
        set->refine = f;
        set->refine_source = path;
        any = true;
    }
    if (!any)
        throw std::runtime_error("kernel library '" + path +
                                 "' exports none of evidex_search, evidex_search_filtered, "
                                 "evidex_select_neighbors, evidex_refine");
    // Libraries stacked on a base keep the base's libraries loaded too.
    set->library = std::shared_ptr<void>(
        new std::pair<std::shared_ptr<void>, std::shared_ptr<void>>(library, base.library),
        [](void* p) { delete static_cast<std::pair<std::shared_ptr<void>, std::shared_ptr<void>>*>(p); });
    return set;
}

}  // namespace evidex
