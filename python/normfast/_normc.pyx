# cython: language_level=3, boundscheck=False, wraparound=False
"""Thin binding over the C engine: reads pointers, shapes and strides off NumPy arrays, releases the GIL,
calls normc. Every argument is checked in the Python layer; this one only refuses what C cannot take."""
cimport numpy as cnp
import numpy as np

from libc.stdint cimport int64_t

cnp.import_array()

ISA_NAMES = tuple(nf_isa_name(<nf_isa>i).decode() for i in range(NF_ISA_COUNT))
MAX_SLOTS = NF_MAX_SLOTS
SPAN_RSTD = NF_SPAN_RSTD  # rstd under it: data spanning past float32's range (normc.h)
SPAN_SHIFT = NF_SPAN_SHIFT  # a float32 shift at or past it can take x - shift past float32's range
DTYPE_CODES = {"float32": NF_F32, "float64": NF_F64, "float16": NF_F16, "bfloat16": NF_BF16}


cdef int _check(nf_status st) except -1:
    if st == NF_ENOMEM:
        raise MemoryError("normfast: out of memory for scratch space")
    if st != NF_OK:
        raise ValueError("normfast: the C engine rejected the arguments (status %d)" % st)
    return 0


ACTIVATIONS = {None: NF_ACT_NONE, "relu": NF_ACT_RELU, "sigmoid": NF_ACT_SIGMOID, "silu": NF_ACT_SILU}
ROW_LAYER, ROW_RMS, ROW_L2 = NF_ROW_LAYER, NF_ROW_RMS, NF_ROW_L2


cdef int _same_layout(cnp.ndarray a, cnp.ndarray b, str what) except -1:
    """Same shape, item size and strides (strides of size-1 axes never matter)."""
    cdef int i
    if cnp.PyArray_NDIM(a) != cnp.PyArray_NDIM(b) or cnp.PyArray_ITEMSIZE(a) != cnp.PyArray_ITEMSIZE(b):
        raise ValueError(f"normfast: {what} must share one layout")
    for i in range(cnp.PyArray_NDIM(a)):
        if cnp.PyArray_DIM(a, i) != cnp.PyArray_DIM(b, i) or \
                (cnp.PyArray_DIM(a, i) > 1 and cnp.PyArray_STRIDE(a, i) != cnp.PyArray_STRIDE(b, i)):
            raise ValueError(f"normfast: {what} must share one layout")
    return 0


cdef int _plan(nf_plan *plan, cnp.ndarray x, tuple reduce, object stats, object y) except -1:
    """Plan x's reduction over the axes marked in reduce. stats: None, or an array of x's rank with size 1
    on the reduced axes (statistics, or the parameters of the apply pass). y: None, or an output of x's
    shape and item size. Strides must be multiples of the item sizes (the Python layer makes sure)."""
    cdef int nd = cnp.PyArray_NDIM(x), i
    cdef int64_t shape[NF_MAXDIM]
    cdef int64_t strides[NF_MAXDIM]
    cdef int64_t ostrides[NF_MAXDIM]
    cdef int64_t ystrides[NF_MAXDIM]
    cdef unsigned char red[NF_MAXDIM]
    cdef cnp.ndarray sa = stats if stats is not None else x
    cdef Py_ssize_t isz = cnp.PyArray_ITEMSIZE(x), osz = cnp.PyArray_ITEMSIZE(sa)
    cdef cnp.ndarray ya = None
    if y is not None:
        ya = y
        if (<object>ya).shape != (<object>x).shape or cnp.PyArray_ITEMSIZE(ya) != isz:
            raise ValueError("normfast: the output must have the input's shape and item size")
        if not cnp.PyArray_ISWRITEABLE(ya):
            raise ValueError("normfast: the output is read-only")
    if nd > NF_MAXDIM or cnp.PyArray_NDIM(sa) != nd or len(reduce) != nd:
        raise ValueError("normfast: rank mismatch between x, reduce and statistics")
    for i in range(nd):
        shape[i] = cnp.PyArray_DIM(x, i)
        strides[i] = cnp.PyArray_STRIDE(x, i) // isz
        red[i] = 1 if reduce[i] else 0
        ostrides[i] = cnp.PyArray_STRIDE(sa, i) // osz if stats is not None else 0
        ystrides[i] = cnp.PyArray_STRIDE(ya, i) // isz if ya is not None else 0
        if stats is not None and cnp.PyArray_DIM(sa, i) != (1 if red[i] else shape[i]):
            raise ValueError("normfast: statistics do not match the kept shape of x")
    cdef nf_status st
    with nogil:
        st = nf_plan_make(plan, nd, shape, strides, ostrides, ystrides if ya is not None else NULL, red)
    return _check(st)


def moments(cnp.ndarray x not None, int dtype_code, tuple reduce, cnp.ndarray mean not None,
            cnp.ndarray var not None, double ddof, cnp.ndarray lo=None, cnp.ndarray hi=None,
            cnp.ndarray shift=None):
    """Fill mean and var (float32 or float64 arrays of x's rank, size 1 on reduced axes) with x's
    moments, lo and hi (float64, laid out as mean) with its min and max when given, and shift (float64,
    laid out as float64 mean) with each statistic's shift K when given, mean then being that of x - K."""
    cdef nf_plan plan
    cdef nf_dtype odt = NF_F64 if cnp.PyArray_ITEMSIZE(mean) == 8 else NF_F32
    _same_layout(mean, var, "mean and var")
    if not (cnp.PyArray_ISWRITEABLE(mean) and cnp.PyArray_ISWRITEABLE(var)):
        raise ValueError("normfast: outputs must be writeable")
    if (lo is None) != (hi is None):
        raise ValueError("normfast: give lo and hi together")
    cdef double *pl = NULL
    cdef double *ph = NULL
    if lo is not None:
        # The same element strides as mean: all three C-contiguous of one shape.
        _stats_like(mean, (lo, hi), cnp.NPY_DOUBLE, True, "lo and hi")
        if not cnp.PyArray_IS_C_CONTIGUOUS(mean):
            raise ValueError("normfast: mean must be contiguous when lo and hi are asked for")
        pl, ph = <double *>cnp.PyArray_DATA(lo), <double *>cnp.PyArray_DATA(hi)
    cdef double *pk = NULL
    if shift is not None:
        _stats_like(mean, (shift,), cnp.NPY_DOUBLE, True, "shift")
        if not (cnp.PyArray_IS_C_CONTIGUOUS(mean) and cnp.PyArray_TYPE(mean) == cnp.NPY_DOUBLE):
            raise ValueError("normfast: mean must be contiguous float64 when shift is asked for")
        pk = <double *>cnp.PyArray_DATA(shift)
    _plan(&plan, x, reduce, mean, None)
    cdef const void *px = cnp.PyArray_DATA(x)
    cdef void *pm = cnp.PyArray_DATA(mean)
    cdef void *pv = cnp.PyArray_DATA(var)
    cdef nf_status st
    with nogil:
        st = nf_moments(&plan, <nf_dtype>dtype_code, px, odt, pm, pv, ddof, pl, ph, pk)
    _check(st)


def apply(cnp.ndarray x not None, int dtype_code, tuple reduce, cnp.ndarray shift not None,
          cnp.ndarray scale not None, cnp.ndarray bias not None, cnp.ndarray y not None, activation):
    """y = act((x - shift) * scale + bias), the three laid out as statistics of x over the axes marked in
    reduce."""
    cdef nf_plan plan
    cdef nf_act act = ACTIVATIONS[activation]
    _same_layout(shift, scale, "shift and scale")
    _same_layout(shift, bias, "shift and bias")
    _plan(&plan, x, reduce, shift, y)
    cdef const void *px = cnp.PyArray_DATA(x)
    cdef void *py = cnp.PyArray_DATA(y)
    cdef const void *ps = cnp.PyArray_DATA(shift)
    cdef const void *pa = cnp.PyArray_DATA(scale)
    cdef const void *pb = cnp.PyArray_DATA(bias)
    cdef nf_status st
    with nogil:
        st = nf_apply(&plan, <nf_dtype>dtype_code, px, py, ps, pa, pb, act)
    _check(st)


cdef inline const void *_data_or_null(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef int _flat(tuple arrays, int typenum, Py_ssize_t size, bint writeable, str what, bint optional=True) except -1:
    """Each array (or None, where optional) what C reads as a flat run of `size` values of the NumPy type
    typenum: a C-contiguous, aligned, native ndarray of that type and size, writeable if asked."""
    cdef cnp.ndarray a
    for v in arrays:
        if v is None and optional:
            continue
        if not (isinstance(v, cnp.ndarray) and cnp.PyArray_TYPE(<cnp.ndarray>v) == typenum
                and cnp.PyArray_SIZE(<cnp.ndarray>v) == size):
            raise ValueError(f"normfast: {what} must be {cnp.PyArray_DescrFromType(typenum)} "
                             f"arrays of {size} values")
        a = <cnp.ndarray>v
        if not (cnp.PyArray_ISCARRAY_RO(a) and cnp.PyArray_ISNOTSWAPPED(a) and (cnp.PyArray_ISWRITEABLE(a) or not writeable)):
            raise ValueError(f"normfast: {what} must be contiguous native{' writeable' if writeable else ''} arrays")
    return 0


cdef int _stats_type(int dtype):
    """The NumPy type of the statistics (and parameters) of data of dtype code `dtype`."""
    return cnp.NPY_FLOAT64 if dtype == NF_F64 else cnp.NPY_FLOAT32


cdef nf_status _rownorm(nf_plan *plan, int code, cnp.ndarray x, cnp.ndarray y, nf_rowspec *spec):
    cdef const void *px = cnp.PyArray_DATA(x)
    cdef void *py = cnp.PyArray_DATA(y)
    cdef nf_status st
    if cnp.PyArray_SIZE(x) < 16384:  # below this, dropping and retaking the GIL costs a noticeable share
        return nf_rownorm(plan, <nf_dtype>code, px, py, spec)
    with nogil:
        st = nf_rownorm(plan, <nf_dtype>code, px, py, spec)
    return st


cdef nf_rowspec _spec(object weight, object bias, double eps, int kind):
    cdef nf_rowspec spec
    spec.eps, spec.kind, spec.seg, spec.period, spec.act = eps, <nf_rowkind>kind, 1, 1, NF_ACT_NONE
    spec.weight, spec.bias, spec.mean, spec.var = _data_or_null(weight), _data_or_null(bias), NULL, NULL
    spec.max_threads = 0
    return spec


cdef int _row_stats(nf_rowspec *spec, mean, var, Py_ssize_t rows) except -1:
    """Point the spec's per-row statistics at mean and var (both None, or writeable contiguous float64
    arrays of `rows` values)."""
    _flat((mean, var), cnp.NPY_FLOAT64, rows, True, "mean and var (one per row)")
    if (mean is None) != (var is None):
        raise ValueError("normfast: mean and var go together")
    if mean is not None:
        spec.mean = <double *>cnp.PyArray_DATA(<cnp.ndarray>mean)
        spec.var = <double *>cnp.PyArray_DATA(<cnp.ndarray>var)
    return 0


cdef int _rows_plan(nf_plan *plan, Py_ssize_t rows, Py_ssize_t n) except -1:
    """The plan of `rows` contiguous rows of n elements, one after another (x and y alike)."""
    cdef int64_t shape[2]
    cdef int64_t strides[2]
    cdef int64_t no_stats[2]
    cdef unsigned char red[2]
    shape[0], shape[1], strides[0], strides[1], red[0], red[1] = rows, n, n, 1, 0, 1
    no_stats[0] = no_stats[1] = 0
    return _check(nf_plan_make(plan, 2, shape, strides, no_stats, strides, red))


def rownorm(cnp.ndarray x not None, cnp.ndarray y not None, *, int dtype, int kind, double eps, weight=None,
            bias=None, Py_ssize_t seg=1, Py_ssize_t period=1, activation=None, mean=None, var=None,
            int max_threads=0):
    """nf_rownorm over the rows of x, its last axis, into y of x's shape, the keywords mirroring nf_rowspec:
    layer, RMS or L2 norm (kind ROW_LAYER, ROW_RMS, ROW_L2) of each row; with seg > 1 each row is
    segments of seg elements, segment j of row r scaled by weight[(r % period) * segments + j] (instance
    and group norm over channels-first data, weight normalization). weight and bias: None or contiguous
    arrays of the statistics dtype with period * (row length / seg) values. mean and var: None, or
    writeable contiguous float64 arrays of one value per row that receive the rows' biased statistics in
    the order the kernel walks them (x's memory order). max_threads > 0 caps the threads. Returns False,
    with nothing written, where the rows are not contiguous in x and y."""
    cdef nf_plan plan
    cdef int nd = cnp.PyArray_NDIM(x)
    if nd < 1:
        raise ValueError("normfast: rownorm takes arrays of rank >= 1")
    cdef Py_ssize_t n = cnp.PyArray_DIM(x, nd - 1)
    cdef Py_ssize_t n_params = period * (n // seg) if seg > 0 else -1
    _flat((weight, bias), _stats_type(dtype), n_params, False, "weight and bias (one per segment of a period)")
    _plan(&plan, x, (False,) * (nd - 1) + (True,), None, y)
    cdef nf_rowspec spec = _spec(weight, bias, eps, kind)
    spec.seg, spec.period, spec.act, spec.max_threads = seg, period, ACTIVATIONS[activation], max_threads
    _row_stats(&spec, mean, var, cnp.PyArray_SIZE(x) // n if n else 0)
    st = _rownorm(&plan, dtype, x, y, &spec)
    if st == NF_ELAYOUT:
        return False
    _check(st)
    return True


def channels_last_norm(cnp.ndarray x not None, cnp.ndarray y not None, *, int dtype, Py_ssize_t groups,
                       double eps, weight=None, bias=None, activation=None, mean=None, var=None):
    """nf_channels_last_norm: group norm (instance norm: groups == channels) of C-contiguous x of shape
    (samples, spatial..., channels) into y (x's shape and type, C-contiguous), each sample in one visit.
    weight, bias: None or one value per channel of the statistics dtype; mean, var: None or writeable
    float64 arrays of samples * groups values, which receive the (sample, group) biased statistics.
    Returns a bool array: per sample, whether it was written (False: a float coefficient does not hold
    it, y left to the caller); or None, with nothing written, for a layout nf_moments reduces otherwise
    (its bits would differ)."""
    cdef int nd = cnp.PyArray_NDIM(x)
    if nd < 2:
        raise ValueError("normfast: channels_last_norm takes arrays of rank >= 2")
    _stats_like(x, (x,), cnp.PyArray_TYPE(x), False, "x")
    _stats_like(x, (y,), cnp.PyArray_TYPE(x), True, "y")
    cdef Py_ssize_t N = cnp.PyArray_DIM(x, 0), C = cnp.PyArray_DIM(x, nd - 1)
    if groups < 1 or C % groups:
        raise ValueError("normfast: groups must divide the channels")
    _flat((weight, bias), _stats_type(dtype), C, False, "weight and bias (one per channel)")
    if (mean is None) != (var is None):
        raise ValueError("normfast: mean and var go together")
    _flat((mean, var), cnp.NPY_FLOAT64, N * groups, True, "mean and var (samples * groups)")
    done = np.zeros(N, np.uint8)
    cdef nf_lastspec spec
    spec.samples, spec.channels, spec.groups = N, C, groups
    spec.spatial = cnp.PyArray_SIZE(x) // (N * C) if N * C else 0
    spec.eps, spec.act = eps, ACTIVATIONS[activation]
    spec.weight, spec.bias = _data_or_null(weight), _data_or_null(bias)
    spec.mean, spec.var = <double *>_data_or_null(mean), <double *>_data_or_null(var)
    spec.done = <uint8_t *>cnp.PyArray_DATA(done)
    cdef const void *px = cnp.PyArray_DATA(x)
    cdef void *py = cnp.PyArray_DATA(y)
    cdef nf_status st
    with nogil:
        st = nf_channels_last_norm(<nf_dtype>dtype, px, py, &spec)
    if st == NF_ELAYOUT:
        return None
    _check(st)
    return done.view(bool)


cdef bint _vector(object v, int typenum, Py_ssize_t n):
    """None, or a C-contiguous aligned native array of that type and shape (n,)."""
    if v is None:
        return True
    if type(v) is not cnp.ndarray:
        return False
    cdef cnp.ndarray a = <cnp.ndarray>v
    return (cnp.PyArray_TYPE(a) == typenum and cnp.PyArray_NDIM(a) == 1 and cnp.PyArray_DIM(a, 0) == n
            and cnp.PyArray_ISCARRAY_RO(a) and cnp.PyArray_ISNOTSWAPPED(a))


cdef void _extent(cnp.ndarray a, char **lo, char **hi):
    """The bytes [lo, hi) that a's elements span (lo == hi for an empty array)."""
    cdef char *p = <char *>cnp.PyArray_DATA(a)
    cdef Py_ssize_t lo_off = 0, hi_off = cnp.PyArray_ITEMSIZE(a), step
    cdef int i
    if cnp.PyArray_SIZE(a) == 0:
        lo[0] = hi[0] = p
        return
    for i in range(cnp.PyArray_NDIM(a)):
        step = (cnp.PyArray_DIM(a, i) - 1) * cnp.PyArray_STRIDE(a, i)
        if step < 0:
            lo_off += step
        else:
            hi_off += step
    lo[0], hi[0] = p + lo_off, p + hi_off


cdef bint _meet(cnp.ndarray a, object b):
    """Whether the spans of a and b (None: nothing) meet."""
    if b is None:
        return False
    cdef char *alo
    cdef char *ahi
    cdef char *blo
    cdef char *bhi
    _extent(a, &alo, &ahi)
    _extent(<cnp.ndarray>b, &blo, &bhi)
    return alo < bhi and blo < ahi


cdef enum:
    MEET_MAX = 64  # arrays extents_meet compares in one call (more than any public call passes)


def extents_meet(list arrays, Py_ssize_t n_written):
    """The pairs (i, j), i < n_written and i < j, of the ndarrays in `arrays` whose spans of memory meet:
    the only pairs that can share an element (numpy.may_share_memory's test, for all pairs in one call)."""
    cdef Py_ssize_t n = len(arrays), i, j
    if n > MEET_MAX:
        raise ValueError(f"normfast: extents_meet takes at most {MEET_MAX} arrays")
    cdef char *lo[MEET_MAX]
    cdef char *hi[MEET_MAX]
    for i in range(n):
        _extent(<cnp.ndarray?>arrays[i], &lo[i], &hi[i])
    pairs = []
    for i in range(min(n_written, n)):
        for j in range(i + 1, n):
            if lo[i] < hi[j] and lo[j] < hi[i]:
                pairs.append((i, j))
    return pairs


def rownorm_common(x, normalized_shape, weight, bias, eps, out, bint rms):
    """The common call of layer_norm / rms_norm at C speed: x a C-contiguous native float32 or float64
    array normalized over its last axis (normalized_shape that axis's length, as an int or a 1-tuple),
    weight and bias None or contiguous vectors of x's dtype, eps a positive finite float, out None or a
    C-contiguous array like x that is x itself or does not overlap it, nor weight or bias. Returns the output, or None with
    nothing written for any other call, which norms.py then checks and runs in full."""
    if type(x) is not cnp.ndarray:
        return None
    cdef cnp.ndarray xa = <cnp.ndarray>x, ya
    cdef int typenum = cnp.PyArray_TYPE(xa), nd = cnp.PyArray_NDIM(xa)
    if (typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64) or nd < 1 or \
            not cnp.PyArray_ISCARRAY_RO(xa) or not cnp.PyArray_ISNOTSWAPPED(xa):
        return None
    cdef Py_ssize_t n = cnp.PyArray_DIM(xa, nd - 1), size = cnp.PyArray_SIZE(xa)
    if type(normalized_shape) is tuple and len(<tuple>normalized_shape) == 1:
        normalized_shape = (<tuple>normalized_shape)[0]
    if type(normalized_shape) is not int or normalized_shape != n or n < 2 or size == 0:
        return None
    if type(eps) is not float or not (0.0 < <double>eps < 1e308):
        return None
    if not (_vector(weight, typenum, n) and _vector(bias, typenum, n)):
        return None
    cdef char *lo
    cdef char *hi
    if out is None:
        ya = cnp.PyArray_EMPTY(nd, cnp.PyArray_DIMS(xa), typenum, 0)
    else:
        if type(out) is not cnp.ndarray:
            return None
        ya = <cnp.ndarray>out
        if cnp.PyArray_TYPE(ya) != typenum or cnp.PyArray_NDIM(ya) != nd or not cnp.PyArray_ISCARRAY(ya) or \
                not cnp.PyArray_ISNOTSWAPPED(ya) or not cnp.PyArray_SAMESHAPE(xa, ya):
            return None
        lo, hi = <char *>cnp.PyArray_DATA(xa), <char *>cnp.PyArray_DATA(ya)
        if lo != hi and lo < hi + cnp.PyArray_NBYTES(ya) and hi < lo + cnp.PyArray_NBYTES(xa):
            return None  # a possible partial overlap: the full path tells it exactly
        if _meet(ya, weight) or _meet(ya, bias):
            return None  # an error, reported by the full path
    cdef nf_plan plan
    _rows_plan(&plan, size // n, n)
    cdef nf_rowspec spec = _spec(weight, bias, eps, NF_ROW_RMS if rms else NF_ROW_LAYER)
    _check(_rownorm(&plan, NF_F32 if typenum == cnp.NPY_FLOAT32 else NF_F64, xa, ya, &spec))
    return ya


def coefficients(cnp.ndarray mean not None, cnp.ndarray var not None, double eps, weight, bias,
                 cnp.ndarray shift not None, cnp.ndarray scale not None, cnp.ndarray offset not None,
                 cnp.ndarray fit not None):
    """The apply pass's (s, a, c) from statistics (nf_coefficients): a = weight / sqrt(var + eps), s = mean
    rounded to the parameters' dtype, c = bias + (s - mean) * a, which puts that rounding back. mean and var: contiguous
    float64 of M values; weight and bias: None or contiguous vectors of P values in the outputs' dtype,
    statistic i taking entry i % P; shift, scale, offset: contiguous outputs of M values, all float32 or
    all float64; fit: contiguous bool output of M values, False where statistic i's float32 coefficients
    do not hold it (a scale or offset past float32's range, as subnormal data with a tiny eps gives, or var
    past 2^200); the caller then applies that statistic in float64."""
    cdef Py_ssize_t m = cnp.PyArray_SIZE(mean), p = 1
    cdef int dt = cnp.NPY_FLOAT64 if cnp.PyArray_TYPE(shift) == cnp.NPY_FLOAT64 else cnp.NPY_FLOAT32
    _flat((mean, var), cnp.NPY_FLOAT64, m, False, "mean and var", False)
    _flat((shift, scale, offset), dt, m, True, "shift, scale and offset", False)
    _flat((fit,), cnp.NPY_BOOL, m, True, "fit", False)
    for v in (weight, bias):
        if v is not None:
            p = cnp.PyArray_SIZE(<cnp.ndarray>v) if isinstance(v, cnp.ndarray) else 0
            if p == 0 or m % p:
                raise ValueError("normfast: weight and bias must be vectors whose size divides the statistics'")
            _flat((v,), dt, p, False, "weight and bias")
    cdef nf_coefspec spec
    spec.n, spec.period, spec.eps, spec.dtype = m, p, eps, NF_F64 if dt == cnp.NPY_FLOAT64 else NF_F32
    spec.mean = <const double *>cnp.PyArray_DATA(mean)
    spec.var = <const double *>cnp.PyArray_DATA(var)
    spec.weight, spec.bias = _data_or_null(weight), _data_or_null(bias)
    spec.shift, spec.scale, spec.offset = cnp.PyArray_DATA(shift), cnp.PyArray_DATA(scale), cnp.PyArray_DATA(offset)
    _check(nf_coefficients(&spec, <uint8_t *>cnp.PyArray_DATA(fit)))


def centrings(s, mean, a):
    """(s - mean) * a elementwise in float64 (nf_centrings), the three of one shape: what centring an apply
    pass on s rather than on the mean adds to its offset."""
    s, mean, a = (np.ascontiguousarray(v, dtype=np.float64) for v in (s, mean, a))
    if not s.shape == mean.shape == a.shape:
        raise ValueError("normfast: centrings takes arrays of one shape")
    cdef cnp.ndarray out = np.empty(s.shape)
    nf_centrings(cnp.PyArray_SIZE(out), <const double *>cnp.PyArray_DATA(s), <const double *>cnp.PyArray_DATA(mean),
                 <const double *>cnp.PyArray_DATA(a), <double *>cnp.PyArray_DATA(out))
    return out


cdef int _stats_like(cnp.ndarray ref, tuple arrays, int typenum, bint writeable, str what) except -1:
    """Each array C-contiguous, of ref's shape and of the given type (and writeable if asked), so that all
    share ref's element strides."""
    cdef cnp.ndarray a
    for a in arrays:
        if not (cnp.PyArray_TYPE(a) == typenum and cnp.PyArray_ISCARRAY_RO(a) and cnp.PyArray_ISNOTSWAPPED(a)
                and (<object>a).shape == (<object>ref).shape and (cnp.PyArray_ISWRITEABLE(a) or not writeable)):
            raise ValueError(f"normfast: {what} must be contiguous arrays of one shape and type")
    return 0


def grad_sums(cnp.ndarray x not None, cnp.ndarray dy not None, int dtype_code, tuple reduce,
              cnp.ndarray shift not None, cnp.ndarray scale not None, cnp.ndarray bias not None, activation,
              cnp.ndarray sum_g not None, cnp.ndarray sum_gd not None):
    """Per statistics group of x over the axes marked in reduce: sum_g = sum(g) and sum_gd =
    sum(g * (x - shift)), g = dy * act'((x - shift) * scale + bias). dy shares x's layout; shift, scale
    and bias are the apply pass's parameters, sum_g and sum_gd float64 arrays of their shape."""
    cdef nf_plan plan
    cdef nf_act act = ACTIVATIONS[activation]
    _same_layout(x, dy, "x and grad_out")
    _stats_like(shift, (shift, scale, bias), cnp.PyArray_TYPE(shift), False, "shift, scale and bias")
    _stats_like(shift, (sum_g, sum_gd), cnp.NPY_FLOAT64, True, "sum_g and sum_gd")
    _plan(&plan, x, reduce, shift, None)
    cdef const void *px = cnp.PyArray_DATA(x)
    cdef const void *pd = cnp.PyArray_DATA(dy)
    cdef const void *ps = cnp.PyArray_DATA(shift)
    cdef const void *pa = cnp.PyArray_DATA(scale)
    cdef const void *pb = cnp.PyArray_DATA(bias)
    cdef double *pg = <double *>cnp.PyArray_DATA(sum_g)
    cdef double *pgd = <double *>cnp.PyArray_DATA(sum_gd)
    cdef nf_status st
    with nogil:
        st = nf_grad_sums(&plan, <nf_dtype>dtype_code, px, pd, ps, pa, pb, act, pg, pgd)
    _check(st)


def grad_apply(cnp.ndarray x not None, cnp.ndarray dy not None, int dtype_code, tuple reduce, tuple params,
               cnp.ndarray gx not None, activation):
    """gx = P * (g - M) + Q * (x - shift) + R with g as in grad_sums; params = (shift, scale, bias, P, M, Q,
    R), contiguous arrays of one shape and of the statistics dtype; Q may be None (no Q term)."""
    cdef nf_plan plan
    cdef nf_act act = ACTIVATIONS[activation]
    cdef const void *pp[7]
    cdef int i
    if len(params) != 7:
        raise ValueError("normfast: grad_apply takes seven parameter arrays")
    given = params[:5] + params[6:] + ((params[5],) if params[5] is not None else ())
    _same_layout(x, dy, "x and grad_out")
    _stats_like(params[0], given, cnp.PyArray_TYPE(params[0]), False, "the parameters")
    _plan(&plan, x, reduce, params[0], gx)
    for i in range(7):
        pp[i] = _data_or_null(params[i])
    cdef const void *px = cnp.PyArray_DATA(x)
    cdef const void *pd = cnp.PyArray_DATA(dy)
    cdef void *pg = cnp.PyArray_DATA(gx)
    cdef nf_status st
    with nogil:
        st = nf_grad_apply(&plan, <nf_dtype>dtype_code, px, pd, pg, pp, act)
    _check(st)


def seg_grad(cnp.ndarray x not None, cnp.ndarray dy not None, cnp.ndarray gx not None, *, int dtype,
             Py_ssize_t rows, Py_ssize_t row_stride, Py_ssize_t nseg, Py_ssize_t seg_stride, Py_ssize_t len,
             Py_ssize_t nslot, Py_ssize_t period, double eps, cnp.ndarray sum_g not None,
             cnp.ndarray sum_gxhat not None, weight=None, bias=None, mean=None, rstd=None, activation=None):
    """nf_seg_grad: batch, instance or group norm backward over C-contiguous x, dy and gx of one shape,
    group by group, the keywords mirroring nf_seggrad: row r's segment j is the `len` elements at
    r * row_stride + j * seg_stride, scaled by channel (r % period) * nslot + j % nslot. weight, bias: None
    or period * nslot values of the statistics dtype; mean, rstd: None (computed with eps) or float64, one
    per row; sum_g, sum_gxhat: float64, rows * nslot."""
    _stats_like(x, (x, dy), cnp.PyArray_TYPE(x), False, "x and grad_out")
    _stats_like(x, (gx,), cnp.PyArray_TYPE(x), True, "grad_x")
    if rows < 0 or nseg < 1 or len < 1 or nslot < 1 or nslot > NF_MAX_SLOTS or period < 1 or row_stride < 0 or \
            seg_stride < 0 or (rows > 0 and (rows - 1) * row_stride + (nseg - 1) * seg_stride + len > cnp.PyArray_SIZE(x)):
        raise ValueError("normfast: seg_grad's groups do not fit in x")
    _flat((weight, bias), _stats_type(dtype), period * nslot, False, "weight and bias (one per channel)")
    if (mean is None) != (rstd is None):
        raise ValueError("normfast: mean and rstd go together")
    _flat((mean, rstd), cnp.NPY_FLOAT64, rows, False, "mean and rstd (one per row)")
    _flat((sum_g, sum_gxhat), cnp.NPY_FLOAT64, rows * nslot, True, "sum_g and sum_gxhat (rows * nslot)", False)
    cdef nf_seggrad spec
    spec.rows, spec.row_stride, spec.nseg, spec.seg_stride = rows, row_stride, nseg, seg_stride
    spec.len, spec.nslot, spec.period, spec.eps, spec.act = len, nslot, period, eps, ACTIVATIONS[activation]
    spec.weight, spec.bias = _data_or_null(weight), _data_or_null(bias)
    spec.mean, spec.rstd = <const double *>_data_or_null(mean), <const double *>_data_or_null(rstd)
    spec.sum_g = <double *>cnp.PyArray_DATA(sum_g)
    spec.sum_gxhat = <double *>cnp.PyArray_DATA(sum_gxhat)
    cdef const void *px = cnp.PyArray_DATA(x)
    cdef const void *pd = cnp.PyArray_DATA(dy)
    cdef void *pg = cnp.PyArray_DATA(gx)
    cdef nf_status st
    with nogil:
        st = nf_seg_grad(<nf_dtype>dtype, px, pd, pg, &spec)
    _check(st)


def rownorm_grad(cnp.ndarray x not None, cnp.ndarray dy not None, cnp.ndarray gx not None, *, int dtype,
                 cnp.ndarray rstd not None, mean=None, weight=None, grad_weight=None, grad_bias=None):
    """Layer norm (mean given) or RMS norm (mean None) backward over the last axis of C-contiguous x, dy and
    gx (one shape): mean and rstd float64 with one value per row; weight None or a contiguous vector of the
    statistics dtype; grad_weight and grad_bias None or float64 vectors receiving sum(dy * xhat) and
    sum(dy) over the rows."""
    cdef int nd = cnp.PyArray_NDIM(x)
    if nd < 1:
        raise ValueError("normfast: rownorm_grad takes arrays of rank >= 1")
    cdef Py_ssize_t n = cnp.PyArray_DIM(x, nd - 1), rows = cnp.PyArray_SIZE(x) // n if n else 0
    _stats_like(x, (x, dy), cnp.PyArray_TYPE(x), False, "x and grad_out")
    _stats_like(x, (gx,), cnp.PyArray_TYPE(x), True, "grad_x")
    _flat((mean, rstd), cnp.NPY_FLOAT64, rows, False, "mean and rstd (one per row)")
    _flat((weight,), _stats_type(dtype), n, False, "weight (one per element of a row)")
    _flat((grad_weight, grad_bias), cnp.NPY_FLOAT64, n, True, "grad_weight and grad_bias (one per element of a row)")
    cdef nf_rowgrad spec
    spec.mean = <const double *>_data_or_null(mean)
    spec.rstd = <const double *>cnp.PyArray_DATA(rstd)
    spec.weight = _data_or_null(weight)
    spec.grad_weight = <double *>_data_or_null(grad_weight)
    spec.grad_bias = <double *>_data_or_null(grad_bias)
    cdef const void *px = cnp.PyArray_DATA(x)
    cdef const void *pd = cnp.PyArray_DATA(dy)
    cdef void *pg = cnp.PyArray_DATA(gx)
    cdef nf_status st
    with nogil:
        st = nf_rownorm_grad(<nf_dtype>dtype, rows, n, px, pd, pg, &spec)
    _check(st)


def merge(cnp.ndarray na not None, cnp.ndarray shift not None, cnp.ndarray mean not None, cnp.ndarray m2 not None,
          cnp.ndarray nb not None, cnp.ndarray shift_b not None, cnp.ndarray mean_b not None,
          cnp.ndarray m2_b not None):
    """Chan's merge of part b into part a in place (nf_merge): eight C-contiguous float64 arrays of one
    size, the counts na and nb too."""
    cdef int64_t size = cnp.PyArray_SIZE(na)
    _flat((na, nb, shift_b, mean_b, m2_b), cnp.NPY_FLOAT64, size, False, "merge's inputs", False)
    _flat((shift, mean, m2), cnp.NPY_FLOAT64, size, True, "merge's outputs", False)
    cdef const double *pna = <const double *>cnp.PyArray_DATA(na)
    cdef double *ps = <double *>cnp.PyArray_DATA(shift)
    cdef double *pm = <double *>cnp.PyArray_DATA(mean)
    cdef double *pq = <double *>cnp.PyArray_DATA(m2)
    cdef const double *pnb = <const double *>cnp.PyArray_DATA(nb)
    cdef const double *psb = <const double *>cnp.PyArray_DATA(shift_b)
    cdef const double *pmb = <const double *>cnp.PyArray_DATA(mean_b)
    cdef const double *pqb = <const double *>cnp.PyArray_DATA(m2_b)
    with nogil:
        nf_merge(size, pna, ps, pm, pq, pnb, psb, pmb, pqb)


def set_num_threads(int n):
    nf_set_num_threads(n)


def get_num_threads():
    return nf_get_num_threads()


def cap_threads_here(int n):
    """Caps the threads of kernels called from this thread at n (0: no cap)."""
    nf_cap_threads_here(n)


nf_get_num_threads()  # the first call records OpenMP's count at load, the reference for later limits


def openmp_enabled():
    return bool(nf_openmp_enabled())


def isa_compiled():
    return tuple(ISA_NAMES[i] for i in range(NF_ISA_COUNT) if nf_isa_compiled(<nf_isa>i))


def isa_supported():
    """Levels both compiled into this build and supported by this CPU."""
    return tuple(ISA_NAMES[i] for i in range(NF_ISA_COUNT)
                 if nf_isa_compiled(<nf_isa>i) and nf_isa_supported(<nf_isa>i))


def set_isa(str cap):
    """Use the best level at or below cap; returns the level now in use."""
    cdef int level = ISA_NAMES.index(cap)
    return ISA_NAMES[nf_set_isa(<nf_isa>level)]


def get_isa():
    return ISA_NAMES[nf_get_isa()]
