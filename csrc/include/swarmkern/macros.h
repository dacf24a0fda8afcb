// Portability macros shared by the host (C++) and device (CUDA) code. Torch-free.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SK_HOST_DEVICE __host__ __device__
#define SK_FORCE_INLINE __forceinline__
#else
#define SK_HOST_DEVICE
#define SK_FORCE_INLINE inline __attribute__((always_inline))
#endif
