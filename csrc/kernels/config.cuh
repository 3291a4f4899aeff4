// Launch-geometry constants shared by the kernels, the host launchers (csrc/*.cu) and the Python side
// (regnet_kernels/kernels/cuda/ext.py reads this file for the CuPy JIT path; the compiled extension reports
// the same values through _C.config()). Plain #defines with integer literals only: they are parsed.
#pragma once

// Implicit-GEMM conv tile: BM rows (pixels; output channels for wgrad) x BN columns (channels) x BK
// reduction slice, 4 warps. fp16/bf16 run the tile on tensor cores (WMMA 16x16x16, each warp a 32x32
// quadrant), fp32 on FMA units (each thread a 4x8 micro-tile).
#define REGNET_GEMM_BM 64
#define REGNET_GEMM_BN 64
#define REGNET_GEMM_BK 32
#define REGNET_GEMM_THREADS 128

// Per-channel reductions over pixels (BatchNorm backward): one block reduces RED_PIX pixels x
// RED_CH channels into one partial row; partial rows are summed by a second, fixed-order pass.
#define REGNET_RED_PIX 128
#define REGNET_RED_CH 32
#define REGNET_RED_THREADS 256

// Reductions over partial rows (BN finalize, partial sums): RED_CH channels x ROW_LANES lanes.
#define REGNET_ROW_LANES 32

// Element-wise kernels: threads per block and elements per thread (grid-stride beyond that).
#define REGNET_EW_THREADS 256
#define REGNET_EW_PER_THREAD 4

// Activation codes: the `act` argument of the kernels and launchers, applied by apply_act / act_grad
// (common.cuh, which names them in the Act enum). regnet_kernels/kernels/activation.py (Act) holds the
// same codes (tests/test_activation.py checks; the extension reports them through _C.config()). A new
// activation: a code here, its name in Act, a branch in apply_act and act_grad, and in require_act.
#define REGNET_ACT_NONE 0
#define REGNET_ACT_RELU 1

// Squeeze-excitation FC kernels: samples per block (weights are read once per block).
#define REGNET_SE_NB 4
#define REGNET_SE_THREADS 256
