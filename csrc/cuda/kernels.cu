// CUDA kernels of pso_step_, pso_step_random_ and combine. Torch-free (see launch.h).
//
// Each thread owns one 16-byte vector of columns (4 fp32 or 8 bf16/fp16 elements), loads gbest and
// gworst for it once, then walks the P particles: bytes per element = 2*s_x + 2*s_v + s_p + (s_g+s_w)/P,
// the roofline of docs/KERNELS.md. Grid-stride loops, int64 indexing, fp32 math; built with --fmad=false
// so that fp32 results are bit-identical to the reference. The vector path needs 16-byte aligned rows;
// otherwise (or for the last D % VEC columns) the same code runs one element at a time.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "launch.h"
#include "swarmkern/philox.h"
#include "swarmkern/update.h"

namespace swarmkern::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <>
__device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float f);
template <>
__device__ __forceinline__ float from_float<float>(float f) { return f; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float f) { return __float2bfloat16_rn(f); }
template <>
__device__ __forceinline__ __half from_float<__half>(float f) { return __float2half_rn(f); }

// VEC consecutive elements moved as one access (16 bytes when VEC * sizeof(T) == 16).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void load_floats(const T* __restrict__ p, float (&out)[VEC]) {
  const Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(p);
#pragma unroll
  for (int e = 0; e < VEC; ++e) out[e] = to_float(pk.v[e]);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_floats(T* __restrict__ p, const float (&in)[VEC]) {
  Pack<T, VEC> pk;
#pragma unroll
  for (int e = 0; e < VEC; ++e) pk.v[e] = from_float<T>(in[e]);
  *reinterpret_cast<Pack<T, VEC>*>(p) = pk;
}

// One thread, VEC columns starting at j, all particles. RANDOM selects pso_step_random_.
template <typename T, int VEC, bool RANDOM>
__device__ __forceinline__ void update_columns(const SwarmArgs& a, const RandomArgs& rnd, int64_t j) {
  T* __restrict__ x = static_cast<T*>(a.x);
  T* __restrict__ v = static_cast<T*>(a.v);
  const T* __restrict__ p = static_cast<const T*>(a.pbest);
  float g[VEC], w[VEC];
  load_floats<T, VEC>(static_cast<const T*>(a.gbest) + j, g);
  load_floats<T, VEC>(static_cast<const T*>(a.gworst) + j, w);
#pragma unroll 2
  for (int64_t i = 0; i < a.P; ++i) {
    float xs[VEC], vs[VEC], ps[VEC];
    load_floats<T, VEC>(x + i * a.sx + j, xs);
    load_floats<T, VEC>(v + i * a.sv + j, vs);
    load_floats<T, VEC>(p + i * a.sp + j, ps);
    const float4 cf = __ldg(reinterpret_cast<const float4*>(a.coef) + i);
    uint32_t particle = 0;
    if constexpr (RANDOM) particle = static_cast<uint32_t>(static_cast<uint64_t>(rnd.particle_offset + i));
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      float n;
      if constexpr (RANDOM) {
        float u[4];
        element_uniforms(rnd.seed, rnd.iteration, particle, j + e, u);
        const PsoCoef<float> c{random_coef(u[0], rnd.lo, rnd.span, cf.x), random_coef(u[1], rnd.lo, rnd.span, cf.y),
                               random_coef(u[2], rnd.lo, rnd.span, cf.z), random_coef(u[3], rnd.lo, rnd.span, cf.w)};
        n = pso_velocity(c, xs[e], vs[e], ps[e], g[e], w[e]);
        if (rnd.normalize) n = normalized_or_zero(n, coef_total(c));
      } else {
        const PsoCoef<float> c{cf.x, cf.y, cf.z, cf.w};
        n = pso_velocity(c, xs[e], vs[e], ps[e], g[e], w[e]);
      }
      xs[e] = pso_location(xs[e], a.step, n);
      vs[e] = n;
    }
    store_floats<T, VEC>(v + i * a.sv + j, vs);
    store_floats<T, VEC>(x + i * a.sx + j, xs);
  }
}

// Indices [0, n_vec) are whole vectors, [n_vec, n_vec + tail) the last D % VEC single columns.
template <typename T, int VEC, bool RANDOM>
__global__ void __launch_bounds__(kThreads) pso_kernel(SwarmArgs a, RandomArgs rnd) {
  const int64_t n_vec = a.D / VEC;
  const int64_t total = n_vec + (a.D - n_vec * VEC);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    if (VEC > 1 && idx >= n_vec) {
      update_columns<T, 1, RANDOM>(a, rnd, n_vec * VEC + (idx - n_vec));
    } else {
      update_columns<T, VEC, RANDOM>(a, rnd, idx * VEC);
    }
  }
}

template <typename T>
__device__ __forceinline__ float load_one(const void* base, int64_t offset) {
  return to_float(static_cast<const T*>(base)[offset]);
}

// out[m, j] = sum_k w[m, k] * src[k, j], k in order from 0. One thread per VEC columns; src rows are
// re-read from cache for each output row.
template <typename S, typename O, int VEC>
__device__ __forceinline__ void combine_columns(const CombineArgs& a, int64_t j) {
  const S* __restrict__ src = static_cast<const S*>(a.src);
  O* __restrict__ out = static_cast<O*>(a.out);
  for (int64_t m = 0; m < a.M; ++m) {
    float acc[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[e] = 0.0f;
    for (int64_t k = 0; k < a.K; ++k) {
      float s[VEC];
      load_floats<S, VEC>(src + k * a.s_src + j, s);
      const float wk = __ldg(a.weights + m * a.K + k);
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[e] = combine_term(acc[e], wk, s[e]);
    }
    store_floats<O, VEC>(out + m * a.s_out + j, acc);
  }
}

template <typename S, typename O, int VEC>
__global__ void __launch_bounds__(kThreads) combine_kernel(CombineArgs a) {
  const int64_t n_vec = a.D / VEC;
  const int64_t total = n_vec + (a.D - n_vec * VEC);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    if (VEC > 1 && idx >= n_vec) {
      combine_columns<S, O, 1>(a, n_vec * VEC + (idx - n_vec));
    } else {
      combine_columns<S, O, VEC>(a, idx * VEC);
    }
  }
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

bool rows_aligned16(int64_t rows, int64_t row_stride, size_t elem_size) {
  return rows <= 1 || (row_stride * static_cast<int64_t>(elem_size)) % 16 == 0;
}

int grid_for(int64_t work_items) {
  static int max_blocks = [] {
    int device = 0, sms = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      sms = 132;
    }
    return sms * 8;  // enough resident warps to cover memory latency; the loop strides over the rest
  }();
  const int64_t needed = (work_items + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(needed, max_blocks)));
}

template <typename T, bool RANDOM>
cudaError_t launch_pso_typed(const SwarmArgs& a, const RandomArgs& rnd, cudaStream_t stream) {
  constexpr int VEC = 16 / sizeof(T);
  const bool vector_ok = aligned16(a.x) && aligned16(a.v) && aligned16(a.pbest) && aligned16(a.gbest) &&
                         aligned16(a.gworst) && rows_aligned16(a.P, a.sx, sizeof(T)) &&
                         rows_aligned16(a.P, a.sv, sizeof(T)) && rows_aligned16(a.P, a.sp, sizeof(T));
  if (vector_ok) {
    const int64_t items = a.D / VEC + a.D % VEC;
    pso_kernel<T, VEC, RANDOM><<<grid_for(items), kThreads, 0, stream>>>(a, rnd);
  } else {
    pso_kernel<T, 1, RANDOM><<<grid_for(a.D), kThreads, 0, stream>>>(a, rnd);
  }
  return cudaGetLastError();
}

template <bool RANDOM>
cudaError_t launch_pso(const SwarmArgs& a, const RandomArgs& rnd, cudaStream_t stream) {
  if (a.P == 0 || a.D == 0) return cudaSuccess;
  switch (a.dtype) {
    case Dtype::kFloat32: return launch_pso_typed<float, RANDOM>(a, rnd, stream);
    case Dtype::kBFloat16: return launch_pso_typed<__nv_bfloat16, RANDOM>(a, rnd, stream);
    case Dtype::kFloat16: return launch_pso_typed<__half, RANDOM>(a, rnd, stream);
  }
  return cudaErrorInvalidValue;
}

template <typename S, typename O>
cudaError_t launch_combine_typed(const CombineArgs& a, cudaStream_t stream) {
  // Vector width limited by the wider of the two dtypes so both sides move whole 16-byte packs.
  constexpr int VEC = 16 / (sizeof(S) > sizeof(O) ? sizeof(S) : sizeof(O));
  const bool vector_ok = aligned16(a.src) && aligned16(a.out) && rows_aligned16(a.K, a.s_src, sizeof(S)) &&
                         rows_aligned16(a.M, a.s_out, sizeof(O));
  if (vector_ok) {
    combine_kernel<S, O, VEC><<<grid_for(a.D / VEC + a.D % VEC), kThreads, 0, stream>>>(a);
  } else {
    combine_kernel<S, O, 1><<<grid_for(a.D), kThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

template <typename S>
cudaError_t launch_combine_src(const CombineArgs& a, cudaStream_t stream) {
  switch (a.out_dtype) {
    case Dtype::kFloat32: return launch_combine_typed<S, float>(a, stream);
    case Dtype::kBFloat16: return launch_combine_typed<S, __nv_bfloat16>(a, stream);
    case Dtype::kFloat16: return launch_combine_typed<S, __half>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_pso_step(const SwarmArgs& args, cudaStream_t stream) {
  return launch_pso<false>(args, RandomArgs{}, stream);
}

cudaError_t launch_pso_step_random(const SwarmArgs& args, const RandomArgs& random, cudaStream_t stream) {
  return launch_pso<true>(args, random, stream);
}

cudaError_t launch_combine(const CombineArgs& args, cudaStream_t stream) {
  if (args.M == 0 || args.D == 0) return cudaSuccess;
  switch (args.src_dtype) {
    case Dtype::kFloat32: return launch_combine_src<float>(args, stream);
    case Dtype::kBFloat16: return launch_combine_src<__nv_bfloat16>(args, stream);
    case Dtype::kFloat16: return launch_combine_src<__half>(args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace swarmkern::cuda
