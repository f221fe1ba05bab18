/* The planner: (shape, strides, reduced axes) -> the canonical [O, R1, K, R2] view shared by every
 * kernel family. Reduction order is free and kept axes carry their own output strides, so axes may be
 * reordered by stride; that is what lets any strided input run without a copy. */
#include "normc.h"

#include <string.h>

typedef struct {
    int64_t n, s, os, ys;
    int red;
    int64_t key; /* the walk order: descending */
} axis_t;

static void dims_push(nf_dims *d, const axis_t *a)
{
    d->shape[d->ndim] = a->n;
    d->stride[d->ndim] = a->s;
    d->ostride[d->ndim] = a->os;
    d->ystride[d->ndim] = a->ys;
    d->ndim++;
    d->size *= a->n;
}

/* The axes the walk needs, strides made non-negative (flipped into the plan's offsets), with their sort
 * keys; returns how many. Size-1 axes change nothing and are left out, as are the reduced axes of an empty
 * reduction, which only needs the kept shape. */
static int plan_axes(nf_plan *p, axis_t *ax, int ndim, const int64_t *shape, const int64_t *strides,
                     const int64_t *out_strides, const int64_t *y_strides, const unsigned char *reduce)
{
    int n = 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] <= 1 || (reduce[i] && p->count == 0))
            continue;
        /* An empty reduction reads nothing, so its kept axes walk the output alone (input stride 0). */
        axis_t a = {shape[i], p->count ? strides[i] : 0, reduce[i] ? 0 : out_strides[i],
                    y_strides ? y_strides[i] : 0, reduce[i] != 0, 0};
        /* Flip negative input strides so every walk goes forward through x; the other operands follow. */
        if (a.s < 0) {
            p->x_offset += (a.n - 1) * a.s;
            p->out_offset += (a.n - 1) * a.os;
            p->y_offset += (a.n - 1) * a.ys;
            a.s = -a.s;
            a.os = -a.os;
            a.ys = -a.ys;
        }
        /* The input stride; an axis x does not advance along (a broadcast) takes the stride of what it
         * writes instead, so the output is walked in order and a broadcast row stays a contiguous row. */
        const int64_t w = a.ys ? a.ys : a.os;
        a.key = a.s ? a.s : (w < 0 ? -w : w);
        ax[n++] = a;
    }
    return n;
}

/* Stable insertion sort by descending key; for equal keys reduced axes go inner. */
static void sort_axes(axis_t *ax, int n)
{
    for (int i = 1; i < n; i++) {
        axis_t a = ax[i];
        int j = i - 1;
        while (j >= 0 && (ax[j].key < a.key || (ax[j].key == a.key && ax[j].red && !a.red))) {
            ax[j + 1] = ax[j];
            j--;
        }
        ax[j + 1] = a;
    }
}

/* Merge each axis into its outer neighbour when both are of one kind and together they are one evenly
 * strided run (in every operand); returns the number left. */
static int merge_axes(axis_t *ax, int n)
{
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (m > 0) {
            axis_t *b = &ax[m - 1];
            if (b->red == ax[i].red && b->s == ax[i].s * ax[i].n && b->os == ax[i].os * ax[i].n &&
                b->ys == ax[i].ys * ax[i].n) {
                b->n *= ax[i].n;
                b->s = ax[i].s;
                b->os = ax[i].os;
                b->ys = ax[i].ys;
                continue;
            }
        }
        ax[m++] = ax[i];
    }
    return m;
}

/* The innermost axis becomes R2 (reduced) or K (kept); the others go to R1 and O. */
static void assign_axes(nf_plan *p, const axis_t *ax, int n)
{
    const int last = n - 1;
    if (last >= 0) {
        if (ax[last].red) {
            p->r2 = ax[last].n;
            p->r2_stride = ax[last].s;
            p->r2_ystride = ax[last].ys;
        } else {
            p->k = ax[last].n;
            p->k_stride = ax[last].s;
            p->k_ostride = ax[last].os;
            p->k_ystride = ax[last].ys;
        }
    }
    for (int i = 0; i < last; i++)
        dims_push(ax[i].red ? &p->r1 : &p->o, &ax[i]);
}

nf_status nf_plan_make(nf_plan *p, int ndim, const int64_t *shape, const int64_t *strides,
                       const int64_t *out_strides, const int64_t *y_strides,
                       const unsigned char *reduce)
{
    axis_t ax[NF_MAXDIM];

    if (ndim < 0 || ndim > NF_MAXDIM)
        return NF_EINVAL;
    memset(p, 0, sizeof *p);
    p->o.size = p->r1.size = 1;
    p->k = p->r2 = 1;
    p->count = 1;

    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return NF_EINVAL;
        if (reduce[i])
            p->count *= shape[i];
        else if (shape[i] == 0)
            p->o.size = 0;
    }
    if (p->o.size == 0)
        return NF_OK; /* no statistic to compute */

    int n = plan_axes(p, ax, ndim, shape, strides, out_strides, y_strides, reduce);
    sort_axes(ax, n);
    n = merge_axes(ax, n);
    assign_axes(p, ax, n);
    return NF_OK;
}
