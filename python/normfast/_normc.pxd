# Declarations of the C engine (src/normc/include/normc.h).
from libc.stdint cimport int64_t, uint8_t

cdef extern from "normc.h" nogil:
    enum: NF_MAXDIM
    const double NF_SPAN_RSTD
    const double NF_SPAN_SHIFT
    enum: NF_MAX_SLOTS
    ctypedef enum nf_dtype:
        NF_F32
        NF_F64
        NF_F16
        NF_BF16
    ctypedef enum nf_status:
        NF_OK
        NF_EINVAL
        NF_ENOMEM
        NF_ELAYOUT
    ctypedef enum nf_isa:
        NF_ISA_BASELINE
        NF_ISA_AVX2
        NF_ISA_AVX512
        NF_ISA_COUNT
    ctypedef struct nf_plan:
        int64_t count

    nf_status nf_plan_make(nf_plan *plan, int ndim, const int64_t *shape, const int64_t *strides,
                           const int64_t *out_strides, const int64_t *y_strides,
                           const unsigned char *reduce)
    nf_status nf_moments(const nf_plan *plan, nf_dtype dtype, const void *x, nf_dtype out_dtype, void *mean,
                         void *var, double ddof, double *lo, double *hi, double *shift)
    ctypedef enum nf_act:
        NF_ACT_NONE
        NF_ACT_RELU
        NF_ACT_SIGMOID
        NF_ACT_SILU
    nf_status nf_apply(const nf_plan *plan, nf_dtype dtype, const void *x, void *y, const void *shift,
                       const void *scale, const void *bias, nf_act act)
    ctypedef enum nf_rowkind:
        NF_ROW_LAYER
        NF_ROW_RMS
        NF_ROW_L2
    ctypedef struct nf_rowspec:
        double eps
        nf_rowkind kind
        const void *weight
        const void *bias
        int64_t seg
        int64_t period
        nf_act act
        double *mean
        double *var
        int max_threads
    nf_status nf_rownorm(const nf_plan *plan, nf_dtype dtype, const void *x, void *y, const nf_rowspec *spec)
    nf_status nf_grad_sums(const nf_plan *plan, nf_dtype dtype, const void *x, const void *dy, const void *shift,
                           const void *scale, const void *bias, nf_act act, double *sum_g, double *sum_gd)
    nf_status nf_grad_apply(const nf_plan *plan, nf_dtype dtype, const void *x, const void *dy, void *gx,
                            const void *const *params, nf_act act)
    ctypedef struct nf_rowgrad:
        const double *mean
        const double *rstd
        const void *weight
        double *grad_weight
        double *grad_bias
    nf_status nf_rownorm_grad(nf_dtype dtype, int64_t rows, int64_t n, const void *x, const void *dy, void *gx,
                              const nf_rowgrad *spec)
    ctypedef struct nf_seggrad:
        int64_t rows, row_stride, nseg, seg_stride, len, nslot, period
        const void *weight
        const void *bias
        const double *mean
        const double *rstd
        double eps
        nf_act act
        double *sum_g
        double *sum_gxhat
    nf_status nf_seg_grad(nf_dtype dtype, const void *x, const void *dy, void *gx, const nf_seggrad *spec)
    ctypedef struct nf_lastspec:
        int64_t samples, spatial, channels, groups
        double eps
        const void *weight
        const void *bias
        nf_act act
        double *mean
        double *var
        uint8_t *done
    nf_status nf_channels_last_norm(nf_dtype dtype, const void *x, void *y, const nf_lastspec *spec)
    ctypedef struct nf_coefspec:
        int64_t n, period
        const double *mean
        const double *var
        double eps
        const void *weight
        const void *bias
        nf_dtype dtype
        void *shift
        void *scale
        void *offset
    nf_status nf_coefficients(const nf_coefspec *spec, uint8_t *fit)
    void nf_centrings(int64_t n, const double *s, const double *mean, const double *a, double *out)
    void nf_set_num_threads(int n)
    int nf_get_num_threads()
    void nf_cap_threads_here(int n)
    void nf_merge(int64_t size, const double *na, double *shift, double *mean, double *m2, const double *nb,
                  const double *shift_b, const double *mean_b, const double *m2_b)
    int nf_openmp_enabled()
    int nf_isa_compiled(nf_isa isa)
    int nf_isa_supported(nf_isa isa)
    nf_isa nf_set_isa(nf_isa cap)
    nf_isa nf_get_isa()
    const char *nf_isa_name(nf_isa isa)
