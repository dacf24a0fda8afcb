// The swarm update rule, torch-free, written once for every backend (C++ scalar, at::vec::Vectorized,
// CUDA). The operation order is the spec (swarmkern/ops/reference.py): every + - * / is rounded to
// fp32 on its own, left to right, so that builds without FMA contraction (-ffp-contract=off,
// nvcc -fmad=false) reproduce the reference bit for bit.
//
// F is float or any type with float-like + - * (at::vec::Vectorized<float>).
#pragma once

#include "swarmkern/macros.h"

namespace swarmkern {

// Per-particle weights of pso_step_ (already normalised by the caller).
template <typename F>
struct PsoCoef {
  F v, p, g, w;
};

// New velocity: c_v*v + c_p*(p - x) + c_g*(g - x) + c_w*(x - w), summed left to right.
template <typename F>
SK_HOST_DEVICE SK_FORCE_INLINE F pso_velocity(const PsoCoef<F>& c, F x, F v, F p, F g, F w) {
  return c.v * v + c.p * (p - x) + c.g * (g - x) + c.w * (x - w);
}

// New location from the fp32 velocity (before it is rounded for storage).
template <typename F>
SK_HOST_DEVICE SK_FORCE_INLINE F pso_location(F x, F step, F v_new) {
  return x + step * v_new;
}

// Random coefficient of one term: (lo + span*u) * phi, with u in [0, 1).
template <typename F>
SK_HOST_DEVICE SK_FORCE_INLINE F random_coef(F u, F lo, F span, F phi) {
  return (lo + span * u) * phi;
}

// Sum of the four random coefficients, left to right (the normaliser of pso_step_random_).
template <typename F>
SK_HOST_DEVICE SK_FORCE_INLINE F coef_total(const PsoCoef<F>& c) {
  return c.v + c.p + c.g + c.w;
}

// n / total, or 0 where total == 0 (scalar version; vector backends blend with a mask).
SK_HOST_DEVICE SK_FORCE_INLINE float normalized_or_zero(float n, float total) {
  return total != 0.0f ? n / total : 0.0f;
}

// One combine term: acc + w*s (the reference accumulates k = 0..K-1 in this order, from 0).
template <typename F>
SK_HOST_DEVICE SK_FORCE_INLINE F combine_term(F acc, F w, F s) {
  return acc + w * s;
}

}  // namespace swarmkern
