// Host launchers of the conv backward: data gradient (implicit GEMM) and split-K weight gradient into an
// fp32 workspace, summed by a deterministic reduction.
#define REGNET_LAUNCHER_TU
#include "launchers.h"
#include "kernels/conv.cuh"

namespace regnet {

void conv_dgrad(int dtype, ptr_t dy, i64 sdn, i64 sdc, i64 sdh, i64 sdw, ptr_t w, i64 swo, i64 swi, i64 swh, i64 sww,
                ptr_t dx, i64 sxn, i64 sxc, i64 sxh, i64 sxw, i64 N, i64 C_in, i64 H, i64 W, i64 C_out, i64 HO, i64 WO,
                i64 KH, i64 KW, i64 stride, i64 pad, i64 groups, ptr_t stream) {
  const char* fn = "conv_dgrad";
  check_conv_args(fn, dtype, {{dy, "dy"}, {w, "weight"}, {dx, "dx"}}, N, C_in, H, W, C_out, HO, WO, KH, KW, stride,
                  pad, groups);
  const dim3 grid = gemm_grid(fn, N * H * W, C_in, "too many input channels");
  REGNET_DISPATCH(dtype, fn, {
    auto kern = conv_dgrad_kernel<scalar_t>;
    launch_kernel(fn, kern, grid, dim3(GEMM_THREADS), stream, dy, w, dx, N, C_in, H, W, C_out, HO, WO, KH, KW, stride,
                  pad, groups, sdn, sdc, sdh, sdw, swo, swi, swh, sww, sxn, sxc, sxh, sxw);
  });
}

i64 wgrad_channel_chunks(i64 C_in, i64 C_out, i64 groups) {
  require(groups >= 1 && C_in >= 1 && C_out >= 1 && C_in % groups == 0 && C_out % groups == 0,
          "wgrad_channel_chunks", "groups must divide C_in and C_out");
  const i64 cin_g = C_in / groups, cout_g = C_out / groups;
  i64 widest = 0;
  for (i64 c0 = 0; c0 < C_out; c0 += GEMM_BM) {
    const i64 c1 = (c0 + GEMM_BM < C_out ? c0 + GEMM_BM : C_out) - 1;
    const i64 span = (c1 / cout_g - c0 / cout_g + 1) * cin_g;
    if (span > widest) widest = span;
  }
  return (widest + GEMM_BN - 1) / GEMM_BN;
}

void conv_wgrad(int dtype, ptr_t x, i64 sxn, i64 sxc, i64 sxh, i64 sxw, ptr_t dy, i64 sdn, i64 sdc, i64 sdh, i64 sdw,
                ptr_t ws, i64 N, i64 C_in, i64 H, i64 W, i64 C_out, i64 HO, i64 WO, i64 KH, i64 KW, i64 stride, i64 pad,
                i64 groups, i64 splits, i64 m_per_split, ptr_t stream) {
  const char* fn = "conv_wgrad";
  check_conv_args(fn, dtype, {{x, "x"}, {dy, "dy"}, {ws, "workspace"}}, N, C_in, H, W, C_out, HO, WO, KH, KW, stride,
                  pad, groups);
  const i64 M = N * HO * WO;
  require(splits >= 1 && m_per_split >= 1 && splits * m_per_split >= M, fn,
          "splits x m_per_split must cover the N*HO*WO pixels");
  require_int32(splits * m_per_split, fn, "splits*m_per_split");
  const i64 chunks = wgrad_channel_chunks(C_in, C_out, groups);
  const dim3 grid((unsigned)((C_out + GEMM_BM - 1) / GEMM_BM), (unsigned)chunks, (unsigned)(KH * KW * splits));
  require(chunks <= 65535 && KH * KW * splits <= 65535, fn, "grid too large: use fewer splits");
  REGNET_DISPATCH(dtype, fn, {
    auto kern = conv_wgrad_kernel<scalar_t>;
    launch_kernel(fn, kern, grid, dim3(GEMM_THREADS), stream, x, dy, ws, N, C_in, H, W, C_out, HO, WO, KH, KW, stride,
                  pad, groups, sxn, sxc, sxh, sxw, sdn, sdc, sdh, sdw, m_per_split);
  });
}

void wgrad_reduce(int dtype, ptr_t ws, i64 splits, i64 C_out, i64 per_co, ptr_t scale, ptr_t out_f32, ptr_t out_t,
                  ptr_t stream) {
  const char* fn = "wgrad_reduce";
  require_dtype(dtype, fn);
  require_ptr(ws, fn, "workspace");
  require(out_f32 != 0 || out_t != 0, fn, "no output given");
  require(splits >= 1 && C_out >= 1 && per_co >= 1, fn, "sizes must be positive");
  const i64 K = C_out * per_co;
  REGNET_DISPATCH(dtype, fn, {
    auto kern = wgrad_reduce_kernel<scalar_t>;
    launch_kernel(fn, kern, dim3(ew_blocks(K)), dim3(REGNET_EW_THREADS), stream, ws, splits, K, per_co, scale, out_f32,
                  out_t);
  });
}

}  // namespace regnet
