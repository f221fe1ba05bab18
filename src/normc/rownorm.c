/* The fused row norms (layer, RMS and L2 over contiguous rows; instance and group norm over rows of
 * channel segments): each row's statistics and output in one visit while it is in cache, with the block
 * kernels the moments use. Compiled once per ISA level. */
#include "internal.h"
#include "simd.h"

#include <math.h>

#define NF_TEMPLATE "rownorm_tmpl.h"
#include "each_dtype.h"
NF_BY_DTYPE(rownorm);

/* Rows [r0, r1) of the plan, in order. */
static void nf_rownorm_range(__typeof__(rownorm_of[0]) row, const nf_plan *p, const char *xb, char *yb, int64_t isz,
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
    const int64_t isz = nf_itemsize(dt);
    if (!isz)
        return NF_EINVAL;
    if (p->k != 1 || p->r1.size != 1 || p->r2 < 2 || p->r2_stride != 1 || p->r2_ystride != 1)
        return NF_ELAYOUT; /* rows must be contiguous in x and y */
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
        nf_rownorm_range(rownorm_of[dt], p, xb, yb, isz, sp, 0, rows);
        return NF_OK;
    }
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int t = 0; t < nt; t++)
        nf_rownorm_range(rownorm_of[dt], p, xb, yb, isz, sp, rows * t / nt, rows * (t + 1) / nt);
    return NF_OK;
}
