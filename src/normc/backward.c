/* The backward passes: per-group sums of the upstream gradient over the canonical view (chunked as the
 * moments engine, so bit-identical for any thread count), the elementwise grad_x pass over the apply
 * pass's walk, and the fused layer / RMS norm rows. Compiled once per ISA level. */
#include "internal.h"
#include "simd.h"

#include <math.h>
#include <stdlib.h>

#define NF_TEMPLATE "backward_tmpl.h"
#include "each_dtype.h"

typedef void (*nf_red_rows_fn)(const nf_plan *, const void *, const void *, int64_t, int64_t, int64_t, int64_t,
                               const void *const *, int64_t, int, double *, double *);
typedef void (*nf_red_cols_fn)(const nf_plan *, const void *, const void *, int64_t, int64_t, int64_t,
                               const void *const *, int64_t, int, double *, double *);

nf_status NF_FN(nf_grad_sums)(const nf_plan *p, nf_dtype dt, const void *x, const void *dy, const void *shift,
                              const void *scale, const void *bias, nf_act act, double *sum_g, double *sum_gd,
                              int nthreads)
{
    static const nf_red_rows_fn rows_of[] = {red_rows_f32, red_rows_f64, red_rows_f16, red_rows_bf16};
    static const nf_red_cols_fn cols_of[] = {red_cols_f32, red_cols_f64, red_cols_f16, red_cols_bf16};
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
    const void *const prm[3] = {shift, scale, bias};
    const char *xb = (const char *)x + p->x_offset * isz, *db = (const char *)dy + p->x_offset * isz;
    const int nt = n_out * p->count >= NF_PARALLEL_MIN ? nthreads : 1;
    const int64_t R1 = p->r1.size;
    int64_t n_chunks;
    double *part = NULL; /* (sum_g, sum_gd) per statistic and chunk, merged in chunk order */

    if (p->k == 1) {
        /* Row mode: chunk = (rows of R1) x (a stretch of R2), as in the moments. */
        const nf_red_rows_fn rows = rows_of[dt];
        const nf_rows rw = nf_row_work(R1, p->r2);
        n_chunks = rw.n_chunks;
        const int64_t items = n_out * n_chunks;
        if (n_chunks > 1 && !(part = malloc((size_t)items * 2 * sizeof *part)))
            return NF_ENOMEM;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && items > 1)
        for (int64_t w = 0; w < items; w++) {
            const nf_row_item it = nf_row_at(&rw, w);
            nf_iter oi;
            nf_iter_init(&oi, &p->o, it.o);
            const int64_t at = p->out_offset + oi.ooff;
            double g = 0, d = 0;
            rows(p, xb + oi.off * isz, db + oi.off * isz, it.ra, it.rb, it.ca, it.cb, prm, at, act, &g, &d);
            if (part)
                part[2 * w] = g, part[2 * w + 1] = d;
            else
                sum_g[at] = g, sum_gd[at] = d;
        }
    } else {
        /* Column mode: chunk = (rows of R1) x (a tile of at most NF_KTILE columns of K). */
        const nf_red_cols_fn cols = cols_of[dt];
        const nf_cols cw = nf_col_work(p->k, R1);
        n_chunks = cw.n_chunks;
        const int64_t items = p->o.size * n_chunks * cw.n_tiles;
        if (n_chunks > 1 && !(part = malloc((size_t)(n_out * n_chunks) * 2 * sizeof *part)))
            return NF_ENOMEM;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && items > 1)
        for (int64_t w = 0; w < items; w++) {
            const nf_col_item it = nf_col_at(&cw, w);
            double g[NF_KTILE] = {0}, d[NF_KTILE] = {0};
            nf_iter oi;
            nf_iter_init(&oi, &p->o, it.o);
            const int64_t off = (oi.off + it.k0 * p->k_stride) * isz;
            const int64_t at = p->out_offset + oi.ooff + it.k0 * p->k_ostride;
            cols(p, xb + off, db + off, it.ra, it.rb, it.nk, prm, at, act, g, d);
            for (int64_t k = 0; k < it.nk; k++) {
                const int64_t i = (it.o * p->k + it.k0 + k) * n_chunks + it.ch;
                if (part)
                    part[2 * i] = g[k], part[2 * i + 1] = d[k];
                else
                    sum_g[at + k * p->k_ostride] = g[k], sum_gd[at + k * p->k_ostride] = d[k];
            }
        }
    }
    if (part) {
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && n_out * n_chunks >= 4096)
        for (int64_t i = 0; i < n_out; i++) {
            double g = 0, d = 0;
            for (int64_t c = 0; c < n_chunks; c++)
                g += part[2 * (i * n_chunks + c)], d += part[2 * (i * n_chunks + c) + 1];
            sum_g[nf_out_at(p, i)] = g;
            sum_gd[nf_out_at(p, i)] = d;
        }
        free(part);
    }
    return NF_OK;
}

typedef void (*nf_gx_fn)(const nf_run *, const void *const *, int);

typedef struct {
    nf_gx_fn run;
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
    static const nf_gx_fn runs_of[] = {gx_run_f32, gx_run_f64, gx_run_f16, gx_run_bf16};
    const int64_t isz = nf_itemsize(dt);
    if (!isz)
        return NF_EINVAL;
    const nf_gx_ctx ctx = {runs_of[dt], params, act};
    NF_FN(nf_walk)(p, isz, x, dy, gx, nf_gx_run, &ctx, nthreads);
    return NF_OK;
}

typedef void (*nf_seggrad_row_fn)(const void *, const void *, void *, const nf_seggrad *, int64_t);

nf_status NF_FN(nf_seg_grad)(nf_dtype dt, const void *x, const void *dy, void *gx, const nf_seggrad *sp,
                             int nthreads)
{
    static const nf_seggrad_row_fn rows_of[] = {seggrad_row_f32, seggrad_row_f64, seggrad_row_f16,
                                                seggrad_row_bf16};
    if (!nf_itemsize(dt) || sp->rows < 0 || sp->nseg < 1 || sp->len < 1 || sp->nslot < 1 ||
        sp->nslot > NF_KTILE || sp->period < 1 || (!sp->mean != !sp->rstd))
        return NF_EINVAL;
    const nf_seggrad_row_fn row = rows_of[dt];
    const int nt = sp->rows * sp->nseg * sp->len >= NF_PARALLEL_MIN ? nthreads : 1;
    /* One group per iteration, whole: no result depends on which thread ran it. */
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && sp->rows > 1)
    for (int64_t r = 0; r < sp->rows; r++)
        row(x, dy, gx, sp, r);
    return NF_OK;
}

typedef void (*nf_rowgrad_fn)(const void *, const void *, void *, int64_t, const nf_rowgrad *, int64_t, int64_t,
                              void *, void *);

nf_status NF_FN(nf_rownorm_grad)(nf_dtype dt, int64_t rows, int64_t n, const void *x, const void *dy, void *gx,
                                 const nf_rowgrad *sp, int nthreads)
{
    static const nf_rowgrad_fn rows_of[] = {rowgrad_f32, rowgrad_f64, rowgrad_f16, rowgrad_bf16};
    const int64_t isz = nf_itemsize(dt), asz = dt == NF_F64 ? 8 : 4;
    if (!isz || rows < 0 || n < 1 || !sp->rstd || (!sp->grad_weight != !sp->grad_bias))
        return NF_EINVAL;
    if (rows == 0) {
        for (int64_t j = 0; sp->grad_weight && j < n; j++)
            sp->grad_weight[j] = sp->grad_bias[j] = 0;
        return NF_OK;
    }
    const nf_rowgrad_fn row = rows_of[dt];
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
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && n_chunks > 1)
    for (int64_t c = 0; c < n_chunks; c++) {
        char *pw = want ? part + (size_t)(2 * c * n * asz) : NULL;
        row(x, dy, gx, n, sp, rows * c / n_chunks, rows * (c + 1) / n_chunks, pw, pw ? pw + n * asz : NULL);
    }
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
