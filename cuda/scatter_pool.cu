// Plain-named (extern "C") instances of the kernels in scatter_pool.cuh, for the fatbin CMake builds and the
// TensorRT AOT plugin; run-time compilation uses the templates directly through name expressions.
#include "scatter_pool.cuh"

#define SG2V_DEFINE_POOL(suffix, T, I, M)                                                                \
    extern "C" __global__ void sg2v_scatter_mean_pool_##suffix(const T* values, const I* index,          \
                                                               const M* mask, int B, int N, int O, int D, \
                                                               T* out) {                                  \
        sg2v::scatter_mean_pool_body<T, I, M>(values, index, mask, B, N, O, D, out);                      \
    }
#define SG2V_DEFINE_GATHER(suffix, T, I)                                                                 \
    extern "C" __global__ void sg2v_gather_concat_##suffix(const T* obj, const T* pred, const I* triples, \
                                                           int B, int O, int T_, int Dobj, int Dpred,      \
                                                           T* out) {                                      \
        sg2v::gather_concat_body<T, I>(obj, pred, triples, B, O, T_, Dobj, Dpred, out);                   \
    }

SG2V_FOR_EACH_POOL(SG2V_DEFINE_POOL)
SG2V_FOR_EACH_GATHER(SG2V_DEFINE_GATHER)
