// CUDA implementations of the swarmkern ops: adapt tensors to the torch-free launchers of kernels.cu,
// on the tensors' device and current stream.
#include <ATen/ATen.h>
#include <Python.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

#include "../checks.h"
#include "launch.h"

// Importing swarmkern._C_cuda loads this library, which registers the CUDA kernels.
PyMODINIT_FUNC PyInit__C_cuda(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_cuda", "swarmkern CUDA kernels", -1, nullptr};
  return PyModule_Create(&module_def);
}

namespace swarmkern::cuda {
namespace {

Dtype dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return Dtype::kFloat32;
    case at::kBFloat16: return Dtype::kBFloat16;
    case at::kHalf: return Dtype::kFloat16;
    default: TORCH_CHECK(false, "swarmkern: unsupported dtype ", t);
  }
}

// The kernels read coef rows as float4: make sure the table is 16-byte aligned.
at::Tensor aligned_table(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 ? t : t.clone();
}

SwarmArgs swarm_args(const at::Tensor& x, const at::Tensor& v, const at::Tensor& pbest, const at::Tensor& gbest,
                     const at::Tensor& gworst, const at::Tensor& coef, double step) {
  return SwarmArgs{x.data_ptr(), v.data_ptr(), pbest.data_ptr(), gbest.data_ptr(), gworst.data_ptr(),
                   coef.data_ptr<float>(), x.size(0), x.size(1), x.stride(0), v.stride(0), pbest.stride(0),
                   static_cast<float>(step), dtype_of(x.scalar_type())};
}

void pso_step_cuda(const at::Tensor& x, const at::Tensor& v, const at::Tensor& pbest, const at::Tensor& gbest,
                   const at::Tensor& gworst, const at::Tensor& coef, double step) {
  check_swarm_args("swarmkern.pso_step_", x, v, pbest, gbest, gworst, coef, c10::DeviceType::CUDA);
  if (x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor table = aligned_table(coef);
  C10_CUDA_CHECK(launch_pso_step(swarm_args(x, v, pbest, gbest, gworst, table, step),
                                 c10::cuda::getCurrentCUDAStream()));
}

void pso_step_random_cuda(const at::Tensor& x, const at::Tensor& v, const at::Tensor& pbest,
                          const at::Tensor& gbest, const at::Tensor& gworst, const at::Tensor& phi, double step,
                          int64_t seed, int64_t iteration, int64_t particle_offset, double r_lo, double r_hi,
                          bool normalize, bool random_inertia) {
  check_swarm_args("swarmkern.pso_step_random_", x, v, pbest, gbest, gworst, phi, c10::DeviceType::CUDA);
  if (x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor table = aligned_table(phi);
  const RandomArgs random{static_cast<uint64_t>(seed), static_cast<uint32_t>(static_cast<uint64_t>(iteration)),
                          particle_offset, static_cast<float>(r_lo), static_cast<float>(r_hi - r_lo), normalize,
                          random_inertia};
  C10_CUDA_CHECK(launch_pso_step_random(swarm_args(x, v, pbest, gbest, gworst, table, step), random,
                                        c10::cuda::getCurrentCUDAStream()));
}

void combine_out_cuda(const at::Tensor& src, const at::Tensor& weights, const at::Tensor& out) {
  check_combine_args(src, weights, out, c10::DeviceType::CUDA);
  if (out.numel() == 0) return;
  if (src.size(0) == 0) {
    out.zero_();
    return;
  }
  const c10::cuda::CUDAGuard guard(src.device());
  // Each thread writes an output row before reading the next one's sources: when out shares memory
  // with src, compute into a temporary first.
  const bool overlap = ranges_overlap(src, out);
  const at::Tensor target = overlap ? at::empty(out.sizes(), out.options()) : out;
  const CombineArgs args{src.data_ptr(), weights.data_ptr<float>(), target.data_ptr(), src.size(0), weights.size(0),
                         src.size(1), src.stride(0), target.stride(0), dtype_of(src.scalar_type()),
                         dtype_of(out.scalar_type())};
  C10_CUDA_CHECK(launch_combine(args, c10::cuda::getCurrentCUDAStream()));
  if (overlap) out.copy_(target);
}

at::Tensor combine_cuda(const at::Tensor& src, const at::Tensor& weights) {
  TORCH_CHECK(src.dim() == 2 && weights.dim() == 2, "swarmkern.combine: src must be [K, D], weights [M, K]");
  at::Tensor out = at::empty({weights.size(0), src.size(1)}, src.options());
  combine_out_cuda(src, weights, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(swarmkern, CUDA, m) {
  m.impl("pso_step_", &pso_step_cuda);
  m.impl("pso_step_random_", &pso_step_random_cuda);
  m.impl("combine", &combine_cuda);
  m.impl("combine_out", &combine_out_cuda);
}

}  // namespace swarmkern::cuda
