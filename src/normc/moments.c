/* Welford/Chan moments over the canonical [O, R1, K, R2] view, for every reduction-axis pattern (with,
 * on request, the min and max of each work item while it is still in cache). Compiled once per ISA level
 * (NF_FN names each copy).
 *
 * Determinism: the reduction of each statistic is cut into chunks whose bounds depend only on the shape;
 * chunk partials are merged in chunk order. Threads only decide who computes which chunk, so results are
 * bit-identical for any thread count. */
#include "internal.h"
#include "simd.h"

#include <math.h>
#include <stdlib.h>

#define NF_DIRECT_MIN 256 /* shorter or strided rows are gathered into full blocks */

#define NF_TEMPLATE "moments_tmpl.h"
#include "each_dtype.h"
NF_BY_DTYPE(rows);
NF_BY_DTYPE(cols);
NF_BY_DTYPE(shift);
NF_BY_DTYPE(range_rows);
NF_BY_DTYPE(range_cols);

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
static double nf_shift_at(const nf_plan *p, nf_dtype dt, const char *xb, int64_t isz, int64_t i)
{
    nf_iter it;
    nf_iter_init(&it, &p->o, i / p->k);
    return shift_of[dt](xb + (it.off + (i % p->k) * p->k_stride) * isz);
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
/* One moments call as its steps share it: the data (xb at the plan's first element), where results go,
 * the threads, and the partials a mode leaves for nf_finish: `part` (per statistic, `group` sub-statistics
 * x `n_chunks` chunks; NULL where each work item was a whole statistic, stored directly) and `rpart`
 * ((min, max) laid out as part, when lo and hi are asked for). */
typedef struct {
    const nf_plan *p;
    nf_dtype dt;
    const char *xb;
    int64_t isz, n_out;
    nf_out out;
    double *lo, *hi;
    int nt;
    nf_acc *part;
    double *rpart;
    int64_t group, n_chunks;
} nf_mjob;

/* The partials of n_part (sub-)statistics x chunks: part where `need` (several per statistic), rpart
 * where lo is asked for. */
static nf_status nf_alloc_parts(nf_mjob *j, int64_t n_part, int need)
{
    if ((need && !(j->part = malloc((size_t)n_part * sizeof *j->part))) ||
        (j->lo && !(j->rpart = malloc((size_t)n_part * 2 * sizeof *j->rpart)))) {
        free(j->part);
        j->part = NULL;
        return NF_ENOMEM;
    }
    return NF_OK;
}

/* Row mode: chunk = (rows of R1) x (a stretch of R2). */
static nf_status nf_moments_rows(nf_mjob *j)
{
    const nf_plan *p = j->p;
    const nf_rows rw = nf_row_work(p->r1.size, p->r2);
    j->n_chunks = rw.n_chunks;
    const int64_t items = j->n_out * rw.n_chunks, isz = j->isz;
    if (nf_alloc_parts(j, items, rw.n_chunks > 1) != NF_OK)
        return NF_ENOMEM;
    const __typeof__(rows_of[0]) rows = rows_of[j->dt];
    const __typeof__(range_rows_of[0]) range_rows = range_rows_of[j->dt];
    const __typeof__(shift_of[0]) shift = shift_of[j->dt];
    const int64_t nf_t0 = nf_region_begin();
#pragma omp parallel for schedule(dynamic, NF_GRAIN(items, j->nt)) num_threads(j->nt) if (j->nt > 1 && items > 1)
    for (int64_t w = 0; w < items; w++) {
        const nf_row_item it = nf_row_at(&rw, w);
        nf_iter oi;
        nf_iter_init(&oi, &p->o, it.o);
        nf_acc a = {0, 0, 0};
        const char *xo = j->xb + oi.off * isz;
        const double K = shift(xo);
        rows(p, xo, K, it.ra, it.rb, it.ca, it.cb, &a);
        if (j->rpart) /* the same elements again, now in cache */
            range_rows(p, xo, it.ra, it.rb, it.ca, it.cb, isfinite(a.mean) && isfinite(a.m2), &j->rpart[2 * w],
                       &j->rpart[2 * w + 1]);
        if (j->part)
            j->part[w] = a;
        else
            nf_store(&j->out, p->out_offset + oi.ooff, &a, K);
        nf_mark();
    }
    nf_region_end(nf_t0);
    return NF_OK;
}

/* Column mode: chunk = (rows of R1) x (a tile of at most NF_KTILE columns of K). Short contiguous rows
 * whose statistics sit side by side (group norm channels-last: R2 = C/G) run here too, as K' = (innermost
 * O axis) * R2 columns; each statistic is then the merge of R2 adjacent columns. */
static nf_status nf_moments_cols(nf_mjob *j)
{
    const nf_plan *p = j->p;
    nf_plan q = *p;
    const int64_t last = p->o.ndim - 1, isz = j->isz;
    if (p->k == 1)
        q.o.ndim--, q.o.size /= p->o.shape[last], q.k = p->o.shape[last] * p->r2, q.k_stride = 1, q.r2 = 1;
    j->group = p->k == 1 ? p->r2 : 1;
    const int64_t group = j->group;
    const nf_cols cw = nf_col_work(q.k, p->r1.size);
    const int64_t n_chunks = j->n_chunks = cw.n_chunks, items = q.o.size * n_chunks * cw.n_tiles;
    if (nf_alloc_parts(j, j->n_out * group * n_chunks, n_chunks > 1 || group > 1) != NF_OK)
        return NF_ENOMEM;
    const __typeof__(cols_of[0]) cols = cols_of[j->dt];
    const __typeof__(range_cols_of[0]) range_cols = range_cols_of[j->dt];
    const int64_t nf_t0 = nf_region_begin();
#pragma omp parallel for schedule(dynamic, NF_GRAIN(items, j->nt)) num_threads(j->nt) if (j->nt > 1 && items > 1)
    for (int64_t w = 0; w < items; w++) {
        const nf_col_item it = nf_col_at(&cw, w);
        double n = 0, mu[NF_KTILE], m2[NF_KTILE], K[NF_KTILE];
        nf_iter oi;
        nf_iter_init(&oi, &q.o, it.o);
        const char *xo = j->xb + (oi.off + it.k0 * q.k_stride) * isz;
        cols(&q, xo, group, it.k0 % group, it.ra, it.rb, it.nk, K, &n, mu, m2);
        if (j->rpart) { /* the same block again, now in cache */
            double l[NF_KTILE], h[NF_KTILE];
            range_cols(&q, xo, it.ra, it.rb, it.nk, mu, m2, l, h);
            for (int64_t k = 0; k < it.nk; k++) {
                const int64_t c = (it.o * q.k + it.k0 + k) * n_chunks + it.ch;
                j->rpart[2 * c] = l[k], j->rpart[2 * c + 1] = h[k];
            }
        }
        for (int64_t k = 0; k < it.nk; k++) {
            const nf_acc a = {n, mu[k], m2[k]};
            const int64_t i = it.o * q.k + it.k0 + k;
            if (j->part)
                j->part[i * n_chunks + it.ch] = a;
            else
                nf_store(&j->out, q.out_offset + oi.ooff + (it.k0 + k) * q.k_ostride, &a, K[k]);
        }
        nf_mark();
    }
    nf_region_end(nf_t0);
    return NF_OK;
}

/* Merge each statistic's partials (`group` sub-statistics x `n_chunks` chunks, in that fixed order, all
 * in the statistic's shifted frame), store it, and free the partials. */
static void nf_finish(nf_mjob *j)
{
    const nf_plan *p = j->p;
    const int64_t n_out = j->n_out, per = j->group * j->n_chunks;
    if (j->part) {
#pragma omp parallel for schedule(static) num_threads(j->nt) if (j->nt > 1 && n_out * per >= 4096)
        for (int64_t i = 0; i < n_out; i++) {
            nf_acc a = {0, 0, 0};
            for (int64_t c = 0; c < per; c++) {
                const nf_acc *b = &j->part[i * per + c];
                nf_chan(&a, b->n, b->mean, b->m2);
            }
            nf_store(&j->out, nf_out_at(p, i), &a, nf_shift_at(p, j->dt, j->xb, j->isz, i));
        }
        free(j->part);
    }
    if (j->rpart) {
        nf_finish_range(p, j->rpart, per, j->lo, j->hi);
        free(j->rpart);
    }
}

nf_status NF_FN(nf_moments)(const nf_plan *p, nf_dtype dt, const void *x, nf_dtype odt, void *mean,
                            void *var, double ddof, double *lo, double *hi, double *shifts, int nthreads)
{
    const int64_t isz = nf_itemsize(dt);
    if (!isz || (odt != NF_F32 && odt != NF_F64))
        return NF_EINVAL;
    const int64_t n_out = p->o.size * p->k;
    nf_mjob j = {p, dt, (const char *)x + p->x_offset * isz, isz, n_out, {odt, mean, var, shifts, ddof}, lo, hi,
                 n_out * p->count >= NF_PARALLEL_MIN ? nthreads : 1, NULL, NULL, 1, 1};
    if (n_out == 0)
        return NF_OK;
    if (p->count == 0) {
        const nf_acc empty = {0, 0, 0};
        for (int64_t i = 0; i < n_out; i++) {
            nf_store(&j.out, nf_out_at(p, i), &empty, 0);
            if (lo)
                lo[nf_out_at(p, i)] = hi[nf_out_at(p, i)] = NAN;
        }
        return NF_OK;
    }
    const int short_rows = p->k == 1 && p->r2 > 1 && p->r2 <= NF_SHORT_ROW && p->r2_stride == 1 &&
                           p->o.ndim > 0 && p->o.stride[p->o.ndim - 1] == p->r2;
    const nf_status st = p->k == 1 && !short_rows ? nf_moments_rows(&j) : nf_moments_cols(&j);
    if (st == NF_OK)
        nf_finish(&j);
    return st;
}
