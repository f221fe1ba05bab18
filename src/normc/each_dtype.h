/* Instantiates the kernel template NF_TEMPLATE once per storage dtype, in nf_dtype order (instantiate.h),
 * with the parameters the templates take:
 *   NF_T      storage type            NF_A      accumulation type (float, or double for float64)
 *   NF_V      vector of NF_A          NF_W      its lane count       NF_VI  integer vector, same lanes
 *   NF_LOAD   one NF_T -> NF_A        NF_VLOAD  NF_W contiguous NF_T -> NF_V
 *   NF_STORE  NF_A -> NF_T            NF_VSTORE NF_V -> NF_W contiguous NF_T (bit-identical to NF_STORE)
 *   NF_EXP    exp for NF_A            NF_TAG    name suffix          NF_DT  the nf_dtype
 *   NF_SEG_A  block_tmpl.h's seg_* for contiguous NF_A data (the half types gather into float blocks) */

#include "acc_f32.h"
#define NF_T float
#define NF_LOAD nf_load_f32
#define NF_VLOAD nf_vload_f32
#define NF_STORE nf_load_f32
#define NF_VSTORE nf_vstore_f32
#define NF_TAG f32
#define NF_DT NF_F32
#include "instantiate.h"

#define NF_T double
#define NF_A double
#define NF_V nf_vf64
#define NF_VI nf_vi64
#define NF_W NF_W64
#define NF_LOAD nf_load_f64
#define NF_VLOAD nf_vload_f64
#define NF_STORE nf_load_f64
#define NF_VSTORE nf_vstore_f64
#define NF_EXP exp
#define NF_TAG f64
#define NF_DT NF_F64
#define NF_SEG_A seg_f64
#include "instantiate.h"

/* Half types: widened on load, computed in float, rounded to nearest even on store. */
#include "acc_f32.h"
#define NF_T uint16_t
#define NF_LOAD nf_f16_to_f32
#define NF_VLOAD nf_vload_f16
#define NF_STORE nf_f32_to_f16
#define NF_VSTORE nf_vstore_f16
#define NF_TAG f16
#define NF_DT NF_F16
#include "instantiate.h"

#include "acc_f32.h"
#define NF_T uint16_t
#define NF_LOAD nf_bf16_to_f32
#define NF_VLOAD nf_vload_bf16
#define NF_STORE nf_f32_to_bf16
#define NF_VSTORE nf_vstore_bf16
#define NF_TAG bf16
#define NF_DT NF_BF16
#include "instantiate.h"

#undef NF_TEMPLATE
