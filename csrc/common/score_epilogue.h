// The per-weight score epilogue |w * g * scale * roww|, shared by the CPU and CUDA kernels.
#pragma once
#include <cmath>

#include "common/device_inline.h"

namespace deepcuts {

// One weight's score for one batch: w * g scaled by 1/N and by its output row's GradCAM weight.
DC_HD float weight_score(float w, float g, float row_factor) {
  return fabsf(w * g * row_factor);
}

// The factor every weight of an output row is multiplied by: scale (1/N) times roww (1 when absent).
DC_HD float row_factor(const float* roww, long row, float scale) {
  return roww == nullptr ? scale : scale * roww[row];
}

}  // namespace deepcuts
