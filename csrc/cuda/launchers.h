// Host launchers of the CUDA kernels: raw device pointers and a cudaStream_t passed as void*, so both
// kernels.cu (plain nvcc) and bindings.cpp (torch, no CUDA headers) include this.
#pragma once
#include <cstdint>

namespace deepcuts_cuda {

constexpr int kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2;  // element type of the non-fp32 inputs

// Each returns the cudaError_t of the launch as an int (0: success).
int launch_weight_score(const void* x, const void* dy, const void* w, int dtype, const float* roww, float scale,
                        float* s, float* rows, float* cols, int64_t tokens, int64_t out, int64_t in, void* stream);
int launch_weight_score_epilogue(const void* w, int dtype, const float* g, const float* roww, float scale, float* s,
                                 float* rows, float* cols, int64_t out, int64_t in, void* stream);
int launch_activation_stats(const void* a, const void* da, int dtype, const float* mask, float* out, int64_t tokens,
                            int64_t channels, void* stream);
int launch_add_noise(void* y, int dtype, int64_t per_sample, int64_t samples, float sd, const float* stds,
                     uint64_t seed, uint32_t batch, uint32_t layer, uint32_t first_sample, void* stream);

}  // namespace deepcuts_cuda
