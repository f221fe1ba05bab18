/* Shared by the normc sources; not part of the public API. */
#ifndef NORMC_INTERNAL_H
#define NORMC_INTERNAL_H

#include "normc.h"

#include <math.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#define nf_thread() omp_get_thread_num() /* this thread's number in its team (0: the calling thread) */
#else
#define nf_thread() 0
#endif

/* Kernel sources are compiled once per ISA level with NF_ISA_SUFFIX set (see CMakeLists.txt); NF_FN
 * gives each copy's entry points a distinct name for the dispatch table. */
#ifndef NF_ISA_SUFFIX
#define NF_ISA_SUFFIX baseline
#endif
#define NF_CAT2(a, b) a##_##b
#define NF_CAT(a, b) NF_CAT2(a, b)
#define NF_FN(name) NF_CAT(name, NF_ISA_SUFFIX)

/* The kernel list: each dispatched entry point of normc.h as (name, parameters, arguments). Every ISA
 * level compiles its own copy, nf_<name>_<isa>, taking the public parameters and then the thread count;
 * the copies' declarations, the dispatch table's fields and rows (dispatch.c) and the public entry points
 * that pick a row expand from this list. Adding a kernel: its declaration in normc.h, a line here, its
 * definition NF_FN(nf_<name>) in a kernel source (docs/architecture.md lists the Python side). */
#define NF_KERNEL_LIST(X)                                                                                  \
    X(moments,                                                                                             \
      (const nf_plan *plan, nf_dtype dtype, const void *x, nf_dtype out_dtype, void *mean, void *var,        \
       double ddof, double *lo, double *hi, double *shift),                                                \
      (plan, dtype, x, out_dtype, mean, var, ddof, lo, hi, shift))                                         \
    X(apply,                                                                                               \
      (const nf_plan *plan, nf_dtype dtype, const void *x, void *y, const void *shift, const void *scale,    \
       const void *bias, nf_act act),                                                                      \
      (plan, dtype, x, y, shift, scale, bias, act))                                                        \
    X(rownorm, (const nf_plan *plan, nf_dtype dtype, const void *x, void *y, const nf_rowspec *spec),       \
      (plan, dtype, x, y, spec))                                                                           \
    X(grad_sums,                                                                                           \
      (const nf_plan *plan, nf_dtype dtype, const void *x, const void *dy, const void *shift,               \
       const void *scale, const void *bias, nf_act act, double *sum_g, double *sum_gd),                    \
      (plan, dtype, x, dy, shift, scale, bias, act, sum_g, sum_gd))                                        \
    X(grad_apply,                                                                                          \
      (const nf_plan *plan, nf_dtype dtype, const void *x, const void *dy, void *gx,                        \
       const void *const *params, nf_act act),                                                             \
      (plan, dtype, x, dy, gx, params, act))                                                               \
    X(rownorm_grad,                                                                                        \
      (nf_dtype dtype, int64_t rows, int64_t n, const void *x, const void *dy, void *gx,                    \
       const nf_rowgrad *spec),                                                                            \
      (dtype, rows, n, x, dy, gx, spec))                                                                   \
    X(seg_grad, (nf_dtype dtype, const void *x, const void *dy, void *gx, const nf_seggrad *spec),          \
      (dtype, x, dy, gx, spec))                                                                            \
    X(channels_last_norm, (nf_dtype dtype, const void *x, void *y, const nf_lastspec *spec),                \
      (dtype, x, y, spec))

/* A parameter list with the per-ISA copies' trailing thread count. */
#define NF_WITH_THREADS(...) (__VA_ARGS__, int nthreads)
#define NF_DECLARE_COPY(name, params, args) nf_status NF_CAT(nf_##name, NF_COPY_ISA) NF_WITH_THREADS params;
#define NF_COPY_ISA baseline
NF_KERNEL_LIST(NF_DECLARE_COPY)
#undef NF_COPY_ISA
#define NF_COPY_ISA avx2
NF_KERNEL_LIST(NF_DECLARE_COPY)
#undef NF_COPY_ISA
#define NF_COPY_ISA avx512
NF_KERNEL_LIST(NF_DECLARE_COPY)
#undef NF_COPY_ISA

/* A table of a template's four instantiations (each_dtype.h), indexed by nf_dtype: f_of[dt]. */
#define NF_BY_DTYPE(f) static const __typeof__(&f##_f32) f##_of[] = {f##_f32, f##_f64, f##_f16, f##_bf16}

/* One run of nr rows along the plan's innermost axis, as nf_walk hands it out: x, x2 (a second input laid
 * out like x, or NULL) and y at the run's first row; poff, the element offset of its statistics (laid out
 * as the plan's statistics); each row len elements xs / ys apart, the statistics ps apart along it (0:
 * one group per row); successive rows xr / yr apart. */
typedef struct {
    const char *x, *x2;
    char *y;
    int64_t poff, len, xs, ys, ps, nr, xr, yr;
} nf_run;
typedef void (*nf_run_fn)(const void *ctx, const nf_run *run);
void NF_FN(nf_walk)(const nf_plan *p, int64_t isz, const void *x, const void *x2, void *y, nf_run_fn op,
                    const void *ctx, int nthreads);

/* Within one ISA copy: apply.c's rows (nf_apply's row step), the fused norms' output step. */
void NF_FN(nf_apply_rows)(nf_dtype dt, const void *x, void *y, const void *const *p, int64_t ps, int64_t n,
                          int act, int64_t nr, int64_t xr, int64_t yr);

/* Bytes per element of a storage dtype (0 for an unknown code). Kernel tables are indexed by nf_dtype. */
static inline int64_t nf_itemsize(nf_dtype dt)
{
    static const int64_t size[] = {4, 8, 2, 2};
    return (unsigned)dt < sizeof size / sizeof size[0] ? size[dt] : 0;
}

/* Work smaller than this many elements runs on one thread: starting a team costs microseconds. */
#define NF_PARALLEL_MIN ((int64_t)1 << 15)

/* The load guard (dispatch.c). Each parallel loop is bracketed by nf_region_begin / nf_region_end and
 * calls nf_mark after each item: the calling thread (thread 0) records when its last item ended, its
 * longest item and its item count, and the call adds up how long it then waited for the team at the
 * loop's end. A call that waited long for a thread the OS had parked, or whose calling thread was itself
 * parked in the middle of an item (another process busy on its core), counts against the team. Results
 * do not depend on the thread count. */
extern _Thread_local int64_t nf_done0, nf_wait_ns, nf_busy_ns, nf_item_max, nf_items;
static inline int64_t nf_now(void)
{
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
static inline int64_t nf_region_begin(void) { return nf_done0 = nf_now(); }
static inline void nf_mark(void)
{
    if (nf_thread() != 0)
        return;
    const int64_t t = nf_now();
    nf_item_max = t - nf_done0 > nf_item_max ? t - nf_done0 : nf_item_max;
    nf_items++;
    nf_done0 = t;
}
static inline void nf_region_end(int64_t t0)
{
    nf_wait_ns += nf_now() - nf_done0;
    nf_busy_ns += nf_done0 - t0;
}

/* Work items go to threads as they come free, NF_GRAIN(items, nt) at a time (16 grabs per thread): a
 * thread that the OS parks for a while (another process on its core) leaves its share to the others, and
 * an item's bits do not depend on which thread computes it. */
#define NF_GRAIN(items, nt) ((items) / (16 * (int64_t)(nt)) > 1 ? (items) / (16 * (int64_t)(nt)) : 1)
/* Elements per work chunk. Chunk bounds depend only on the shape, so results do not depend on the
 * number of threads. */
#define NF_CHUNK ((int64_t)1 << 16)

#define NF_BLOCK 2048 /* elements reduced in NF_A while in L1 before the block's sums go to double */
/* A row norm's statistics are summed per chunk of this many elements (whole blocks) and the chunks merged
 * in order, so that the threads can share a long row (fewer rows than threads) with the same bits as one
 * thread. */
#define NF_ROW_CHUNK (16 * NF_BLOCK)
#define NF_ROW_BATCH 16 /* rows of one chunk taken together (rownorm_tmpl.h's rowbatch) */
#define NF_TILE_MAX 64  /* rows up to this long: statistics NF_W rows at a time (rowtile) */

/* A row norm's scale from its var: 1 / sqrt(var + eps), or for L2 (var the sum of squares) 1 / max(norm,
 * eps) with a NaN norm staying NaN (fmax would drop it). */
static inline double nf_row_scale(double var, const nf_rowspec *sp)
{
    const int l2 = sp->kind == NF_ROW_L2; /* selects, not branches: loops over rows vectorise */
    const double r = sqrt(l2 ? var : var + sp->eps);
    return 1.0 / (l2 && r < sp->eps ? sp->eps : r);
}
#define NF_KTILE 256  /* columns per column-mode work item */
_Static_assert(NF_MAX_SLOTS <= NF_KTILE, "seg_grad keeps a slot's sums in NF_KTILE-long arrays");
#define NF_RB 64      /* rows per column-mode block (moments: reread from L2 by its second pass) */

/* Float sums of squares (block_tmpl.h): under NF_TINY_SQ per element, squares below float's normal range
 * (2^-126, each then up to 2^-150 off) may have cost digits; deviations scaled by NF_TINY_UP (exactly)
 * square into the normal range, unless over 2^-36, and the sums are scaled back by NF_TINY_DOWN in double.
 * Deviations from a centre of at least NF_TINY_CENTRE are 0 or at least 2^-64 (Sterbenz), so they are
 * scaled up only about smaller centres. */
#define NF_TINY_SQ 0x1p-125f
#define NF_TINY_UP 0x1p100f
#define NF_TINY_DOWN 0x1p-100
#define NF_TINY_CENTRE 0x1p-40f

static inline int64_t nf_cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Row-mode work over R1 rows of R2 elements, per statistic: chunks of rpc whole rows (short rows) or of a
 * seg-element stretch of one row (long rows), about NF_CHUNK elements each and fixed by the shape;
 * work item w is chunk w % n_chunks of statistic w / n_chunks. */
typedef struct {
    int64_t R1, R2, seg, spr, rpc, n_chunks;
} nf_rows;
typedef struct {
    int64_t o, ra, rb, ca, cb; /* statistic, its rows [ra, rb), their elements [ca, cb) */
} nf_row_item;

static inline nf_rows nf_row_work(int64_t R1, int64_t R2)
{
    nf_rows r = {R1, R2, R2 < NF_CHUNK ? R2 : NF_CHUNK, 0, R2 < NF_CHUNK ? NF_CHUNK / R2 : 1, 0};
    r.spr = nf_cdiv(R2, r.seg);
    r.n_chunks = nf_cdiv(R1, r.rpc) * r.spr;
    return r;
}

static inline nf_row_item nf_row_at(const nf_rows *r, int64_t w)
{
    const int64_t ch = w % r->n_chunks, rc = ch / r->spr, sc = ch % r->spr;
    nf_row_item it = {w / r->n_chunks, rc * r->rpc, 0, sc * r->seg, 0};
    it.rb = it.ra + r->rpc < r->R1 ? it.ra + r->rpc : r->R1;
    it.cb = it.ca + r->seg < r->R2 ? it.ca + r->seg : r->R2;
    return it;
}

/* Column-mode work over K columns and R1 rows: tiles of ktile <= NF_KTILE columns and chunks of rpc rows
 * (whole NF_RB blocks, about NF_CHUNK elements a tile), both fixed by the shape; work item w is tile
 * w % n_tiles of chunk (w / n_tiles) % n_chunks of outer index w / (n_chunks * n_tiles). */
typedef struct {
    int64_t K, R1, ktile, n_tiles, rpc, n_chunks;
} nf_cols;
typedef struct {
    int64_t o, ch, ra, rb, k0, nk; /* outer index, chunk, its rows [ra, rb), its columns [k0, k0 + nk) */
} nf_col_item;

static inline nf_cols nf_col_work(int64_t K, int64_t R1)
{
    nf_cols c = {K, R1, K < NF_KTILE ? K : NF_KTILE, 0, 0, 0};
    c.n_tiles = nf_cdiv(K, c.ktile);
    const int64_t per = NF_CHUNK / (NF_RB * c.ktile);
    c.rpc = NF_RB * (per > 1 ? per : 1);
    c.n_chunks = nf_cdiv(R1, c.rpc);
    return c;
}

static inline nf_col_item nf_col_at(const nf_cols *c, int64_t w)
{
    nf_col_item it;
    it.o = w / (c->n_chunks * c->n_tiles);
    it.ch = (w / c->n_tiles) % c->n_chunks;
    it.ra = it.ch * c->rpc;
    it.rb = it.ra + c->rpc < c->R1 ? it.ra + c->rpc : c->R1;
    it.k0 = (w % c->n_tiles) * c->ktile;
    it.nk = c->K - it.k0 < c->ktile ? c->K - it.k0 : c->ktile;
    return it;
}

/* The centring rule of every apply pass. y = (x - mean) a + b is computed as y = (x - s) a + c, with s the
 * mean rounded to the compute type (float for float32 and the half types) and
 *     c = b + (s - mean) a,
 * because (x - mean) = (x - s) + (s - mean): x - s is exact for data near the mean (Sterbenz), where a
 * float64 mean could not be subtracted in float at all, and the rounding s - mean, exact in double, goes
 * into the offset. nf_centring gives (s - mean) a; c adds b to it (coef.c; 0 in the row kernels, which add
 * their bias after the weight). Python calls it through the binding (centrings), so every copy of the rule
 * rounds alike. */
static inline double nf_centring(double s, double mean, double a) { return (s - mean) * a; }

typedef struct {
    double n, mean, m2;
} nf_acc;

static inline double nf_clamp0(double v) { return v < 0 ? 0 : v; }

/* An activation in double, for the rare rows computed in double (the kernels' own run in NF_A). */
static inline double nf_act64(double v, nf_act act)
{
    switch (act) {
    case NF_ACT_RELU: return v < 0 ? 0 : v; /* NaN stays NaN */
    case NF_ACT_SIGMOID: return 1 / (1 + exp(-v));
    case NF_ACT_SILU: return v == -INFINITY ? -0.0 : v / (1 + exp(-v)); /* its limit, not -inf / inf */
    default: return v;
    }
}

/* Chan's fold of a block (nb elements, mean bm, M2 bq) into a column's (mean, m2) of na elements, with
 * wb = nb / (na + nb) and wab = na nb / (na + nb): na == 0 takes the block as it is. Where the means'
 * difference is not finite the mean is their weighted sum, which overflows neither: infinities then add
 * up as in a plain sum (+inf with -inf is NaN), and finite means too far apart to subtract average right.
 * Branch-free, so that a loop over columns vectorises. */
static inline void nf_chan_col(double *mean, double *m2, double na, double wb, double wab, double bm, double bq)
{
    const double d = bm - *mean;
    *mean = na == 0 ? bm : isfinite(d) ? *mean + d * wb : *mean * (1 - wb) + bm * wb;
    *m2 = na == 0 ? bq : *m2 + bq + d * d * wab;
}

/* Chan et al.: fold a block (nb, mb, m2b) into a. */
static inline void nf_chan(nf_acc *a, double nb, double mb, double m2b)
{
    const double n = a->n + nb;
    nf_chan_col(&a->mean, &a->m2, a->n, nb / n, a->n / n * nb, mb, m2b);
    a->n = n;
}

/* Walks the flat index of an nf_dims forward, keeping the element offsets in input and output. */
typedef struct {
    int64_t idx[NF_MAXDIM];
    int64_t off, ooff, yoff;
} nf_iter;

static inline void nf_iter_init(nf_iter *it, const nf_dims *d, int64_t flat)
{
    it->off = it->ooff = it->yoff = 0;
    for (int i = d->ndim - 1; i >= 0; i--) {
        int64_t q = flat / d->shape[i];
        it->idx[i] = flat - q * d->shape[i];
        it->off += it->idx[i] * d->stride[i];
        it->ooff += it->idx[i] * d->ostride[i];
        it->yoff += it->idx[i] * d->ystride[i];
        flat = q;
    }
}

/* Steps forward; returns 0 when the walk wraps around to the start. */
static inline int nf_iter_next(nf_iter *it, const nf_dims *d)
{
    for (int i = d->ndim - 1; i >= 0; i--) {
        it->off += d->stride[i];
        it->ooff += d->ostride[i];
        it->yoff += d->ystride[i];
        if (++it->idx[i] < d->shape[i])
            return 1;
        it->off -= d->shape[i] * d->stride[i];
        it->ooff -= d->shape[i] * d->ostride[i];
        it->yoff -= d->shape[i] * d->ystride[i];
        it->idx[i] = 0;
    }
    return 0;
}

/* The offsets of the next nr rows of a walk into off[] (a column-mode block), leaving the walk nr steps
 * on. Each run along the innermost axis is filled in one loop (it vectorises); stepping the walk row by
 * row took a tenth of the column-moments time. */
static inline void nf_next_offsets(nf_iter *it, const nf_dims *d, int64_t nr, int64_t *off)
{
    const int l = d->ndim - 1;
    for (int64_t r = 0; r < nr;) {
        int64_t run = l >= 0 ? d->shape[l] - it->idx[l] : 1; /* rows to the end of the innermost axis */
        run = run < nr - r ? run : nr - r;
        const int64_t base = it->off, st = l >= 0 ? d->stride[l] : 0;
        for (int64_t j = 0; j < run; j++)
            off[r + j] = base + j * st;
        r += run;
        if (l >= 0) { /* run - 1 steps within the axis, then one that may carry */
            it->off += (run - 1) * st;
            it->ooff += (run - 1) * d->ostride[l];
            it->yoff += (run - 1) * d->ystride[l];
            it->idx[l] += run - 1;
        }
        nf_iter_next(it, d);
    }
}

/* Output offset (elements) of statistic i = o * K + k. */
static inline int64_t nf_out_at(const nf_plan *p, int64_t i)
{
    nf_iter it;
    nf_iter_init(&it, &p->o, i / p->k);
    return p->out_offset + it.ooff + (i % p->k) * p->k_ostride;
}

/* float16 and bfloat16 bits -> float, branch-free so loops over them vectorise. */
static inline float nf_bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float nf_bf16_to_f32(uint16_t h) { return nf_bits_to_f32((uint32_t)h << 16); }

static inline float nf_f16_to_f32(uint16_t h)
{
    uint32_t em = (uint32_t)(h & 0x7fffu) << 13;
    /* Exponent and mantissa land in float position; scaling by 2^112 rebiases normals and turns half
     * subnormals into float normals exactly. Inf and NaN keep their mantissa under an all-ones exponent. */
    float mag = nf_bits_to_f32(em) * 0x1p112f;
    uint32_t bits;
    memcpy(&bits, &mag, sizeof bits);
    bits = em >= (0x7c00u << 13) ? (em | 0x7f800000u) : bits;
    return nf_bits_to_f32(bits | ((uint32_t)(h & 0x8000u) << 16));
}

/* float -> float16 / bfloat16 bits, rounding to nearest even, branch-free. */
static inline uint32_t nf_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline uint16_t nf_f32_to_bf16(float f)
{
    uint32_t u = nf_f32_bits(f);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? ((u >> 16) | 0x40u) : r); /* NaN stays quiet */
}

static inline uint16_t nf_f32_to_f16(float f)
{
    uint32_t u = nf_f32_bits(f), sign = (u >> 16) & 0x8000u;
    u &= 0x7fffffffu;
    /* |f| >= 65536 or Inf; NaN quiet with its payload's top bits, as F16C's conversion keeps them */
    uint32_t big = u > 0x7f800000u ? ((u >> 13) & 0x7fffu) | 0x200u : 0x7c00u;
    /* |f| < 2^-14: adding 0.5 lines the float's last place up with half's 2^-24, so the FPU rounds */
    uint32_t sub = nf_f32_bits(nf_bits_to_f32(u) + 0.5f) - 0x3f000000u;
    /* normal: rebias the exponent (-112 << 23) and round half to even on the 13 dropped bits */
    uint32_t norm = (u + 0xc8000fffu + ((u >> 13) & 1u)) >> 13;
    uint32_t h = u >= 0x47800000u ? big : u < 0x38800000u ? sub : norm;
    return (uint16_t)(h | sign);
}

#endif
