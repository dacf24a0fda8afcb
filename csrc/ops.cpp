// The swarmkern operator library: the one schema file of every C++/CUDA op. Kernels register
// themselves per device with TORCH_LIBRARY_IMPL (csrc/cpu/*.cpp: CPU, csrc/cuda/*.cpp: CUDA); Python
// adds the fake (meta) implementations (swarmkern/ops/_fake.py) and the Triton ops beside these
// (swarmkern/ops/triton_backend.py: swarmkern::triton_*). A new op gets its schema here.
#include <Python.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>

// Importing swarmkern._C loads this library, which runs the registrations below.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "swarmkern operator library", -1, nullptr};
  return PyModule_Create(&module_def);
}

namespace {

// How this library was compiled (shown by `swarmkern info`).
std::string build_info() {
#if defined(CPU_CAPABILITY_AVX512)
  std::string isa = "AVX512";
#elif defined(CPU_CAPABILITY_AVX2)
  std::string isa = "AVX2";
#else
  std::string isa = "DEFAULT";
#endif
#if defined(__AVX512BF16__)
  isa += "+BF16";
#endif
#if defined(_OPENMP)
  const std::string parallel = "OpenMP";
#else
  const std::string parallel = "no OpenMP (serial)";
#endif
  return "isa=" + isa + " parallel=" + parallel + " threads=" + std::to_string(at::get_num_threads());
}

}  // namespace

TORCH_LIBRARY(swarmkern, m) {
  m.def("build_info() -> str", &build_info);
  m.def(
      "pso_step_(Tensor(a!) x, Tensor(b!) v, Tensor pbest, Tensor gbest, Tensor gworst, Tensor coef, "
      "float step) -> ()");
  m.def(
      "pso_step_random_(Tensor(a!) x, Tensor(b!) v, Tensor pbest, Tensor gbest, Tensor gworst, Tensor phi, "
      "float step, int seed, int iteration, int particle_offset, float r_lo, float r_hi, bool normalize) -> ()");
  m.def("combine(Tensor src, Tensor weights) -> Tensor");
  m.def("combine_out(Tensor src, Tensor weights, Tensor(a!) out) -> ()");
  // Fused merge kernels (csrc/cpu/merge_*.cpp; CPU only). method: 0 = "total", 1 = "frequency" sign election.
  m.def("merge_ties_disjoint(Tensor trimmed, Tensor weights, int method) -> Tensor");
  m.def("merge_dare(Tensor src, Tensor weights, float density, int seed, int offset, bool ties, int method) -> Tensor");
}
