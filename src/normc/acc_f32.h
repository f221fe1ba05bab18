/* The parameters of float accumulation, shared by float32 and the half types (each_dtype.h). */
#define NF_A float
#define NF_V nf_vf32
#define NF_VI nf_vi32
#define NF_W NF_W32
#define NF_EXP expf
#define NF_SEG_A seg_f32
