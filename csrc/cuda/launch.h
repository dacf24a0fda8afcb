// Host entry points of the CUDA kernels (kernels.cu). Torch-free on purpose: kernels.cu then compiles
// with nvcc alone (scripts/check_cuda_compile.sh), and ops_cuda.cpp adapts torch tensors to these.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace swarmkern::cuda {

enum class Dtype : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// x, v, pbest: [P, D] with row strides sx, sv, sp (elements) and unit column stride; gbest, gworst [D];
// coef: [P, 4] float32 contiguous, on the device.
struct SwarmArgs {
  void* x;
  void* v;
  const void* pbest;
  const void* gbest;
  const void* gworst;
  const float* coef;
  int64_t P, D;
  int64_t sx, sv, sp;
  float step;
  Dtype dtype;
};

struct RandomArgs {
  uint64_t seed;
  uint32_t iteration;
  int64_t particle_offset;
  float lo, span;  // r = lo + span * u, both already rounded to fp32 like the reference
  bool normalize;
  bool random_inertia;  // false: the inertia coefficient is phi_v itself (classic constant inertia)
};

// src [K, D] (row stride s_src), weights [M, K] float32 contiguous, out [M, D] (row stride s_out).
// out must not overlap src (ops_cuda.cpp routes overlapping calls through a temporary).
struct CombineArgs {
  const void* src;
  const float* weights;
  void* out;
  int64_t K, M, D;
  int64_t s_src, s_out;
  Dtype src_dtype, out_dtype;
};

cudaError_t launch_pso_step(const SwarmArgs& args, cudaStream_t stream);
cudaError_t launch_pso_step_random(const SwarmArgs& args, const RandomArgs& random, cudaStream_t stream);
cudaError_t launch_combine(const CombineArgs& args, cudaStream_t stream);

}  // namespace swarmkern::cuda
