/* normc: the C engine of normfast. Plain pointers, int64 shapes and element strides, status codes.
 * No Python headers: the Cython binding is the only caller that knows about NumPy. */
#ifndef NORMC_H
#define NORMC_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NF_MAXDIM 64

typedef enum { NF_F32 = 0, NF_F64 = 1, NF_F16 = 2, NF_BF16 = 3 } nf_dtype;

typedef enum {
    NF_OK = 0,
    NF_EINVAL = -1, /* bad rank, shape, stride or dtype */
    NF_ENOMEM = -2, /* scratch allocation failed */
    NF_ELAYOUT = -3 /* valid, but laid out in a way this kernel does not walk (nothing written) */
} nf_status;

typedef enum { NF_ISA_BASELINE = 0, NF_ISA_AVX2 = 1, NF_ISA_AVX512 = 2, NF_ISA_COUNT = 3 } nf_isa;

/* A set of axes iterated as one flat index: shape and element strides, outermost first. `stride` is
 * the input's, `ostride` the statistics' (0 on reduced axes), `ystride` an elementwise output's (the
 * apply pass; 0 when there is none). */
typedef struct {
    int ndim;
    int64_t size;
    int64_t shape[NF_MAXDIM];
    int64_t stride[NF_MAXDIM];
    int64_t ostride[NF_MAXDIM];
    int64_t ystride[NF_MAXDIM];
} nf_dims;

/* The canonical view [O, R1, K, R2] (docs/architecture.md). Statistics live on [O, K]; reduction runs over
 * R1 and R2. After sorting axes by stride and merging contiguous neighbours, the innermost axis is either
 * reduced (row mode: R2 is that axis, K == 1) or kept (column mode: K is that axis, R2 == 1); every other
 * kept axis goes to O and every other reduced axis to R1. All strides are non-negative: negative ones are
 * flipped into x_offset / out_offset. */
typedef struct {
    nf_dims o, r1;
    int64_t k, k_stride, k_ostride, k_ystride;
    int64_t r2, r2_stride, r2_ystride;
    int64_t x_offset, out_offset, y_offset; /* element offsets of the first x, statistic and y */
    int64_t count;                          /* elements reduced into each statistic (0: empty) */
} nf_plan;

/* shape/strides: the input (strides in elements, any sign). reduce[i] != 0 marks reduced axes.
 * out_strides[i]: the statistics' stride in elements for kept axis i (ignored for reduced axes).
 * y_strides: an elementwise output of x's shape for the apply pass, or NULL. Axes are merged only where
 * every operand allows it. ndim 0 is a scalar. */
nf_status nf_plan_make(nf_plan *plan, int ndim, const int64_t *shape, const int64_t *strides,
                       const int64_t *out_strides, const int64_t *y_strides,
                       const unsigned char *reduce);

/* Mean and variance (divisor max(count - ddof, 0)) of x over the plan's reduction, one pass over memory.
 * Outputs are out_dtype (NF_F32 or NF_F64) at out_offset + o/k strides. Empty reductions give NaN.
 * Results do not depend on the number of threads. Also, where they are not NULL: the min and max of each
 * statistic's elements into lo and hi (float64, laid out as mean; NaN where an element is NaN or nothing
 * is reduced), each work item read again while in cache; each statistic's shift K (one of its elements,
 * 0 if that is not finite) into shift (float64, laid out as mean), the mean then being that of x - K, so
 * that partial results merge with exact differences of means. */
nf_status nf_moments(const nf_plan *plan, nf_dtype dtype, const void *x, nf_dtype out_dtype, void *mean,
                     void *var, double ddof, double *lo, double *hi, double *shift);

typedef enum { NF_ACT_NONE = 0, NF_ACT_RELU = 1, NF_ACT_SIGMOID = 2, NF_ACT_SILU = 3 } nf_act;

/* The apply pass: y = act((x - shift) * scale + bias) elementwise, the three laid out like the
 * statistics of the plan (one value per [O, K] group; double for NF_F64, float otherwise). Subtracting
 * first keeps y accurate when the mean is large next to the spread. y has x's dtype; the plan must have
 * been made with y's strides. y may be x itself. */
nf_status nf_apply(const nf_plan *plan, nf_dtype dtype, const void *x, void *y, const void *shift,
                   const void *scale, const void *bias, nf_act act);

/* How a row's scale comes from its statistics: layer norm 1 / sqrt(var + eps) about the mean; RMS norm
 * 1 / sqrt(mean(x^2) + eps); L2, 1 / max(||x||, eps) (cosine and weight normalization). The last two
 * subtract nothing. */
typedef enum { NF_ROW_LAYER = 0, NF_ROW_RMS = 1, NF_ROW_L2 = 2 } nf_rowkind;

/* What nf_rownorm does with each row once its statistics are known. */
typedef struct {
    double eps;
    nf_rowkind kind;
    /* Affine parameters, NULL or double for NF_F64 and float otherwise. seg == 1: one per element of the
     * row (R2 each; layer norm). seg > 1: the row is R2 / seg segments of seg elements, segment j of row r
     * scaled by weight[(r % period) * (R2 / seg) + j] (instance and group norm over channels-first data,
     * a segment being one channel's spatial extent). */
    const void *weight, *bias;
    int64_t seg, period;
    nf_act act;       /* with seg > 1 only */
    double *mean, *var; /* NULL, or one (biased) statistic per row, in row order (layer norm; RMS norm:
                           0 and the mean square) */
    int max_threads;    /* > 0: at most this many threads for this call (e.g. 1 before a BLAS call, whose
                           threads idle OpenMP workers would spin against); 0: the library's setting */
} nf_rowspec;

/* A norm over contiguous rows, statistics and output in one visit of each row while it is in cache:
 * the plan reduces only the last axis (R2, stride 1 in x and y; K == 1, no R1), else NF_ELAYOUT. */
nf_status nf_rownorm(const nf_plan *plan, nf_dtype dtype, const void *x, void *y, const nf_rowspec *spec);

/* Group norm of channels-last data (instance norm: groups == channels), each sample's statistics and
 * output in one visit while it is in cache. x and y are `samples` C-contiguous samples of spatial x
 * channels elements; group g of a sample is its channels [g C/G, (g + 1) C/G) at every spatial position.
 * Statistics, coefficients and outputs are bit for bit those of nf_moments (column mode: the same tiles,
 * chunks and merge order), nf_coefficients and nf_apply on the same data, at any thread count.
 * NF_ELAYOUT where nf_moments would take another mode: spatial < 2, groups < 2, or more than
 * NF_SHORT_ROW channels per group. */
#define NF_SHORT_ROW 16 /* nf_moments: contiguous rows up to this long run in column mode when they can */
typedef struct {
    int64_t samples, spatial, channels, groups;
    double eps;
    const void *weight, *bias; /* NULL or per channel, double for NF_F64 and float otherwise */
    nf_act act;
    double *mean, *var;  /* NULL, or samples x groups biased statistics in (sample, group) order */
    uint8_t *done;       /* per sample: 1 written; 0 where a float coefficient does not hold it
                            (nf_coefficients' fit), y left to the caller */
} nf_lastspec;
nf_status nf_channels_last_norm(nf_dtype dtype, const void *x, void *y, const nf_lastspec *spec);

/* Backward of batch, instance, group and switchable norm (and of nf_apply): with z = (x - shift) * scale +
 * bias the forward's pre-activation (the apply pass's parameters) and g = dy * act'(z), the first pass
 * sums, per statistics group, g and g * (x - shift) into sum_g and sum_gd (double, laid out as the
 * statistics). dy is laid out like x. Chunked as the moments: results do not depend on the thread
 * count. */
nf_status nf_grad_sums(const nf_plan *plan, nf_dtype dtype, const void *x, const void *dy, const void *shift,
                       const void *scale, const void *bias, nf_act act, double *sum_g, double *sum_gd);

/* The second pass: gx = P * (g - M) + Q * (x - shift) + R elementwise; params = {shift, scale, bias, P,
 * M, Q, R}, laid out as the statistics (double for NF_F64, float otherwise); Q may be NULL, for no Q
 * term (statistics held constant: an infinite x then keeps a finite gradient). gx has x's dtype and the
 * plan's y strides; dy is laid out like x. */
nf_status nf_grad_apply(const nf_plan *plan, nf_dtype dtype, const void *x, const void *dy, void *gx,
                        const void *const *params, nf_act act);

/* Batch, instance or group norm backward (a single statistic per group, which channels-first data
 * keeps in contiguous segments), each group whole while its data is in cache: row r's segment j is the
 * `len` contiguous elements at r * row_stride + j * seg_stride (x, dy and gx alike), scaled by the
 * channel parameters at (r % period) * nslot + j % nslot. */
#define NF_MAX_SLOTS 256 /* channel slots of one nf_seg_grad group */
typedef struct {
    int64_t rows, row_stride, nseg, seg_stride, len, nslot, period; /* nslot <= NF_MAX_SLOTS */
    const void *weight, *bias;  /* NULL or per channel, double for NF_F64 and float otherwise */
    const double *mean, *rstd;  /* per row, or NULL: computed here with eps */
    double eps;
    nf_act act;
    double *sum_g, *sum_gxhat; /* rows * nslot outputs: per row and slot, the sums of g and g * xhat */
} nf_seggrad;
nf_status nf_seg_grad(nf_dtype dtype, const void *x, const void *dy, void *gx, const nf_seggrad *spec);

/* Layer or RMS norm backward over `rows` C-contiguous rows of n elements (x, dy and gx alike). */
typedef struct {
    const double *mean, *rstd; /* per row: the forward's mean (NULL: RMS norm) and 1 / sqrt(var + eps) */
    const void *weight;        /* NULL or n values, double for NF_F64 and float otherwise */
    double *grad_weight, *grad_bias; /* NULL, or n outputs: the sums over rows of dy * xhat and of dy */
} nf_rowgrad;
nf_status nf_rownorm_grad(nf_dtype dtype, int64_t rows, int64_t n, const void *x, const void *dy, void *gx,
                          const nf_rowgrad *spec);

/* The apply pass's coefficients (nf_apply's shift, scale and bias) from float64 statistics. For statistic
 * i < n, with w and b entry i % period of weight and bias (1 and 0 where NULL): a = w / sqrt(var + eps),
 * s = mean rounded to dtype and c = b + (s - mean) a, which puts that rounding back (nf_centrings). */
typedef struct {
    int64_t n, period;
    const double *mean, *var; /* n values each */
    double eps;
    const void *weight, *bias; /* NULL or period values of dtype */
    nf_dtype dtype;            /* NF_F32 or NF_F64: the outputs' and parameters' type */
    void *shift, *scale, *offset; /* n values of dtype each */
} nf_coefspec;
/* Data spanning past float32's range: a statistic with var over NF_SPAN_VAR (rstd under NF_SPAN_RSTD, its
 * inverse square root) has deviations from its mean, up to sqrt(count * var), that float32 cannot hold;
 * the forward applies it, and the backwards differentiate it, in float64. */
#define NF_SPAN_VAR 0x1p200
#define NF_SPAN_RSTD 0x1p-100
/* A float shift s under 2^103 (half an ulp of FLT_MAX) cannot take any float x past FLT_MAX: x - s
 * rounds to at most FLT_MAX. From there the forward applies the statistic in float64. */
#define NF_SPAN_SHIFT 0x1p103
/* fit[i] (n entries): 0 where statistic i's float32 scale or offset left float32's range while finite in
 * float64 (subnormal data under a tiny eps), where var > 2^200 (data spanning more than float32's
 * range, whose deviations from the mean would overflow), or where |s| >= NF_SPAN_SHIFT (running
 * statistics far from x); the caller then applies that statistic's elements in float64. float64
 * coefficients always fit. */
nf_status nf_coefficients(const nf_coefspec *spec, uint8_t *fit);

/* The centring rule elementwise: out = (s - mean) * a, the term that centring on s rather than on the mean
 * adds to an apply pass's offset (y = (x - s) a + b + out equals (x - mean) a + b). All float64. */
void nf_centrings(int64_t n, const double *s, const double *mean, const double *a, double *out);

/* Chan's merge of part b into part a, element by element, in place: na and nb are the parts' counts,
 * mean the mean of x - shift (the engine's shifted frames, nf_moments' shift output) and m2 the sum of
 * squared deviations. The result is in a's frame, or b's where a is empty (na 0). Where the means'
 * difference is not finite (an infinity or NaN in the data, or means too far apart to subtract) the mean
 * is the counts-weighted sum of the means, as a plain sum of the data gives, and m2 is then not finite. */
void nf_merge(int64_t size, const double *na, double *shift, double *mean, double *m2, const double *nb,
              const double *shift_b, const double *mean_b, const double *m2_b);

/* Threads used by the kernels (>= 1). The default is OpenMP's, so OMP_NUM_THREADS is honoured. */
void nf_set_num_threads(int n);
int nf_get_num_threads(void);
/* Caps the threads of kernels called from the calling thread at n (0: no cap), for callers that run
 * kernels on threads of their own, one block each. */
void nf_cap_threads_here(int n);
int nf_openmp_enabled(void);

/* ISA levels: compiled into this build, supported by this CPU, and the one in use. nf_set_isa picks the
 * best level <= cap that is both compiled and supported and returns it. */
int nf_isa_compiled(nf_isa isa);
int nf_isa_supported(nf_isa isa);
nf_isa nf_set_isa(nf_isa cap);
nf_isa nf_get_isa(void);
const char *nf_isa_name(nf_isa isa);

#ifdef __cplusplus
}
#endif
#endif
