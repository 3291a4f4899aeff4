// Host launcher of the fused forward conv (implicit GEMM + BatchNorm statistics / eval-BN epilogue).
#define REGNET_LAUNCHER_TU
#include "launchers.h"
#include "kernels/conv.cuh"

namespace regnet {

void check_conv_args(const char* fn, int dtype, std::initializer_list<std::pair<ptr_t, const char*>> tensors, i64 N,
                     i64 C_in, i64 H, i64 W, i64 C_out, i64 HO, i64 WO, i64 KH, i64 KW, i64 stride, i64 pad,
                     i64 groups) {
  require_dtype(dtype, fn);
  for (const auto& t : tensors) require_ptr(t.first, fn, t.second);
  require(N >= 1 && C_in >= 1 && H >= 1 && W >= 1 && C_out >= 1 && KH >= 1 && KW >= 1, fn,
          "sizes must be positive (N, C_in, H, W, C_out, KH, KW)");
  require(stride >= 1 && pad >= 0, fn, "stride must be >= 1 and padding >= 0");
  require(groups >= 1 && C_in % groups == 0 && C_out % groups == 0, fn,
          "groups=" + std::to_string(groups) + " must divide C_in=" + std::to_string(C_in) +
              " and C_out=" + std::to_string(C_out));
  require(HO == (H + 2 * pad - KH) / stride + 1 && WO == (W + 2 * pad - KW) / stride + 1 && HO >= 1 && WO >= 1, fn,
          "output size (" + std::to_string(HO) + ", " + std::to_string(WO) + ") does not match the input, kernel, "
          "stride and padding");
  require_int32(N * HO * WO, fn, "N*HO*WO");
  require_int32(N * H * W, fn, "N*H*W");
  require_int32(C_in + 2 * (i64)REGNET_GEMM_BN, fn, "C_in");
  require_int32(C_out + 2 * (i64)REGNET_GEMM_BN, fn, "C_out");
  require_int32(H + 2 * pad + KH, fn, "H");
  require_int32(W + 2 * pad + KW, fn, "W");
}

void conv_fwd(int dtype, ptr_t x, i64 sxn, i64 sxc, i64 sxh, i64 sxw, ptr_t w, i64 swo, i64 swi, i64 swh, i64 sww,
              ptr_t y, i64 syn, i64 syc, i64 syh, i64 syw, i64 N, i64 C_in, i64 H, i64 W, i64 C_out, i64 HO, i64 WO,
              i64 KH, i64 KW, i64 stride, i64 pad, i64 groups, ptr_t part_mean, ptr_t part_m2, ptr_t post_mean,
              ptr_t post_scale, ptr_t post_bias, int act, ptr_t stream) {
  const char* fn = "conv_fwd";
  require_act(act, fn);
  check_conv_args(fn, dtype, {{x, "x"}, {w, "weight"}, {y, "y"}}, N, C_in, H, W, C_out, HO, WO, KH, KW, stride, pad,
                  groups);
  require((part_mean == 0) == (part_m2 == 0), fn, "part_mean and part_m2 are given together");
  require((post_mean == 0) == (post_scale == 0) && (post_scale == 0) == (post_bias == 0), fn,
          "post_mean, post_scale and post_bias are given together");
  const dim3 grid = gemm_grid(fn, N * HO * WO, C_out, "too many output channels");
  REGNET_DISPATCH(dtype, fn, {
    auto kern = conv_fwd_kernel<scalar_t>;
    launch_kernel(fn, kern, grid, dim3(GEMM_THREADS), stream, x, w, y, part_mean, part_m2, post_mean, post_scale,
                  post_bias, N, C_in, H, W, C_out, HO, WO, KH, KW, stride, pad, groups, sxn, sxc, sxh, sxw, swo, swi,
                  swh, sww, syn, syc, syh, syw, act);
  });
}

}  // namespace regnet
