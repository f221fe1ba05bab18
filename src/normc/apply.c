/* The apply pass, y = act((x - s) * a + c) with s, a, c per statistics group, over the same canonical view
 * as the moments. Compiled once per ISA level. */
#include "internal.h"
#include "simd.h"

#include <math.h>

#define NF_TEMPLATE "apply_tmpl.h"
#include "each_dtype.h"

NF_BY_DTYPE(row);

/* nr contiguous rows of n elements, xr and yr elements apart, with one (s, a, c) for all (ps 0) or one
 * per element (ps 1): the fused norms' output step (a channels-first segment; a channels-last sample). */
void NF_FN(nf_apply_rows)(nf_dtype dt, const void *x, void *y, const void *const *p, int64_t ps, int64_t n,
                          int act, int64_t nr, int64_t xr, int64_t yr)
{
    row_of[dt](x, 1, y, 1, p, ps, n, act, nr, xr, yr);
}

/* Walks the plan's elements as runs of rows along its innermost axis, in chunks whose bounds depend only
 * on the shape (so results do not depend on the thread count), handing each run to `op`. */
void NF_FN(nf_walk)(const nf_plan *p, int64_t isz, const void *x, const void *x2, void *y, nf_run_fn op,
                    const void *ctx, int nthreads)
{
    if (p->o.size == 0 || p->count == 0)
        return; /* x has no elements */
    /* A row is the innermost axis: K (groups vary along it) or R2 (one group along it). */
    const int col = p->r2 == 1;
    const int64_t len = col ? p->k : p->r2, xs = col ? p->k_stride : p->r2_stride;
    const int64_t ys = col ? p->k_ystride : p->r2_ystride, ps = col ? p->k_ostride : 0;
    const int64_t R1 = p->r1.size, rows = p->o.size * R1;
    const int64_t rpc = len < NF_CHUNK ? NF_CHUNK / len : 1, n_chunks = (rows + rpc - 1) / rpc;
    const int nt = rows * len >= NF_PARALLEL_MIN ? nthreads : 1;
    const char *xb = (const char *)x + p->x_offset * isz;
    const char *x2b = x2 ? (const char *)x2 + p->x_offset * isz : NULL;
    char *yb = (char *)y + p->y_offset * isz;
    /* Along a one-axis R1 the rows up to the chunk's or the axis's end share their parameters: one call
     * for the run, its rows xr and yr elements apart. */
    const int run = p->r1.ndim == 1;
    const int64_t xr = run ? p->r1.stride[0] : 0, yr = run ? p->r1.ystride[0] : 0;
    const int64_t nf_t0 = nf_region_begin();
#pragma omp parallel for schedule(dynamic, NF_GRAIN(n_chunks, nt)) num_threads(nt) if (nt > 1 && n_chunks > 1)
    for (int64_t c = 0; c < n_chunks; c++) {
        const int64_t w0 = c * rpc, w1 = w0 + rpc < rows ? w0 + rpc : rows;
        nf_iter io, ir;
        nf_iter_init(&io, &p->o, w0 / R1);
        nf_iter_init(&ir, &p->r1, w0 % R1);
        for (int64_t w = w0; w < w1;) {
            const int64_t nr = run ? (R1 - ir.idx[0] < w1 - w ? R1 - ir.idx[0] : w1 - w) : 1;
            const int64_t xo = (io.off + ir.off) * isz;
            const nf_run r = {xb + xo, x2b ? x2b + xo : NULL, yb + (io.yoff + ir.yoff) * isz,
                              p->out_offset + io.ooff, len, xs, ys, ps, nr, xr, yr};
            op(ctx, &r);
            w += nr;
            ir.idx[0] += nr - 1; /* to the run's last row, then one step on */
            ir.off += (nr - 1) * xr;
            ir.yoff += (nr - 1) * yr;
            if (!nf_iter_next(&ir, &p->r1))
                nf_iter_next(&io, &p->o);
        }
        nf_mark();
    }
    nf_region_end(nf_t0);
}

typedef struct {
    __typeof__(row_of[0]) row;
    const char *prm[3];
    int64_t psz;
    nf_act act;
} nf_apply_ctx;

static void nf_apply_run(const void *ctx, const nf_run *r)
{
    const nf_apply_ctx *c = (const nf_apply_ctx *)ctx;
    const void *params[3] = {c->prm[0] + r->poff * c->psz, c->prm[1] + r->poff * c->psz,
                             c->prm[2] + r->poff * c->psz};
    c->row(r->x, r->xs, r->y, r->ys, params, r->ps, r->len, c->act, r->nr, r->xr, r->yr);
}

nf_status NF_FN(nf_apply)(const nf_plan *p, nf_dtype dt, const void *x, void *y, const void *shift,
                          const void *scale, const void *bias, nf_act act, int nthreads)
{
    const int64_t isz = nf_itemsize(dt);
    if (!isz)
        return NF_EINVAL;
    const nf_apply_ctx ctx = {row_of[dt], {shift, scale, bias}, dt == NF_F64 ? 8 : 4, act};
    NF_FN(nf_walk)(p, isz, x, NULL, y, nf_apply_run, &ctx, nthreads);
    return NF_OK;
}
