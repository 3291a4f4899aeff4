// pybind11 module regnet_kernels._C: the host launchers of csrc/*.cu plus build_info() and config().
// Torch-free: pointers and the stream come in as Python ints (tensor.data_ptr(),
// torch.cuda.current_stream().cuda_stream), sizes and strides as ints, so the module's ABI does not
// depend on the torch version. The Python side (regnet_kernels/ops/*/cuda.py) validates, allocates and
// registers the ops. The same file builds the CPU emulation module (-DREGNET_EMULATE, tests only).
#include <pybind11/pybind11.h>

#include <string>
#include <utility>

#include "kernels/config.cuh"
#include "launchers.h"

#ifndef REGNET_MODULE_NAME
#define REGNET_MODULE_NAME _C
#endif
#ifndef REGNET_CUDA_ARCHS
#define REGNET_CUDA_ARCHS ""
#endif
#ifndef REGNET_CUDA_PTX
#define REGNET_CUDA_PTX ""
#endif
#ifndef REGNET_CUDA_VERSION
#define REGNET_CUDA_VERSION "unknown"
#endif
#ifndef REGNET_COMPILER
#define REGNET_COMPILER "unknown"
#endif

namespace py = pybind11;

namespace {

py::list split_list(const std::string& s) {
  py::list out;
  std::string cur;
  for (char ch : s + ";") {
    if (ch == ';' || ch == ',' || ch == ' ') {
      if (!cur.empty()) out.append(cur);
      cur.clear();
    } else {
      cur += ch;
    }
  }
  return out;
}

py::dict build_info() {
  py::dict d;
  d["archs"] = split_list(REGNET_CUDA_ARCHS);  // SASS targets, e.g. ["sm_80", "sm_90"]
  d["ptx"] = split_list(REGNET_CUDA_PTX);      // embedded PTX, e.g. ["compute_90"]
  d["cuda_version"] = std::string(REGNET_CUDA_VERSION);
  d["compiler"] = std::string(REGNET_COMPILER);
#if defined(REGNET_EMULATE)
  d["emulated"] = true;
#else
  d["emulated"] = false;
#endif
  return d;
}

py::dict config() {
  // every #define REGNET_<NAME> <int> of config.cuh, as {NAME: int} (what ext.read_config parses)
#define REGNET_CONFIG_ENTRY(name) {#name, REGNET_##name}
  const std::pair<const char*, int> entries[] = {
      REGNET_CONFIG_ENTRY(GEMM_BM), REGNET_CONFIG_ENTRY(GEMM_BN), REGNET_CONFIG_ENTRY(GEMM_BK),
      REGNET_CONFIG_ENTRY(GEMM_THREADS), REGNET_CONFIG_ENTRY(RED_PIX), REGNET_CONFIG_ENTRY(RED_CH),
      REGNET_CONFIG_ENTRY(RED_THREADS), REGNET_CONFIG_ENTRY(ROW_LANES), REGNET_CONFIG_ENTRY(EW_THREADS),
      REGNET_CONFIG_ENTRY(EW_PER_THREAD), REGNET_CONFIG_ENTRY(ACT_NONE), REGNET_CONFIG_ENTRY(ACT_RELU),
      REGNET_CONFIG_ENTRY(SE_NB), REGNET_CONFIG_ENTRY(SE_THREADS)};
#undef REGNET_CONFIG_ENTRY
  py::dict d;
  for (const auto& e : entries) d[e.first] = e.second;
  return d;
}

}  // namespace

PYBIND11_MODULE(REGNET_MODULE_NAME, m) {
  m.doc() = "regnet_kernels CUDA launchers (torch-free; pointers, strides and the stream as ints)";
  m.def("build_info", &build_info, "Build facts: archs (SASS), ptx, cuda_version, compiler, emulated.");
  m.def("config", &config, "Tile and launch constants (csrc/kernels/config.cuh).");

  // One registration per launcher (a table of distinct functions, not repeated logic). Launches are
  // asynchronous and short: release the GIL around them.
  using rel = py::call_guard<py::gil_scoped_release>;
  m.def("conv_fwd", &regnet::conv_fwd, rel(), "Fused conv forward (see csrc/launchers.h).");
  m.def("conv_dgrad", &regnet::conv_dgrad, rel(), "Conv data gradient.");
  m.def("conv_wgrad", &regnet::conv_wgrad, rel(), "Conv weight gradient, split-K into an fp32 workspace.");
  m.def("wgrad_reduce", &regnet::wgrad_reduce, rel(), "Sum the split-K workspace (deterministic).");
  m.def("wgrad_channel_chunks", &regnet::wgrad_channel_chunks, "Input-channel chunks of the widest wgrad tile.");
  m.def("bn_finalize", &regnet::bn_finalize, rel(), "BatchNorm statistics from the conv's per-tile partials.");
  m.def("sum_rows", &regnet::sum_rows, rel(), "Column sums of partial rows (fixed order).");
  m.def("bn_running_update", &regnet::bn_running_update, rel(), "In-place running-statistics update.");
  m.def("bn_act", &regnet::bn_act, rel(), "act((y - mean) * scale + bias).");
  m.def("bn_bwd_reduce", &regnet::bn_bwd_reduce, rel(), "Activation gradient + BatchNorm backward partial sums.");
  m.def("bn_bwd_dy", &regnet::bn_bwd_dy, rel(), "Gradient of the pre-BN conv output.");
  m.def("se_reduce", &regnet::se_reduce, rel(), "Per-(sample, channel) spatial sum (pool / gate gradient).");
  m.def("se_fc_fwd", &regnet::se_fc_fwd, rel(), "SE fc1 + ReLU + fc2 + sigmoid.");
  m.def("se_fc_bwd", &regnet::se_fc_bwd, rel(), "SE FC backward (ds2, s1, ds1, dpooled).");
  m.def("se_outer", &regnet::se_outer, rel(), "out[i, j] = sum_n A[n, i] * act(B[n, j]).");
  m.def("se_scale", &regnet::se_scale, rel(), "out = x * gate[n, c].");
  m.def("se_dx", &regnet::se_dx, rel(), "dx = dout * gate + dpooled / HW.");
}
