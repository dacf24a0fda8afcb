// CPU kernels of pso_step_ and pso_step_random_: at::parallel_for over blocks of D; inside a block
// each thread walks the P particles while the block's gbest/gworst stay in cache, so that they are
// read from memory once per element for all P (docs/KERNELS.md roofline). fp32 math, int64 indexing,
// at::vec for whole pairs of vectors and a scalar tail; built with -ffp-contract=off (bit-exact).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"
#include "swarmkern/philox.h"
#include "swarmkern/update.h"
#include "vec_io.h"

namespace swarmkern::cpu {
namespace {

// Blocks of D. A thread streams each particle's row segment of the block in turn (long sequential
// runs that the hardware prefetchers follow), while the block's gbest/gworst stay in L2/L3: they come
// from memory once per element for all P particles, as in the roofline. Measured (AMD EPYC Zen 5,
// 2 threads, P=10, D=8e6 and P=32, D=2e6): walking all P rows every 64 elements with g/w in registers
// was ~2x slower (too many concurrent streams); 8 KiB blocks ~1.4x slower; fp32 is fastest with
// 128 KiB blocks (256 KiB: up to 1.1x slower at P=10), bf16 with 1 MiB ones (256 KiB: 1.05x slower,
// 128 KiB: 1.2x slower), i.e. longer runs per row matter more than g/w staying in L2 for 2-byte rows.
#ifndef SWARMKERN_CPU_BLOCK_BYTES_FP32
#define SWARMKERN_CPU_BLOCK_BYTES_FP32 (128 * 1024)
#endif
#ifndef SWARMKERN_CPU_BLOCK_BYTES_16BIT
#define SWARMKERN_CPU_BLOCK_BYTES_16BIT (1024 * 1024)
#endif
// Smaller blocks when D is too short to give every thread a few of them. The number of blocks is a
// multiple of the thread count where possible (at::parallel_for splits them statically: 31 blocks on
// 2 threads left one thread idle for 1/31 of the time, 3% at P=32, D=2e6 fp32).
template <typename T>
int64_t block_elements(int64_t D) {
  constexpr int64_t bytes = sizeof(T) == 4 ? SWARMKERN_CPU_BLOCK_BYTES_FP32 : SWARMKERN_CPU_BLOCK_BYTES_16BIT;
  constexpr int64_t largest = bytes / static_cast<int64_t>(sizeof(T));
  static_assert(largest % kPair == 0, "a block is whole vector pairs");
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t per_thread = (D + 4 * threads - 1) / (4 * threads);
  const int64_t rounded = (per_thread + kPair - 1) / kPair * kPair;
  const int64_t block = std::min(largest, std::max<int64_t>(16 * kPair, rounded));
  const int64_t n_blocks = (D + block - 1) / block;
  const int64_t balanced = (n_blocks + threads - 1) / threads * threads;
  const int64_t even = ((D + balanced - 1) / balanced + kPair - 1) / kPair * kPair;
  return std::max<int64_t>(16 * kPair, std::min(block, even));
}
// Software prefetch distance along a row of x, v, pbest (and into the next particle's segment at the
// end of one): the hardware prefetchers restart on every segment. Measured as the blocks above: 1 KiB
// ahead made fp32 1.07-1.12x faster (512 B: 1.0x, 2 KiB: 0.95x); 4 KiB ahead made bf16 1.35-1.6x
// faster (8-16 KiB: about the same).
template <typename T>
constexpr int64_t prefetch_bytes() {
  return sizeof(T) == 4 ? 1024 : 4096;
}
// Enough work per task to amortise scheduling (elements of D times particles).
constexpr int64_t kGrainElements = 1 << 16;

struct Rows {
  int64_t P, D;
  int64_t sx, sv, sp;  // row strides (elements)
};

Rows rows_of(const at::Tensor& x, const at::Tensor& v, const at::Tensor& pbest) {
  return Rows{x.size(0), x.size(1), x.stride(0), v.stride(0), pbest.stride(0)};
}

int64_t grain_blocks(int64_t block, int64_t P) {
  return std::max<int64_t>(1, kGrainElements / (block * std::max<int64_t>(P, 1)));
}

template <typename T>
void pso_step_kernel(T* x, T* v, const T* p, const T* g, const T* w, const float* coef, float step,
                     const Rows& r) {
  const int64_t kBlock = block_elements<T>(r.D);
  const int64_t n_blocks = (r.D + kBlock - 1) / kBlock;
  const Vec step_vec(step);
  constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(T));  // elements per cache line
  constexpr int64_t kAhead = prefetch_bytes<T>() / static_cast<int64_t>(sizeof(T));
  at::parallel_for(0, n_blocks, grain_blocks(kBlock, r.P), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t j0 = b * kBlock;
      const int64_t n = std::min(kBlock, r.D - j0);
      const int64_t n_pair = n / kPair * kPair;
      for (int64_t i = 0; i < r.P; ++i) {
        T* xi = x + i * r.sx + j0;
        T* vi = v + i * r.sv + j0;
        const T* pi = p + i * r.sp + j0;
        const T* gj = g + j0;
        const T* wj = w + j0;
        const PsoCoef<Vec> c{Vec(coef[4 * i]), Vec(coef[4 * i + 1]), Vec(coef[4 * i + 2]), Vec(coef[4 * i + 3])};
        // The row segments are short runs: prefetch ahead, into the next particle's segment at the end.
        const bool next_row = i + 1 < r.P;
        for (int64_t e = 0; e < n_pair; e += kPair) {
          const int64_t a = e + kAhead;
          for (int64_t l = 0; l < kPair; l += kLine) {
            if (a < n) {
              __builtin_prefetch(xi + a + l, 1, 3);
              __builtin_prefetch(vi + a + l, 1, 3);
              __builtin_prefetch(pi + a + l, 0, 3);
            } else if (next_row && a - n < n) {
              __builtin_prefetch(xi + r.sx + (a - n) + l, 1, 3);
              __builtin_prefetch(vi + r.sv + (a - n) + l, 1, 3);
              __builtin_prefetch(pi + r.sp + (a - n) + l, 0, 3);
            }
          }
          Vec x0, x1, v0, v1, p0, p1, g0, g1, w0, w1;
          load_pair(xi + e, x0, x1);
          load_pair(vi + e, v0, v1);
          load_pair(pi + e, p0, p1);
          load_pair(gj + e, g0, g1);
          load_pair(wj + e, w0, w1);
          const Vec n0 = pso_velocity(c, x0, v0, p0, g0, w0);
          const Vec n1 = pso_velocity(c, x1, v1, p1, g1, w1);
          store_pair(vi + e, n0, n1);
          store_pair(xi + e, pso_location(x0, step_vec, n0), pso_location(x1, step_vec, n1));
        }
        const PsoCoef<float> cs{coef[4 * i], coef[4 * i + 1], coef[4 * i + 2], coef[4 * i + 3]};
        for (int64_t e = n_pair; e < n; ++e) {  // scalar tail (only in the last block)
          const float xf = load_scalar(xi + e);
          const float nv = pso_velocity(cs, xf, load_scalar(vi + e), load_scalar(pi + e), load_scalar(gj + e),
                                        load_scalar(wj + e));
          store_scalar(vi + e, nv);
          store_scalar(xi + e, pso_location(xf, step, nv));
        }
      }
    }
  });
}

struct RandomParams {
  uint64_t seed;
  uint32_t iteration;
  int64_t particle_offset;
  float lo, span, step;
  bool normalize;
};

// Uniforms of `n` (<= kPair) consecutive elements starting at j for one particle, term-major: u[k*kPair + e].
inline void fill_uniforms(const RandomParams& rp, uint32_t particle, int64_t j, int64_t n, float* u) {
  for (int64_t e = 0; e < n; ++e) {
    float r[4];
    element_uniforms(rp.seed, rp.iteration, particle, j + e, r);
    for (int k = 0; k < 4; ++k) u[k * kPair + e] = r[k];
  }
}

template <typename T>
void pso_step_random_kernel(T* x, T* v, const T* p, const T* g, const T* w, const float* phi,
                            const RandomParams& rp, const Rows& r) {
  const int64_t kBlock = block_elements<T>(r.D);
  const int64_t n_blocks = (r.D + kBlock - 1) / kBlock;
  at::parallel_for(0, n_blocks, grain_blocks(kBlock, r.P), [&](int64_t b0, int64_t b1) {
    alignas(64) float u[4 * kPair];
    const Vec lo(rp.lo), span(rp.span), step(rp.step), zero(0.0f);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t j0 = b * kBlock;
      const int64_t n = std::min(kBlock, r.D - j0);
      const int64_t n_pair = n / kPair * kPair;
      for (int64_t i = 0; i < r.P; ++i) {
        // The particle counter is the global index mod 2^32, like the reference.
        const auto particle = static_cast<uint32_t>(static_cast<uint64_t>(rp.particle_offset + i));
        const float* ph = phi + 4 * i;
        const Vec phv(ph[0]), php(ph[1]), phg(ph[2]), phw(ph[3]);
        T* xi = x + i * r.sx + j0;
        T* vi = v + i * r.sv + j0;
        const T* pi = p + i * r.sp + j0;
        const T* gj = g + j0;
        const T* wj = w + j0;
        // One Vec of elements (uniforms at u + h): coefficients, then the rule.
        auto update = [&](int64_t h, const Vec& xs, const Vec& vs, const Vec& ps, const Vec& gs, const Vec& ws,
                          Vec& x_new, Vec& v_new) {
          const PsoCoef<Vec> c{random_coef(Vec::loadu(u + h), lo, span, phv),
                               random_coef(Vec::loadu(u + kPair + h), lo, span, php),
                               random_coef(Vec::loadu(u + 2 * kPair + h), lo, span, phg),
                               random_coef(Vec::loadu(u + 3 * kPair + h), lo, span, phw)};
          v_new = pso_velocity(c, xs, vs, ps, gs, ws);
          if (rp.normalize) {
            const Vec total = coef_total(c);
            v_new = Vec::blendv(zero, v_new / total, total != zero);
          }
          x_new = pso_location(xs, step, v_new);
        };
        for (int64_t e = 0; e < n_pair; e += kPair) {
          fill_uniforms(rp, particle, j0 + e, kPair, u);
          Vec x0, x1, v0, v1, p0, p1, g0, g1, w0, w1, xn0, xn1, vn0, vn1;
          load_pair(xi + e, x0, x1);
          load_pair(vi + e, v0, v1);
          load_pair(pi + e, p0, p1);
          load_pair(gj + e, g0, g1);
          load_pair(wj + e, w0, w1);
          update(0, x0, v0, p0, g0, w0, xn0, vn0);
          update(kVec, x1, v1, p1, g1, w1, xn1, vn1);
          store_pair(vi + e, vn0, vn1);
          store_pair(xi + e, xn0, xn1);
        }
        if (n_pair < n) {  // scalar tail (only in the last block)
          fill_uniforms(rp, particle, j0 + n_pair, n - n_pair, u);
          for (int64_t e = n_pair; e < n; ++e) {
            const int64_t h = e - n_pair;
            const PsoCoef<float> c{random_coef(u[h], rp.lo, rp.span, ph[0]),
                                   random_coef(u[kPair + h], rp.lo, rp.span, ph[1]),
                                   random_coef(u[2 * kPair + h], rp.lo, rp.span, ph[2]),
                                   random_coef(u[3 * kPair + h], rp.lo, rp.span, ph[3])};
            const float xf = load_scalar(xi + e);
            float nv = pso_velocity(c, xf, load_scalar(vi + e), load_scalar(pi + e), load_scalar(gj + e),
                                    load_scalar(wj + e));
            if (rp.normalize) nv = normalized_or_zero(nv, coef_total(c));
            store_scalar(vi + e, nv);
            store_scalar(xi + e, pso_location(xf, rp.step, nv));
          }
        }
      }
    }
  });
}

void pso_step_cpu(const at::Tensor& x, const at::Tensor& v, const at::Tensor& pbest, const at::Tensor& gbest,
                  const at::Tensor& gworst, const at::Tensor& coef, double step) {
  check_swarm_args("swarmkern.pso_step_", x, v, pbest, gbest, gworst, coef, c10::DeviceType::CPU);
  if (x.numel() == 0) return;
  const Rows r = rows_of(x, v, pbest);
  dispatch_storage(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    pso_step_kernel<T>(x.data_ptr<T>(), v.data_ptr<T>(), pbest.data_ptr<T>(), gbest.data_ptr<T>(),
                       gworst.data_ptr<T>(), coef.data_ptr<float>(), static_cast<float>(step), r);
  });
}

void pso_step_random_cpu(const at::Tensor& x, const at::Tensor& v, const at::Tensor& pbest,
                         const at::Tensor& gbest, const at::Tensor& gworst, const at::Tensor& phi, double step,
                         int64_t seed, int64_t iteration, int64_t particle_offset, double r_lo, double r_hi,
                         bool normalize) {
  check_swarm_args("swarmkern.pso_step_random_", x, v, pbest, gbest, gworst, phi, c10::DeviceType::CPU);
  if (x.numel() == 0) return;
  const Rows r = rows_of(x, v, pbest);
  // Rounded exactly as the reference: lo = fp32(r_lo), span = fp32(r_hi - r_lo) computed in double.
  const RandomParams rp{static_cast<uint64_t>(seed), static_cast<uint32_t>(static_cast<uint64_t>(iteration)),
                        particle_offset, static_cast<float>(r_lo), static_cast<float>(r_hi - r_lo),
                        static_cast<float>(step), normalize};
  dispatch_storage(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    pso_step_random_kernel<T>(x.data_ptr<T>(), v.data_ptr<T>(), pbest.data_ptr<T>(), gbest.data_ptr<T>(),
                              gworst.data_ptr<T>(), phi.data_ptr<float>(), rp, r);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(swarmkern, CPU, m) {
  m.impl("pso_step_", &pso_step_cpu);
  m.impl("pso_step_random_", &pso_step_random_cpu);
}

}  // namespace swarmkern::cpu
