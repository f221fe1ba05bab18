/* Welford/Chan moments over the canonical [O, R1, K, R2] view, for every reduction-axis pattern (with,
 * on request, the min and max of each work item while it is still in cache), and the fused row norms
 * (layer / RMS) that reuse its block kernels. Compiled once per ISA level (NF_FN
 * names each copy).
 *
 * Determinism: the reduction of each statistic is cut into chunks whose bounds depend only on the shape;
 * chunk partials are merged in chunk order. Threads only decide who computes which chunk, so results are
 * bit-identical for any thread count. */
#include "internal.h"
#include "simd.h"

#include <math.h>
#include <stdlib.h>

#define NF_DIRECT_MIN 256 /* shorter or strided rows are gathered into full blocks */
#define NF_SHORT_ROW 16   /* contiguous rows up to this long run in column mode when they can */

#define NF_TEMPLATE "moments_tmpl.h"
#define NF_TEMPLATE2 "rownorm_tmpl.h"
#include "each_dtype.h"

typedef void (*nf_rows_fn)(const nf_plan *, const void *, double, int64_t, int64_t, int64_t, int64_t,
                           nf_acc *);
typedef void (*nf_cols_fn)(const nf_plan *, const void *, int64_t, int64_t, int64_t, int64_t, int64_t, double *,
                           double *, double *, double *);
typedef double (*nf_shift_fn)(const void *);
typedef void (*nf_range_rows_fn)(const nf_plan *, const void *, int64_t, int64_t, int64_t, int64_t, int, double *,
                                 double *);
typedef void (*nf_range_cols_fn)(const nf_plan *, const void *, int64_t, int64_t, int64_t, const double *,
                                 const double *, double *, double *);

static double nf_min_nan(double acc, double v) { return v < acc || v != v ? v : acc; }
static double nf_max_nan(double acc, double v) { return v > acc || v != v ? v : acc; }

/* Each statistic's min and max from its `per` (min, max) partials, stored at its output position. */
static void nf_finish_range(const nf_plan *p, const double *rpart, int64_t per, double *lo, double *hi)
{
    for (int64_t i = 0; i < p->o.size * p->k; i++) {
        double l = INFINITY, h = -INFINITY;
        for (int64_t c = i * per; c < (i + 1) * per; c++) {
            l = nf_min_nan(l, rpart[2 * c]);
            h = nf_max_nan(h, rpart[2 * c + 1]);
        }
        const int64_t at = nf_out_at(p, i);
        lo[at] = l, hi[at] = h;
    }
}

/* The shift of statistic i = o * K + k (block_tmpl.h): its first element, x at (o, r1 = 0, k, r2 = 0). */
static double nf_shift_at(const nf_plan *p, nf_shift_fn shift, const char *xb, int64_t isz, int64_t i)
{
    nf_iter it;
    nf_iter_init(&it, &p->o, i / p->k);
    return shift(xb + (it.off + (i % p->k) * p->k_stride) * isz);
}

/* Where a statistic goes: mean and var (odt) at an element offset, and where shift is not NULL (float64,
 * laid out as mean) the statistic's shift K, the mean then being that of x - K (for exact merges). */
typedef struct {
    nf_dtype odt;
    void *mean, *var;
    double *shift, ddof;
} nf_out;

/* numpy's conventions: empty -> NaN, divisor max(n - ddof, 0). a's mean is that of x - K. */
static inline void nf_store(const nf_out *o, int64_t at, const nf_acc *a, double K)
{
    double mu = NAN, v = NAN;
    if (a->n > 0) {
        double dof = a->n - o->ddof;
        mu = o->shift ? a->mean : K + a->mean;
        v = a->m2 / (dof > 0 ? dof : 0);
    }
    if (o->shift)
        o->shift[at] = K;
    if (o->odt == NF_F64) {
        ((double *)o->mean)[at] = mu;
        ((double *)o->var)[at] = v;
    } else {
        ((float *)o->mean)[at] = (float)mu;
        ((float *)o->var)[at] = (float)v;
    }
}

/* Merge each statistic's partials (`group` sub-statistics x `n_chunks` chunks, in that fixed order, all
 * in the statistic's shifted frame) and store it. */
static void nf_finish(const nf_plan *p, nf_shift_fn shift, const char *xb, int64_t isz, const nf_out *out,
                      const nf_acc *part, int64_t group, int64_t n_chunks, int nt)
{
    const int64_t n_out = p->o.size * p->k, per = group * n_chunks;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && n_out * per >= 4096)
    for (int64_t i = 0; i < n_out; i++) {
        nf_acc a = {0, 0, 0};
        for (int64_t c = 0; c < per; c++) {
            const nf_acc *b = &part[i * per + c];
            nf_chan(&a, b->n, b->mean, b->m2);
        }
        nf_store(out, nf_out_at(p, i), &a, nf_shift_at(p, shift, xb, isz, i));
    }
}

nf_status NF_FN(nf_moments)(const nf_plan *p, nf_dtype dt, const void *x, nf_dtype odt, void *mean,
                            void *var, double ddof, double *lo, double *hi, double *shifts, int nthreads)
{
    static const nf_rows_fn rows_of[] = {rows_f32, rows_f64, rows_f16, rows_bf16}; /* by nf_dtype */
    static const nf_cols_fn cols_of[] = {cols_f32, cols_f64, cols_f16, cols_bf16};
    static const nf_shift_fn shift_of[] = {shift_f32, shift_f64, shift_f16, shift_bf16};
    static const nf_range_rows_fn range_rows_of[] = {range_rows_f32, range_rows_f64, range_rows_f16,
                                                     range_rows_bf16};
    static const nf_range_cols_fn range_cols_of[] = {range_cols_f32, range_cols_f64, range_cols_f16,
                                                     range_cols_bf16};
    const int64_t isz = nf_itemsize(dt);
    if (!isz || (odt != NF_F32 && odt != NF_F64))
        return NF_EINVAL;
    const nf_rows_fn rows = rows_of[dt];
    const nf_cols_fn cols = cols_of[dt];
    const nf_shift_fn shift = shift_of[dt];
    const nf_out out = {odt, mean, var, shifts, ddof};
    const int64_t n_out = p->o.size * p->k;
    if (n_out == 0)
        return NF_OK;
    if (p->count == 0) {
        const nf_acc empty = {0, 0, 0};
        for (int64_t i = 0; i < n_out; i++) {
            nf_store(&out, nf_out_at(p, i), &empty, 0);
            if (lo)
                lo[nf_out_at(p, i)] = hi[nf_out_at(p, i)] = NAN;
        }
        return NF_OK;
    }
    const char *xb = (const char *)x + p->x_offset * isz;
    const int nt = (int64_t)n_out * p->count >= NF_PARALLEL_MIN ? nthreads : 1;
    const int64_t R1 = p->r1.size;
    int64_t n_chunks, items, group = 1;
    nf_acc *part = NULL;
    double *rpart = NULL; /* (min, max) per statistic and chunk, laid out as part, when asked for */
    const int short_rows = p->k == 1 && p->r2 > 1 && p->r2 <= NF_SHORT_ROW && p->r2_stride == 1 &&
                           p->o.ndim > 0 && p->o.stride[p->o.ndim - 1] == p->r2;

    if (p->k == 1 && !short_rows) {
        /* Row mode: chunk = (rows of R1) x (a stretch of R2). */
        const nf_rows rw = nf_row_work(R1, p->r2);
        n_chunks = rw.n_chunks;
        items = n_out * n_chunks;
        if ((n_chunks > 1 && !(part = malloc((size_t)items * sizeof *part))) ||
            (lo && !(rpart = malloc((size_t)items * 2 * sizeof *rpart)))) {
            free(part);
            return NF_ENOMEM;
        }
        const nf_range_rows_fn range_rows = range_rows_of[dt];
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && items > 1)
        for (int64_t w = 0; w < items; w++) {
            const nf_row_item it = nf_row_at(&rw, w);
            nf_iter oi;
            nf_iter_init(&oi, &p->o, it.o);
            nf_acc a = {0, 0, 0};
            const double K = shift(xb + oi.off * isz);
            rows(p, xb + oi.off * isz, K, it.ra, it.rb, it.ca, it.cb, &a);
            if (rpart) /* the same elements again, now in cache */
                range_rows(p, xb + oi.off * isz, it.ra, it.rb, it.ca, it.cb, isfinite(a.mean) && isfinite(a.m2),
                           &rpart[2 * w], &rpart[2 * w + 1]);
            if (part)
                part[w] = a;
            else
                nf_store(&out, p->out_offset + oi.ooff, &a, K);
        }
    } else {
        /* Column mode: chunk = (rows of R1) x (a tile of at most NF_KTILE columns of K). Short
         * contiguous rows whose statistics sit side by side (group norm channels-last: R2 = C/G) run
         * here too, as K' = (innermost O axis) * R2 columns; each statistic is then the merge of R2
         * adjacent columns. */
        nf_plan q = *p;
        const int64_t last = p->o.ndim - 1;
        if (p->k == 1)
            q.o.ndim--, q.o.size /= p->o.shape[last], q.k = p->o.shape[last] * p->r2, q.k_stride = 1, q.r2 = 1;
        group = p->k == 1 ? p->r2 : 1;
        const nf_cols cw = nf_col_work(q.k, R1);
        n_chunks = cw.n_chunks;
        items = q.o.size * n_chunks * cw.n_tiles;
        const int64_t n_part = n_out * group * n_chunks;
        if (((n_chunks > 1 || group > 1) && !(part = malloc((size_t)n_part * sizeof *part))) ||
            (lo && !(rpart = malloc((size_t)n_part * 2 * sizeof *rpart)))) {
            free(part);
            return NF_ENOMEM;
        }
        const nf_range_cols_fn range_cols = range_cols_of[dt];
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && items > 1)
        for (int64_t w = 0; w < items; w++) {
            const nf_col_item it = nf_col_at(&cw, w);
            double n = 0, mu[NF_KTILE], m2[NF_KTILE], K[NF_KTILE];
            nf_iter oi;
            nf_iter_init(&oi, &q.o, it.o);
            cols(&q, xb + (oi.off + it.k0 * q.k_stride) * isz, group, it.k0 % group, it.ra, it.rb, it.nk, K, &n, mu,
                 m2);
            if (rpart) { /* the same block again, now in cache */
                double l[NF_KTILE], h[NF_KTILE];
                range_cols(&q, xb + (oi.off + it.k0 * q.k_stride) * isz, it.ra, it.rb, it.nk, mu, m2, l, h);
                for (int64_t k = 0; k < it.nk; k++) {
                    const int64_t c = (it.o * q.k + it.k0 + k) * n_chunks + it.ch;
                    rpart[2 * c] = l[k], rpart[2 * c + 1] = h[k];
                }
            }
            for (int64_t k = 0; k < it.nk; k++) {
                const nf_acc a = {n, mu[k], m2[k]};
                const int64_t i = it.o * q.k + it.k0 + k;
                if (part)
                    part[i * n_chunks + it.ch] = a;
                else
                    nf_store(&out, q.out_offset + oi.ooff + (it.k0 + k) * q.k_ostride, &a, K[k]);
            }
        }
    }
    if (part) {
        nf_finish(p, shift, xb, isz, &out, part, group, n_chunks, nt);
        free(part);
    }
    if (rpart) {
        nf_finish_range(p, rpart, group * n_chunks, lo, hi);
        free(rpart);
    }
    return NF_OK;
}

typedef void (*nf_rownorm_fn)(const void *, void *, int64_t, const nf_rowspec *, int64_t);

/* Rows [r0, r1) of the plan, in order. */
static void nf_rownorm_range(nf_rownorm_fn row, const nf_plan *p, const char *xb, char *yb, int64_t isz,
                             const nf_rowspec *sp, int64_t r0, int64_t r1)
{
    nf_iter oi;
    nf_iter_init(&oi, &p->o, r0);
    for (int64_t r = r0; r < r1; r++, nf_iter_next(&oi, &p->o))
        row(xb + oi.off * isz, yb + oi.yoff * isz, p->r2, sp, r);
}

nf_status NF_FN(nf_rownorm)(const nf_plan *p, nf_dtype dt, const void *x, void *y, const nf_rowspec *sp,
                            int nthreads)
{
    static const nf_rownorm_fn rows_of[] = {rownorm_f32, rownorm_f64, rownorm_f16, rownorm_bf16};
    const int64_t isz = nf_itemsize(dt);
    if (!isz)
        return NF_EINVAL;
    const nf_rownorm_fn row = rows_of[dt];
    if (p->k != 1 || p->r1.size != 1 || p->r2 < 2 || p->r2_stride != 1 || p->r2_ystride != 1)
        return NF_EINVAL; /* rows must be contiguous in x and y */
    const int64_t rows = p->o.size, n = p->r2;
    if (sp->seg < 1 || n % sp->seg || sp->period < 1 || (sp->seg == 1 && sp->act != NF_ACT_NONE) ||
        (!sp->mean != !sp->var) || (unsigned)sp->kind > NF_ROW_L2 || (sp->mean && sp->kind == NF_ROW_L2))
        return NF_EINVAL;
    if (sp->max_threads > 0 && sp->max_threads < nthreads)
        nthreads = sp->max_threads;
    const int nt = rows * n >= NF_PARALLEL_MIN && rows > 1 ? nthreads : 1;
    const char *xb = (const char *)x + p->x_offset * isz;
    char *yb = (char *)y + p->y_offset * isz;
    if (nt == 1) { /* small calls skip the OpenMP region: it costs more than the rows */
        nf_rownorm_range(row, p, xb, yb, isz, sp, 0, rows);
        return NF_OK;
    }
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int t = 0; t < nt; t++)
        nf_rownorm_range(row, p, xb, yb, isz, sp, rows * t / nt, rows * (t + 1) / nt);
    return NF_OK;
}
