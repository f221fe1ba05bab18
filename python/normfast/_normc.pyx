# cython: language_level=3, boundscheck=False, wraparound=False
"""Thin binding over the C engine: reads pointers, shapes and strides off NumPy arrays, releases the GIL,
calls normc. Every argument is checked in functional.py; this layer only refuses what C cannot take."""
cimport numpy as cnp
from libc.stdint cimport int64_t

cnp.import_array()

ISA_NAMES = tuple(nf_isa_name(<nf_isa>i).decode() for i in range(NF_ISA_COUNT))
DTYPE_CODES = {"float32": NF_F32, "float64": NF_F64, "float16": NF_F16, "bfloat16": NF_BF16}


cdef int _check(nf_status st) except -1:
    if st == NF_ENOMEM:
        raise MemoryError("normfast: out of memory for scratch space")
    if st != NF_OK:
        raise ValueError("normfast: the C engine rejected the arguments (status %d)" % st)
    return 0


def moments(cnp.ndarray x, int dtype_code, tuple reduce, cnp.ndarray mean, cnp.ndarray var,
            double ddof):
    """Fill mean and var (arrays of x's rank, size 1 on reduced axes) with x's moments.

    x must be aligned with strides that are multiples of its item size; reduce holds one bool per axis.
    """
    cdef int nd = cnp.PyArray_NDIM(x), i
    cdef int64_t shape[64]
    cdef int64_t strides[64]
    cdef int64_t ostrides[64]
    cdef unsigned char red[64]
    cdef nf_plan plan
    cdef Py_ssize_t isz = cnp.PyArray_ITEMSIZE(x), osz = cnp.PyArray_ITEMSIZE(mean)
    if nd > NF_MAXDIM or cnp.PyArray_NDIM(mean) != nd or cnp.PyArray_NDIM(var) != nd or len(reduce) != nd:
        raise ValueError("normfast: rank mismatch between x, reduce and outputs")
    if cnp.PyArray_ITEMSIZE(var) != osz or not (cnp.PyArray_ISWRITEABLE(mean) and cnp.PyArray_ISWRITEABLE(var)):
        raise ValueError("normfast: outputs must be writeable arrays of one dtype")
    for i in range(nd):
        shape[i] = cnp.PyArray_DIM(x, i)
        strides[i] = cnp.PyArray_STRIDE(x, i) // isz
        red[i] = 1 if reduce[i] else 0
        # mean and var share a layout by construction; a reduced axis has size 1 in the outputs
        ostrides[i] = cnp.PyArray_STRIDE(mean, i) // osz
        if cnp.PyArray_STRIDE(var, i) != cnp.PyArray_STRIDE(mean, i) or \
                cnp.PyArray_DIM(mean, i) != (1 if red[i] else shape[i]):
            raise ValueError("normfast: outputs do not match the kept shape of x")
    cdef const void *px = cnp.PyArray_DATA(x)
    cdef void *pm = cnp.PyArray_DATA(mean)
    cdef void *pv = cnp.PyArray_DATA(var)
    cdef nf_dtype dt = <nf_dtype>dtype_code
    cdef nf_status st
    with nogil:
        st = nf_plan_make(&plan, nd, shape, strides, ostrides, NULL, red)
        if st == NF_OK:
            st = nf_moments(&plan, dt, px, pm, pv, ddof)
    _check(st)


def set_num_threads(int n):
    nf_set_num_threads(n)


def get_num_threads():
    return nf_get_num_threads()


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
