"""Hostile candidate kernels for the CRINN sandbox tests: each exports the kernel
ABI and misbehaves inside evidex_search (or fails to compile)."""

PRELUDE = """
#include <evidex/kernel_abi.h>
#include <cstdlib>
#include <cstring>
#include <unistd.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <thread>
#include <vector>
extern "C" __attribute__((visibility("default"))) uint32_t evidex_kernel_abi_version(void) {
    return EVIDEX_KERNEL_ABI_VERSION;
}
extern "C" __attribute__((visibility("default"))) int64_t evidex_search(
    const evx_graph_view* g, const float* q, uint32_t entry, size_t ef, evx_visited* v,
    uint32_t* ids, float* dists, uint64_t* count) {
"""

BODIES = {
    "crash": "volatile int* p = nullptr; *p = 1; return 0;",
    "hang": "for (volatile unsigned long i = 0;; ++i) {} return 0;",
    "memory": """std::vector<char*> keep; for (;;) { char* p = (char*)malloc(1 << 26);
                 if (!p) abort(); memset(p, 1, 1 << 26); keep.push_back(p); } return 0;""",
    "fork_bomb": "for (;;) fork(); return 0;",
    "file_write": """int fd = open("{target}", O_WRONLY | O_CREAT | O_TRUNC, 0644);
                     if (fd >= 0) {{ write(fd, "pwned", 5); close(fd); }}
                     ids[0] = entry; dists[0] = 0; return 1;""",
    "network": """int s = socket(AF_INET, SOCK_STREAM, 0);
                  sockaddr_in a{{}}; a.sin_family = AF_INET; a.sin_port = htons({port});
                  a.sin_addr.s_addr = htonl(0x7f000001);
                  if (s >= 0) {{ connect(s, (sockaddr*)&a, sizeof a); send(s, "x", 1, 0); }}
                  ids[0] = entry; dists[0] = 0; return 1;""",
    "wrong_answer": """for (size_t i = 0; i < ef && i < g->num_nodes; ++i) {
                       ids[i] = (uint32_t)((i * 7919u + 13u) % g->num_nodes);
                       dists[i] = (float)i; }
                       return (int64_t)(ef < g->num_nodes ? ef : g->num_nodes);""",
    "out_of_range": "ids[0] = (uint32_t)g->num_nodes + 5; dists[0] = 0; return 1;",
    "compile_error": "this is not C++;",
    # Not hostile: a thread is allowed (only its answer is wrong: one result).
    "thread": "std::thread t([&] { ids[0] = entry; dists[0] = 0; }); t.join(); return 1;",
}


def source(kind: str, **fmt: object) -> str:
    body = BODIES[kind]
    if fmt:
        body = body.format(**fmt)
    return PRELUDE + body + "\n}\n"
