// CUDA versions of the fused scoring kernels. Launchers take raw pointers and a stream handle (no ATen
// headers), so this file compiles with plain `nvcc -arch=sm_90 -c`; bindings.cpp wraps them for torch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/philox.h"
#include "common/score_epilogue.h"
#include "cuda/launchers.h"

namespace {

constexpr int kTile = 64;     // output tile of G: kTile rows x kTile columns per block
constexpr int kStep = 16;     // tokens loaded into shared memory per step
constexpr int kThreads = 256; // 16 x 16 threads, each computing 4 x 4 entries of the tile

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half(v); }

// Add one (rows r, column c) entry's score to S and/or its row and column sums.
__device__ __forceinline__ void add_score(float v, int64_t r, int64_t c, int64_t in, float* s, float* rows,
                                          float* cols) {
  if (s) s[r * in + c] += v;
  if (rows) atomicAdd(rows + r, v);
  if (cols) atomicAdd(cols + c, v);
}

// S += |W * (dY^T X) * scale * roww| for one 64 x 64 tile of G held in registers (fp32 accumulation).
template <typename T>
__global__ void weight_score_kernel(const T* __restrict__ x, const T* __restrict__ dy, const T* __restrict__ w,
                                    const float* __restrict__ roww, float scale, float* s, float* rows, float* cols,
                                    int64_t tokens, int64_t out, int64_t in) {
  __shared__ float sdy[kStep][kTile];
  __shared__ float sx[kStep][kTile];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kTile, c0 = static_cast<int64_t>(blockIdx.x) * kTile;
  float acc[4][4] = {};
  for (int64_t t0 = 0; t0 < tokens; t0 += kStep) {
    for (int i = threadIdx.x; i < kStep * kTile; i += kThreads) {
      const int tt = i / kTile, j = i % kTile;
      const int64_t t = t0 + tt;
      sdy[tt][j] = (t < tokens && r0 + j < out) ? to_f32(dy[t * out + r0 + j]) : 0.0f;
      sx[tt][j] = (t < tokens && c0 + j < in) ? to_f32(x[t * in + c0 + j]) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int tt = 0; tt < kStep; ++tt) {
      float a[4], b[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        a[k] = sdy[tt][ty * 4 + k];
        b[k] = sx[tt][tx * 4 + k];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t r = r0 + ty * 4 + i;
    if (r >= out) continue;
    const float f = deepcuts::row_factor(roww, r, scale);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t c = c0 + tx * 4 + j;
      if (c < in) add_score(deepcuts::weight_score(to_f32(w[r * in + c]), acc[i][j], f), r, c, in, s, rows, cols);
    }
  }
}

// The same epilogue on an accumulated fp32 gradient G, one entry per thread.
template <typename T>
__global__ void weight_score_epilogue_kernel(const T* __restrict__ w, const float* __restrict__ g,
                                             const float* __restrict__ roww, float scale, float* s, float* rows,
                                             float* cols, int64_t out, int64_t in) {
  const int64_t n = out * in;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / in, c = e % in;
    add_score(deepcuts::weight_score(to_f32(w[e]), g[e], deepcuts::row_factor(roww, r, scale)), r, c, in, s, rows,
              cols);
  }
}

// out[0..3, c] += masked sums of A, dA, A * dA, |A * dA| over a slice of tokens, one channel per thread.
template <typename T>
__global__ void activation_stats_kernel(const T* __restrict__ a, const T* __restrict__ da,
                                        const float* __restrict__ mask, float* out, int64_t tokens, int64_t channels,
                                        int64_t tokens_per_block) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= channels) return;
  const int64_t t0 = blockIdx.y * tokens_per_block;
  const int64_t t1 = t0 + tokens_per_block < tokens ? t0 + tokens_per_block : tokens;
  float sa = 0.0f, sd = 0.0f, sp = 0.0f, sq = 0.0f;
  for (int64_t t = t0; t < t1; ++t) {
    const float m = mask ? mask[t] : 1.0f;
    const float va = to_f32(a[t * channels + c]) * m, vd = to_f32(da[t * channels + c]);
    const float p = va * vd;  // mask * A * dA
    sa += va;
    sd += vd * m;
    sp += p;
    sq += fabsf(p);
  }
  atomicAdd(out + c, sa);
  atomicAdd(out + channels + c, sd);
  atomicAdd(out + 2 * channels + c, sp);
  atomicAdd(out + 3 * channels + c, sq);
}

// y[sample s] += std * stds[s] (stds null: 1) * Philox normals, one counter (four elements) per thread; the
// per-sample scales are read on the device, so relative noise needs no host sync.
template <typename T>
__global__ void add_noise_kernel(T* y, int64_t per_sample, float sd, const float* stds, uint64_t seed, uint32_t batch,
                                 uint32_t layer, uint32_t first_sample) {
  const int64_t counters = (per_sample + 3) / 4;
  const int64_t blk = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (blk >= counters) return;
  if (stds) sd *= stds[blockIdx.y];
  float z[4];
  deepcuts::noise4(seed, batch, layer, first_sample + blockIdx.y, static_cast<uint32_t>(blk), z);
  T* row = y + static_cast<int64_t>(blockIdx.y) * per_sample;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int64_t e = 4 * blk + j;
    if (e < per_sample) row[e] = from_f32<T>(to_f32(row[e]) + sd * z[j]);
  }
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename F>
void dispatch(int dtype, F&& f) {
  if (dtype == deepcuts_cuda::kFloat32) f(static_cast<float*>(nullptr));
  else if (dtype == deepcuts_cuda::kBFloat16) f(static_cast<__nv_bfloat16*>(nullptr));
  else f(static_cast<__half*>(nullptr));
}

}  // namespace

namespace deepcuts_cuda {

int launch_weight_score(const void* x, const void* dy, const void* w, int dtype, const float* roww, float scale,
                        float* s, float* rows, float* cols, int64_t tokens, int64_t out, int64_t in, void* stream) {
  const dim3 grid(static_cast<unsigned>(cdiv(in, kTile)), static_cast<unsigned>(cdiv(out, kTile)));
  dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    weight_score_kernel<T><<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), static_cast<const T*>(dy), static_cast<const T*>(w), roww, scale, s, rows, cols,
        tokens, out, in);
  });
  return static_cast<int>(cudaGetLastError());
}

int launch_weight_score_epilogue(const void* w, int dtype, const float* g, const float* roww, float scale, float* s,
                                 float* rows, float* cols, int64_t out, int64_t in, void* stream) {
  const int64_t blocks = cdiv(out * in, 256) < 65535 ? cdiv(out * in, 256) : 65535;
  dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    weight_score_epilogue_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(w), g, roww, scale, s, rows, cols, out, in);
  });
  return static_cast<int>(cudaGetLastError());
}

int launch_activation_stats(const void* a, const void* da, int dtype, const float* mask, float* out, int64_t tokens,
                            int64_t channels, void* stream) {
  const int64_t per_block = 256;
  const dim3 grid(static_cast<unsigned>(cdiv(channels, 128)), static_cast<unsigned>(cdiv(tokens, per_block)));
  dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    activation_stats_kernel<T><<<grid, 128, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(a), static_cast<const T*>(da), mask, out, tokens, channels, per_block);
  });
  return static_cast<int>(cudaGetLastError());
}

int launch_add_noise(void* y, int dtype, int64_t per_sample, int64_t samples, float sd, const float* stds,
                     uint64_t seed, uint32_t batch, uint32_t layer, uint32_t first_sample, void* stream) {
  const dim3 grid(static_cast<unsigned>(cdiv(cdiv(per_sample, 4), 256)), static_cast<unsigned>(samples));
  dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    add_noise_kernel<T><<<grid, 256, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<T*>(y), per_sample, sd, stds,
                                                                             seed, batch, layer, first_sample);
  });
  return static_cast<int>(cudaGetLastError());
}

}  // namespace deepcuts_cuda
