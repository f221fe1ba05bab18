/* Column-mode statistics for one storage type (cols_<tag> and its steps), for the NF_T, NF_A, NF_V, NF_W,
 * NF_LOAD, NF_VLOAD and NF_TAG of the including template (and its NF_NAME), after block_tmpl.h: the
 * moments' column mode (moments_tmpl.h) and the channels-last group norm (rownorm_tmpl.h), which must
 * give the same bits. */

/* Column-mode block centres s = K + mean of x - K over the nk columns (k_stride ks apart; the first nv
 * contiguous, handled by vectors): rows streamed in order, eight at a time, so that memory is read front
 * to back. K8 is 8 K, exact (a power of two): eight rows are summed before it is taken off, so constant
 * columns still sum to exactly 0 (pass 2, centred here, puts the rounding back). */
static NF_INLINE void NF_NAME(col_means, NF_TAG)(const NF_T *x, const int64_t *off, int64_t nr, int64_t nv,
                                                 int64_t nk, int64_t ks, const NF_A *K, const NF_A *K8, NF_A *s)
{
    const NF_V z = {0};
    for (int64_t k = 0; k < nv; k += NF_W)
        memcpy(s + k, &z, sizeof z);
    int64_t r = 0;
    for (; r + 8 <= nr; r += 8) {
        const NF_T *const a[8] = {x + off[r],     x + off[r + 1], x + off[r + 2], x + off[r + 3],
                                  x + off[r + 4], x + off[r + 5], x + off[r + 6], x + off[r + 7]};
        for (int64_t k = 0; k < nv; k += NF_W) {
            NF_V t, kv;
            memcpy(&t, s + k, sizeof t);
            memcpy(&kv, K8 + k, sizeof kv);
            t += (((NF_VLOAD(a[0] + k) + NF_VLOAD(a[1] + k)) + (NF_VLOAD(a[2] + k) + NF_VLOAD(a[3] + k))) +
                  ((NF_VLOAD(a[4] + k) + NF_VLOAD(a[5] + k)) + (NF_VLOAD(a[6] + k) + NF_VLOAD(a[7] + k)))) - kv;
            memcpy(s + k, &t, sizeof t);
        }
    }
    for (; r < nr; r++)
        for (int64_t k = 0; k < nv; k += NF_W) {
            NF_V t, kv;
            memcpy(&t, s + k, sizeof t);
            memcpy(&kv, K + k, sizeof kv);
            t += NF_VLOAD(x + off[r] + k) - kv;
            memcpy(s + k, &t, sizeof t);
        }
    for (int64_t k = nv; k < nk; k++) { /* leftover or strided columns */
        NF_A t = 0;
        for (r = 0; r < nr; r++)
            t += NF_LOAD(x[off[r] + k * ks]) - K[k];
        s[k] = t;
    }
    for (int64_t k = 0; k < nk; k++)
        s[k] = K[k] + s[k] / (NF_A)nr;
}

/* The sums of d = (x - s) * up and d^2 over the block for nv (1 or 4, a constant once inlined) vectors of
 * columns from k, a strip down the block (now in cache) with the accumulators in registers. */
static NF_INLINE void NF_NAME(col_devs, NF_TAG)(const NF_T *x, const int64_t *off, int64_t nr, int64_t k,
                                                 int nv, const NF_A *s, NF_A up, NF_A *c, NF_A *q)
{
    NF_V m[4], cv[4] = {{0}}, qv[4] = {{0}};
    for (int j = 0; j < nv; j++)
        memcpy(&m[j], s + k + j * NF_W, sizeof m[j]);
    for (int64_t r = 0; r < nr; r++)
        for (int j = 0; j < nv; j++) {
            NF_V d = (NF_VLOAD(x + off[r] + k + j * NF_W) - m[j]) * up;
            cv[j] += d;
            qv[j] += d * d;
        }
    for (int j = 0; j < nv; j++) {
        memcpy(c + k + j * NF_W, &cv[j], sizeof cv[j]);
        memcpy(q + k + j * NF_W, &qv[j], sizeof qv[j]);
    }
}

/* The second pass of a block over its nk columns (as col_means), up 1 or NF_TINY_UP (a constant in each
 * inlined copy). */
static NF_INLINE void NF_NAME(col_pass2, NF_TAG)(const NF_T *x, const int64_t *off, int64_t nr, int64_t nv,
                                                  int64_t nk, int64_t ks, const NF_A *s, NF_A up, NF_A *c,
                                                  NF_A *q)
{
    const int64_t n4 = nv - nv % (4 * NF_W);
    int64_t k;
    for (k = 0; k < n4; k += 4 * NF_W)
        NF_NAME(col_devs, NF_TAG)(x, off, nr, k, 4, s, up, c, q);
    for (; k < nv; k += NF_W)
        NF_NAME(col_devs, NF_TAG)(x, off, nr, k, 1, s, up, c, q);
    for (; k < nk; k++) { /* leftover or strided columns */
        NF_A cs = 0, qs = 0;
        for (int64_t r = 0; r < nr; r++) {
            NF_A d = (NF_LOAD(x[off[r] + k * ks]) - s[k]) * up;
            cs += d;
            qs += d * d;
        }
        c[k] = cs;
        q[k] = qs;
    }
}

/* (mean of x - K, M2) of one column of a block (nr elements x[off[r]], centre s) whose second pass at
 * scale up float could not hold: again at the other scale, or in double (seg_* does the same). */
static NF_COLD void NF_NAME(col_fix, NF_TAG)(const NF_T *x, const int64_t *off, int64_t nr, NF_A s, NF_A K,
                                             int up, double *mean, double *m2)
{
    if (sizeof(NF_A) == sizeof(double)) { /* no other scale: the wide, scaled pass */
        NF_NAME(seg_wide, NF_TAG)(x, off, nr, (double)K, mean, m2);
        return;
    }
    const NF_A f = up ? 1 : NF_TINY_UP;
    NF_A c = 0, q = 0;
    for (int64_t r = 0; r < nr; r++) {
        const NF_A d = (NF_LOAD(x[off[r]]) - s) * f;
        c += d;
        q += d * d;
    }
    if (NF_NAME(pass2_ok, NF_TAG)(q, s, nr, !up))
        NF_NAME(block_out, NF_TAG)(s, K, c, q, up ? 1 : NF_TINY_DOWN, 1.0 / (double)nr, mean, m2);
    else
        NF_NAME(seg_wide, NF_TAG)(x, off, nr, (double)K, mean, m2);
}

/* Whether every q[0..nk) is at least lo and finite (NaN is not), a vector of them at a time. */
static NF_INLINE int NF_NAME(all_fit, NF_TAG)(const NF_A *q, int64_t nk, NF_A lo)
{
    const NF_V z = {0}, lv = z + lo, inf = z + (NF_A)INFINITY;
    NF_VI ok = z == z;
    int64_t k = 0;
    for (; k + NF_W <= nk; k += NF_W) {
        NF_V v;
        memcpy(&v, q + k, sizeof v);
        ok &= (NF_VI)(v >= lv) & (NF_VI)(v < inf);
    }
    int all = 1;
    for (int j = 0; j < NF_W; j++)
        all &= ok[j] != 0;
    for (; k < nk; k++)
        all &= q[k] >= lo && q[k] < (NF_A)INFINITY;
    return all;
}

/* Column mode: rows [ra, rb) of R1 and nk <= NF_KTILE columns of K starting at xv (row 0 of R1), each
 * column shifted by its statistic's first element, that of the first column of its group of `group`
 * adjacent columns (the tile's first column being column g0 of its group), stored in Kd[]. Blocks of
 * NF_RB rows are reduced per column by the two-pass algorithm (vectorised across contiguous columns, a
 * strip of columns at a time down the block) and merged into (n, mean[], m2[]), means of x - Kd. */
static void NF_NAME(cols, NF_TAG)(const nf_plan *p, const void *xv, int64_t group, int64_t g0, int64_t ra,
                                  int64_t rb, int64_t nk, double *Kd, double *n_acc, double *mean, double *m2)
{
    const NF_T *x = (const NF_T *)xv;
    const int64_t ks = p->k_stride;
    const int64_t nv = ks == 1 ? nk - nk % NF_W : 0; /* columns handled by vectors */
    NF_A K[NF_KTILE], K8[NF_KTILE], s[NF_KTILE], c[NF_KTILE], q[NF_KTILE];
    int64_t off[NF_RB];
    for (int64_t k = 0; k < nk; k++) {
        const NF_A v = NF_LOAD(x[(group > 1 ? k - (g0 + k) % group : k) * ks]);
        K[k] = isfinite(v) ? v : 0, K8[k] = 8 * K[k], Kd[k] = K[k];
    }
    nf_iter it;
    nf_iter_init(&it, &p->r1, ra);
    for (int64_t r0 = ra; r0 < rb; r0 += NF_RB) {
        const int64_t nr = rb - r0 < NF_RB ? rb - r0 : NF_RB;
        nf_next_offsets(&it, &p->r1, nr, off);
        NF_NAME(col_means, NF_TAG)(x, off, nr, nv, nk, ks, K, K8, s);
        /* Float only: the whole block scaled up where every centre is tiny (zeros); the columns its
         * scale does not hold are taken again one by one. */
        int up = NF_NAME(scale_up, NF_TAG)(s[0]);
        for (int64_t k = 1; up && k < nk; k++)
            up = NF_NAME(scale_up, NF_TAG)(s[k]);
        if (up)
            NF_NAME(col_pass2, NF_TAG)(x, off, nr, nv, nk, ks, s, NF_TINY_UP, c, q);
        else
            NF_NAME(col_pass2, NF_TAG)(x, off, nr, nv, nk, ks, s, 1, c, q);
        const double nb = (double)nr, inb = 1.0 / nb, na = *n_acc, nt = na + nb;
        const double wb = nb / nt, wab = na / nt * nb;
        /* The common case, every column held at its scale (scaled up: all finite), in a loop of its own
         * without calls (it vectorises); else column by column, the ones float could not hold taken
         * again. */
        const double un = up ? NF_TINY_DOWN : 1;
        if (NF_NAME(all_fit, NF_TAG)(q, nk, up || sizeof(NF_A) == sizeof(double) ? 0 : (NF_A)nr * NF_TINY_SQ))
            for (int64_t k = 0; k < nk; k++) {
                double bm, bq;
                NF_NAME(block_out, NF_TAG)(s[k], K[k], c[k], q[k], un, inb, &bm, &bq);
                nf_chan_col(&mean[k], &m2[k], na, wb, wab, bm, bq);
            }
        else
            for (int64_t k = 0; k < nk; k++) {
                double bm, bq;
                if (NF_NAME(pass2_ok, NF_TAG)(q[k], s[k], nr, up))
                    NF_NAME(block_out, NF_TAG)(s[k], K[k], c[k], q[k], un, inb, &bm, &bq);
                else
                    NF_NAME(col_fix, NF_TAG)(x + k * ks, off, nr, s[k], K[k], up, &bm, &bq);
                nf_chan_col(&mean[k], &m2[k], na, wb, wab, bm, bq);
            }
        *n_acc = nt;
    }
}
