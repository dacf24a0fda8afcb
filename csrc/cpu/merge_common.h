// Shared by the fused merge kernels (merge_ties.cpp, merge_dare.cpp): argument checks and the
// sign-election + disjoint-mean step of TIES over a block of columns. The pure-PyTorch spec is
// swarmkern/merge/ties.py (elect_sign, disjoint_merge) and swarmkern/merge/dare.py (dare_merge).
#pragma once

// The op namespace: swarmkern in swarmkern._C; swarmkern.merge.kernels.load_jit() builds these files
// into a private namespace so a fresh build of the current sources never clashes with swarmkern._C.
#ifndef SWARMKERN_MERGE_LIBRARY
#define SWARMKERN_MERGE_LIBRARY swarmkern
#endif

#include <ATen/ATen.h>

#include <cstdint>

namespace swarmkern {
namespace merge {

// Columns handled together: K rows x kBlock floats stay in L1 for K up to ~32.
constexpr int64_t kBlock = 512;

inline void check_merge_args(const char* op, const at::Tensor& src, const at::Tensor& weights) {
  TORCH_CHECK(src.dim() == 2, op, ": src must be 2-D [K, n], got shape ", src.sizes());
  TORCH_CHECK(src.device().is_cpu(), op, ": src must be on the CPU, got ", src.device());
  TORCH_CHECK(src.scalar_type() == at::kFloat || src.scalar_type() == at::kBFloat16 ||
                  src.scalar_type() == at::kHalf,
              op, ": src must be float32, bfloat16 or float16, got ", src.scalar_type());
  TORCH_CHECK(src.size(1) <= 1 || src.stride(1) == 1, op, ": src rows must be contiguous (unit inner stride)");
  TORCH_CHECK(src.size(0) >= 1, op, ": src needs at least one row");
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == src.size(0), op, ": weights must be [", src.size(0),
              "], got ", weights.sizes());
  TORCH_CHECK(weights.scalar_type() == at::kFloat && weights.device().is_cpu(), op,
              ": weights must be a float32 CPU tensor");
}

inline float sign_of(float x) { return x > 0.f ? 1.f : (x < 0.f ? -1.f : 0.f); }

// rows: K rows of `len` values (row stride `stride` elements), read as fp32. Elects the sign of each
// column from the unweighted values ("total": sign of the sum, "frequency": sign of the vote; +1 on a
// tie) and writes sum_k w_k x_k [sign(x_k) == s] / max(1, count) to out[0..len). Two passes over the
// rows: the second one finds them in L1 (K * kBlock values).
template <typename T>
inline void elect_and_disjoint_mean(const T* rows, int64_t stride, int64_t K, int64_t len, const float* w,
                                    bool frequency, float* out) {
  alignas(64) float mass[kBlock];
  alignas(64) float acc[kBlock];
  alignas(64) float cnt[kBlock];
  for (int64_t j = 0; j < len; ++j) mass[j] = acc[j] = cnt[j] = 0.f;
  for (int64_t k = 0; k < K; ++k) {
    const T* row = rows + k * stride;
    if (frequency) {
      for (int64_t j = 0; j < len; ++j) mass[j] += sign_of(static_cast<float>(row[j]));
    } else {
      for (int64_t j = 0; j < len; ++j) mass[j] += static_cast<float>(row[j]);
    }
  }
  for (int64_t j = 0; j < len; ++j) mass[j] = mass[j] >= 0.f ? 1.f : -1.f;
  for (int64_t k = 0; k < K; ++k) {
    const T* row = rows + k * stride;
    const float wk = w[k];
    for (int64_t j = 0; j < len; ++j) {
      const float x = static_cast<float>(row[j]);
      // sign(x) == s for s = +-1  <=>  x * s > 0 (exact: s is +-1; zeros and NaN never agree)
      const float agree = x * mass[j] > 0.f ? 1.f : 0.f;
      acc[j] += (x * wk) * agree;
      cnt[j] += agree;
    }
  }
  for (int64_t j = 0; j < len; ++j) out[j] = acc[j] / (cnt[j] < 1.f ? 1.f : cnt[j]);
}

}  // namespace merge
}  // namespace swarmkern
