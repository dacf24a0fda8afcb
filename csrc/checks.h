// Argument checks shared by the CPU and CUDA implementations. The Python surface
// (swarmkern/ops/_validate.py) checks the same things first with friendlier messages; these keep a
// direct torch.ops.swarmkern call from ever reading or writing out of bounds.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <utility>

namespace swarmkern {

inline bool is_storage_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

// Unit stride along the last dimension (any stride is fine when that dimension has one element).
inline bool unit_inner_stride(const at::Tensor& t) {
  return t.size(-1) <= 1 || t.stride(-1) == 1;
}

inline void check_swarm_args(const char* op, const at::Tensor& x, const at::Tensor& v, const at::Tensor& pbest,
                             const at::Tensor& gbest, const at::Tensor& gworst, const at::Tensor& coef,
                             c10::DeviceType device_type) {
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [P, D], got shape ", x.sizes());
  const int64_t P = x.size(0), D = x.size(1);
  TORCH_CHECK(v.sizes() == x.sizes(), op, ": v must have x's shape ", x.sizes(), ", got ", v.sizes());
  TORCH_CHECK(pbest.sizes() == x.sizes(), op, ": pbest must have x's shape ", x.sizes(), ", got ", pbest.sizes());
  TORCH_CHECK(gbest.dim() == 1 && gbest.size(0) == D, op, ": gbest must be [", D, "], got ", gbest.sizes());
  TORCH_CHECK(gworst.dim() == 1 && gworst.size(0) == D, op, ": gworst must be [", D, "], got ", gworst.sizes());
  TORCH_CHECK(coef.dim() == 2 && coef.size(0) == P && coef.size(1) == 4, op, ": coefficients must be [", P,
              ", 4], got ", coef.sizes());
  TORCH_CHECK(coef.scalar_type() == at::kFloat && coef.is_contiguous(), op,
              ": coefficients must be a contiguous float32 tensor");
  TORCH_CHECK(is_storage_dtype(x.scalar_type()), op, ": x must be float32, bfloat16 or float16, got ",
              x.scalar_type());
  for (const at::Tensor* t : {&v, &pbest, &gbest, &gworst}) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), op, ": all state tensors must share x's dtype ",
                x.scalar_type(), ", got ", t->scalar_type());
  }
  for (const at::Tensor* t : {&x, &v, &pbest, &gbest, &gworst, &coef}) {
    TORCH_CHECK(t->device().type() == device_type && t->device() == x.device(), op,
                ": all tensors must be on ", x.device(), ", got one on ", t->device());
    TORCH_CHECK(t->layout() == at::kStrided, op, ": tensors must be strided (dense)");
    TORCH_CHECK(unit_inner_stride(*t), op, ": the last dimension of every tensor must have stride 1");
  }
  TORCH_CHECK(P <= 1 || (x.stride(0) >= D && v.stride(0) >= D), op,
              ": rows of x and v must not overlap (row stride >= D)");
}

// Byte range [first, last) spanned by a 2-D tensor with unit column stride.
inline std::pair<uintptr_t, uintptr_t> byte_range(const at::Tensor& t) {
  const auto first = reinterpret_cast<uintptr_t>(t.data_ptr());
  if (t.numel() == 0) return {first, first};
  const int64_t span = (t.size(0) - 1) * t.stride(0) + t.size(1);
  return {first, first + static_cast<uintptr_t>(span) * t.element_size()};
}

inline bool ranges_overlap(const at::Tensor& a, const at::Tensor& b) {
  const auto ra = byte_range(a), rb = byte_range(b);
  return ra.first < rb.second && rb.first < ra.second;
}

// True when every row of `out` is either exactly a row of `src` or disjoint from all of src's rows.
inline bool rows_coincide(const at::Tensor& src, const at::Tensor& out) {
  if (src.scalar_type() != out.scalar_type()) return false;
  if (src.size(0) > 1 && out.size(0) > 1 && src.stride(0) != out.stride(0)) return false;
  const int64_t stride = src.size(0) > 1 ? src.stride(0) : out.stride(0);
  if (stride < src.size(1) || stride == 0) return false;
  const auto delta = static_cast<int64_t>(reinterpret_cast<uintptr_t>(out.data_ptr()) -
                                          reinterpret_cast<uintptr_t>(src.data_ptr()));
  return delta % (stride * static_cast<int64_t>(src.element_size())) == 0;
}

inline void check_combine_args(const at::Tensor& src, const at::Tensor& weights, const at::Tensor& out,
                               c10::DeviceType device_type) {
  const char* op = "swarmkern.combine";
  TORCH_CHECK(src.dim() == 2, op, ": src must be 2-D [K, D], got shape ", src.sizes());
  TORCH_CHECK(weights.dim() == 2 && weights.size(1) == src.size(0), op, ": weights must be [M, ", src.size(0),
              "], got ", weights.sizes());
  TORCH_CHECK(weights.scalar_type() == at::kFloat && weights.is_contiguous(), op,
              ": weights must be a contiguous float32 tensor");
  TORCH_CHECK(out.dim() == 2 && out.size(0) == weights.size(0) && out.size(1) == src.size(1), op,
              ": out must be [", weights.size(0), ", ", src.size(1), "], got ", out.sizes());
  TORCH_CHECK(is_storage_dtype(src.scalar_type()) && is_storage_dtype(out.scalar_type()), op,
              ": src and out must be float32, bfloat16 or float16");
  for (const at::Tensor* t : {&src, &weights, &out}) {
    TORCH_CHECK(t->device().type() == device_type && t->device() == src.device(), op,
                ": all tensors must be on ", src.device(), ", got one on ", t->device());
    TORCH_CHECK(t->layout() == at::kStrided, op, ": tensors must be strided (dense)");
    TORCH_CHECK(unit_inner_stride(*t), op, ": the last dimension of every tensor must have stride 1");
  }
  TORCH_CHECK(out.size(0) <= 1 || out.stride(0) >= out.size(1), op, ": rows of out must not overlap");
}

// The fused merge kernels (csrc/cpu/merge_*.cpp): src [K, n] CPU storage rows, weights [K] float32.
inline void check_merge_args(const char* op, const at::Tensor& src, const at::Tensor& weights) {
  TORCH_CHECK(src.dim() == 2, op, ": src must be 2-D [K, n], got shape ", src.sizes());
  TORCH_CHECK(src.device().is_cpu(), op, ": src must be on the CPU, got ", src.device());
  TORCH_CHECK(is_storage_dtype(src.scalar_type()), op, ": src must be float32, bfloat16 or float16, got ",
              src.scalar_type());
  TORCH_CHECK(unit_inner_stride(src), op, ": src rows must be contiguous (unit inner stride)");
  TORCH_CHECK(src.size(0) >= 1, op, ": src needs at least one row");
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == src.size(0), op, ": weights must be [", src.size(0),
              "], got ", weights.sizes());
  TORCH_CHECK(weights.scalar_type() == at::kFloat && weights.device().is_cpu(), op,
              ": weights must be a float32 CPU tensor");
}

}  // namespace swarmkern
