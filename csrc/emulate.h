// Host emulation of the CUDA execution model, so that the real kernel sources (csrc/kernels/*.cuh) and
// host launchers (csrc/*.cu) run on CPU tensors in the CPU test suite. Built only with
// -DREGNET_EMULATE by a host C++20 compiler (tests/test_cuda_backend.py builds it); never part of the
// extension.
//
// What is emulated:
// - one CTA at a time; each CUDA thread is a user-level fiber (ucontext) on one OS thread, switched
//   only at barriers, so runs are deterministic and free of host data races; the order in which the
//   threads run between two barriers alternates (forward, reverse), so a shared-memory read that
//   lacks its barrier sees stale data in one of them;
// - __shared__ variables become function statics (one copy, shared by the CTA's fibers);
// - __syncthreads() is a CTA barrier and must be reached by every thread (a thread that exits while
//   others wait, or a barrier inside divergent code, is reported as a deadlock: stricter than HW);
// - warp shuffles are a warp barrier + exchange + warp barrier (every lane must participate);
//   __syncthreads_or likewise with CTA barriers;
// - WMMA fragments hold the whole 16x16 tile; lane 0 of the warp does the warp's work (fp32 sums of
//   exact products, like the tensor cores up to summation order); pointer alignment (256 bits) and
//   ldm (16-byte multiple) are checked as documented;
// - launch-configuration errors (block > 1024 threads, grid.y/z > 65535, too much shared memory)
//   surface through the emulated cudaGetLastError(), as on a device.
// Not emulated: memory-model races between CTAs, out-of-bounds accesses (use compute-sanitizer on a
// GPU), timing.
#pragma once

#if !defined(REGNET_EMULATE)
#error "csrc/emulate.h is only for -DREGNET_EMULATE host builds"
#endif

#include <cuda_bf16.h>  // host-usable __half / __nv_bfloat16 and their RNE conversions
#include <cuda_fp16.h>
#include <ucontext.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

// crt/host_defines.h (pulled in above) defines the CUDA qualifiers for host compilers: __global__,
// __device__ and __host__ expand to nothing, __forceinline__ and __align__ to GCC attributes.
#undef __shared__
#define __shared__ static
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

namespace regnet_emu {

enum class St { Runnable, WaitBlock, WaitWarp, Done };

struct Fiber {
  ucontext_t ctx;
  uint3 tid;
  St st;
};

constexpr std::size_t kStackBytes = 96 * 1024;

struct Launch {
  dim3 grid, block;
  uint3 block_idx;
  std::vector<Fiber> fibers;
  ucontext_t sched;
  int cur = -1;
  std::function<void()> body;
  std::vector<float> slots;  // warp-shuffle exchange, one per thread
  std::string error;         // first misuse seen by device code (reported after the block)
  unsigned round = 0;        // scheduling rounds: odd rounds run the threads in reverse order
};

inline Launch*& active() {
  static Launch* p = nullptr;
  return p;
}

inline Launch& cur_launch() {
  Launch* p = active();
  if (p == nullptr) {
    std::fprintf(stderr, "regnet_emu: device code called outside a kernel launch\n");
    std::abort();
  }
  return *p;
}

// fiber stacks, reused across launches
inline char* stack_for(int i) {
  static std::vector<std::unique_ptr<char[]>> pool;
  while ((int)pool.size() <= i) pool.emplace_back(new char[kStackBytes]);
  return pool[i].get();
}

inline void fiber_main() {
  Launch& l = cur_launch();
  l.body();
  l.fibers[l.cur].st = St::Done;
}  // returns to uc_link = the scheduler

inline void park(St st) {
  Launch& l = cur_launch();
  Fiber& f = l.fibers[l.cur];
  f.st = st;
  swapcontext(&f.ctx, &l.sched);
}

// Device code cannot throw through a fiber switch: record the first misuse, raise after the block.
inline void fail(const std::string& what) {
  Launch& l = cur_launch();
  if (l.error.empty()) l.error = what;
}

inline const uint3& thread_idx() {
  Launch& l = cur_launch();
  return l.fibers[l.cur].tid;
}

inline int lane_id() { return cur_launch().cur & 31; }

inline void run_block(Launch& l) {
  const int bx = (int)l.block.x, by = (int)l.block.y;
  const int n = (int)(l.block.x * l.block.y * l.block.z);
  for (int i = 0; i < n; ++i) {
    Fiber& f = l.fibers[i];
    f.tid = make_uint3((unsigned)(i % bx), (unsigned)((i / bx) % by), (unsigned)(i / (bx * by)));
    f.st = St::Runnable;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = stack_for(i);
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &l.sched;
    makecontext(&f.ctx, fiber_main, 0);
  }
  for (;;) {
    // Alternate the order in which the threads run between barriers, so that a read of shared
    // memory that lacks a barrier sees stale data in one of the orders (and the results differ).
    const bool reverse = (l.round++ & 1u) != 0;
    for (int j = 0; j < n; ++j) {
      const int i = reverse ? n - 1 - j : j;
      if (l.fibers[i].st == St::Runnable) {
        l.cur = i;
        swapcontext(&l.sched, &l.fibers[i].ctx);
      }
    }
    int done = 0, at_block = 0;
    for (int i = 0; i < n; ++i) {
      done += l.fibers[i].st == St::Done;
      at_block += l.fibers[i].st == St::WaitBlock;
    }
    if (done == n) {
      if (!l.error.empty())
        throw std::runtime_error("regnet_emu: in block (" + std::to_string(l.block_idx.x) + "," +
                                 std::to_string(l.block_idx.y) + "," + std::to_string(l.block_idx.z) + "): " + l.error);
      return;
    }
    bool released = false;
    for (int lo = 0; lo < n; lo += 32) {
      const int hi = lo + 32 < n ? lo + 32 : n;
      int at_warp = 0;
      for (int i = lo; i < hi; ++i) at_warp += l.fibers[i].st == St::WaitWarp;
      if (at_warp == hi - lo) {
        for (int i = lo; i < hi; ++i) l.fibers[i].st = St::Runnable;
        released = true;
      }
    }
    if (released) continue;
    if (at_block == n) {
      for (int i = 0; i < n; ++i) l.fibers[i].st = St::Runnable;
      continue;
    }
    throw std::runtime_error(
        "regnet_emu: deadlock in block (" + std::to_string(l.block_idx.x) + "," + std::to_string(l.block_idx.y) + "," +
        std::to_string(l.block_idx.z) + "): " + std::to_string(done) + " threads exited, " + std::to_string(at_block) +
        " wait at __syncthreads, the rest at a warp collective (a barrier not reached by every thread)");
  }
}

inline cudaError_t& last_error() {
  static cudaError_t e = cudaSuccess;
  return e;
}

inline cudaError_t get_last_error() {
  const cudaError_t e = last_error();
  last_error() = cudaSuccess;
  return e;
}

inline const char* error_name(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    default: return "cudaErrorUnknown";
  }
}

inline const char* error_string(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "unknown error";
  }
}

// kernel<<<grid, block, smem, stream>>>(args...)
template <typename... P, typename... A>
inline void launch(void (*kernel)(P...), dim3 grid, dim3 block, std::size_t smem, cudaStream_t, A&&... args) {
  const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u || smem > 48 * 1024) {
    last_error() = cudaErrorInvalidConfiguration;
    return;
  }
  std::tuple<P...> params(std::forward<A>(args)...);
  Launch l;
  l.grid = grid;
  l.block = block;
  l.fibers.resize((std::size_t)threads);
  l.slots.assign((std::size_t)threads, 0.0f);
  l.body = [&] { std::apply(kernel, params); };
  Launch* prev = active();
  active() = &l;
  try {
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          l.block_idx = make_uint3(x, y, z);
          run_block(l);
        }
  } catch (...) {
    active() = prev;
    throw;
  }
  active() = prev;
}

}  // namespace regnet_emu

#define threadIdx (::regnet_emu::thread_idx())
#define blockIdx (::regnet_emu::cur_launch().block_idx)
#define blockDim (::regnet_emu::cur_launch().block)
#define gridDim (::regnet_emu::cur_launch().grid)

inline void __syncthreads() { ::regnet_emu::park(::regnet_emu::St::WaitBlock); }

// Barrier + "is pred non-zero in any thread of the block" (the exchange goes through the shuffle slots,
// read between two barriers so that no thread overwrites its slot before every thread has read them all)
inline int __syncthreads_or(int pred) {
  auto& l = ::regnet_emu::cur_launch();
  l.slots[l.cur] = pred != 0 ? 1.0f : 0.0f;
  ::regnet_emu::park(::regnet_emu::St::WaitBlock);
  int any = 0;
  for (const float s : l.slots) any |= s != 0.0f;
  ::regnet_emu::park(::regnet_emu::St::WaitBlock);
  return any;
}

inline float __shfl_xor_sync(unsigned, float v, int lane_mask, int = 32) {
  auto& l = ::regnet_emu::cur_launch();
  const int t = l.cur;
  l.slots[t] = v;
  ::regnet_emu::park(::regnet_emu::St::WaitWarp);
  const float r = l.slots[(t & ~31) | ((t & 31) ^ lane_mask)];
  ::regnet_emu::park(::regnet_emu::St::WaitWarp);
  return r;
}

// ---- nvcuda::wmma, 16x16x16, row-major operands only (what csrc/kernels uses) ----
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "emulated WMMA supports 16x16x16 only");
  float x[M * N];  // the whole tile, held by lane 0 of the warp
};

inline float as_float(float v) { return v; }
inline float as_float(__half v) { return __half2float(v); }
inline float as_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// WMMA's documented requirements: a 256-bit aligned pointer and ldm a multiple of 16 bytes
template <typename T>
inline void check_wmma_ptr(const T* p, unsigned ldm, const char* fn) {
  if (reinterpret_cast<std::uintptr_t>(p) % 32 != 0)
    ::regnet_emu::fail(std::string(fn) + ": pointer is not 256-bit aligned");
  if ((ldm * sizeof(T)) % 16 != 0) ::regnet_emu::fail(std::string(fn) + ": ldm is not a multiple of 16 bytes");
}

template <typename Use, typename T>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, row_major>& f, const T* p, unsigned ldm) {
  if (::regnet_emu::lane_id() != 0) return;
  check_wmma_ptr(p, ldm, "load_matrix_sync");
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[r * 16 + c] = as_float(p[r * ldm + c]);
}

template <typename T>
inline void fill_fragment(fragment<accumulator, 16, 16, 16, T>& f, const T& v) {
  for (int i = 0; i < 256; ++i) f.x[i] = v;
}

template <typename TA, typename TB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, TA, row_major>& a,
                     const fragment<matrix_b, 16, 16, 16, TB, row_major>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  if (::regnet_emu::lane_id() != 0) return;
  float out[256];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float s = c.x[i * 16 + j];
      for (int k = 0; k < 16; ++k) s += a.x[i * 16 + k] * b.x[k * 16 + j];
      out[i * 16 + j] = s;
    }
  for (int i = 0; i < 256; ++i) d.x[i] = out[i];
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t layout) {
  if (::regnet_emu::lane_id() != 0) return;
  check_wmma_ptr(p, ldm, "store_matrix_sync");
  if (layout != mem_row_major) throw std::logic_error("regnet_emu: only mem_row_major stores are emulated");
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) p[r * ldm + c] = f.x[r * 16 + c];
}
}  // namespace wmma
}  // namespace nvcuda
