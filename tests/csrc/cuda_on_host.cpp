// The CUDA backend's work run on the host: the element functions and the
// global reduction of csrc/pool_kernels.h, in loops that stand for the
// launches of csrc/cuda/pool_cuda.cu (every element in turn; a global
// block's threads in turn, its tree joined level by level). Built by
// tests/test_cuda_on_host.py with -Dpool_ext=pool_ext_host, together with
// csrc/ops.cpp and csrc/pool_plan.cpp: a copy of the ops in the
// pool_ext_host namespace, on CPU tensors.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <initializer_list>
#include <limits>
#include <vector>

#include "pool_kernels.h"
#include "pool_ops.h"

namespace pool_ext {
namespace {

constexpr int64_t kMultiprocessors = 132;  // an H100's, for global_split

// The tables of one call, laid out as pool_cuda.cu's DeviceTables.
struct HostTables {
  std::vector<uint8_t> storage;
  PoolTables view;

  HostTables(const PoolGeometry& g, const at::Tensor& like) : view(table_layout(g, like.size(0))) {
    const int64_t window_bytes = view.samples * view.out_total * sizeof(Window);
    storage.resize(window_bytes + view.samples * view.in_total * sizeof(Span));
    view.windows = reinterpret_cast<Window*>(storage.data());
    view.covering = reinterpret_cast<Span*>(storage.data() + window_bytes);
    for (int64_t e = 0; e < table_entries(view); ++e) fill_table_entry(g, view, e);
  }
};

// The kernels' choice of index type, or int64_t whenever the test asks
// (POOL_EXT_HOST_INDEX64=1), so that the wide numbering runs on small inputs.
template <typename F>
void host_dispatch_index(int64_t total, const F& f) {
  if (env_is("POOL_EXT_HOST_INDEX64", "1")) {
    f(int64_t{});
  } else {
    dispatch_index(total, f);
  }
}

// f(e, split) for every element number e of `written`, split by split, an
// ElementSplit of it taking `lanes` channels an element.
template <typename F>
void for_split_elements(const at::Tensor& written, int lanes, const F& f) {
  const int64_t total = written.numel() / lanes;
  const Layout5 v = layout_of(written);
  host_dispatch_index(total, [&](auto index_tag) {
    using index_t = decltype(index_tag);
    const ElementSplit<index_t> split(v, channels_last(v), lanes);
    for (index_t e = 0; e < static_cast<index_t>(total); ++e) f(e, split);
  });
}

// f(e, split, lanes, packed) for every element number e of a window kernel
// over scalar_t writing `written` and touching `tensors`, which takes
// channel_lanes' channels per element, or one whenever the test asks
// (POOL_EXT_HOST_LANES1=1), to compare the two.
template <typename scalar_t, typename F>
void for_lanes(const at::Tensor& written, std::initializer_list<at::Tensor> tensors,
               const F& f) {
  const bool forced = env_is("POOL_EXT_HOST_LANES1", "1");
  // (lanes whatever the size, where a GPU takes them only on inputs that
  // fill it: the tests' inputs are small, and _channel_lanes checks that rule)
  const ChannelLanes lanes =
      forced ? ChannelLanes{1, true} : channel_lanes<scalar_t>(tensors, written.numel(), 0);
  dispatch_lanes<scalar_t>(lanes, [&](auto v, auto packed) {
    for_split_elements(written, decltype(v)::value,
                       [&](auto e, const auto& split) { f(e, split, v, packed); });
  });
}

template <typename scalar_t, typename Output>
void global_reduce(const PoolGeometry& g, const at::Tensor& in, const Output& output) {
  using State = typename Output::State;
  const Layout5 vi = layout_of(in);
  const GlobalSplit s = global_split(g, vi, channels_last(vi), kMultiprocessors);
  const int64_t planes = vi.size[0] * vi.size[1];
  std::vector<State> partial(s.chunks > 1 ? planes * s.chunks : 0);
  host_dispatch_index(std::max({s.groups * s.chunks, planes, vi.pixels() + kUnroll * kThreads}),
                      [&](auto index_tag) {
    using index_t = decltype(index_tag);
    const auto channels = static_cast<index_t>(vi.size[1]);
    State joined[kGlobalThreads];
    index_t q[kGlobalThreads];
    for (index_t b = 0; b < static_cast<index_t>(s.groups * s.chunks); ++b) {
      for (int t = 0; t < kGlobalThreads; ++t) {
        joined[t] = global_scan<scalar_t, State, index_t>(g, vi, s, b, t,
                                                          in.const_data_ptr<scalar_t>(), &q[t]);
      }
      for (int half = s.parts / 2; half > 0; half /= 2) {
        for (int t = 0; t < kGlobalThreads; ++t) global_tree_step(s, joined, t, half);
      }
      for (int t = 0; t < kGlobalThreads; ++t) {
        global_finish(s, t, channels, static_cast<index_t>(planes), q[t],
                      static_cast<index_t>(b % s.chunks), joined[t], partial.data(), output);
      }
    }
  });
  for (int64_t q = 0; s.chunks > 1 && q < planes; ++q) {
    global_join(q, vi.size[1], s.chunks, partial.data(), output);
  }
}

// pool_cuda.cu's choice for global pooling, with its switch read at every
// call (POOL_EXT_CUDA_GLOBAL_WINDOWS=1: small planes to the window kernels).
bool by_reduction(const PoolGeometry& g, const at::Tensor& in) {
  return pool_ext::by_reduction(g, layout_of(in), env_is("POOL_EXT_CUDA_GLOBAL_WINDOWS", "1"));
}

struct HostKernels {
  // As in a capture of a CUDA graph (pool_cuda.cu) with
  // POOL_EXT_HOST_CAPTURING=1, read at every call: sizes unchecked.
  static bool sizes_readable(const at::Tensor&) {
    return !env_is("POOL_EXT_HOST_CAPTURING", "1");
  }

  static void max_forward(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out,
                          const at::Tensor& taps) {
    const bool values_only = !taps.defined();
    POOL_EXT_DISPATCH(in.scalar_type(), "max_pool_host", [&] {
      dispatch_taps(taps, [&](auto tap_tag) {
        using tap_t = decltype(tap_tag);
        tap_t* tap_ptr = values_only ? nullptr : taps.mutable_data_ptr<tap_t>();
        const Layout5 vt = layout_of(values_only ? out : taps);
        if (by_reduction(g, in)) {
          global_reduce<scalar_t>(g, in, MaxOutput<scalar_t, tap_t>{
                                             layout_of(out), vt, out.mutable_data_ptr<scalar_t>(),
                                             tap_ptr});
          return;
        }
        const HostTables tables(g, in);
        for_lanes<scalar_t>(out, {in, out, taps}, [&](auto e, const auto& split, auto lanes, auto packed) {
          max_forward_element<decltype(lanes)::value, decltype(packed)::value, scalar_t, tap_t,
                              decltype(e)>(
              g, tables.view, layout_of(in), layout_of(out), vt, split, e,
              in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), tap_ptr);
        });
      });
    });
  }

  static void max_backward(const PoolGeometry& g, const at::Tensor& grad_out,
                           const at::Tensor& taps, const at::Tensor& grad_in) {
    const HostTables tables(g, grad_in);
    POOL_EXT_DISPATCH(grad_in.scalar_type(), "max_pool_backward_host", [&] {
      dispatch_taps(taps, [&](auto tap_tag) {
        using tap_t = decltype(tap_tag);
        for_lanes<scalar_t>(grad_in, {grad_out, taps, grad_in},
                            [&](auto e, const auto& split, auto lanes, auto packed) {
          max_backward_element<decltype(lanes)::value, decltype(packed)::value, scalar_t, tap_t,
                               decltype(e)>(
              g, tables.view, layout_of(grad_out), layout_of(taps), layout_of(grad_in), split, e,
              grad_out.const_data_ptr<scalar_t>(), taps.const_data_ptr<tap_t>(),
              grad_in.mutable_data_ptr<scalar_t>());
        });
      });
    });
  }

  static void max_indices(const PoolGeometry& g, const at::Tensor& taps,
                          const at::Tensor& indices) {
    const HostTables tables(g, taps);
    dispatch_taps(taps, [&](auto tap_tag) {
      using tap_t = decltype(tap_tag);
      for_split_elements(indices, 1, [&](auto e, const auto& split) {
        max_indices_element<tap_t, decltype(e)>(g, tables.view, layout_of(taps), layout_of(indices),
                                                split, e, taps.const_data_ptr<tap_t>(),
                                                indices.mutable_data_ptr<int64_t>());
      });
    });
  }

  static void avg_forward(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out) {
    POOL_EXT_DISPATCH(in.scalar_type(), "avg_pool_host", [&] {
      if (by_reduction(g, in)) {
        global_reduce<scalar_t>(
            g, in, AvgOutput<scalar_t>{g, layout_of(out), out.mutable_data_ptr<scalar_t>()});
        return;
      }
      const HostTables tables(g, in);
      for_lanes<scalar_t>(out, {in, out}, [&](auto e, const auto& split, auto lanes, auto packed) {
        avg_forward_element<decltype(lanes)::value, decltype(packed)::value, scalar_t,
                            decltype(e)>(
            g, tables.view, layout_of(in), layout_of(out), split, e,
            in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>());
      });
    });
  }

  static void avg_backward(const PoolGeometry& g, const at::Tensor& grad_out,
                           const at::Tensor& grad_in) {
    const HostTables tables(g, grad_in);
    POOL_EXT_DISPATCH(grad_in.scalar_type(), "avg_pool_backward_host", [&] {
      for_lanes<scalar_t>(grad_in, {grad_out, grad_in}, [&](auto e, const auto& split, auto lanes, auto packed) {
        avg_backward_element<decltype(lanes)::value, decltype(packed)::value, scalar_t,
                             decltype(e)>(
            g, tables.view, layout_of(grad_out), layout_of(grad_in), split, e,
            grad_out.const_data_ptr<scalar_t>(), grad_in.mutable_data_ptr<scalar_t>());
      });
    });
  }
};

// The channels per thread the window kernels take for these tensors, all
// of the first's dtype, writing `elements` values on a GPU that holds `fill`
// threads at once, as channel_lanes decides it for the launches:
// {channels, whether packed}.
std::vector<int64_t> channel_lanes_of(at::TensorList tensors, int64_t elements, int64_t fill) {
  std::vector<int64_t> lanes;
  POOL_EXT_DISPATCH(tensors.at(0).scalar_type(), "channel_lanes_of", [&] {
    const at::Tensor t0 = as_5d(tensors.at(0));
    const at::Tensor t1 = tensors.size() > 1 ? as_5d(tensors[1]) : at::Tensor();
    TORCH_CHECK(tensors.size() <= 2, "channel_lanes_of: two tensors at most");
    const ChannelLanes l = channel_lanes<scalar_t>({t0, t1}, elements, fill);
    lanes = {l.lanes, l.packed};
  });
  return lanes;
}

// The global reduction's split of self pooled to one cell, on an H100's SM
// count: {threads per plane, planes per block, chunks per plane}.
std::vector<int64_t> global_split_of(const at::Tensor& self) {
  const std::vector<int64_t> ones(self.dim() - 2, 1);
  const PoolPlan plan = plan_adaptive("avg_pool", self, ones, std::nullopt);
  const Layout5 v = layout_of(as_5d(self));
  const GlobalSplit s = global_split(plan.geom, v, channels_last(v), kMultiprocessors);
  return {s.parts, s.lanes, s.chunks};
}

// The kernels' 32-bit division (Divider) of each of `numbers` (int64,
// 0 <= n < 2^31) by `divisor`.
at::Tensor divide_32(const at::Tensor& numbers, int64_t divisor) {
  TORCH_CHECK(divisor >= 1 && divisor <= std::numeric_limits<int32_t>::max(), "divisor ",
              divisor);
  const Divider<int32_t> d(divisor);
  at::Tensor in = numbers.contiguous();
  at::Tensor out = at::empty_like(in);
  const int64_t* n = in.const_data_ptr<int64_t>();
  int64_t* q = out.mutable_data_ptr<int64_t>();
  for (int64_t k = 0; k < in.numel(); ++k) {
    TORCH_CHECK(n[k] >= 0 && n[k] <= std::numeric_limits<int32_t>::max(), "number ", n[k]);
    q[k] = d.div(static_cast<int32_t>(n[k]));
  }
  return out;
}

}  // namespace
}  // namespace pool_ext

TORCH_LIBRARY_FRAGMENT(pool_ext, m) {
  m.def("_channel_lanes(Tensor[] tensors, int elements=0, int fill=0) -> int[]");
  m.def("_divide_32(Tensor numbers, int divisor) -> Tensor");
  m.def("_global_split(Tensor self) -> int[]");
}

TORCH_LIBRARY_IMPL(pool_ext, CPU, m) {
  pool_ext::register_ops<pool_ext::HostKernels>(m);
  m.impl("_channel_lanes", &pool_ext::channel_lanes_of);
  m.impl("_divide_32", &pool_ext::divide_32);
  m.impl("_global_split", &pool_ext::global_split_of);
}
