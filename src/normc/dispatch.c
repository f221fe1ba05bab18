/* CPU feature detection, the per-ISA kernel table, and the thread count. */
#include "internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(_OPENMP) && (defined(__unix__) || defined(__APPLE__))
#include <pthread.h>
#define NF_FORK_GUARD 1
#endif

/* The kernel table: one row of kernel copies per ISA level (internal.h's list), a level not compiled into
 * this build left NULL. */
typedef struct {
#define NF_FIELD(name, params, args) nf_status(*name) NF_WITH_THREADS params;
    NF_KERNEL_LIST(NF_FIELD)
#undef NF_FIELD
} nf_kernels;

#define NF_ENTRY(name, params, args) NF_CAT(nf_##name, NF_ROW_ISA),
static const nf_kernels nf_table[NF_ISA_COUNT] = {
#define NF_ROW_ISA baseline
    {NF_KERNEL_LIST(NF_ENTRY)},
#undef NF_ROW_ISA
#ifdef NF_HAVE_AVX2
#define NF_ROW_ISA avx2
    {NF_KERNEL_LIST(NF_ENTRY)},
#undef NF_ROW_ISA
#else
    {0},
#endif
#ifdef NF_HAVE_AVX512
#define NF_ROW_ISA avx512
    {NF_KERNEL_LIST(NF_ENTRY)},
#undef NF_ROW_ISA
#else
    {0},
#endif
};
#undef NF_ENTRY

static const char *const nf_isa_names[NF_ISA_COUNT] = {"baseline", "avx2", "avx512"};

static int nf_isa_current = -1; /* chosen on first use unless set */
static int nf_threads = 0;      /* set_num_threads's count; 0: none set */
static int nf_omp_initial = 0;  /* OpenMP's thread count at load, before anyone lowered it */

const char *nf_isa_name(nf_isa isa) { return (unsigned)isa < NF_ISA_COUNT ? nf_isa_names[isa] : "?"; }

int nf_isa_compiled(nf_isa isa) { return (unsigned)isa < NF_ISA_COUNT && nf_table[isa].moments != NULL; }

int nf_isa_supported(nf_isa isa)
{
    switch (isa) {
    case NF_ISA_BASELINE:
        return 1;
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    /* libgcc also checks that the OS saves the wide registers (XGETBV). */
    case NF_ISA_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case NF_ISA_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
    default:
        return 0;
    }
}

nf_isa nf_set_isa(nf_isa cap)
{
    int best = NF_ISA_BASELINE;
    for (int i = NF_ISA_BASELINE; i < NF_ISA_COUNT && i <= (int)cap; i++)
        if (nf_isa_compiled((nf_isa)i) && nf_isa_supported((nf_isa)i))
            best = i;
    nf_isa_current = best;
    return (nf_isa)best;
}

nf_isa nf_get_isa(void)
{
    if (nf_isa_current < 0)
        nf_set_isa(NF_ISA_COUNT);
    return (nf_isa)nf_isa_current;
}

#ifdef _OPENMP
/* OpenMP's count in this thread right after set_num_threads last set it here (0: never here). */
static _Thread_local int nf_omp_at_set = 0;
#endif

/* The cap of nf_cap_threads_here in this thread (0: none). */
static _Thread_local int nf_cap_here = 0;

void nf_cap_threads_here(int n) { nf_cap_here = n > 0 ? n : 0; }

/* The count is kept for every thread; in the calling thread it is also handed to OpenMP, so that a limit
 * set there afterwards (threadpool_limits) shows as a count below it, whatever OpenMP's count at load. */
void nf_set_num_threads(int n)
{
    nf_threads = n > 0 ? n : 1;
#ifdef _OPENMP
    omp_set_num_threads(nf_threads);
    nf_omp_at_set = nf_threads;
#endif
}

#ifdef NF_FORK_GUARD
/* A child made by fork() inherits OpenMP's record of the parent's worker threads but not the threads:
 * GNU OpenMP waits for them forever at the child's first parallel region. Such a child runs serially
 * (PyTorch does the same). */
static volatile int nf_forked_child = 0;
static void nf_mark_forked_child(void) { nf_forked_child = 1; }
__attribute__((constructor)) static void nf_register_fork_guard(void)
{
    pthread_atfork(NULL, NULL, nf_mark_forked_child);
}
#endif

/* OpenMP's count (OMP_NUM_THREADS, omp_set_num_threads, threadpoolctl's limits) unless set_num_threads
 * chose one. A limit set through OpenMP afterwards (threadpool_limits(1) calls omp_set_num_threads in
 * its thread) caps that choice too: it shows as OpenMP's count below the one set_num_threads left in
 * this thread or, in a thread that never called it, below OpenMP's count at load. */
static int nf_uncapped_threads(void)
{
#ifdef NF_FORK_GUARD
    if (nf_forked_child)
        return 1;
#endif
#ifdef _OPENMP
    int omp = omp_get_max_threads();
    if (nf_omp_initial == 0)
        nf_omp_initial = omp;
    if (nf_threads <= 0)
        return omp;
    const int ref = nf_omp_at_set > 0 ? nf_omp_at_set : nf_omp_initial;
    return omp < ref && omp < nf_threads ? omp : nf_threads;
#else
    return nf_threads > 0 ? nf_threads : 1;
#endif
}

int nf_get_num_threads(void)
{
    const int n = nf_uncapped_threads();
    return nf_cap_here > 0 && nf_cap_here < n ? nf_cap_here : n;
}

int nf_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* The load guard (internal.h): the calling thread's record of the current call. */
_Thread_local int64_t nf_done0, nf_wait_ns, nf_busy_ns, nf_item_max, nf_items;
/* Until when calls run on one thread (nf_now's clock): a recent call waited for a parked thread. */
static _Atomic int64_t nf_solo_until = 0;
static _Atomic int nf_stalls = 0; /* calls in a row that waited for a parked thread */
#define NF_SOLO_NS 100000000 /* 0.1 s, then a team again: one slow call per period while the load lasts */

/* The team for the next call: the thread count, or 1 while the guard holds. */
static int nf_team_size(void)
{
    const int n = nf_get_num_threads();
    if (n > 1 && nf_solo_until && nf_now() < nf_solo_until) /* no clock read unless the guard was set */
        return 1;
    nf_wait_ns = nf_busy_ns = nf_item_max = nf_items = 0;
    return n;
}

/* After a call on nt threads: a thread was parked for a time slice (milliseconds) if the calling thread
 * waited at the loops' ends more than a quarter of its own work and more than 0.2 ms (a team on free CPUs
 * waits about one item, and a thread woken from sleep starts within tens of microseconds), or if one of
 * its items took over 0.5 ms and 4x its average (items are cut to equal work). */
static void nf_team_check(int nt)
{
    if (nt <= 1)
        return;
    const int waited = nf_wait_ns > 200000 && nf_wait_ns > nf_busy_ns / 4;
    const int parked = nf_items > 1 && nf_item_max > 500000 && nf_item_max * nf_items > 4 * nf_busy_ns;
    if (!waited && !parked) {
        nf_stalls = 0;
        return;
    }
    /* Two in a row: one alone is as likely another runtime's threads still spinning after its call (PyTorch,
     * ONNX Runtime), which passes within milliseconds. */
    if (++nf_stalls >= 2) {
        nf_stalls = 0;
        nf_solo_until = nf_now() + NF_SOLO_NS;
    }
}

/* The public entry points: the copy of the ISA level in use, on the guard's team. */
#define NF_WITH_TEAM(...) (__VA_ARGS__, nt)
#define NF_PUBLIC(name, params, args)                                                                      \
    nf_status nf_##name params                                                                             \
    {                                                                                                      \
        const int nt = nf_team_size();                                                                     \
        const nf_status s = nf_table[nf_get_isa()].name NF_WITH_TEAM args;                                 \
        nf_team_check(nt);                                                                                 \
        return s;                                                                                          \
    }
NF_KERNEL_LIST(NF_PUBLIC)
