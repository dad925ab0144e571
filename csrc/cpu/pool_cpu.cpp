// CPU kernels. Two layouts:
//  - planes (contiguous and strided inputs): one (n, c) plane row of outputs
//    at a time, each output through the element functions of pool.h;
//  - channels (channels-last inputs): one pixel at a time, the same window
//    for every channel, with the channel loop innermost and contiguous so the
//    compiler vectorises it.
// Backward kernels gather: each input cell sums the outputs that cover it,
// so no two threads write one cell and gradients are bit-identical run to run.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/irange.h>

#include <type_traits>
#include <vector>

#include "../pool_ops.h"

namespace pool_ext {
namespace {

// The channels path applies when channels are the innermost dim of both sides.
bool channels_inner(const at::Tensor& a, const at::Tensor& b) {
  return a.size(1) > 1 && a.stride(1) == 1 && b.stride(1) == 1;
}

inline int64_t grain(int64_t work_per_item) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(work_per_item, 1));
}

// ---------------------------------------------------------------- forward

template <typename scalar_t, typename tap_t>
void max_forward_planes(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out,
                        const at::Tensor& taps) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout5 vi = layout_of(in), vo = layout_of(out), vt = layout_of(taps);
  const auto* src = in.const_data_ptr<scalar_t>();
  auto* dst = out.mutable_data_ptr<scalar_t>();
  auto* tap = taps.mutable_data_ptr<tap_t>();
  const int64_t rows = vo.size[0] * vo.size[1] * vo.size[2] * vo.size[3];
  at::parallel_for(0, rows, grain(vo.size[4] * window_taps(g)), [&](int64_t begin, int64_t end) {
    for (const auto r : c10::irange(begin, end)) {
      int64_t o[kDims];
      o[1] = r % vo.size[3];
      o[0] = (r / vo.size[3]) % vo.size[2];
      const int64_t c = (r / (vo.size[3] * vo.size[2])) % vo.size[1];
      const int64_t n = r / (vo.size[3] * vo.size[2] * vo.size[1]);
      Window w[kDims];
      w[0] = window(g, 0, o[0], extent(g, 0, n));
      w[1] = window(g, 1, o[1], extent(g, 1, n));
      const int64_t in_w = extent(g, 2, n);
      const scalar_t* plane = src + vi.offset(n, c, 0, 0, 0);
      for (o[2] = 0; o[2] < vo.size[4]; ++o[2]) {
        w[2] = window(g, 2, o[2], in_w);
        int64_t t;
        const acc_t best = window_max<scalar_t, acc_t>(g, w, plane, vi.spatial_strides(), &t);
        dst[vo.offset(n, c, o[0], o[1], o[2])] = static_cast<scalar_t>(best);
        tap[vt.offset(n, c, o[0], o[1], o[2])] = static_cast<tap_t>(t);
      }
    }
  });
}

template <typename scalar_t, typename tap_t>
void max_forward_channels(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out,
                          const at::Tensor& taps) {
  using acc_t = at::opmath_type<scalar_t>;
  // int32 taps while the channel loop runs keep its lanes as wide as float's.
  using lane_tap_t = std::conditional_t<sizeof(tap_t) == 1, int32_t, int64_t>;
  const Layout5 vi = layout_of(in), vo = layout_of(out), vt = layout_of(taps);
  const int64_t channels = vo.size[1];
  const auto* src = in.const_data_ptr<scalar_t>();
  auto* dst = out.mutable_data_ptr<scalar_t>();
  auto* tap = taps.mutable_data_ptr<tap_t>();
  at::parallel_for(0, vo.size[0] * vo.pixels(), grain(channels * window_taps(g)),
                   [&](int64_t begin, int64_t end) {
    std::vector<acc_t> best(channels);
    std::vector<lane_tap_t> best_tap(channels);
    for (const auto p : c10::irange(begin, end)) {
      int64_t n, o[kDims];
      unflatten_pixel(p, vo, &n, o);
      Window w[kDims];
      windows_at(g, n, o, w);
      std::fill(best.begin(), best.end(), -std::numeric_limits<acc_t>::infinity());
      std::fill(best_tap.begin(), best_tap.end(),
                encode_tap(g, w[0].first_tap, w[1].first_tap, w[2].first_tap));
      for (int64_t td = w[0].first_tap; td < w[0].first_tap + w[0].count; ++td) {
        for (int64_t th = w[1].first_tap; th < w[1].first_tap + w[1].count; ++th) {
          for (int64_t tw = w[2].first_tap; tw < w[2].first_tap + w[2].count; ++tw) {
            const scalar_t* at = src + vi.offset(n, 0, tap_position(w[0], td),
                                                 tap_position(w[1], th), tap_position(w[2], tw));
            const auto t = static_cast<lane_tap_t>(encode_tap(g, td, th, tw));
            for (const auto c : c10::irange(channels)) {
              const auto v = static_cast<acc_t>(at[c]);
              const bool takes = max_takes(v, best[c]);
              best[c] = takes ? v : best[c];
              best_tap[c] = takes ? t : best_tap[c];
            }
          }
        }
      }
      scalar_t* out_at = dst + vo.offset(n, 0, o[0], o[1], o[2]);
      tap_t* tap_at = tap + vt.offset(n, 0, o[0], o[1], o[2]);
      for (const auto c : c10::irange(channels)) {
        out_at[c] = static_cast<scalar_t>(best[c]);
        tap_at[c] = static_cast<tap_t>(best_tap[c]);
      }
    }
  });
}

template <typename scalar_t>
void avg_forward_planes(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout5 vi = layout_of(in), vo = layout_of(out);
  const auto* src = in.const_data_ptr<scalar_t>();
  auto* dst = out.mutable_data_ptr<scalar_t>();
  const int64_t rows = vo.size[0] * vo.size[1] * vo.size[2] * vo.size[3];
  at::parallel_for(0, rows, grain(vo.size[4] * window_taps(g)), [&](int64_t begin, int64_t end) {
    for (const auto r : c10::irange(begin, end)) {
      int64_t o[kDims];
      o[1] = r % vo.size[3];
      o[0] = (r / vo.size[3]) % vo.size[2];
      const int64_t c = (r / (vo.size[3] * vo.size[2])) % vo.size[1];
      const int64_t n = r / (vo.size[3] * vo.size[2] * vo.size[1]);
      Window w[kDims];
      w[0] = window(g, 0, o[0], extent(g, 0, n));
      w[1] = window(g, 1, o[1], extent(g, 1, n));
      const int64_t in_w = extent(g, 2, n);
      const scalar_t* plane = src + vi.offset(n, c, 0, 0, 0);
      for (o[2] = 0; o[2] < vo.size[4]; ++o[2]) {
        w[2] = window(g, 2, o[2], in_w);
        const acc_t sum = window_sum<scalar_t, acc_t>(w, plane, vi.spatial_strides());
        dst[vo.offset(n, c, o[0], o[1], o[2])] =
            static_cast<scalar_t>(sum / static_cast<acc_t>(avg_divisor(g, w, o)));
      }
    }
  });
}

template <typename scalar_t>
void avg_forward_channels(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout5 vi = layout_of(in), vo = layout_of(out);
  const int64_t channels = vo.size[1];
  const auto* src = in.const_data_ptr<scalar_t>();
  auto* dst = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, vo.size[0] * vo.pixels(), grain(channels * window_taps(g)),
                   [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sum(channels);
    for (const auto p : c10::irange(begin, end)) {
      int64_t n, o[kDims];
      unflatten_pixel(p, vo, &n, o);
      Window w[kDims];
      windows_at(g, n, o, w);
      std::fill(sum.begin(), sum.end(), acc_t(0));
      for (int64_t td = 0; td < w[0].count; ++td) {
        for (int64_t th = 0; th < w[1].count; ++th) {
          for (int64_t tw = 0; tw < w[2].count; ++tw) {
            const scalar_t* at =
                src + vi.offset(n, 0, w[0].begin + td * w[0].step, w[1].begin + th * w[1].step,
                                w[2].begin + tw * w[2].step);
            for (const auto c : c10::irange(channels)) {
              sum[c] += static_cast<acc_t>(at[c]);
            }
          }
        }
      }
      const auto divisor = static_cast<acc_t>(avg_divisor(g, w, o));
      scalar_t* out_at = dst + vo.offset(n, 0, o[0], o[1], o[2]);
      for (const auto c : c10::irange(channels)) {
        out_at[c] = static_cast<scalar_t>(sum[c] / divisor);
      }
    }
  });
}

// ---------------------------------------------------------------- backward

// Runs f(n, c, i) for every input cell, a plane row per task.
template <typename F>
void for_input_rows(const Layout5& vg, int64_t cost, const F& f) {
  const int64_t rows = vg.size[0] * vg.size[1] * vg.size[2] * vg.size[3];
  at::parallel_for(0, rows, grain(vg.size[4] * cost), [&](int64_t begin, int64_t end) {
    for (const auto r : c10::irange(begin, end)) {
      int64_t i[kDims];
      i[1] = r % vg.size[3];
      i[0] = (r / vg.size[3]) % vg.size[2];
      const int64_t c = (r / (vg.size[3] * vg.size[2])) % vg.size[1];
      const int64_t n = r / (vg.size[3] * vg.size[2] * vg.size[1]);
      for (i[2] = 0; i[2] < vg.size[4]; ++i[2]) {
        f(n, c, i);
      }
    }
  });
}

// Windows covering one input cell overlap at most this many outputs per dim
// on average; a rough cost for the grain size.
inline int64_t gather_cost(const PoolGeometry& g) {
  int64_t cost = 1;
  for (const auto& d : g.dim) {
    cost *= g.adaptive ? 2 : (d.kernel * d.dilation + d.stride - 1) / d.stride;
  }
  return cost;
}

template <typename scalar_t, typename tap_t>
void max_backward_planes(const PoolGeometry& g, const at::Tensor& grad_out,
                         const at::Tensor& taps, const at::Tensor& grad_in) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout5 vo = layout_of(grad_out), vt = layout_of(taps), vg = layout_of(grad_in);
  const auto* grad = grad_out.const_data_ptr<scalar_t>();
  const auto* tap = taps.const_data_ptr<tap_t>();
  auto* dst = grad_in.mutable_data_ptr<scalar_t>();
  for_input_rows(vg, gather_cost(g), [&](int64_t n, int64_t c, const int64_t* i) {
    const acc_t sum = max_grad_at<scalar_t, tap_t, acc_t>(
        g, n, i, grad + vo.offset(n, c, 0, 0, 0), vo.spatial_strides(),
        tap + vt.offset(n, c, 0, 0, 0), vt.spatial_strides());
    dst[vg.offset(n, c, i[0], i[1], i[2])] = static_cast<scalar_t>(sum);
  });
}

template <typename scalar_t>
void avg_backward_planes(const PoolGeometry& g, const at::Tensor& grad_out,
                         const at::Tensor& grad_in) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout5 vo = layout_of(grad_out), vg = layout_of(grad_in);
  const auto* grad = grad_out.const_data_ptr<scalar_t>();
  auto* dst = grad_in.mutable_data_ptr<scalar_t>();
  for_input_rows(vg, gather_cost(g), [&](int64_t n, int64_t c, const int64_t* i) {
    const acc_t sum = avg_grad_at<scalar_t, acc_t>(g, n, i, grad + vo.offset(n, c, 0, 0, 0),
                                                   vo.spatial_strides());
    dst[vg.offset(n, c, i[0], i[1], i[2])] = static_cast<scalar_t>(sum);
  });
}

// Runs f(n, i, lo, hi, in) for every input pixel, with the ranges of outputs
// covering it.
template <typename F>
void for_input_pixels(const PoolGeometry& g, const Layout5& vg, int64_t cost, const F& f) {
  at::parallel_for(0, vg.size[0] * vg.pixels(), grain(vg.size[1] * cost),
                   [&](int64_t begin, int64_t end) {
    for (const auto p : c10::irange(begin, end)) {
      int64_t n, i[kDims], lo[kDims], hi[kDims], in[kDims];
      unflatten_pixel(p, vg, &n, i);
      for (const auto k : c10::irange(kDims)) {
        in[k] = extent(g, k, n);
        covering(g, k, i[k], in[k], &lo[k], &hi[k]);
      }
      f(n, i, lo, hi, in);
    }
  });
}

template <typename scalar_t, typename tap_t>
void max_backward_channels(const PoolGeometry& g, const at::Tensor& grad_out,
                           const at::Tensor& taps, const at::Tensor& grad_in) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout5 vo = layout_of(grad_out), vt = layout_of(taps), vg = layout_of(grad_in);
  const int64_t channels = vg.size[1];
  const auto* grad = grad_out.const_data_ptr<scalar_t>();
  const auto* tap = taps.const_data_ptr<tap_t>();
  auto* dst = grad_in.mutable_data_ptr<scalar_t>();
  const bool contiguous_grad = vo.stride[1] == 1;
  for_input_pixels(g, vg, gather_cost(g), [&](int64_t n, const int64_t* i, const int64_t* lo,
                                               const int64_t* hi, const int64_t* in) {
    thread_local std::vector<acc_t> sum;
    sum.assign(channels, acc_t(0));
    for (int64_t od = lo[0]; od < hi[0]; ++od) {
      const int64_t td = tap_of(g, 0, od, i[0], in[0]);
      if (td < 0) continue;
      for (int64_t oh = lo[1]; oh < hi[1]; ++oh) {
        const int64_t th = tap_of(g, 1, oh, i[1], in[1]);
        if (th < 0) continue;
        for (int64_t ow = lo[2]; ow < hi[2]; ++ow) {
          const int64_t tw = tap_of(g, 2, ow, i[2], in[2]);
          if (tw < 0) continue;
          const auto code = static_cast<tap_t>(encode_tap(g, td, th, tw));
          const tap_t* t = tap + vt.offset(n, 0, od, oh, ow);
          const scalar_t* gr = grad + vo.offset(n, 0, od, oh, ow);
          if (contiguous_grad) {
            for (const auto c : c10::irange(channels)) {
              sum[c] += t[c] == code ? static_cast<acc_t>(gr[c]) : acc_t(0);
            }
          } else {
            for (const auto c : c10::irange(channels)) {
              sum[c] += t[c] == code ? static_cast<acc_t>(gr[c * vo.stride[1]]) : acc_t(0);
            }
          }
        }
      }
    }
    scalar_t* out_at = dst + vg.offset(n, 0, i[0], i[1], i[2]);
    for (const auto c : c10::irange(channels)) {
      out_at[c] = static_cast<scalar_t>(sum[c]);
    }
  });
}

template <typename scalar_t>
void avg_backward_channels(const PoolGeometry& g, const at::Tensor& grad_out,
                           const at::Tensor& grad_in) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout5 vo = layout_of(grad_out), vg = layout_of(grad_in);
  const int64_t channels = vg.size[1];
  const int64_t cstride = vo.stride[1];
  const auto* grad = grad_out.const_data_ptr<scalar_t>();
  auto* dst = grad_in.mutable_data_ptr<scalar_t>();
  for_input_pixels(g, vg, gather_cost(g), [&](int64_t n, const int64_t* i, const int64_t* lo,
                                               const int64_t* hi, const int64_t* in) {
    thread_local std::vector<acc_t> sum;
    sum.assign(channels, acc_t(0));
    int64_t o[kDims];
    Window w[kDims];
    for (o[0] = lo[0]; o[0] < hi[0]; ++o[0]) {
      w[0] = window(g, 0, o[0], in[0]);
      for (o[1] = lo[1]; o[1] < hi[1]; ++o[1]) {
        w[1] = window(g, 1, o[1], in[1]);
        for (o[2] = lo[2]; o[2] < hi[2]; ++o[2]) {
          w[2] = window(g, 2, o[2], in[2]);
          const auto divisor = static_cast<acc_t>(avg_divisor(g, w, o));
          const scalar_t* gr = grad + vo.offset(n, 0, o[0], o[1], o[2]);
          for (const auto c : c10::irange(channels)) {
            sum[c] += static_cast<acc_t>(gr[c * cstride]) / divisor;
          }
        }
      }
    }
    scalar_t* out_at = dst + vg.offset(n, 0, i[0], i[1], i[2]);
    for (const auto c : c10::irange(channels)) {
      out_at[c] = static_cast<scalar_t>(sum[c]);
    }
  });
}

template <typename tap_t>
void max_indices_kernel(const PoolGeometry& g, const at::Tensor& taps, const at::Tensor& indices) {
  const Layout5 vt = layout_of(taps), vx = layout_of(indices);
  const auto* tap = taps.const_data_ptr<tap_t>();
  auto* dst = indices.mutable_data_ptr<int64_t>();
  const int64_t total = vx.size[0] * vx.size[1] * vx.pixels();
  at::parallel_for(0, total, grain(1), [&](int64_t begin, int64_t end) {
    for (const auto e : c10::irange(begin, end)) {
      int64_t n, c, o[kDims];
      unflatten_element(e, vx, false, &n, &c, o);
      Window w[kDims];
      windows_at(g, n, o, w);
      dst[vx.offset(n, c, o[0], o[1], o[2])] =
          tap_to_index(g, w, static_cast<int64_t>(tap[vt.offset(n, c, o[0], o[1], o[2])]));
    }
  });
}

// Calls f.template operator()<tap_t>() with the saved taps' element type.
struct CpuKernels {
  static void max_forward(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out,
                          const at::Tensor& taps) {
    POOL_EXT_DISPATCH(in.scalar_type(), "max_pool_cpu", [&] {
      dispatch_taps(taps, [&](auto tap_tag) {
        using tap_t = decltype(tap_tag);
        if (channels_inner(in, out) && taps.stride(1) == 1) {
          max_forward_channels<scalar_t, tap_t>(g, in, out, taps);
        } else {
          max_forward_planes<scalar_t, tap_t>(g, in, out, taps);
        }
      });
    });
  }

  static void max_backward(const PoolGeometry& g, const at::Tensor& grad_out,
                           const at::Tensor& taps, const at::Tensor& grad_in) {
    POOL_EXT_DISPATCH(grad_in.scalar_type(), "max_pool_backward_cpu", [&] {
      dispatch_taps(taps, [&](auto tap_tag) {
        using tap_t = decltype(tap_tag);
        if (channels_inner(grad_in, taps)) {
          max_backward_channels<scalar_t, tap_t>(g, grad_out, taps, grad_in);
        } else {
          max_backward_planes<scalar_t, tap_t>(g, grad_out, taps, grad_in);
        }
      });
    });
  }

  static void max_indices(const PoolGeometry& g, const at::Tensor& taps,
                          const at::Tensor& indices) {
    dispatch_taps(taps, [&](auto tap_tag) {
      max_indices_kernel<decltype(tap_tag)>(g, taps, indices);
    });
  }

  static void avg_forward(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out) {
    POOL_EXT_DISPATCH(in.scalar_type(), "avg_pool_cpu", [&] {
      if (channels_inner(in, out)) {
        avg_forward_channels<scalar_t>(g, in, out);
      } else {
        avg_forward_planes<scalar_t>(g, in, out);
      }
    });
  }

  static void avg_backward(const PoolGeometry& g, const at::Tensor& grad_out,
                           const at::Tensor& grad_in) {
    POOL_EXT_DISPATCH(grad_in.scalar_type(), "avg_pool_backward_cpu", [&] {
      if (channels_inner(grad_in, grad_in)) {
        avg_backward_channels<scalar_t>(g, grad_out, grad_in);
      } else {
        avg_backward_planes<scalar_t>(g, grad_out, grad_in);
      }
    });
  }
};

}  // namespace
}  // namespace pool_ext

TORCH_LIBRARY_IMPL(pool_ext, CPU, m) {
  pool_ext::register_ops<pool_ext::CpuKernels>(m);
}
