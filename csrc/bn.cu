// Host launchers of the BatchNorm kernels: statistics finalize, partial-row sums, running-statistics
// update, normalize + act, and the backward reduction / conv-output-gradient passes.
#define REGNET_LAUNCHER_TU
#include "launchers.h"
#include "kernels/bn.cuh"

namespace regnet {

void bn_finalize(ptr_t part_mean, ptr_t part_m2, i64 T, i64 M, i64 rows_per_tile, i64 C, ptr_t gamma, ptr_t beta,
                 double eps, ptr_t mean, ptr_t invstd, ptr_t var_unb, ptr_t scale, ptr_t bias, ptr_t stream) {
  const char* fn = "bn_finalize";
  require_ptr(part_mean, fn, "part_mean");
  require_ptr(part_m2, fn, "part_m2");
  for (ptr_t p : {mean, invstd, var_unb, scale, bias}) require_ptr(p, fn, "an output");
  require(C >= 1 && M >= 2 && rows_per_tile >= 1, fn, "need C >= 1 and more than one value per channel");
  require(T == (M + rows_per_tile - 1) / rows_per_tile, fn, "T must be cdiv(M, rows_per_tile)");
  auto kern = bn_finalize_kernel;
  launch_kernel(fn, kern, dim3((unsigned)((C + RED_CH - 1) / RED_CH)), dim3(RED_CH, ROW_LANES), stream,
                part_mean, part_m2, T, M, rows_per_tile, C, gamma, beta, eps, mean, invstd, var_unb, scale, bias);
}

void sum_rows(ptr_t part_a, ptr_t out_a, ptr_t part_b, ptr_t out_b, i64 T, i64 C, ptr_t stream) {
  const char* fn = "sum_rows";
  require_ptr(part_a, fn, "part_a");
  require_ptr(out_a, fn, "out_a");
  require((part_b == 0) == (out_b == 0), fn, "part_b and out_b are given together");
  require(T >= 1 && C >= 1, fn, "sizes must be positive");
  const dim3 grid((unsigned)((C + RED_CH - 1) / RED_CH), part_b != 0 ? 2u : 1u);
  auto kern = sum_rows_kernel;
  launch_kernel(fn, kern, grid, dim3(RED_CH, ROW_LANES), stream, part_a, out_a, part_b, out_b, T, C);
}

void bn_running_update(ptr_t running_mean, ptr_t running_var, ptr_t num_batches_tracked, ptr_t mean, ptr_t var_unb,
                       i64 C, double momentum, bool cumulative, ptr_t stream) {
  const char* fn = "bn_running_update";
  require_ptr(running_mean, fn, "running_mean");
  require_ptr(running_var, fn, "running_var");
  require_ptr(mean, fn, "mean");
  require_ptr(var_unb, fn, "var_unbiased");
  require(!cumulative || num_batches_tracked != 0, fn, "the cumulative average needs num_batches_tracked");
  require(C >= 1, fn, "C must be positive");
  const int threads = 256;
  auto kern = bn_running_update_kernel;
  launch_kernel(fn, kern, dim3((unsigned)((C + threads - 1) / threads)), dim3(threads), stream,
                running_mean, running_var, num_batches_tracked, mean, var_unb, C, momentum, cumulative);
}

void bn_act(int dtype, ptr_t y, ptr_t out, ptr_t mean, ptr_t scale, ptr_t bias, i64 numel, i64 C, i64 cs, int act,
            ptr_t stream) {
  const char* fn = "bn_act";
  require_act(act, fn);
  if (!check_ew(fn, dtype, {y, out, mean, scale, bias}, numel, C, cs, C)) return;
  REGNET_DISPATCH(dtype, fn, {
    auto kern = bn_act_kernel<scalar_t>;
    launch_kernel(fn, kern, dim3(ew_blocks(numel)), dim3(REGNET_EW_THREADS), stream, y, out, mean, scale, bias, numel,
                  C, cs, act);
  });
}

void bn_bwd_reduce(int dtype, ptr_t dout, ptr_t src, ptr_t dz, ptr_t mean, ptr_t invstd, ptr_t scale, ptr_t bias,
                   ptr_t part_dz, ptr_t part_dzx, i64 M, i64 C, i64 HW, i64 cs, i64 ps, bool train, int act,
                   ptr_t stream) {
  const char* fn = "bn_bwd_reduce";
  require_dtype(dtype, fn);
  require_act(act, fn);
  require_ptr(dout, fn, "grad_out");
  require_ptr(src, fn, "src");
  require_ptr(part_dz, fn, "part_dz");
  if (train)
    for (ptr_t p : {mean, invstd, scale, bias, part_dzx}) require_ptr(p, fn, "a training-mode argument");
  check_layout(fn, C, HW, cs, ps);
  require(M >= 1 && M % HW == 0, fn, "M must be a positive multiple of H*W");
  require_int32(M, fn, "M");
  const dim3 grid((unsigned)((M + RED_PIX - 1) / RED_PIX), (unsigned)((C + RED_CH - 1) / RED_CH));
  require(grid.y <= 65535, fn, "too many channels");
  REGNET_DISPATCH(dtype, fn, {
    auto kern = bn_bwd_reduce_kernel<scalar_t>;
    launch_kernel(fn, kern, grid, dim3(RED_THREADS), stream, dout, src, dz, mean, invstd, scale, bias, part_dz,
                  part_dzx, M, C, HW, cs, ps, train, act);
  });
}

void bn_bwd_dy(int dtype, ptr_t dout, ptr_t y, ptr_t dy, ptr_t mean, ptr_t invstd, ptr_t scale, ptr_t bias,
               ptr_t sum_dz, ptr_t sum_dzx, double inv_count, i64 numel, i64 C, i64 cs, int act, ptr_t stream) {
  const char* fn = "bn_bwd_dy";
  require_act(act, fn);
  if (!check_ew(fn, dtype, {dout, y, dy, mean, invstd, scale, bias, sum_dz, sum_dzx}, numel, C, cs, C)) return;
  REGNET_DISPATCH(dtype, fn, {
    auto kern = bn_bwd_dy_kernel<scalar_t>;
    launch_kernel(fn, kern, dim3(ew_blocks(numel)), dim3(REGNET_EW_THREADS), stream, dout, y, dy, mean, invstd, scale,
                  bias, sum_dz, sum_dzx, inv_count, numel, C, cs, act);
  });
}

}  // namespace regnet
