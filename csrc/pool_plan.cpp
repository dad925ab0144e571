#include "pool_plan.h"

#include <c10/util/irange.h>

#include <array>
#include <limits>

namespace pool_ext {
namespace {

// Saved taps fit in a byte when no window has more than 256 of them.
constexpr int64_t kByteTaps = 256;

std::string op_name(const char* kind, int64_t ndim) {
  return std::string(kind) + std::to_string(ndim) + "d";
}

// Expands an int list of one or `ndim` values (torch's `_single/_pair/_triple`).
std::vector<int64_t> expand(const std::string& name, const char* arg, at::IntArrayRef v,
                            int64_t ndim) {
  TORCH_CHECK(v.size() == 1 || static_cast<int64_t>(v.size()) == ndim, name, ": ", arg,
              " must be a single int or a tuple of ", ndim, " ints, but got ", v);
  return v.size() == 1 ? std::vector<int64_t>(ndim, v[0]) : v.vec();
}

// Fixed pooling needs channels; adaptive pooling takes an empty channel dim,
// as torch's does for an unbatched input (whose channels lead, as a batch).
void check_input(const std::string& name, const at::Tensor& self, int64_t ndim,
                 bool empty_channels) {
  TORCH_CHECK(self.dim() == ndim + 2, name, ": expected a ", ndim + 2,
              "D (N, C, *spatial) input, but got one of sizes ", self.sizes());
  TORCH_CHECK(empty_channels || self.size(1) > 0, name,
              ": expected input with non-zero channels and spatial sizes (only the batch may be "
              "empty), but got input of sizes ",
              self.sizes());
  for (const auto k : c10::irange(2, self.dim())) {
    TORCH_CHECK(self.size(k) > 0, name,
                ": expected input with non-zero spatial sizes, but got input of sizes ",
                self.sizes());
  }
  const auto t = self.scalar_type();
  // NotImplementedError, as torch's kernels raise for a dtype they lack.
  TORCH_CHECK_NOT_IMPLEMENTED(
      t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, name,
      ": expected a float32, float64, float16 or bfloat16 input, but got ", t);
}

}  // namespace

at::MemoryFormat format_of(const at::Tensor& self) {
  // A 1d input is channels-last where torch's 1d pooling, which pools it as
  // (N, C, 1, L), finds it so: channels innermost, as a transposed (N, L, C)
  // sequence batch is. Its output then has the same stride order.
  return self.dim() >= 4 ? self.suggest_memory_format()
                         : self.unsqueeze(2).suggest_memory_format();
}

namespace {

PoolPlan start_plan(const std::string& name, const at::Tensor& self, int64_t ndim) {
  PoolPlan plan;
  plan.name = name;
  plan.geom = PoolGeometry{};
  plan.geom.ndim = static_cast<int>(ndim);
  for (auto& d : plan.geom.dim) {
    d = PoolDim{1, 1, 1, 1, 0, 0, 1};
  }
  plan.out_shape = {self.size(0), self.size(1)};
  plan.format = format_of(self);
  return plan;
}

void finish_plan(PoolPlan& plan) {
  plan.tap_dtype = window_taps(plan.geom) <= kByteTaps ? at::kByte : at::kLong;
}

// Adaptive pooling whose windows are all one size at one stride in every dim
// becomes that fixed pooling (no padding: divisors are the window's cells)
// when its windows are small: the fixed kernels' vector sweeps, a pass per
// tap, beat the adaptive kernels' runs there (on the CPU, 1d 1024 -> 512:
// 24x; 3d 2x2x2: 4x), and lose from 32 cells on (2d 8x8: 1.5-2x). Global
// pooling keeps its own kernels; taps keep the adaptive dtype (the fixed
// windows are no larger).
constexpr int64_t kMostFixedCells = 16;

void as_fixed_if_uniform(PoolGeometry& g) {
  bool global = true;
  int64_t cells = 1;
  for (const auto& d : g.dim) {
    if (!adaptive_is_fixed(d.in, d.out)) {
      return;
    }
    global &= d.out == 1;
    cells *= adaptive_fixed_kernel(d.in, d.out);
  }
  if (g.sizes != nullptr || global || cells > kMostFixedCells) {
    return;
  }
  g.adaptive = false;
  g.count_include_pad = true;
  g.divisor_override = 0;
  for (auto& d : g.dim) {
    d.kernel = adaptive_fixed_kernel(d.in, d.out);
    d.stride = d.in / d.out;
    d.pad = d.pad_end = 0;
    d.dilation = 1;
  }
}

// The converse: fixed pooling whose windows tile the input (stride = kernel,
// no padding or dilation, extents divisible) and have more cells than that
// is adaptive pooling to extent / kernel, and runs on its kernels (2d 8x8 on
// NCHW: 2.6x; 3d 4x4x4: 2.7x), global pooling's when one window covers all.
void as_adaptive_if_tiled(PoolGeometry& g) {
  int64_t cells = 1;
  for (const auto& d : g.dim) {
    if (d.stride != d.kernel || d.pad != 0 || d.pad_end != 0 || d.dilation != 1 ||
        d.in % d.kernel != 0) {
      return;
    }
    cells *= d.kernel;
  }
  if (g.divisor_override != 0 || cells <= kMostFixedCells) {
    return;
  }
  g.adaptive = true;
}

}  // namespace

PoolPlan plan_fixed(const char* kind, const at::Tensor& self, at::IntArrayRef kernel_size,
                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                    bool ceil_mode, bool same, bool count_include_pad,
                    std::optional<int64_t> divisor_override) {
  const auto ndim = static_cast<int64_t>(kernel_size.size());
  TORCH_CHECK(ndim >= 1 && ndim <= kDims, kind,
              ": kernel_size must have 1 to 3 elements, but got ", kernel_size);
  const auto name = op_name(kind, ndim);
  check_input(name, self, ndim, false);
  const auto k = kernel_size.vec();
  const auto s = stride.empty() ? k : expand(name, "stride", stride, ndim);
  const auto p = expand(name, "padding", padding, ndim);
  const auto d = expand(name, "dilation", dilation, ndim);
  for (const auto i : c10::irange(ndim)) {
    TORCH_CHECK(k[i] > 0, name, ": kernel size should be greater than zero, but got kernel_size=",
                kernel_size);
    TORCH_CHECK(s[i] > 0, name, ": stride should be greater than zero, but got stride=",
                at::IntArrayRef(s));
    TORCH_CHECK(d[i] > 0, name, ": dilation should be greater than zero, but got dilation=",
                at::IntArrayRef(d));
    // torch takes these as 32-bit ints; past that, window arithmetic
    // (dilation * (kernel - 1), a window's end) could overflow int64.
    constexpr int64_t kMaxArg = std::numeric_limits<int32_t>::max();
    TORCH_CHECK(k[i] <= kMaxArg && s[i] <= kMaxArg && d[i] <= kMaxArg && p[i] <= kMaxArg, name,
                ": kernel_size, stride, padding and dilation must fit in 32 bits, but got "
                "kernel_size=", kernel_size, ", stride=", at::IntArrayRef(s), ", padding=",
                at::IntArrayRef(p), ", dilation=", at::IntArrayRef(d));
    if (!same) {
      TORCH_CHECK(p[i] >= 0, name, ": pad must be non-negative, but got padding=",
                  at::IntArrayRef(p));
      TORCH_CHECK(p[i] <= k[i] / 2, name,
                  ": pad should be at most half of kernel size, but got padding=",
                  at::IntArrayRef(p), " and kernel_size=", kernel_size);
    }
  }
  // The taps of a window are numbered in int64 (and max saves them).
  int64_t taps = 1;
  for (const auto i : c10::irange(ndim)) {
    TORCH_CHECK(taps <= std::numeric_limits<int64_t>::max() / k[i], name,
                ": a window of kernel_size=", kernel_size, " has more cells than int64 counts");
    taps *= k[i];
  }
  if (ndim == 3 && std::string(kind) == "avg_pool" && !same) {
    // torch's avg_pool3d (alone) refuses inputs smaller than the kernel.
    TORCH_CHECK(self.size(2) >= k[0] && self.size(3) >= k[1] && self.size(4) >= k[2], name,
                ": input image of sizes ", self.sizes().slice(2),
                " is smaller than kernel size ", kernel_size);
  }
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0, name,
              ": divisor must be not zero, but got divisor_override=0");

  PoolPlan plan = start_plan(name, self, ndim);
  auto& g = plan.geom;
  g.adaptive = false;
  g.count_include_pad = count_include_pad && !same;
  g.divisor_override = divisor_override.value_or(0);
  bool too_small = false;
  for (const auto i : c10::irange(ndim)) {
    PoolDim& dim = g.dim[kDims - ndim + i];
    dim.in = self.size(2 + i);
    dim.kernel = k[i];
    dim.stride = s[i];
    dim.dilation = d[i];
    if (same) {
      const int64_t total = same_pad_total(dim.in, k[i], s[i], d[i]);
      dim.pad = total / 2;
      dim.pad_end = total - dim.pad;
      dim.out = same_size(dim.in, s[i]);
    } else {
      dim.pad = dim.pad_end = p[i];
      dim.out = pooled_size(dim.in, k[i], s[i], p[i], d[i], ceil_mode);
    }
    too_small |= dim.out < 1;
    plan.out_shape.push_back(dim.out);
  }
  TORCH_CHECK(!too_small, name, ": given input size ",
              self.sizes().slice(1), ", calculated output size ",
              at::IntArrayRef(plan.out_shape).slice(1), ". Output size is too small");
  finish_plan(plan);
  as_adaptive_if_tiled(g);
  return plan;
}

PoolPlan plan_adaptive(const char* kind, const at::Tensor& self, at::IntArrayRef output_size,
                       const std::optional<at::Tensor>& sizes, bool check_sizes) {
  const auto ndim = static_cast<int64_t>(output_size.size());
  const std::string family = sizes.has_value() ? "variable_" : "adaptive_";
  TORCH_CHECK(ndim >= 1 && ndim <= kDims, family, kind,
              ": output_size must have 1 to 3 elements, but got ", output_size);
  const auto name = op_name((family + kind).c_str(), ndim);
  check_input(name, self, ndim, true);
  for (const auto o : output_size) {
    TORCH_CHECK(o >= -1, name,
                ": output_size must be non-negative (or -1: the input's extent), but got "
                "output_size=", output_size);
    // Each sample has its own extent: "the input's extent" would be the padded one.
    TORCH_CHECK(o != -1 || !sizes.has_value(), name,
                ": output_size must be given in full (no None or -1: each sample has its own "
                "extent), but got output_size=", output_size);
  }

  PoolPlan plan = start_plan(name, self, ndim);
  auto& g = plan.geom;
  g.adaptive = true;
  g.adaptive_op = true;
  for (const auto i : c10::irange(ndim)) {
    PoolDim& dim = g.dim[kDims - ndim + i];
    dim.in = self.size(2 + i);
    dim.out = output_size[i] == -1 ? dim.in : output_size[i];
    dim.kernel = dim.out > 0 ? adaptive_max_window(dim.in, dim.out, sizes.has_value()) : 1;
    plan.out_shape.push_back(dim.out);
  }

  if (sizes.has_value()) {
    const auto& sz = *sizes;
    const int64_t n = self.size(0);
    TORCH_CHECK(sz.device() == self.device(), name,
                ": expected sizes on the input's device ", self.device(), ", but got sizes on ",
                sz.device());
    TORCH_CHECK(sz.scalar_type() == at::kLong || sz.scalar_type() == at::kInt, name,
                ": expected sizes of dtype int64 or int32, but got ", sz.scalar_type());
    const bool lengths = ndim == 1 && sz.dim() == 1;
    TORCH_CHECK(lengths || (sz.dim() == 2 && sz.size(1) == ndim), name,
                ": expected sizes of shape (N, ", ndim, ")",
                ndim == 1 ? " or (N,)" : "", " with N = ", n, ", but got sizes of shape ",
                sz.sizes());
    TORCH_CHECK(sz.size(0) == n, name, ": expected sizes of shape (", n, ", ", ndim,
                ") for a batch of ", n, ", but got sizes of shape ", sz.sizes());
    plan.sizes = sz.to(at::kLong).reshape({n, ndim}).contiguous();
    // The one host read of the sizes: a bad size is an error. Without it
    // (a CUDA graph being captured; backward and indices ops), the kernels
    // clamp each size (extent()).
    if (check_sizes) {
      const auto host = plan.sizes.cpu();
      const int64_t* v = host.const_data_ptr<int64_t>();
      for (const auto s : c10::irange(n)) {
        for (const auto i : c10::irange(ndim)) {
          const int64_t extent = self.size(2 + i);
          const int64_t value = v[s * ndim + i];
          TORCH_CHECK(value >= 1 && value <= extent, name, ": sizes[", s,
                      lengths ? "" : ", " + std::to_string(i), "] = ", value,
                      " is outside the valid range [1, ", extent, "] of spatial dim ", i,
                      " of the padded input");
        }
      }
    }
    g.sizes = plan.sizes.data_ptr<int64_t>();
  }
  finish_plan(plan);
  as_fixed_if_uniform(g);
  return plan;
}

void check_like_output(const PoolPlan& plan, const at::Tensor& self, const at::Tensor& t,
                       const char* op, const char* what) {
  TORCH_CHECK(t.device() == self.device(), plan.name, op, ": expected ", what, " on ",
              self.device(), " (the input's device), but got it on ", t.device());
  TORCH_CHECK(t.sizes() == at::IntArrayRef(plan.out_shape), plan.name, op, ": expected ", what,
              " of sizes ", at::IntArrayRef(plan.out_shape), ", but got ", t.sizes());
}

at::Tensor empty_in_format(at::IntArrayRef shape, at::MemoryFormat format,
                           const at::TensorOptions& options) {
  if (shape.size() == 3 && format == at::MemoryFormat::ChannelsLast) {
    return at::empty({shape[0], shape[2], shape[1]}, options).permute({0, 2, 1});
  }
  return at::empty(shape, options.memory_format(format));
}

at::Tensor empty_planned(const PoolPlan& plan, at::IntArrayRef shape,
                         const at::TensorOptions& options) {
  return empty_in_format(shape, plan.format, options);
}

at::Tensor as_5d(const at::Tensor& t) {
  const int64_t missing = 2 + kDims - t.dim();
  if (missing == 0) {
    return t;
  }
  // The view unsqueeze(2) would give, made here: through the dispatcher and
  // its view tracking it cost 0.2 us a call, a tenth of a small op's time,
  // and the kernels only read its data, sizes and strides.
  std::array<int64_t, 2 + kDims> size{}, stride{};
  for (const auto k : c10::irange(2 + kDims)) {
    const int64_t from = k < 2 ? k : k - missing;  // the dim of t, if k < 2 or k >= 2 + missing
    if (k >= 2 && k < 2 + missing) {
      size[k] = 1;
      stride[k] = t.size(2) * t.stride(2);  // as unsqueeze(2) sets it
    } else {
      size[k] = t.size(from);
      stride[k] = t.stride(from);
    }
  }
  auto view = c10::make_intrusive<c10::TensorImpl>(c10::TensorImpl::VIEW, c10::Storage(t.storage()),
                                                   t.key_set(), t.dtype());
  view->set_sizes_and_strides(size, stride, t.storage_offset());
  return at::Tensor(std::move(view));
}

Layout5 layout_of(const at::Tensor& t5) {
  Layout5 v;
  for (const auto k : c10::irange(5)) {
    v.size[k] = t5.size(k);
    v.stride[k] = t5.stride(k);
  }
  return v;
}

}  // namespace pool_ext
