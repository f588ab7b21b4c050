// CUDA device discovery and a smoke kernel, behind a plain C++ interface (no CUDA types), so
// host code and tests can ask "is there a GPU, which one" without including CUDA headers.
// GPU tests call cuda_device_count() and GTEST_SKIP() when it is 0.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"

namespace shrink::cuda {

/// Number of usable CUDA devices; 0 when there is no driver or device.
int device_count();
/// "NVIDIA H200 (sm_90, 132 SMs, 139.8 GiB)" for a device index.
std::string device_summary(int device);
/// y[i] = a * x[i] + y[i] on the device: a known-answer check that kernels launch and that the
/// build's architectures match the GPU.
Status saxpy_check(float a, const std::vector<float>& x, std::vector<float>& y);

}  // namespace shrink::cuda
