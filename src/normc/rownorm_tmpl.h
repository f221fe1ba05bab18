/* Fused row norms for one storage type, instantiated by rownorm.c through each_dtype.h (which lists the
 * parameters). */

#define NF_NAME2(a, b) a##_##b
#define NF_NAME(a, b) NF_NAME2(a, b)

#include "block_tmpl.h"
#include "cols_tmpl.h"

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
        NF_V v = (NF_VLOAD(x + j) - (z + s)) * (z + a) + (z + cc);
        if (has_w)
            v *= NF_NAME(vat, NF_TAG)(w + j);
        if (has_b)
            v += NF_NAME(vat, NF_TAG)(b + j);
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

/* Elements [j0, j1) of row r in double, y = act(((x - mean) * a64) * w + b) with the parameters per
 * element (seg 1) or per segment: the rare rows whose scale or deviations float cannot hold. */
static NF_COLD void NF_NAME(rownorm_wide, NF_TAG)(const NF_T *x, NF_T *y, int64_t n, double mean, double a64,
                                                  const nf_rowspec *sp, int64_t r, int64_t j0, int64_t j1)
{
    const NF_A *w = (const NF_A *)sp->weight, *b = (const NF_A *)sp->bias;
    const int64_t base = (r % sp->period) * (n / sp->seg);
    for (int64_t j = j0; j < j1; j++) {
        const int64_t i = sp->seg > 1 ? base + j / sp->seg : j;
        double v = ((double)NF_LOAD(x[j]) - mean) * a64;
        if (w)
            v *= (double)w[i];
        if (b)
            v += (double)b[i];
        y[j] = NF_STORE((NF_A)nf_act64(v, sp->act));
    }
}

/* The statistics of one chunk of a row, elements [c0, c1) (c0 a multiple of NF_ROW_CHUNK): about shift K
 * as (n, mean, M2) for layer norm, the sum of squares in m2 for RMS and L2. */
static NF_INLINE void NF_NAME(rowpart, NF_TAG)(const NF_T *x, int64_t c0, int64_t c1, nf_rowkind kind, double K, nf_acc *acc)
{
    *acc = (nf_acc){0, 0, 0};
    for (int64_t c = c0; c < c1; c += NF_BLOCK) {
        const int64_t len = c1 - c < NF_BLOCK ? c1 - c : NF_BLOCK;
        if (kind != NF_ROW_LAYER) {
            acc->m2 += NF_NAME(sumsq, NF_TAG)(x + c, len);
            continue;
        }
        double m, q;
        NF_NAME(seg, NF_TAG)(x + c, len, (NF_A)K, &m, &q);
        if (c == c0) /* what nf_chan gives into an empty part, without its divisions */
            *acc = (nf_acc){(double)len, m, q};
        else
            nf_chan(acc, (double)len, m, q);
    }
}

/* rowapply over the rows l < nr with fits[l] set, row l's parameters at [l]; w and b NULL where absent. */
static NF_INLINE void NF_NAME(rows_wb, NF_TAG)(const void *const *xv, void *const *yv, int64_t nr, int64_t n,
                                               const NF_A *s, const NF_A *a, const NF_A *cc, const int *fits,
                                               const NF_A *w, const NF_A *b, int has_w, int has_b)
{
    for (int64_t l = 0; l < nr; l++)
        if (fits[l])
            NF_NAME(rowapply, NF_TAG)(xv[l], yv[l], n, s[l], a[l], cc[l], w, b, has_w, has_b);
}

static NF_INLINE void NF_NAME(rowsapply, NF_TAG)(const void *const *xv, void *const *yv, int64_t nr, int64_t n,
                                                 const NF_A *s, const NF_A *a, const NF_A *cc, const int *fits,
                                                 const NF_A *w, const NF_A *b)
{
    /* Constant flags: each call below is specialised, so absent parameters cost nothing per element. */
    if (w && b)
        NF_NAME(rows_wb, NF_TAG)(xv, yv, nr, n, s, a, cc, fits, w, b, 1, 1);
    else if (w)
        NF_NAME(rows_wb, NF_TAG)(xv, yv, nr, n, s, a, cc, fits, w, b, 1, 0);
    else if (b)
        NF_NAME(rows_wb, NF_TAG)(xv, yv, nr, n, s, a, cc, fits, w, b, 0, 1);
    else
        NF_NAME(rows_wb, NF_TAG)(xv, yv, nr, n, s, a, cc, fits, w, b, 0, 0);
}

/* Whether a row of n elements with variance var and scale a64 is normalized in NF_A: float cannot hold a
 * scale outside its normal range (a tiny eps over a row of zeros: 0 * inf), nor deviations from the mean
 * once n * var, which bounds their squares, nears its largest square. */
static NF_INLINE int NF_NAME(rowfits, NF_TAG)(double var, double a64, int64_t n)
{
    return sizeof(NF_A) == sizeof(double) || (a64 >= 0x1p-126 && a64 <= 0x1p127 && var * (double)n <= 0x1p250);
}

/* Elements [j0, j1) of row r given its mean, var and scale a64 (nf_row_scale): y = (x - s) * a + cc scaled and shifted by the
 * parameters, s and cc by internal.h's centring rule (RMS and L2: s = cc = 0). */
static NF_INLINE void NF_NAME(rowout, NF_TAG)(const NF_T *x, NF_T *y, int64_t n, double mean, double var,
                                               double a64, const nf_rowspec *sp, int64_t r, int64_t j0, int64_t j1)
{
    const NF_A *w = (const NF_A *)sp->weight, *b = (const NF_A *)sp->bias;
    if (!NF_NAME(rowfits, NF_TAG)(var, a64, n)) {
        NF_NAME(rownorm_wide, NF_TAG)(x, y, n, mean, a64, sp, r, j0, j1);
        return;
    }
    const NF_A s = (NF_A)mean, a = (NF_A)a64, cc = (NF_A)nf_centring(s, mean, a64);
    if (sp->seg > 1) { /* one weight and bias per segment: fold them into the segment's a and c */
        const int64_t seg = sp->seg, base = (r % sp->period) * (n / seg);
        for (int64_t j = j0 / seg; j * seg < j1; j++) {
            const NF_A wj = w ? w[base + j] : 1, aj = a * wj, cj = cc * wj + (b ? b[base + j] : 0);
            const void *p[3] = {&s, &aj, &cj};
            const int64_t lo = j * seg > j0 ? j * seg : j0, hi = (j + 1) * seg < j1 ? (j + 1) * seg : j1;
            NF_FN(nf_apply_rows)(NF_DT, x + lo, y + lo, p, 0, hi - lo, sp->act, 1, 0, 0);
        }
        return;
    }
    const void *xs = x + j0;
    void *ys = y + j0;
    const int fits = 1;
    NF_NAME(rowsapply, NF_TAG)(&xs, &ys, 1, j1 - j0, &s, &a, &cc, &fits, w ? w + j0 : w, b ? b + j0 : b);
}

/* A row's statistics from its chunks' (parts[0..nch)), merged in chunk order whoever computed them. */
static NF_INLINE void NF_NAME(rowstats, NF_TAG)(const nf_acc *parts, int64_t nch, int64_t n, const nf_rowspec *sp,
                                                double K, double *mean, double *var)
{
    nf_acc acc = parts[0]; /* what nf_chan gives into an empty merge, without its divisions */
    for (int64_t c = 1; c < nch; c++) {
        if (sp->kind != NF_ROW_LAYER)
            acc.m2 += parts[c].m2;
        else
            nf_chan(&acc, parts[c].n, parts[c].mean, parts[c].m2);
    }
    *mean = sp->kind == NF_ROW_LAYER ? K + acc.mean : 0;
    *var = sp->kind == NF_ROW_L2 ? acc.m2 : acc.m2 / (double)n;
}

/* Row x's elements [j, j + NF_W) as a vector, the lanes at n and past it pad. */
static NF_INLINE NF_V NF_NAME(rowvec, NF_TAG)(const NF_T *x, int64_t j, int64_t n, NF_A pad)
{
    if (j + NF_W <= n)
        return NF_VLOAD(x + j);
    NF_V v = (NF_V){0} + pad;
    for (int64_t l = 0; j + l < n; l++)
        v[l] = NF_LOAD(x[j + l]);
    return v;
}

/* The statistics of nr <= NF_W short rows (n <= NF_TILE_MAX) at once, as rowstats gives them, into NF_W
 * lanes of mean, var and ok: each row's sums are taken in its vectors' lanes, and the NF_W rows' lanes
 * are then summed together (vrows), so a row of one or two vectors pays a share of one transposition,
 * not horizontal sums of its own. Layer norm: seg's steps (shift K, the mean s of x - K, then the sums of
 * d = x - s and of d^2), with padding lanes that add exact zeros; RMS and L2: the sum of squares. ok[i] is
 * 0 where row i's squares do not hold their digits unscaled (a centre under NF_TINY_CENTRE, or not
 * pass2_ok): the caller redoes that row alone. A row's results depend on its own elements only, not on
 * its lane-mates. */
static NF_INLINE void NF_NAME(rowtile, NF_TAG)(const void *const *xv, int64_t nr, int64_t n, nf_rowkind kind,
                                               double *mean, double *var, int *ok)
{
    const NF_V z = {0};
    const NF_T *x[NF_W];
    NF_V acc[NF_W], sq[NF_W], K = z, s = z;
    for (int l = 0; l < NF_W; l++) /* lanes past nr repeat row 0 */
        x[l] = (const NF_T *)xv[l < nr ? l : 0];
    if (kind == NF_ROW_LAYER) {
        for (int l = 0; l < NF_W; l++) {
            const NF_A k = (NF_A)NF_NAME(shift, NF_TAG)(x[l]);
            NF_V a = z;
            for (int64_t j = 0; j < n; j += NF_W)
                a += NF_NAME(rowvec, NF_TAG)(x[l], j, n, k) - k;
            K[l] = k, acc[l] = a;
        }
        s = K + NF_NAME(vrows, NF_TAG)(acc) / (NF_A)n;
    }
    for (int l = 0; l < NF_W; l++) {
        NF_V c = z, q = z;
        for (int64_t j = 0; j < n; j += NF_W) {
            const NF_V d = NF_NAME(rowvec, NF_TAG)(x[l], j, n, s[l]) - s[l];
            c += d;
            q += d * d;
        }
        acc[l] = c, sq[l] = q;
    }
    const NF_V q = NF_NAME(vrows, NF_TAG)(sq), c = kind == NF_ROW_LAYER ? NF_NAME(vrows, NF_TAG)(acc) : z;
    const double inv_n = 1.0 / (double)n;
    _Static_assert(NF_ROW_BATCH % NF_W == 0, "rowbatch's arrays hold whole tiles");
#pragma omp simd /* lanes past nr too (copies of row 0): whole vectors here and downstream */
    for (int l = 0; l < NF_W; l++) {
        double m = 0, m2 = (double)q[l];
        if (kind == NF_ROW_LAYER) {
            ok[l] = (!NF_NAME(scale_up, NF_TAG)(s[l])) & NF_NAME(pass2_ok, NF_TAG)(q[l], s[l], n, 0);
            NF_NAME(block_out, NF_TAG)(s[l], K[l], c[l], q[l], 1, inv_n, &m, &m2);
            m += (double)K[l];
        } else {
            ok[l] = NF_NAME(pass2_ok, NF_TAG)(q[l], 0, n, 0);
        }
        mean[l] = m;
        var[l] = kind == NF_ROW_L2 ? m2 : m2 / (double)n; /* as rowstats */
    }
}

/* nr <= NF_ROW_BATCH rows of one chunk each, by one thread, each step over all of them before the next,
 * so that the rows' divisions and square roots overlap instead of each row waiting on its own: their
 * statistics (rows up to NF_TILE_MAX long NF_W at a time, rowtile; the rows it hands back and longer ones
 * by rowpart), their scales as vectors, then their outputs. Rows with a weight per element (seg 1) take
 * their float parameters as vectors too and their outputs by rowsapply, as rowout would give them; the
 * rest go through rowout. Row i is at x[i], y[i] and has index r0 + i. Inlined where n is a constant. */
static NF_INLINE void NF_NAME(rowbatch_n, NF_TAG)(const void *const *xv, void *const *yv, int64_t nr, int64_t n,
                                                  const nf_rowspec *sp, int64_t r0)
{
    double mean[NF_ROW_BATCH], var[NF_ROW_BATCH], a64[NF_ROW_BATCH];
    int ok[NF_ROW_BATCH] = {0}, fits[NF_ROW_BATCH];
    if (n <= NF_TILE_MAX)
        for (int64_t i = 0; i < nr; i += NF_W)
            NF_NAME(rowtile, NF_TAG)(xv + i, nr - i < NF_W ? nr - i : NF_W, n, sp->kind, mean + i, var + i, ok + i);
    for (int64_t i = 0; i < nr; i++) {
        if (ok[i])
            continue;
        nf_acc part;
        const double K = sp->kind == NF_ROW_LAYER ? NF_NAME(shift, NF_TAG)(xv[i]) : 0;
        NF_NAME(rowpart, NF_TAG)((const NF_T *)xv[i], 0, n, sp->kind, K, &part);
        NF_NAME(rowstats, NF_TAG)(&part, 1, n, sp, K, &mean[i], &var[i]);
    }
    if (sp->mean)
        for (int64_t i = 0; i < nr; i++)
            sp->mean[r0 + i] = mean[i], sp->var[r0 + i] = var[i];
#pragma omp simd /* vector square roots and divisions */
    for (int64_t i = 0; i < nr; i++)
        a64[i] = nf_row_scale(var[i], sp);
    if (sp->seg > 1) {
        for (int64_t i = 0; i < nr; i++)
            NF_NAME(rowout, NF_TAG)(xv[i], yv[i], n, mean[i], var[i], a64[i], sp, r0 + i, 0, n);
        return;
    }
    NF_A s[NF_ROW_BATCH], a[NF_ROW_BATCH], cc[NF_ROW_BATCH];
#pragma omp simd
    for (int64_t i = 0; i < nr; i++) {
        fits[i] = NF_NAME(rowfits, NF_TAG)(var[i], a64[i], n);
        s[i] = (NF_A)mean[i], a[i] = (NF_A)a64[i], cc[i] = (NF_A)nf_centring(s[i], mean[i], a64[i]);
    }
    NF_NAME(rowsapply, NF_TAG)(xv, yv, nr, n, s, a, cc, fits, (const NF_A *)sp->weight, (const NF_A *)sp->bias);
    for (int64_t i = 0; i < nr; i++)
        if (!fits[i]) /* rare: in double */
            NF_NAME(rowout, NF_TAG)(xv[i], yv[i], n, mean[i], var[i], a64[i], sp, r0 + i, 0, n);
}

/* rowbatch_n, the usual short lengths compiled each for its own (their loops unroll). */
static void NF_NAME(rowbatch, NF_TAG)(const void *const *xv, void *const *yv, int64_t nr, int64_t n,
                                      const nf_rowspec *sp, int64_t r0)
{
    switch (n) {
    case 8: NF_NAME(rowbatch_n, NF_TAG)(xv, yv, nr, 8, sp, r0); break;
    case 16: NF_NAME(rowbatch_n, NF_TAG)(xv, yv, nr, 16, sp, r0); break;
    case 32: NF_NAME(rowbatch_n, NF_TAG)(xv, yv, nr, 32, sp, r0); break;
    case 64: NF_NAME(rowbatch_n, NF_TAG)(xv, yv, nr, 64, sp, r0); break;
    default: NF_NAME(rowbatch_n, NF_TAG)(xv, yv, nr, n, sp, r0); break;
    }
}

/* Row r of n > NF_ROW_CHUNK elements, by the nt threads of the current team (t: this one; nt 1: no team),
 * which share parts[ceil(n / NF_ROW_CHUNK)]: each its chunks' statistics, then (after a barrier) the
 * merge, and its share of the output. The same chunks and merge order at any nt, so the same bits, and
 * the same steps as rowbatch. */
static void NF_NAME(rownorm, NF_TAG)(const void *xv, void *yv, int64_t n, const nf_rowspec *sp, int64_t r,
                                     nf_acc *parts, int t, int nt)
{
    const NF_T *x = (const NF_T *)xv;
    NF_T *y = (NF_T *)yv;
    const int64_t nch = (n + NF_ROW_CHUNK - 1) / NF_ROW_CHUNK;
    const double K = sp->kind == NF_ROW_LAYER ? NF_NAME(shift, NF_TAG)(x) : 0;
    for (int64_t c = nch * t / nt; c < nch * (t + 1) / nt; c++)
        NF_NAME(rowpart, NF_TAG)(x, c * NF_ROW_CHUNK, n - c * NF_ROW_CHUNK < NF_ROW_CHUNK ? n : (c + 1) * NF_ROW_CHUNK,
                                 sp->kind, K, &parts[c]);
    if (nt > 1) {
#pragma omp barrier
    }
    double mean, var;
    NF_NAME(rowstats, NF_TAG)(parts, nch, n, sp, K, &mean, &var);
    if (t == 0 && sp->mean)
        sp->mean[r] = mean, sp->var[r] = var;
    /* the output split on 64-element boundaries (whole cache lines of y per thread) */
    const int64_t j0 = t == 0 ? 0 : (n * t / nt) & ~(int64_t)63, j1 = t == nt - 1 ? n : (n * (t + 1) / nt) & ~(int64_t)63;
    NF_NAME(rowout, NF_TAG)(x, y, n, mean, var, nf_row_scale(var, sp), sp, r, j0, j1);
    nf_mark();
    if (nt > 1) {
#pragma omp barrier /* parts are the next row's */
    }
}

/* Chunk ch of one channels-last sample at xv (nf_col_work's chunk of rows, every tile of columns), as
 * nf_moments' column mode reduces it: per column, (n, mean of x - K, M2) into parts[column * n_chunks +
 * ch], K the first element of the column's group of `group`. */
static void NF_NAME(lastchunk, NF_TAG)(const nf_plan *q, const void *xv, const nf_cols *cw, int64_t group,
                                       int64_t ch, nf_acc *parts)
{
    for (int64_t t = 0; t < cw->n_tiles; t++) {
        const nf_col_item it = nf_col_at(cw, ch * cw->n_tiles + t);
        double n = 0, mu[NF_KTILE], m2[NF_KTILE], K[NF_KTILE];
        NF_NAME(cols, NF_TAG)(q, (const NF_T *)xv + it.k0, group, it.k0 % group, it.ra, it.rb, it.nk, K, &n, mu, m2);
        for (int64_t k = 0; k < it.nk; k++)
            parts[(it.k0 + k) * cw->n_chunks + ch] = (nf_acc){n, mu[k], m2[k]};
    }
}

#undef NF_NAME
#undef NF_NAME2
