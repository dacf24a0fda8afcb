// The block-wise math of the fused merge kernels (csrc/cpu/merge_ties.cpp, merge_dare.cpp), torch-free
// so that ctest checks it without torch. The pure-PyTorch spec is swarmkern/merge/ties.py (elect_sign,
// disjoint_merge), swarmkern/merge/dare.py (dare_merge) and swarmkern/merge/sparsify.py (dare_keep_mask).
#pragma once

#include <cstdint>

#include "swarmkern/philox.h"

namespace swarmkern {
namespace merge {

// Columns handled together: K rows x kBlock floats stay in L1 for K up to ~32.
constexpr int64_t kBlock = 512;

// The Philox stream of the DARE keep mask: swarmkern.merge.sparsify.DARE_STREAM ("DARE").
constexpr uint32_t kDareStream = 0x44415245u;

// Philox counters one block of DARE needs: a block of kBlock values may start mid-group (4 values per
// counter), so it touches up to kBlock / 4 + 2 counters.
constexpr int64_t kDareLanes = (kBlock + 8) / 4;

inline float sign_of(float x) { return x > 0.f ? 1.f : (x < 0.f ? -1.f : 0.f); }

// rows: K rows of `len` <= kBlock values (row stride `stride` elements), read as fp32. Elects the sign
// of each column from the unweighted values ("total": sign of the sum, "frequency": sign of the vote;
// +1 on a tie) and writes sum_k w_k x_k [sign(x_k) == s] / max(1, count) to out[0..len). Two passes
// over the rows: the second one finds them in L1 (K * kBlock values).
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

// Philox-4x32-10 (philox.h: same rounds and key schedule) of `groups` <= kDareLanes consecutive
// counters (first_group + q, expert, kDareStream) with key (k0, k1), laid out structure-of-arrays so
// that every round is a flat loop over lanes that the compiler vectorises. words[4 q + i] = word i of
// counter q.
inline void dare_philox_groups(uint64_t first_group, int64_t groups, uint32_t expert, uint32_t k0, uint32_t k1,
                               uint32_t* words) {
  alignas(64) uint32_t c0[kDareLanes], c1[kDareLanes], c2[kDareLanes], c3[kDareLanes];
  for (int64_t q = 0; q < groups; ++q) {
    const uint64_t group = first_group + static_cast<uint64_t>(q);
    c0[q] = static_cast<uint32_t>(group);
    c1[q] = static_cast<uint32_t>(group >> 32);
    c2[q] = expert;
    c3[q] = kDareStream;
  }
  uint32_t key0 = k0, key1 = k1;
  for (int round = 0; round < kPhiloxRounds; ++round) {
    if (round > 0) {
      key0 += kPhiloxW0;
      key1 += kPhiloxW1;
    }
    for (int64_t q = 0; q < groups; ++q) {
      const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0[q];
      const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2[q];
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[q] ^ key0;
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[q] ^ key1;
      c1[q] = static_cast<uint32_t>(p1);
      c3[q] = static_cast<uint32_t>(p0);
      c0[q] = n0;
      c2[q] = n2;
    }
  }
  for (int64_t q = 0; q < groups; ++q) {
    words[4 * q] = c0[q];
    words[4 * q + 1] = c1[q];
    words[4 * q + 2] = c2[q];
    words[4 * q + 3] = c3[q];
  }
}

}  // namespace merge
}  // namespace swarmkern
