// CUDA device discovery and the saxpy smoke kernel. See device.h.
#include "kernels/cuda/device.h"

#include <cuda_runtime.h>

#include <cstdio>

namespace shrink::cuda {

namespace {
__global__ void saxpy_f32(int n, float a, const float* x, float* y) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}
Status cuda_status(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::ok();
  return internal_error(std::string(what) + ": " + cudaGetErrorString(e));
}
}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

std::string device_summary(int device) {
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, device) != cudaSuccess) return "unknown device";
  char buf[512];
  std::snprintf(buf, sizeof buf, "%.255s (sm_%d%d, %d SMs, %.1f GiB)", p.name, p.major, p.minor,
                p.multiProcessorCount, double(p.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

Status saxpy_check(float a, const std::vector<float>& x, std::vector<float>& y) {
  if (x.size() != y.size()) return invalid_input("saxpy: x and y differ in length");
  const int n = int(x.size());
  float *dx = nullptr, *dy = nullptr;
  SHRINK_RETURN_IF_ERROR(cuda_status(cudaMalloc(&dx, sizeof(float) * n), "cudaMalloc"));
  Status s = cuda_status(cudaMalloc(&dy, sizeof(float) * n), "cudaMalloc");
  if (s) s = cuda_status(cudaMemcpy(dx, x.data(), sizeof(float) * n, cudaMemcpyHostToDevice), "copy");
  if (s) s = cuda_status(cudaMemcpy(dy, y.data(), sizeof(float) * n, cudaMemcpyHostToDevice), "copy");
  if (s) {
    saxpy_f32<<<(n + 255) / 256, 256>>>(n, a, dx, dy);
    s = cuda_status(cudaGetLastError(), "saxpy launch");
  }
  if (s) s = cuda_status(cudaMemcpy(y.data(), dy, sizeof(float) * n, cudaMemcpyDeviceToHost), "copy");
  cudaFree(dx);
  cudaFree(dy);
  return s;
}

}  // namespace shrink::cuda
