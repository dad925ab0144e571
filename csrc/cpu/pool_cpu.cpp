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

// The windows of every output along each dim, for one sample. Built once per
// task and rebuilt only when the sample's extents change (variable pooling),
// so the hot loops do no window arithmetic.
struct WindowTable {
  std::vector<Window> dim[kDims];
  int64_t sample = -1;

  void build(const PoolGeometry& g, int64_t n) {
    if (sample >= 0 && (g.sizes == nullptr || sample == n)) {
      return;
    }
    sample = n;
    for (const auto k : c10::irange(kDims)) {
      const int64_t in = extent(g, k, n);
      dim[k].resize(g.dim[k].out);
      for (const auto o : c10::irange(g.dim[k].out)) {
        dim[k][o] = window(g, k, o, in);
      }
    }
  }
};

// Splits a plane-row number into (n, c, d, h).
inline void unflatten_row(int64_t r, const Layout5& v, int64_t* n, int64_t* c, int64_t* x) {
  x[1] = r % v.size[3];
  r /= v.size[3];
  x[0] = r % v.size[2];
  r /= v.size[2];
  *c = r % v.size[1];
  *n = r / v.size[1];
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
    WindowTable table;
    for (const auto r : c10::irange(begin, end)) {
      int64_t n, c, o[kDims];
      unflatten_row(r, vo, &n, &c, o);
      table.build(g, n);
      Window w[kDims] = {table.dim[0][o[0]], table.dim[1][o[1]], {}};
      const scalar_t* plane = src + vi.offset(n, c, 0, 0, 0);
      scalar_t* out_row = dst + vo.offset(n, c, o[0], o[1], 0);
      tap_t* tap_row = tap + vt.offset(n, c, o[0], o[1], 0);
      for (const auto ow : c10::irange(vo.size[4])) {
        w[2] = table.dim[2][ow];
        int64_t t;
        const acc_t best = window_max<scalar_t, acc_t>(g, w, plane, vi.spatial_strides(), &t);
        out_row[ow * vo.stride[4]] = static_cast<scalar_t>(best);
        tap_row[ow * vt.stride[4]] = static_cast<tap_t>(t);
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
    WindowTable table;
    for (const auto r : c10::irange(begin, end)) {
      int64_t n, c, o[kDims];
      unflatten_row(r, vo, &n, &c, o);
      table.build(g, n);
      Window w[kDims] = {table.dim[0][o[0]], table.dim[1][o[1]], {}};
      const scalar_t* plane = src + vi.offset(n, c, 0, 0, 0);
      scalar_t* out_row = dst + vo.offset(n, c, o[0], o[1], 0);
      for (o[2] = 0; o[2] < vo.size[4]; ++o[2]) {
        w[2] = table.dim[2][o[2]];
        const acc_t sum = window_sum<scalar_t, acc_t>(w, plane, vi.spatial_strides());
        out_row[o[2] * vo.stride[4]] =
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

// Windows covering one input cell overlap at most this many outputs per dim
// on average; a rough cost for the grain size.
inline int64_t gather_cost(const PoolGeometry& g) {
  int64_t cost = 1;
  for (const auto& d : g.dim) {
    cost *= g.adaptive ? 2 : (d.kernel * d.dilation + d.stride - 1) / d.stride;
  }
  return cost;
}

// Planes backward. Each (n, c) plane belongs to one thread, which spreads
// every output's gradient over the plane in output order, in acc_t: for each
// input cell that is the sum the GPU's gather forms, in the same order, so
// the two agree bit for bit, and no two threads touch one cell. Planes too
// large for a scratch buffer gather cell by cell instead.
constexpr int64_t kMaxScratchPlane = int64_t{1} << 22;

template <typename scalar_t, typename Spread>
void backward_planes(const PoolGeometry& g, const at::Tensor& grad_out, const at::Tensor& grad_in,
                     const Spread& spread) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout5 vo = layout_of(grad_out), vg = layout_of(grad_in);
  const int64_t plane_size = vg.pixels();
  const auto* grad = grad_out.const_data_ptr<scalar_t>();
  auto* dst = grad_in.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, vg.size[0] * vg.size[1], grain(plane_size + vo.pixels() * gather_cost(g)),
                   [&](int64_t begin, int64_t end) {
    WindowTable table;
    std::vector<acc_t> sum(plane_size);
    for (const auto p : c10::irange(begin, end)) {
      const int64_t n = p / vg.size[1], c = p % vg.size[1];
      table.build(g, n);
      std::fill(sum.begin(), sum.end(), acc_t(0));
      const scalar_t* grad_plane = grad + vo.offset(n, c, 0, 0, 0);
      int64_t o[kDims];
      Window w[kDims];
      for (o[0] = 0; o[0] < vo.size[2]; ++o[0]) {
        w[0] = table.dim[0][o[0]];
        for (o[1] = 0; o[1] < vo.size[3]; ++o[1]) {
          w[1] = table.dim[1][o[1]];
          for (o[2] = 0; o[2] < vo.size[4]; ++o[2]) {
            w[2] = table.dim[2][o[2]];
            const auto go = static_cast<acc_t>(
                grad_plane[o[0] * vo.stride[2] + o[1] * vo.stride[3] + o[2] * vo.stride[4]]);
            spread(n, c, o, w, go, sum.data());
          }
        }
      }
      int64_t cell = 0;
      for (const auto d : c10::irange(vg.size[2])) {
        for (const auto h : c10::irange(vg.size[3])) {
          scalar_t* row = dst + vg.offset(n, c, d, h, 0);
          for (const auto x : c10::irange(vg.size[4])) {
            row[x * vg.stride[4]] = static_cast<scalar_t>(sum[cell++]);
          }
        }
      }
    }
  });
}

// Gathers every input cell of the planes through f(n, c, i) (pool.h's element
// functions, as the GPU runs them), a plane row per task.
template <typename scalar_t, typename F>
void gather_planes(const PoolGeometry& g, const at::Tensor& grad_in, const F& f) {
  const Layout5 vg = layout_of(grad_in);
  auto* dst = grad_in.mutable_data_ptr<scalar_t>();
  const int64_t rows = vg.size[0] * vg.size[1] * vg.size[2] * vg.size[3];
  at::parallel_for(0, rows, grain(vg.size[4] * gather_cost(g)), [&](int64_t begin, int64_t end) {
    for (const auto r : c10::irange(begin, end)) {
      int64_t n, c, i[kDims];
      unflatten_row(r, vg, &n, &c, i);
      for (i[2] = 0; i[2] < vg.size[4]; ++i[2]) {
        dst[vg.offset(n, c, i[0], i[1], i[2])] = static_cast<scalar_t>(f(n, c, i));
      }
    }
  });
}

template <typename scalar_t, typename tap_t>
void max_backward_planes(const PoolGeometry& g, const at::Tensor& grad_out,
                         const at::Tensor& taps, const at::Tensor& grad_in) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout5 vo = layout_of(grad_out), vt = layout_of(taps);
  const auto* tap = taps.const_data_ptr<tap_t>();
  if (layout_of(grad_in).pixels() > kMaxScratchPlane) {
    const auto* grad = grad_out.const_data_ptr<scalar_t>();
    gather_planes<scalar_t>(g, grad_in, [&](int64_t n, int64_t c, const int64_t* i) {
      return max_grad_at<scalar_t, tap_t, acc_t>(g, n, i, grad + vo.offset(n, c, 0, 0, 0),
                                                 vo.spatial_strides(),
                                                 tap + vt.offset(n, c, 0, 0, 0),
                                                 vt.spatial_strides());
    });
    return;
  }
  backward_planes<scalar_t>(g, grad_out, grad_in,
                            [&](int64_t n, int64_t c, const int64_t* o, const Window* w,
                                acc_t go, acc_t* sum) {
    const auto t = static_cast<int64_t>(tap[vt.offset(n, c, o[0], o[1], o[2])]);
    sum[tap_to_index(g, w, t)] += go;
  });
}

template <typename scalar_t>
void avg_backward_planes(const PoolGeometry& g, const at::Tensor& grad_out,
                         const at::Tensor& grad_in) {
  using acc_t = at::opmath_type<scalar_t>;
  if (layout_of(grad_in).pixels() > kMaxScratchPlane) {
    const Layout5 vo = layout_of(grad_out);
    const auto* grad = grad_out.const_data_ptr<scalar_t>();
    gather_planes<scalar_t>(g, grad_in, [&](int64_t n, int64_t c, const int64_t* i) {
      return avg_grad_at<scalar_t, acc_t>(g, n, i, grad + vo.offset(n, c, 0, 0, 0),
                                          vo.spatial_strides());
    });
    return;
  }
  const int64_t plane_h = g.dim[1].in, plane_w = g.dim[2].in;
  backward_planes<scalar_t>(g, grad_out, grad_in,
                            [&](int64_t, int64_t, const int64_t* o, const Window* w, acc_t go,
                                acc_t* sum) {
    const acc_t share = go / static_cast<acc_t>(avg_divisor(g, w, o));
    for (int64_t td = 0; td < w[0].count; ++td) {
      for (int64_t th = 0; th < w[1].count; ++th) {
        acc_t* row = sum + ((w[0].begin + td * w[0].step) * plane_h + w[1].begin +
                            th * w[1].step) * plane_w + w[2].begin;
        for (int64_t tw = 0; tw < w[2].count; ++tw) {
          row[tw * w[2].step] += share;
        }
      }
    }
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
