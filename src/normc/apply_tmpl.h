/* Apply-pass rows for one storage type, included by apply.c once per dtype with
 *   NF_T, NF_A, NF_V, NF_W, NF_LOAD, NF_VLOAD, NF_TAG  as in moments_tmpl.h
 *   NF_STORE  NF_A -> NF_T            NF_EXP  exp for NF_A
 *   NF_VI     integer vector of NF_V's lane width
 *   NF_VSTORE (optional) NF_V -> NF_W contiguous NF_T; without it rows run scalar */

#define NF_NAME2(a, b) a##_##b
#define NF_NAME(a, b) NF_NAME2(a, b)

static NF_INLINE NF_A NF_NAME(act, NF_TAG)(NF_A v, int act)
{
    switch (act) {
    case NF_ACT_RELU: return v < 0 ? 0 : v; /* NaN stays NaN, as in PyTorch */
    case NF_ACT_SIGMOID: return 1 / (1 + NF_EXP(-v));
    case NF_ACT_SILU: return v / (1 + NF_EXP(-v));
    default: return v;
    }
}

/* y[j] = act(x[j] * a[j * ps] + b[j * ps]) for j < n; ps is 0 (one group along the row) or the
 * groups' stride. `act` is a constant in each inlined copy. */
static NF_INLINE void NF_NAME(row_body, NF_TAG)(const NF_T *x, int64_t xs, NF_T *y, int64_t ys, const NF_A *a,
                                                 const NF_A *b, int64_t ps, int64_t n, int act)
{
    int64_t j = 0;
#ifdef NF_VSTORE
    if (xs == 1 && ys == 1 && act <= NF_ACT_RELU && (ps == 0 || ps == 1)) {
        const NF_V z = {0};
        NF_V av = z + a[0], bv = z + b[0];
        for (; j + NF_W <= n; j += NF_W) {
            if (ps) {
                memcpy(&av, a + j, sizeof av);
                memcpy(&bv, b + j, sizeof bv);
            }
            NF_V v = NF_VLOAD(x + j) * av + bv;
            if (act == NF_ACT_RELU)
                v = (NF_V)((NF_VI)v & ~(NF_VI)(v < z));
            NF_VSTORE(y + j, v);
        }
    }
#endif
    for (; j < n; j++)
        y[j * ys] = NF_STORE(NF_NAME(act, NF_TAG)(NF_LOAD(x[j * xs]) * a[j * ps] + b[j * ps], act));
}

static void NF_NAME(row, NF_TAG)(const void *x, int64_t xs, void *y, int64_t ys, const void *a,
                                 const void *b, int64_t ps, int64_t n, int act)
{
    const NF_T *xt = (const NF_T *)x;
    NF_T *yt = (NF_T *)y;
    const NF_A *at = (const NF_A *)a, *bt = (const NF_A *)b;
    switch (act) {
    case NF_ACT_RELU: NF_NAME(row_body, NF_TAG)(xt, xs, yt, ys, at, bt, ps, n, NF_ACT_RELU); break;
    case NF_ACT_SIGMOID: NF_NAME(row_body, NF_TAG)(xt, xs, yt, ys, at, bt, ps, n, NF_ACT_SIGMOID); break;
    case NF_ACT_SILU: NF_NAME(row_body, NF_TAG)(xt, xs, yt, ys, at, bt, ps, n, NF_ACT_SILU); break;
    default: NF_NAME(row_body, NF_TAG)(xt, xs, yt, ys, at, bt, ps, n, NF_ACT_NONE); break;
    }
}

#undef NF_NAME
#undef NF_NAME2
