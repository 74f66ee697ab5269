// Parity of the shipped (extern "C") kernels against a float64 CPU loop on fresh random inputs: float and half
// values, int32 and int64 indices, float and half masks; empty message lists, wholly padded graphs, repeated
// and out-of-range indices, D wider than a block, N spanning several 32-wide tiles. Outputs are poisoned
// before each launch so an unwritten element fails, and each launch runs twice to check bitwise determinism.
// Exit status 0 only when every case passes; ctest runs it (it needs a CUDA GPU).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "scatter_pool.cuh"

#define CUDA_CHECK(call)                                                                         \
    do {                                                                                         \
        cudaError_t err_ = (call);                                                               \
        if (err_ != cudaSuccess) {                                                               \
            std::fprintf(stderr, "%s:%d: %s failed: %s (%s)\n", __FILE__, __LINE__, #call,       \
                         cudaGetErrorName(err_), cudaGetErrorString(err_));                      \
            std::exit(2);                                                                        \
        }                                                                                        \
    } while (0)

namespace {

using half_t = sg2v::half_t;

float host_to_float(float x) { return x; }
float host_to_float(half_t x) {
    __half h;
    std::memcpy(&h, &x, sizeof(h));
    return __half2float(h);
}
template <typename T>
T host_from_float(float x);
template <>
float host_from_float<float>(float x) { return x; }
template <>
half_t host_from_float<half_t>(float x) {
    __half h = __float2half_rn(x);
    half_t out;
    std::memcpy(&out, &h, sizeof(out));
    return out;
}

template <typename T> const char* type_name();
template <> const char* type_name<float>() { return "f32"; }
template <> const char* type_name<half_t>() { return "f16"; }
template <> const char* type_name<int>() { return "i32"; }
template <> const char* type_name<long long>() { return "i64"; }

using PoolFn = void (*)(const void*, const void*, const void*, int, int, int, int, void*);

template <typename T, typename I, typename M>
void* pool_kernel();
#define SG2V_POOL_PTR(suffix, T, I, M) \
    template <>                         \
    void* pool_kernel<T, I, M>() { return reinterpret_cast<void*>(&sg2v_scatter_mean_pool_##suffix); }
SG2V_FOR_EACH_POOL(SG2V_POOL_PTR)

template <typename T, typename I>
void* gather_kernel();
#define SG2V_GATHER_PTR(suffix, T, I) \
    template <>                        \
    void* gather_kernel<T, I>() { return reinterpret_cast<void*>(&sg2v_gather_concat_##suffix); }
SG2V_FOR_EACH_GATHER(SG2V_GATHER_PTR)

int threads_for(int width) {
    int t = (width + 31) / 32 * 32;  // warp 0 must be whole: the pool kernel ballots over it
    return t < 32 ? 32 : (t > 256 ? 256 : t);
}

template <typename X>
X* to_device(const std::vector<X>& host) {
    X* dev = nullptr;
    CUDA_CHECK(cudaMalloc(&dev, host.size() * sizeof(X) + 1));  // +1: a valid pointer for empty arrays
    if (!host.empty()) CUDA_CHECK(cudaMemcpy(dev, host.data(), host.size() * sizeof(X), cudaMemcpyHostToDevice));
    return dev;
}

std::mt19937_64 rng(20261126);

template <typename T, typename I, typename M>
bool check_pool(int B, int N, int O, int D, int index_range, const std::string& label) {
    std::normal_distribution<float> normal(0.f, 1.f);
    std::uniform_int_distribution<int> pick(-1, index_range - 1);  // -1: out of range, dropped
    std::uniform_real_distribution<float> unit(0.f, 1.f);
    std::vector<T> values(static_cast<size_t>(B) * N * D);
    std::vector<I> index(static_cast<size_t>(B) * N);
    std::vector<M> mask(static_cast<size_t>(B) * N);
    for (auto& v : values) v = host_from_float<T>(normal(rng));
    for (auto& i : index) i = static_cast<I>(pick(rng));
    for (int b = 0; b < B; ++b) {
        const bool all_padded = (b % 3 == 1);  // a wholly padded graph: every output row must be zero
        for (int n = 0; n < N; ++n) {
            float m = unit(rng) < 0.7f ? (unit(rng) < 0.5f ? 1.f : 0.5f + unit(rng)) : 0.f;  // nonzero = real
            mask[static_cast<size_t>(b) * N + n] = host_from_float<M>(all_padded ? 0.f : m);
        }
    }
    std::vector<double> ref(static_cast<size_t>(B) * O * D, 0.0);
    for (int b = 0; b < B; ++b)
        for (int o = 0; o < O; ++o) {
            int count = 0;
            for (int n = 0; n < N; ++n) {
                size_t k = static_cast<size_t>(b) * N + n;
                if (static_cast<long long>(index[k]) != o || host_to_float(mask[k]) == 0.f) continue;
                ++count;
                for (int d = 0; d < D; ++d)
                    ref[(static_cast<size_t>(b) * O + o) * D + d] += host_to_float(values[k * D + d]);
            }
            for (int d = 0; d < D; ++d) ref[(static_cast<size_t>(b) * O + o) * D + d] /= (count > 0 ? count : 1);
        }

    T* d_values = to_device(values);
    I* d_index = to_device(index);
    M* d_mask = to_device(mask);
    const size_t out_bytes = ref.size() * sizeof(T);
    T* d_out = nullptr;
    CUDA_CHECK(cudaMalloc(&d_out, out_bytes + 1));
    std::vector<T> first(ref.size()), second(ref.size());
    for (int rep = 0; rep < 2; ++rep) {
        if (out_bytes > 0) CUDA_CHECK(cudaMemset(d_out, 0xff, out_bytes));  // NaN poison: unwritten fails
        long long segments = static_cast<long long>(B) * O;
        if (segments > 0) {
            void* args[] = {&d_values, &d_index, &d_mask, &B, &N, &O, &D, &d_out};
            int grid = static_cast<int>(segments < (1 << 30) ? segments : (1 << 30));
            CUDA_CHECK(cudaLaunchKernel(pool_kernel<T, I, M>(), dim3(grid), dim3(threads_for(D)), args, 0, 0));
            CUDA_CHECK(cudaGetLastError());
        }
        CUDA_CHECK(cudaDeviceSynchronize());
        if (out_bytes > 0)
            CUDA_CHECK(cudaMemcpy(rep == 0 ? first.data() : second.data(), d_out, out_bytes, cudaMemcpyDeviceToHost));
    }
    CUDA_CHECK(cudaFree(d_values));
    CUDA_CHECK(cudaFree(d_index));
    CUDA_CHECK(cudaFree(d_mask));
    CUDA_CHECK(cudaFree(d_out));

    const bool half_out = sizeof(T) == 2;
    double num = 0.0, den = 0.0, worst = 0.0;
    for (size_t k = 0; k < ref.size(); ++k) {
        double got = host_to_float(first[k]);
        double err = std::fabs(got - ref[k]);
        if (!(err == err) || std::isinf(got)) worst = INFINITY;  // NaN: unwritten or broken
        double tol = half_out ? 1e-3 * (1.0 + std::fabs(ref[k])) : 1e-5 * (1.0 + std::fabs(ref[k]));
        if (err > tol && err > worst) worst = err;
        num += err * err;
        den += ref[k] * ref[k];
    }
    const bool same = ref.empty() || std::memcmp(first.data(), second.data(), out_bytes) == 0;
    const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
    const bool ok = worst == 0.0 && same && rel < (half_out ? 1e-3 : 1e-6);
    std::printf("%-4s pool  %s/%s/%s B=%d N=%d O=%d D=%d %-22s rel_err=%.2e deterministic=%s\n",
                ok ? "ok" : "FAIL", type_name<T>(), type_name<I>(), type_name<M>(), B, N, O, D, label.c_str(), rel,
                same ? "yes" : "NO");
    return ok;
}

template <typename T, typename I>
bool check_gather(int B, int O, int Tn, int Dobj, int Dpred) {
    std::normal_distribution<float> normal(0.f, 1.f);
    std::uniform_int_distribution<int> pick(0, O - 1);
    std::vector<T> obj(static_cast<size_t>(B) * O * Dobj), pred(static_cast<size_t>(B) * Tn * Dpred);
    std::vector<I> triples(static_cast<size_t>(B) * Tn * 3);
    for (auto& v : obj) v = host_from_float<T>(normal(rng));
    for (auto& v : pred) v = host_from_float<T>(normal(rng));
    for (auto& i : triples) i = static_cast<I>(pick(rng));
    if (!triples.empty()) triples[0] = static_cast<I>(O);  // out of range: that part must come back zero
    const int W = 2 * Dobj + Dpred;
    std::vector<float> ref(static_cast<size_t>(B) * Tn * W);
    for (int b = 0; b < B; ++b)
        for (int t = 0; t < Tn; ++t) {
            size_t row = static_cast<size_t>(b) * Tn + t;
            long long s = static_cast<long long>(triples[row * 3]), o = static_cast<long long>(triples[row * 3 + 2]);
            for (int c = 0; c < W; ++c) {
                float v;
                if (c < Dobj) v = (s >= 0 && s < O) ? host_to_float(obj[(b * O + s) * Dobj + c]) : 0.f;
                else if (c < Dobj + Dpred) v = host_to_float(pred[row * Dpred + (c - Dobj)]);
                else v = (o >= 0 && o < O) ? host_to_float(obj[(b * O + o) * Dobj + (c - Dobj - Dpred)]) : 0.f;
                ref[row * W + c] = v;
            }
        }
    T* d_obj = to_device(obj);
    T* d_pred = to_device(pred);
    I* d_tri = to_device(triples);
    T* d_out = nullptr;
    const size_t out_bytes = ref.size() * sizeof(T);
    CUDA_CHECK(cudaMalloc(&d_out, out_bytes + 1));
    if (out_bytes > 0) CUDA_CHECK(cudaMemset(d_out, 0xff, out_bytes));
    long long rows = static_cast<long long>(B) * Tn;
    if (rows > 0) {
        void* args[] = {&d_obj, &d_pred, &d_tri, &B, &O, &Tn, &Dobj, &Dpred, &d_out};
        CUDA_CHECK(cudaLaunchKernel(gather_kernel<T, I>(), dim3(static_cast<unsigned>(rows)), dim3(threads_for(W)),
                                    args, 0, 0));
        CUDA_CHECK(cudaGetLastError());
    }
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<T> got(ref.size());
    if (out_bytes > 0) CUDA_CHECK(cudaMemcpy(got.data(), d_out, out_bytes, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaFree(d_obj));
    CUDA_CHECK(cudaFree(d_pred));
    CUDA_CHECK(cudaFree(d_tri));
    CUDA_CHECK(cudaFree(d_out));
    size_t bad = 0;
    for (size_t k = 0; k < ref.size(); ++k)
        if (host_to_float(got[k]) != ref[k]) ++bad;  // a copy: exact, and NaN poison never equals
    std::printf("%-4s gather %s/%s B=%d O=%d T=%d Dobj=%d Dpred=%d mismatches=%zu\n", bad ? "FAIL" : "ok",
                type_name<T>(), type_name<I>(), B, O, Tn, Dobj, Dpred, bad);
    return bad == 0;
}

template <typename T, typename I, typename M>
bool pool_suite() {
    bool ok = true;
    ok &= check_pool<T, I, M>(3, 24, 9, 64, 9, "graphs");
    ok &= check_pool<T, I, M>(2, 70, 5, 300, 3, "repeats,D>block,3 tiles");
    ok &= check_pool<T, I, M>(4, 0, 6, 33, 6, "no messages");
    ok &= check_pool<T, I, M>(0, 16, 6, 32, 6, "empty batch");
    ok &= check_pool<T, I, M>(1, 1, 1, 1, 1, "single");
    ok &= check_pool<T, I, M>(257, 64, 17, 128, 17, "batch of 257");
    return ok;
}

template <typename T, typename I>
bool gather_suite() {
    bool ok = true;
    ok &= check_gather<T, I>(3, 9, 16, 32, 32);
    ok &= check_gather<T, I>(2, 5, 7, 130, 70);
    ok &= check_gather<T, I>(0, 5, 7, 8, 8);
    return ok;
}

}  // namespace

int main() {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        std::fprintf(stderr, "no CUDA device: this test needs a GPU\n");
        return 1;
    }
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
    bool ok = true;
    ok &= pool_suite<float, int, float>();
    ok &= pool_suite<float, long long, float>();
    ok &= pool_suite<half_t, int, float>();
    ok &= pool_suite<half_t, long long, float>();
    ok &= pool_suite<half_t, int, half_t>();
    ok &= pool_suite<half_t, long long, half_t>();
    ok &= gather_suite<float, int>();
    ok &= gather_suite<float, long long>();
    ok &= gather_suite<half_t, int>();
    ok &= gather_suite<half_t, long long>();
    std::printf("%s\n", ok ? "all passed" : "FAILURES");
    return ok ? 0 : 1;
}
