/* Moments kernels for one storage type, instantiated by moments.c through each_dtype.h (which lists the
 * parameters). Blocks are reduced by block_tmpl.h's seg_* and merged in double with Chan's formula. */

#define NF_NAME2(a, b) a##_##b
#define NF_NAME(a, b) NF_NAME2(a, b)

#include "block_tmpl.h"

/* Row mode, for one statistic whose data starts at xv, shifted by K: rows [ra, rb) of R1, elements
 * [ca, cb) of each R2 row. Long contiguous rows are reduced in place; short or strided ones are gathered
 * into an L1 buffer first so that every block is full. */
static void NF_NAME(rows, NF_TAG)(const nf_plan *p, const void *xv, double K, int64_t ra, int64_t rb,
                                  int64_t ca, int64_t cb, nf_acc *acc)
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
                NF_NAME(seg, NF_TAG)(x + it.off + c, n, (NF_A)K, &m, &q);
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
                NF_SEG_A(buf, fill, (NF_A)K, &m, &q);
                nf_chan(acc, (double)fill, m, q);
                fill = 0;
            }
        }
    }
    if (fill) {
        NF_SEG_A(buf, fill, (NF_A)K, &m, &q);
        nf_chan(acc, (double)fill, m, q);
    }
}

#include "cols_tmpl.h"

#undef NF_NAME
#undef NF_NAME2

#include "range_tmpl.h"
