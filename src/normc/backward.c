/* The backward passes: per-group sums of the upstream gradient over the canonical view (chunked as the
 * moments engine, so bit-identical for any thread count), the elementwise grad_x pass over the apply
 * pass's walk, and the fused layer / RMS norm rows. Compiled once per ISA level. */
#include "internal.h"
#include "simd.h"

#include <math.h>
#include <stdlib.h>

#define NF_TEMPLATE "backward_tmpl.h"
#include "each_dtype.h"

NF_BY_DTYPE(red_rows);
NF_BY_DTYPE(red_cols);
NF_BY_DTYPE(gx_run);
NF_BY_DTYPE(seggrad_row);
NF_BY_DTYPE(rowgrad);

/* One grad_sums call as its modes share it: x and dy at the plan's first element, the apply pass's
 * parameters, the outputs, the threads, and `part`, the (sum_g, sum_gd) of each statistic's n_chunks
 * chunks (NULL where each work item was a whole statistic, stored directly). */
typedef struct {
    const nf_plan *p;
    nf_dtype dt;
    const char *xb, *db;
    int64_t isz, n_out;
    const void *prm[3];
    nf_act act;
    double *sum_g, *sum_gd;
    int nt;
    double *part;
    int64_t n_chunks;
} nf_gjob;

/* Row mode: chunk = (rows of R1) x (a stretch of R2), as in the moments. */
static nf_status nf_grad_sums_rows(nf_gjob *j)
{
    const nf_plan *p = j->p;
    const __typeof__(red_rows_of[0]) rows = red_rows_of[j->dt];
    const nf_rows rw = nf_row_work(p->r1.size, p->r2);
    j->n_chunks = rw.n_chunks;
    const int64_t items = j->n_out * rw.n_chunks, isz = j->isz;
    if (rw.n_chunks > 1 && !(j->part = malloc((size_t)items * 2 * sizeof *j->part)))
        return NF_ENOMEM;
    const int64_t nf_t0 = nf_region_begin();
#pragma omp parallel for schedule(dynamic, NF_GRAIN(items, j->nt)) num_threads(j->nt) if (j->nt > 1 && items > 1)
    for (int64_t w = 0; w < items; w++) {
        const nf_row_item it = nf_row_at(&rw, w);
        nf_iter oi;
        nf_iter_init(&oi, &p->o, it.o);
        const int64_t at = p->out_offset + oi.ooff;
        double g = 0, d = 0;
        rows(p, j->xb + oi.off * isz, j->db + oi.off * isz, it.ra, it.rb, it.ca, it.cb, j->prm, at, j->act, &g, &d);
        if (j->part)
            j->part[2 * w] = g, j->part[2 * w + 1] = d;
        else
            j->sum_g[at] = g, j->sum_gd[at] = d;
        nf_mark();
    }
    nf_region_end(nf_t0);
    return NF_OK;
}

/* Column mode: chunk = (rows of R1) x (a tile of at most NF_KTILE columns of K). */
static nf_status nf_grad_sums_cols(nf_gjob *j)
{
    const nf_plan *p = j->p;
    const __typeof__(red_cols_of[0]) cols = red_cols_of[j->dt];
    const nf_cols cw = nf_col_work(p->k, p->r1.size);
    const int64_t n_chunks = j->n_chunks = cw.n_chunks, items = p->o.size * n_chunks * cw.n_tiles, isz = j->isz;
    if (n_chunks > 1 && !(j->part = malloc((size_t)(j->n_out * n_chunks) * 2 * sizeof *j->part)))
        return NF_ENOMEM;
    const int64_t nf_t0 = nf_region_begin();
#pragma omp parallel for schedule(dynamic, NF_GRAIN(items, j->nt)) num_threads(j->nt) if (j->nt > 1 && items > 1)
    for (int64_t w = 0; w < items; w++) {
        const nf_col_item it = nf_col_at(&cw, w);
        double g[NF_KTILE] = {0}, d[NF_KTILE] = {0};
        nf_iter oi;
        nf_iter_init(&oi, &p->o, it.o);
        const int64_t off = (oi.off + it.k0 * p->k_stride) * isz;
        const int64_t at = p->out_offset + oi.ooff + it.k0 * p->k_ostride;
        cols(p, j->xb + off, j->db + off, it.ra, it.rb, it.nk, j->prm, at, j->act, g, d);
        for (int64_t k = 0; k < it.nk; k++) {
            const int64_t i = (it.o * p->k + it.k0 + k) * n_chunks + it.ch;
            if (j->part)
                j->part[2 * i] = g[k], j->part[2 * i + 1] = d[k];
            else
                j->sum_g[at + k * p->k_ostride] = g[k], j->sum_gd[at + k * p->k_ostride] = d[k];
        }
        nf_mark();
    }
    nf_region_end(nf_t0);
    return NF_OK;
}

/* Each statistic's sums over its chunks, in chunk order; frees the partials. */
static void nf_grad_sums_finish(nf_gjob *j)
{
    const int64_t n_out = j->n_out, n_chunks = j->n_chunks;
    if (!j->part)
        return;
#pragma omp parallel for schedule(static) num_threads(j->nt) if (j->nt > 1 && n_out * n_chunks >= 4096)
    for (int64_t i = 0; i < n_out; i++) {
        double g = 0, d = 0;
        for (int64_t c = 0; c < n_chunks; c++)
            g += j->part[2 * (i * n_chunks + c)], d += j->part[2 * (i * n_chunks + c) + 1];
        j->sum_g[nf_out_at(j->p, i)] = g;
        j->sum_gd[nf_out_at(j->p, i)] = d;
    }
    free(j->part);
}

nf_status NF_FN(nf_grad_sums)(const nf_plan *p, nf_dtype dt, const void *x, const void *dy, const void *shift,
                              const void *scale, const void *bias, nf_act act, double *sum_g, double *sum_gd,
                              int nthreads)
{
    const int64_t isz = nf_itemsize(dt);
    if (!isz)
        return NF_EINVAL;
    const int64_t n_out = p->o.size * p->k;
    if (n_out == 0)
        return NF_OK;
    if (p->count == 0) { /* nothing flows back: the sums are 0 */
        for (int64_t i = 0; i < n_out; i++)
            sum_g[nf_out_at(p, i)] = sum_gd[nf_out_at(p, i)] = 0;
        return NF_OK;
    }
    nf_gjob j = {p, dt, (const char *)x + p->x_offset * isz, (const char *)dy + p->x_offset * isz, isz, n_out,
                 {shift, scale, bias}, act, sum_g, sum_gd, n_out * p->count >= NF_PARALLEL_MIN ? nthreads : 1,
                 NULL, 1};
    const nf_status st = p->k == 1 ? nf_grad_sums_rows(&j) : nf_grad_sums_cols(&j);
    if (st == NF_OK)
        nf_grad_sums_finish(&j);
    return st;
}

typedef struct {
    __typeof__(gx_run_of[0]) run;
    const void *const *prm;
    nf_act act;
} nf_gx_ctx;

static void nf_gx_run(const void *ctx, const nf_run *r)
{
    const nf_gx_ctx *c = (const nf_gx_ctx *)ctx;
    c->run(r, c->prm, c->act);
}

nf_status NF_FN(nf_grad_apply)(const nf_plan *p, nf_dtype dt, const void *x, const void *dy, void *gx,
                               const void *const *params, nf_act act, int nthreads)
{
    const int64_t isz = nf_itemsize(dt);
    if (!isz)
        return NF_EINVAL;
    const nf_gx_ctx ctx = {gx_run_of[dt], params, act};
    NF_FN(nf_walk)(p, isz, x, dy, gx, nf_gx_run, &ctx, nthreads);
    return NF_OK;
}

nf_status NF_FN(nf_seg_grad)(nf_dtype dt, const void *x, const void *dy, void *gx, const nf_seggrad *sp,
                             int nthreads)
{
    if (!nf_itemsize(dt) || sp->rows < 0 || sp->nseg < 1 || sp->len < 1 || sp->nslot < 1 ||
        sp->nslot > NF_MAX_SLOTS || sp->period < 1 || (!sp->mean != !sp->rstd))
        return NF_EINVAL;
    const __typeof__(seggrad_row_of[0]) row = seggrad_row_of[dt];
    const int nt = sp->rows * sp->nseg * sp->len >= NF_PARALLEL_MIN ? nthreads : 1;
    /* One group per iteration, whole: no result depends on which thread ran it. */
    const int64_t nf_t0 = nf_region_begin();
#pragma omp parallel for schedule(dynamic, NF_GRAIN(sp->rows, nt)) num_threads(nt) if (nt > 1 && sp->rows > 1)
    for (int64_t r = 0; r < sp->rows; r++) {
        row(x, dy, gx, sp, r);
        nf_mark();
    }
    nf_region_end(nf_t0);
    return NF_OK;
}

nf_status NF_FN(nf_rownorm_grad)(nf_dtype dt, int64_t rows, int64_t n, const void *x, const void *dy, void *gx,
                                 const nf_rowgrad *sp, int nthreads)
{
    const int64_t isz = nf_itemsize(dt), asz = dt == NF_F64 ? 8 : 4;
    if (!isz || rows < 0 || n < 1 || !sp->rstd || (!sp->grad_weight != !sp->grad_bias))
        return NF_EINVAL;
    if (rows == 0) {
        for (int64_t j = 0; sp->grad_weight && j < n; j++)
            sp->grad_weight[j] = sp->grad_bias[j] = 0;
        return NF_OK;
    }
    const __typeof__(rowgrad_of[0]) row = rowgrad_of[dt];
    /* Parameter gradients are summed per chunk of rows, then over chunks in order: chunk bounds depend
     * only on the shape. Chunks of about NF_CHUNK elements, at most 64 of them unless that would put
     * more than 256 rows in one (the NF_A partial sums stay short). */
    int64_t n_chunks = rows * n / NF_CHUNK;
    n_chunks = n_chunks < 1 ? 1 : n_chunks > 64 ? 64 : n_chunks;
    if (n_chunks < nf_cdiv(rows, 256))
        n_chunks = nf_cdiv(rows, 256);
    if (n_chunks > rows)
        n_chunks = rows;
    const int want = sp->grad_weight != NULL;
    char *part = want ? calloc((size_t)(n_chunks * n * 2), (size_t)asz) : NULL;
    if (want && !part)
        return NF_ENOMEM;
    const int nt = rows * n >= NF_PARALLEL_MIN ? nthreads : 1;
    const int64_t nf_t0 = nf_region_begin();
#pragma omp parallel for schedule(dynamic, NF_GRAIN(n_chunks, nt)) num_threads(nt) if (nt > 1 && n_chunks > 1)
    for (int64_t c = 0; c < n_chunks; c++) {
        char *pw = want ? part + (size_t)(2 * c * n * asz) : NULL;
        row(x, dy, gx, n, sp, rows * c / n_chunks, rows * (c + 1) / n_chunks, pw, pw ? pw + n * asz : NULL);
        nf_mark();
    }
    nf_region_end(nf_t0);
    if (want) {
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && n * n_chunks >= 4096)
        for (int64_t j = 0; j < n; j++) {
            double w = 0, b = 0;
            for (int64_t c = 0; c < n_chunks; c++) {
                const char *pw = part + (size_t)(2 * c * n * asz);
                w += asz == 8 ? ((const double *)pw)[j] : ((const float *)pw)[j];
                b += asz == 8 ? ((const double *)pw)[n + j] : ((const float *)pw)[n + j];
            }
            sp->grad_weight[j] = w;
            sp->grad_bias[j] = b;
        }
        free(part);
    }
    return NF_OK;
}
