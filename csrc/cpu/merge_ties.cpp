// Fused TIES sign election + disjoint mean on the CPU: one pass over the K trimmed task tensors per
// block of columns, instead of PyTorch's sign / sum / compare / multiply / sum / count temporaries.
// Spec: swarmkern.merge.ties.disjoint_merge(trimmed, weights, elect_sign(trimmed, method)).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "swarmkern/merge.h"

namespace swarmkern {
namespace {

at::Tensor merge_ties_disjoint_cpu(const at::Tensor& trimmed, const at::Tensor& weights, int64_t method) {
  check_merge_args("merge_ties_disjoint", trimmed, weights);
  TORCH_CHECK(method == 0 || method == 1, "merge_ties_disjoint: method must be 0 (total) or 1 (frequency)");
  const int64_t K = trimmed.size(0), n = trimmed.size(1);
  at::Tensor w = weights.contiguous();
  at::Tensor out = at::empty({n}, trimmed.options());
  const int64_t blocks = (n + merge::kBlock - 1) / merge::kBlock;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, trimmed.scalar_type(), "merge_ties_disjoint", [&] {
    const scalar_t* src = trimmed.data_ptr<scalar_t>();
    const int64_t row_stride = trimmed.stride(0);
    scalar_t* dst = out.data_ptr<scalar_t>();
    const float* wp = w.data_ptr<float>();
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      alignas(64) float res[merge::kBlock];
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t j0 = b * merge::kBlock;
        const int64_t len = std::min(merge::kBlock, n - j0);
        merge::elect_and_disjoint_mean(src + j0, row_stride, K, len, wp, method == 1, res);
        for (int64_t j = 0; j < len; ++j) dst[j0 + j] = static_cast<scalar_t>(res[j]);
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace swarmkern

TORCH_LIBRARY_IMPL(swarmkern, CPU, m) {
  m.impl("merge_ties_disjoint", &swarmkern::merge_ties_disjoint_cpu);
}
