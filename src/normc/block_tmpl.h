/* hsum_<tag> and seg_<tag>, the block kernels the templates share, for the NF_T, NF_A, NF_V, NF_W,
 * NF_LOAD, NF_VLOAD and NF_TAG of the including template (and its NF_NAME). A block is reduced by the
 * corrected two-pass algorithm while it sits in L1: its mean, then the sums of d = x - mean and of d^2. */
#include "hsum_tmpl.h"

/* (mean, M2) of n <= NF_BLOCK contiguous elements; four vector accumulators hide add latency. */
static void NF_NAME(seg, NF_TAG)(const NF_T *x, int64_t n, double *mean, double *m2)
{
    if (n <= 0 || n > NF_BLOCK)
        __builtin_unreachable(); /* callers pass whole blocks or tails of them */
    const NF_V z = {0};
    NF_V a0 = z, a1 = z, a2 = z, a3 = z;
    NF_A t = 0;
    int64_t i = 0;
    for (; i + 4 * NF_W <= n; i += 4 * NF_W) {
        a0 += NF_VLOAD(x + i);
        a1 += NF_VLOAD(x + i + NF_W);
        a2 += NF_VLOAD(x + i + 2 * NF_W);
        a3 += NF_VLOAD(x + i + 3 * NF_W);
    }
    for (; i + NF_W <= n; i += NF_W)
        a0 += NF_VLOAD(x + i);
    for (; i < n; i++)
        t += NF_LOAD(x[i]);
    const NF_A m = (NF_NAME(hsum, NF_TAG)((a0 + a1) + (a2 + a3)) + t) / (NF_A)n;

    /* Four chains each for the sums of d and d^2: the FMA latency, not the loads, bounds this loop. */
    NF_V c0 = z, c1 = z, c2 = z, c3 = z, q0 = z, q1 = z, q2 = z, q3 = z;
    NF_A tc = 0, tq = 0;
    const int64_t n4 = n - n % (4 * NF_W);
    for (i = 0; i < n4; i += 4 * NF_W) {
        NF_V d0 = NF_VLOAD(x + i) - m, d1 = NF_VLOAD(x + i + NF_W) - m;
        NF_V d2 = NF_VLOAD(x + i + 2 * NF_W) - m, d3 = NF_VLOAD(x + i + 3 * NF_W) - m;
        c0 += d0;
        c1 += d1;
        c2 += d2;
        c3 += d3;
        q0 += d0 * d0;
        q1 += d1 * d1;
        q2 += d2 * d2;
        q3 += d3 * d3;
    }
    for (; i + NF_W <= n; i += NF_W) {
        NF_V d0 = NF_VLOAD(x + i) - m;
        c0 += d0;
        q0 += d0 * d0;
    }
    for (; i < n; i++) {
        NF_A d = NF_LOAD(x[i]) - m;
        tc += d;
        tq += d * d;
    }
    const double sc = NF_NAME(hsum, NF_TAG)((c0 + c1) + (c2 + c3)) + tc;
    const double sq = NF_NAME(hsum, NF_TAG)((q0 + q1) + (q2 + q3)) + tq;
    /* The correction term makes M2 exact to first order in the rounding of m. An infinite or NaN
     * block mean stays as it is (NumPy's mean); M2 is then already NaN. */
    *mean = isfinite(m) ? (double)m + sc / (double)n : (double)m;
    *m2 = nf_clamp0(sq - sc * sc / (double)n);
}
