// DC_HD: a small function compiled for the host and, under nvcc, for the device too; the one definition the
// headers shared by the CPU (C++) and CUDA kernels use.
#pragma once

#if defined(__CUDACC__)
#define DC_HD __host__ __device__ __forceinline__
#else
#define DC_HD inline
#endif
