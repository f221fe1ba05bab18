/* Backward kernels for one storage type, instantiated by backward.c through each_dtype.h (which lists
 * the parameters). Notation: z = (x - s) * a + c is the forward's pre-activation, s the mean rounded to
 * NF_A; g = dy * act'(z). dy is laid out like x. */

#define NF_NAME2(a, b) a##_##b
#define NF_NAME(a, b) NF_NAME2(a, b)

#include "block_tmpl.h"

/* 0 where z <= 0, else e: ReLU's derivative applied, as PyTorch's threshold_backward (0 at 0; at NaN the
 * gradient passes, as the NaN itself does forward). */
static NF_INLINE NF_V NF_NAME(vrelu_mask, NF_TAG)(NF_V e, NF_V z)
{
    const NF_V zero = {0};
    return (NF_V)((NF_VI)e & ~(NF_VI)(z <= zero));
}

/* Whether float holds a row's gradient coefficients, computed in double: rs^2 (which scales x - mean
 * into the gradient) within float's normal range, the coefficient q of x - mean, the constant r and
 * the largest |M| (g's part taken off before scaling: its mean, which passes float's range where a
 * weight over 1 scales a grad_out near it) finite in float. Always, in double. */
static NF_INLINE int NF_NAME(coef_fit, NF_TAG)(double rs, double q, double r, double m)
{
    return sizeof(NF_A) == sizeof(double) || (rs * rs >= 0x1p-126 && rs * rs <= 0x1p127 && fabs(q) <= 0x1p127 &&
                                              fabs(r) <= 0x1p127 && fabs(m) <= 0x1p127);
}

/* Whether a row's data spans past float's range (normc.h's NF_SPAN_RSTD): x - s then overflows float, so
 * the row's sums and gradient are taken in double from the start. */
static NF_INLINE int NF_NAME(spans, NF_TAG)(double rs) { return sizeof(NF_A) < sizeof(double) && rs < NF_SPAN_RSTD; }

/* g = dy * act'(z), in double (the product of two floats is exact there, so rounding it to float gives
 * float's product, without its overflow). ReLU selects, as vrelu_mask and PyTorch's threshold_backward:
 * 0 where z <= 0 whatever dy is (an inf or NaN dy there gives 0, not inf * 0), dy elsewhere and at NaN. */
static NF_INLINE double NF_NAME(gact, NF_TAG)(NF_A dy, NF_A z, int act)
{
    NF_A e;
    switch (act) {
    case NF_ACT_RELU: return z <= 0 ? 0 : dy;
    case NF_ACT_SIGMOID: e = 1 / (1 + NF_EXP(-z)); return (double)dy * (e * (1 - e));
    case NF_ACT_SILU: /* at +-inf its limits 1 and 0, not inf * 0 */
        e = 1 / (1 + NF_EXP(-z));
        return (double)dy * (isinf(z) ? (z > 0) : e * (1 + z * (1 - e)));
    default: return dy;
    }
}

/* Whether a float block sum must be redone in double: it overflowed (grad_out near float's largest value,
 * or products g * (x - s) past it) where double may hold it. Never for double. */
static NF_INLINE int NF_NAME(sum_lost, NF_TAG)(double tg, double td)
{
    return sizeof(NF_A) < sizeof(double) && !(isfinite(tg) && isfinite(td));
}

/* Adds the sums of g = dy * w * act'(z) (w NULL: 1) and of g * (x - s) over n elements xs apart to *sg and
 * *sd, in double from each element's exact value: the rare blocks whose float sums overflow (sum_lost)
 * and rows whose x - s leaves float's range (spans). z = (x - s) * a + c is the forward's, in float. */
static NF_COLD void NF_NAME(red_wide, NF_TAG)(const NF_T *x, const NF_T *dy, int64_t xs, int64_t n, NF_A s, NF_A a,
                                              NF_A c, const NF_A *w, int act, double *sg, double *sd)
{
    double tg = 0, td = 0;
    for (int64_t j = 0; j < n; j++) {
        const NF_A xj = NF_LOAD(x[j * xs]);
        const double g = NF_NAME(gact, NF_TAG)(NF_LOAD(dy[j * xs]), (xj - s) * a + c, act) * (w ? (double)w[j] : 1);
        tg += g;
        td += g * ((double)xj - (double)s);
    }
    *sg += tg;
    *sd += td;
}

/* Adds the sums of g and of g * (x - s) over n elements xs apart to *sg and *sd: NF_A within blocks of
 * NF_BLOCK, double across them (a block whose float sums overflow redone in double: red_wide). `act` is a
 * constant in each inlined copy. */
static NF_INLINE void NF_NAME(red_seg, NF_TAG)(const NF_T *x, const NF_T *dy, int64_t xs, int64_t n, NF_A s,
                                               NF_A a, NF_A c, double *sg, double *sd, int act)
{
    for (int64_t b = 0; b < n; b += NF_BLOCK) {
        const int64_t e = n - b < NF_BLOCK ? n : b + NF_BLOCK;
        NF_A tg = 0, td = 0;
        int64_t j = b;
        if (xs == 1 && act <= NF_ACT_RELU) {
            const NF_V z = {0}, sv = z + s, av = z + a, cv = z + c;
            NF_V g0 = z, g1 = z, d0 = z, d1 = z;
            for (; j + 2 * NF_W <= e; j += 2 * NF_W) {
                const NF_V u0 = NF_VLOAD(x + j) - sv, u1 = NF_VLOAD(x + j + NF_W) - sv;
                NF_V e0 = NF_VLOAD(dy + j), e1 = NF_VLOAD(dy + j + NF_W);
                if (act == NF_ACT_RELU) {
                    e0 = NF_NAME(vrelu_mask, NF_TAG)(e0, u0 * av + cv);
                    e1 = NF_NAME(vrelu_mask, NF_TAG)(e1, u1 * av + cv);
                }
                g0 += e0;
                g1 += e1;
                d0 += e0 * u0;
                d1 += e1 * u1;
            }
            tg = NF_NAME(hsum, NF_TAG)(g0 + g1);
            td = NF_NAME(hsum, NF_TAG)(d0 + d1);
        }
        for (; j < e; j++) {
            const NF_A u = NF_LOAD(x[j * xs]) - s, g = (NF_A)NF_NAME(gact, NF_TAG)(NF_LOAD(dy[j * xs]), u * a + c, act);
            tg += g;
            td += g * u;
        }
        if (NF_NAME(sum_lost, NF_TAG)(tg, td)) {
            NF_NAME(red_wide, NF_TAG)(x + b * xs, dy + b * xs, xs, e - b, s, a, c, NULL, act, sg, sd);
            continue;
        }
        *sg += tg;
        *sd += td;
    }
}

/* Row mode, one group: rows [ra, rb) of R1, elements [ca, cb) of each R2 row; its (s, a, c) at element
 * poff of prm. */
static void NF_NAME(red_rows, NF_TAG)(const nf_plan *p, const void *xv, const void *dyv, int64_t ra, int64_t rb,
                                      int64_t ca, int64_t cb, const void *const *prm, int64_t poff, int act,
                                      double *sg, double *sd)
{
    const NF_T *x = (const NF_T *)xv, *dy = (const NF_T *)dyv;
    const NF_A s = ((const NF_A *)prm[0])[poff], a = ((const NF_A *)prm[1])[poff], c = ((const NF_A *)prm[2])[poff];
    const int64_t s2 = p->r2_stride;
    nf_iter it;
    nf_iter_init(&it, &p->r1, ra);
    for (int64_t r = ra; r < rb; r++, nf_iter_next(&it, &p->r1)) {
        const int64_t at = it.off + ca * s2;
        NF_BY_ACT(act, NF_NAME(red_seg, NF_TAG), x + at, dy + at, s2, cb - ca, s, a, c, sg, sd);
    }
}

/* Column mode: adds the sums of rows [ra, rb) of R1 over nk <= NF_KTILE columns k_stride apart, starting
 * at xv, to sg[k] and sd[k]; NF_A accumulators within blocks of NF_RB rows, double across them. */
static NF_INLINE void NF_NAME(red_cols_body, NF_TAG)(const nf_plan *p, const NF_T *x, const NF_T *dy, int64_t ra,
                                                     int64_t rb, int64_t nk, const NF_A *s, const NF_A *a,
                                                     const NF_A *c, double *sg, double *sd, int act)
{
    const int64_t ks = p->k_stride;
    const int64_t nv = ks == 1 && act <= NF_ACT_RELU ? nk - nk % NF_W : 0; /* columns handled by vectors */
    NF_A tg[NF_KTILE], td[NF_KTILE];
    int64_t off[NF_RB];
    nf_iter it;
    nf_iter_init(&it, &p->r1, ra);
    for (int64_t r0 = ra; r0 < rb; r0 += NF_RB) {
        const int64_t nr = rb - r0 < NF_RB ? rb - r0 : NF_RB;
        nf_next_offsets(&it, &p->r1, nr, off);
        memset(tg, 0, (size_t)nk * sizeof tg[0]);
        memset(td, 0, (size_t)nk * sizeof td[0]);
        for (int64_t r = 0; r < nr; r++) {
            const NF_T *xr = x + off[r], *dr = dy + off[r];
            int64_t k = 0;
            for (; k < nv; k += NF_W) {
                const NF_V u = NF_VLOAD(xr + k) - NF_NAME(vat, NF_TAG)(s + k);
                NF_V e = NF_VLOAD(dr + k);
                if (act == NF_ACT_RELU)
                    e = NF_NAME(vrelu_mask, NF_TAG)(e, u * NF_NAME(vat, NF_TAG)(a + k) + NF_NAME(vat, NF_TAG)(c + k));
                const NF_V g = NF_NAME(vat, NF_TAG)(tg + k) + e, d = NF_NAME(vat, NF_TAG)(td + k) + e * u;
                memcpy(tg + k, &g, sizeof g);
                memcpy(td + k, &d, sizeof d);
            }
            for (; k < nk; k++) {
                const NF_A u = NF_LOAD(xr[k * ks]) - s[k];
                const NF_A g = (NF_A)NF_NAME(gact, NF_TAG)(NF_LOAD(dr[k * ks]), u * a[k] + c[k], act);
                tg[k] += g;
                td[k] += g * u;
            }
        }
        for (int64_t k = 0; k < nk; k++) {
            if (NF_NAME(sum_lost, NF_TAG)(tg[k], td[k])) {
                for (int64_t r = 0; r < nr; r++)
                    NF_NAME(red_wide, NF_TAG)(x + off[r] + k * ks, dy + off[r] + k * ks, 1, 1, s[k], a[k], c[k], NULL,
                                              act, &sg[k], &sd[k]);
                continue;
            }
            sg[k] += tg[k];
            sd[k] += td[k];
        }
    }
}

/* Column mode, one tile: the tile's parameters (k_ostride apart from element poff of prm) gathered
 * side by side first. */
static void NF_NAME(red_cols, NF_TAG)(const nf_plan *p, const void *xv, const void *dyv, int64_t ra, int64_t rb,
                                      int64_t nk, const void *const *prm, int64_t poff, int act, double *sg,
                                      double *sd)
{
    NF_A q[3][NF_KTILE];
    for (int i = 0; i < 3; i++)
        for (int64_t k = 0; k < nk; k++)
            q[i][k] = ((const NF_A *)prm[i])[poff + k * p->k_ostride];
    NF_BY_ACT(act, NF_NAME(red_cols_body, NF_TAG), p, (const NF_T *)xv, (const NF_T *)dyv, ra, rb, nk, q[0], q[1],
              q[2], sg, sd);
}

/* The elements of one row of gx_body's gx that came out non-finite, again in double from their exact
 * values with the float coefficients (the finite ones keep their bits, whatever else the row holds);
 * g = dy * w * act'(z), w NULL: 1 (layer and RMS norm: w per element, no activation). */
static NF_COLD void NF_NAME(gx_wide, NF_TAG)(const NF_T *x, const NF_T *dy, int64_t xs, NF_T *y, int64_t ys,
                                             const NF_A *const *q, int64_t ps, int64_t n, const NF_A *w, int act)
{
    const NF_A *s = q[0], *a = q[1], *c = q[2], *P = q[3], *M = q[4], *Q = q[5], *R = q[6];
    for (int64_t j = 0; j < n; j++) {
        if (isfinite(NF_LOAD(y[j * ys])))
            continue;
        const int64_t k = j * ps;
        const NF_A xj = NF_LOAD(x[j * xs]);
        const double g = NF_NAME(gact, NF_TAG)(NF_LOAD(dy[j * xs]), (xj - s[k]) * a[k] + c[k], act) * (w ? (double)w[j] : 1);
        const double v = (double)P[k] * (g - (double)M[k]) + (double)R[k];
        y[j * ys] = NF_STORE((NF_A)(Q ? v + (double)Q[k] * ((double)xj - (double)s[k]) : v));
    }
}

/* gx = P * (g - M) + Q * (x - s) + R over nr rows of n elements (x and dy xs apart, gx ys apart, rows xr
 * and yr apart); q = (s, a, c, P, M, Q, R), each ps apart along the row (0: one group per row). M is the
 * part of the result that cancels g's common part (its mean, for a norm): subtracting it before scaling
 * keeps that cancellation exact, so a constant dy gives 0 to the rounding of x's mean, not of P * dy.
 * Q NULL: no Q term (statistics held constant, eval mode), so an infinite x gives P * (g - M) + R as
 * in PyTorch, not 0 * inf. Results that are not finite are redone in double (gx_wide): a float step may
 * overflow (g - M, with grad_out near float's largest value) where the result fits. Non-finite data
 * takes that path too, to the same non-finite values. */
static NF_INLINE void NF_NAME(gx_body, NF_TAG)(const NF_T *x, const NF_T *dy, int64_t xs, NF_T *y, int64_t ys,
                                               const NF_A *const *q, int64_t ps, int64_t n, int64_t nr,
                                               int64_t xr, int64_t yr, int act)
{
    const NF_A *s = q[0], *a = q[1], *c = q[2], *P = q[3], *M = q[4], *Q = q[5], *R = q[6];
    const int has_q = Q != NULL;
    for (int64_t r = 0; r < nr; r++, x += xr, dy += xr, y += yr) {
        int64_t j = 0;
        NF_V lost = {0}; /* the sum of the outputs: not finite if one is (or, rarely, if the sum overflows) */
        NF_A lost1 = 0;
        if (xs == 1 && ys == 1 && act <= NF_ACT_RELU && (ps == 0 || ps == 1)) {
            const NF_V z = {0};
            NF_V sv = z + s[0], av = z + a[0], cv = z + c[0], Pv = z + P[0], Mv = z + M[0];
            NF_V Qv = has_q ? z + Q[0] : z, Rv = z + R[0];
            for (; j + NF_W <= n; j += NF_W) {
                if (ps) { /* loop-invariant: the compiler unswitches it (has_q too) */
                    sv = NF_NAME(vat, NF_TAG)(s + j), av = NF_NAME(vat, NF_TAG)(a + j);
                    cv = NF_NAME(vat, NF_TAG)(c + j), Pv = NF_NAME(vat, NF_TAG)(P + j);
                    Mv = NF_NAME(vat, NF_TAG)(M + j), Rv = NF_NAME(vat, NF_TAG)(R + j);
                    if (has_q)
                        Qv = NF_NAME(vat, NF_TAG)(Q + j);
                }
                const NF_V u = NF_VLOAD(x + j) - sv;
                NF_V e = NF_VLOAD(dy + j);
                if (act == NF_ACT_RELU)
                    e = NF_NAME(vrelu_mask, NF_TAG)(e, u * av + cv);
                const NF_V o = has_q ? Pv * (e - Mv) + Qv * u + Rv : Pv * (e - Mv) + Rv;
                lost += o;
                NF_VSTORE(y + j, o);
            }
        }
        for (; j < n; j++) {
            const int64_t k = j * ps;
            const NF_A u = NF_LOAD(x[j * xs]) - s[k];
            const NF_A g = (NF_A)NF_NAME(gact, NF_TAG)(NF_LOAD(dy[j * xs]), u * a[k] + c[k], act);
            const NF_A o = has_q ? P[k] * (g - M[k]) + Q[k] * u + R[k] : P[k] * (g - M[k]) + R[k];
            lost1 += o;
            y[j * ys] = NF_STORE(o);
        }
        if (sizeof(NF_A) < sizeof(double) && !isfinite(NF_NAME(hsum, NF_TAG)(lost) + lost1))
            NF_NAME(gx_wide, NF_TAG)(x, dy, xs, y, ys, q, ps, n, NULL, act);
    }
}

static void NF_NAME(gx_run, NF_TAG)(const nf_run *r, const void *const *prm, int act)
{
    const NF_A *q[7];
    for (int i = 0; i < 7; i++)
        q[i] = prm[i] ? (const NF_A *)prm[i] + r->poff : NULL; /* Q may be absent */
    NF_BY_ACT(act, NF_NAME(gx_body, NF_TAG), (const NF_T *)r->x, (const NF_T *)r->x2, r->xs, (NF_T *)r->y, r->ys, q,
              r->ps, r->len, r->nr, r->xr, r->yr);
}

/* One statistics group of a channel norm with a single statistic (batch, instance or group norm over
 * channels-first data), its data in cache between the passes: sp->nseg segments of sp->len contiguous
 * elements, segment j of row r at r * row_stride + j * seg_stride, scaled by parameter slot j % nslot.
 * The statistics (given, or computed here), the sums of g and g * (x - s) per slot, the gradient's
 * coefficients, and grad_x. */
static void NF_NAME(seggrad_row, NF_TAG)(const void *xv, const void *dyv, void *gxv, const nf_seggrad *sp, int64_t r)
{
    const NF_T *x = (const NF_T *)xv, *dy = (const NF_T *)dyv;
    NF_T *gx = (NF_T *)gxv;
    const int64_t S = sp->nslot, L = sp->len, base = r * sp->row_stride, first = (r % sp->period) * S;
    const double n = (double)(sp->nseg * L);
    double mu, rs;
    if (sp->mean) {
        mu = sp->mean[r];
        rs = sp->rstd[r];
    } else {
        nf_acc acc = {0, 0, 0};
        const double K = NF_NAME(shift, NF_TAG)(x + base);
        for (int64_t j = 0; j < sp->nseg; j++)
            for (int64_t b = 0; b < L; b += NF_BLOCK) {
                const int64_t len = L - b < NF_BLOCK ? L - b : NF_BLOCK;
                double m, q;
                NF_NAME(seg, NF_TAG)(x + base + j * sp->seg_stride + b, len, (NF_A)K, &m, &q);
                nf_chan(&acc, (double)len, m, q);
            }
        mu = K + acc.mean;
        rs = 1 / sqrt(acc.m2 / n + sp->eps);
    }
    const NF_A s = (NF_A)mu;
    const double dm = (double)s - mu;
    double w[NF_KTILE], b[NF_KTILE], sg[NF_KTILE], sd[NF_KTILE];
    NF_A a[NF_KTILE], c[NF_KTILE];
    for (int64_t k = 0; k < S; k++) {
        w[k] = sp->weight ? (double)((const NF_A *)sp->weight)[first + k] : 1;
        b[k] = sp->bias ? (double)((const NF_A *)sp->bias)[first + k] : 0;
        a[k] = (NF_A)(w[k] * rs);
        c[k] = (NF_A)(b[k] + nf_centring(s, mu, w[k] * rs));
        sg[k] = sd[k] = 0;
    }
    const int wide = NF_NAME(spans, NF_TAG)(rs);
    for (int64_t j = 0; j < sp->nseg; j++) {
        const int64_t k = j % S, at = base + j * sp->seg_stride;
        if (wide) /* rare: g * (x - s) in double, x - s past float's range (as rowgrad_body's) */
            for (int64_t i = 0; i < L; i++) {
                const double xi = (double)NF_LOAD(x[at + i]);
                const double g = NF_NAME(gact, NF_TAG)(NF_LOAD(dy[at + i]), (NF_A)((xi - mu) * w[k] * rs + b[k]), sp->act);
                sg[k] += g, sd[k] += g * (xi - (double)s);
            }
        else
            NF_BY_ACT(sp->act, NF_NAME(red_seg, NF_TAG), x + at, dy + at, 1, L, s, a[k], c[k], &sg[k], &sd[k]);
    }
    /* The gradients with respect to the group's mean and variance, each slot's share summed. */
    double gmu = 0, gvar = 0;
    for (int64_t k = 0; k < S; k++) {
        const double bmu = sd[k] + dm * sg[k]; /* sum of g * (x - mean) */
        gmu -= w[k] * rs * sg[k];
        gvar -= 0.5 * w[k] * rs * (rs * (rs * bmu)); /* rs * bmu first: rs^3 alone over/underflows */
        sp->sum_g[r * S + k] = sg[k];
        sp->sum_gxhat[r * S + k] = rs * bmu;
    }
    const double q = 2 * gvar / n, R0 = gmu / n + q * dm;
    double mmax = 0; /* the largest |M| of the slots, M = -R0 / P */
    for (int64_t k = 0; k < S; k++)
        if (w[k] * rs != 0)
            mmax = fmax(mmax, fabs(R0 / (w[k] * rs)));
    if (!NF_NAME(coef_fit, NF_TAG)(rs, q, R0, mmax)) { /* rare: gx = w rs g + q (x - mean) + gmu / n in double */
        for (int64_t j = 0; j < sp->nseg; j++) {
            const int64_t k = j % S, at = base + j * sp->seg_stride;
            for (int64_t i = 0; i < L; i++) {
                const double u = (double)NF_LOAD(x[at + i]) - mu; /* x - mean: in float it may overflow */
                const double g = NF_NAME(gact, NF_TAG)(NF_LOAD(dy[at + i]), (NF_A)(u * w[k] * rs + b[k]), sp->act);
                gx[at + i] = NF_STORE((NF_A)(w[k] * rs * g + q * u + gmu / n));
            }
        }
        return;
    }
    const NF_A Q = (NF_A)q;
    for (int64_t j = 0; j < sp->nseg; j++) {
        const int64_t k = j % S, at = base + j * sp->seg_stride;
        const double P = w[k] * rs;
        const double m = P != 0 ? -R0 / P : 0; /* past double's range (P near 0): M = 0, R all of R0 */
        const NF_A Pk = (NF_A)P, Mk = isinf(m) ? 0 : (NF_A)m, Rk = (NF_A)(R0 + P * (double)Mk);
        const NF_A *qv[7] = {&s, &a[k], &c[k], &Pk, &Mk, &Q, &Rk};
        NF_BY_ACT(sp->act, NF_NAME(gx_body, NF_TAG), x + at, dy + at, 1, gx + at, 1, qv, 0, L, 1, 0, 0);
    }
}

/* Layer or RMS norm backward of rows [r0, r1) of n contiguous elements, each read twice while in cache:
 * first the sums of g = dy * w and of g * (x - s), then gx = r * (g - k1 - xhat * k2) with k1 and k2
 * their means over the row (xhat = (x - mean) * r; RMS: mean 0, k1 0). dy * xhat and dy are added to
 * gw[j] and gb[j] where they are not NULL. Flags are constants in each inlined copy. */
static NF_INLINE void NF_NAME(rowgrad_body, NF_TAG)(const NF_T *x, const NF_T *dy, NF_T *gx, int64_t n,
                                                    const nf_rowgrad *sp, int64_t r0, int64_t r1, NF_A *gw,
                                                    NF_A *gb, int has_w, int want)
{
    const NF_A *w = (const NF_A *)sp->weight;
    for (int64_t row = r0; row < r1; row++) {
        const NF_T *xr = x + row * n, *dr = dy + row * n;
        NF_T *yr = gx + row * n;
        const double mu = sp->mean ? sp->mean[row] : 0, rs = sp->rstd[row];
        const NF_A s = (NF_A)mu;
        double sg = 0, sd = 0;
        const int wide = NF_NAME(spans, NF_TAG)(rs);
        for (int64_t b = 0; !wide && b < n; b += NF_BLOCK) {
            const int64_t e = n - b < NF_BLOCK ? n : b + NF_BLOCK;
            NF_A tg = 0, td = 0;
            int64_t j = b;
            const NF_V z = {0}, sv = z + s;
            NF_V g0 = z, d0 = z;
            for (; j + NF_W <= e; j += NF_W) {
                NF_V g = NF_VLOAD(dr + j);
                if (has_w)
                    g *= NF_NAME(vat, NF_TAG)(w + j);
                g0 += g;
                d0 += g * (NF_VLOAD(xr + j) - sv);
            }
            tg = NF_NAME(hsum, NF_TAG)(g0);
            td = NF_NAME(hsum, NF_TAG)(d0);
            for (; j < e; j++) {
                const NF_A g = NF_LOAD(dr[j]) * (has_w ? w[j] : 1);
                tg += g;
                td += g * (NF_LOAD(xr[j]) - s);
            }
            sg += tg;
            sd += td;
        }
        /* Rare: x - s past float's range, or a block's float sums overflowed (not finite in double only
         * then): the row's sums again in double. Decided once per row, out of the loops above. */
        if (wide || NF_NAME(sum_lost, NF_TAG)(sg, sd)) {
            sg = sd = 0;
            NF_NAME(red_wide, NF_TAG)(xr, dr, 1, n, s, 1, 0, has_w ? w : NULL, NF_ACT_NONE, &sg, &sd);
        }
        /* gx = P * (g - M) + Q * (x - s) + R, as the channel norms' second pass; x - mean = (x - s) + dm
         * and the roundings of s and M are put back through R, in double. */
        const double dm = (double)s - mu, k1 = sp->mean ? sg / (double)n : 0, k2 = rs * (sd + dm * sg) / (double)n;
        if (!NF_NAME(coef_fit, NF_TAG)(rs, rs * (rs * k2), rs * k1 + rs * (rs * k2) * dm, k1)) {
            /* rare: gx = rs (g - k1) - rs^2 k2 (x - mean) in double */
            for (int64_t j = 0; j < n; j++) {
                const NF_A d = NF_LOAD(dr[j]);
                const double xm = (double)NF_LOAD(xr[j]) - mu; /* x - mean: in float it may overflow */
                yr[j] = NF_STORE((NF_A)(rs * ((double)d * (has_w ? w[j] : 1) - k1) - rs * (rs * k2) * xm));
                if (want) {
                    gw[j] += (NF_A)((double)d * xm * rs);
                    gb[j] += d;
                }
            }
            continue;
        }
        const NF_A P = (NF_A)rs, M = (NF_A)k1, Q = (NF_A)(-rs * (rs * k2));
        const NF_A R = (NF_A)(rs * ((double)M - k1) - rs * (rs * k2) * dm);
        const NF_A rf = (NF_A)rs, cc = (NF_A)nf_centring(s, mu, rs); /* xhat = (x - s) * rf + cc */
        int64_t j = 0;
        const NF_V z = {0}, sv = z + s, Pv = z + P, Mv = z + M, Qv = z + Q, Rv = z + R, rv = z + rf, cv = z + cc;
        NF_V lost = z; /* as gx_body's */
        NF_A lost1 = 0;
        for (; j + NF_W <= n; j += NF_W) {
            const NF_V d = NF_VLOAD(dr + j), u = NF_VLOAD(xr + j) - sv;
            const NF_V o = Pv * ((has_w ? d * NF_NAME(vat, NF_TAG)(w + j) : d) - Mv) + Qv * u + Rv;
            lost += o;
            NF_VSTORE(yr + j, o);
            if (want) {
                const NF_V vw = NF_NAME(vat, NF_TAG)(gw + j) + d * (u * rv + cv), vb = NF_NAME(vat, NF_TAG)(gb + j) + d;
                memcpy(gw + j, &vw, sizeof vw);
                memcpy(gb + j, &vb, sizeof vb);
            }
        }
        for (; j < n; j++) {
            const NF_A d = NF_LOAD(dr[j]), u = NF_LOAD(xr[j]) - s;
            const NF_A o = P * ((has_w ? d * w[j] : d) - M) + Q * u + R;
            lost1 += o;
            yr[j] = NF_STORE(o);
            if (want) {
                gw[j] += d * (u * rf + cc);
                gb[j] += d;
            }
        }
        if (sizeof(NF_A) < sizeof(double) && !isfinite(NF_NAME(hsum, NF_TAG)(lost) + lost1)) {
            const NF_A zero = 0, one = 1, *q[7] = {&s, &one, &zero, &P, &M, &Q, &R};
            NF_NAME(gx_wide, NF_TAG)(xr, dr, 1, yr, 1, q, 0, n, has_w ? w : NULL, NF_ACT_NONE);
        }
    }
}

static void NF_NAME(rowgrad, NF_TAG)(const void *x, const void *dy, void *gx, int64_t n, const nf_rowgrad *sp,
                                     int64_t r0, int64_t r1, void *gw, void *gb)
{
    const NF_T *xt = (const NF_T *)x, *dt = (const NF_T *)dy;
    NF_T *yt = (NF_T *)gx;
    NF_A *pw = (NF_A *)gw, *pb = (NF_A *)gb;
    if (sp->weight && gw)
        NF_NAME(rowgrad_body, NF_TAG)(xt, dt, yt, n, sp, r0, r1, pw, pb, 1, 1);
    else if (sp->weight)
        NF_NAME(rowgrad_body, NF_TAG)(xt, dt, yt, n, sp, r0, r1, pw, pb, 1, 0);
    else if (gw)
        NF_NAME(rowgrad_body, NF_TAG)(xt, dt, yt, n, sp, r0, r1, pw, pb, 0, 1);
    else
        NF_NAME(rowgrad_body, NF_TAG)(xt, dt, yt, n, sp, r0, r1, pw, pb, 0, 0);
}

#undef NF_NAME
#undef NF_NAME2
