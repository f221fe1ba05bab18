/* Min/max kernels for one storage type, included by moments_tmpl.h: the moments engine runs them on a
 * work item right after its moments, while the item is in cache. They skip NaN (one compare and select
 * per bound, which the compiler makes a vector min or max; looking for NaN as well doubled their cost):
 * a NaN in an item makes its moments NaN, and only then does the engine look for one (has_nan_*), so that
 * a NaN wins over every number, as in numpy.min. */

#define NF_NAME2(a, b) a##_##b
#define NF_NAME(a, b) NF_NAME2(a, b)

static NF_INLINE NF_V NF_NAME(vsel, NF_TAG)(NF_VI take, NF_V a, NF_V b)
{
    return (NF_V)(((NF_VI)a & take) | ((NF_VI)b & ~take));
}

static NF_INLINE void NF_NAME(vrange, NF_TAG)(NF_V v, NF_V *lo, NF_V *hi)
{
    *lo = NF_NAME(vsel, NF_TAG)((NF_VI)(v < *lo), v, *lo);
    *hi = NF_NAME(vsel, NF_TAG)((NF_VI)(v > *hi), v, *hi);
}

static NF_INLINE NF_A NF_NAME(smin, NF_TAG)(NF_A acc, NF_A v) { return v < acc ? v : acc; }
static NF_INLINE NF_A NF_NAME(smax, NF_TAG)(NF_A acc, NF_A v) { return v > acc ? v : acc; }

/* Whether rows [ra, rb) of R1, elements [ca, cb) of each R2 row, hold a NaN (as range_rows walks them). */
static NF_COLD int NF_NAME(has_nan_rows, NF_TAG)(const nf_plan *p, const void *xv, int64_t ra, int64_t rb,
                                                 int64_t ca, int64_t cb)
{
    const NF_T *x = (const NF_T *)xv;
    nf_iter it;
    nf_iter_init(&it, &p->r1, ra);
    for (int64_t r = ra; r < rb; r++, nf_iter_next(&it, &p->r1))
        for (int64_t c = ca; c < cb; c++) {
            const NF_A v = NF_LOAD(x[it.off + c * p->r2_stride]);
            if (v != v)
                return 1;
        }
    return 0;
}

/* Whether rows [ra, rb) of R1 of the column at xv hold a NaN. */
static NF_COLD int NF_NAME(has_nan_col, NF_TAG)(const nf_plan *p, const void *xv, int64_t ra, int64_t rb)
{
    const NF_T *x = (const NF_T *)xv;
    nf_iter it;
    nf_iter_init(&it, &p->r1, ra);
    for (int64_t r = ra; r < rb; r++, nf_iter_next(&it, &p->r1)) {
        const NF_A v = NF_LOAD(x[it.off]);
        if (v != v)
            return 1;
    }
    return 0;
}

/* Row mode: rows [ra, rb) of R1, elements [ca, cb) of each R2 row, into (*lo, *hi); `finite`: whether
 * the item's moments are finite (else it may hold a NaN). */
static void NF_NAME(range_rows, NF_TAG)(const nf_plan *p, const void *xv, int64_t ra, int64_t rb, int64_t ca,
                                        int64_t cb, int finite, double *lo, double *hi)
{
    const NF_T *x = (const NF_T *)xv;
    const int64_t s2 = p->r2_stride;
    NF_A l = (NF_A)INFINITY, h = -(NF_A)INFINITY;
    NF_V vl[4], vh[4]; /* four chains: the selects' latency, not the loads, would bound one */
    for (int j = 0; j < NF_W; j++)
        for (int u = 0; u < 4; u++)
            vl[u][j] = l, vh[u][j] = h;
    nf_iter it;
    nf_iter_init(&it, &p->r1, ra);
    for (int64_t r = ra; r < rb; r++, nf_iter_next(&it, &p->r1)) {
        const NF_T *row = x + it.off;
        int64_t c = ca;
        if (s2 == 1) {
            for (; c + 4 * NF_W <= cb; c += 4 * NF_W)
                for (int u = 0; u < 4; u++)
                    NF_NAME(vrange, NF_TAG)(NF_VLOAD(row + c + u * NF_W), &vl[u], &vh[u]);
            for (; c + NF_W <= cb; c += NF_W)
                NF_NAME(vrange, NF_TAG)(NF_VLOAD(row + c), &vl[0], &vh[0]);
        }
        for (; c < cb; c++) {
            const NF_A v = NF_LOAD(row[c * s2]);
            l = NF_NAME(smin, NF_TAG)(l, v);
            h = NF_NAME(smax, NF_TAG)(h, v);
        }
    }
    for (int u = 0; u < 4; u++)
        for (int j = 0; j < NF_W; j++) {
            l = NF_NAME(smin, NF_TAG)(l, vl[u][j]);
            h = NF_NAME(smax, NF_TAG)(h, vh[u][j]);
        }
    *lo = l, *hi = h;
    if (!finite && NF_NAME(has_nan_rows, NF_TAG)(p, xv, ra, rb, ca, cb))
        *lo = *hi = NAN;
}

/* Column-mode strip: nv (1 or 4, a constant once inlined) vectors of columns from k, down the nr rows of
 * a block, the accumulators in registers. */
static NF_INLINE void NF_NAME(range_strip, NF_TAG)(const NF_T *x, const int64_t *off, int64_t nr, int64_t k,
                                                   int nv, NF_A *l, NF_A *h)
{
    NF_V vl[4], vh[4];
    for (int j = 0; j < nv; j++) {
        memcpy(&vl[j], l + k + j * NF_W, sizeof vl[j]);
        memcpy(&vh[j], h + k + j * NF_W, sizeof vh[j]);
    }
    for (int64_t r = 0; r < nr; r++)
        for (int j = 0; j < nv; j++)
            NF_NAME(vrange, NF_TAG)(NF_VLOAD(x + off[r] + k + j * NF_W), &vl[j], &vh[j]);
    for (int j = 0; j < nv; j++) {
        memcpy(l + k + j * NF_W, &vl[j], sizeof vl[j]);
        memcpy(h + k + j * NF_W, &vh[j], sizeof vh[j]);
    }
}

/* Column mode: rows [ra, rb) of R1 and nk <= NF_KTILE columns of K from xv, into lo[] and hi[]; blocks of
 * NF_RB rows (in L1) walked a strip of columns at a time, as the moments engine's column mode does.
 * mean[] and m2[]: the columns' moments over the same rows (where not finite, a column may hold a NaN). */
static void NF_NAME(range_cols, NF_TAG)(const nf_plan *p, const void *xv, int64_t ra, int64_t rb, int64_t nk,
                                        const double *mean, const double *m2, double *lo, double *hi)
{
    const NF_T *x = (const NF_T *)xv;
    const int64_t ks = p->k_stride, nv = ks == 1 ? nk - nk % NF_W : 0, n4 = nv - nv % (4 * NF_W);
    NF_A l[NF_KTILE], h[NF_KTILE];
    int64_t off[NF_RB];
    for (int64_t k = 0; k < nk; k++)
        l[k] = (NF_A)INFINITY, h[k] = -(NF_A)INFINITY;
    nf_iter it;
    nf_iter_init(&it, &p->r1, ra);
    for (int64_t r0 = ra; r0 < rb; r0 += NF_RB) {
        const int64_t nr = rb - r0 < NF_RB ? rb - r0 : NF_RB;
        nf_next_offsets(&it, &p->r1, nr, off);
        int64_t k = 0;
        for (; k < n4; k += 4 * NF_W)
            NF_NAME(range_strip, NF_TAG)(x, off, nr, k, 4, l, h);
        for (; k < nv; k += NF_W)
            NF_NAME(range_strip, NF_TAG)(x, off, nr, k, 1, l, h);
        for (; k < nk; k++) /* leftover or strided columns */
            for (int64_t r = 0; r < nr; r++) {
                const NF_A v = NF_LOAD(x[off[r] + k * ks]);
                l[k] = NF_NAME(smin, NF_TAG)(l[k], v);
                h[k] = NF_NAME(smax, NF_TAG)(h[k], v);
            }
    }
    for (int64_t k = 0; k < nk; k++) {
        lo[k] = l[k], hi[k] = h[k];
        if (!(isfinite(mean[k]) && isfinite(m2[k])) && NF_NAME(has_nan_col, NF_TAG)(p, x + k * ks, ra, rb))
            lo[k] = hi[k] = NAN;
    }
}

#undef NF_NAME
#undef NF_NAME2
