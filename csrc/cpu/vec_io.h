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
#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif
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

#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
// fp32 -> bf16 of a pair with one vcvtne2ps2bf16 (round to nearest even, like at::vec and the
// reference), except where the instruction differs from the spec: it flushes denormal inputs to zero
// and keeps NaN payloads, so a pair holding either takes at::vec's conversion (exact, rare).
inline __m512i pair_to_bf16(const Vec& a, const Vec& b) {
  constexpr int kSpecial = 0x01 | 0x20 | 0x80;  // vfpclassps: quiet NaN | denormal | signalling NaN
  if (_kortestz_mask16_u8(_mm512_fpclass_ps_mask(__m512(a), kSpecial), _mm512_fpclass_ps_mask(__m512(b), kSpecial))) {
    return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(__m512(b), __m512(a)));  // b -> high half
  }
  return __m512i(at::vec::convert_from_float<c10::BFloat16>(a, b));
}
#endif

// A pair in storage format: one Vectorized<T> of kPair elements (two Vecs for float).
template <typename T>
inline void store_pair(T* p, const Vec& a, const Vec& b) {
  if constexpr (std::is_same_v<T, float>) {
    a.store(p);
    b.store(p + kVec);
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    _mm512_storeu_si512(p, pair_to_bf16(a, b));
#endif
  } else {
    at::vec::convert_from_float<T>(a, b).store(p);
  }
}

// Non-temporal stores (a row that is not read again soon: they skip the read-for-ownership of the
// line, saving a third of a streamed write's memory traffic). The caller checks alignment with
// can_stream() and calls stream_fence() before its stores must be visible to other threads.
#if defined(CPU_CAPABILITY_AVX512)
constexpr bool kHasStream = true;
inline bool can_stream(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 63) == 0; }
template <typename T>
inline void stream_pair(T* p, const Vec& a, const Vec& b) {
  if constexpr (std::is_same_v<T, float>) {
    _mm512_stream_ps(p, __m512(a));
    _mm512_stream_ps(p + kVec, __m512(b));
  } else {
#if defined(__AVX512BF16__)
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      _mm512_stream_si512(reinterpret_cast<__m512i*>(p), pair_to_bf16(a, b));
      return;
    }
#endif
    _mm512_stream_si512(reinterpret_cast<__m512i*>(p), __m512i(at::vec::convert_from_float<T>(a, b)));
  }
}
inline void stream_fence() { _mm_sfence(); }
#else
constexpr bool kHasStream = false;
inline bool can_stream(const void*) { return false; }
template <typename T>
inline void stream_pair(T* p, const Vec& a, const Vec& b) { store_pair(p, a, b); }
inline void stream_fence() {}
#endif

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
