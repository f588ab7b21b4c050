// Precompiled header for every LibTorch translation unit (lib/train and tests/train).
// LibTorch's headers take ~20 s per TU to parse on this machine; parsing them once is the
// single biggest build-time win.
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>
