/* Fused row norms for one storage type, included by moments.c after moments_tmpl.h with the same
 * macros, plus NF_STORE (NF_A -> NF_T) and, where rows store whole vectors, NF_VSTORE. */

#define NF_NAME2(a, b) a##_##b
#define NF_NAME(a, b) NF_NAME2(a, b)

/* Sum of squares of n <= NF_BLOCK contiguous elements (no cancellation: no shift needed). */
static double NF_NAME(sumsq, NF_TAG)(const NF_T *x, int64_t n)
{
    const NF_V z = {0};
    NF_V a0 = z, a1 = z;
    NF_A t = 0;
    int64_t i = 0;
    for (; i + 2 * NF_W <= n; i += 2 * NF_W) {
        NF_V v0 = NF_VLOAD(x + i), v1 = NF_VLOAD(x + i + NF_W);
        a0 += v0 * v0;
        a1 += v1 * v1;
    }
    for (; i < n; i++)
        t += NF_LOAD(x[i]) * NF_LOAD(x[i]);
    return (double)NF_NAME(hsum, NF_TAG)(a0 + a1) + t;
}

/* One contiguous row of n elements: statistics while it streams in, then
 * y = ((x - s) * a + cc) * w + b while it is still in cache, where s is the mean rounded to NF_A and
 * cc = (s - mean) * a puts its rounding back (RMS norm: s = cc = 0). */
static void NF_NAME(rownorm, NF_TAG)(const void *xv, void *yv, int64_t n, const void *wv, const void *bv,
                                     double eps, int rms)
{
    const NF_T *x = (const NF_T *)xv;
    NF_T *y = (NF_T *)yv;
    const NF_A *w = (const NF_A *)wv, *b = (const NF_A *)bv;
    double mean = 0, var;
    if (rms) {
        double ss = 0;
        for (int64_t c = 0; c < n; c += NF_BLOCK)
            ss += NF_NAME(sumsq, NF_TAG)(x + c, n - c < NF_BLOCK ? n - c : NF_BLOCK);
        var = ss / (double)n;
    } else {
        nf_acc acc = {0, 0, 0};
        for (int64_t c = 0; c < n; c += NF_BLOCK) {
            const int64_t len = n - c < NF_BLOCK ? n - c : NF_BLOCK;
            double m, q;
            NF_NAME(seg, NF_TAG)(x + c, len, &m, &q);
            nf_chan(&acc, (double)len, m, q);
        }
        mean = acc.mean;
        var = acc.m2 / (double)n;
    }
    const double a64 = 1.0 / sqrt(var + eps);
    const NF_A s = (NF_A)mean, a = (NF_A)a64, cc = (NF_A)(((double)s - mean) * a64);
    int64_t j = 0;
#ifdef NF_VSTORE
    const NF_V z = {0};
    for (; j + NF_W <= n; j += NF_W) {
        NF_V wv_, bv_;
        memcpy(&wv_, w + j, sizeof wv_);
        memcpy(&bv_, b + j, sizeof bv_);
        NF_V v = ((NF_VLOAD(x + j) - (z + s)) * (z + a) + (z + cc)) * wv_ + bv_;
        NF_VSTORE(y + j, v);
    }
#endif
    for (; j < n; j++)
        y[j] = NF_STORE(((NF_LOAD(x[j]) - s) * a + cc) * w[j] + b[j]);
}

#undef NF_NAME
#undef NF_NAME2
