/* Moments kernels for one storage type, instantiated by moments.c through each_dtype.h (which lists the
 * parameters). Blocks are reduced by block_tmpl.h's seg_* and merged in double with Chan's formula. */

#define NF_NAME2(a, b) a##_##b
#define NF_NAME(a, b) NF_NAME2(a, b)

#include "block_tmpl.h"

/* Row mode, for one statistic whose data starts at xv: rows [ra, rb) of R1, elements [ca, cb) of each
 * R2 row. Long contiguous rows are reduced in place; short or strided ones are gathered into an L1
 * buffer first so that every block is full. */
static void NF_NAME(rows, NF_TAG)(const nf_plan *p, const void *xv, int64_t ra, int64_t rb, int64_t ca,
                                  int64_t cb, nf_acc *acc)
{
    const NF_T *x = (const NF_T *)xv;
    const int64_t s2 = p->r2_stride, len = cb - ca;
    double m, q;
    nf_iter it;
    nf_iter_init(&it, &p->r1, ra);
    if (s2 == 1 && len >= NF_DIRECT_MIN) {
        for (int64_t r = ra; r < rb; r++, nf_iter_next(&it, &p->r1))
            for (int64_t c = ca; c < cb; c += NF_BLOCK) {
                int64_t n = cb - c < NF_BLOCK ? cb - c : NF_BLOCK;
                NF_NAME(seg, NF_TAG)(x + it.off + c, n, &m, &q);
                nf_chan(acc, (double)n, m, q);
            }
        return;
    }
    NF_A buf[NF_BLOCK];
    int64_t fill = 0;
    for (int64_t r = ra; r < rb; r++, nf_iter_next(&it, &p->r1)) {
        const NF_T *row = x + it.off;
        for (int64_t c = ca; c < cb;) {
            int64_t n = cb - c < NF_BLOCK - fill ? cb - c : NF_BLOCK - fill;
            for (int64_t j = 0; j < n; j++)
                buf[fill + j] = NF_LOAD(row[(c + j) * s2]);
            fill += n;
            c += n;
            if (fill == NF_BLOCK) {
                NF_SEG_A(buf, fill, &m, &q);
                nf_chan(acc, (double)fill, m, q);
                fill = 0;
            }
        }
    }
    if (fill) {
        NF_SEG_A(buf, fill, &m, &q);
        nf_chan(acc, (double)fill, m, q);
    }
}

/* Column-mode block means over the vector columns [0, nv): rows streamed in order, four at a time, so
 * that memory is read front to back. */
static NF_INLINE void NF_NAME(col_means, NF_TAG)(const NF_T *x, const int64_t *off, int64_t nr, int64_t nv,
                                                  NF_A *sum)
{
    const NF_V z = {0};
    for (int64_t k = 0; k < nv; k += NF_W)
        memcpy(sum + k, &z, sizeof z);
    int64_t r = 0;
    for (; r + 4 <= nr; r += 4) {
        const NF_T *a = x + off[r], *b = x + off[r + 1], *c = x + off[r + 2], *d = x + off[r + 3];
        for (int64_t k = 0; k < nv; k += NF_W) {
            NF_V s;
            memcpy(&s, sum + k, sizeof s);
            s += (NF_VLOAD(a + k) + NF_VLOAD(b + k)) + (NF_VLOAD(c + k) + NF_VLOAD(d + k));
            memcpy(sum + k, &s, sizeof s);
        }
    }
    for (; r < nr; r++)
        for (int64_t k = 0; k < nv; k += NF_W) {
            NF_V s;
            memcpy(&s, sum + k, sizeof s);
            s += NF_VLOAD(x + off[r] + k);
            memcpy(sum + k, &s, sizeof s);
        }
    for (int64_t k = 0; k < nv; k++)
        sum[k] /= (NF_A)nr; /* a true division keeps constant columns exact (variance exactly 0) */
}

/* The sums of d and d^2 over the block for nv (1 or 4, a constant once inlined) vectors of columns from
 * k, a strip down the block (now in cache) with the accumulators in registers. */
static NF_INLINE void NF_NAME(col_devs, NF_TAG)(const NF_T *x, const int64_t *off, int64_t nr, int64_t k,
                                                 int nv, const NF_A *mean, NF_A *c, NF_A *q)
{
    NF_V m[4], cv[4] = {{0}}, qv[4] = {{0}};
    for (int j = 0; j < nv; j++)
        memcpy(&m[j], mean + k + j * NF_W, sizeof m[j]);
    for (int64_t r = 0; r < nr; r++)
        for (int j = 0; j < nv; j++) {
            NF_V d = NF_VLOAD(x + off[r] + k + j * NF_W) - m[j];
            cv[j] += d;
            qv[j] += d * d;
        }
    for (int j = 0; j < nv; j++) {
        memcpy(c + k + j * NF_W, &cv[j], sizeof cv[j]);
        memcpy(q + k + j * NF_W, &qv[j], sizeof qv[j]);
    }
}

/* Column mode: rows [ra, rb) of R1 and nk <= NF_KTILE columns of K starting at xv. Blocks of NF_RB rows
 * are reduced per column by the two-pass algorithm (vectorised across contiguous columns, a strip of
 * columns at a time down the block) and merged into (n, mean[], m2[]). */
static void NF_NAME(cols, NF_TAG)(const nf_plan *p, const void *xv, int64_t ra, int64_t rb, int64_t nk,
                                  double *n_acc, double *mean, double *m2)
{
    const NF_T *x = (const NF_T *)xv;
    const int64_t ks = p->k_stride;
    const int64_t nv = ks == 1 ? nk - nk % NF_W : 0; /* columns handled by vectors */
    const int64_t n4 = nv - nv % (4 * NF_W);
    NF_A sum[NF_KTILE], c[NF_KTILE], q[NF_KTILE];
    int64_t off[NF_RB];
    nf_iter it;
    nf_iter_init(&it, &p->r1, ra);
    for (int64_t r0 = ra; r0 < rb; r0 += NF_RB) {
        const int64_t nr = rb - r0 < NF_RB ? rb - r0 : NF_RB;
        nf_next_offsets(&it, &p->r1, nr, off);
        int64_t k;
        NF_NAME(col_means, NF_TAG)(x, off, nr, nv, sum);
        for (k = 0; k < n4; k += 4 * NF_W)
            NF_NAME(col_devs, NF_TAG)(x, off, nr, k, 4, sum, c, q);
        for (; k < nv; k += NF_W)
            NF_NAME(col_devs, NF_TAG)(x, off, nr, k, 1, sum, c, q);
        for (k = nv; k < nk; k++) { /* leftover or strided columns */
            NF_A s = 0, cs = 0, qs = 0;
            for (int64_t r = 0; r < nr; r++)
                s += NF_LOAD(x[off[r] + k * ks]);
            s /= (NF_A)nr;
            for (int64_t r = 0; r < nr; r++) {
                NF_A d = NF_LOAD(x[off[r] + k * ks]) - s;
                cs += d;
                qs += d * d;
            }
            sum[k] = s;
            c[k] = cs;
            q[k] = qs;
        }
        const double nb = (double)nr, inb = 1.0 / nb, na = *n_acc, nt = na + nb;
        const double wb = nb / nt, wab = na / nt * nb;
        for (int64_t k = 0; k < nk; k++) {
            double bm = isfinite(sum[k]) ? (double)sum[k] + (double)c[k] * inb : (double)sum[k];
            double bq = nf_clamp0((double)q[k] - (double)c[k] * (double)c[k] * inb);
            double d = bm - mean[k];
            /* na == 0 takes the block as it is; infinities add up as in a plain sum. */
            mean[k] = na == 0 ? bm : isfinite(d) ? mean[k] + d * wb : mean[k] + bm;
            m2[k] = na == 0 ? bq : m2[k] + bq + d * d * wab;
        }
        *n_acc = nt;
    }
}

#undef NF_NAME
#undef NF_NAME2

#include "range_tmpl.h"
