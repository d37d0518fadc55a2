// CPU (OpenMP) versions of the fused scoring kernels; deepcuts_fast/kernels/*.py hold the references.
#include <torch/extension.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "common/philox.h"
#include "common/score_epilogue.h"
#include "cpu/fast_normal.h"

namespace {

constexpr int64_t kRowBlock = 1024;  // output rows of G per GEMM in the fused weight score (thinner GEMMs run slower on CPU)

void check_f32_out(const at::Tensor& t, int64_t numel, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == numel,
              name, " must be a contiguous float32 tensor with ", numel, " elements");
}

const float* optional_ptr(const c10::optional<at::Tensor>& t, int64_t numel, const char* name) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == numel,
              name, " must be a contiguous float32 tensor with ", numel, " elements");
  return t->data_ptr<float>();
}

// S (or its row / column sums) += |W[r0:r1] * G * row_factor| for one block of output rows G = G[r0:r1].
template <typename W_T>
void epilogue_rows(const W_T* w, const float* g, int64_t r0, int64_t r1, int64_t in, const float* roww,
                   float scale, float* s, float* row_sums, float* col_sums) {
  const int64_t rows = r1 - r0;
  if (s != nullptr) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float f = deepcuts::row_factor(roww, r0 + r, scale);
      const W_T* wr = w + (r0 + r) * in;
      const float* gr = g + r * in;
      float* sr = s + (r0 + r) * in;
#pragma omp simd
      for (int64_t i = 0; i < in; ++i) sr[i] += deepcuts::weight_score(static_cast<float>(wr[i]), gr[i], f);
    }
  }
  if (row_sums == nullptr && col_sums == nullptr) return;
  const int threads = omp_get_max_threads();
  std::vector<float> cols(col_sums ? static_cast<size_t>(threads) * in : 0, 0.0f);
#pragma omp parallel num_threads(threads)
  {
    float* mine = col_sums ? cols.data() + static_cast<int64_t>(omp_get_thread_num()) * in : nullptr;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float f = deepcuts::row_factor(roww, r0 + r, scale);
      const W_T* wr = w + (r0 + r) * in;
      const float* gr = g + r * in;
      float acc = 0.0f;
      for (int64_t i = 0; i < in; ++i) {
        const float v = deepcuts::weight_score(static_cast<float>(wr[i]), gr[i], f);
        acc += v;
        if (mine) mine[i] += v;
      }
      if (row_sums) row_sums[r0 + r] += acc;
    }
  }
  if (col_sums) {
    for (int t = 0; t < threads; ++t)
      for (int64_t i = 0; i < in; ++i) col_sums[i] += cols[static_cast<int64_t>(t) * in + i];
  }
}

void epilogue_dispatch(const at::Tensor& w, const float* g, int64_t r0, int64_t r1, const float* roww, float scale,
                       float* s, float* row_sums, float* col_sums) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.scalar_type(), "deepcuts_weight_score", [&] {
    epilogue_rows<scalar_t>(w.data_ptr<scalar_t>(), g, r0, r1, w.size(1), roww, scale, s, row_sums, col_sums);
  });
}

void check_outputs(const at::Tensor& w, const c10::optional<at::Tensor>& s, const c10::optional<at::Tensor>& rows,
                   const c10::optional<at::Tensor>& cols) {
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.device().is_cpu(), "W must be a contiguous 2-D CPU tensor");
  TORCH_CHECK(s.has_value() || rows.has_value() || cols.has_value(), "give at least one of S, row_sums, col_sums");
  if (s.has_value()) check_f32_out(*s, w.numel(), "S");
  if (rows.has_value()) check_f32_out(*rows, w.size(0), "row_sums");
  if (cols.has_value()) check_f32_out(*cols, w.size(1), "col_sums");
}

float* maybe_ptr(const c10::optional<at::Tensor>& t) { return t.has_value() ? t->data_ptr<float>() : nullptr; }

// Each thread streams whole rows of its token range (contiguous reads) into private fp32 sums; the sums are then
// added in thread order, so a call's result does not depend on which thread finishes first.
template <typename T>
void activation_stats_impl(const T* pa, const T* pd, const float* m, int64_t tokens, int64_t channels, float* o) {
  const int threads = omp_get_max_threads();
  const int64_t width = 4 * channels;
  std::vector<float> acc(static_cast<size_t>(threads) * width, 0.0f);
#pragma omp parallel num_threads(threads)
  {
    float* sa = acc.data() + static_cast<int64_t>(omp_get_thread_num()) * width;
    float* sd = sa + channels;
    float* sp = sd + channels;
    float* sq = sp + channels;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tokens; ++t) {
      const float mt = m ? m[t] : 1.0f;
      if (mt == 0.0f) continue;
      const T* ra = pa + t * channels;
      const T* rd = pd + t * channels;
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) {
        const float va = static_cast<float>(ra[c]) * mt, vd = static_cast<float>(rd[c]);
        const float p = va * vd;  // mask * A * dA
        sa[c] += va;
        sd[c] += vd * mt;
        sp[c] += p;
        sq[c] += fabsf(p);
      }
    }
#pragma omp for schedule(static)
    for (int64_t k = 0; k < width; ++k) {
      float total = 0.0f;
      for (int t = 0; t < threads; ++t) total += acc[static_cast<int64_t>(t) * width + k];
      o[k] += total;
    }
  }
}

constexpr int64_t kNoiseBlocks = 256;  // Philox counters (4 normals each) drawn per inner SIMD pass

// The 4 * n standard normals of counters [first, first + n) of one key, lane-major: z[j * n + i] is lane j of counter i.
__attribute__((target_clones("avx512f", "avx2", "default")))
void philox_normals(uint64_t key, uint32_t batch, uint32_t layer, uint32_t sample, uint32_t first, int64_t n,
                    float* z) {
  const uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const deepcuts::U4 u = deepcuts::philox4x32_10({first + static_cast<uint32_t>(i), sample, batch, layer}, k0, k1);
    const float r0 = sqrtf(-2.0f * deepcuts::fast_logf(deepcuts::uniform_open(u.x)));
    const float r1 = sqrtf(-2.0f * deepcuts::fast_logf(deepcuts::uniform_open(u.z)));
    float c0, s0, c1, s1;
    deepcuts::sincos_turns(deepcuts::uniform_open(u.y), c0, s0);
    deepcuts::sincos_turns(deepcuts::uniform_open(u.w), c1, s1);
    z[i] = r0 * c0;
    z[n + i] = r0 * s0;
    z[2 * n + i] = r1 * c1;
    z[3 * n + i] = r1 * s1;
  }
}

template <typename T>
void add_noise_impl(T* py, int64_t per_sample, int64_t samples, uint64_t key, uint32_t batch, uint32_t layer,
                    int64_t first_sample, float sd, const float* stds) {
  const int64_t counters = (per_sample + 3) / 4;
  const int64_t chunks = (counters + kNoiseBlocks - 1) / kNoiseBlocks;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t s = 0; s < samples; ++s) {
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      float z[4 * kNoiseBlocks];
      const int64_t c0 = chunk * kNoiseBlocks, n = std::min(kNoiseBlocks, counters - c0);
      philox_normals(key, batch, layer, static_cast<uint32_t>(first_sample + s), static_cast<uint32_t>(c0), n, z);
      T* row = py + s * per_sample + 4 * c0;
      const int64_t elements = std::min<int64_t>(4 * n, per_sample - 4 * c0);
      const float scale = stds ? sd * stds[s] : sd;
      for (int64_t e = 0; e < elements; ++e)
        row[e] = static_cast<T>(static_cast<float>(row[e]) + scale * z[(e & 3) * n + (e >> 2)]);
    }
  }
}

}  // namespace

// Kernel 1, epilogue only: S += |W * G * scale * roww| from an accumulated fp32 gradient G.
void weight_score_epilogue(const at::Tensor& w, const at::Tensor& g, const c10::optional<at::Tensor>& roww,
                           double scale, const c10::optional<at::Tensor>& s, const c10::optional<at::Tensor>& rows,
                           const c10::optional<at::Tensor>& cols) {
  check_outputs(w, s, rows, cols);
  check_f32_out(g, w.numel(), "G");
  const float* rw = optional_ptr(roww, w.size(0), "roww");
  epilogue_dispatch(w, g.data_ptr<float>(), 0, w.size(0), rw, static_cast<float>(scale), maybe_ptr(s),
                    maybe_ptr(rows), maybe_ptr(cols));
}

// Kernel 1: S += |W * (dY^T X) * scale * roww|, G computed a block of output rows at a time (never whole).
void weight_score_fused(const at::Tensor& x, const at::Tensor& dy, const at::Tensor& w,
                        const c10::optional<at::Tensor>& roww, double scale, const c10::optional<at::Tensor>& s,
                        const c10::optional<at::Tensor>& rows, const c10::optional<at::Tensor>& cols) {
  check_outputs(w, s, rows, cols);
  TORCH_CHECK(x.dim() == 2 && dy.dim() == 2 && x.size(0) == dy.size(0) && x.size(1) == w.size(1) &&
                  dy.size(1) == w.size(0),
              "X (tokens x in) and dY (tokens x out) must match W (out x in)");
  const float* rw = optional_ptr(roww, w.size(0), "roww");
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const at::Tensor dyf = dy.to(at::kFloat);
  const int64_t out = w.size(0);
  at::Tensor block = at::empty({std::min(kRowBlock, out), w.size(1)}, xf.options());
  for (int64_t r0 = 0; r0 < out; r0 += kRowBlock) {
    const int64_t r1 = std::min(out, r0 + kRowBlock);
    at::Tensor g = block.narrow(0, 0, r1 - r0);
    at::mm_out(g, dyf.narrow(1, r0, r1 - r0).t(), xf);
    epilogue_dispatch(w, g.data_ptr<float>(), r0, r1, rw, static_cast<float>(scale), maybe_ptr(s),
                      maybe_ptr(rows), maybe_ptr(cols));
  }
}

// Kernel 2: out[0..3, c] += masked sums over tokens of A, dA, A * dA and |A * dA| (fp32), in one pass.
void activation_stats(const at::Tensor& a, const at::Tensor& da, const c10::optional<at::Tensor>& mask,
                      const at::Tensor& out) {
  TORCH_CHECK(a.dim() == 2 && a.sizes() == da.sizes() && a.is_contiguous() && da.is_contiguous() &&
                  a.scalar_type() == da.scalar_type() && a.device().is_cpu(),
              "A and dA must be contiguous 2-D CPU tensors of one shape and dtype (tokens x channels)");
  const int64_t tokens = a.size(0), channels = a.size(1);
  check_f32_out(out, 4 * channels, "out");
  const float* m = optional_ptr(mask, tokens, "mask");
  float* o = out.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.scalar_type(), "deepcuts_activation_stats", [&] {
    activation_stats_impl<scalar_t>(a.data_ptr<scalar_t>(), da.data_ptr<scalar_t>(), m, tokens, channels, o);
  });
}

// Kernel 3: y[sample i] += std * stds[i] * N(0, 1) in place (stds absent: 1), Philox-keyed by
// (seed, batch, layer, first_sample + i). One call covers every stacked sample, each at its own scale.
void add_noise(const at::Tensor& y, double std, const c10::optional<at::Tensor>& stds, int64_t seed, int64_t batch,
               int64_t layer, int64_t first_sample, int64_t samples) {
  TORCH_CHECK(y.is_contiguous() && y.device().is_cpu(), "Y must be a contiguous CPU tensor");
  TORCH_CHECK(samples >= 1 && y.numel() % samples == 0, "Y's elements must split evenly into ", samples, " samples");
  const int64_t per_sample = y.numel() / samples;
  TORCH_CHECK(per_sample / 4 < (int64_t(1) << 32), "a noise sample holds too many elements for a 32-bit counter");
  const float* sd = optional_ptr(stds, samples, "stds");
  const uint64_t key = static_cast<uint64_t>(seed);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "deepcuts_add_noise", [&] {
    add_noise_impl<scalar_t>(y.data_ptr<scalar_t>(), per_sample, samples, key, static_cast<uint32_t>(batch),
                             static_cast<uint32_t>(layer), first_sample, static_cast<float>(std), sd);
  });
}

// The standard normals of elements [0, count) of one (seed, batch, layer, sample), for tests.
at::Tensor philox_normal(int64_t count, int64_t seed, int64_t batch, int64_t layer, int64_t sample) {
  at::Tensor out = at::zeros({count}, at::kFloat);
  add_noise(out, 1.0, c10::nullopt, seed, batch, layer, sample, 1);
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "deepcuts-fast fused scoring kernels, CPU (OpenMP)";
  m.def("weight_score_fused", &weight_score_fused, "S += |W * (dY^T X) * scale * roww| without a full G");
  m.def("weight_score_epilogue", &weight_score_epilogue, "S += |W * G * scale * roww|");
  m.def("activation_stats", &activation_stats, "masked sums of A, dA, A*dA, |A*dA| per channel");
  m.def("add_noise", &add_noise, "Y += std * stds[sample] * Philox normal noise, in place");
  m.def("philox_normal", &philox_normal, "Philox normals of one noise key");
  m.def("num_threads", &omp_get_max_threads, "OpenMP threads");
}
