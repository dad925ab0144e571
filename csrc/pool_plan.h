// Host side of every op: argument checks, output shape, memory format and the
// PoolGeometry the kernels run on. Shared by the CPU and CUDA backends.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <vector>

#include "pool.h"

namespace pool_ext {

struct PoolPlan {
  std::string name;  // the torch.nn.functional name, for messages: "max_pool2d"
  PoolGeometry geom;
  std::vector<int64_t> out_shape;
  at::MemoryFormat format;
  at::ScalarType tap_dtype;  // what max pooling saves for its backward
  at::Tensor sizes;          // variable pooling: int64 (N, ndim) on the input's device
};

// Fixed windows. `same` pads as TensorFlow's "same" (and ignores `padding`).
PoolPlan plan_fixed(const char* kind, const at::Tensor& self, at::IntArrayRef kernel_size,
                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                    bool ceil_mode, bool same, bool count_include_pad,
                    std::optional<int64_t> divisor_override);

// Adaptive windows; with `sizes`, each sample n pooled over its own extent,
// whose values are checked when `check_sizes` (a copy to the host).
PoolPlan plan_adaptive(const char* kind, const at::Tensor& self, at::IntArrayRef output_size,
                       const std::optional<at::Tensor>& sizes, bool check_sizes = true);

// Checks that a backward's grad_output (or saved taps) fits the plan, on
// self's device: the dispatcher picks the CUDA kernel when any argument is
// on a GPU, and a kernel must not be handed another device's pointer.
void check_like_output(const PoolPlan& plan, const at::Tensor& self, const at::Tensor& t,
                       const char* op, const char* what);

// The memory format a pooling of self plans its output and gradient in:
// self's, where a 1d input (N, C, L) is channels-last when (N, C, 1, L) is, as
// torch's 1d pooling finds it.
at::MemoryFormat format_of(const at::Tensor& self);

// An uninitialised tensor of `shape` in `format`: for 1d pooling's
// channels-last, (N, C, L) with C at stride 1 and L at stride C.
at::Tensor empty_in_format(at::IntArrayRef shape, at::MemoryFormat format,
                           const at::TensorOptions& options);

// empty_in_format in the plan's memory format.
at::Tensor empty_planned(const PoolPlan& plan, at::IntArrayRef shape,
                         const at::TensorOptions& options);

// View of an (N, C, *spatial) tensor as (N, C, D, H, W).
at::Tensor as_5d(const at::Tensor& t);

// Sizes and strides of a 5d view, for the kernels.
Layout5 layout_of(const at::Tensor& t5);

}  // namespace pool_ext
