// Fused DARE on the CPU: the Philox keep mask is drawn inside the kernel (no [K, n] mask, no int64
// temporaries), survivors are rescaled by 1/density and merged linearly or TIES-style, one pass per
// block of columns. Spec: swarmkern.merge.dare.dare_merge with fused=False, whose mask is
// swarmkern.merge.sparsify.dare_keep_mask: element g of expert e is kept when
// uniform(word g%4 of Philox-4x32-10(key=seed, counter=(g/4 lo, g/4 hi, e, DARE_STREAM))) < density.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "swarmkern/merge.h"
#include "swarmkern/philox.h"

namespace swarmkern {
namespace {

at::Tensor merge_dare_cpu(const at::Tensor& src, const at::Tensor& weights, double density, int64_t seed,
                          int64_t offset, bool ties, int64_t method) {
  check_merge_args("merge_dare", src, weights);
  TORCH_CHECK(density > 0.0 && density <= 1.0, "merge_dare: density must be in (0, 1], got ", density);
  TORCH_CHECK(offset >= 0, "merge_dare: offset must be >= 0, got ", offset);
  TORCH_CHECK(method == 0 || method == 1, "merge_dare: method must be 0 (total) or 1 (frequency)");
  TORCH_CHECK(src.size(0) <= (int64_t{1} << 32), "merge_dare: too many experts");
  const int64_t K = src.size(0), n = src.size(1);
  at::Tensor w = weights.contiguous();
  at::Tensor out = at::empty({n}, src.options());
  const float dens = static_cast<float>(density);
  const uint64_t useed = static_cast<uint64_t>(seed);
  const uint32_t k0 = static_cast<uint32_t>(useed), k1 = static_cast<uint32_t>(useed >> 32);
  // Blocks start at global indices that are multiples of 4 (one Philox call feeds 4 elements), so the
  // first block is shortened by offset % 4.
  const int64_t lead = (4 - (offset & 3)) & 3;
  const int64_t first = std::min(n, lead == 0 ? merge::kBlock : lead);
  const int64_t blocks = n == 0 ? 0 : 1 + (n - first + merge::kBlock - 1) / merge::kBlock;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, src.scalar_type(), "merge_dare", [&] {
    const scalar_t* sp = src.data_ptr<scalar_t>();
    const int64_t row_stride = src.stride(0);
    scalar_t* dst = out.data_ptr<scalar_t>();
    const float* wp = w.data_ptr<float>();
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      std::vector<float> vals(static_cast<size_t>(K * merge::kBlock));
      std::vector<uint32_t> words(static_cast<size_t>(merge::kBlock + 8));
      float res[merge::kBlock];
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t j0 = b == 0 ? 0 : first + (b - 1) * merge::kBlock;
        const int64_t len = b == 0 ? first : std::min(merge::kBlock, n - j0);
        // Philox words for the groups of 4 covering [offset + j0, offset + j0 + len): one call per group,
        // in a loop without data-dependent exits so the compiler can vectorise the rounds.
        const uint64_t g0 = static_cast<uint64_t>(offset + j0);
        const uint64_t first_group = g0 >> 2;
        const int64_t skip = static_cast<int64_t>(g0 & 3);
        const int64_t groups = (skip + len + 3) >> 2;
        for (int64_t k = 0; k < K; ++k) {
          const uint32_t expert = static_cast<uint32_t>(k);
          merge::dare_philox_groups(first_group, groups, expert, k0, k1, words.data());
          const scalar_t* row = sp + k * row_stride + j0;
          float* v = vals.data() + k * merge::kBlock;
          const uint32_t* wd = words.data() + skip;
          for (int64_t j = 0; j < len; ++j) {
            const float keep = uniform_from_word(wd[j]) < dens ? 1.f : 0.f;
            v[j] = (static_cast<float>(row[j]) * keep) / dens;
          }
        }
        if (ties) {
          merge::elect_and_disjoint_mean(vals.data(), merge::kBlock, K, len, wp, method == 1, res);
        } else {
          for (int64_t j = 0; j < len; ++j) res[j] = 0.f;
          for (int64_t k = 0; k < K; ++k) {
            const float* v = vals.data() + k * merge::kBlock;
            const float wk = wp[k];
            for (int64_t j = 0; j < len; ++j) res[j] += v[j] * wk;
          }
        }
        for (int64_t j = 0; j < len; ++j) dst[j0 + j] = static_cast<scalar_t>(res[j]);
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace swarmkern

TORCH_LIBRARY_IMPL(swarmkern, CPU, m) {
  m.impl("merge_dare", &swarmkern::merge_dare_cpu);
}
