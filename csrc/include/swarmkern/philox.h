// Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), torch-free.
// Bit-identical to swarmkern/ops/philox.py (the spec) and to Triton's tl.philox: same round
// function, same Weyl key schedule, same word order. Usable from C++ and CUDA.
#pragma once

#include <cstdint>

#include "swarmkern/macros.h"

namespace swarmkern {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;  // round multipliers
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // Weyl key increments
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;
constexpr float kUniformScale = 5.9604644775390625e-08f;  // 2^-24

struct Philox4x32 {
  uint32_t v[4];
};

SK_HOST_DEVICE SK_FORCE_INLINE void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  lo = a * b;
  hi = __umulhi(a, b);
#else
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  lo = static_cast<uint32_t>(product);
  hi = static_cast<uint32_t>(product >> 32);
#endif
}

// Ten rounds of Philox-4x32 on counter (c0, c1, c2, c3) with key (k0, k1).
SK_HOST_DEVICE SK_FORCE_INLINE Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                                        uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < kPhiloxRounds; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kPhiloxM0, c0, hi0, lo0);
    philox_mulhilo(kPhiloxM1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

// A uint32 word as a float in [0, 1) with 24 random bits; exact in fp32.
SK_HOST_DEVICE SK_FORCE_INLINE float uniform_from_word(uint32_t word) {
  return static_cast<float>(word >> 8) * kUniformScale;
}

// The per-element stream of pso_step_random_: counter (element lo, element hi, particle, iteration),
// key (seed lo, seed hi). Writes four uniforms in [0, 1).
SK_HOST_DEVICE SK_FORCE_INLINE void element_uniforms(uint64_t seed, uint32_t iteration, uint32_t particle,
                                                     int64_t element, float u[4]) {
  const uint64_t e = static_cast<uint64_t>(element);
  const Philox4x32 r = philox4x32_10(static_cast<uint32_t>(e), static_cast<uint32_t>(e >> 32), particle,
                                     iteration, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  u[0] = uniform_from_word(r.v[0]);
  u[1] = uniform_from_word(r.v[1]);
  u[2] = uniform_from_word(r.v[2]);
  u[3] = uniform_from_word(r.v[3]);
}

}  // namespace swarmkern
