/* Small vector helpers of the kernel templates (included through block_tmpl.h, with their NF_NAME, NF_A,
 * NF_V, NF_W and NF_TAG): hsum_<tag>, a vector's lanes summed in a fixed order, so a given ISA always
 * rounds the same way; vat_<tag>, NF_W contiguous NF_A as a vector. */
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
