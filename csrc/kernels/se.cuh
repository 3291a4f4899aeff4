// Squeeze-excitation: global average pool, both FCs (+ ReLU, sigmoid) in one kernel, the channel scale,
// and their backward pieces. The CUDA twin of regnet_kernels/kernels/triton/se.py.
//
// x is (N, C, H, W), dense NCHW or channels_last (storage index n*C*HW + c*cs + hw*ps);
// pooled, gate, dgate, dpooled are (N, C) fp32; w1 (S, C), w2 (C, S) fp32 with S the squeeze width.
// All sums run in a fixed order (deterministic), fp32 throughout.
#pragma once

#include "common.cuh"

namespace regnet {

constexpr int SE_NB = REGNET_SE_NB;
constexpr int SE_THREADS = REGNET_SE_THREADS;

// out[n, c] = mul * sum_hw a[n, c, hw] * (b ? b[n, c, hw] : 1): the pool (b = null, mul = 1/HW) and the
// gate gradient (a = dout, b = x, mul = 1). Grid (cdiv(C, RED_CH), N); one CTA per (sample, channel
// block) loops over all pixels, so no partials and no atomics.
template <typename T>
__global__ void __launch_bounds__(RED_THREADS) se_reduce_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                                              float* __restrict__ out, long long C, long long HW,
                                                              long long cs, long long ps, float mul) {
  __shared__ float red[RED_THREADS / RED_CH][RED_CH + 1];
  const long long n = blockIdx.y;
  const long long base = n * C * HW;
  const long long c0 = (long long)blockIdx.x * RED_CH;
  const int tid = threadIdx.x;
  if (cs == 1) {  // channels contiguous: lanes along channels
    constexpr int ROWS = RED_THREADS / RED_CH;
    const int tx = tid % RED_CH, ty = tid / RED_CH;
    const long long c = c0 + tx;
    float acc = 0.0f;
    if (c < C) {
      for (long long hw = ty; hw < HW; hw += ROWS) {
        const long long off = base + c * cs + hw * ps;
        float v = to_f32(a[off]);
        if (b != nullptr) v *= to_f32(b[off]);
        acc += v;
      }
    }
    red[ty][tx] = acc;
    __syncthreads();
    if (ty == 0 && c < C) {
      float s = 0.0f;
      for (int l = 0; l < ROWS; ++l) s += red[l][tx];
      out[n * C + c] = s * mul;
    }
    return;
  }
  // pixels contiguous: a warp per channel, lanes along pixels
  constexpr int WARPS = RED_THREADS / 32;
  const int lane = tid % 32, warp = tid / 32;
  for (int j = warp; j < RED_CH; j += WARPS) {
    const long long c = c0 + j;
    float acc = 0.0f;
    if (c < C) {
      for (long long hw = lane; hw < HW; hw += 32) {
        const long long off = base + c * cs + hw * ps;
        float v = to_f32(a[off]);
        if (b != nullptr) v *= to_f32(b[off]);
        acc += v;
      }
    }
    acc = warp_sum(acc);
    if (lane == 0 && c < C) out[n * C + c] = acc * mul;
  }
}

// The small GEMMs of the SE FCs, for the SE_NB samples n0 .. n0 + nb_cnt of one CTA (the weights are read
// once per CTA); acc[nb] = sum_r w(o, r) * in(nb, r) per output o, then out(o, acc) stores the nb_cnt sums.
// Warp form: a warp per output, lanes along the reduction (w row-major [o][r], coalesced), butterfly sums.
template <typename In, typename Out>
__device__ __forceinline__ void se_warp_gemv(const float* __restrict__ w, long long n_out, long long n_red, int nb_cnt,
                                             In in, Out out) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  for (long long o = warp; o < n_out; o += nwarps) {
    float acc[SE_NB];
#pragma unroll
    for (int nb = 0; nb < SE_NB; ++nb) acc[nb] = 0.0f;
    for (long long r = lane; r < n_red; r += 32) {
      const float wv = w[o * n_red + r];
#pragma unroll
      for (int nb = 0; nb < SE_NB; ++nb)
        if (nb < nb_cnt) acc[nb] += wv * in(nb, r);
    }
#pragma unroll
    for (int nb = 0; nb < SE_NB; ++nb) acc[nb] = warp_sum(acc[nb]);
    if (lane == 0) out(o, acc);
  }
}

// Thread form: a thread per output, a sequential reduction (w row-major [r][o]: columns read coalesced
// across threads).
template <typename In, typename Out>
__device__ __forceinline__ void se_thread_gemv(const float* __restrict__ w, long long n_out, long long n_red,
                                               int nb_cnt, In in, Out out) {
  for (long long o = threadIdx.x; o < n_out; o += blockDim.x) {
    float acc[SE_NB];
#pragma unroll
    for (int nb = 0; nb < SE_NB; ++nb) acc[nb] = 0.0f;
    for (long long r = 0; r < n_red; ++r) {
      const float wv = w[r * n_out + o];
#pragma unroll
      for (int nb = 0; nb < SE_NB; ++nb)
        if (nb < nb_cnt) acc[nb] += in(nb, r) * wv;
    }
    out(o, acc);
  }
}

// s1 = pooled @ w1^T + b1 into the fp32 scratch s1: the forward, and backward's recompute of it (bit for bit).
__device__ __forceinline__ void se_fc1(const float* __restrict__ pooled, const float* __restrict__ w1,
                                       const float* __restrict__ b1, float* s1, long long n0, int nb_cnt, long long C,
                                       long long S) {
  se_warp_gemv(
      w1, S, C, nb_cnt, [&](int nb, long long c) { return pooled[(n0 + nb) * C + c]; },
      [&](long long s, const float* acc) {
        const float bias = b1 != nullptr ? b1[s] : 0.0f;
#pragma unroll
        for (int nb = 0; nb < SE_NB; ++nb)
          if (nb < nb_cnt) s1[(n0 + nb) * S + s] = acc[nb] + bias;
      });
}

// Both FCs for SE_NB samples per CTA:
//   s1 = pooled @ w1^T + b1 (to the fp32 scratch s1, which backward recomputes the same way), barrier,
//   gate = sigmoid(relu(s1) @ w2^T + b2).
__global__ void __launch_bounds__(SE_THREADS) se_fc_fwd_kernel(const float* __restrict__ pooled,
                                                             const float* __restrict__ w1, const float* __restrict__ b1,
                                                             const float* __restrict__ w2, const float* __restrict__ b2,
                                                             float* s1, float* __restrict__ gate, long long N,
                                                             long long C, long long S) {
  const long long n0 = (long long)blockIdx.x * SE_NB;
  const int nb_cnt = (int)(N - n0 < SE_NB ? N - n0 : SE_NB);
  se_fc1(pooled, w1, b1, s1, n0, nb_cnt, C, S);
  __syncthreads();  // s1 of this CTA's samples is complete (global writes are visible within the block)
  se_warp_gemv(
      w2, C, S, nb_cnt, [&](int nb, long long s) { return apply_act(s1[(n0 + nb) * S + s], ACT_RELU); },
      [&](long long c, const float* acc) {
        const float bias = b2 != nullptr ? b2[c] : 0.0f;
#pragma unroll
        for (int nb = 0; nb < SE_NB; ++nb)
          if (nb < nb_cnt) gate[(n0 + nb) * C + c] = 1.0f / (1.0f + expf(-(acc[nb] + bias)));
      });
}

// FC backward for SE_NB samples per CTA:
//   ds2 = dgate * gate * (1 - gate); s1 recomputed; ds1 = (ds2 @ w2) * (s1 > 0); dpooled = ds1 @ w1.
// ds2 / s1 / ds1 go to fp32 scratch (the weight gradients need them: se_outer_kernel).
__global__ void __launch_bounds__(SE_THREADS) se_fc_bwd_kernel(
    const float* __restrict__ pooled, const float* __restrict__ gate, const float* __restrict__ dgate,
    const float* __restrict__ w1, const float* __restrict__ b1, const float* __restrict__ w2, float* s1, float* ds2,
    float* ds1, float* __restrict__ dpooled, long long N, long long C, long long S) {
  const long long n0 = (long long)blockIdx.x * SE_NB;
  const int nb_cnt = (int)(N - n0 < SE_NB ? N - n0 : SE_NB);
  for (long long c = threadIdx.x; c < C; c += blockDim.x) {
    for (int nb = 0; nb < nb_cnt; ++nb) {
      const long long o = (n0 + nb) * C + c;
      const float g = gate[o];
      ds2[o] = dgate[o] * g * (1.0f - g);
    }
  }
  se_fc1(pooled, w1, b1, s1, n0, nb_cnt, C, S);  // s1, exactly as the forward computed it
  __syncthreads();
  // ds1[n, s] = sum_c ds2[n, c] * w2[c, s]
  se_thread_gemv(
      w2, S, C, nb_cnt, [&](int nb, long long c) { return ds2[(n0 + nb) * C + c]; },
      [&](long long s, const float* acc) {
#pragma unroll
        for (int nb = 0; nb < SE_NB; ++nb) {  // constant indices: acc stays in registers
          if (nb < nb_cnt) {
            const long long o = (n0 + nb) * S + s;
            ds1[o] = act_grad(acc[nb], s1[o], ACT_RELU);
          }
        }
      });
  __syncthreads();
  // dpooled[n, c] = sum_s ds1[n, s] * w1[s, c]
  se_thread_gemv(
      w1, C, S, nb_cnt, [&](int nb, long long s) { return ds1[(n0 + nb) * S + s]; },
      [&](long long c, const float* acc) {
#pragma unroll
        for (int nb = 0; nb < SE_NB; ++nb)
          if (nb < nb_cnt) dpooled[(n0 + nb) * C + c] = acc[nb];
      });
}

// out[i, j] = sum_n A[n, i] * apply_act(B[n, j], act_b) in sample order, B = null means 1
// (then J = 1: column sums, the bias gradients). The SE weight gradients: dw1 = ds1^T @ pooled,
// dw2 = ds2^T @ relu(s1), db1 = sum ds1, db2 = sum ds2.
__global__ void se_outer_kernel(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ out,
                                long long N, long long I, long long J, long long act_b) {
  const long long total = I * J;
  for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (long long)gridDim.x * blockDim.x) {
    const long long i = idx / J, j = idx - i * J;
    float acc = 0.0f;
    for (long long n = 0; n < N; ++n) {
      const float bv = B != nullptr ? B[n * J + j] : 1.0f;
      acc += A[n * I + i] * apply_act(bv, act_b);
    }
    out[idx] = acc;
  }
}

// out = x * gate[n, c] (x and out dense in the same format)
template <typename T>
__global__ void se_scale_kernel(const T* __restrict__ x, const float* __restrict__ gate, T* __restrict__ out,
                                long long numel, long long C, long long cs, long long CHW) {
  const unsigned int total = (unsigned int)numel, nc = (unsigned int)C, ucs = (unsigned int)cs,
                     chw = (unsigned int)CHW;
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const unsigned int c = (i / ucs) % nc, n = i / chw;
    out[i] = from_f32<T>(to_f32(x[i]) * gate[n * nc + c]);
  }
}

// dx = dout * gate[n, c] + dpooled[n, c] / HW
template <typename T>
__global__ void se_dx_kernel(const T* __restrict__ dout, const float* __restrict__ gate,
                             const float* __restrict__ dpooled, T* __restrict__ dx, long long numel, long long C,
                             long long cs, long long CHW, float inv_hw) {
  const unsigned int total = (unsigned int)numel, nc = (unsigned int)C, ucs = (unsigned int)cs,
                     chw = (unsigned int)CHW;
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const unsigned int c = (i / ucs) % nc, n = i / chw;
    const unsigned int o = n * nc + c;
    dx[i] = from_f32<T>(to_f32(dout[i]) * gate[o] + dpooled[o] * inv_hw);
  }
}

}  // namespace regnet
