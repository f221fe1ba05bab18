/* hsum_<tag>: a vector's lanes summed in a fixed order, so a given ISA always rounds the same way.
 * Included by the kernel templates, with their NF_NAME, NF_A, NF_V, NF_W and NF_TAG. */
static NF_INLINE NF_A NF_NAME(hsum, NF_TAG)(NF_V v)
{
    NF_A s = 0;
    for (int j = 0; j < NF_W; j++)
        s += v[j];
    return s;
}
