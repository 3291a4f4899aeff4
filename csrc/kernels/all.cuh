// Every kernel of the extension, for one-translation-unit JIT compilation (CuPy / NVRTC). The host
// launchers (csrc/*.cu) include only what they launch.
#pragma once

#include "conv.cuh"
#include "bn.cuh"
#include "se.cuh"
