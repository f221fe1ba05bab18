/* Vector types and loads shared by the kernel sources. Each source is compiled once per ISA level, so
 * the vector width here is that level's. */
#ifndef NORMC_SIMD_H
#define NORMC_SIMD_H

#include "internal.h"

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

static NF_INLINE nf_vu32 nf_vload_u16(const uint16_t *p)
{
    nf_vu16 h;
    memcpy(&h, p, sizeof h);
    return __builtin_convertvector(h, nf_vu32);
}

static NF_INLINE nf_vf32 nf_vload_bf16(const uint16_t *p) { return (nf_vf32)(nf_vload_u16(p) << 16); }

/* The vector form of nf_f16_to_f32. */
static NF_INLINE nf_vf32 nf_vload_f16(const uint16_t *p)
{
    const nf_vu32 h = nf_vload_u16(p);
    const nf_vu32 em = (h & 0x7fffu) << 13;
    const nf_vu32 mag = (nf_vu32)((nf_vf32)em * 0x1p112f);
    const nf_vu32 special = (nf_vu32)(em >= (0x7c00u << 13));
    const nf_vu32 bits = (special & (em | 0x7f800000u)) | (~special & mag);
    return (nf_vf32)(bits | ((h & 0x8000u) << 16));
}

static NF_INLINE void nf_vstore_f32(float *p, nf_vf32 v) { memcpy(p, &v, sizeof v); }
static NF_INLINE void nf_vstore_f64(double *p, nf_vf64 v) { memcpy(p, &v, sizeof v); }
static NF_INLINE float nf_load_f32(float v) { return v; }
static NF_INLINE double nf_load_f64(double v) { return v; }

#endif
