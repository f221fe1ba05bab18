/* One instantiation, by each_dtype.h: the kernel templates with the parameters it defined, which are then
 * undefined for the next one. */
#include NF_TEMPLATE
#undef NF_T
#undef NF_A
#undef NF_V
#undef NF_VI
#undef NF_W
#undef NF_LOAD
#undef NF_VLOAD
#undef NF_STORE
#undef NF_VSTORE
#undef NF_EXP
#undef NF_TAG
#undef NF_DT
#undef NF_SEG_A
