// The ops, written once over a backend's kernels. A backend is a struct with
//   static void max_forward(const PoolGeometry&, in, out, taps);  // taps undefined: values only
//   static void max_backward(const PoolGeometry&, grad_out, taps, grad_in);
//   static void max_indices(const PoolGeometry&, taps, indices);
//   static void avg_forward(const PoolGeometry&, in, out);
//   static void avg_backward(const PoolGeometry&, grad_out, grad_in);
//   static bool sizes_readable(const at::Tensor& self);  // may sizes go to the host?
// taking (N, C, D, H, W) views with any strides, non-empty outputs, and
// registers itself with `register_ops<Backend>(m)` in its own file.
#pragma once

#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>

#include "pool_plan.h"

namespace pool_ext {

// Calls f(tap_t{}) with the element type of the saved taps (uint8_t, unused,
// when there are none).
template <typename F>
void dispatch_taps(const at::Tensor& taps, const F& f) {
  if (!taps.defined() || taps.scalar_type() == at::kByte) {
    f(uint8_t{});
  } else {
    f(int64_t{});
  }
}

// Saved taps are the plan's dtype, or int64 (which holds any window's).
inline void check_taps_dtype(const PoolPlan& plan, const at::Tensor& taps, const char* what) {
  TORCH_CHECK(taps.scalar_type() == plan.tap_dtype || taps.scalar_type() == at::kLong, plan.name,
              what, ": expected taps of dtype ", plan.tap_dtype, " or Long, but got ",
              taps.scalar_type());
}

#define POOL_EXT_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// Where every window is one cell (is_identity), each op is a copy: the max
// is the cell, its tap 0, and sums from +0 (averages, gathers) are the cell
// + 0, which turns -0 into +0 as the kernels' sums do.
inline void add_zero(const at::Tensor& from, at::Tensor& to) {
  // A zero tensor on the CPU (which CUDA ops take as a scalar): the Scalar
  // overload adds into a temporary and copies it out (2.5x the time).
  at::add_out(to, from, at::zeros({}, from.options().device(at::kCPU)));
}

template <class K>
std::tuple<at::Tensor, at::Tensor> run_max(const PoolPlan& plan, const at::Tensor& self) {
  auto out = empty_planned(plan, plan.out_shape, self.options());
  auto taps = empty_planned(plan, plan.out_shape, self.options().dtype(plan.tap_dtype));
  if (out.numel() > 0 && is_identity(plan.geom)) {
    out.copy_(self);
    taps.zero_();
  } else if (out.numel() > 0) {
    K::max_forward(plan.geom, as_5d(self), as_5d(out), as_5d(taps));
  }
  return {out, taps};
}

template <class K>
at::Tensor run_max_values(const PoolPlan& plan, const at::Tensor& self) {
  auto out = empty_planned(plan, plan.out_shape, self.options());
  if (out.numel() > 0 && is_identity(plan.geom)) {
    out.copy_(self);
  } else if (out.numel() > 0) {
    K::max_forward(plan.geom, as_5d(self), as_5d(out), at::Tensor());
  }
  return out;
}

template <class K>
at::Tensor run_max_backward(const PoolPlan& plan, const at::Tensor& grad_output,
                            const at::Tensor& self, const at::Tensor& taps) {
  check_like_output(plan, self, grad_output, " backward", "grad_output");
  check_like_output(plan, self, taps, " backward", "taps");
  check_taps_dtype(plan, taps, " backward");
  TORCH_CHECK(grad_output.scalar_type() == self.scalar_type(), plan.name,
              " backward: expected grad_output of dtype ", self.scalar_type(), ", but got ",
              grad_output.scalar_type());
  auto grad_input = empty_planned(plan, self.sizes(), self.options());
  if (grad_input.numel() > 0 && is_identity(plan.geom)) {
    add_zero(grad_output, grad_input);
  } else if (grad_input.numel() > 0) {
    K::max_backward(plan.geom, as_5d(grad_output), as_5d(taps), as_5d(grad_input));
  }
  return grad_input;
}

template <class K>
at::Tensor run_max_indices(const PoolPlan& plan, const at::Tensor& self, const at::Tensor& taps) {
  check_like_output(plan, self, taps, "", "taps");
  check_taps_dtype(plan, taps, "");
  auto indices = empty_planned(plan, plan.out_shape, taps.options().dtype(at::kLong));
  if (indices.numel() > 0) {
    K::max_indices(plan.geom, as_5d(taps), as_5d(indices));
  }
  return indices;
}

template <class K>
at::Tensor run_avg(const PoolPlan& plan, const at::Tensor& self) {
  auto out = empty_planned(plan, plan.out_shape, self.options());
  if (out.numel() > 0 && is_identity(plan.geom)) {
    add_zero(self, out);
  } else if (out.numel() > 0) {
    K::avg_forward(plan.geom, as_5d(self), as_5d(out));
    // A zero sum over a negative divisor_override is -0. torch's CPU kernels
    // for 3d and contiguous 2d add each quotient to a zeroed output, which
    // makes it +0 (its channels-last 2d kernel stores the quotient): so do we.
    if (plan.geom.divisor_override < 0 &&
        !(plan.geom.ndim == 2 && plan.format == at::MemoryFormat::ChannelsLast)) {
      add_zero(out, out);
    }
  }
  return out;
}

template <class K>
at::Tensor run_avg_backward(const PoolPlan& plan, const at::Tensor& grad_output,
                            const at::Tensor& self) {
  check_like_output(plan, self, grad_output, " backward", "grad_output");
  TORCH_CHECK(grad_output.scalar_type() == self.scalar_type(), plan.name,
              " backward: expected grad_output of dtype ", self.scalar_type(), ", but got ",
              grad_output.scalar_type());
  auto grad_input = empty_planned(plan, self.sizes(), self.options());
  // (A mean of one cell keeps a -0 gradient, as the others: its kernels'
  // term, not add_zero's sum.)
  if (grad_input.numel() > 0 && is_identity(plan.geom) && !is_mean(plan.geom)) {
    add_zero(grad_output, grad_input);
  } else if (grad_input.numel() > 0) {
    K::avg_backward(plan.geom, as_5d(grad_output), as_5d(grad_input));
  }
  return grad_input;
}

// Fixed windows.

template <class K>
std::tuple<at::Tensor, at::Tensor> max_pool(const at::Tensor& self, at::IntArrayRef kernel_size,
                                            at::IntArrayRef stride, at::IntArrayRef padding,
                                            at::IntArrayRef dilation, bool ceil_mode, bool same) {
  return run_max<K>(plan_fixed("max_pool", self, kernel_size, stride, padding, dilation,
                               ceil_mode, same, false, std::nullopt),
                    self);
}

template <class K>
at::Tensor max_pool_values(const at::Tensor& self, at::IntArrayRef kernel_size,
                           at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, bool ceil_mode, bool same) {
  return run_max_values<K>(plan_fixed("max_pool", self, kernel_size, stride, padding, dilation,
                                      ceil_mode, same, false, std::nullopt),
                           self);
}

template <class K>
at::Tensor max_pool_backward(const at::Tensor& grad_output, const at::Tensor& self,
                             const at::Tensor& taps, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, bool ceil_mode, bool same) {
  return run_max_backward<K>(plan_fixed("max_pool", self, kernel_size, stride, padding,
                                        dilation, ceil_mode, same, false, std::nullopt),
                             grad_output, self, taps);
}

template <class K>
at::Tensor max_pool_indices(const at::Tensor& self, const at::Tensor& taps,
                            at::IntArrayRef kernel_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode,
                            bool same) {
  return run_max_indices<K>(plan_fixed("max_pool", self, kernel_size, stride, padding, dilation,
                                       ceil_mode, same, false, std::nullopt),
                            self, taps);
}

template <class K>
at::Tensor avg_pool(const at::Tensor& self, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                    at::IntArrayRef padding, bool ceil_mode, bool same, bool count_include_pad,
                    std::optional<int64_t> divisor_override) {
  return run_avg<K>(plan_fixed("avg_pool", self, kernel_size, stride, padding, {1}, ceil_mode,
                               same, count_include_pad, divisor_override),
                    self);
}

template <class K>
at::Tensor avg_pool_backward(const at::Tensor& grad_output, const at::Tensor& self,
                             at::IntArrayRef kernel_size, at::IntArrayRef stride,
                             at::IntArrayRef padding, bool ceil_mode, bool same,
                             bool count_include_pad, std::optional<int64_t> divisor_override) {
  return run_avg_backward<K>(plan_fixed("avg_pool", self, kernel_size, stride, padding, {1},
                                        ceil_mode, same, count_include_pad, divisor_override),
                             grad_output, self);
}

// Adaptive windows (variable when `sizes` is given).

// Variable pooling's sizes are checked (copied to the host: on a GPU, a
// sync) by the forwards, where the backend may read them. The backward and
// indices ops take the outputs of a checked forward, whose sizes autograd
// keeps from change (a saved tensor changed in place fails the backward):
// they take the sizes as checked, and extent() keeps any inside the input.
template <class K>
PoolPlan plan_adaptive_on(const char* kind, const at::Tensor& self, at::IntArrayRef output_size,
                          const std::optional<at::Tensor>& sizes, bool forward) {
  return plan_adaptive(kind, self, output_size, sizes,
                       forward && sizes.has_value() && K::sizes_readable(self));
}

template <class K>
std::tuple<at::Tensor, at::Tensor> adaptive_max_pool(const at::Tensor& self,
                                                     at::IntArrayRef output_size,
                                                     const std::optional<at::Tensor>& sizes,
                                                     bool long_taps) {
  auto plan = plan_adaptive_on<K>("max_pool", self, output_size, sizes, true);
  if (long_taps) {
    plan.tap_dtype = at::kLong;
  }
  return run_max<K>(plan, self);
}

template <class K>
at::Tensor adaptive_max_pool_values(const at::Tensor& self, at::IntArrayRef output_size,
                                    const std::optional<at::Tensor>& sizes) {
  return run_max_values<K>(plan_adaptive_on<K>("max_pool", self, output_size, sizes, true), self);
}

template <class K>
at::Tensor adaptive_max_pool_backward(const at::Tensor& grad_output, const at::Tensor& self,
                                      const at::Tensor& taps, at::IntArrayRef output_size,
                                      const std::optional<at::Tensor>& sizes) {
  return run_max_backward<K>(plan_adaptive_on<K>("max_pool", self, output_size, sizes, false),
                             grad_output, self, taps);
}

template <class K>
at::Tensor adaptive_max_pool_indices(const at::Tensor& self, const at::Tensor& taps,
                                     at::IntArrayRef output_size,
                                     const std::optional<at::Tensor>& sizes) {
  return run_max_indices<K>(plan_adaptive_on<K>("max_pool", self, output_size, sizes, false), self,
                            taps);
}

template <class K>
at::Tensor adaptive_avg_pool(const at::Tensor& self, at::IntArrayRef output_size,
                             const std::optional<at::Tensor>& sizes) {
  return run_avg<K>(plan_adaptive_on<K>("avg_pool", self, output_size, sizes, true), self);
}

template <class K>
at::Tensor adaptive_avg_pool_backward(const at::Tensor& grad_output, const at::Tensor& self,
                                      at::IntArrayRef output_size,
                                      const std::optional<at::Tensor>& sizes) {
  return run_avg_backward<K>(plan_adaptive_on<K>("avg_pool", self, output_size, sizes, false),
                             grad_output, self);
}

template <class K>
void register_ops(torch::Library& m) {
  m.impl("max_pool", TORCH_FN(max_pool<K>));
  m.impl("_max_pool_values", TORCH_FN(max_pool_values<K>));
  m.impl("_max_pool_backward", TORCH_FN(max_pool_backward<K>));
  m.impl("_max_pool_indices", TORCH_FN(max_pool_indices<K>));
  m.impl("avg_pool", TORCH_FN(avg_pool<K>));
  m.impl("_avg_pool_backward", TORCH_FN(avg_pool_backward<K>));
  m.impl("adaptive_max_pool", TORCH_FN(adaptive_max_pool<K>));
  m.impl("_adaptive_max_pool_values", TORCH_FN(adaptive_max_pool_values<K>));
  m.impl("_adaptive_max_pool_backward", TORCH_FN(adaptive_max_pool_backward<K>));
  m.impl("_adaptive_max_pool_indices", TORCH_FN(adaptive_max_pool_indices<K>));
  m.impl("adaptive_avg_pool", TORCH_FN(adaptive_avg_pool<K>));
  m.impl("_adaptive_avg_pool_backward", TORCH_FN(adaptive_avg_pool_backward<K>));
}

}  // namespace pool_ext
