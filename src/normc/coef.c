/* The apply pass's coefficients from float64 statistics: the one home of the centring rule's use outside
 * the kernels (internal.h's nf_centring). ISA-independent; built without FMA contraction, as backward.c
 * is, so that b + (s - mean) a rounds the same in every build. */
#include "internal.h"

#include <float.h>

/* Entry i of a float64 or float parameter vector, or `none` where it is NULL. */
static double nf_param(const void *v, nf_dtype dt, int64_t i, double none)
{
    return !v ? none : dt == NF_F64 ? ((const double *)v)[i] : (double)((const float *)v)[i];
}

/* Whether a float64 value that is finite would be finite as a float (NaN passes: NaN either way). */
static int nf_fits_float(double v) { return !(fabs(v) > FLT_MAX && isfinite(v)); }

nf_status nf_coefficients(const nf_coefspec *sp, uint8_t *fit)
{
    if ((sp->dtype != NF_F32 && sp->dtype != NF_F64) || sp->n < 0 || sp->period < 1)
        return NF_EINVAL;
    for (int64_t i = 0; i < sp->n; i++) {
        const double w = nf_param(sp->weight, sp->dtype, i % sp->period, 1);
        const double b = nf_param(sp->bias, sp->dtype, i % sp->period, 0);
        const double a = w / sqrt(sp->var[i] + sp->eps);
        if (sp->dtype == NF_F64) {
            ((double *)sp->shift)[i] = sp->mean[i];
            ((double *)sp->scale)[i] = a;
            ((double *)sp->offset)[i] = b; /* s = mean: no rounding to put back */
            fit[i] = 1;
            continue;
        }
        const float s = (float)sp->mean[i];
        const double c = b + nf_centring(s, sp->mean[i], a);
        ((float *)sp->shift)[i] = s;
        ((float *)sp->scale)[i] = (float)a;
        ((float *)sp->offset)[i] = (float)c;
        /* Float also cannot hold the deviations x - s once they near FLT_MAX (2^128): they stay below
         * sqrt(count * var), under 2^128 for var up to NF_SPAN_VAR (2^200) unless a statistic counts over
         * 2^56 values. Past that (data spanning more than float's range), float64. Statistics that are not
         * x's own (running ones, in eval mode) bound nothing: x - s can overflow whenever |s| reaches
         * NF_SPAN_SHIFT while the result (x - s) a would not, so those too. Each statistic by its own
         * values, so that one does not change the others' bits. */
        fit[i] = nf_fits_float(a) && nf_fits_float(c) && !(sp->var[i] > NF_SPAN_VAR) &&
                 !(fabs(s) >= NF_SPAN_SHIFT && isfinite(s));
    }
    return NF_OK;
}

void nf_centrings(int64_t n, const double *s, const double *mean, const double *a, double *out)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = nf_centring(s[i], mean[i], a[i]);
}
