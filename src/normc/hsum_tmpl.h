/* Small vector helpers of the kernel templates (included through block_tmpl.h, with their NF_NAME, NF_A,
 * NF_V, NF_W and NF_TAG): hsum_<tag>, a vector's lanes summed in a fixed order, so a given ISA always
 * rounds the same way; vat_<tag>, NF_W contiguous NF_A as a vector; vrows_<tag>, the lanes of NF_W vectors
 * summed at once. */
static NF_INLINE NF_A NF_NAME(hsum, NF_TAG)(NF_V v)
{
    NF_A s = 0;
    for (int j = 0; j < NF_W; j++)
        s += v[j];
    return s;
}

static NF_INLINE NF_V NF_NAME(vat, NF_TAG)(const NF_A *p)
{
    NF_V v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Source lanes of the even (o 0) and odd (o 1) halving shuffles of a pair of vectors (a, b): within each
 * 128-bit block of NF_E lanes (one vshufps/vshufpd: half the block's lanes from a, half from b), and
 * between the NF_W / NF_E blocks (one vperm2f128/vshuff32x4). */
#define NF_E (16 / (int)sizeof(NF_A))
#define NF_NB (NF_W / NF_E)
#define NF_IN_BLOCK(i, o)                                                                                  \
    (((i) % NF_E < NF_E / 2 ? (i) / NF_E * NF_E + 2 * ((i) % NF_E)                                        \
                            : NF_W + (i) / NF_E * NF_E + 2 * ((i) % NF_E - NF_E / 2)) + (o))
#define NF_OB(i) ((i) / NF_E)
#define NF_BETWEEN(i, o) \
    (((NF_OB(i) < NF_NB / 2 ? 2 * NF_OB(i) : NF_NB + 2 * (NF_OB(i) - NF_NB / 2)) + (o)) * NF_E + (i) % NF_E)
#if NF_W == 2
#define NF_LANES(f, o) {f(0, o), f(1, o)}
#elif NF_W == 4
#define NF_LANES(f, o) {f(0, o), f(1, o), f(2, o), f(3, o)}
#elif NF_W == 8
#define NF_LANES(f, o) {f(0, o), f(1, o), f(2, o), f(3, o), f(4, o), f(5, o), f(6, o), f(7, o)}
#elif NF_W == 16
#define NF_LANES(f, o)                                                                                     \
    {f(0, o), f(1, o), f(2, o),  f(3, o),  f(4, o),  f(5, o),  f(6, o),  f(7, o),                         \
     f(8, o), f(9, o), f(10, o), f(11, o), f(12, o), f(13, o), f(14, o), f(15, o)}
#else
#error "vrows: unsupported vector width"
#endif
#define NF_HALVE(a, b, f) (__builtin_shuffle(a, b, (NF_VI)NF_LANES(f, 0)) + __builtin_shuffle(a, b, (NF_VI)NF_LANES(f, 1)))

/* Lane i of the result is the sum of v[i]'s lanes (v is overwritten): each step adds pairs of lanes of
 * two vectors into one, within blocks first, so NF_W rows' horizontal sums cost NF_W - 1 steps of two
 * shuffles and an add, where one row's alone costs NF_W - 1 dependent adds. Every v[i] is summed in the
 * same tree, so a lane's sum does not depend on its neighbours. */
static NF_INLINE NF_V NF_NAME(vrows, NF_TAG)(NF_V *v)
{
    int m = NF_W;
    for (; m > NF_NB; m /= 2)
        for (int i = 0; i < m / 2; i++)
            v[i] = NF_HALVE(v[2 * i], v[2 * i + 1], NF_IN_BLOCK);
    for (; m > 1; m /= 2)
        for (int i = 0; i < m / 2; i++)
            v[i] = NF_HALVE(v[2 * i], v[2 * i + 1], NF_BETWEEN);
    return v[0];
}
#undef NF_HALVE
#undef NF_LANES
#undef NF_BETWEEN
#undef NF_OB
#undef NF_IN_BLOCK
#undef NF_NB
#undef NF_E
