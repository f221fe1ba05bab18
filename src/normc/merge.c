/* Merges of partial moments across calls (the running accumulators, data-set blocks, Dask partials):
 * Chan's update, element by element, with the engine's own rule (nf_chan_col), in shifted frames. */
#include "internal.h"

#include <math.h>

void nf_merge(int64_t size, const double *na, double *shift, double *mean, double *m2, const double *nb,
              const double *shift_b, const double *mean_b, const double *m2_b)
{
    for (int64_t i = 0; i < size; i++) {
        if (na[i] == 0) /* an empty a takes b's frame (nf_chan_col then takes b as it is) */
            shift[i] = shift_b[i];
        /* b's mean in a's frame: the shifts are elements of the data, so their difference is exact for
         * nearby data and no mean of the data's magnitude enters a difference. */
        const double moved = (shift_b[i] - shift[i]) + mean_b[i], n = na[i] + nb[i];
        nf_chan_col(&mean[i], &m2[i], na[i], nb[i] / n, na[i] / n * nb[i], moved, m2_b[i]);
    }
}
