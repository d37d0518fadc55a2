// Philox4x32-10 counter-based RNG and Box-Muller, shared by the CPU (C++) and CUDA kernels.
//
// Noise element e of noise sample s, calibration batch b, Linear l under seed k is lane e % 4 of
// the normals made from philox(counter = (e / 4, s, b, l), key = (k low 32 bits, k high 32 bits)).
// deepcuts_fast/kernels/noise.py implements the same arithmetic with integer tensor ops.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/device_inline.h"

namespace deepcuts {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

struct U4 {
  uint32_t x, y, z, w;
};

DC_HD void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Ten Philox rounds on counter c with key (k0, k1).
DC_HD U4 philox4x32_10(U4 c, uint32_t k0, uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#else
#pragma GCC unroll 10
#endif
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kPhiloxM0, c.x, hi0, lo0);
    mulhilo(kPhiloxM1, c.z, hi1, lo1);
    c = U4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return c;
}

// A 32-bit draw mapped into the open interval (0, 1] in fp32.
// float(x) is built from two exact 16-bit halves (one rounding, so the same value) because unsigned-to-float
// conversion has no SIMD instruction before AVX-512 and would keep the CPU noise loop scalar.
DC_HD float uniform_open(uint32_t x) {
  const float f = static_cast<float>(static_cast<int32_t>(x >> 16)) * 65536.0f +
                  static_cast<float>(static_cast<int32_t>(x & 0xFFFFu));
  return f * 2.3283064365386963e-10f + 1.1641532182693481e-10f;
}

// The four standard normals of one Philox output: Box-Muller on (x, y) and on (z, w).
DC_HD void box_muller4(U4 u, float out[4]) {
  const float r0 = sqrtf(-2.0f * logf(uniform_open(u.x)));
  const float t0 = 6.2831855f * uniform_open(u.y);
  const float r1 = sqrtf(-2.0f * logf(uniform_open(u.z)));
  const float t1 = 6.2831855f * uniform_open(u.w);
  out[0] = r0 * cosf(t0);
  out[1] = r0 * sinf(t0);
  out[2] = r1 * cosf(t1);
  out[3] = r1 * sinf(t1);
}

// The standard normals of noise elements [4 * block, 4 * block + 4) of one (seed, batch, layer, sample).
DC_HD void noise4(uint64_t seed, uint32_t batch, uint32_t layer, uint32_t sample, uint32_t block, float out[4]) {
  const U4 c{block, sample, batch, layer};
  box_muller4(philox4x32_10(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)), out);
}

}  // namespace deepcuts
