// Host launchers of the squeeze-excitation kernels.
#define REGNET_LAUNCHER_TU
#include "launchers.h"
#include "kernels/se.cuh"

namespace regnet {

void se_reduce(int dtype, ptr_t a, ptr_t b, ptr_t out, i64 N, i64 C, i64 HW, i64 cs, i64 ps, double mul, ptr_t stream) {
  const char* fn = "se_reduce";
  require_dtype(dtype, fn);
  require_ptr(a, fn, "a");
  require_ptr(out, fn, "out");
  require(N >= 1 && N <= 65535 && C >= 1 && HW >= 1, fn, "need 1 <= N <= 65535, C >= 1, H*W >= 1");
  check_layout(fn, C, HW, cs, ps);
  require_int32(N * C * HW, fn, "numel");
  const dim3 grid((unsigned)((C + RED_CH - 1) / RED_CH), (unsigned)N);
  REGNET_DISPATCH(dtype, fn, {
    auto kern = se_reduce_kernel<scalar_t>;
    launch_kernel(fn, kern, grid, dim3(RED_THREADS), stream, a, b, out, C, HW, cs, ps, mul);
  });
}

void se_fc_fwd(ptr_t pooled, ptr_t w1, ptr_t b1, ptr_t w2, ptr_t b2, ptr_t s1, ptr_t gate, i64 N, i64 C, i64 S,
               ptr_t stream) {
  const char* fn = "se_fc_fwd";
  for (ptr_t p : {pooled, w1, w2, s1, gate}) require_ptr(p, fn, "an argument");
  require(N >= 1 && C >= 1 && S >= 1, fn, "sizes must be positive");
  auto kern = se_fc_fwd_kernel;
  launch_kernel(fn, kern, dim3((unsigned)((N + SE_NB - 1) / SE_NB)), dim3(SE_THREADS), stream, pooled, w1,
                b1, w2, b2, s1, gate, N, C, S);
}

void se_fc_bwd(ptr_t pooled, ptr_t gate, ptr_t dgate, ptr_t w1, ptr_t b1, ptr_t w2, ptr_t s1, ptr_t ds2, ptr_t ds1,
               ptr_t dpooled, i64 N, i64 C, i64 S, ptr_t stream) {
  const char* fn = "se_fc_bwd";
  for (ptr_t p : {pooled, gate, dgate, w1, w2, s1, ds2, ds1, dpooled}) require_ptr(p, fn, "an argument");
  require(N >= 1 && C >= 1 && S >= 1, fn, "sizes must be positive");
  auto kern = se_fc_bwd_kernel;
  launch_kernel(fn, kern, dim3((unsigned)((N + SE_NB - 1) / SE_NB)), dim3(SE_THREADS), stream, pooled, gate,
                dgate, w1, b1, w2, s1, ds2, ds1, dpooled, N, C, S);
}

void se_outer(ptr_t A, ptr_t B, ptr_t out, i64 N, i64 I, i64 J, int act_b, ptr_t stream) {
  const char* fn = "se_outer";
  require_act(act_b, fn);
  require_ptr(A, fn, "A");
  require_ptr(out, fn, "out");
  require(N >= 1 && I >= 1 && J >= 1, fn, "sizes must be positive");
  require(B != 0 || J == 1, fn, "without B the output is a column sum (J = 1)");
  auto kern = se_outer_kernel;
  launch_kernel(fn, kern, dim3(ew_blocks(I * J)), dim3(REGNET_EW_THREADS), stream, A, B, out, N, I, J,
                act_b);
}

void se_scale(int dtype, ptr_t x, ptr_t gate, ptr_t out, i64 numel, i64 C, i64 cs, i64 CHW, ptr_t stream) {
  const char* fn = "se_scale";
  if (!check_ew(fn, dtype, {x, gate, out}, numel, C, cs, CHW)) return;
  REGNET_DISPATCH(dtype, fn, {
    auto kern = se_scale_kernel<scalar_t>;
    launch_kernel(fn, kern, dim3(ew_blocks(numel)), dim3(REGNET_EW_THREADS), stream, x, gate, out, numel, C, cs, CHW);
  });
}

void se_dx(int dtype, ptr_t dout, ptr_t gate, ptr_t dpooled, ptr_t dx, i64 numel, i64 C, i64 cs, i64 CHW,
           double inv_hw, ptr_t stream) {
  const char* fn = "se_dx";
  if (!check_ew(fn, dtype, {dout, gate, dpooled, dx}, numel, C, cs, CHW)) return;
  REGNET_DISPATCH(dtype, fn, {
    auto kern = se_dx_kernel<scalar_t>;
    launch_kernel(fn, kern, dim3(ew_blocks(numel)), dim3(REGNET_EW_THREADS), stream, dout, gate, dpooled, dx, numel, C,
                  cs, CHW, inv_hw);
  });
}

}  // namespace regnet
