/* The fused row norms (layer, RMS and L2 over contiguous rows; instance and group norm over rows of
 * channel segments): each row's statistics and output in one visit while it is in cache, with the block
 * kernels the moments use. Compiled once per ISA level. */
#include "internal.h"
#include "simd.h"

#include <math.h>
#include <stdlib.h>

#define NF_TEMPLATE "rownorm_tmpl.h"
#include "each_dtype.h"
NF_BY_DTYPE(rownorm);
NF_BY_DTYPE(rowbatch);

/* Rows [r0, r1) of the plan, in order: each by the nt threads of the team (t: this one) or by one (nt 1),
 * or, where each is one chunk, by one thread in batches. */
static void nf_rownorm_range(nf_dtype dt, const nf_plan *p, const char *xb, char *yb, int64_t isz,
                             const nf_rowspec *sp, int64_t r0, int64_t r1, nf_acc *parts, int t, int nt)
{
    nf_iter oi;
    nf_iter_init(&oi, &p->o, r0);
    if (p->r2 > NF_ROW_CHUNK) {
        for (int64_t r = r0; r < r1; r++, nf_iter_next(&oi, &p->o))
            rownorm_of[dt](xb + oi.off * isz, yb + oi.yoff * isz, p->r2, sp, r, parts, t, nt);
        return;
    }
    /* a batch stays in L1 (4 KiB) between its statistics and its output */
    const int64_t fit = (4096 / isz) / p->r2, batch = fit < 1 ? 1 : fit < NF_ROW_BATCH ? fit : NF_ROW_BATCH;
    const void *xs[NF_ROW_BATCH];
    void *ys[NF_ROW_BATCH];
    for (int64_t r = r0; r < r1; r += batch) {
        const int64_t nr = r1 - r < batch ? r1 - r : batch;
        if (p->o.ndim == 1) /* evenly spaced rows: no walk */
            for (int64_t i = 0; i < nr; i++) {
                xs[i] = xb + (r + i) * p->o.stride[0] * isz;
                ys[i] = yb + (r + i) * p->o.ystride[0] * isz;
            }
        else
            for (int64_t i = 0; i < nr; i++, nf_iter_next(&oi, &p->o)) {
                xs[i] = xb + oi.off * isz;
                ys[i] = yb + oi.yoff * isz;
            }
        rowbatch_of[dt](xs, ys, nr, p->r2, sp, r);
    }
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
    const int nt = rows * n >= NF_PARALLEL_MIN ? nthreads : 1;
    const int64_t nch = (n + NF_ROW_CHUNK - 1) / NF_ROW_CHUNK;
#ifdef _OPENMP
    /* Long rows, too few to keep every thread busy to within a quarter, are shared by the whole team. */
    const int share = nt > 1 && nch >= 2 && rows < 4 * (int64_t)nt;
#else
    const int share = 0;
#endif
    /* long rows' chunk statistics: the team's (share) or each thread's own */
    const int64_t nparts = nch == 1 ? 0 : share ? nch : nt * nch;
    nf_acc few[16], *parts = nparts <= 16 ? few : malloc((size_t)nparts * sizeof(nf_acc));
    if (!parts)
        return NF_ENOMEM;
    const char *xb = (const char *)x + p->x_offset * isz;
    char *yb = (char *)y + p->y_offset * isz;
    if (nt == 1 || (rows == 1 && !share)) { /* small calls skip the OpenMP region: it costs more than the rows */
        nf_rownorm_range(dt, p, xb, yb, isz, sp, 0, rows, parts, 0, 1);
    } else if (share) {
#ifdef _OPENMP
        const int64_t nf_t0 = nf_region_begin();
#pragma omp parallel num_threads(nt)
        nf_rownorm_range(dt, p, xb, yb, isz, sp, 0, rows, parts, nf_thread(), omp_get_num_threads());
        nf_region_end(nf_t0);
#endif
    } else {
        /* Blocks of rows handed out as threads come free: a thread that the OS parks for a while (another
         * process on its core) leaves its share to the others. A row's bits do not depend on its thread. */
        const int64_t nb = rows < 16 * (int64_t)nt ? rows : 16 * (int64_t)nt;
        const int64_t nf_t0 = nf_region_begin();
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
        for (int64_t b = 0; b < nb; b++) {
            nf_rownorm_range(dt, p, xb, yb, isz, sp, rows * b / nb, rows * (b + 1) / nb, parts + nf_thread() * nch,
                             0, 1);
            nf_mark();
        }
        nf_region_end(nf_t0);
    }
    if (parts != few)
        free(parts);
    return NF_OK;
}
