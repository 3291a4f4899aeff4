// Grouped 2-D convolution as implicit GEMM: forward (with the BatchNorm statistics / eval-BatchNorm
// epilogue), data gradient, and split-K weight gradient. The CUDA twin of
// regnet_kernels/kernels/triton/conv.py; same algorithm, same numerics contract.
//
// Every tensor is addressed through its own (n, c, h, w) strides ("NHWC logic, any layout"), so NCHW,
// channels_last and strided views are read in place. Small groups are packed block-diagonally: a tile
// of BN output channels spans groups g_lo..g_hi, its reduction runs over the input channels of exactly
// those groups, and the weight tile is zero where the input channel's group differs from the output
// channel's (group width 8 with BN = 64 is eight groups in one tile instead of eight padded ones).
// Those zeros must never meet a NaN or Inf (0 * NaN = NaN would reach another group's outputs, which
// eager's grouped conv never computes): see "Non-finite inputs in a multi-group tile" below.
//
// Tile anatomy (one CTA, GEMM_THREADS threads): per-row tables in shared memory (pixel -> offsets),
// per tap a table of input offsets (-1 = zero padding / past the end), then for each BK slice of the
// reduction: gather A and B into shared memory, barrier, multiply-accumulate, barrier.
//   fp16 / bf16: WMMA 16x16x16 on tensor cores, fp32 accumulators (4 warps, 32x32 each).
//   fp32: FMA units, IEEE fp32 (no TF32): each thread a 4 x 8 micro-tile.
// The accumulator tile then goes through shared memory (fp32) for a coalesced epilogue.
#pragma once

#include "common.cuh"

#if !defined(REGNET_EMULATE)
#include <mma.h>
#endif

namespace regnet {

constexpr int GEMM_BM = REGNET_GEMM_BM;
constexpr int GEMM_BN = REGNET_GEMM_BN;
constexpr int GEMM_BK = REGNET_GEMM_BK;
constexpr int GEMM_THREADS = REGNET_GEMM_THREADS;
static_assert(GEMM_THREADS == 128, "the warp layouts below assume 4 warps");
static_assert(GEMM_BM == 64 && GEMM_BN == 64 && GEMM_BK % 16 == 0, "the warp layouts below assume 64x64 tiles");
static_assert(GEMM_THREADS == 2 * GEMM_BN, "the statistics epilogue uses two threads per column");

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

// The groups g_lo .. g_hi spanned by a tile of `width` columns from c0 (of n_cols columns, col_per_group per
// group), and the reduction range k_start .. k_end over exactly those groups (red_per_group channels each).
struct GroupSpan {
  int g_lo, g_hi, k_start, k_end;
};
__device__ __forceinline__ GroupSpan group_span(int c0, int width, int n_cols, int col_per_group, int red_per_group) {
  GroupSpan t;
  t.g_lo = c0 / col_per_group;
  t.g_hi = (imin(c0 + width, n_cols) - 1) / col_per_group;
  t.k_start = t.g_lo * red_per_group;
  t.k_end = (t.g_hi + 1) * red_per_group;
  return t;
}

// Shared-memory layout of one GEMM tile. A is [BM][LDA], B is [BK][LDB] (both row-major, operand
// type), the fp32 accumulator tile C is [BM][LDC] and reuses the same bytes after the main loop.
// Tensor-core leading dimensions are multiples of 8 elements (16 bytes, as WMMA requires); the fp32
// paddings avoid bank conflicts in the FMA loop.
template <typename T>
struct GemmSmem {
  static constexpr bool kTensorCore = !is_same<T, float>::value;
  static constexpr int LDA = GEMM_BK + (kTensorCore ? 8 : 1);
  static constexpr int LDB = GEMM_BN + (kTensorCore ? 8 : 4);
  static constexpr int LDC = GEMM_BN + 4;
  static constexpr int A_BYTES = GEMM_BM * LDA * (int)sizeof(T);
  static constexpr int B_BYTES = GEMM_BK * LDB * (int)sizeof(T);
  static constexpr int C_BYTES = GEMM_BM * LDC * 4;
  static constexpr int BYTES = (A_BYTES + B_BYTES > C_BYTES) ? A_BYTES + B_BYTES : C_BYTES;
  static_assert(A_BYTES % 32 == 0, "B must start 32-byte aligned (WMMA)");
};

// ---------------------------------------------------------------------------------------------------
// Tile accumulators: tensor cores (fp16 / bf16) and FMA (fp32)
// ---------------------------------------------------------------------------------------------------
template <typename T, bool TC = GemmSmem<T>::kTensorCore>
struct TileAcc;

template <typename T>
struct TileAcc<T, true> {
  using L = GemmSmem<T>;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> c[2][2];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(c[i][j], 0.0f);
  }

  // C[32x32 quadrant of this warp] += A[rows, :BK] @ B[:BK, cols]
  __device__ __forceinline__ void mma(const T* As, const T* Bs) {
    const int warp = threadIdx.x / 32;
    const int wm = warp >> 1, wn = warp & 1;
#pragma unroll
    for (int kk = 0; kk < GEMM_BK; kk += 16) {
      nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, T, nvcuda::wmma::row_major> a[2];
      nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, T, nvcuda::wmma::row_major> b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) nvcuda::wmma::load_matrix_sync(a[i], As + (wm * 32 + i * 16) * L::LDA + kk, L::LDA);
#pragma unroll
      for (int j = 0; j < 2; ++j) nvcuda::wmma::load_matrix_sync(b[j], Bs + kk * L::LDB + wn * 32 + j * 16, L::LDB);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) nvcuda::wmma::mma_sync(c[i][j], a[i], b[j], c[i][j]);
    }
  }

  __device__ __forceinline__ void store(float* Cs) {
    const int warp = threadIdx.x / 32;
    const int wm = warp >> 1, wn = warp & 1;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        nvcuda::wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * L::LDC + wn * 32 + j * 16, c[i][j], L::LDC,
                                        nvcuda::wmma::mem_row_major);
  }
};

template <typename T>
struct TileAcc<T, false> {
  using L = GemmSmem<T>;
  // thread (ty, tx) owns rows ty + 16 i and columns tx + 8 j: strided so that a warp reads 4 rows of A
  // and 8 columns of B per step (broadcasts, no bank conflicts)
  float c[4][8];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) c[i][j] = 0.0f;
  }

  __device__ __forceinline__ void mma(const float* As, const float* Bs) {
    const int tx = threadIdx.x % 8, ty = threadIdx.x / 8;
#pragma unroll 4
    for (int k = 0; k < GEMM_BK; ++k) {
      float a[4], b[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[(ty + 16 * i) * L::LDA + k];
#pragma unroll
      for (int j = 0; j < 8; ++j) b[j] = Bs[k * L::LDB + tx + 8 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) c[i][j] = fmaf(a[i], b[j], c[i][j]);
    }
  }

  __device__ __forceinline__ void store(float* Cs) {
    const int tx = threadIdx.x % 8, ty = threadIdx.x / 8;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) Cs[(ty + 16 * i) * L::LDC + tx + 8 * j] = c[i][j];
  }
};

// Element e of this thread in an R x K tile, in one of two orders: K fastest when the gathered
// tensor is contiguous along K (coalesced), else R fastest.
template <int R, int K>
__device__ __forceinline__ void tile_coord(int e, bool k_fast, int& r, int& k) {
  const int idx = (int)threadIdx.x + e * GEMM_THREADS;
  if (k_fast) {
    r = idx / K;
    k = idx % K;
  } else {
    r = idx % R;
    k = idx / R;
  }
}

// Gather one BM x BK slice of the A operand (rows = pixels, columns = channels k0 .. k0 + BK) from a
// tensor whose pixel offsets for this tap are in tap_off (-1 = zero padding / past the end); channels at
// or past k_end read as zero. CHECK: also report whether a gathered value is NaN or Inf (only asked for
// in tiles that span several groups; two instructions per element).
__device__ __forceinline__ bool non_finite(float v) { return !(fabsf(v) <= 3.402823466e+38f); }

template <typename T, bool CHECK>
__device__ __forceinline__ bool gather_a(T* As, const T* __restrict__ src, const long long* tap_off, int k0,
                                         int k_end, long long sc, bool k_fast) {
  using L = GemmSmem<T>;
  bool bad = false;
#pragma unroll 4
  for (int e = 0; e < GEMM_BM * GEMM_BK / GEMM_THREADS; ++e) {
    int r, k;
    tile_coord<GEMM_BM, GEMM_BK>(e, k_fast, r, k);
    const int ch = k0 + k;
    const long long off = tap_off[r];
    T v = from_f32<T>(0.0f);
    if (off >= 0 && ch < k_end) {
      v = src[off + ch * sc];
      if (CHECK) bad |= non_finite(to_f32(v));
    }
    As[r * L::LDA + k] = v;
  }
  return bad;
}

// ---------------------------------------------------------------------------------------------------
// Non-finite inputs in a multi-group tile (forward and data gradient)
// ---------------------------------------------------------------------------------------------------
// A tile whose columns span several groups multiplies every A entry by the other groups' zero weights.
// So, only in such tiles, the A gather reports NaN/Inf (gather_a<T, true>), the barrier after the
// gathers becomes __syncthreads_or (same cost), and a slice that holds one takes this slow path:
//   1. each non-finite A[r, k] is multiplied by B[k, c] for the columns c of k's own group only, and the
//      products (NaN, +Inf, -Inf: exactly what eager's sum would see) are kept as 2-bit codes per (r, c),
//      merged by OR (+Inf 1 | -Inf 2 = NaN 3, NaN absorbs);
//   2. the non-finite A entries are zeroed in shared memory, so the tile multiply (WMMA or FMA) stays
//      finite and every other group's outputs are exact;
//   3. the epilogue adds the recorded non-finite sums to the accumulator tile (add_non_finite).
// A NaN/Inf in the weights needs nothing: B is zero off the diagonal, so it only meets its own column.
// Codes live in shared memory (1 KB); thread t owns column t % BN and rows (t / BN) * BM/2 .. + BM/2.
// A tile within one group (every dense conv) never checks, never takes the slow path.
constexpr int NF_ROWS = GEMM_BM / 2;
static_assert(NF_ROWS == 32, "two 32-bit words of 2-bit codes per thread");

template <typename T>
__device__ void take_non_finite(T* As, const T* Bs, int k_lo, int k_hi, unsigned (*codes)[2], bool first) {
  using L = GemmSmem<T>;
  const int tid = threadIdx.x, c = tid % GEMM_BN, r0 = (tid / GEMM_BN) * NF_ROWS;
  for (int h = 0; h < 2; ++h) {  // rows r0 + 16 h .. + 16: one word of codes
    unsigned word = first ? 0u : codes[tid][h];
    for (int i = 0; i < 16; ++i) {
      unsigned code = 0;
      for (int k = k_lo; k < k_hi; ++k) {  // this thread's column's own group, within the slice
        const float a = to_f32(As[(r0 + 16 * h + i) * L::LDA + k]);
        if (!non_finite(a)) continue;
        const float p = a * to_f32(Bs[k * L::LDB + c]);
        code |= (p != p) ? 3u : (p > 0.0f ? 1u : 2u);
      }
      word |= code << (2 * i);
    }
    codes[tid][h] = word;
  }
  __syncthreads();  // every thread has read A before it is cleared
  for (int e = tid; e < GEMM_BM * GEMM_BK; e += GEMM_THREADS) {
    T& v = As[(e / GEMM_BK) * L::LDA + e % GEMM_BK];
    if (non_finite(to_f32(v))) v = from_f32<T>(0.0f);
  }
  __syncthreads();
}

// Cs[r][c] += the recorded non-finite sum of (r, c), where there is one (adding nothing keeps -0.0).
__device__ __forceinline__ void add_non_finite(float* Cs, const unsigned (*codes)[2], int ldc) {
  const int tid = threadIdx.x, c = tid % GEMM_BN, r0 = (tid / GEMM_BN) * NF_ROWS;
  const float big = 3.0e38f;
  const float inf = big * big;  // +Inf (the product rounds up; no Inf literal in NVRTC without headers)
  for (int h = 0; h < 2; ++h) {
    const unsigned word = codes[tid][h];
    for (int i = 0; i < 16; ++i) {
      const unsigned code = (word >> (2 * i)) & 3u;
      if (code != 0) Cs[(r0 + 16 * h + i) * ldc + c] += code == 1 ? inf : (code == 2 ? -inf : inf - inf);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// The main-loop step and the accumulator hand-off shared by the forward and data-gradient kernels
// ---------------------------------------------------------------------------------------------------
// One BK slice k0 .. k0 + BK of the reduction: gather A (rows through tap_off, reduction indices past k_end
// zero; NaN/Inf reported in a multi-group tile), fill B with load_b(k, c) (the block-diagonal weight tile),
// take a multi-group tile's non-finite products (group_k(c): first reduction index of column c's group, or
// -1 past the last column; group_width: the group's reduction length), then C += A @ B and a barrier.
template <typename T, typename LoadB, typename GroupK>
__device__ __forceinline__ void gemm_slice(TileAcc<T>& acc, T* As, T* Bs, const T* __restrict__ a_src,
                                           const long long* tap_off, int k0, int k_end, long long a_sk, bool a_kfast,
                                           bool multi, LoadB load_b, GroupK group_k, int group_width,
                                           unsigned (*nf_codes)[2], bool& nf_hit) {
  using L = GemmSmem<T>;
  const bool bad = multi ? gather_a<T, true>(As, a_src, tap_off, k0, k_end, a_sk, a_kfast)
                         : gather_a<T, false>(As, a_src, tap_off, k0, k_end, a_sk, a_kfast);
#pragma unroll 4
  for (int e = 0; e < GEMM_BK * GEMM_BN / GEMM_THREADS; ++e) {
    int k, c;
    tile_coord<GEMM_BK, GEMM_BN>(e, true, k, c);
    Bs[k * L::LDB + c] = load_b(k, c);
  }
  if (__syncthreads_or(bad)) {  // only ever true in a multi-group tile
    const int first = group_k((int)threadIdx.x % GEMM_BN);
    const int k_lo = first < 0 ? 0 : imax(first - k0, 0);
    const int k_hi = first < 0 ? 0 : imin(first + group_width - k0, GEMM_BK);
    take_non_finite(As, Bs, k_lo, k_hi, nf_codes, !nf_hit);
    nf_hit = true;
  }
  acc.mma(As, Bs);
  __syncthreads();
}

// After the main loop: the accumulators into the shared fp32 tile Cs (which reuses A and B), plus the
// non-finite sums when a slice took that path (nf_hit is block-uniform); ends with a barrier.
template <typename T>
__device__ __forceinline__ void acc_to_smem(TileAcc<T>& acc, float* Cs, bool nf_hit, const unsigned (*nf_codes)[2]) {
  acc.store(Cs);
  __syncthreads();
  if (nf_hit) {
    add_non_finite(Cs, nf_codes, GemmSmem<T>::LDC);
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------------------------
// Forward: y[n, co, ho, wo] = sum_{kh, kw, ci in group(co)} x[n, ci, ho*S-P+kh, wo*S-P+kw] * w[co, ci_l, kh, kw]
// GEMM rows = output pixels (n, ho, wo), columns = output channels.
// Epilogue (runtime flags): eval BatchNorm act((acc - mean) * scale + bias) when post_mean is given;
// per-tile shifted BatchNorm partials (tile mean and sum of squared deviations, of the values as
// stored) when part_mean is given. Grid: (cdiv(M, BM), cdiv(C_out, BN)).
// ---------------------------------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(GEMM_THREADS) conv_fwd_kernel(
    const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
    float* __restrict__ part_mean, float* __restrict__ part_m2,
    const float* __restrict__ post_mean, const float* __restrict__ post_scale, const float* __restrict__ post_bias,
    long long N, long long C_in, long long H, long long W, long long C_out, long long HO, long long WO,
    long long KH, long long KW, long long stride, long long pad, long long groups,
    long long sxn, long long sxc, long long sxh, long long sxw,
    long long swo, long long swi, long long swh, long long sww,
    long long syn, long long syc, long long syh, long long syw,
    long long act) {
  using L = GemmSmem<T>;
  __shared__ __align__(128) unsigned char smem[L::BYTES];
  __shared__ long long row_x[GEMM_BM];    // n * sxn, or -1 past the last pixel
  __shared__ long long row_y[GEMM_BM];    // output offset of the pixel
  __shared__ int row_h[GEMM_BM];          // ho * S - P
  __shared__ int row_w[GEMM_BM];          // wo * S - P
  __shared__ long long tap_off[GEMM_BM];  // this tap: offset of x[n, 0, hi, wi], or -1 (padding)
  __shared__ int col_ci0[GEMM_BN];        // first input channel of the column's group, -1 past C_out
  __shared__ long long col_w[GEMM_BN];    // co * swo
  __shared__ float red[2][GEMM_BN];
  __shared__ unsigned nf_codes[GEMM_THREADS][2];  // non-finite products (multi-group tiles, rare path)

  T* As = reinterpret_cast<T*>(smem);
  T* Bs = reinterpret_cast<T*>(smem + L::A_BYTES);
  float* Cs = reinterpret_cast<float*>(smem);

  const int tid = threadIdx.x;
  const int M = (int)(N * HO * WO);
  const int m0 = (int)blockIdx.x * GEMM_BM;
  const int n0 = (int)blockIdx.y * GEMM_BN;
  const int cin_g = (int)(C_in / groups), cout_g = (int)(C_out / groups);
  const GroupSpan span = group_span(n0, GEMM_BN, (int)C_out, cout_g, cin_g);  // reduction: input channels

  if (tid < GEMM_BM) {
    const int m = m0 + tid;
    if (m < M) {
      const int wo = m % (int)WO;
      const int t = m / (int)WO;
      const int ho = t % (int)HO;
      const int n = t / (int)HO;
      row_x[tid] = n * sxn;
      row_y[tid] = n * syn + ho * syh + wo * syw;
      row_h[tid] = ho * (int)stride - (int)pad;
      row_w[tid] = wo * (int)stride - (int)pad;
    } else {
      row_x[tid] = -1;
      row_y[tid] = 0;
      row_h[tid] = 0;
      row_w[tid] = 0;
    }
  }
  if (tid < GEMM_BN) {
    const int co = n0 + tid;
    col_ci0[tid] = co < C_out ? (co / cout_g) * cin_g : -1;
    col_w[tid] = co * swo;
  }

  TileAcc<T> acc;
  acc.zero();
  const bool a_kfast = (sxc == 1);
  const bool multi = span.g_hi > span.g_lo;  // block-diagonal tile: non-finite inputs need care (see above)
  bool nf_hit = false;             // block-uniform: some slice took the non-finite path
  const int taps = (int)(KH * KW);
  for (int tap = 0; tap < taps; ++tap) {
    const int kh = tap / (int)KW, kw = tap % (int)KW;
    // the previous tap's gathers finished before its last barrier, so tap_off may be rewritten
    if (tid < GEMM_BM) {
      long long off = -1;
      if (row_x[tid] >= 0) {
        const int hi = row_h[tid] + kh, wi = row_w[tid] + kw;
        if (hi >= 0 && hi < H && wi >= 0 && wi < W) off = row_x[tid] + hi * sxh + wi * sxw;
      }
      tap_off[tid] = off;
    }
    __syncthreads();
    const long long w_tap = kh * swh + kw * sww;
    for (int k0 = span.k_start; k0 < span.k_end; k0 += GEMM_BK) {
      auto load_b = [&](int k, int c) {  // weight of (input channel k0 + k, output column c), 0 off its group
        const int ci0 = col_ci0[c];
        const int ci_l = k0 + k - ci0;
        T v = from_f32<T>(0.0f);
        if (ci0 >= 0 && ci_l >= 0 && ci_l < cin_g) v = w[col_w[c] + ci_l * swi + w_tap];
        return v;
      };
      auto group_k = [&](int c) { return col_ci0[c]; };
      gemm_slice(acc, As, Bs, x, tap_off, k0, span.k_end, sxc, a_kfast, multi, load_b, group_k, cin_g, nf_codes,
                 nf_hit);
    }
  }

  // ---- epilogue: accumulators -> shared fp32 tile -> (eval BN, act) -> y, coalesced along y's
  // contiguous dimension
  acc_to_smem(acc, Cs, nf_hit, nf_codes);
  const bool affine = post_mean != nullptr;
  const bool y_cfast = (syc == 1);
  for (int e = 0; e < GEMM_BM * GEMM_BN / GEMM_THREADS; ++e) {
    int r, c;
    tile_coord<GEMM_BM, GEMM_BN>(e, y_cfast, r, c);
    const int co = n0 + c;
    if (row_x[r] < 0 || co >= C_out) continue;
    float v = Cs[r * L::LDC + c];
    if (affine) v = (v - post_mean[co]) * post_scale[co] + post_bias[co];
    v = apply_act(v, act);
    const T t = from_f32<T>(v);
    y[row_y[r] + co * syc] = t;
    Cs[r * L::LDC + c] = to_f32(t);  // statistics of the values as stored (what eager BN reads back)
  }
  if (part_mean == nullptr) return;  // uniform across the block

  // ---- per-tile BatchNorm partials: mean and M2 about the tile's first row (row 0 is valid in every
  // tile), two threads per column, combined in a fixed order
  __syncthreads();
  const int cnt = imin(GEMM_BM, M - m0);
  const int c = tid % GEMM_BN, half = tid / GEMM_BN;
  const int r_lo = half * (GEMM_BM / 2), r_hi = imin(r_lo + GEMM_BM / 2, cnt);
  const float first = Cs[c];
  float s = 0.0f;
  for (int r = r_lo; r < r_hi; ++r) s += Cs[r * L::LDC + c] - first;
  red[half][c] = s;
  __syncthreads();
  const float dm = (red[0][c] + red[1][c]) / (float)cnt;
  float q = 0.0f;
  for (int r = r_lo; r < r_hi; ++r) {
    const float d = (Cs[r * L::LDC + c] - first) - dm;
    q += d * d;
  }
  __syncthreads();
  red[half][c] = q;
  __syncthreads();
  if (half == 0 && n0 + c < C_out) {
    const long long o = (long long)blockIdx.x * C_out + n0 + c;
    part_mean[o] = first + dm;
    part_m2[o] = red[0][c] + red[1][c];
  }
}

// ---------------------------------------------------------------------------------------------------
// Data gradient: dx[n, ci, h, w] = sum_{kh, kw, co in group(ci)} dy[n, co, ho, wo] * w[co, ci_l, kh, kw]
// with h = ho*S - P + kh. GEMM rows = input pixels (n, h, w), columns = input channels, reduction over
// (tap, output channels of the spanned groups). Grid: (cdiv(N*H*W, BM), cdiv(C_in, BN)).
// ---------------------------------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(GEMM_THREADS) conv_dgrad_kernel(
    const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx,
    long long N, long long C_in, long long H, long long W, long long C_out, long long HO, long long WO,
    long long KH, long long KW, long long stride, long long pad, long long groups,
    long long sdn, long long sdc, long long sdh, long long sdw,
    long long swo, long long swi, long long swh, long long sww,
    long long sxn, long long sxc, long long sxh, long long sxw) {
  using L = GemmSmem<T>;
  __shared__ __align__(128) unsigned char smem[L::BYTES];
  __shared__ long long row_d[GEMM_BM];    // n * sdn, or -1 past the last pixel
  __shared__ long long row_x[GEMM_BM];    // dx offset of the pixel
  __shared__ int row_h[GEMM_BM];          // h + P
  __shared__ int row_w[GEMM_BM];          // w + P
  __shared__ long long tap_off[GEMM_BM];  // this tap: offset of dy[n, 0, ho, wo], or -1
  __shared__ int col_g[GEMM_BN];          // group of the column's input channel, -1 past C_in
  __shared__ long long col_w[GEMM_BN];    // ci_l * swi
  __shared__ unsigned nf_codes[GEMM_THREADS][2];  // non-finite products (multi-group tiles, rare path)

  T* As = reinterpret_cast<T*>(smem);
  T* Bs = reinterpret_cast<T*>(smem + L::A_BYTES);
  float* Cs = reinterpret_cast<float*>(smem);

  const int tid = threadIdx.x;
  const int M = (int)(N * H * W);
  const int m0 = (int)blockIdx.x * GEMM_BM;
  const int n0 = (int)blockIdx.y * GEMM_BN;
  const int cin_g = (int)(C_in / groups), cout_g = (int)(C_out / groups);
  const GroupSpan span = group_span(n0, GEMM_BN, (int)C_in, cin_g, cout_g);  // reduction: output channels
  const int S = (int)stride;
  // (this setup has conv_fwd_kernel's shape, not its logic: rows are input pixels, taps map back to outputs)

  if (tid < GEMM_BM) {
    const int m = m0 + tid;
    if (m < M) {
      const int wi = m % (int)W;
      const int t = m / (int)W;
      const int hi = t % (int)H;
      const int n = t / (int)H;
      row_d[tid] = n * sdn;
      row_x[tid] = n * sxn + hi * sxh + wi * sxw;
      row_h[tid] = hi + (int)pad;
      row_w[tid] = wi + (int)pad;
    } else {
      row_d[tid] = -1;
      row_x[tid] = 0;
      row_h[tid] = 0;
      row_w[tid] = 0;
    }
  }
  if (tid < GEMM_BN) {
    const int ci = n0 + tid;
    col_g[tid] = ci < C_in ? ci / cin_g : -1;
    col_w[tid] = (long long)(ci % cin_g) * swi;
  }

  TileAcc<T> acc;
  acc.zero();
  const bool a_kfast = (sdc == 1);
  const bool multi = span.g_hi > span.g_lo;  // block-diagonal tile: non-finite gradients need care
  bool nf_hit = false;
  const int taps = (int)(KH * KW);
  for (int tap = 0; tap < taps; ++tap) {
    const int kh = tap / (int)KW, kw = tap % (int)KW;
    if (tid < GEMM_BM) {
      long long off = -1;
      if (row_d[tid] >= 0) {
        const int th = row_h[tid] - kh, tw = row_w[tid] - kw;
        if (th >= 0 && tw >= 0 && th % S == 0 && tw % S == 0) {
          const int ho = th / S, wo = tw / S;
          if (ho < HO && wo < WO) off = row_d[tid] + ho * sdh + wo * sdw;
        }
      }
      tap_off[tid] = off;
    }
    __syncthreads();
    const long long w_tap = kh * swh + kw * sww;
    for (int k0 = span.k_start; k0 < span.k_end; k0 += GEMM_BK) {
      auto load_b = [&](int k, int c) {  // weight of (output channel k0 + k, input column c)
        const int co = k0 + k;
        T v = from_f32<T>(0.0f);
        // block-diagonal: only output channels of the input channel's own group contribute
        if (col_g[c] >= 0 && co < span.k_end && co / cout_g == col_g[c]) v = w[co * swo + col_w[c] + w_tap];
        return v;
      };
      auto group_k = [&](int c) { return col_g[c] < 0 ? -1 : col_g[c] * cout_g; };
      gemm_slice(acc, As, Bs, dy, tap_off, k0, span.k_end, sdc, a_kfast, multi, load_b, group_k, cout_g, nf_codes,
                 nf_hit);
    }
  }

  acc_to_smem(acc, Cs, nf_hit, nf_codes);
  const bool x_cfast = (sxc == 1);
  for (int e = 0; e < GEMM_BM * GEMM_BN / GEMM_THREADS; ++e) {
    int r, c;
    tile_coord<GEMM_BM, GEMM_BN>(e, x_cfast, r, c);
    const int ci = n0 + c;
    if (row_d[r] < 0 || ci >= C_in) continue;
    dx[row_x[r] + ci * sxc] = from_f32<T>(Cs[r * L::LDC + c]);
  }
}

// ---------------------------------------------------------------------------------------------------
// Weight gradient, split-K: ws[split, co, ci_l, kh, kw] = sum over the split's pixels (n, ho, wo) of
// dy[n, co, ho, wo] * x[n, ci, ho*S-P+kh, wo*S-P+kw]. GEMM rows = output channels, columns = input
// channels of the spanned groups (BN-wide chunk blockIdx.y), reduction over pixels. Each workspace
// entry is written by exactly one CTA; wgrad_reduce_kernel sums the splits in a fixed order
// (deterministic, no atomics). Every stored entry is the plain dot product of one output channel's dy
// with one input channel's x of the same group (off-diagonal entries are computed, never stored), so a
// NaN/Inf reaches only its own group's weight gradients, as in eager: no non-finite path needed here.
// Grid: (cdiv(C_out, BM), chunks, KH*KW*splits).
// ---------------------------------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(GEMM_THREADS) conv_wgrad_kernel(
    const T* __restrict__ x, const T* __restrict__ dy, float* __restrict__ ws,
    long long N, long long C_in, long long H, long long W, long long C_out, long long HO, long long WO,
    long long KH, long long KW, long long stride, long long pad, long long groups,
    long long sxn, long long sxc, long long sxh, long long sxw,
    long long sdn, long long sdc, long long sdh, long long sdw,
    long long m_per_split) {
  using L = GemmSmem<T>;
  __shared__ __align__(128) unsigned char smem[L::BYTES];
  __shared__ long long pix_d[GEMM_BK];  // dy offset of the slice's pixel, or -1 past the split
  __shared__ long long pix_x[GEMM_BK];  // x offset of its input pixel for this tap, or -1 (padding)

  T* As = reinterpret_cast<T*>(smem);
  T* Bs = reinterpret_cast<T*>(smem + L::A_BYTES);
  float* Cs = reinterpret_cast<float*>(smem);

  const int tid = threadIdx.x;
  const int taps = (int)(KH * KW);
  const int tap = (int)blockIdx.z % taps;
  const int split = (int)blockIdx.z / taps;
  const int kh = tap / (int)KW, kw = tap % (int)KW;
  const int cin_g = (int)(C_in / groups), cout_g = (int)(C_out / groups);
  const int co0 = (int)blockIdx.x * GEMM_BM;
  const GroupSpan span = group_span(co0, GEMM_BM, (int)C_out, cout_g, cin_g);  // columns: input channels
  const int ci_base = span.k_start + (int)blockIdx.y * GEMM_BN;
  const int ci_end = span.k_end;
  if (ci_base >= ci_end) return;  // this tile spans fewer channel chunks (uniform across the block)

  const int M = (int)(N * HO * WO);
  const int m_lo = split * (int)m_per_split;
  const int m_hi = imin(m_lo + (int)m_per_split, M);

  TileAcc<T> acc;
  acc.zero();
  const bool a_rfast = (sdc == 1);  // A = dy^T [co][pixel]: channels contiguous -> rows fastest
  const bool b_cfast = (sxc == 1);  // B = x [pixel][ci]
  for (int p0 = m_lo; p0 < m_hi; p0 += GEMM_BK) {
    // the previous slice's gathers (the only readers of pix_*) finished before its barrier
    if (tid < GEMM_BK) {
      const int m = p0 + tid;
      long long od = -1, ox = -1;
      if (m < m_hi) {
        const int wo = m % (int)WO;
        const int t = m / (int)WO;
        const int ho = t % (int)HO;
        const int n = t / (int)HO;
        od = n * sdn + ho * sdh + wo * sdw;
        const int hi = ho * (int)stride - (int)pad + kh, wi = wo * (int)stride - (int)pad + kw;
        if (hi >= 0 && hi < H && wi >= 0 && wi < W) ox = n * sxn + hi * sxh + wi * sxw;
      }
      pix_d[tid] = od;
      pix_x[tid] = ox;
    }
    __syncthreads();
#pragma unroll 4
    for (int e = 0; e < GEMM_BM * GEMM_BK / GEMM_THREADS; ++e) {
      int r, k;
      tile_coord<GEMM_BM, GEMM_BK>(e, !a_rfast, r, k);
      const int co = co0 + r;
      const long long od = pix_d[k];
      T v = from_f32<T>(0.0f);
      if (od >= 0 && co < C_out) v = dy[od + co * sdc];
      As[r * L::LDA + k] = v;
    }
#pragma unroll 4
    for (int e = 0; e < GEMM_BK * GEMM_BN / GEMM_THREADS; ++e) {
      int k, c;
      tile_coord<GEMM_BK, GEMM_BN>(e, b_cfast, k, c);
      const int ci = ci_base + c;
      const long long ox = pix_x[k];
      T v = from_f32<T>(0.0f);
      if (ox >= 0 && ci < ci_end) v = x[ox + ci * sxc];
      Bs[k * L::LDB + c] = v;
    }
    __syncthreads();
    acc.mma(As, Bs);
  }
  __syncthreads();  // every warp is done reading A/B before C overwrites them

  acc.store(Cs);
  __syncthreads();
  for (int e = 0; e < GEMM_BM * GEMM_BN / GEMM_THREADS; ++e) {
    int r, c;
    tile_coord<GEMM_BM, GEMM_BN>(e, true, r, c);
    const int co = co0 + r, ci = ci_base + c;
    if (co >= C_out || ci >= ci_end) continue;
    const int ci_l = ci - (co / cout_g) * cin_g;
    if (ci_l < 0 || ci_l >= cin_g) continue;  // off the block diagonal
    ws[(((long long)split * C_out + co) * cin_g + ci_l) * taps + tap] = Cs[r * L::LDC + c];
  }
}

// dw[k] = sum_s ws[s, k] in split order (deterministic); optionally also (dw * scale[co]) in the weight
// dtype. Either output may be null. Grid-stride over K = C_out * per_co elements.
template <typename T>
__global__ void wgrad_reduce_kernel(const float* __restrict__ ws, long long splits, long long K, long long per_co,
                                    const float* __restrict__ scale, float* __restrict__ out_f32,
                                    T* __restrict__ out_t) {
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < K; i += (long long)gridDim.x * blockDim.x) {
    float s = 0.0f;
    for (long long sp = 0; sp < splits; ++sp) s += ws[sp * K + i];
    if (out_f32 != nullptr) out_f32[i] = s;
    if (out_t != nullptr) out_t[i] = from_f32<T>(scale != nullptr ? s * scale[i / per_co] : s);
  }
}

}  // namespace regnet
