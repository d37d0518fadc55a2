// torch bindings of the CUDA launchers: checks, raw pointers and the caller's stream (passed in from
// Python as torch.cuda.current_stream().cuda_stream), so no CUDA or ATen-CUDA header is needed here.
#include <torch/extension.h>

#include "cuda/launchers.h"

namespace {

int dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return deepcuts_cuda::kFloat32;
    case at::kBFloat16: return deepcuts_cuda::kBFloat16;
    case at::kHalf: return deepcuts_cuda::kFloat16;
    default: TORCH_CHECK(false, "the CUDA kernels take float32, bfloat16 or float16 tensors, not ", t.scalar_type());
  }
}

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.is_contiguous(), name, " must be a contiguous CUDA tensor");
}

float* f32(const c10::optional<at::Tensor>& t, int64_t numel, const char* name) {
  if (!t.has_value()) return nullptr;
  check_cuda(*t, name);
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->numel() == numel, name, " must be float32 with ", numel,
              " elements");
  return t->data_ptr<float>();
}

void* stream_ptr(int64_t stream) { return reinterpret_cast<void*>(stream); }

void check_launch(int err, const char* what) { TORCH_CHECK(err == 0, what, " failed to launch (cudaError ", err, ")"); }

}  // namespace

void weight_score_fused(const at::Tensor& x, const at::Tensor& dy, const at::Tensor& w,
                        const c10::optional<at::Tensor>& roww, double scale, const c10::optional<at::Tensor>& s,
                        const c10::optional<at::Tensor>& rows, const c10::optional<at::Tensor>& cols, int64_t stream) {
  check_cuda(x, "X");
  check_cuda(dy, "dY");
  check_cuda(w, "W");
  TORCH_CHECK(x.scalar_type() == dy.scalar_type() && x.scalar_type() == w.scalar_type(),
              "X, dY and W must share one dtype");
  const int64_t out = w.size(0), in = w.size(1);
  check_launch(deepcuts_cuda::launch_weight_score(
                   x.data_ptr(), dy.data_ptr(), w.data_ptr(), dtype_code(w), f32(roww, out, "roww"),
                   static_cast<float>(scale), f32(s, out * in, "S"), f32(rows, out, "row_sums"),
                   f32(cols, in, "col_sums"), x.size(0), out, in, stream_ptr(stream)),
               "weight_score");
}

void weight_score_epilogue(const at::Tensor& w, const at::Tensor& g, const c10::optional<at::Tensor>& roww,
                           double scale, const c10::optional<at::Tensor>& s, const c10::optional<at::Tensor>& rows,
                           const c10::optional<at::Tensor>& cols, int64_t stream) {
  check_cuda(w, "W");
  const int64_t out = w.size(0), in = w.size(1);
  check_launch(deepcuts_cuda::launch_weight_score_epilogue(
                   w.data_ptr(), dtype_code(w), f32(g, out * in, "G"), f32(roww, out, "roww"),
                   static_cast<float>(scale), f32(s, out * in, "S"), f32(rows, out, "row_sums"),
                   f32(cols, in, "col_sums"), out, in, stream_ptr(stream)),
               "weight_score_epilogue");
}

void activation_stats(const at::Tensor& a, const at::Tensor& da, const c10::optional<at::Tensor>& mask,
                      const at::Tensor& out, int64_t stream) {
  check_cuda(a, "A");
  check_cuda(da, "dA");
  const int64_t tokens = a.size(0), channels = a.size(1);
  check_launch(deepcuts_cuda::launch_activation_stats(a.data_ptr(), da.data_ptr(), dtype_code(a),
                                                      f32(mask, tokens, "mask"), f32(out, 4 * channels, "out"),
                                                      tokens, channels, stream_ptr(stream)),
               "activation_stats");
}

void add_noise(const at::Tensor& y, double std, const c10::optional<at::Tensor>& stds, int64_t seed, int64_t batch,
               int64_t layer, int64_t first_sample, int64_t samples, int64_t stream) {
  check_cuda(y, "Y");
  TORCH_CHECK(samples >= 1 && y.numel() % samples == 0, "Y's elements must split evenly into ", samples, " samples");
  check_launch(deepcuts_cuda::launch_add_noise(y.data_ptr(), dtype_code(y), y.numel() / samples, samples,
                                               static_cast<float>(std), f32(stds, samples, "stds"),
                                               static_cast<uint64_t>(seed), static_cast<uint32_t>(batch),
                                               static_cast<uint32_t>(layer), static_cast<uint32_t>(first_sample),
                                               stream_ptr(stream)),
               "add_noise");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "deepcuts-fast fused scoring kernels, CUDA";
  m.def("weight_score_fused", &weight_score_fused, "S += |W * (dY^T X) * scale * roww|, G tile in registers");
  m.def("weight_score_epilogue", &weight_score_epilogue, "S += |W * G * scale * roww|");
  m.def("activation_stats", &activation_stats, "masked sums of A, dA, A*dA, |A*dA| per channel");
  m.def("add_noise", &add_noise, "Y += std * stds[sample] * Philox normal noise, in place");
}
