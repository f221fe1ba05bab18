/* hsum_<tag>, shift_<tag>, seg_<tag> and their helpers, the block kernels the templates share, for the NF_T,
 * NF_A, NF_V, NF_W, NF_LOAD, NF_VLOAD and NF_TAG of the including template (and its NF_NAME). A block is
 * reduced by the corrected two-pass algorithm while it sits in L1: its mean, then the sums of d = x - mean
 * and of d^2.
 *
 * Each statistic is reduced in a frame shifted by one of its own elements, K (shift_<tag>): blocks give
 * the mean of x - K, so constant data has every deviation exactly 0 at any ISA level, and block means
 * stay small next to the data, so the differences of block means that Chan's merge squares keep their
 * digits.
 *
 * Float accumulation keeps a block's second pass only where float holds its squares (pass2_ok): about a
 * centre under NF_TINY_CENTRE it scales every deviation up by NF_TINY_UP from the start (zeros, tiny data),
 * else where squares may have underflowed it sums them again so scaled; where neither scale holds them
 * (overflow, or infinities and NaN in the data) the block is redone in double (seg_wide_<tag>). */
#include "hsum_tmpl.h"

/* The shift of the statistic whose first element is at x: that element, or 0 where it is not finite (so
 * that infinities add up as in a plain sum). */
static double NF_NAME(shift, NF_TAG)(const void *x)
{
    const double v = (double)NF_LOAD(*(const NF_T *)x);
    return isfinite(v) ? v : 0;
}

/* Whether a second pass scales its deviations from centre s up: float only, about a tiny centre. */
static NF_INLINE int NF_NAME(scale_up, NF_TAG)(NF_A s)
{
    return sizeof(NF_A) < sizeof(double) && s < NF_TINY_CENTRE && s > -NF_TINY_CENTRE;
}

/* Whether a second pass's sum of squares sq over n deviations from centre s, scaled up or not, holds its
 * digits: finite, and scaled up (every nonzero square is then a normal float), or at least n * NF_TINY_SQ
 * (underflow cost it less than float's rounding), or 0 about a centre of at least NF_TINY_CENTRE (every
 * nonzero deviation from it squares to at least 2^-128: all were 0). In double, where a square under- or
 * overflows only with the result, finite (not: sums past DBL_MAX, infinities or NaN in the data). */
static NF_INLINE int NF_NAME(pass2_ok, NF_TAG)(NF_A sq, NF_A s, int64_t n, int up)
{
    return sq < (NF_A)INFINITY &&
           (sizeof(NF_A) == sizeof(double) || up || sq >= (NF_A)n * NF_TINY_SQ ||
            (sq == 0 && !NF_NAME(scale_up, NF_TAG)(s)));
}

/* A block's (mean of x - K, M2) from its centre s and the sums sc and sq of its deviations from s over
 * 1 / inv_n elements, those in units of un. The correction term makes M2 exact to first order in the
 * rounding of s. An infinite or NaN centre stays as it is (NumPy's mean); M2 is then already NaN. */
static NF_INLINE void NF_NAME(block_out, NF_TAG)(NF_A s, NF_A K, NF_A sc, NF_A sq, double un, double inv_n,
                                                 double *mean, double *m2)
{
    const double b = (double)s - (double)K, c = (double)sc;
    *mean = isfinite(b) ? b + c * un * inv_n : b;
    *m2 = nf_clamp0((double)sq - c * c * inv_n) * un * un;
}

/* (mean of x - K, M2) of the n elements x[off[i]] (off NULL: x[i]) in double: the rare blocks whose
 * squares float cannot hold, or whose data is not finite. Four chains, summed in a fixed order. float64
 * data is taken scaled by 2^-16 (exact but for subnormals, which cannot matter next to what sent a block
 * here), so that the sums of a block's differences from K, up to 2048 * 2 * DBL_MAX, do not overflow:
 * then only a result past DBL_MAX is infinite (M2 whose squares overflow is +inf, not inf - inf). */
static NF_COLD void NF_NAME(seg_wide, NF_TAG)(const NF_T *x, const int64_t *off, int64_t n, double K,
                                              double *mean, double *m2)
{
    const double f = sizeof(NF_T) == sizeof(double) ? 0x1p-16 : 1, Kf = K * f;
    double a[4] = {0, 0, 0, 0}, c[4] = {0, 0, 0, 0}, q[4] = {0, 0, 0, 0};
    for (int64_t i = 0; i < n; i++)
        a[i & 3] += (double)NF_LOAD(x[off ? off[i] : i]) * f - Kf;
    const double m = ((a[0] + a[1]) + (a[2] + a[3])) / (double)n;
    for (int64_t i = 0; i < n; i++) {
        const double d = ((double)NF_LOAD(x[off ? off[i] : i]) * f - Kf) - m;
        c[i & 3] += d;
        q[i & 3] += d * d;
    }
    const double sc = (c[0] + c[1]) + (c[2] + c[3]), sq = (q[0] + q[1]) + (q[2] + q[3]);
    *mean = (isfinite(m) ? m + sc / (double)n : m) / f;
    *m2 = (sq == INFINITY ? sq : nf_clamp0(sq - sc * sc / (double)n)) / f / f;
}

/* The sums of d = (x - s) * up and of d^2 over n <= NF_BLOCK contiguous elements, up 1 (a constant once
 * inlined) or NF_TINY_UP. Four chains each: the FMA latency, not the loads, bounds this loop. */
static NF_INLINE void NF_NAME(devs, NF_TAG)(const NF_T *x, int64_t n, NF_A s, NF_A up, NF_A *sc, NF_A *sq)
{
    const NF_V z = {0};
    NF_V c0 = z, c1 = z, c2 = z, c3 = z, q0 = z, q1 = z, q2 = z, q3 = z;
    NF_A tc = 0, tq = 0;
    const int64_t n4 = n - n % (4 * NF_W);
    int64_t i;
    for (i = 0; i < n4; i += 4 * NF_W) {
        NF_V d0 = (NF_VLOAD(x + i) - s) * up, d1 = (NF_VLOAD(x + i + NF_W) - s) * up;
        NF_V d2 = (NF_VLOAD(x + i + 2 * NF_W) - s) * up, d3 = (NF_VLOAD(x + i + 3 * NF_W) - s) * up;
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
        NF_V d0 = (NF_VLOAD(x + i) - s) * up;
        c0 += d0;
        q0 += d0 * d0;
    }
    for (; i < n; i++) {
        NF_A d = (NF_LOAD(x[i]) - s) * up;
        tc += d;
        tq += d * d;
    }
    *sc = NF_NAME(hsum, NF_TAG)((c0 + c1) + (c2 + c3)) + tc;
    *sq = NF_NAME(hsum, NF_TAG)((q0 + q1) + (q2 + q3)) + tq;
}

/* (mean of x - K, M2) of n <= NF_BLOCK contiguous elements; four vector accumulators hide add latency. */
static void NF_NAME(seg, NF_TAG)(const NF_T *x, int64_t n, NF_A K, double *mean, double *m2)
{
    if (n <= 0 || n > NF_BLOCK)
        __builtin_unreachable(); /* callers pass whole blocks or tails of them */
    /* Pass 1 only centres pass 2, which puts its rounding back: groups of four vectors are summed before
     * 4K is taken off, exactly (a power of two), so constant data still sums to exactly 0. */
    const NF_V z = {0}, k1 = z + K, k4 = z + 4 * K;
    NF_V a0 = z, a1 = z;
    NF_A t = 0;
    int64_t i = 0;
    for (; i + 8 * NF_W <= n; i += 8 * NF_W) {
        a0 += ((NF_VLOAD(x + i) + NF_VLOAD(x + i + NF_W)) + (NF_VLOAD(x + i + 2 * NF_W) + NF_VLOAD(x + i + 3 * NF_W))) - k4;
        a1 += ((NF_VLOAD(x + i + 4 * NF_W) + NF_VLOAD(x + i + 5 * NF_W)) +
               (NF_VLOAD(x + i + 6 * NF_W) + NF_VLOAD(x + i + 7 * NF_W))) - k4;
    }
    for (; i + NF_W <= n; i += NF_W)
        a0 += NF_VLOAD(x + i) - k1;
    for (; i < n; i++)
        t += NF_LOAD(x[i]) - K;
    const NF_A s = K + (NF_NAME(hsum, NF_TAG)(a0 + a1) + t) / (NF_A)n;
    NF_A sc, sq;
    int up = NF_NAME(scale_up, NF_TAG)(s);
    if (up)
        NF_NAME(devs, NF_TAG)(x, n, s, NF_TINY_UP, &sc, &sq);
    else
        NF_NAME(devs, NF_TAG)(x, n, s, 1, &sc, &sq);
    if (!NF_NAME(pass2_ok, NF_TAG)(sq, s, n, up)) { /* float: the other scale, or double; double: wide */
        up = !up;
        if (sizeof(NF_A) == sizeof(double)) {
            NF_NAME(seg_wide, NF_TAG)(x, NULL, n, K, mean, m2);
            return;
        }
        if (up)
            NF_NAME(devs, NF_TAG)(x, n, s, NF_TINY_UP, &sc, &sq);
        else
            NF_NAME(devs, NF_TAG)(x, n, s, 1, &sc, &sq);
        if (!NF_NAME(pass2_ok, NF_TAG)(sq, s, n, up)) {
            NF_NAME(seg_wide, NF_TAG)(x, NULL, n, K, mean, m2);
            return;
        }
    }
    NF_NAME(block_out, NF_TAG)(s, K, sc, sq, up ? NF_TINY_DOWN : 1, 1.0 / (double)n, mean, m2);
}
