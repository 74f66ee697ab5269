// Graph scatter pooling for the scene-graph encoder (docs/ARCHITECTURE.md, "ScatterMeanPool"), and the
// gather-concat that feeds each GraphTripleConv layer (sg2im, Johnson et al. 2018).
//
// One source for every build: CuPy compiles it at run time with NVRTC (templates reached through
// `name_expressions`), nvcc compiles it ahead of time (CMakeLists.txt) into the fatbin the package ships, and
// the TensorRT AOT plugin compiles it to PTX. It therefore includes no header at all (NVRTC has no standard
// library and, on some installs, no cuda_fp16.h): half is a 16-bit storage type converted with the PTX `cvt`
// instructions, and arithmetic is always float.
#pragma once

namespace sg2v {

// IEEE binary16 storage, bit-compatible with CUDA's __half and numpy/CuPy float16.
struct __align__(2) half_t {
    unsigned short bits;
};

__device__ __forceinline__ float to_float(float x) { return x; }

__device__ __forceinline__ float to_float(half_t x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}

template <typename T>
__device__ __forceinline__ T from_float(float x);

template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }

template <>
__device__ __forceinline__ half_t from_float<half_t>(float x) {
    half_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(x));  // round to nearest even, as torch's .half()
    return h;
}

constexpr int kWarp = 32;

// out[b, o, :] = sum over n with index[b, n] == o and mask[b, n] != 0 of values[b, n, :], divided by
// max(count, 1). values (B, N, D), index (B, N), mask (B, N), out (B, O, D), all contiguous.
//
// Segment-major on purpose: one block owns one output row (b, o) and walks n in increasing order, so every
// output element is a sum in a fixed order by one thread. That makes the result bitwise reproducible run to
// run (atomicAdd onto out would sum in scheduling order) and needs no zero-fill launch before it. The price,
// every block scanning the N indices of its graph, is small here: N = 2T <= ~64 and O <= ~16. Indices outside
// [0, O) match no segment and are dropped (the one-hot form's behaviour); every output row is written.
//
// Per tile of 32 n, warp 0 compacts the matching n into shared memory in order (ballot + popc), then every
// thread sums only those rows for its feature columns, instead of each thread testing all N. Launch with
// blockDim.x a multiple of 32 (warp 0 must be whole for the full-mask ballot) and any grid size.
template <typename T, typename I, typename M>
__device__ __forceinline__ void scatter_mean_pool_body(const T* __restrict__ values,
                                                       const I* __restrict__ index,
                                                       const M* __restrict__ mask, int B, int N, int O,
                                                       int D, T* __restrict__ out) {
    __shared__ int hits[kWarp];
    __shared__ int num_hits;
    const int lane = threadIdx.x % kWarp;
    const long long segments = static_cast<long long>(B) * O;
    for (long long seg = blockIdx.x; seg < segments; seg += gridDim.x) {
        const long long b = seg / O;
        const int o = static_cast<int>(seg - b * O);
        const I* idx_b = index + b * N;
        const M* mask_b = mask + b * N;
        const T* val_b = values + b * N * D;
        T* out_row = out + seg * D;
        for (int d0 = 0; d0 < D; d0 += blockDim.x) {
            const int d = d0 + threadIdx.x;
            float acc = 0.f;
            int count = 0;
            for (int n0 = 0; n0 < N; n0 += kWarp) {
                if (threadIdx.x < kWarp) {
                    const int n = n0 + lane;
                    const bool hit = n < N && idx_b[n] == static_cast<I>(o) && to_float(mask_b[n]) != 0.f;
                    const unsigned ballot = __ballot_sync(0xffffffffu, hit);
                    if (hit) hits[__popc(ballot & ((1u << lane) - 1u))] = n;
                    if (lane == 0) num_hits = __popc(ballot);
                }
                __syncthreads();
                const int k_end = num_hits;
                if (d < D) {
                    for (int k = 0; k < k_end; ++k) acc += to_float(val_b[static_cast<long long>(hits[k]) * D + d]);
                }
                count += k_end;
                __syncthreads();  // hits is rewritten by the next tile
            }
            if (d < D) out_row[d] = from_float<T>(acc / static_cast<float>(count > 0 ? count : 1));
        }
    }
}

// out[b, t, :] = cat(obj[b, s], pred[b, t], obj[b, o]) with (s, _, o) = triples[b, t]: the input of
// GraphTripleConv's net1 and of the local-token head, in one pass instead of two gathers and a concat.
// obj (B, O, Dobj), pred (B, T, Dpred), triples (B, T, 3), out (B, T, 2 Dobj + Dpred), all contiguous.
// An object index outside [0, O) writes zeros for its part rather than reading out of bounds.
template <typename T, typename I>
__device__ __forceinline__ void gather_concat_body(const T* __restrict__ obj, const T* __restrict__ pred,
                                                   const I* __restrict__ triples, int B, int O, int T_,
                                                   int Dobj, int Dpred, T* __restrict__ out) {
    const int width = 2 * Dobj + Dpred;
    const long long rows = static_cast<long long>(B) * T_;
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const long long b = row / T_;
        const I s = triples[row * 3 + 0];
        const I o = triples[row * 3 + 2];
        const bool s_ok = s >= 0 && s < O;
        const bool o_ok = o >= 0 && o < O;
        const T* s_vec = obj + (b * O + (s_ok ? static_cast<long long>(s) : 0)) * Dobj;
        const T* o_vec = obj + (b * O + (o_ok ? static_cast<long long>(o) : 0)) * Dobj;
        const T* p_vec = pred + row * Dpred;
        T* out_row = out + row * width;
        const T zero = from_float<T>(0.f);
        for (int c = threadIdx.x; c < width; c += blockDim.x) {
            T v;
            if (c < Dobj) {
                v = s_ok ? s_vec[c] : zero;
            } else if (c < Dobj + Dpred) {
                v = p_vec[c - Dobj];
            } else {
                v = o_ok ? o_vec[c - Dobj - Dpred] : zero;
            }
            out_row[c] = v;
        }
    }
}

// Templated entry points for run-time compilation: CuPy reaches them by name expression, e.g.
// "sg2v::scatter_mean_pool<float, long long, float>". The argument order (inputs, int sizes, output) is the
// one TensorRT's AOT plugins require, so the extern "C" wrappers in scatter_pool.cu share it.
template <typename T, typename I, typename M>
__global__ void scatter_mean_pool(const T* __restrict__ values, const I* __restrict__ index,
                                  const M* __restrict__ mask, int B, int N, int O, int D, T* __restrict__ out) {
    scatter_mean_pool_body<T, I, M>(values, index, mask, B, N, O, D, out);
}

template <typename T, typename I>
__global__ void gather_concat(const T* __restrict__ obj, const T* __restrict__ pred,
                              const I* __restrict__ triples, int B, int O, int T_, int Dobj, int Dpred,
                              T* __restrict__ out) {
    gather_concat_body<T, I>(obj, pred, triples, B, O, T_, Dobj, Dpred, out);
}

}  // namespace sg2v

// Plain-named kernels for the ahead-of-time paths (prebuilt fatbin, TensorRT AOT plugin), which look kernels
// up by symbol and cannot evaluate a name expression. Suffixes: value type, index type, mask type.
#define SG2V_FOR_EACH_POOL(X)                  \
    X(f32_i32_f32, float, int, float)           \
    X(f32_i64_f32, float, long long, float)     \
    X(f16_i32_f32, sg2v::half_t, int, float)    \
    X(f16_i64_f32, sg2v::half_t, long long, float) \
    X(f16_i32_f16, sg2v::half_t, int, sg2v::half_t) \
    X(f16_i64_f16, sg2v::half_t, long long, sg2v::half_t)

#define SG2V_FOR_EACH_GATHER(X)          \
    X(f32_i32, float, int)                \
    X(f32_i64, float, long long)          \
    X(f16_i32, sg2v::half_t, int)         \
    X(f16_i64, sg2v::half_t, long long)

#define SG2V_DECLARE_POOL(suffix, T, I, M)                                                              \
    extern "C" __global__ void sg2v_scatter_mean_pool_##suffix(const T* values, const I* index,        \
                                                               const M* mask, int B, int N, int O, int D, \
                                                               T* out);
#define SG2V_DECLARE_GATHER(suffix, T, I)                                                                \
    extern "C" __global__ void sg2v_gather_concat_##suffix(const T* obj, const T* pred, const I* triples, \
                                                           int B, int O, int T_, int Dobj, int Dpred, T* out);

SG2V_FOR_EACH_POOL(SG2V_DECLARE_POOL)
SG2V_FOR_EACH_GATHER(SG2V_DECLARE_GATHER)
