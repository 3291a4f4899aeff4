// BatchNorm around the fused conv: statistics finalize, running-statistics update, normalize + act,
// and the backward passes (the activation's gradient fused with the two per-channel reductions; the conv-output
// gradient). The CUDA twin of regnet_kernels/kernels/triton/bn.py.
//
// Layout convention for the per-channel kernels: every tensor of one call is dense in the same
// memory format (the Python side makes it so), NCHW or channels_last. Storage index
// i = n*C*HW + c*cs + hw*ps with (cs, ps) = (HW, 1) for NCHW and (1, C) for channels_last, so the
// channel of element i is (i / cs) % C.
//
// BatchNorm is always applied as (v - mean) * scale + bias, never v * scale + (bias - mean * scale):
// the folded form cancels catastrophically when |mean| >> std.
#pragma once

#include "common.cuh"

namespace regnet {

// ---------------------------------------------------------------------------------------------------
// Finalize: combine the conv epilogue's per-tile (count, mean, M2) into per-channel statistics, in two
// passes over the partials. Pass 1: mean = K + sum(n_t * (mean_t - K)) / n with K the first tile's
// mean (the sum runs over small deviations). Pass 2: M2 = sum(M2_t + n_t * (mean_t - mean)^2) (the
// parallel-variance formula; no sum-of-squares cancellation). Tile t holds
// min(rows_per_tile, M - t * rows_per_tile) rows. Block (RED_CH, ROW_LANES): lane l takes tiles
// l, l + ROW_LANES, ...; lanes are combined in a fixed order (deterministic).
// Outputs (fp32, C): mean, invstd = 1/sqrt(var + eps) (biased var), var_unb (unbiased),
// scale = gamma * invstd, bias = beta (gamma / beta optional: 1 / 0).
// ---------------------------------------------------------------------------------------------------
__global__ void __launch_bounds__(RED_CH * ROW_LANES) bn_finalize_kernel(
    const float* __restrict__ part_mean, const float* __restrict__ part_m2, long long T, long long M_total,
    long long rows_per_tile, long long C, const float* __restrict__ gamma, const float* __restrict__ beta,
    float eps, float* __restrict__ mean, float* __restrict__ invstd, float* __restrict__ var_unb,
    float* __restrict__ scale, float* __restrict__ bias) {
  __shared__ float red[ROW_LANES][RED_CH + 1];
  __shared__ float mean_s[RED_CH];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const long long c = (long long)blockIdx.x * RED_CH + tx;
  const bool ok = c < C;
  const float k_ref = ok ? part_mean[c] : 0.0f;

  float s1 = 0.0f;
  if (ok) {
    for (long long t = ty; t < T; t += ROW_LANES) {
      const long long rows = M_total - t * rows_per_tile;
      const float cnt = (float)(rows < rows_per_tile ? rows : rows_per_tile);
      s1 += cnt * (part_mean[t * C + c] - k_ref);
    }
  }
  red[ty][tx] = s1;
  __syncthreads();
  if (ty == 0) {
    float s = 0.0f;
    for (int l = 0; l < ROW_LANES; ++l) s += red[l][tx];
    mean_s[tx] = k_ref + s / (float)M_total;
  }
  __syncthreads();
  const float mu = mean_s[tx];

  float m2 = 0.0f;
  if (ok) {
    for (long long t = ty; t < T; t += ROW_LANES) {
      const long long rows = M_total - t * rows_per_tile;
      const float cnt = (float)(rows < rows_per_tile ? rows : rows_per_tile);
      const float d = part_mean[t * C + c] - mu;
      m2 += part_m2[t * C + c] + cnt * d * d;
    }
  }
  red[ty][tx] = m2;  // the lane-0 readers of pass 1 finished before the barrier above
  __syncthreads();
  if (ty == 0 && ok) {
    float M2 = 0.0f;
    for (int l = 0; l < ROW_LANES; ++l) M2 += red[l][tx];
    const float n = (float)M_total;
    const float is = 1.0f / sqrtf(M2 / n + eps);
    mean[c] = mu;
    invstd[c] = is;
    var_unb[c] = M2 / (n - 1.0f);
    scale[c] = (gamma != nullptr ? gamma[c] : 1.0f) * is;
    bias[c] = beta != nullptr ? beta[c] : 0.0f;
  }
}

// Column sums of partial rows: out[c] = sum_t part[t, c] (fixed order). blockIdx.y selects the
// (part_a, out_a) or (part_b, out_b) pair. Block (RED_CH, ROW_LANES).
__global__ void __launch_bounds__(RED_CH * ROW_LANES) sum_rows_kernel(
    const float* __restrict__ part_a, float* __restrict__ out_a, const float* __restrict__ part_b,
    float* __restrict__ out_b, long long T, long long C) {
  __shared__ float red[ROW_LANES][RED_CH + 1];
  const float* part = blockIdx.y == 0 ? part_a : part_b;
  float* out = blockIdx.y == 0 ? out_a : out_b;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const long long c = (long long)blockIdx.x * RED_CH + tx;
  float s = 0.0f;
  if (c < C)
    for (long long t = ty; t < T; t += ROW_LANES) s += part[t * C + c];
  red[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && c < C) {
    float tot = 0.0f;
    for (int l = 0; l < ROW_LANES; ++l) tot += red[l][tx];
    out[c] = tot;
  }
}

// running = (1 - f) * running + f * batch with f = momentum, or 1 / num_batches_tracked (read on the
// device: no host sync; the counter was already incremented, as nn.BatchNorm2d does). fp32 buffers.
__global__ void bn_running_update_kernel(float* __restrict__ rmean, float* __restrict__ rvar,
                                         const long long* __restrict__ nbt, const float* __restrict__ mean,
                                         const float* __restrict__ var_unb, long long C, float momentum,
                                         long long cumulative) {
  const long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const float f = cumulative ? 1.0f / (float)nbt[0] : momentum;
  rmean[c] = (1.0f - f) * rmean[c] + f * mean[c];
  rvar[c] = (1.0f - f) * rvar[c] + f * var_unb[c];
}

// out = act((y - mean[c]) * scale[c] + bias[c]); y and out dense in the same format.
template <typename T>
__global__ void bn_act_kernel(const T* __restrict__ y, T* __restrict__ out, const float* __restrict__ mean,
                              const float* __restrict__ scale, const float* __restrict__ bias, long long numel,
                              long long C, long long cs, long long act) {
  const unsigned int n = (unsigned int)numel, nc = (unsigned int)C, ucs = (unsigned int)cs;
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const unsigned int c = (i / ucs) % nc;
    const float z = (to_f32(y[i]) - mean[c]) * scale[c] + bias[c];
    out[i] = from_f32<T>(apply_act(z, act));
  }
}

// One tile of RED_PIX pixels x RED_CH channels, reduced per channel to (sum a, sum b) in a fixed order.
// Pixel m of channel c lives at (m / HW) * C * HW + c * cs + (m % HW) * ps. `op(off, c, a, b)` adds the
// element's contributions. Channel-contiguous tensors (cs == 1): lanes run along channels, 8 pixel
// rows per pass, then a shared-memory combine; otherwise (pixels contiguous): a warp per channel,
// lanes along pixels, then a warp butterfly. Returns true in the thread that holds channel c's sums.
template <typename Op>
__device__ __forceinline__ bool reduce_tile(Op op, long long M, long long C, long long HW, long long cs, long long ps,
                                            long long p0, long long c0, int& c_out, float& a_out, float& b_out) {
  __shared__ float red_a[RED_THREADS / RED_CH][RED_CH + 1];
  __shared__ float red_b[RED_THREADS / RED_CH][RED_CH + 1];
  const int tid = threadIdx.x;
  const long long CHW = C * HW;
  if (cs == 1) {
    constexpr int ROWS = RED_THREADS / RED_CH;
    const int tx = tid % RED_CH, ty = tid / RED_CH;
    const long long c = c0 + tx;
    float a = 0.0f, b = 0.0f;
    if (c < C) {
      for (int i = ty; i < RED_PIX; i += ROWS) {
        const long long m = p0 + i;
        if (m >= M) break;
        const long long n = m / HW, hw = m - n * HW;
        op(n * CHW + c * cs + hw * ps, (int)c, a, b);
      }
    }
    red_a[ty][tx] = a;
    red_b[ty][tx] = b;
    __syncthreads();
    if (ty != 0 || c >= C) return false;
    a = 0.0f;
    b = 0.0f;
    for (int l = 0; l < ROWS; ++l) {
      a += red_a[l][tx];
      b += red_b[l][tx];
    }
    c_out = (int)c;
    a_out = a;
    b_out = b;
    return true;
  }
  constexpr int WARPS = RED_THREADS / 32;
  const int lane = tid % 32, warp = tid / 32;
  bool mine = false;
  for (int j = warp; j < RED_CH; j += WARPS) {  // same trip count for every lane of the warp
    const long long c = c0 + j;
    float a = 0.0f, b = 0.0f;
    if (c < C) {
      for (int i = lane; i < RED_PIX; i += 32) {
        const long long m = p0 + i;
        if (m >= M) break;
        const long long n = m / HW, hw = m - n * HW;
        op(n * CHW + c * cs + hw * ps, (int)c, a, b);
      }
    }
    a = warp_sum(a);
    b = warp_sum(b);
    if (lane == 0 && c < C) {
      // at most one channel per thread would be returned; stash the others through shared memory
      red_a[warp][j / WARPS] = a;
      red_b[warp][j / WARPS] = b;
      mine = true;
    }
  }
  __syncthreads();
  // thread t < RED_CH publishes channel c0 + t, computed by warp t % WARPS in its (t / WARPS)-th pass
  if (tid >= RED_CH || c0 + tid >= C) return false;
  (void)mine;
  c_out = (int)(c0 + tid);
  a_out = red_a[tid % WARPS][tid / WARPS];
  b_out = red_b[tid % WARPS][tid / WARPS];
  return true;
}

// Backward reductions, one tile per CTA -> one partial row per channel (grid (cdiv(M, RED_PIX),
// cdiv(C, RED_CH))). dz = dout * act'(z):
//   train: z = (y - mean) * scale + bias recomputed from the saved pre-BN output (src = y); partials of
//          dz and of dz * xhat with xhat = (y - mean) * invstd.
//   eval:  src is the saved output (ReLU's mask out > 0 is z > 0; an activation whose gradient needs z
//          itself must recompute it); partials of dz; dz written when dz_out is given.
template <typename T>
__global__ void __launch_bounds__(RED_THREADS) bn_bwd_reduce_kernel(
    const T* __restrict__ dout, const T* __restrict__ src, T* __restrict__ dz_out,
    const float* __restrict__ mean, const float* __restrict__ invstd, const float* __restrict__ scale,
    const float* __restrict__ bias, float* __restrict__ part_dz, float* __restrict__ part_dzx, long long M,
    long long C, long long HW, long long cs, long long ps, long long train, long long act) {
  auto op = [&](long long off, int c, float& a, float& b) {
    float g = to_f32(dout[off]);
    const float v = to_f32(src[off]);
    if (train) {
      const float mu = mean[c];
      g = act_grad(g, (v - mu) * scale[c] + bias[c], act);
      b += g * ((v - mu) * invstd[c]);
    } else {
      g = act_grad(g, v, act);
    }
    a += g;
    if (dz_out != nullptr) dz_out[off] = from_f32<T>(g);
  };
  int c;
  float a, b;
  if (reduce_tile(op, M, C, HW, cs, ps, (long long)blockIdx.x * RED_PIX, (long long)blockIdx.y * RED_CH, c, a, b)) {
    part_dz[(long long)blockIdx.x * C + c] = a;
    if (train) part_dzx[(long long)blockIdx.x * C + c] = b;
  }
}

// Gradient w.r.t. the pre-BN conv output (batch statistics), element-wise:
//   dy = scale * (dz - sum_dz / count - xhat * sum_dzx / count), dz = dout * act'(z)
template <typename T>
__global__ void bn_bwd_dy_kernel(const T* __restrict__ dout, const T* __restrict__ y, T* __restrict__ dy,
                                 const float* __restrict__ mean, const float* __restrict__ invstd,
                                 const float* __restrict__ scale, const float* __restrict__ bias,
                                 const float* __restrict__ sum_dz, const float* __restrict__ sum_dzx, float inv_count,
                                 long long numel, long long C, long long cs, long long act) {
  const unsigned int n = (unsigned int)numel, nc = (unsigned int)C, ucs = (unsigned int)cs;
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const unsigned int c = (i / ucs) % nc;
    float g = to_f32(dout[i]);
    const float v = to_f32(y[i]);
    const float mu = mean[c], s = scale[c];
    g = act_grad(g, (v - mu) * s + bias[c], act);
    const float xhat = (v - mu) * invstd[c];
    dy[i] = from_f32<T>(s * (g - sum_dz[c] * inv_count - xhat * (sum_dzx[c] * inv_count)));
  }
}

}  // namespace regnet
