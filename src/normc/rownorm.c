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

NF_BY_DTYPE(lastchunk);
NF_BY_DTYPE(shift);

/* What one thread needs for a channels-last sample: its column partials (C x n_chunks; the team's, shared,
 * in a team) and its per-channel statistics, coefficients and fit flags (C each). */
typedef struct {
    nf_acc *parts;
    double *mean, *var;
    void *s, *a, *c;
    uint8_t *fit;
} nf_lastbuf;

/* Bytes of one thread's per-channel buffers (C channels, coefficients of psz bytes), whole doubles. */
static int64_t nf_lastbuf_bytes(int64_t C, int64_t psz) { return (C * (2 * 8 + 3 * psz + 1) + 7) & ~(int64_t)7; }

/* Thread t's buffers in mem: the partials first (nparts; one set shared by a team), then each thread's. */
static nf_lastbuf nf_lastbuf_at(char *mem, int64_t nparts, int64_t t, int64_t C, int64_t nch, int share, int64_t psz)
{
    char *m = mem + nparts * (int64_t)sizeof(nf_acc) + t * nf_lastbuf_bytes(C, psz);
    const nf_lastbuf b = {(nf_acc *)mem + (share ? 0 : t * C * nch), (double *)m, (double *)m + C, m + 16 * C,
                          m + (16 + psz) * C, m + (16 + 2 * psz) * C, (uint8_t *)m + (16 + 3 * psz) * C};
    return b;
}

/* Sample i (x, y at its first element) by thread t of a team of nt (nt 1: alone): the team's share of its
 * chunks' column partials; then (after a barrier) every thread merges each group's partials in the order
 * nf_finish does (its columns, each column's chunks), takes the coefficients and, where every one holds,
 * writes its share of the rows. */
static void nf_last_sample(nf_dtype dt, const nf_plan *q, const nf_cols *cw, const char *x, char *y, int64_t isz,
                           const nf_lastspec *sp, int64_t i, const nf_lastbuf *b, int t, int nt)
{
    const int64_t C = sp->channels, G = sp->groups, cg = C / G, S = sp->spatial, nch = cw->n_chunks;
    for (int64_t ch = nch * t / nt; ch < nch * (t + 1) / nt; ch++)
        lastchunk_of[dt](q, x, cw, cg, ch, b->parts);
    /* Each group's shift, its first element, read before the barrier: y may be x, whose first rows the
     * team starts writing after it. Kept in var[] at the group's first channel until the merge. */
    for (int64_t g = 0; g < G; g++)
        b->var[g * cg] = shift_of[dt](x + g * cg * isz);
    if (nt > 1) {
#pragma omp barrier
    }
    for (int64_t g = 0; g < G; g++) {
        nf_acc a = {0, 0, 0};
        for (int64_t c = g * cg * nch; c < (g + 1) * cg * nch; c++)
            nf_chan(&a, b->parts[c].n, b->parts[c].mean, b->parts[c].m2);
        const double mean = b->var[g * cg] + a.mean, var = a.m2 / a.n; /* as nf_store */
        for (int64_t k = g * cg; k < (g + 1) * cg; k++)
            b->mean[k] = mean, b->var[k] = var;
        if (t == 0 && sp->mean)
            sp->mean[i * G + g] = mean, sp->var[i * G + g] = var;
    }
    const nf_dtype pdt = dt == NF_F64 ? NF_F64 : NF_F32;
    const nf_coefspec cs = {C, C, b->mean, b->var, sp->eps, sp->weight, sp->bias, pdt, b->s, b->a, b->c};
    nf_coefficients(&cs, b->fit);
    int fits = 1;
    for (int64_t k = 0; k < C; k++)
        fits &= b->fit[k];
    if (fits) {
        const void *p[3] = {b->s, b->a, b->c};
        const int64_t r0 = S * t / nt, r1 = S * (t + 1) / nt;
        NF_FN(nf_apply_rows)(dt, x + r0 * C * isz, y + r0 * C * isz, p, 1, C, sp->act, r1 - r0, C, C);
    }
    if (t == 0)
        sp->done[i] = (uint8_t)fits;
    nf_mark();
    if (nt > 1) {
#pragma omp barrier /* the partials are the next sample's */
    }
}

nf_status NF_FN(nf_channels_last_norm)(nf_dtype dt, const void *x, void *y, const nf_lastspec *sp, int nthreads)
{
    const int64_t isz = nf_itemsize(dt), N = sp->samples, S = sp->spatial, C = sp->channels, G = sp->groups;
    if (!isz || N < 0 || S < 0 || C < 1 || G < 1 || C % G || (unsigned)sp->act > NF_ACT_SILU ||
        !sp->mean != !sp->var || !sp->done)
        return NF_EINVAL;
    if (S < 2 || G < 2 || C / G > NF_SHORT_ROW)
        return NF_ELAYOUT;
    if (N == 0)
        return NF_OK;
    /* One sample as nf_moments' column mode sees it: S rows (R1) of C columns (K). */
    nf_plan q;
    memset(&q, 0, sizeof q);
    q.r1.ndim = 1, q.r1.size = q.r1.shape[0] = S, q.r1.stride[0] = C;
    q.o.size = 1, q.k = C, q.k_stride = 1, q.r2 = 1, q.count = S * (C / G);
    const nf_cols cw = nf_col_work(C, S);
    const int nt = N * S * C >= NF_PARALLEL_MIN ? nthreads : 1;
#ifdef _OPENMP
    const int share = nt > 1 && N < 4 * (int64_t)nt; /* too few samples to keep every thread busy */
#else
    const int share = 0;
#endif
    const int64_t nparts = C * cw.n_chunks * (share ? 1 : nt), psz = dt == NF_F64 ? 8 : 4;
    char *mem = malloc((size_t)(nparts * (int64_t)sizeof(nf_acc) + nt * nf_lastbuf_bytes(C, psz)));
    if (!mem)
        return NF_ENOMEM;
    const char *xb = (const char *)x;
    char *yb = (char *)y;
    const int64_t stride = S * C * isz;
    const int64_t nf_t0 = nf_region_begin();
    if (nt == 1) {
        const nf_lastbuf b = nf_lastbuf_at(mem, nparts, 0, C, cw.n_chunks, share, psz);
        for (int64_t i = 0; i < N; i++)
            nf_last_sample(dt, &q, &cw, xb + i * stride, yb + i * stride, isz, sp, i, &b, 0, 1);
    } else if (share) {
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
        {
            const int t = nf_thread(), n = omp_get_num_threads();
            const nf_lastbuf b = nf_lastbuf_at(mem, nparts, t, C, cw.n_chunks, share, psz);
            for (int64_t i = 0; i < N; i++)
                nf_last_sample(dt, &q, &cw, xb + i * stride, yb + i * stride, isz, sp, i, &b, t, n);
        }
#endif
    } else {
        /* samples handed out as threads come free; a sample's bits do not depend on its thread */
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
        for (int64_t i = 0; i < N; i++) {
            const nf_lastbuf b = nf_lastbuf_at(mem, nparts, nf_thread(), C, cw.n_chunks, share, psz);
            nf_last_sample(dt, &q, &cw, xb + i * stride, yb + i * stride, isz, sp, i, &b, 0, 1);
        }
    }
    nf_region_end(nf_t0);
    free(mem);
    return NF_OK;
}
