// Loads and stores between a storage dtype (float, BFloat16, Half) and fp32 at::vec registers.
// The vector unit of work is a "pair": two Vectorized<float>, i.e. 2*Vec::size() elements (32 with
// AVX-512), so that bf16/fp16 rows move as whole 512-bit (or 256-bit) vectors.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <type_traits>

#include "swarmkern/dtype.h"

namespace swarmkern::cpu {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kVec = Vec::size();
constexpr int64_t kPair = 2 * kVec;

template <typename T>
inline void load_pair(const T* p, Vec& a, Vec& b) {
  if constexpr (std::is_same_v<T, float>) {
    a = Vec::loadu(p);
    b = Vec::loadu(p + kVec);
  } else {
    at::vec::load_to_float<T>(p, a, b);
  }
}

template <typename T>
inline Vec load_one(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return Vec::loadu(p);
  } else {
    Vec a;
    at::vec::load_to_float<T>(p, a);
    return a;
  }
}

template <typename T>
inline void store_pair(T* p, const Vec& a, const Vec& b) {
  if constexpr (std::is_same_v<T, float>) {
    a.store(p);
    b.store(p + kVec);
  } else {
    at::vec::convert_from_float<T>(a, b).store(p);
  }
}

// Scalar conversions for the tails, through the torch-free header (round to nearest even).
template <typename T>
inline float load_scalar(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return *p;
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return bf16_to_float(p->x);
  } else {
    return fp16_to_float(p->x);
  }
}

template <typename T>
inline void store_scalar(T* p, float f) {
  if constexpr (std::is_same_v<T, float>) {
    *p = f;
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    p->x = float_to_bf16(f);
  } else {
    p->x = float_to_fp16(f);
  }
}

// Calls fn(T{}) with T the C++ type of a storage dtype (float, c10::BFloat16, c10::Half).
template <typename Fn>
void dispatch_storage(at::ScalarType t, Fn&& fn) {
  switch (t) {
    case at::kFloat: fn(float{}); break;
    case at::kBFloat16: fn(c10::BFloat16{}); break;
    case at::kHalf: fn(c10::Half{}); break;
    default: TORCH_CHECK(false, "swarmkern: unsupported dtype ", t);
  }
}

}  // namespace swarmkern::cpu
