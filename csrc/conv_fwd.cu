// Host launcher of the fused forward conv (implicit GEMM + BatchNorm statistics / eval-BN epilogue).
#define REGNET_LAUNCHER_TU
#include "launchers.h"
#include "kernels/conv.cuh"

namespace regnet {

void check_conv_shape(const char* fn, i64 N, i64 C_in, i64 H, i64 W, i64 C_out, i64 HO, i64 WO, i64 KH, i64 KW,
                      i64 stride, i64 pad, i64 groups) {
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
              ptr_t post_scale, ptr_t post_bias, bool relu, ptr_t stream) {
  const char* fn = "conv_fwd";
  require_dtype(dtype, fn);
  require_ptr(x, fn, "x");
  require_ptr(w, fn, "weight");
  require_ptr(y, fn, "y");
  check_conv_shape(fn, N, C_in, H, W, C_out, HO, WO, KH, KW, stride, pad, groups);
  require((part_mean == 0) == (part_m2 == 0), fn, "part_mean and part_m2 are given together");
  require((post_mean == 0) == (post_scale == 0) && (post_scale == 0) == (post_bias == 0), fn,
          "post_mean, post_scale and post_bias are given together");
  const i64 M = N * HO * WO;
  const dim3 grid((unsigned)((M + GEMM_BM - 1) / GEMM_BM), (unsigned)((C_out + GEMM_BN - 1) / GEMM_BN));
  require(grid.y <= 65535, fn, "too many output channels");
  REGNET_DISPATCH(dtype, fn, {
    auto kern = conv_fwd_kernel<scalar_t>;
    REGNET_LAUNCH(kern, grid, dim3(GEMM_THREADS), 0, as_stream(stream), reinterpret_cast<const scalar_t*>(x),
                  reinterpret_cast<const scalar_t*>(w), reinterpret_cast<scalar_t*>(y),
                  reinterpret_cast<float*>(part_mean), reinterpret_cast<float*>(part_m2),
                  reinterpret_cast<const float*>(post_mean), reinterpret_cast<const float*>(post_scale),
                  reinterpret_cast<const float*>(post_bias), N, C_in, H, W, C_out, HO, WO, KH, KW, stride, pad, groups,
                  sxn, sxc, sxh, sxw, swo, swi, swh, sww, syn, syc, syh, syw, (long long)relu);
  });
  check_launch(fn);
}

}  // namespace regnet
