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
  require((cs == HW && ps == 1) || (cs == 1 && ps == C), fn,
          "tensors must be dense NCHW (cs=H*W, ps=1) or channels_last (cs=1, ps=C)");
  require_int32(N * C * HW, fn, "numel");
  const dim3 grid((unsigned)((C + RED_CH - 1) / RED_CH), (unsigned)N);
  REGNET_DISPATCH(dtype, fn, {
    auto kern = se_reduce_kernel<scalar_t>;
    REGNET_LAUNCH(kern, grid, dim3(RED_THREADS), 0, as_stream(stream), reinterpret_cast<const scalar_t*>(a),
                  reinterpret_cast<const scalar_t*>(b), reinterpret_cast<float*>(out), C, HW, cs, ps, (float)mul);
  });
  check_launch(fn);
}

void se_fc_fwd(ptr_t pooled, ptr_t w1, ptr_t b1, ptr_t w2, ptr_t b2, ptr_t s1, ptr_t gate, i64 N, i64 C, i64 S,
               ptr_t stream) {
  const char* fn = "se_fc_fwd";
  for (ptr_t p : {pooled, w1, w2, s1, gate}) require_ptr(p, fn, "an argument");
  require(N >= 1 && C >= 1 && S >= 1, fn, "sizes must be positive");
  auto kern = se_fc_fwd_kernel;
  REGNET_LAUNCH(kern, dim3((unsigned)((N + SE_NB - 1) / SE_NB)), dim3(SE_THREADS), 0, as_stream(stream),
                reinterpret_cast<const float*>(pooled), reinterpret_cast<const float*>(w1),
                reinterpret_cast<const float*>(b1), reinterpret_cast<const float*>(w2),
                reinterpret_cast<const float*>(b2), reinterpret_cast<float*>(s1), reinterpret_cast<float*>(gate), N, C,
                S);
  check_launch(fn);
}

void se_fc_bwd(ptr_t pooled, ptr_t gate, ptr_t dgate, ptr_t w1, ptr_t b1, ptr_t w2, ptr_t s1, ptr_t ds2, ptr_t ds1,
               ptr_t dpooled, i64 N, i64 C, i64 S, ptr_t stream) {
  const char* fn = "se_fc_bwd";
  for (ptr_t p : {pooled, gate, dgate, w1, w2, s1, ds2, ds1, dpooled}) require_ptr(p, fn, "an argument");
  require(N >= 1 && C >= 1 && S >= 1, fn, "sizes must be positive");
  auto kern = se_fc_bwd_kernel;
  REGNET_LAUNCH(kern, dim3((unsigned)((N + SE_NB - 1) / SE_NB)), dim3(SE_THREADS), 0, as_stream(stream),
                reinterpret_cast<const float*>(pooled), reinterpret_cast<const float*>(gate),
                reinterpret_cast<const float*>(dgate), reinterpret_cast<const float*>(w1),
                reinterpret_cast<const float*>(b1), reinterpret_cast<const float*>(w2), reinterpret_cast<float*>(s1),
                reinterpret_cast<float*>(ds2), reinterpret_cast<float*>(ds1), reinterpret_cast<float*>(dpooled), N, C,
                S);
  check_launch(fn);
}

void se_outer(ptr_t A, ptr_t B, ptr_t out, i64 N, i64 I, i64 J, bool relu_b, ptr_t stream) {
  const char* fn = "se_outer";
  require_ptr(A, fn, "A");
  require_ptr(out, fn, "out");
  require(N >= 1 && I >= 1 && J >= 1, fn, "sizes must be positive");
  require(B != 0 || J == 1, fn, "without B the output is a column sum (J = 1)");
  auto kern = se_outer_kernel;
  REGNET_LAUNCH(kern, dim3(ew_blocks(I * J)), dim3(REGNET_EW_THREADS), 0, as_stream(stream),
                reinterpret_cast<const float*>(A), reinterpret_cast<const float*>(B), reinterpret_cast<float*>(out), N,
                I, J, (long long)relu_b);
  check_launch(fn);
}

void se_scale(int dtype, ptr_t x, ptr_t gate, ptr_t out, i64 numel, i64 C, i64 cs, i64 CHW, ptr_t stream) {
  const char* fn = "se_scale";
  require_dtype(dtype, fn);
  for (ptr_t p : {x, gate, out}) require_ptr(p, fn, "an argument");
  require(C >= 1 && cs >= 1 && CHW >= C && numel % CHW == 0, fn, "inconsistent sizes");
  require_int32(numel, fn, "numel");
  if (numel == 0) return;
  REGNET_DISPATCH(dtype, fn, {
    auto kern = se_scale_kernel<scalar_t>;
    REGNET_LAUNCH(kern, dim3(ew_blocks(numel)), dim3(REGNET_EW_THREADS), 0, as_stream(stream),
                  reinterpret_cast<const scalar_t*>(x), reinterpret_cast<const float*>(gate),
                  reinterpret_cast<scalar_t*>(out), numel, C, cs, CHW);
  });
  check_launch(fn);
}

void se_dx(int dtype, ptr_t dout, ptr_t gate, ptr_t dpooled, ptr_t dx, i64 numel, i64 C, i64 cs, i64 CHW,
           double inv_hw, ptr_t stream) {
  const char* fn = "se_dx";
  require_dtype(dtype, fn);
  for (ptr_t p : {dout, gate, dpooled, dx}) require_ptr(p, fn, "an argument");
  require(C >= 1 && cs >= 1 && CHW >= C && numel % CHW == 0, fn, "inconsistent sizes");
  require_int32(numel, fn, "numel");
  if (numel == 0) return;
  REGNET_DISPATCH(dtype, fn, {
    auto kern = se_dx_kernel<scalar_t>;
    REGNET_LAUNCH(kern, dim3(ew_blocks(numel)), dim3(REGNET_EW_THREADS), 0, as_stream(stream),
                  reinterpret_cast<const scalar_t*>(dout), reinterpret_cast<const float*>(gate),
                  reinterpret_cast<const float*>(dpooled), reinterpret_cast<scalar_t*>(dx), numel, C, cs, CHW,
                  (float)inv_hw);
  });
  check_launch(fn);
}

}  // namespace regnet
