// Host launchers of regnet_kernels._C: raw device pointers (as integers), sizes, strides (in elements)
// and a cudaStream_t (as an integer) in; no torch. Each launcher validates its arguments
// (std::invalid_argument -> Python ValueError), launches on the given stream, and turns a launch error
// into std::runtime_error carrying the CUDA error name and string (-> Python RuntimeError). Nothing
// synchronizes and nothing allocates: callers own every buffer (workspaces included), so the
// launches are CUDA-graph capturable.
//
// Conventions (see csrc/README.md):
// - dtype codes: 0 float32, 1 float16, 2 bfloat16 (activations and weights); statistics, affine
//   vectors, SE parameters and workspaces are float32.
// - conv strides are (n, c, h, w) element strides of each tensor as given; weights (C_out, C_in/groups,
//   kh, kw) are read through their strides too.
// - per-channel element-wise / reduction launchers take dense tensors (NCHW or channels_last) that all
//   share one layout, described by the channel stride cs and pixel stride ps.
// - a pointer argument of 0 means "absent" where the launcher documents it as optional.
// - act: an activation code (kernels/config.cuh REGNET_ACT_*: 0 none, 1 relu).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "kernels/config.cuh"

namespace regnet {

using ptr_t = std::uintptr_t;
using i64 = std::int64_t;

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// ---- conv (conv_fwd.cu, conv_bwd.cu) ----
// shape = N, C_in, H, W, C_out, HO, WO, KH, KW, stride, pad, groups (passed flat)
void conv_fwd(int dtype, ptr_t x, i64 sxn, i64 sxc, i64 sxh, i64 sxw, ptr_t w, i64 swo, i64 swi, i64 swh, i64 sww,
              ptr_t y, i64 syn, i64 syc, i64 syh, i64 syw, i64 N, i64 C_in, i64 H, i64 W, i64 C_out, i64 HO, i64 WO,
              i64 KH, i64 KW, i64 stride, i64 pad, i64 groups, ptr_t part_mean, ptr_t part_m2, ptr_t post_mean,
              ptr_t post_scale, ptr_t post_bias, int act, ptr_t stream);
void conv_dgrad(int dtype, ptr_t dy, i64 sdn, i64 sdc, i64 sdh, i64 sdw, ptr_t w, i64 swo, i64 swi, i64 swh, i64 sww,
                ptr_t dx, i64 sxn, i64 sxc, i64 sxh, i64 sxw, i64 N, i64 C_in, i64 H, i64 W, i64 C_out, i64 HO, i64 WO,
                i64 KH, i64 KW, i64 stride, i64 pad, i64 groups, ptr_t stream);
void conv_wgrad(int dtype, ptr_t x, i64 sxn, i64 sxc, i64 sxh, i64 sxw, ptr_t dy, i64 sdn, i64 sdc, i64 sdh, i64 sdw,
                ptr_t ws, i64 N, i64 C_in, i64 H, i64 W, i64 C_out, i64 HO, i64 WO, i64 KH, i64 KW, i64 stride, i64 pad,
                i64 groups, i64 splits, i64 m_per_split, ptr_t stream);
void wgrad_reduce(int dtype, ptr_t ws, i64 splits, i64 C_out, i64 per_co, ptr_t scale, ptr_t out_f32, ptr_t out_t,
                  ptr_t stream);
// what every conv launcher checks first (conv_fwd.cu): the dtype, the named tensor pointers and the shape
void check_conv_args(const char* fn, int dtype, std::initializer_list<std::pair<ptr_t, const char*>> tensors, i64 N,
                     i64 C_in, i64 H, i64 W, i64 C_out, i64 HO, i64 WO, i64 KH, i64 KW, i64 stride, i64 pad,
                     i64 groups);
// number of BN-wide input-channel chunks the widest output-channel tile of a grouped conv spans
i64 wgrad_channel_chunks(i64 C_in, i64 C_out, i64 groups);

// ---- BatchNorm (bn.cu) ----
void bn_finalize(ptr_t part_mean, ptr_t part_m2, i64 T, i64 M, i64 rows_per_tile, i64 C, ptr_t gamma, ptr_t beta,
                 double eps, ptr_t mean, ptr_t invstd, ptr_t var_unb, ptr_t scale, ptr_t bias, ptr_t stream);
void sum_rows(ptr_t part_a, ptr_t out_a, ptr_t part_b, ptr_t out_b, i64 T, i64 C, ptr_t stream);
void bn_running_update(ptr_t running_mean, ptr_t running_var, ptr_t num_batches_tracked, ptr_t mean, ptr_t var_unb,
                       i64 C, double momentum, bool cumulative, ptr_t stream);
void bn_act(int dtype, ptr_t y, ptr_t out, ptr_t mean, ptr_t scale, ptr_t bias, i64 numel, i64 C, i64 cs, int act,
            ptr_t stream);
void bn_bwd_reduce(int dtype, ptr_t dout, ptr_t src, ptr_t dz, ptr_t mean, ptr_t invstd, ptr_t scale, ptr_t bias,
                   ptr_t part_dz, ptr_t part_dzx, i64 M, i64 C, i64 HW, i64 cs, i64 ps, bool train, int act,
                   ptr_t stream);
void bn_bwd_dy(int dtype, ptr_t dout, ptr_t y, ptr_t dy, ptr_t mean, ptr_t invstd, ptr_t scale, ptr_t bias,
               ptr_t sum_dz, ptr_t sum_dzx, double inv_count, i64 numel, i64 C, i64 cs, int act, ptr_t stream);

// ---- squeeze-excitation (se.cu) ----
void se_reduce(int dtype, ptr_t a, ptr_t b, ptr_t out, i64 N, i64 C, i64 HW, i64 cs, i64 ps, double mul, ptr_t stream);
void se_fc_fwd(ptr_t pooled, ptr_t w1, ptr_t b1, ptr_t w2, ptr_t b2, ptr_t s1, ptr_t gate, i64 N, i64 C, i64 S,
               ptr_t stream);
void se_fc_bwd(ptr_t pooled, ptr_t gate, ptr_t dgate, ptr_t w1, ptr_t b1, ptr_t w2, ptr_t s1, ptr_t ds2, ptr_t ds1,
               ptr_t dpooled, i64 N, i64 C, i64 S, ptr_t stream);
void se_outer(ptr_t A, ptr_t B, ptr_t out, i64 N, i64 I, i64 J, int act_b, ptr_t stream);
void se_scale(int dtype, ptr_t x, ptr_t gate, ptr_t out, i64 numel, i64 C, i64 cs, i64 CHW, ptr_t stream);
void se_dx(int dtype, ptr_t dout, ptr_t gate, ptr_t dpooled, ptr_t dx, i64 numel, i64 C, i64 cs, i64 CHW,
           double inv_hw, ptr_t stream);

// ---- argument checks shared by the launchers ----
inline void require(bool ok, const char* fn, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string("regnet_kernels._C.") + fn + ": " + what);
}

inline void require_ptr(ptr_t p, const char* fn, const char* name) {
  require(p != 0, fn, std::string(name) + " is a null pointer");
}

inline void require_dtype(int dtype, const char* fn) {
  require(dtype == kFloat32 || dtype == kFloat16 || dtype == kBFloat16, fn,
          "dtype code " + std::to_string(dtype) + " is not 0 (float32), 1 (float16) or 2 (bfloat16)");
}

inline void require_act(int act, const char* fn) {
  require(act == REGNET_ACT_NONE || act == REGNET_ACT_RELU, fn,
          "activation code " + std::to_string(act) + " is not 0 (none) or 1 (relu)");
}

// The (channel, pixel) strides of a dense NCHW (cs = HW, ps = 1) or channels_last (cs = 1, ps = C) tensor.
inline void check_layout(const char* fn, i64 C, i64 HW, i64 cs, i64 ps) {
  require(C >= 1 && HW >= 1, fn, "C and H*W must be positive");
  require((cs == HW && ps == 1) || (cs == 1 && ps == C), fn,
          "tensors must be dense NCHW (cs=H*W, ps=1) or channels_last (cs=1, ps=C)");
}

inline void require_int32(i64 v, const char* fn, const char* name) {
  require(v >= 0 && v <= 2147483647LL, fn,
          std::string(name) + " = " + std::to_string(v) + " is out of range (the kernels index with 32-bit integers)");
}

}  // namespace regnet

// ---- launch plumbing, for the launcher translation units only (csrc/*.cu) ----
#if defined(REGNET_LAUNCHER_TU)
#include "kernels/config.cuh"
#if defined(REGNET_EMULATE)
#include "emulate.h"
#define REGNET_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::regnet_emu::launch(kernel, grid, block, smem, stream, __VA_ARGS__)
#define REGNET_GET_LAST_ERROR() ::regnet_emu::get_last_error()
#define REGNET_ERROR_NAME(e) ::regnet_emu::error_name(e)
#define REGNET_ERROR_STRING(e) ::regnet_emu::error_string(e)
#else
#include <cuda_runtime.h>
// `kernel` is a variable holding the kernel (template arguments would split the macro arguments)
#define REGNET_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#define REGNET_GET_LAST_ERROR() cudaGetLastError()
#define REGNET_ERROR_NAME(e) cudaGetErrorName(e)
#define REGNET_ERROR_STRING(e) cudaGetErrorString(e)
#endif

namespace regnet {

// After a launch: a launch error (bad configuration, no device, no kernel image for this GPU, an
// earlier asynchronous fault) becomes a RuntimeError naming the launcher.
inline void check_launch(const char* fn) {
  const cudaError_t e = REGNET_GET_LAST_ERROR();
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("regnet_kernels._C.") + fn + ": CUDA error " + REGNET_ERROR_NAME(e) + ": " +
                             REGNET_ERROR_STRING(e));
}

inline cudaStream_t as_stream(ptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

// The launcher ABI's argument as the kernel parameter it feeds: a ptr_t becomes the typed device pointer,
// a number the kernel's scalar type (long long, float).
template <typename To, typename From>
inline To kernel_arg(From v) {
  if constexpr (std::is_pointer<To>::value)
    return reinterpret_cast<To>(v);
  else
    return static_cast<To>(v);
}

// Launch `kern` (no dynamic shared memory) on `stream`, each argument converted to the kernel's parameter
// type, then check the launch (a RuntimeError naming the launcher `fn`).
template <typename... P, typename... A>
inline void launch_kernel(const char* fn, void (*kern)(P...), dim3 grid, dim3 block, ptr_t stream, A... args) {
  static_assert(sizeof...(P) == sizeof...(A), "one argument per kernel parameter");
  REGNET_LAUNCH(kern, grid, block, 0, as_stream(stream), kernel_arg<P>(args)...);
  check_launch(fn);
}

// Grid of an implicit-GEMM conv: GEMM_BM-row by GEMM_BN-column tiles (at most 65535 column tiles).
inline dim3 gemm_grid(const char* fn, i64 rows, i64 cols, const char* too_many) {
  const dim3 grid((unsigned)((rows + REGNET_GEMM_BM - 1) / REGNET_GEMM_BM),
                  (unsigned)((cols + REGNET_GEMM_BN - 1) / REGNET_GEMM_BN));
  require(grid.y <= 65535, fn, too_many);
  return grid;
}

// What every element-wise launcher checks first: the dtype, its pointers, and numel (< 2^31) a multiple of
// `period` >= C (C for per-channel kernels, C*H*W for per-sample ones). Returns false when there is no element.
inline bool check_ew(const char* fn, int dtype, std::initializer_list<ptr_t> ptrs, i64 numel, i64 C, i64 cs,
                     i64 period) {
  require_dtype(dtype, fn);
  for (ptr_t p : ptrs) require_ptr(p, fn, "an argument");
  require(C >= 1 && cs >= 1 && period >= C && numel % period == 0, fn,
          period == C ? "numel must be a multiple of C" : "inconsistent sizes");
  require_int32(numel, fn, "numel");
  return numel != 0;
}

inline unsigned int ew_blocks(i64 numel) {
  const i64 per_block = (i64)REGNET_EW_THREADS * REGNET_EW_PER_THREAD;
  i64 b = (numel + per_block - 1) / per_block;
  if (b > 1048576) b = 1048576;  // grid-stride beyond
  return (unsigned int)(b < 1 ? 1 : b);
}

}  // namespace regnet

// Instantiate `body` with scalar_t = float / __half / __nv_bfloat16 for dtype codes 0 / 1 / 2.
#define REGNET_DISPATCH(dtype, fn, ...)                                      \
  switch (dtype) {                                                           \
    case ::regnet::kFloat32: {                                               \
      using scalar_t = float;                                                \
      __VA_ARGS__;                                                           \
      break;                                                                 \
    }                                                                        \
    case ::regnet::kFloat16: {                                               \
      using scalar_t = __half;                                               \
      __VA_ARGS__;                                                           \
      break;                                                                 \
    }                                                                        \
    case ::regnet::kBFloat16: {                                              \
      using scalar_t = __nv_bfloat16;                                        \
      __VA_ARGS__;                                                           \
      break;                                                                 \
    }                                                                        \
    default:                                                                 \
      ::regnet::require_dtype(dtype, fn);                                    \
  }
#endif  // REGNET_LAUNCHER_TU
