// Vectorisable Philox + Box-Muller for the CPU noise kernel: the same draws as csrc/common/philox.h,
// with polynomial logf / sincos (Cephes coefficients, about 1 ulp) instead of scalar libm calls, so
// a loop over counters compiles to SIMD code. Results match philox.h's libm version to ~1e-6.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/philox.h"

namespace deepcuts {

inline float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// Natural log of a positive normal float (Cephes logf).
inline float fast_logf(float u) {
  const uint32_t bits = float_to_bits(u);
  float e = static_cast<float>(static_cast<int>((bits >> 23) & 0xff) - 126);
  float m = bits_to_float((bits & 0x807fffffu) | 0x3f000000u);  // [0.5, 1)
  // 1 when m < sqrt(1/2), from the sign of the difference of the (positive) float bit patterns: no branch
  const float small = static_cast<float>(static_cast<int32_t>((float_to_bits(m) - 0x3f3504f3u) >> 31));
  e -= small;
  const float x = m + small * m - 1.0f;
  const float z = x * x;
  float y = 7.0376836292e-2f;
  y = y * x - 1.1514610310e-1f;
  y = y * x + 1.1676998740e-1f;
  y = y * x - 1.2420140846e-1f;
  y = y * x + 1.4249322787e-1f;
  y = y * x - 1.6668057665e-1f;
  y = y * x + 2.0000714765e-1f;
  y = y * x - 2.4999993993e-1f;
  y = y * x + 3.3333331174e-1f;
  y = y * x * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return x + y + 0.693359375f * e;
}

// cos and sin of 2*pi*u for u in (0, 1]: exact reduction by quarter turns of u, then Cephes polynomials.
inline void sincos_turns(float u, float& c, float& s) {
  const float q = static_cast<float>(static_cast<int>(4.0f * u + 0.5f));  // round half up; 4u > 0
  const float a = (4.0f * u - q) * 1.5707963267948966f;  // [-pi/4, pi/4]
  const float z = a * a;
  const float sa = a + a * z * ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f);
  const float ca = 1.0f - 0.5f * z + z * z * ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z +
                                               4.166664568298827e-2f);
  // Quarter turn k maps (cos a, sin a) to (-sin a, cos a): select by bit masks and flip signs (no branches).
  const uint32_t quadrant = static_cast<uint32_t>(static_cast<int>(q)) & 3u;
  const uint32_t swap = 0u - (quadrant & 1u);
  const uint32_t flip = (quadrant >> 1) << 31;
  const uint32_t cb = (float_to_bits(ca) & ~swap) | ((float_to_bits(sa) ^ 0x80000000u) & swap);
  const uint32_t sb = (float_to_bits(sa) & ~swap) | (float_to_bits(ca) & swap);
  c = bits_to_float(cb ^ flip);
  s = bits_to_float(sb ^ flip);
}

}  // namespace deepcuts
