// CPU kernel of combine: out[m] = sum_k weights[m, k] * src[k], fp32 accumulation in the order
// k = 0..K-1 (the reference's order, bit-exact with -ffp-contract=off), one pass over src.
// Each task owns a block of columns: for each vector of columns it converts the K source values to fp32
// once, then accumulates the M outputs in register tiles of kTile; the block's outputs go to an fp32
// scratch and are stored only after the whole block has been read, so `out` may share whole rows with
// `src` (e.g. writing crossover children into the swarm buffer).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "swarmkern/update.h"
#include "vec_io.h"

namespace swarmkern::cpu {
namespace {

// Measured at K=M=10, D=8e6 and K=M=32, D=2e6 (bf16 and fp32, 2 threads, AMD EPYC Zen 5): 256-column
// blocks, 4x4 register tiles (6x4 and 8x3 were 1.1-1.2x slower) and a software prefetch 256 columns
// ahead (K=32 reads 32 rows at once, more streams than the hardware prefetchers follow: 1.2x faster).
constexpr int64_t kColumns = 8 * kPair;         // columns per block (256 with AVX-512)
constexpr int64_t kTile = 4;                    // outputs accumulated in registers at once
constexpr int kColVecs = 4;                     // column vectors accumulated in registers at once
constexpr int64_t kPrefetchColumns = 256;       // how far ahead each src row is prefetched
constexpr int64_t kStreamBytes = int64_t{1} << 24;  // outputs this large are written non-temporally

struct CombineShape {
  int64_t K, M, D;
  int64_t s_src, s_out;  // row strides (elements)
};

// Outputs m0..m0+TILE-1 of H Vecs of columns: acc[t][h] = sum_k w[m0+t, k] * col[k][h], where col
// holds the K source values of these columns in fp32 (converted once, re-read from L1 for every tile).
// TILE x H accumulators stay in registers; each broadcast weight serves H vectors.
template <int TILE, int H>
inline void combine_tile(const float* col, const float* weights, int64_t K, int64_t m0, float* scratch_col) {
  Vec acc[TILE][H];
  for (int t = 0; t < TILE; ++t)
    for (int h = 0; h < H; ++h) acc[t][h] = Vec(0.0f);
  for (int64_t k = 0; k < K; ++k) {
    Vec s[H];
    for (int h = 0; h < H; ++h) s[h] = Vec::loadu(col + (k * H + h) * kVec);
    for (int t = 0; t < TILE; ++t) {
      const Vec w(weights[(m0 + t) * K + k]);
      for (int h = 0; h < H; ++h) acc[t][h] = combine_term(acc[t][h], w, s[h]);
    }
  }
  for (int t = 0; t < TILE; ++t)
    for (int h = 0; h < H; ++h) acc[t][h].store(scratch_col + (m0 + t) * kColumns + h * kVec);
}

template <int H, int T>
inline void combine_rest(const float* col, const float* weights, int64_t K, int64_t rest, int64_t m0, float* scratch_col) {
  if constexpr (T > 0) {
    if (rest == T) {
      combine_tile<T, H>(col, weights, K, m0, scratch_col);
    } else {
      combine_rest<H, T - 1>(col, weights, K, rest, m0, scratch_col);
    }
  }
}

template <int H>
void combine_tiles(const float* col, const float* weights, int64_t K, int64_t M, float* scratch_col) {
  int64_t m0 = 0;
  for (; m0 + kTile <= M; m0 += kTile) combine_tile<kTile, H>(col, weights, K, m0, scratch_col);
  combine_rest<H, kTile - 1>(col, weights, K, M - m0, m0, scratch_col);
}

template <typename S, typename O>
void combine_kernel(const S* src, const float* weights, O* out, const CombineShape& sh) {
  const int64_t n_blocks = (sh.D + kColumns - 1) / kColumns;
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / (kColumns * std::max<int64_t>(sh.K + sh.M, 1)));
  // Outputs far larger than the caches are written with non-temporal stores (no read for ownership);
  // small ones stay in cache for whoever reads them next.
  const bool stream = kHasStream && sh.M * sh.D * static_cast<int64_t>(sizeof(O)) >= kStreamBytes;
  at::parallel_for(0, n_blocks, grain, [&](int64_t b0, int64_t b1) {
    std::vector<float> scratch_buf(static_cast<size_t>(sh.M * kColumns));
    std::vector<float> col_buf(static_cast<size_t>(sh.K * kColVecs * kVec));
    float* scratch = scratch_buf.data();
    float* col = col_buf.data();
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t j0 = b * kColumns;
      const int64_t n = std::min(kColumns, sh.D - j0);
      const int64_t n_vec = n / kVec;
      int64_t h0 = 0;
      for (; h0 + kColVecs <= n_vec; h0 += kColVecs) {
        const int64_t ahead = j0 + h0 * kVec + kPrefetchColumns;
        if (ahead + kColVecs * kVec <= sh.D) {
          for (int64_t k = 0; k < sh.K; ++k) {
            const char* line = reinterpret_cast<const char*>(src + k * sh.s_src + ahead);
            for (int64_t off = 0; off < kColVecs * kVec * static_cast<int64_t>(sizeof(S)); off += 64) {
              __builtin_prefetch(line + off, 0, 3);
            }
          }
        }
        for (int64_t k = 0; k < sh.K; ++k) {
          for (int h = 0; h < kColVecs; ++h) {
            load_one(src + k * sh.s_src + j0 + (h0 + h) * kVec).store(col + (k * kColVecs + h) * kVec);
          }
        }
        combine_tiles<kColVecs>(col, weights, sh.K, sh.M, scratch + h0 * kVec);
      }
      for (; h0 < n_vec; ++h0) {
        for (int64_t k = 0; k < sh.K; ++k) load_one(src + k * sh.s_src + j0 + h0 * kVec).store(col + k * kVec);
        combine_tiles<1>(col, weights, sh.K, sh.M, scratch + h0 * kVec);
      }
      for (int64_t col = n_vec * kVec; col < n; ++col) {  // scalar tail of the last block
        for (int64_t m = 0; m < sh.M; ++m) {
          float acc = 0.0f;
          for (int64_t k = 0; k < sh.K; ++k) {
            acc = combine_term(acc, weights[m * sh.K + k], load_scalar(src + k * sh.s_src + j0 + col));
          }
          scratch[m * kColumns + col] = acc;
        }
      }
      const int64_t n_pair = n / kPair;
      for (int64_t m = 0; m < sh.M; ++m) {
        O* o = out + m * sh.s_out + j0;
        const float* s = scratch + m * kColumns;
        if (stream && can_stream(o)) {
          for (int64_t q = 0; q < n_pair; ++q) {
            stream_pair(o + q * kPair, Vec::loadu(s + q * kPair), Vec::loadu(s + q * kPair + kVec));
          }
        } else {
          for (int64_t q = 0; q < n_pair; ++q) {
            store_pair(o + q * kPair, Vec::loadu(s + q * kPair), Vec::loadu(s + q * kPair + kVec));
          }
        }
        for (int64_t col = n_pair * kPair; col < n; ++col) store_scalar(o + col, s[col]);
      }
    }
    stream_fence();
  });
}

void combine_out_cpu(const at::Tensor& src, const at::Tensor& weights, const at::Tensor& out) {
  check_combine_args(src, weights, out, c10::DeviceType::CPU);
  if (out.numel() == 0) return;
  const CombineShape sh{src.size(0), weights.size(0), src.size(1), src.stride(0), out.stride(0)};
  if (sh.K == 0) {  // an empty sum
    out.zero_();
    return;
  }
  // The kernel stores a column block only after reading it from every src row, so rows of out that are
  // rows of src are fine; any other overlap goes through a temporary.
  if (ranges_overlap(src, out) && !rows_coincide(src, out)) {
    const at::Tensor tmp = at::empty(out.sizes(), out.options());
    combine_out_cpu(src, weights, tmp);
    out.copy_(tmp);
    return;
  }
  dispatch_storage(src.scalar_type(), [&](auto src_tag) {
    using S = decltype(src_tag);
    dispatch_storage(out.scalar_type(), [&](auto out_tag) {
      using O = decltype(out_tag);
      combine_kernel<S, O>(src.data_ptr<S>(), weights.data_ptr<float>(), out.data_ptr<O>(), sh);
    });
  });
}

at::Tensor combine_cpu(const at::Tensor& src, const at::Tensor& weights) {
  TORCH_CHECK(src.dim() == 2 && weights.dim() == 2, "swarmkern.combine: src must be [K, D], weights [M, K]");
  at::Tensor out = at::empty({weights.size(0), src.size(1)}, src.options());
  combine_out_cpu(src, weights, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(swarmkern, CPU, m) {
  m.impl("combine", &combine_cpu);
  m.impl("combine_out", &combine_out_cpu);
}

}  // namespace swarmkern::cpu
