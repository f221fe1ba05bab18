/* Apply-pass rows for one storage type, instantiated by apply.c through each_dtype.h (which lists the
 * parameters). */

#define NF_NAME2(a, b) a##_##b
#define NF_NAME(a, b) NF_NAME2(a, b)

static NF_INLINE NF_A NF_NAME(act, NF_TAG)(NF_A v, int act)
{
    switch (act) {
    case NF_ACT_RELU: return v < 0 ? 0 : v; /* NaN stays NaN, as in PyTorch */
    case NF_ACT_SIGMOID: return 1 / (1 + NF_EXP(-v));
    case NF_ACT_SILU: return v == -INFINITY ? -(NF_A)0 : v / (1 + NF_EXP(-v)); /* its limit, not -inf / inf */
    default: return v;
    }
}

/* y[j] = act((x[j] - s[j * ps]) * a[j * ps] + c[j * ps]) for j < n, over nr rows xr and yr elements
 * apart that share the parameters; ps is 0 (one group along the row) or the groups' stride. `act` is a
 * constant in each inlined copy. */
static NF_INLINE void NF_NAME(row_body, NF_TAG)(const NF_T *x, int64_t xs, NF_T *y, int64_t ys, const NF_A *s,
                                                 const NF_A *a, const NF_A *c, int64_t ps, int64_t n, int64_t nr,
                                                 int64_t xr, int64_t yr, int act)
{
    for (int64_t r = 0; r < nr; r++, x += xr, y += yr) {
        int64_t j = 0;
        if (xs == 1 && ys == 1 && act <= NF_ACT_RELU && (ps == 0 || ps == 1)) {
            const NF_V z = {0};
            const NF_V s0 = z + s[0], a0 = z + a[0], c0 = z + c[0]; /* one group along the row (ps == 0) */
            for (; j + NF_W <= n; j += NF_W) {
                NF_V sv = s0, av = a0, cv = c0;
                if (ps) { /* loop-invariant: the compiler unswitches it */
                    memcpy(&sv, s + j, sizeof sv);
                    memcpy(&av, a + j, sizeof av);
                    memcpy(&cv, c + j, sizeof cv);
                }
                NF_V v = (NF_VLOAD(x + j) - sv) * av + cv;
                if (act == NF_ACT_RELU)
                    v = (NF_V)((NF_VI)v & ~(NF_VI)(v < z));
                NF_VSTORE(y + j, v);
            }
        }
        for (; j < n; j++)
            y[j * ys] = NF_STORE(NF_NAME(act, NF_TAG)((NF_LOAD(x[j * xs]) - s[j * ps]) * a[j * ps] + c[j * ps], act));
    }
}

/* nr rows (short rows of channels-last data cost one call per run of rows, not one per row). */
static void NF_NAME(row, NF_TAG)(const void *x, int64_t xs, void *y, int64_t ys, const void *const *p,
                                 int64_t ps, int64_t n, int act, int64_t nr, int64_t xr, int64_t yr)
{
    const NF_T *xt = (const NF_T *)x;
    NF_T *yt = (NF_T *)y;
    const NF_A *s = (const NF_A *)p[0], *a = (const NF_A *)p[1], *c = (const NF_A *)p[2];
    NF_BY_ACT(act, NF_NAME(row_body, NF_TAG), xt, xs, yt, ys, s, a, c, ps, n, nr, xr, yr);
}

#undef NF_NAME
#undef NF_NAME2
