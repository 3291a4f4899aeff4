// Device helpers shared by every kernel: element conversions with round-to-nearest-even, a minimal
// is_same (NVRTC has no <type_traits>), and warp reductions with a fixed order (deterministic).
//
// Device code only: no host code and no torch headers, so the same sources compile with nvcc (the
// extension), NVRTC (CuPy JIT) and a host compiler under REGNET_EMULATE (csrc/emulate.h, CPU tests).
#pragma once

#if defined(REGNET_EMULATE)
#include "../emulate.h"
#else
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#endif

#include "config.cuh"

namespace regnet {

template <typename A, typename B>
struct is_same {
  static constexpr bool value = false;
};
template <typename A>
struct is_same<A, A> {
  static constexpr bool value = true;
};

constexpr int RED_PIX = REGNET_RED_PIX;
constexpr int RED_CH = REGNET_RED_CH;
constexpr int RED_THREADS = REGNET_RED_THREADS;
constexpr int ROW_LANES = REGNET_ROW_LANES;
static_assert(RED_CH == 32 && RED_THREADS == 256, "the reduction layouts assume 32 channels x 8 warps");
static_assert(RED_PIX % 32 == 0 && RED_PIX % (RED_THREADS / RED_CH) == 0, "pixel tile must split evenly");

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Sum over the 32 lanes of a warp; every lane gets the result. The butterfly order is fixed, so the
// result is bitwise reproducible.
__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Activation codes (config.cuh, REGNET_ACT_*): the `act` argument of the kernels.
enum Act : int { ACT_NONE = REGNET_ACT_NONE, ACT_RELU = REGNET_ACT_RELU };

// The activation `act` on v; a new activation is one branch here (and one in act_grad).
// RELU is torch.relu: 0 where v < 0, else v, so NaN (and -0.0) pass through as in eager; fmaxf(v, 0.0f)
// returns 0 for NaN and would hide a diverging run.
__device__ __forceinline__ float apply_act(float v, long long act) {
  if (act == ACT_RELU) v = v < 0.0f ? 0.0f : v;
  return v;
}

// The gradient g reaching apply_act(z, act), taken back through it.
// RELU is eager's threshold_backward(g, z, 0): 0 where z <= 0, else g (a NaN z lets g through).
__device__ __forceinline__ float act_grad(float g, float z, long long act) {
  if (act == ACT_RELU) g = z <= 0.0f ? 0.0f : g;
  return g;
}

__device__ __forceinline__ long long cdiv_ll(long long a, long long b) { return (a + b - 1) / b; }

}  // namespace regnet
