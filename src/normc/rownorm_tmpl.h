/* Fused row norms for one storage type, instantiated by rownorm.c through each_dtype.h (which lists the
 * parameters). */

#define NF_NAME2(a, b) a##_##b
#define NF_NAME(a, b) NF_NAME2(a, b)

#include "block_tmpl.h"

/* Sum of squares of n <= NF_BLOCK contiguous elements, each scaled by up: 1 (a constant once inlined) or
 * NF_TINY_UP. No cancellation: no shift needed. */
static NF_INLINE NF_A NF_NAME(sumsq_by, NF_TAG)(const NF_T *x, int64_t n, NF_A up)
{
    const NF_V z = {0};
    NF_V a0 = z, a1 = z, a2 = z, a3 = z; /* four chains hide the FMA latency */
    NF_A t = 0;
    int64_t i = 0;
    for (; i + 4 * NF_W <= n; i += 4 * NF_W) {
        NF_V v0 = NF_VLOAD(x + i) * up, v1 = NF_VLOAD(x + i + NF_W) * up;
        NF_V v2 = NF_VLOAD(x + i + 2 * NF_W) * up, v3 = NF_VLOAD(x + i + 3 * NF_W) * up;
        a0 += v0 * v0;
        a1 += v1 * v1;
        a2 += v2 * v2;
        a3 += v3 * v3;
    }
    for (; i + NF_W <= n; i += NF_W) {
        NF_V v0 = NF_VLOAD(x + i) * up;
        a0 += v0 * v0;
    }
    for (; i < n; i++) {
        const NF_A v = NF_LOAD(x[i]) * up;
        t += v * v;
    }
    return NF_NAME(hsum, NF_TAG)((a0 + a1) + (a2 + a3)) + t;
}

/* The same in double, four chains summed in a fixed order: the rare blocks whose squares overflow float
 * (or whose data is not finite). */
static NF_COLD double NF_NAME(sumsq_wide, NF_TAG)(const NF_T *x, int64_t n)
{
    double q[4] = {0, 0, 0, 0};
    for (int64_t i = 0; i < n; i++) {
        const double v = (double)NF_LOAD(x[i]);
        q[i & 3] += v * v;
    }
    return (q[0] + q[1]) + (q[2] + q[3]);
}

/* Sum of squares of n <= NF_BLOCK contiguous elements in double: float's where it holds its digits, else
 * scaled up, else in double, as block_tmpl.h's deviations about a centre of 0. */
static double NF_NAME(sumsq, NF_TAG)(const NF_T *x, int64_t n)
{
    NF_A ss = NF_NAME(sumsq_by, NF_TAG)(x, n, 1);
    if (NF_NAME(pass2_ok, NF_TAG)(ss, 0, n, 0))
        return ss;
    ss = NF_NAME(sumsq_by, NF_TAG)(x, n, NF_TINY_UP);
    if (NF_NAME(pass2_ok, NF_TAG)(ss, 0, n, 1))
        return (double)ss * NF_TINY_DOWN * NF_TINY_DOWN;
    return NF_NAME(sumsq_wide, NF_TAG)(x, n);
}

/* y = ((x - s) * a + cc) * w + b over one row; w and b are used only where has_w / has_b. */
static NF_INLINE void NF_NAME(rowapply, NF_TAG)(const NF_T *x, NF_T *y, int64_t n, NF_A s, NF_A a, NF_A cc,
                                                const NF_A *w, const NF_A *b, int has_w, int has_b)
{
    int64_t j = 0;
    const NF_V z = {0};
    for (; j + NF_W <= n; j += NF_W) {
        NF_V v = (NF_VLOAD(x + j) - (z + s)) * (z + a) + (z + cc), p;
        if (has_w) {
            memcpy(&p, w + j, sizeof p);
            v *= p;
        }
        if (has_b) {
            memcpy(&p, b + j, sizeof p);
            v += p;
        }
        NF_VSTORE(y + j, v);
    }
    for (; j < n; j++) {
        NF_A v = (NF_LOAD(x[j]) - s) * a + cc;
        if (has_w)
            v *= w[j];
        if (has_b)
            v += b[j];
        y[j] = NF_STORE(v);
    }
}

/* Row r in double, y = act(((x - mean) * a64) * w + b) with the parameters per element (seg 1) or per
 * segment: the rare rows whose scale or deviations float cannot hold. */
static NF_COLD void NF_NAME(rownorm_wide, NF_TAG)(const NF_T *x, NF_T *y, int64_t n, double mean, double a64,
                                                  const nf_rowspec *sp, int64_t r)
{
    const NF_A *w = (const NF_A *)sp->weight, *b = (const NF_A *)sp->bias;
    const int64_t base = (r % sp->period) * (n / sp->seg);
    for (int64_t j = 0; j < n; j++) {
        const int64_t i = sp->seg > 1 ? base + j / sp->seg : j;
        double v = ((double)NF_LOAD(x[j]) - mean) * a64;
        if (w)
            v *= (double)w[i];
        if (b)
            v += (double)b[i];
        y[j] = NF_STORE((NF_A)nf_act64(v, sp->act));
    }
}

/* One contiguous row r of n elements: statistics while it streams in, then the output while it is still
 * in cache, y = (x - s) * a + cc scaled and shifted by the parameters, s and cc by internal.h's centring
 * rule (RMS and L2: s = cc = 0). */
static void NF_NAME(rownorm, NF_TAG)(const void *xv, void *yv, int64_t n, const nf_rowspec *sp, int64_t r)
{
    const NF_T *x = (const NF_T *)xv;
    NF_T *y = (NF_T *)yv;
    const NF_A *w = (const NF_A *)sp->weight, *b = (const NF_A *)sp->bias;
    double mean = 0, var;
    if (sp->kind != NF_ROW_LAYER) {
        double ss = 0;
        for (int64_t c = 0; c < n; c += NF_BLOCK)
            ss += NF_NAME(sumsq, NF_TAG)(x + c, n - c < NF_BLOCK ? n - c : NF_BLOCK);
        var = sp->kind == NF_ROW_RMS ? ss / (double)n : ss;
    } else {
        nf_acc acc = {0, 0, 0};
        const double K = NF_NAME(shift, NF_TAG)(x);
        for (int64_t c = 0; c < n; c += NF_BLOCK) {
            const int64_t len = n - c < NF_BLOCK ? n - c : NF_BLOCK;
            double m, q;
            NF_NAME(seg, NF_TAG)(x + c, len, (NF_A)K, &m, &q);
            nf_chan(&acc, (double)len, m, q);
        }
        mean = K + acc.mean;
        var = acc.m2 / (double)n;
    }
    if (sp->mean) {
        sp->mean[r] = mean;
        sp->var[r] = var;
    }
    const double nrm = sqrt(var); /* L2: max(norm, eps), NaN staying NaN (fmax would drop it) */
    const double a64 = sp->kind == NF_ROW_L2 ? 1.0 / (nrm < sp->eps ? sp->eps : nrm) : 1.0 / sqrt(var + sp->eps);
    /* Float cannot hold a scale outside its normal range (a tiny eps over a row of zeros: 0 * inf), nor
     * deviations from the mean once n * var, which bounds their squares, nears its largest square. */
    if (sizeof(NF_A) < sizeof(double) && (!(a64 >= 0x1p-126 && a64 <= 0x1p127) || var * (double)n > 0x1p250)) {
        NF_NAME(rownorm_wide, NF_TAG)(x, y, n, mean, a64, sp, r);
        return;
    }
    const NF_A s = (NF_A)mean, a = (NF_A)a64, cc = (NF_A)nf_centring(s, mean, a64);
    if (sp->seg > 1) { /* one weight and bias per segment: fold them into the segment's a and c */
        const int64_t nseg = n / sp->seg, base = (r % sp->period) * nseg;
        for (int64_t j = 0; j < nseg; j++) {
            const NF_A wj = w ? w[base + j] : 1, aj = a * wj, cj = cc * wj + (b ? b[base + j] : 0);
            const void *p[3] = {&s, &aj, &cj};
            NF_FN(nf_apply_seg)(NF_DT, x + j * sp->seg, y + j * sp->seg, p, sp->seg, sp->act);
        }
        return;
    }
    /* Constant flags: each call below is specialised, so absent parameters cost nothing per element. */
    if (w && b)
        NF_NAME(rowapply, NF_TAG)(x, y, n, s, a, cc, w, b, 1, 1);
    else if (w)
        NF_NAME(rowapply, NF_TAG)(x, y, n, s, a, cc, w, b, 1, 0);
    else if (b)
        NF_NAME(rowapply, NF_TAG)(x, y, n, s, a, cc, w, b, 0, 1);
    else
        NF_NAME(rowapply, NF_TAG)(x, y, n, s, a, cc, w, b, 0, 0);
}

#undef NF_NAME
#undef NF_NAME2
