/* Min and max over the canonical [O, R1, K, R2] view, for the data-set statistics: the work split of the
 * moments engine (row chunks in row mode, column tiles in column mode), partials combined per statistic.
 * Min and max are exact, so the result never depends on the thread count. Compiled once per ISA level. */
#include "internal.h"
#include "simd.h"

#include <math.h>
#include <stdlib.h>

#define NF_TEMPLATE "range_tmpl.h"
#include "each_dtype.h"

typedef void (*nf_range_rows_fn)(const nf_plan *, const void *, int64_t, int64_t, int64_t, int64_t, double *,
                                 double *);
typedef void (*nf_range_cols_fn)(const nf_plan *, const void *, int64_t, int64_t, int64_t, double *, double *);

static double nf_min_nan(double acc, double v) { return v < acc || v != v ? v : acc; }
static double nf_max_nan(double acc, double v) { return v > acc || v != v ? v : acc; }

nf_status NF_FN(nf_range)(const nf_plan *p, nf_dtype dt, const void *x, double *lo, double *hi, int nthreads)
{
    static const nf_range_rows_fn rows_of[] = {range_rows_f32, range_rows_f64, range_rows_f16, range_rows_bf16};
    static const nf_range_cols_fn cols_of[] = {range_cols_f32, range_cols_f64, range_cols_f16, range_cols_bf16};
    const int64_t isz = nf_itemsize(dt), n_out = p->o.size * p->k;
    if (!isz)
        return NF_EINVAL;
    if (n_out == 0)
        return NF_OK;
    if (p->count == 0) { /* no elements: NaN, as the moments of nothing */
        for (int64_t i = 0; i < n_out; i++)
            lo[nf_out_at(p, i)] = hi[nf_out_at(p, i)] = NAN;
        return NF_OK;
    }
    const char *xb = (const char *)x + p->x_offset * isz;
    const int nt = n_out * p->count >= NF_PARALLEL_MIN ? nthreads : 1;
    const int64_t R1 = p->r1.size;
    int64_t n_chunks, items;
    double *part;
    if (p->k == 1) { /* row mode: chunk = (rows of R1) x (a stretch of R2), as in the moments engine */
        const nf_range_rows_fn rows = rows_of[dt];
        const nf_rows rw = nf_row_work(R1, p->r2);
        n_chunks = rw.n_chunks;
        items = n_out * n_chunks;
        if (!(part = malloc((size_t)items * 2 * sizeof *part)))
            return NF_ENOMEM;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && items > 1)
        for (int64_t w = 0; w < items; w++) {
            const nf_row_item it = nf_row_at(&rw, w);
            nf_iter oi;
            nf_iter_init(&oi, &p->o, it.o);
            rows(p, xb + oi.off * isz, it.ra, it.rb, it.ca, it.cb, &part[2 * w], &part[2 * w + 1]);
        }
    } else { /* column mode: chunk = (rows of R1) x (a tile of columns of K) */
        const nf_range_cols_fn cols = cols_of[dt];
        const nf_cols cw = nf_col_work(p->k, R1);
        n_chunks = cw.n_chunks;
        items = p->o.size * n_chunks * cw.n_tiles;
        if (!(part = malloc((size_t)(n_out * n_chunks) * 2 * sizeof *part)))
            return NF_ENOMEM;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && items > 1)
        for (int64_t w = 0; w < items; w++) {
            const nf_col_item it = nf_col_at(&cw, w);
            double l[NF_KTILE], h[NF_KTILE];
            nf_iter oi;
            nf_iter_init(&oi, &p->o, it.o);
            cols(p, xb + (oi.off + it.k0 * p->k_stride) * isz, it.ra, it.rb, it.nk, l, h);
            for (int64_t k = 0; k < it.nk; k++) {
                const int64_t i = (it.o * p->k + it.k0 + k) * n_chunks + it.ch;
                part[2 * i] = l[k], part[2 * i + 1] = h[k];
            }
        }
    }
    /* Partials are laid out statistic-major in both modes: statistic i owns [i * n_chunks, (i+1) * n_chunks). */
    for (int64_t i = 0; i < n_out; i++) {
        double l = INFINITY, h = -INFINITY;
        for (int64_t c = i * n_chunks; c < (i + 1) * n_chunks; c++) {
            l = nf_min_nan(l, part[2 * c]);
            h = nf_max_nan(h, part[2 * c + 1]);
        }
        const int64_t at = nf_out_at(p, i);
        lo[at] = l, hi[at] = h;
    }
    free(part);
    return NF_OK;
}
