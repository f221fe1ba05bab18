/* Vector types and loads shared by the kernel sources. Each source is compiled once per ISA level, so
 * the vector width here is that level's. */
#ifndef NORMC_SIMD_H
#define NORMC_SIMD_H

#include "internal.h"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__GNUC__)
#define NF_INLINE inline __attribute__((always_inline))
#define NF_COLD __attribute__((cold, noinline)) /* rare paths, kept out of the hot loops */
#else
#define NF_INLINE inline
#define NF_COLD
#endif

/* f(args..., act) with act a constant in each case, so every activation gets its own inlined loop. */
#define NF_BY_ACT(act, f, ...)                                                                             \
    do {                                                                                                   \
        switch (act) {                                                                                     \
        case NF_ACT_RELU: f(__VA_ARGS__, NF_ACT_RELU); break;                                              \
        case NF_ACT_SIGMOID: f(__VA_ARGS__, NF_ACT_SIGMOID); break;                                        \
        case NF_ACT_SILU: f(__VA_ARGS__, NF_ACT_SILU); break;                                              \
        default: f(__VA_ARGS__, NF_ACT_NONE); break;                                                       \
        }                                                                                                  \
    } while (0)

/* Vectors through GCC/Clang vector extensions: one source, as wide as the ISA this copy is built for. */
#if defined(__AVX512F__)
#define NF_VBYTES 64
#elif defined(__AVX__)
#define NF_VBYTES 32
#else
#define NF_VBYTES 16
#endif
typedef float nf_vf32 __attribute__((vector_size(NF_VBYTES)));
typedef double nf_vf64 __attribute__((vector_size(NF_VBYTES)));
typedef uint32_t nf_vu32 __attribute__((vector_size(NF_VBYTES)));
typedef int32_t nf_vi32 __attribute__((vector_size(NF_VBYTES)));
typedef int64_t nf_vi64 __attribute__((vector_size(NF_VBYTES)));
typedef uint16_t nf_vu16 __attribute__((vector_size(NF_VBYTES / 2)));
#define NF_W32 (NF_VBYTES / 4)
#define NF_W64 (NF_VBYTES / 8)

/* Unaligned loads through memcpy: no aliasing or alignment assumptions, one vector move. */
static NF_INLINE nf_vf32 nf_vload_f32(const float *p)
{
    nf_vf32 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static NF_INLINE nf_vf64 nf_vload_f64(const double *p)
{
    nf_vf64 v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* The half types' vector converts. Where the level has them, one instruction each: NF_W32 16-bit words
 * widened (vpmovzxwd) or narrowed (vpmovdw; AVX2: one pack, without a mask, as the lanes fit), float16
 * converted by F16C, which the avx2 and avx512 levels require. (GCC's convertvector splits the AVX2
 * widening into two halves and an insert: bfloat16 loads were 3x slower.) Elsewhere, portable vector code
 * of the same results. */
#if defined(__AVX512F__)
typedef __m256i nf_vh; /* NF_W32 16-bit words */
#define NF_WIDEN_U16(h) ((nf_vu32)_mm512_cvtepu16_epi32(h))
#define NF_NARROW_U16(v) _mm512_cvtepi32_epi16((__m512i)(v))
#define NF_F16_TO_F32(h) ((nf_vf32)_mm512_cvtph_ps(h))
#define NF_F32_TO_F16(v) _mm512_cvtps_ph((__m512)(v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#elif defined(__AVX2__) && defined(__F16C__)
typedef __m128i nf_vh;
#define NF_WIDEN_U16(h) ((nf_vu32)_mm256_cvtepu16_epi32(h))
#define NF_NARROW_U16(v) _mm_packus_epi32(_mm256_castsi256_si128((__m256i)(v)), _mm256_extracti128_si256((__m256i)(v), 1))
#define NF_F16_TO_F32(h) ((nf_vf32)_mm256_cvtph_ps(h))
#define NF_F32_TO_F16(v) _mm256_cvtps_ph((__m256)(v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
/* One vblendvps for a lane select by an all-ones or zero mask; GCC writes (m & a) | (~m & b) as three. */
#define NF_SELECT_U32(m, a, b) ((nf_vu32)_mm256_blendv_ps((__m256)(b), (__m256)(a), (__m256)(m)))
#else
typedef nf_vu16 nf_vh;
#endif

static NF_INLINE nf_vh nf_vload_h(const uint16_t *p)
{
    nf_vh h;
    memcpy(&h, p, sizeof h);
    return h;
}

static NF_INLINE nf_vu32 nf_vload_u16(const uint16_t *p)
{
#ifdef NF_WIDEN_U16
    return NF_WIDEN_U16(nf_vload_h(p));
#else
    return __builtin_convertvector(nf_vload_h(p), nf_vu32);
#endif
}

/* Lanes <= 0xffff stored as 16-bit words. */
static NF_INLINE void nf_vstore_u16(uint16_t *p, nf_vu32 bits)
{
#ifdef NF_NARROW_U16
    const nf_vh h = NF_NARROW_U16(bits);
#else
    const nf_vh h = __builtin_convertvector(bits, nf_vu16);
#endif
    memcpy(p, &h, sizeof h);
}

static NF_INLINE nf_vf32 nf_vload_bf16(const uint16_t *p) { return (nf_vf32)(nf_vload_u16(p) << 16); }

/* a where the mask m (all ones or zero per lane) is set, else b. */
static NF_INLINE nf_vu32 nf_vselect_u32(nf_vu32 m, nf_vu32 a, nf_vu32 b)
{
#ifdef NF_SELECT_U32
    return NF_SELECT_U32(m, a, b);
#else
    return (m & a) | (~m & b);
#endif
}

/* The vector form of nf_f16_to_f32 (exact either way). */
static NF_INLINE nf_vf32 nf_vload_f16(const uint16_t *p)
{
#ifdef NF_F16_TO_F32
    return NF_F16_TO_F32(nf_vload_h(p));
#else
    const nf_vu32 h = nf_vload_u16(p);
    const nf_vu32 em = (h & 0x7fffu) << 13;
    const nf_vu32 mag = (nf_vu32)((nf_vf32)em * 0x1p112f);
    const nf_vu32 special = (nf_vu32)(em >= (0x7c00u << 13));
    const nf_vu32 bits = (special & (em | 0x7f800000u)) | (~special & mag);
    return (nf_vf32)(bits | ((h & 0x8000u) << 16));
#endif
}

/* float -> bfloat16 / float16, rounding to nearest even: the vector forms of nf_f32_to_bf16 and
 * nf_f32_to_f16, bit for bit (NaN included; F16C rounds float16 the same way). bfloat16 stays with bits:
 * AVX-512 BF16's conversion flushes subnormals to zero, which the scalar path does not. */
static NF_INLINE void nf_vstore_bf16(uint16_t *p, nf_vf32 f)
{
    const nf_vu32 u = (nf_vu32)f;
    const nf_vu32 nan = (nf_vu32)(f != f);
    const nf_vu32 r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    nf_vstore_u16(p, nf_vselect_u32(nan, (u >> 16) | 0x40u, r));
}

static NF_INLINE void nf_vstore_f16(uint16_t *p, nf_vf32 f)
{
#ifdef NF_F32_TO_F16
    const nf_vh h = NF_F32_TO_F16(f);
    memcpy(p, &h, sizeof h);
#else
    const nf_vu32 u0 = (nf_vu32)f, sign = (u0 >> 16) & 0x8000u, u = u0 & 0x7fffffffu;
    const nf_vu32 nan = (nf_vu32)(u > 0x7f800000u), big = (nf_vu32)(u >= 0x47800000u);
    const nf_vu32 tiny = (nf_vu32)(u < 0x38800000u);
    const nf_vu32 inf = (nan & (((u >> 13) & 0x7fffu) | 0x200u)) | (~nan & 0x7c00u);
    const nf_vu32 sub = (nf_vu32)((nf_vf32)u + 0.5f) - 0x3f000000u;
    const nf_vu32 norm = (u + 0xc8000fffu + ((u >> 13) & 1u)) >> 13;
    const nf_vu32 h = (big & inf) | (~big & ((tiny & sub) | (~tiny & norm)));
    nf_vstore_u16(p, h | sign);
#endif
}

static NF_INLINE void nf_vstore_f32(float *p, nf_vf32 v) { memcpy(p, &v, sizeof v); }
static NF_INLINE void nf_vstore_f64(double *p, nf_vf64 v) { memcpy(p, &v, sizeof v); }
static NF_INLINE float nf_load_f32(float v) { return v; }
static NF_INLINE double nf_load_f64(double v) { return v; }

#endif
