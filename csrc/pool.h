// The arithmetic of every pooling op, shared by the CPU and CUDA kernels.
//
// All ops see their input as (N, C, D, H, W): 1d and 2d pooling put size-1
// dims in front. A window is described per spatial dim; fixed windows come
// from kernel/stride/padding/dilation, adaptive windows from input and output
// extents (per sample for variable pooling). Everything here is plain integer
// arithmetic, usable on host and device, so the CPU tests exercise exactly
// the logic the GPU runs.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/bit_cast.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <type_traits>

namespace pool_ext {

constexpr int kDims = 3;  // spatial dims every kernel sees: D, H, W

// Marks a condition as a coin toss, so host compilers select (cmov, blend)
// instead of branching on it.
#if defined(__GNUC__) && !defined(__CUDA_ARCH__) && !defined(__clang__)
#define POOL_EXT_UNPREDICTABLE(cond) __builtin_expect_with_probability(!!(cond), 1, 0.5)
#else
#define POOL_EXT_UNPREDICTABLE(cond) (cond)
#endif

// Floor and ceil of a / b for b > 0 and any sign of a.
C10_HOST_DEVICE inline int64_t div_floor(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}
C10_HOST_DEVICE inline int64_t div_ceil(int64_t a, int64_t b) {
  return -div_floor(-a, b);
}
C10_HOST_DEVICE inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
C10_HOST_DEVICE inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// torch's output size of a fixed window: the last window must start inside
// the input or its left padding when ceil_mode rounds up.
C10_HOST_DEVICE inline int64_t pooled_size(int64_t in, int64_t kernel, int64_t stride,
                                           int64_t pad, int64_t dilation, bool ceil_mode) {
  const int64_t span = in + 2 * pad - dilation * (kernel - 1) - 1;
  int64_t out = div_floor(span + (ceil_mode ? stride - 1 : 0), stride) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) {
    --out;
  }
  return out;
}

// TensorFlow's "same" padding: ceil(in / stride) windows, the padding split
// with the odd cell at the end.
C10_HOST_DEVICE inline int64_t same_size(int64_t in, int64_t stride) {
  return div_ceil(in, stride);
}
C10_HOST_DEVICE inline int64_t same_pad_total(int64_t in, int64_t kernel, int64_t stride,
                                              int64_t dilation) {
  const int64_t out = same_size(in, stride);
  return max64((out - 1) * stride + dilation * (kernel - 1) + 1 - in, 0);
}

// Largest window an adaptive pooling of `in` cells to `out` can have.
// Divisible extents give equal windows; otherwise a window spans at most
// floor(in / out) + 2 cells.
C10_HOST_DEVICE inline int64_t adaptive_max_window(int64_t in, int64_t out, bool variable) {
  return (!variable && in % out == 0) ? in / out : in / out + 2;
}

// Whether adaptive pooling of `in` cells to `out` has windows of one size at
// one stride, and so is a fixed pooling: windows [o*s, o*s + k) with s =
// in / out and k = s (divisible) or s + 1 (in % out == 1: the o-th window
// then ends at ceil((o+1)*s + (o+1)/out) = (o+1)*s + 1). 13 -> 6 pools 3x3
// windows at stride 2.
C10_HOST_DEVICE inline bool adaptive_is_fixed(int64_t in, int64_t out) {
  return out >= 1 && in >= out && in % out <= 1;
}

// The kernel of such a pooling (its stride is in / out).
C10_HOST_DEVICE inline int64_t adaptive_fixed_kernel(int64_t in, int64_t out) {
  return in / out + in % out;
}

// One spatial dim of a pooling.
struct PoolDim {
  int64_t in;        // input extent (the padded extent for variable pooling)
  int64_t out;       // output extent
  int64_t kernel;    // taps of a fixed window; the most cells of an adaptive one
  int64_t stride;
  int64_t pad;       // cells of padding before the input
  int64_t pad_end;   // cells of padding after it (bounds count_include_pad)
  int64_t dilation;
};

struct PoolGeometry {
  PoolDim dim[kDims];
  bool adaptive;
  bool count_include_pad;
  int64_t divisor_override;  // 0: none
  // Variable pooling: per-sample extents, int64 (N, ndim) contiguous, or null.
  const int64_t* sizes;
  int ndim;  // spatial dims of the op (1..3): the last ndim of D, H, W
  // An adaptive op (adaptive or variable pooling): unlike `adaptive`, not
  // set for fixed pooling run on the adaptive kernels (its windows tiling
  // the input), nor cleared for adaptive pooling run as fixed.
  bool adaptive_op;
};

// Global pooling: adaptive, output size 1 in every dim (each window is the
// sample's whole extent).
C10_HOST_DEVICE inline bool is_global(const PoolGeometry& g) {
  return g.adaptive && g.dim[0].out == 1 && g.dim[1].out == 1 && g.dim[2].out == 1;
}

// torch's mean: an adaptive average to one cell (per sample, for variable
// pooling), whose gradient, grad / cells, keeps a -0, where the gradients of
// other averages (fixed ones with one window over the input too) are sums
// from +0.
C10_HOST_DEVICE inline bool is_mean(const PoolGeometry& g) {
  return g.adaptive_op && is_global(g);
}

// Where the gather's sum for an input cell starts (avg_grad_lanes; the CPU's
// global shares): -0 for a mean's covered cell, so that its one term, a -0
// share, stays -0, as torch's mean's gradient (grad / cells) keeps it; +0
// elsewhere, as torch's other averages' gradients (zeros, each term added),
// and for cells no window covers (variable pooling's padding).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t gather_start(const PoolGeometry& g, bool covered) {
  return is_mean(g) && covered ? acc_t(-0.0) : acc_t(0);
}

// Every window one cell, the output the input's shape: adaptive pooling to
// the input's own size (VGG's 7x7 head on 224x224 images), or kernel 1 at
// stride 1. The ops then copy (csrc/pool_ops.h).
C10_HOST_DEVICE inline bool is_identity(const PoolGeometry& g) {
  if (g.sizes != nullptr || (g.divisor_override != 0 && g.divisor_override != 1)) {
    return false;
  }
  for (int k = 0; k < kDims; ++k) {
    const PoolDim& d = g.dim[k];
    if (d.in != d.out ||
        !(g.adaptive || (d.kernel == 1 && d.stride == 1 && d.pad == 0 && d.dilation == 1))) {
      return false;
    }
  }
  return true;
}

// The cells of one window in one dim: positions begin + t * step for t in
// [0, count), the t-th being tap first_tap + t of the window.
struct Window {
  int64_t begin;
  int64_t step;
  int64_t count;
  int64_t first_tap;
};

// Input extent of dim k for sample n. A sample's size is clamped to
// [1, padded extent]: the forwards check sizes on the host, but not while a
// CUDA graph is captured (reading them would sync the stream), nor do the
// backward and indices ops (which take a checked forward's); there the clamp
// is what keeps every window inside the input.
C10_HOST_DEVICE inline int64_t extent(const PoolGeometry& g, int k, int64_t n) {
  const int first = kDims - g.ndim;
  if (g.sizes != nullptr && k >= first) {
    return min64(max64(g.sizes[n * g.ndim + (k - first)], 1), g.dim[k].in);
  }
  return g.dim[k].in;
}

// Adaptive window o of `in` cells pooled to `out`: [floor(o*in/out), ceil((o+1)*in/out)).
C10_HOST_DEVICE inline Window adaptive_window(int64_t in, int64_t out, int64_t o) {
  const int64_t begin = (o * in) / out;
  const int64_t end = ((o + 1) * in + out - 1) / out;
  return {begin, 1, end - begin, 0};
}

// Fixed window o, clipped to the input.
C10_HOST_DEVICE inline Window fixed_window(const PoolDim& d, int64_t o) {
  const int64_t start = o * d.stride - d.pad;
  const int64_t first = start < 0 ? div_ceil(-start, d.dilation) : 0;
  const int64_t last = min64(d.kernel, div_ceil(d.in - start, d.dilation));
  return {start + first * d.dilation, d.dilation, max64(last - first, 0), first};
}

C10_HOST_DEVICE inline Window window(const PoolGeometry& g, int k, int64_t o, int64_t in) {
  return g.adaptive ? adaptive_window(in, g.dim[k].out, o) : fixed_window(g.dim[k], o);
}

// The windows of output o (all three dims) of sample n.
C10_HOST_DEVICE inline void windows_at(const PoolGeometry& g, int64_t n, const int64_t* o,
                                       Window* w) {
  for (int k = 0; k < kDims; ++k) {
    w[k] = window(g, k, o[k], extent(g, k, n));
  }
}

// Per-dim tables: the window of every output and the span of outputs
// covering every input cell, for one sample, or for each sample of variable
// pooling. Filled once per call from the functions above; the hot loops read
// them and do no division.
struct Span {
  int64_t lo;
  int64_t hi;
};

struct PoolTables {
  Window* windows;  // [samples][out_total]
  Span* covering;   // [samples][in_total]
  int64_t out_begin[kDims];  // where dim k starts inside one sample's block
  int64_t in_begin[kDims];
  int64_t out_total;
  int64_t in_total;
  int64_t samples;
  bool per_sample;
};

// Sizes the tables of g for a batch of n samples (pointers left to the caller).
inline PoolTables table_layout(const PoolGeometry& g, int64_t n) {
  PoolTables t{};
  for (int k = 0; k < kDims; ++k) {
    t.out_begin[k] = t.out_total;
    t.in_begin[k] = t.in_total;
    t.out_total += g.dim[k].out;
    t.in_total += g.dim[k].in;
  }
  t.per_sample = g.sizes != nullptr;
  t.samples = t.per_sample ? n : 1;
  return t;
}

C10_HOST_DEVICE inline int64_t table_entries(const PoolTables& t) {
  return t.samples * (t.out_total + t.in_total);
}

C10_HOST_DEVICE inline const Window& table_window(const PoolTables& t, int64_t n, int k,
                                                  int64_t o) {
  return t.windows[(t.per_sample ? n : 0) * t.out_total + t.out_begin[k] + o];
}

C10_HOST_DEVICE inline Span table_covering(const PoolTables& t, int64_t n, int k, int64_t i) {
  return t.covering[(t.per_sample ? n : 0) * t.in_total + t.in_begin[k] + i];
}

// The outputs whose windows may hold input cell i: [*lo, *hi).
C10_HOST_DEVICE inline void covering(const PoolGeometry& g, int k, int64_t i, int64_t in,
                                     int64_t* lo, int64_t* hi) {
  const PoolDim& d = g.dim[k];
  if (g.adaptive) {
    if (i >= in) {  // padding of a variable-size sample: no window holds it
      *lo = *hi = 0;
      return;
    }
    *lo = (i * d.out) / in;
    *hi = min64(((i + 1) * d.out + in - 1) / in, d.out);
  } else {
    *lo = max64(div_ceil(i + d.pad - (d.kernel - 1) * d.dilation, d.stride), 0);
    *hi = min64(div_floor(i + d.pad, d.stride) + 1, d.out);
  }
}

// Fills entry e of the tables (0 <= e < table_entries(t)).
C10_HOST_DEVICE inline void fill_table_entry(const PoolGeometry& g, const PoolTables& t,
                                             int64_t e) {
  const int64_t per_sample = t.out_total + t.in_total;
  const int64_t n = e / per_sample;
  int64_t r = e % per_sample;
  if (r < t.out_total) {
    int k = 0;
    while (r >= t.out_begin[k] + g.dim[k].out) ++k;
    t.windows[n * t.out_total + r] = window(g, k, r - t.out_begin[k], extent(g, k, n));
  } else {
    r -= t.out_total;
    int k = 0;
    while (r >= t.in_begin[k] + g.dim[k].in) ++k;
    Span span;
    covering(g, k, r - t.in_begin[k], extent(g, k, n), &span.lo, &span.hi);
    t.covering[n * t.in_total + r] = span;
  }
}

// Tap of input cell i in window w, which covers it, or -1 when a dilated
// window steps over it.
C10_HOST_DEVICE inline int64_t tap_in(const Window& w, int64_t i) {
  const int64_t offset = i - w.begin;
  if (w.step == 1) {
    return w.first_tap + offset;
  }
  return offset % w.step == 0 ? w.first_tap + offset / w.step : -1;
}

// A window's taps are numbered row-major over the per-dim tap counts; this
// number, not a flat input index, is what max pooling saves for backward.
C10_HOST_DEVICE inline int64_t encode_tap(const PoolGeometry& g, int64_t td, int64_t th,
                                          int64_t tw) {
  return (td * g.dim[1].kernel + th) * g.dim[2].kernel + tw;
}

C10_HOST_DEVICE inline int64_t window_taps(const PoolGeometry& g) {
  return g.dim[0].kernel * g.dim[1].kernel * g.dim[2].kernel;
}

// Position in dim k of tap t of window w.
C10_HOST_DEVICE inline int64_t tap_position(const Window& w, int64_t t) {
  return w.begin + (t - w.first_tap) * w.step;
}

// Flat cell numbers in the (padded) D*H*W plane, torch's index format. A
// window's tap t sits at window_origin(w) + tap_offset(t): the origin is
// where tap 0 would be (possibly in padding), the offset depends on the tap
// alone, so kernels can tabulate it.
C10_HOST_DEVICE inline int64_t window_origin(const PoolGeometry& g, const Window* w) {
  const int64_t d = w[0].begin - w[0].first_tap * w[0].step;
  const int64_t h = w[1].begin - w[1].first_tap * w[1].step;
  const int64_t x = w[2].begin - w[2].first_tap * w[2].step;
  return (d * g.dim[1].in + h) * g.dim[2].in + x;
}

C10_HOST_DEVICE inline int64_t tap_offset(const PoolGeometry& g, int64_t tap) {
  const int64_t kw = g.dim[2].kernel;
  const int64_t kh = g.dim[1].kernel;
  const int64_t td = tap / (kh * kw), th = (tap / kw) % kh, tw = tap % kw;
  return (td * g.dim[0].dilation * g.dim[1].in + th * g.dim[1].dilation) * g.dim[2].in +
         tw * g.dim[2].dilation;
}

// Flat index of the saved tap of window w.
C10_HOST_DEVICE inline int64_t tap_to_index(const PoolGeometry& g, const Window* w, int64_t tap) {
  return window_origin(g, w) + tap_offset(g, tap);
}

// The divisor of average window o: divisor_override, or the cells of the
// window, counting padding when count_include_pad asks for it (torch's rule:
// padding after the input counts up to pad_end only).
C10_HOST_DEVICE inline int64_t avg_divisor(const PoolGeometry& g, const Window* w,
                                           const int64_t* o) {
  if (g.divisor_override != 0) {
    return g.divisor_override;
  }
  int64_t cells = 1;
  for (int k = 0; k < kDims; ++k) {
    const PoolDim& d = g.dim[k];
    if (g.adaptive || !g.count_include_pad) {
      cells *= w[k].count;
    } else {
      const int64_t start = o[k] * d.stride - d.pad;
      cells *= min64(start + d.kernel, d.in + d.pad_end) - start;
    }
  }
  return cells;
}

// Sizes and strides of an (N, C, D, H, W) view.
struct Layout5 {
  int64_t size[5];
  int64_t stride[5];
  C10_HOST_DEVICE int64_t offset(int64_t n, int64_t c, int64_t d, int64_t h, int64_t w) const {
    return n * stride[0] + c * stride[1] + d * stride[2] + h * stride[3] + w * stride[4];
  }
  C10_HOST_DEVICE const int64_t* spatial_strides() const { return stride + 2; }
  C10_HOST_DEVICE int64_t pixels() const { return size[2] * size[3] * size[4]; }
};

// Splits a flat (n, d, h, w) pixel number: the CPU kernels' cursors (the
// GPU kernels split theirs with pool_kernels.h's ElementSplit).
template <typename index_t>
C10_HOST_DEVICE inline void unflatten_pixel(index_t p, const Layout5& v, int64_t* n, int64_t* x) {
  const auto w = static_cast<index_t>(v.size[4]);
  const auto h = static_cast<index_t>(v.size[3]);
  const auto d = static_cast<index_t>(v.size[2]);
  x[2] = p % w;
  p /= w;
  x[1] = p % h;
  p /= h;
  x[0] = p % d;
  *n = p / d;
}

// Element functions: one output of a forward, one input cell of a backward.
// `at` points at a (D, H, W) plane and `s` holds its three strides.

template <typename acc_t>
C10_HOST_DEVICE inline bool max_takes(acc_t v, acc_t best) {
  // torch's rule: a larger value or any NaN replaces the max, so ties keep
  // the first tap and NaN propagates. `|`, not `||`: no branch in the hot loop.
  return (v > best) | (v != v);
}

// Whether (v, tap) replaces (best, best_tap) when merging the maxima of two
// scans (max_takes, in tap order) over disjoint cells of one window, in any
// order: the scans' rule made order-free. A NaN beats any number, and the
// later NaN wins, as it does in one scan; otherwise the larger value, and on
// ties the earlier tap. A tap below 0 marks a scan that saw no cell.
template <typename acc_t>
C10_HOST_DEVICE inline bool max_merge_takes(acc_t v, int64_t tap, acc_t best, int64_t best_tap) {
  if (tap < 0 || best_tap < 0) {
    return best_tap < 0 && tap >= 0;
  }
  const bool nan = v != v, best_nan = best != best;
  if (nan || best_nan) {
    return nan && (!best_nan || tap > best_tap);
  }
  return v > best || (v == best && tap < best_tap);
}

// Pointer steps of a window: its first cell and the distance between taps.
struct WindowWalk {
  int64_t first;
  int64_t step[kDims];
};

C10_HOST_DEVICE inline WindowWalk walk(const Window* w, const int64_t* s) {
  return {w[0].begin * s[0] + w[1].begin * s[1] + w[2].begin * s[2],
          {w[0].step * s[0], w[1].step * s[1], w[2].step * s[2]}};
}

// The V channels (lanes) of a GPU thread's cell: side by side in memory, a
// channels-last tensor's, loaded and stored as one access of up to 16 bytes
// (aligned as one); else gathered one by one (load_lanes). Everything below
// works on packs of V lanes, each lane exactly as a lone value would be; the
// CPU kernels use V = 1.
template <typename T, int V>
struct alignas(sizeof(T) * V < 16 ? sizeof(T) * V : 16) Pack {
  T v[V];
};

// On the host (the CPU kernels, and the tests' run of the GPU's work) a
// misaligned pack throws: the kernels' choice of V must rule it out.
template <int V, typename T>
C10_HOST_DEVICE inline void check_pack(const T* p) {
#ifndef __CUDA_ARCH__
  if constexpr (V > 1) {
    if (reinterpret_cast<uintptr_t>(p) % alignof(Pack<T, V>) != 0) {
      throw std::logic_error("pool_ext: a pack of channels is not aligned");
    }
  }
#endif
}

template <int V, typename T>
C10_HOST_DEVICE inline Pack<T, V> load_pack(const T* p) {
  check_pack<V>(p);
#ifdef __CUDA_ARCH__
  return *reinterpret_cast<const Pack<T, V>*>(p);
#else
  Pack<T, V> pack;
  std::memcpy(&pack, p, sizeof(pack));
  return pack;
#endif
}

#ifdef __CUDA_ARCH__
// The unsigned word of a GPU store of N bytes (1 to 16).
template <int N>
struct StoreWord;
template <>
struct StoreWord<1> { using type = unsigned char; };
template <>
struct StoreWord<2> { using type = unsigned short; };
template <>
struct StoreWord<4> { using type = unsigned int; };
template <>
struct StoreWord<8> { using type = uint2; };
template <>
struct StoreWord<16> { using type = uint4; };
#endif

template <int V, typename T>
C10_HOST_DEVICE inline void store_pack(T* p, const Pack<T, V>& pack) {
  check_pack<V>(p);
#ifdef __CUDA_ARCH__
  if constexpr (V == 1) {
    *p = pack.v[0];
  } else {
    // As words of up to 16 bytes, by __stwb: a plain store of the pack
    // compiled to one store per lane (PTX), a vector store only through it.
    constexpr int kBytes = sizeof(pack) < 16 ? static_cast<int>(sizeof(pack)) : 16;
    using Word = typename StoreWord<kBytes>::type;
    Word words[sizeof(pack) / kBytes];
    memcpy(words, &pack, sizeof(pack));
    for (int i = 0; i < static_cast<int>(sizeof(pack) / kBytes); ++i) {
      __stwb(reinterpret_cast<Word*>(p) + i, words[i]);
    }
  }
#else
  std::memcpy(p, &pack, sizeof(pack));
#endif
}

// V lanes from p: the channels a GPU thread takes. Side by side (a
// channels-last pack, where the kernels' choice of V ensures the alignment:
// pool_kernels.h's channel_lanes), one access of up to 16 bytes; else ls
// elements apart (the channels of an NCHW tensor, a plane apart), one
// access a lane, each coalesced with the neighbouring threads' (their
// neighbouring cells). The lane stride's type says which, so that each
// kernel compiles one of the two.
struct SideBySide {};

template <int V, typename T>
C10_HOST_DEVICE inline Pack<T, V> load_lanes(const T* p, SideBySide) {
  return load_pack<V>(p);
}

template <int V, typename T>
C10_HOST_DEVICE inline Pack<T, V> load_lanes(const T* p, int64_t ls) {
  Pack<T, V> pack;
  for (int u = 0; u < V; ++u) pack.v[u] = p[u * ls];
  return pack;
}

template <int V, typename T>
C10_HOST_DEVICE inline void store_lanes(T* p, SideBySide, const Pack<T, V>& pack) {
  store_pack<V>(p, pack);
}

template <int V, typename T>
C10_HOST_DEVICE inline void store_lanes(T* p, int64_t ls, const Pack<T, V>& pack) {
  for (int u = 0; u < V; ++u) p[u * ls] = pack.v[u];
}

// The widening and narrowing of the element functions, with the CPU's NaNs:
// the CPU kernels' (and torch's CPU) float16 NaN keeps its sign and payload
// (quietened, as x86's conversions do), a bfloat16 NaN becomes 0x7fc0
// (c10's). A GPU's conversions make every NaN canonical (0x7fffffff, 0x7fff):
// on an H200 the maxima of float16 and bfloat16 NaN cells differed from
// torch's.
template <typename acc_t, typename T>
C10_HOST_DEVICE inline acc_t widen_value(T v) {
#ifdef __CUDA_ARCH__  // (on the host, x86's conversion keeps them)
  if constexpr (std::is_same_v<T, c10::Half> && std::is_same_v<acc_t, float>) {
    const uint32_t h = v.x;
    if ((h & 0x7fffu) > 0x7c00u) {
      return c10::bit_cast<float>(((h & 0x8000u) << 16) | 0x7fc00000u | ((h & 0x3ffu) << 13));
    }
  }
#endif
  return static_cast<acc_t>(v);
}

template <typename T, typename acc_t>
C10_HOST_DEVICE inline T narrow_value(acc_t v) {
  constexpr bool is_half = std::is_same_v<T, c10::Half>;
  if constexpr (std::is_same_v<acc_t, float> && (is_half || std::is_same_v<T, c10::BFloat16>)) {
    if (v != v) {
      const auto bits = c10::bit_cast<uint32_t>(v);
      const auto narrow = static_cast<uint16_t>(
          is_half ? ((bits >> 16) & 0x8000u) | 0x7e00u | ((bits >> 13) & 0x3ffu) : 0x7fc0u);
      return T(narrow, T::from_bits());
    }
  }
  return static_cast<T>(v);
}

// The max of window w in each of V lanes (ls: their stride, as load_lanes
// takes it) and its tap (window_max per lane).
template <int V, typename scalar_t, typename acc_t, typename L>
C10_HOST_DEVICE inline void window_max_lanes(const PoolGeometry& g, const Window* w,
                                             const scalar_t* at, const int64_t* s, L ls,
                                             acc_t* best, int64_t* tap) {
  const WindowWalk k = walk(w, s);
  const int64_t kh = g.dim[1].kernel, kw = g.dim[2].kernel;
  const int64_t first_tap = encode_tap(g, w[0].first_tap, w[1].first_tap, w[2].first_tap);
  for (int u = 0; u < V; ++u) {
    best[u] = -std::numeric_limits<acc_t>::infinity();
    tap[u] = first_tap;
  }
  const scalar_t* pd = at + k.first;
  for (int64_t td = 0; td < w[0].count; ++td, pd += k.step[0]) {
    const scalar_t* ph = pd;
    for (int64_t th = 0; th < w[1].count; ++th, ph += k.step[1]) {
      const int64_t row_tap =
          ((w[0].first_tap + td) * kh + w[1].first_tap + th) * kw + w[2].first_tap;
      for (int64_t tw = 0; tw < w[2].count; ++tw) {
        const Pack<scalar_t, V> cell = load_lanes<V>(ph + tw * k.step[2], ls);
        for (int u = 0; u < V; ++u) {
          // Selects rather than branches: a data-dependent branch mispredicts
          // on every new max.
          const auto v = widen_value<acc_t>(cell.v[u]);
          const bool takes = POOL_EXT_UNPREDICTABLE(max_takes(v, best[u]));
          best[u] = takes ? v : best[u];
          tap[u] = takes ? row_tap + tw : tap[u];
        }
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t window_max(const PoolGeometry& g, const Window* w,
                                        const scalar_t* at, const int64_t* s, int64_t* tap) {
  acc_t best;
  window_max_lanes<1, scalar_t, acc_t>(g, w, at, s, SideBySide{}, &best, tap);
  return best;
}

// Calls f(pack) for the cells of window w, V lanes (ls: their stride) at a
// time, in tap order.
template <int V, typename scalar_t, typename L, typename F>
C10_HOST_DEVICE inline void for_window_packs(const Window* w, const scalar_t* at, const int64_t* s,
                                             L ls, const F& f) {
  const WindowWalk k = walk(w, s);
  const scalar_t* pd = at + k.first;
  for (int64_t td = 0; td < w[0].count; ++td, pd += k.step[0]) {
    const scalar_t* ph = pd;
    for (int64_t th = 0; th < w[1].count; ++th, ph += k.step[1]) {
      for (int64_t tw = 0; tw < w[2].count; ++tw) {
        f(load_lanes<V>(ph + tw * k.step[2], ls));
      }
    }
  }
}

// Calls f(value) for the cells of window w, in tap order.
template <typename scalar_t, typename F>
C10_HOST_DEVICE inline void for_window_cells(const Window* w, const scalar_t* at, const int64_t* s,
                                             const F& f) {
  for_window_packs<1>(w, at, s, SideBySide{},
                      [&](const Pack<scalar_t, 1>& cell) { f(cell.v[0]); });
}

template <int V, typename scalar_t, typename acc_t, typename L>
C10_HOST_DEVICE inline void window_sum_lanes(const Window* w, const scalar_t* at, const int64_t* s,
                                             L ls, acc_t* sum) {
  for (int u = 0; u < V; ++u) sum[u] = 0;
  for_window_packs<V>(w, at, s, ls, [&](const Pack<scalar_t, V>& cell) {
    for (int u = 0; u < V; ++u) sum[u] += static_cast<acc_t>(cell.v[u]);
  });
}

template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t window_sum(const Window* w, const scalar_t* at, const int64_t* s) {
  acc_t sum;
  window_sum_lanes<1, scalar_t, acc_t>(w, at, s, SideBySide{}, &sum);
  return sum;
}

// Gradient of max pooling at input cell i (sample n) in each of V lanes:
// the sum, in output order, of the gradients of the outputs whose saved tap
// is this cell. (gs, ts: the spatial strides of grad and taps; gl, tl: their
// lane strides.)
template <int V, typename scalar_t, typename tap_t, typename acc_t, typename L>
C10_HOST_DEVICE inline void max_grad_lanes(const PoolGeometry& g, const PoolTables& t, int64_t n,
                                           const int64_t* i, const scalar_t* grad,
                                           const int64_t* gs, L gl, const tap_t* taps,
                                           const int64_t* ts, L tl, acc_t* sum) {
  const Span sd = table_covering(t, n, 0, i[0]);
  const Span sh = table_covering(t, n, 1, i[1]);
  const Span sw = table_covering(t, n, 2, i[2]);
  for (int u = 0; u < V; ++u) sum[u] = 0;
  for (int64_t od = sd.lo; od < sd.hi; ++od) {
    const int64_t td = tap_in(table_window(t, n, 0, od), i[0]);
    if (td < 0) continue;
    for (int64_t oh = sh.lo; oh < sh.hi; ++oh) {
      const int64_t th = tap_in(table_window(t, n, 1, oh), i[1]);
      if (th < 0) continue;
      const int64_t row_tap = (td * g.dim[1].kernel + th) * g.dim[2].kernel;
      for (int64_t ow = sw.lo; ow < sw.hi; ++ow) {
        const int64_t tw = tap_in(table_window(t, n, 2, ow), i[2]);
        if (tw < 0) continue;
        const Pack<tap_t, V> saved =
            load_lanes<V>(taps + od * ts[0] + oh * ts[1] + ow * ts[2], tl);
        bool mine[V];
        bool any = false;
        for (int u = 0; u < V; ++u) {
          mine[u] = static_cast<int64_t>(saved.v[u]) == row_tap + tw;
          any |= mine[u];
        }
        if (!any) continue;  // no gradient to read
        const Pack<scalar_t, V> go =
            load_lanes<V>(grad + od * gs[0] + oh * gs[1] + ow * gs[2], gl);
        for (int u = 0; u < V; ++u) {
          if (mine[u]) sum[u] += static_cast<acc_t>(go.v[u]);
        }
      }
    }
  }
}

// Gradient of average pooling at input cell i (sample n) in each of V lanes.
template <int V, typename scalar_t, typename acc_t, typename L>
C10_HOST_DEVICE inline void avg_grad_lanes(const PoolGeometry& g, const PoolTables& t, int64_t n,
                                           const int64_t* i, const scalar_t* grad,
                                           const int64_t* gs, L gl, acc_t* sum) {
  Span span[kDims];
  bool covered = true;
  for (int k = 0; k < kDims; ++k) {
    span[k] = table_covering(t, n, k, i[k]);
    covered = covered && span[k].lo < span[k].hi;
  }
  const acc_t start = gather_start<acc_t>(g, covered);
  for (int u = 0; u < V; ++u) sum[u] = start;
  int64_t o[kDims];
  Window w[kDims];
  for (o[0] = span[0].lo; o[0] < span[0].hi; ++o[0]) {
    w[0] = table_window(t, n, 0, o[0]);
    for (o[1] = span[1].lo; o[1] < span[1].hi; ++o[1]) {
      w[1] = table_window(t, n, 1, o[1]);
      for (o[2] = span[2].lo; o[2] < span[2].hi; ++o[2]) {
        w[2] = table_window(t, n, 2, o[2]);
        const auto divisor = static_cast<acc_t>(avg_divisor(g, w, o));
        const Pack<scalar_t, V> go =
            load_lanes<V>(grad + o[0] * gs[0] + o[1] * gs[1] + o[2] * gs[2], gl);
        for (int u = 0; u < V; ++u) sum[u] += static_cast<acc_t>(go.v[u]) / divisor;
      }
    }
  }
}

}  // namespace pool_ext
