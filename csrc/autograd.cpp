// The eager fast path of the derivatives: the `_*_autograd` ops (schemas in
// ops.cpp) run a forward op inside a C++ autograd Function whose backward is
// that op's backward op. pool_ext/_meta.py's Python Functions, registered as
// the ops' Autograd kernels, hold the formulas in full (forward mode,
// torch.func, double backward); pool_ext.functional takes these ops instead
// in plain eager mode, where a call through those kernels and a Python
// backward node cost a training step 10-12 us (a 1x8x8x8 max_pool2d
// forward+backward: 37 -> 24 us, torch's 14). The gradient is the same op
// on the same tensors.
//
// Both op calls skip the Autograd key: the forward, as a Function's always
// runs, without a graph; the backward, unless the graph is being
// differentiated (create_graph), where the backward op's own Autograd kernel
// records the derivatives of the gradient.
//
// Compiled autograd (torch._dynamo.compiled_autograd) takes these nodes as
// they are: traceable (the backward only calls an op with a fake kernel),
// each argument its own saved_data entry (it hashes them, and a tuple of
// lists is unhashable), and no mark_non_differentiable, which it refuses
// (the integer taps need none).
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/irange.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "pool_plan.h"

namespace pool_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// The gradients of a forward op's n_args arguments: for self, where it
// needs one, grad_input(saved tensors), run below the Autograd key unless a
// graph of the gradient is wanted (create_graph); none for the rest. The
// saved tensors are unpacked before that: unpacking runs saved-tensor hooks,
// and non-reentrant checkpointing's recomputes the forward there, which
// below the Autograd key would save nothing (CheckpointError). A node that
// saved no tensors (kept_tensors false) unpacks none: unpacking fails once a
// backward without retain_graph has released them.
template <typename F>
variable_list self_grad(AutogradContext* ctx, size_t n_args, const F& grad_input,
                        bool kept_tensors = true) {
  variable_list grads(n_args);
  if (ctx->needs_input_grad(0)) {
    const variable_list saved = kept_tensors ? ctx->get_saved_variables() : variable_list{};
    std::optional<at::AutoDispatchBelowADInplaceOrView> below;
    if (!at::GradMode::is_enabled()) {
      below.emplace();
    }
    grads[0] = grad_input(saved);
  }
  return grads;
}

using IntList = at::IntArrayRef;

struct MaxPool : torch::autograd::Function<MaxPool> {
  static constexpr bool is_traceable = true;
  static variable_list forward(AutogradContext* ctx, const at::Tensor& self, IntList kernel_size,
                               IntList stride, IntList padding, IntList dilation, bool ceil_mode,
                               bool same) {
    static const auto op =
        find_op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, IntList, IntList, IntList,
                                                   IntList, bool, bool)>("pool_ext::max_pool");
    at::AutoDispatchBelowADInplaceOrView below;
    auto [out, taps] = op.call(self, kernel_size, stride, padding, dilation, ceil_mode, same);
    ctx->save_for_backward({self, taps});
    auto& d = ctx->saved_data;
    d["kernel_size"] = kernel_size.vec();
    d["stride"] = stride.vec();
    d["padding"] = padding.vec();
    d["dilation"] = dilation.vec();
    d["ceil_mode"] = ceil_mode;
    d["same"] = same;
    return {out, taps};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&,
                                              const at::Tensor&, IntList, IntList, IntList,
                                              IntList, bool, bool)>("pool_ext::_max_pool_backward");
    auto& d = ctx->saved_data;
    return self_grad(ctx, 7, [&](const variable_list& saved) {
      return op.call(grads[0], saved[0], saved[1], d["kernel_size"].toIntVector(),
                     d["stride"].toIntVector(), d["padding"].toIntVector(),
                     d["dilation"].toIntVector(), d["ceil_mode"].toBool(), d["same"].toBool());
    });
  }
};

struct AvgPool : torch::autograd::Function<AvgPool> {
  static constexpr bool is_traceable = true;
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& self, IntList kernel_size,
                            IntList stride, IntList padding, bool ceil_mode, bool same,
                            bool count_include_pad, std::optional<int64_t> divisor_override) {
    static const auto op =
        find_op<at::Tensor(const at::Tensor&, IntList, IntList, IntList, bool, bool, bool,
                           std::optional<int64_t>)>("pool_ext::avg_pool");
    at::AutoDispatchBelowADInplaceOrView below;
    auto out = op.call(self, kernel_size, stride, padding, ceil_mode, same, count_include_pad,
                       divisor_override);
    ctx->save_for_backward({self});
    auto& d = ctx->saved_data;
    d["kernel_size"] = kernel_size.vec();
    d["stride"] = stride.vec();
    d["padding"] = padding.vec();
    d["ceil_mode"] = ceil_mode;
    d["same"] = same;
    d["count_include_pad"] = count_include_pad;
    d["divisor_override"] = divisor_override;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        find_op<at::Tensor(const at::Tensor&, const at::Tensor&, IntList, IntList, IntList, bool,
                           bool, bool, std::optional<int64_t>)>("pool_ext::_avg_pool_backward");
    auto& d = ctx->saved_data;
    return self_grad(ctx, 8, [&](const variable_list& saved) {
      return op.call(grads[0], saved[0], d["kernel_size"].toIntVector(), d["stride"].toIntVector(),
                     d["padding"].toIntVector(), d["ceil_mode"].toBool(), d["same"].toBool(),
                     d["count_include_pad"].toBool(), d["divisor_override"].toOptional<int64_t>());
    });
  }
};

// sizes (variable pooling) is saved with the tensors, an undefined one for
// none.
std::optional<at::Tensor> optional_sizes(const at::Tensor& sizes) {
  return sizes.defined() ? std::optional<at::Tensor>(sizes) : std::nullopt;
}

struct AdaptiveMaxPool : torch::autograd::Function<AdaptiveMaxPool> {
  static constexpr bool is_traceable = true;
  static variable_list forward(AutogradContext* ctx, const at::Tensor& self, IntList output_size,
                               const std::optional<at::Tensor>& sizes, bool long_taps) {
    static const auto op =
        find_op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, IntList,
                                                   const std::optional<at::Tensor>&, bool)>(
            "pool_ext::adaptive_max_pool");
    at::AutoDispatchBelowADInplaceOrView below;
    auto [out, taps] = op.call(self, output_size, sizes, long_taps);
    ctx->save_for_backward({self, taps, sizes.value_or(at::Tensor())});
    ctx->saved_data["output_size"] = output_size.vec();
    return {out, taps};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&,
                                              const at::Tensor&, IntList,
                                              const std::optional<at::Tensor>&)>(
        "pool_ext::_adaptive_max_pool_backward");
    return self_grad(ctx, 4, [&](const variable_list& saved) {
      return op.call(grads[0], saved[0], saved[1], ctx->saved_data["output_size"].toIntVector(),
                     optional_sizes(saved[2]));
    });
  }
};

// Whether an adaptive average pooled to one cell. torch's global average is
// a mean, which keeps nothing of its input but its sizes; an average's
// backward reads only the input's sizes, strides and options, never its
// values. So the global average keeps the input's sizes and memory format,
// and its backward passes a stand-in (global_stand_in). As with torch,
// changing the input in place after the call (`x.relu_()` after
// `adaptive_avg_pool2d(x, 1)`) does not fail the backward, a second backward
// without retain_graph runs, the graph holds none of the input's memory, and
// a second derivative does not reach the input. The variable global average
// (sizes given) keeps an alias of the input with a version counter of its
// own, outside the graph. Other averages keep the input, as torch's.
bool global(const at::Tensor& out) {
  for (const auto k : c10::irange(2, out.dim())) {
    if (out.size(k) != 1) {
      return false;
    }
  }
  return true;
}

// A tensor of a global average's input sizes, format, dtype and device,
// whose values its backward never reads: for a contiguous input, one element
// expanded (strides 0 plan a contiguous gradient); for a channels-last one,
// which strides alone can say, an uninitialised tensor, held only during the
// backward, so that the gradient keeps the input's format (a contiguous one
// costs the layers before a strided pass: torch's, through its mean).
at::Tensor global_stand_in(const at::Tensor& grad, IntList sizes, at::MemoryFormat format) {
  if (format == at::MemoryFormat::Contiguous) {
    return grad.new_empty({}).expand(sizes);
  }
  return empty_in_format(sizes, format, grad.options());
}

struct AdaptiveAvgPool : torch::autograd::Function<AdaptiveAvgPool> {
  static constexpr bool is_traceable = true;
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& self, IntList output_size,
                            const std::optional<at::Tensor>& sizes) {
    static const auto op =
        find_op<at::Tensor(const at::Tensor&, IntList, const std::optional<at::Tensor>&)>(
            "pool_ext::adaptive_avg_pool");
    at::AutoDispatchBelowADInplaceOrView below;
    auto out = op.call(self, output_size, sizes);
    if (global(out) && !sizes) {
      ctx->saved_data["input_sizes"] = self.sizes().vec();
      ctx->saved_data["input_format"] = static_cast<int64_t>(format_of(self));
    } else {
      ctx->save_for_backward(
          {global(out) ? self.variable_data() : self, sizes.value_or(at::Tensor())});
    }
    ctx->saved_data["output_size"] = output_size.vec();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        find_op<at::Tensor(const at::Tensor&, const at::Tensor&, IntList,
                           const std::optional<at::Tensor>&)>(
            "pool_ext::_adaptive_avg_pool_backward");
    auto& d = ctx->saved_data;
    const bool kept_input = d.find("input_sizes") == d.end();
    return self_grad(
        ctx, 3,
        [&](const variable_list& saved) {
          if (!kept_input) {
            const auto like = global_stand_in(
                grads[0], d["input_sizes"].toIntVector(),
                static_cast<at::MemoryFormat>(d["input_format"].toInt()));
            return op.call(grads[0], like, d["output_size"].toIntVector(), std::nullopt);
          }
          return op.call(grads[0], saved[0], d["output_size"].toIntVector(),
                         optional_sizes(saved[1]));
        },
        kept_input);
  }
};

std::tuple<at::Tensor, at::Tensor> max_pool_autograd(const at::Tensor& self, IntList kernel_size,
                                                     IntList stride, IntList padding,
                                                     IntList dilation, bool ceil_mode,
                                                     bool same) {
  auto out = MaxPool::apply(self, kernel_size, stride, padding, dilation, ceil_mode, same);
  return {out[0], out[1]};
}

at::Tensor avg_pool_autograd(const at::Tensor& self, IntList kernel_size, IntList stride,
                             IntList padding, bool ceil_mode, bool same, bool count_include_pad,
                             std::optional<int64_t> divisor_override) {
  return AvgPool::apply(self, kernel_size, stride, padding, ceil_mode, same, count_include_pad,
                        divisor_override);
}

std::tuple<at::Tensor, at::Tensor> adaptive_max_pool_autograd(
    const at::Tensor& self, IntList output_size, const std::optional<at::Tensor>& sizes,
    bool long_taps) {
  auto out = AdaptiveMaxPool::apply(self, output_size, sizes, long_taps);
  return {out[0], out[1]};
}

at::Tensor adaptive_avg_pool_autograd(const at::Tensor& self, IntList output_size,
                                      const std::optional<at::Tensor>& sizes) {
  return AdaptiveAvgPool::apply(self, output_size, sizes);
}

}  // namespace

// Composite: the Function makes the graph, whatever the backend.
TORCH_LIBRARY_IMPL(pool_ext, CompositeImplicitAutograd, m) {
  m.impl("_max_pool_autograd", TORCH_FN(max_pool_autograd));
  m.impl("_avg_pool_autograd", TORCH_FN(avg_pool_autograd));
  m.impl("_adaptive_max_pool_autograd", TORCH_FN(adaptive_max_pool_autograd));
  m.impl("_adaptive_avg_pool_autograd", TORCH_FN(adaptive_avg_pool_autograd));
}

}  // namespace pool_ext
