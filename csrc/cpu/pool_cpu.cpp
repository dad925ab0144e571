// CPU kernels. Two layouts:
//  - planes (contiguous and strided inputs): one (n, c) plane row of outputs
//    at a time. Where every tap of a fixed window is a real cell (the
//    inside of the row) a vector of outputs is computed at once, all taps in
//    registers; the edges, and adaptive windows, go through the element
//    functions of pool.h, or reduce long contiguous runs with at::vec.
//    Global pooling (output size 1) is one reduction per plane;
//  - channels (channels-last inputs, and small planes transposed to
//    channels-last a group of channels at a time): one pixel at a time,
//    the same window for every channel, a block of channels in vector
//    registers over all the window's taps (or, for wide windows, each tap
//    streamed over every channel).
// Backward kernels give each input cell the sum, in output order, of the
// outputs that cover it: the GPU's gather, term for term. Planes backwards
// spread outputs into planes a task owns; channels ones gather each input
// pixel's channels. No two threads write one cell, and gradients are
// bit-identical run to run, and match the GPU's.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/bit_cast.h>
#include <c10/util/irange.h>
#include <c10/util/llvmMathExtras.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "../pool_ops.h"

#ifdef __linux__
#include <sys/mman.h>
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace pool_ext {
namespace {

constexpr int64_t kCacheLine = 64;

// Buffers that loops stream through a vector at a time start at a cache
// line: from malloc's 16-byte alignment every other 32-byte vector split two
// lines. Measured in one process against buffers 16 bytes past a line, 2
// threads: a channels-last global max over 64x2048x7x7 float (its maxima
// and taps stream through ChannelScratch) 0.58 -> 0.40 ms, the average's
// fwd+bwd there 1.3x faster, 13x13 -> 6x6 on 32x256 float NCHW forwards
// (the channel groups) 1.1x; the other benchmark rows within noise.
template <typename T>
struct LineAllocator {
  using value_type = T;
  LineAllocator() = default;
  template <typename U>
  LineAllocator(const LineAllocator<U>&) {}
  T* allocate(size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(kCacheLine)));
  }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(kCacheLine)); }
  template <typename U>
  bool operator==(const LineAllocator<U>&) const {
    return true;
  }
  template <typename U>
  bool operator!=(const LineAllocator<U>&) const {
    return false;
  }
};
template <typename T>
using LineVector = std::vector<T, LineAllocator<T>>;

// An array of n values left uninitialised, from a cache line's start.
struct LineDelete {
  void operator()(void* p) const { ::operator delete(p, std::align_val_t(kCacheLine)); }
};
template <typename T>
using LineArray = std::unique_ptr<T[], LineDelete>;
template <typename T>
LineArray<T> line_array(int64_t n) {
  static_assert(std::is_trivially_default_constructible_v<T>);
  return LineArray<T>(static_cast<T*>(
      ::operator new(static_cast<size_t>(n) * sizeof(T), std::align_val_t(kCacheLine))));
}

// The channels path applies when channels are the innermost dim of both sides.
bool channels_inner(const at::Tensor& a, const at::Tensor& b) {
  return a.size(1) > 1 && a.stride(1) == 1 && b.stride(1) == 1;
}

inline int64_t grain(int64_t work_per_item) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(work_per_item, 1));
}

// Where v's last cell is, counted from its first.
inline int64_t last_cell(const Layout5& v) {
  int64_t last = 0;
  for (const auto k : c10::irange(5)) last += (v.size[k] - 1) * v.stride[k];
  return last;
}

// Dense planes: each (n, c) plane packed with W fastest.
inline bool dense_planes(const Layout5& v) {
  return v.stride[4] == 1 && v.stride[3] == v.size[4] && v.stride[2] == v.size[3] * v.size[4];
}

// Channels-last, packed: cell (n, c, d, h, w) at ((n * D + d) * H + h) * W + w) * C + c.
inline bool packed_channels_last(const Layout5& v) {
  return v.stride[1] == 1 && v.stride[4] == v.size[1] && v.stride[3] == v.size[4] * v.stride[4] &&
         v.stride[2] == v.size[3] * v.stride[3] && v.stride[0] == v.size[2] * v.stride[2];
}

// Moves between planes (cell c * plane_ld + p) and channels-last (cell
// p * pixel_ld + c), to channels-last or back, by 8x8 tiles (1-, 2- and
// 4-byte cells in registers), loops at the edges. Tile (c, p): channels
// [c, c + 8) of pixels [p, p + 8).
constexpr int kTile = 8;

// One whole tile, row i of src to column i of dst. Cells are moved as bits:
// at::vec's transpose for 4-byte cells, SSE2 unpacks for 2- and 1-byte
// ones (bfloat16 and half values, tap codes), which ATen's generic
// transpose moves one cell at a time, 3-4x slower.
template <typename T>
inline void transpose_whole_tile(const T* src, int64_t src_ld, T* dst, int64_t dst_ld) {
#if defined(__SSE2__)
  if constexpr (sizeof(T) == 2) {
    __m128i r[kTile], a[kTile];
    for (int i = 0; i < kTile; ++i) {
      r[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i * src_ld));
    }
    // Pairs of rows, then quads, then all eight, interleaved column by column.
    for (int i = 0; i < kTile; i += 2) {
      a[i] = _mm_unpacklo_epi16(r[i], r[i + 1]);
      a[i + 1] = _mm_unpackhi_epi16(r[i], r[i + 1]);
    }
    for (int i = 0; i < kTile; i += 4) {
      r[i] = _mm_unpacklo_epi32(a[i], a[i + 2]);
      r[i + 1] = _mm_unpackhi_epi32(a[i], a[i + 2]);
      r[i + 2] = _mm_unpacklo_epi32(a[i + 1], a[i + 3]);
      r[i + 3] = _mm_unpackhi_epi32(a[i + 1], a[i + 3]);
    }
    for (int i = 0; i < 4; ++i) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * i * dst_ld),
                       _mm_unpacklo_epi64(r[i], r[i + 4]));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (2 * i + 1) * dst_ld),
                       _mm_unpackhi_epi64(r[i], r[i + 4]));
    }
    return;
  } else if constexpr (sizeof(T) == 1) {
    __m128i r[kTile], a[4];
    for (int i = 0; i < kTile; ++i) {
      r[i] = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + i * src_ld));
    }
    for (int i = 0; i < 4; ++i) a[i] = _mm_unpacklo_epi8(r[2 * i], r[2 * i + 1]);
    const __m128i b[4] = {_mm_unpacklo_epi16(a[0], a[1]), _mm_unpackhi_epi16(a[0], a[1]),
                          _mm_unpacklo_epi16(a[2], a[3]), _mm_unpackhi_epi16(a[2], a[3])};
    for (int i = 0; i < 2; ++i) {
      const __m128i lo = _mm_unpacklo_epi32(b[i], b[i + 2]);
      const __m128i hi = _mm_unpackhi_epi32(b[i], b[i + 2]);
      T* at = dst + 4 * i * dst_ld;
      _mm_storel_epi64(reinterpret_cast<__m128i*>(at), lo);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(at + dst_ld), _mm_unpackhi_epi64(lo, lo));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(at + 2 * dst_ld), hi);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(at + 3 * dst_ld), _mm_unpackhi_epi64(hi, hi));
    }
    return;
  }
#endif
  if constexpr (sizeof(T) == 4) {
    at::vec::transpose_mxn<float, kTile, kTile>(reinterpret_cast<const float*>(src), src_ld,
                                                reinterpret_cast<float*>(dst), dst_ld);
  } else {
    at::vec::transpose_mxn<T>(src, src_ld, dst, dst_ld, kTile, kTile);
  }
}

template <bool kToChannels, typename T>
inline void transpose_tile(const T* src, T* dst, int64_t plane_ld, int64_t pixel_ld,
                           int64_t channels, int64_t pixels, int64_t c, int64_t p) {
  const int64_t src_ld = kToChannels ? plane_ld : pixel_ld;
  const int64_t dst_ld = kToChannels ? pixel_ld : plane_ld;
  // Source rows: channels from planes, pixels from channels-last.
  const T* s = src + (kToChannels ? c * src_ld + p : p * src_ld + c);
  T* d = dst + (kToChannels ? p * dst_ld + c : c * dst_ld + p);
  const auto height = static_cast<int>(std::min<int64_t>(kTile, channels - c));
  const auto width = static_cast<int>(std::min<int64_t>(kTile, pixels - p));
  if (height == kTile && width == kTile) {
    transpose_whole_tile(s, src_ld, d, dst_ld);
  } else {
    at::vec::transpose_mxn<T>(s, src_ld, d, dst_ld, kToChannels ? height : width,
                              kToChannels ? width : height);
  }
}

// `batches` blocks (src_batch, dst_batch apart) of whole tensors, over
// threads: eight pixels of every channel per step, so that the
// channels-last side is touched in whole rows, the planes side in
// 8-element pieces (the other order, with a power-of-two channel count,
// keeps too many lines in few cache sets). Near a plain copy's speed, where
// torch's copy of the permuted tensor, with its strided inner loop, runs
// 3x slower.
template <bool kToChannels, typename T>
void transpose_planes(const T* src, T* dst, int64_t src_batch, int64_t dst_batch,
                      int64_t plane_ld, int64_t pixel_ld, int64_t batches, int64_t channels,
                      int64_t pixels) {
  const int64_t tiles = (pixels + kTile - 1) / kTile;
  at::parallel_for(0, batches * tiles, grain(channels * kTile), [&](int64_t begin, int64_t end) {
    for (const auto task : c10::irange(begin, end)) {
      const int64_t b = task / tiles;
      for (int64_t c = 0; c < channels; c += kTile) {
        transpose_tile<kToChannels>(src + b * src_batch, dst + b * dst_batch, plane_ld, pixel_ld,
                                    channels, pixels, c, task % tiles * kTile);
      }
    }
  });
}

// Calls f(T{}) with a type of t's element size, for copies that move bits.
template <typename F>
void by_element_size(const at::Tensor& t, const F& f) {
  switch (t.element_size()) {
    case 1: return f(uint8_t{});
    case 2: return f(uint16_t{});
    case 4: return f(float{});
    default: return f(double{});
  }
}

// t with channels innermost and every dim packed, in (N, D, H, W, C) order
// (a view of t when it is already so).
at::Tensor channels_inner_dense(const at::Tensor& t) {
  const Layout5 v = layout_of(t);
  if (v.size[1] == 1 || v.stride[1] == 1 || !dense_planes(v) || t.element_size() > 8) {
    return t.permute({0, 2, 3, 4, 1}).contiguous();
  }
  at::Tensor dense = at::empty({v.size[0], v.size[2], v.size[3], v.size[4], v.size[1]},
                               t.options());
  by_element_size(t, [&](auto tag) {
    using T = decltype(tag);
    transpose_planes<true>(static_cast<const T*>(t.const_data_ptr()),
                           static_cast<T*>(dense.mutable_data_ptr()), v.stride[0],
                           v.pixels() * v.size[1], v.stride[1], v.size[1], v.size[0], v.size[1],
                           v.pixels());
  });
  return dense;
}

// Runs of values between scalar_t and acc_t, as plain loops the compiler
// vectorises: bfloat16 goes by its bits, since c10's conversion defeats the
// vectoriser (same rounding: to nearest even, NaN kept). Half goes by
// F16C's conversions, which c10's are, eight lanes at a time: the compiler
// left those loops scalar (a 13x13 -> 6x6 max backward 2x slower, a global
// max over 14x14 planes 3x).
template <typename scalar_t, typename acc_t>
inline void widen(const scalar_t* __restrict__ src, acc_t* __restrict__ dst, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    const auto* bits = reinterpret_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) {
      dst[i] = c10::bit_cast<float>(static_cast<uint32_t>(bits[i]) << 16);
    }
  } else {
    int64_t i = 0;
#if defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<scalar_t, c10::Half> && std::is_same_v<acc_t, float>) {
      for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(
                                      reinterpret_cast<const __m128i*>(src + i))));
      }
    }
#endif
    for (; i < n; ++i) {
      dst[i] = static_cast<acc_t>(src[i]);
    }
  }
}

template <typename scalar_t, typename acc_t>
inline void narrow(const acc_t* __restrict__ src, scalar_t* __restrict__ dst, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    auto* bits = reinterpret_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t u = c10::bit_cast<uint32_t>(src[i]);
      const auto rounded = static_cast<uint16_t>((u + ((u >> 16) & 1) + 0x7FFFu) >> 16);
      bits[i] = src[i] != src[i] ? uint16_t{0x7FC0} : rounded;
    }
  } else {
    int64_t i = 0;
#if defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<scalar_t, c10::Half> && std::is_same_v<acc_t, float>) {
      for (; i + 8 <= n; i += 8) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
      }
    }
#endif
    for (; i < n; ++i) {
      dst[i] = static_cast<scalar_t>(src[i]);
    }
  }
}

// The outputs [lo, hi) of a row whose fixed windows along W hold all their
// taps: there every window is begin = ow * stride - pad, so the row can be
// swept tap by tap with the outputs innermost, a loop the compiler vectorises.
struct Interior {
  int64_t lo = 0;
  int64_t hi = 0;
};

Interior full_windows(const PoolGeometry& g, const std::vector<Window>& row) {
  Interior r;
  if (g.adaptive || window_taps(g) > std::numeric_limits<int32_t>::max()) {
    return r;
  }
  const int64_t kernel = g.dim[2].kernel;
  int64_t ow = 0;
  while (ow < static_cast<int64_t>(row.size()) && row[ow].count != kernel) ++ow;
  r.lo = ow;
  while (ow < static_cast<int64_t>(row.size()) && row[ow].count == kernel) ++ow;
  r.hi = ow;
  return r;
}

// Calls f(ow) for the outputs of a row outside the interior.
template <typename F>
inline void for_edges(Interior inner, int64_t width, const F& f) {
  for (int64_t ow = 0; ow < inner.lo; ++ow) f(ow);
  for (int64_t ow = inner.hi; ow < width; ++ow) f(ow);
}

// The windows of every output along each dim, for one sample. Built once per
// task and rebuilt only when the sample's extents change (variable pooling),
// so the hot loops do no window arithmetic.
struct WindowTable {
  std::vector<Window> dim[kDims];
  Interior inner;               // the outputs along W whose windows hold every tap
  std::vector<int64_t> origin;  // where tap 0 of each W window sits (window_origin along W)
  int64_t widest = 0;           // the most cells of a W window
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
    inner = full_windows(g, dim[2]);
    widest = 0;
    for (const auto& w : dim[2]) widest = std::max(widest, w.count);
    origin.resize(g.dim[2].out);
    for (const auto o : c10::irange(g.dim[2].out)) {
      origin[o] = dim[2][o].begin - dim[2][o].first_tap * dim[2][o].step;
    }
  }

  // window_origin of every output of the sample, row-major (negative where
  // tap 0 is in padding), or kNoCell where the window holds no cell (dilated
  // windows in padding). Built on first use.
  static constexpr int64_t kNoCell = std::numeric_limits<int64_t>::min();
  const int64_t* cells(const PoolGeometry& g) {
    if (cell_sample != sample) {
      cell_sample = sample;
      cell.clear();
      for (const auto& wd : dim[0]) {
        for (const auto& wh : dim[1]) {
          for (const auto& ww : dim[2]) {
            const Window w[kDims] = {wd, wh, ww};
            const bool empty = wd.count == 0 || wh.count == 0 || ww.count == 0;
            cell.push_back(empty ? kNoCell : window_origin(g, w));
          }
        }
      }
    }
    return cell.data();
  }

  // The outputs whose windows may hold each input cell, per dim, for the
  // sample. Built on first use.
  const std::vector<Span>* cover(const PoolGeometry& g) {
    if (cover_sample != sample) {
      cover_sample = sample;
      for (const auto k : c10::irange(kDims)) {
        const int64_t in = extent(g, k, sample);
        spans[k].resize(g.dim[k].in);
        for (const auto i : c10::irange(g.dim[k].in)) {
          covering(g, k, i, in, &spans[k][i].lo, &spans[k][i].hi);
        }
      }
    }
    return spans;
  }

 private:
  std::vector<int64_t> cell;
  int64_t cell_sample = -1;
  std::vector<Span> spans[kDims];
  int64_t cover_sample = -1;
};

// Walks plane rows (n, c, d, h) in order from row `first`: one division
// chain up front, then increments.
struct RowCursor {
  const Layout5& v;
  int64_t n, c, x[2];

  RowCursor(int64_t first, const Layout5& layout) : v(layout) {
    x[1] = first % v.size[3];
    first /= v.size[3];
    x[0] = first % v.size[2];
    first /= v.size[2];
    c = first % v.size[1];
    n = first / v.size[1];
  }

  void next() {
    if (++x[1] < v.size[3]) return;
    x[1] = 0;
    if (++x[0] < v.size[2]) return;
    x[0] = 0;
    if (++c < v.size[1]) return;
    c = 0;
    ++n;
  }
};

// Walks pixels (n, d, h, w) in order from pixel `first`, as RowCursor walks
// rows: one division chain up front, then increments.
struct PixelCursor {
  const Layout5& v;
  int64_t n, x[kDims];

  PixelCursor(int64_t first, const Layout5& layout) : v(layout) { unflatten_pixel(first, v, &n, x); }

  void next() {
    if (++x[2] < v.size[4]) return;
    x[2] = 0;
    if (++x[1] < v.size[3]) return;
    x[1] = 0;
    if (++x[0] < v.size[2]) return;
    x[0] = 0;
    ++n;
  }
};

// ---------------------------------------------------------------- forward

// Calls f with the element step of a row sweep: a compile-time 1 or 2 for
// the common strides, so the compiler vectorises their loads, else the value.
template <typename F>
inline void with_step(int64_t step, const F& f) {
  if (step == 1) {
    f(std::integral_constant<int64_t, 1>());
  } else if (step == 2) {
    f(std::integral_constant<int64_t, 2>());
  } else {
    f(step);
  }
}

// One tap of the interior sweep: outputs [lo, hi) take at[ow * step] when it wins.
template <typename scalar_t, typename Step, typename acc_t>
inline void max_sweep(const scalar_t* __restrict__ at, Step step, Interior inner,
                      acc_t* __restrict__ best, int32_t* __restrict__ best_tap, int32_t code) {
  const int64_t s = step;
  for (int64_t ow = inner.lo; ow < inner.hi; ++ow) {
    const auto v = static_cast<acc_t>(at[ow * s]);
    const bool takes = max_takes(v, best[ow]);
    best[ow] = takes ? v : best[ow];
    best_tap[ow] = takes ? code : best_tap[ow];
  }
}

template <typename scalar_t, typename Step, typename acc_t>
inline void sum_sweep(const scalar_t* __restrict__ at, Step step, Interior inner,
                      acc_t* __restrict__ sum) {
  const int64_t s = step;
  for (int64_t ow = inner.lo; ow < inner.hi; ++ow) {
    sum[ow] += static_cast<acc_t>(at[ow * s]);
  }
}

// ------------------------------------------------- long contiguous windows
//
// Adaptive and variable windows (global pooling above all) are runs of
// contiguous cells along W, often long: there the element functions' one
// cell at a time is the bottleneck, so these reduce a run a vector at a
// time (at::vec). Max keeps window_max's rule exactly: each lane keeps its winner (its
// last NaN, else its first max), lanes merge by the same rule, the tail
// follows in order. Sums are reassociated (lanes, then their total), as
// torch's vectorised CPU kernels do.

// Runs of reduced-precision values are widened to acc_t a chunk at a time.
constexpr int64_t kChunk = 256;
constexpr int64_t kMinRun = 16;

template <typename scalar_t, typename acc_t>
inline const acc_t* widened(const scalar_t* at, int64_t n, acc_t* buffer) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return at;
  } else {
    widen(at, buffer, n);
    return buffer;
  }
}

// A vector of acc_t lanes from scalar_t values (bfloat16 and half widened).
template <typename acc_t, typename scalar_t>
inline at::vec::Vectorized<acc_t> load_acc(const scalar_t* at) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return at::vec::Vectorized<acc_t>::loadu(at);
  } else {
    at::vec::Vectorized<float> v;
    at::vec::load_to_float(at, v);
    return v;
  }
}

// Calls f(run, start, n) on the whole vectors of at[0, len) in chunks of
// at most kChunk cells, widened to acc_t, while f returns true. Returns
// where the chunks it went through end: the tail's start when all went.
template <typename acc_t, typename scalar_t, typename F>
inline int64_t for_chunks(const scalar_t* __restrict__ at, int64_t len, const F& f) {
  constexpr int64_t L = at::vec::Vectorized<acc_t>::size();
  acc_t buffer[kChunk];
  int64_t i = 0;
  while (i + L <= len) {
    const int64_t n = std::min(kChunk, (len - i) / L * L);
    if (!f(widened(at + i, n, buffer), i, n)) break;
    i += n;
  }
  return i;
}

// Where best (not NaN) first is in at[0, len), len >= 1: the hits of 64
// cells gathered in one mask before a branch, the last block's tail as the
// run's last whole vector. A branch per vector mispredicted at every max, a
// random cell of the run: the taps of a max over 64x2048x7x7 float took
// 2.3x the values' time, 5.2 ms against 2.3 (one thread); by blocks 3.8.
template <typename scalar_t, typename acc_t>
inline int64_t first_equal(const scalar_t* __restrict__ at, int64_t len, acc_t best) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  if (len < L) {
    int64_t found = 0;
    while (static_cast<acc_t>(at[found]) != best) ++found;
    return found;
  }
  const Vec target(best);
  // The cells of at[k, k + L) equal to it, as bits from cell `block` on.
  // A tail vector that starts before the block only adds bits for cells of
  // the block before, which has none.
  const auto hits = [&](int64_t k, int64_t block) {
    const auto hit = static_cast<uint64_t>(
        ~(load_acc<acc_t>(at + k) == target).zero_mask() & ((1 << L) - 1));
    return k >= block ? hit << (k - block) : hit >> (block - k);
  };
  for (int64_t block = 0; block < len; block += 64) {
    const int64_t end = std::min(block + 64, len);
    uint64_t mask = 0;
    int64_t k = block;
    for (; k + L <= end; k += L) mask |= hits(k, block);
    if (k < end) mask |= hits(end - L, block);
    if (mask != 0) return block + c10::llvm::countTrailingZeros(mask);
  }
  return 0;  // (not reached: best is one of the cells)
}

// Max in two passes, both at vector throughput: the value (four
// accumulators, NaN propagating), then where it first is (or, for NaN,
// where the last NaN is). One pass that carries positions through blends is
// bound by the blends' latency, three times slower. Same winner as
// max_takes over the run in order; its value is read back from the run, so
// that -0 and 0 come out as the one-pass rule would give them. len >= 1.
// pos null (the value alone): no second pass but where a zero or NaN wins,
// whose bits depend on which cell it is.
template <typename scalar_t, typename acc_t>
inline acc_t run_max(const scalar_t* __restrict__ at, int64_t len, int64_t* pos) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  // (Low precision widened as loaded, in registers.)
  Vec m0(-std::numeric_limits<acc_t>::infinity()), m1 = m0, m2 = m0, m3 = m0;
  int64_t tail = 0;
  for (; tail + 4 * L <= len; tail += 4 * L) {
    m0 = at::vec::maximum(m0, load_acc<acc_t>(at + tail));
    m1 = at::vec::maximum(m1, load_acc<acc_t>(at + tail + L));
    m2 = at::vec::maximum(m2, load_acc<acc_t>(at + tail + 2 * L));
    m3 = at::vec::maximum(m3, load_acc<acc_t>(at + tail + 3 * L));
  }
  for (; tail + L <= len; tail += L) m0 = at::vec::maximum(m0, load_acc<acc_t>(at + tail));
  const auto fold = [](acc_t a, acc_t b) {
    return (a != a || b != b) ? std::numeric_limits<acc_t>::quiet_NaN() : std::max(a, b);
  };
  if (tail > 0 && tail < len) {
    // The tail as the run's last whole vector, overlapping cells already
    // seen: a max may see a cell twice (and so may NaN), and a tail of
    // scalar steps cost as much as a 256-cell run's vectors.
    m1 = at::vec::maximum(m1, load_acc<acc_t>(at + len - L));
  }
  const Vec m = at::vec::maximum(at::vec::maximum(m0, m1), at::vec::maximum(m2, m3));
  acc_t best;
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<acc_t, float>) {
    // Lanes folded by shuffles, NaN propagating (maximum), not one by one.
    best = at::vec::vec_reduce_all<float>(
        [](const Vec& a, const Vec& b) { return at::vec::maximum(a, b); }, m);
  } else
#endif
  {
    acc_t lane[L];
    m.store(lane);
    best = lane[0];
    for (int64_t j = 1; j < L; ++j) best = fold(best, lane[j]);
  }
  if (tail == 0) {  // shorter than a vector
    for (int64_t j = 0; j < len; ++j) best = fold(best, static_cast<acc_t>(at[j]));
  }
  if (best != best) {
    int64_t j = len - 1;
    while (!std::isnan(static_cast<acc_t>(at[j]))) --j;
    if (pos) *pos = j;
    return static_cast<acc_t>(at[j]);  // that NaN, sign and payload, as torch returns it
  }
  if (pos == nullptr && best != acc_t(0)) return best;
  const int64_t found = first_equal(at, len, best);  // (a zero's sign: that cell's)
  if (pos) *pos = found;
  return static_cast<acc_t>(at[found]);
}

// Sums of blocks of a long reduction added pairwise: level k holds the sum
// of 2^k blocks. A sum of n cells then carries O(block + log n) roundings
// where one accumulator carries O(n), as torch's mean (its global average
// pooling) does by its cascade sum: 1e5 float cells of one value came out
// 6e-5 off with one accumulator.
constexpr int64_t kCascadeBlock = 256;  // cells of a block
// Sums of this many cells or more go by blocks, cascaded: the shortest
// chunk of a global channels kernel too.
constexpr int64_t kCascadeCells = 4 * kCascadeBlock;

template <typename T>
struct Cascade {
  // Left uninitialised (a level is written before it is read): Vectorized
  // zeroes itself, and a global average's 64 levels of 64 channels were
  // 16 KB of stores per task.
  union {
    T level[64];
  };
  uint64_t count = 0;

  Cascade() {}

  void add(T block) {
    int k = 0;
    for (; (count >> k) & 1; ++k) block = level[k] + block;
    level[k] = block;
    ++count;
  }

  // The whole sum, with `rest` (the cells past the last block).
  T total(T rest) const {
    // Up to the highest level only: runs_sum totals a Cascade per window.
    for (int k = 0; (count >> k) != 0; ++k) {
      if ((count >> k) & 1) rest = level[k] + rest;
    }
    return rest;
  }
};

// A long run by blocks of kCascadeBlock cells, cascaded: its whole vectors'
// sum in lanes, and where its tail starts.
template <typename scalar_t, typename acc_t>
C10_NOINLINE at::vec::Vectorized<acc_t> cascade_run(const scalar_t* __restrict__ at, int64_t len,
                                                     int64_t* tail) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  static_assert(kCascadeBlock % L == 0 && kChunk % kCascadeBlock == 0);
  Cascade<Vec> blocks;
  Vec rest(acc_t(0));
  *tail = for_chunks<acc_t>(at, len, [&](const acc_t* run, int64_t, int64_t n) {
    int64_t k = 0;
    for (; n - k >= kCascadeBlock; k += kCascadeBlock) {
      Vec even(acc_t(0)), odd(acc_t(0));
      for (int64_t j = k; j < k + kCascadeBlock; j += 2 * L) {
        even = even + Vec::loadu(run + j);
        odd = odd + Vec::loadu(run + j + L);
      }
      blocks.add(even + odd);
    }
    for (; k < n; k += L) rest = rest + Vec::loadu(run + k);
    return true;
  });
  return blocks.total(rest);
}

// Runs of this many vectors or more (up to a cascade's) sum in four chains.
constexpr int64_t kFourChains = 16;

// The whole vectors of at[0, whole) (whole a multiple of a vector) summed in
// four chains added pairwise: a quarter as deep in roundings as one chain
// (one over 1000 cells of one float value came out 1.4e-6 off; four,
// 1e-7, torch's accuracy) and as long in add latency (1.4x faster there).
template <typename acc_t, typename scalar_t>
inline at::vec::Vectorized<acc_t> four_chains(const scalar_t* __restrict__ at, int64_t whole) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  Vec part[4] = {Vec(acc_t(0)), Vec(acc_t(0)), Vec(acc_t(0)), Vec(acc_t(0))};
  int64_t i = 0;
  for (; i + 4 * L <= whole; i += 4 * L) {
    for (int u = 0; u < 4; ++u) part[u] += load_acc<acc_t>(at + i + u * L);
  }
  for (int u = 0; i < whole; i += L, ++u) part[u] += load_acc<acc_t>(at + i);
  return (part[0] + part[1]) + (part[2] + part[3]);
}

// Two vector accumulators and a pairwise fold of the lanes keep the chain
// of dependent adds short: short runs (7x7 planes) are latency-bound. Runs
// of several blocks sum by cascade_run.
template <typename scalar_t, typename acc_t>
inline acc_t run_sum(const scalar_t* __restrict__ at, int64_t len) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  Vec lanes;
  int64_t tail;
  if (len >= kCascadeCells) {
    lanes = cascade_run<scalar_t, acc_t>(at, len, &tail);
  } else if (len >= kFourChains * L) {
    tail = len / L * L;
    lanes = four_chains<acc_t>(at, tail);
  } else {
    Vec even(acc_t(0)), odd(acc_t(0));
    tail = for_chunks<acc_t>(at, len, [&](const acc_t* run, int64_t, int64_t n) {
      int64_t k = 0;
      for (; k + 2 * L <= n; k += 2 * L) {
        even = even + Vec::loadu(run + k);
        odd = odd + Vec::loadu(run + k + L);
      }
      if (k < n) even = even + Vec::loadu(run + k);
      return true;
    });
    lanes = even + odd;
  }
  acc_t value[L];
  lanes.store(value);
  for (int64_t width = L / 2; width > 0; width /= 2) {
    for (int64_t j = 0; j < width; ++j) value[j] += value[j + width];
  }
  acc_t sum = value[0];
  for (int64_t i = tail; i < len; ++i) sum += static_cast<acc_t>(at[i]);
  return sum;
}

// A window of a planes kernel as runs: calls f(run, length, td, th0) for
// each, where th0 is the H tap the run starts at. When the W window spans
// whole memory rows, its H rows form one run.
struct Runs {
  bool usable = false;
  bool merged = false;  // H rows merged into one run
};

inline Runs runs_of(const Window* w, const Layout5& vi, int64_t min_run = kMinRun) {
  Runs r;
  if (w[2].step != 1 || vi.stride[4] != 1) return r;
  r.merged = w[1].step == 1 && w[2].begin == 0 && vi.stride[3] == w[2].count && w[1].count > 1;
  r.usable = (r.merged ? w[1].count * w[2].count : w[2].count) >= min_run;
  return r;
}

template <typename scalar_t, typename acc_t>
acc_t runs_max(const PoolGeometry& g, const Window* w, const scalar_t* plane, const Layout5& vi,
               Runs r, int64_t* tap) {
  acc_t best = -std::numeric_limits<acc_t>::infinity();
  int64_t best_tap = encode_tap(g, w[0].first_tap, w[1].first_tap, w[2].first_tap);
  const int64_t rows = r.merged ? 1 : w[1].count;
  const int64_t len = r.merged ? w[1].count * w[2].count : w[2].count;
  for (int64_t td = 0; td < w[0].count; ++td) {
    for (int64_t th = 0; th < rows; ++th) {
      const scalar_t* at = plane + (w[0].begin + td * w[0].step) * vi.stride[2] +
                           (w[1].begin + th * w[1].step) * vi.stride[3] + w[2].begin;
      int64_t pos;
      const acc_t v = run_max<scalar_t, acc_t>(at, len, tap ? &pos : nullptr);
      if (max_takes(v, best)) {  // rows merge by the same rule, in order
        best = v;
        if (!tap) continue;
        const int64_t h = r.merged ? pos / w[2].count : th;
        const int64_t x = r.merged ? pos % w[2].count : pos;
        best_tap = encode_tap(g, w[0].first_tap + td, w[1].first_tap + h, w[2].first_tap + x);
      }
    }
  }
  if (tap) *tap = best_tap;
  return best;
}

// Cells (or runs) added in one chain before a Cascade takes over: short, as
// cascade_run's vector blocks are 16 adds deep per lane.
constexpr int64_t kScalarBlock = 16;

// Many runs' sums are added pairwise (Cascade): a plane of a thousand rows
// is otherwise a thousand-long chain of roundings. A few (one run: 1d, or
// merged rows) are added in turn, which costs less per window.
template <typename scalar_t, typename acc_t>
acc_t runs_sum(const Window* w, const scalar_t* plane, const Layout5& vi, Runs r) {
  const int64_t rows = r.merged ? 1 : w[1].count;
  const int64_t len = r.merged ? w[1].count * w[2].count : w[2].count;
  const auto for_runs = [&](const auto& f) {
    for (int64_t td = 0; td < w[0].count; ++td) {
      for (int64_t th = 0; th < rows; ++th) {
        f(run_sum<scalar_t, acc_t>(plane + (w[0].begin + td * w[0].step) * vi.stride[2] +
                                       (w[1].begin + th * w[1].step) * vi.stride[3] + w[2].begin,
                                   len));
      }
    }
  };
  if (w[0].count * rows < kScalarBlock) {
    acc_t sum = 0;
    for_runs([&](acc_t run) { sum += run; });
    return sum;
  }
  Cascade<acc_t> sums;
  for_runs([&](acc_t run) { sums.add(run); });
  return sums.total(acc_t(0));
}

// window_sum by blocks added pairwise (Cascade), for long windows whose
// cells are not runs (strided or stride-0 planes): one running sum of 70000
// float cells of one value drifted 1e-3.
template <typename scalar_t, typename acc_t>
acc_t cascade_window_sum(const Window* w, const scalar_t* at, const int64_t* s) {
  Cascade<acc_t> blocks;
  acc_t block = 0;
  int64_t in_block = 0;
  for_window_cells(w, at, s, [&](scalar_t v) {
    block += static_cast<acc_t>(v);
    if (++in_block == kScalarBlock) {
      blocks.add(block);
      block = 0;
      in_block = 0;
    }
  });
  return blocks.total(block);
}

// takes ? a : b by masks: compilers turn the plain select of a scalar loop
// into a branch, which mispredicts on every new max.
template <typename T>
inline T select(bool takes, T a, T b) {
  using bits_t = std::conditional_t<sizeof(T) == 8, uint64_t, uint32_t>;
  static_assert(sizeof(T) == sizeof(bits_t));
  const bits_t mask = bits_t{0} - static_cast<bits_t>(takes);
  return c10::bit_cast<T>((c10::bit_cast<bits_t>(a) & mask) | (c10::bit_cast<bits_t>(b) & ~mask));
}

// A window of a planes kernel: by runs where they are long, one short row
// cell by cell, else through the element functions. tap null: the value
// alone.
template <typename scalar_t, typename acc_t>
inline acc_t plane_window_max(const PoolGeometry& g, const Window* w, const scalar_t* plane,
                              const Layout5& vi, int64_t* tap) {
  // Max runs from one vector: run_max takes a short run's tail as one
  // overlapping vector (adaptive_max_pool1d of 512 cells to 48, windows of
  // 11: 3x faster than cell by cell). Sums keep kMinRun: their scalar tail
  // would cost what the vectors save.
  constexpr int64_t L = at::vec::Vectorized<acc_t>::size();
  if (w[2].count < L && w[0].count * w[1].count == 1 && w[2].step == 1 && vi.stride[4] == 1) {
    // One short row (1d): by window_max's rule and order, without its loops
    // over D and H (adaptive_max_pool1d of 32x256x512 to 300: 2x faster).
    const scalar_t* at =
        plane + w[0].begin * vi.stride[2] + w[1].begin * vi.stride[3] + w[2].begin;
    acc_t best = -std::numeric_limits<acc_t>::infinity();
    int64_t best_x = 0;
    for (int64_t x = 0; x < w[2].count; ++x) {
      const auto v = static_cast<acc_t>(at[x]);
      const bool takes = max_takes(v, best);
      best = select(takes, v, best);
      best_x = select(takes, x, best_x);
    }
    if (tap) *tap = encode_tap(g, w[0].first_tap, w[1].first_tap, w[2].first_tap) + best_x;
    return best;
  }
  const Runs r = runs_of(w, vi, L);
  if (r.usable) return runs_max<scalar_t, acc_t>(g, w, plane, vi, r, tap);
  int64_t unused;
  return window_max<scalar_t, acc_t>(g, w, plane, vi.spatial_strides(), tap ? tap : &unused);
}

template <typename scalar_t, typename acc_t>
inline acc_t plane_window_sum(const Window* w, const scalar_t* plane, const Layout5& vi) {
  const Runs r = runs_of(w, vi);
  if (r.usable) return runs_sum<scalar_t, acc_t>(w, plane, vi, r);
  if (w[0].count * w[1].count * w[2].count >= kCascadeCells) {
    return cascade_window_sum<scalar_t, acc_t>(w, plane, vi.spatial_strides());
  }
  return window_sum<scalar_t, acc_t>(w, plane, vi.spatial_strides());
}

#if defined(CPU_CAPABILITY_AVX2)
// Float lanes rounded to bfloat16 by narrow's rule, each in the low half of
// its 32-bit lane.
inline __m256i bfloat16_lanes(__m256 f) {
  const __m256i u = _mm256_castps_si256(f);
  const __m256i lsb = _mm256_srli_epi32(_mm256_slli_epi32(u, 15), 31);  // bit 16: no constant
  // The empty asm hides the bias's value, so that a loop short of registers
  // keeps it (on its stack, an operand) instead of rebuilding it by a move
  // and a broadcast every pass (avg_forward_narrow's bfloat16 rows: 1.08x
  // faster with the shifts).
  __m256i bias = _mm256_set1_epi32(0x7FFF);
  asm("" : "+x"(bias));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, bias), lsb), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
}

// One vector of float lanes into as many bfloat16 or half values, by
// narrow's rule, in registers (narrow's loop over a block's eight lanes
// compiled to scalar NaN tests). Half's F16C conversion is the one c10's own
// uses.
template <typename scalar_t>
inline __m128i narrowed_lanes(const at::vec::Vectorized<float>& v) {
  static_assert(at::vec::Vectorized<float>::size() == 8);
  const __m256 f = v;
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    const __m256i r = bfloat16_lanes(f);
    // packus works within 128-bit halves: low half's four, then high's.
    return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  } else {
    return _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT);
  }
}
#endif

template <typename scalar_t>
inline void narrow_lanes(const at::vec::Vectorized<float>& v, scalar_t* dst) {
#if defined(CPU_CAPABILITY_AVX2)
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), narrowed_lanes<scalar_t>(v));
#else
  float value[at::vec::Vectorized<float>::size()];
  v.store(value);
  narrow(value, dst, at::vec::Vectorized<float>::size());
#endif
}

#if defined(CPU_CAPABILITY_AVX2)
constexpr int64_t kPairCells = 16;  // bfloat16 cells of a 32-byte load

// Cells [0, 16) of a bfloat16 row from `at`, as float lanes: `even` the
// even cells, `odd` the odd ones. One 32-byte load, whose 32-bit lanes hold
// a pair of cells each (a bfloat16 is a float's upper half): a shift makes
// the first a float, a mask the second (loading 8 cells a vector and
// widening them ran avg_forward_narrow's 13x13 -> 6x6 1.04x slower; see
// sweep_pairs for 3x3/1). Where fewer
// than 16 cells are `left` in the tensor from `at`, only the row's `count`
// are read; kWhole: the caller knows they are not (testing `left` at every
// load ran slower than loading 8 cells a vector).
template <bool kWhole>
C10_ALWAYS_INLINE void load_pairs(const c10::BFloat16* at, int64_t count, int64_t left,
                                  __m256& even, __m256& odd) {
  __m256i pairs;
  if (kWhole || left >= kPairCells) {
    pairs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(at));
  } else {
    alignas(32) c10::BFloat16 cells[kPairCells] = {};
    std::copy(at, at + count, cells);
    pairs = _mm256_load_si256(reinterpret_cast<const __m256i*>(cells));
  }
  even = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
  odd = _mm256_castsi256_ps(_mm256_and_si256(pairs, _mm256_set1_epi32(~0xFFFF)));
}

#endif

// narrow over n values, whole vectors of float lanes in registers
// (narrow_lanes) where scalar_t is half or bfloat16.
template <typename acc_t, typename scalar_t>
inline void narrow_all(const acc_t* src, scalar_t* dst, int64_t n) {
  int64_t i = 0;
  if constexpr (std::is_same_v<acc_t, float> && !std::is_same_v<scalar_t, float>) {
    constexpr int64_t L = at::vec::Vectorized<float>::size();
    for (; i + L <= n; i += L) narrow_lanes(at::vec::Vectorized<float>::loadu(src + i), dst + i);
  }
  narrow(src + i, dst + i, n - i);
}

// Two vectors of acc_t lanes from 2 * size() consecutive values.
template <typename acc_t, typename scalar_t>
inline std::pair<at::vec::Vectorized<acc_t>, at::vec::Vectorized<acc_t>> load_acc2(
    const scalar_t* at) {
  using Vec = at::vec::Vectorized<acc_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return {Vec::loadu(at), Vec::loadu(at + Vec::size())};
  } else {
    Vec a, b;
    at::vec::load_to_float(at, a, b);
    return {a, b};
  }
}

// Cells [0, 2 * size()) as acc_t lanes, deinterleaved: the even cells, the
// odd ones. A bfloat16 is the high half of a float, so each 32-bit pair of
// cells (even low, odd high) gives both by a shift and a mask, where the
// generic way widens and then permutes.
template <typename acc_t, typename scalar_t>
inline std::pair<at::vec::Vectorized<acc_t>, at::vec::Vectorized<acc_t>> load_deinterleaved(
    const scalar_t* at) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    const __m256i pairs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(at));
    return {at::vec::Vectorized<float>(_mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16))),
            at::vec::Vectorized<float>(_mm256_castsi256_ps(
                _mm256_and_si256(pairs, _mm256_set1_epi32(static_cast<int32_t>(0xFFFF0000u)))))};
  }
#endif
  const auto [lo, hi] = load_acc2<acc_t>(at);
  return at::vec::deinterleave2(lo, hi);
}

#if defined(CPU_CAPABILITY_AVX2)
// Lanes [0, count) of a vector of 4-byte (8-byte) cells set.
inline __m256i first_lanes32(int64_t count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(count)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline __m256i first_lanes64(int64_t count) {
  return _mm256_cmpgt_epi64(_mm256_set1_epi64x(count), _mm256_setr_epi64x(0, 1, 2, 3));
}
#endif

// The first `count` (<= size()) lanes from at, the others zero: reads
// nothing past them. float and double by a masked load: at::vec's partial
// load goes through memcpy, a call per vector.
template <typename acc_t, typename scalar_t>
inline at::vec::Vectorized<acc_t> load_acc(const scalar_t* at, int64_t count) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<scalar_t, float>) {
    return _mm256_maskload_ps(at, first_lanes32(count));
  } else if constexpr (std::is_same_v<scalar_t, double>) {
    return _mm256_maskload_pd(at, first_lanes64(count));
  }
#endif
  scalar_t part[at::vec::Vectorized<acc_t>::size()] = {};
  for (int64_t i = 0; i < count; ++i) part[i] = at[i];
  return load_acc<acc_t>(part);
}

// Cells [0, count) of values into dst (count <= L lanes), narrowed.
template <typename scalar_t, typename acc_t>
inline void store_cells(const at::vec::Vectorized<acc_t>& v, scalar_t* dst, int64_t count) {
  constexpr int64_t L = at::vec::Vectorized<acc_t>::size();
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    // A full vector by a plain store: AMD's masked stores run several
    // times slower (on this Zen 4, half a 2x2 average backward's time).
    if (count == L) {
      v.store(dst);
      return;
    }
  }
#if defined(CPU_CAPABILITY_AVX2)
  // Masked stores: at::vec's partial store goes through memcpy.
  if constexpr (std::is_same_v<scalar_t, float>) {
    _mm256_maskstore_ps(dst, first_lanes32(count), v);
    return;
  } else if constexpr (std::is_same_v<scalar_t, double>) {
    _mm256_maskstore_pd(dst, first_lanes64(count), v);
    return;
  }
#endif
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    v.store(dst, static_cast<int>(count));
  } else if (count == L) {
    narrow_lanes(v, dst);
  } else {
    scalar_t value[L];
    narrow_lanes(v, value);
    for (int64_t i = 0; i < count; ++i) dst[i] = value[i];
  }
}

// The lanes where a later tap v takes a running max `best` over: greater,
// or NaN (so the first NaN stays), as the element functions decide.
template <typename Vec>
C10_ALWAYS_INLINE Vec takes_max(const Vec& best, const Vec& v) {
  return (v > best) | v.isnan();
}

// Blocks of U * L outputs of a row from ow (L a vector's lanes), every tap
// of the window with the outputs held in registers: window row r (D and H
// taps in order) starts at plane + offset[r], row_code[r] its first tap's
// code (max with kTaps only; the inference forward keeps no codes). Low
// precision widens as it loads. Stride S is 1 or 2 (a pair of vectors
// deinterleaved); KW is the W kernel when fixed at compile time (0: kw), so
// that the common windows' taps unroll. Max: the first tap
// initialises the lanes, as in max_forward_channels, later ones compete;
// sums add the taps in window_sum's order: both agree with the element
// functions bit for bit. U blocks are U independent chains of compares and
// blends (two: 8% faster on 3x3 stride-1 max, even elsewhere). `last`: the
// block ends at the row's last full window, where a stride-2 pair reaches
// one cell past the last a window uses, read only while inside the input
// (up to last_cell, its last cell, counted from plane: offsets, not
// pointers, which past the allocation would be undefined). `direct`, for
// values alone: the outputs go straight to that output row (unit stride),
// sums divided by `divisor`, rather than into result for a second pass:
// over short rows (28 outputs) that pass was a quarter of the time.
template <int64_t U, int64_t S, int64_t KW, bool kMax, bool kTaps, typename scalar_t,
          typename acc_t>
C10_ALWAYS_INLINE void sweep_blocks(const scalar_t* plane, const int64_t* offset,
                                    const int32_t* row_code, int64_t nrows, int64_t kernel_w,
                                    int64_t dilation, int64_t pad, int64_t last_cell, int64_t ow,
                                    bool last, acc_t* result, int32_t* best_tap,
                                    scalar_t* direct, acc_t divisor) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  const int64_t kw = KW > 0 ? KW : kernel_w;
  Vec b[U], t[U], odd[U];
  for (int64_t u = 0; u < U; ++u) b[u] = Vec(acc_t(0));
  // Stride 2, no dilation: a deinterleaved pair holds tap tw's cells
  // (evens) and tap tw + 1's (odds), when it was loaded whole.
  bool odd_whole = false;
  for (int64_t r = 0; r < nrows; ++r) {
    const int64_t first = offset[r] + ow * S - pad;  // tap 0 of the block's first output
    const scalar_t* base = plane + first;
    for (int64_t tw = 0; tw < kw; ++tw) {
      const bool reuse = S == 2 && dilation == 1 && tw % 2 == 1 && odd_whole;
      if (S == 2 && !reuse) odd_whole = !last || first + tw * dilation + 2 * L - 1 <= last_cell;
      for (int64_t u = 0; u < U; ++u) {
        const scalar_t* at = base + tw * dilation + u * L * S;
        Vec v;
        if constexpr (S == 1) {
          v = load_acc<acc_t>(at);
        } else if (reuse) {
          v = odd[u];
        } else {
          const auto pair =
              odd_whole ? load_deinterleaved<acc_t>(at)
                        : at::vec::deinterleave2(load_acc<acc_t>(at), load_acc<acc_t>(at + L, L - 1));
          v = pair.first;
          odd[u] = pair.second;
        }
        if constexpr (kMax) {
          // Tap codes ride in acc_t lanes: exact, as callers keep them below 2^24.
          const Vec code(static_cast<acc_t>(row_code[r] + tw));
          if (r == 0 && tw == 0) {
            b[u] = v;
            t[u] = code;
            continue;
          }
          const Vec takes = takes_max(b[u], v);
          b[u] = Vec::blendv(b[u], v, takes);
          if constexpr (kTaps) t[u] = Vec::blendv(t[u], code, takes);
        } else {
          b[u] = b[u] + v;
        }
      }
    }
  }
  if constexpr (!kTaps) {
    if (direct != nullptr) {
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        for (int64_t u = 0; u < U; ++u) {
          (kMax ? b[u] : b[u] / Vec(divisor)).store(direct + ow + u * L);
        }
      } else {
        for (int64_t u = 0; u < U; ++u) {
          narrow_lanes(kMax ? b[u] : b[u] / Vec(divisor), direct + ow + u * L);
        }
      }
      return;
    }
  }
  for (int64_t u = 0; u < U; ++u) {
    b[u].store(result + ow + u * L);
    if constexpr (kTaps && std::is_same_v<acc_t, float>) {
      at::vec::convert_to_int_of_same_size(t[u]).store(best_tap + ow + u * L);
    } else if constexpr (kTaps) {
      acc_t codes[L];
      t[u].store(codes);
      for (int64_t j = 0; j < L; ++j) {
        best_tap[ow + u * L + j] = static_cast<int32_t>(codes[j]);
      }
    }
  }
}

#if defined(CPU_CAPABILITY_AVX2)
// sweep_blocks' 16 outputs from ow of a bfloat16 row, stride 1, undilated,
// values alone (`direct`), from loads of 16 cells split into even and odd
// ones (load_pairs): pairs loaded at cell 2j from the block's first tap hold
// tap 2j of the even outputs (their even cells) and tap 2j + 1 (their odd
// cells), and taps 2j - 1 and 2j of the odd outputs. The same taps in the
// same order as sweep_blocks, so the same bits; the two vectors, even
// outputs and odd, rounded and interleaved into one 32-byte store, in
// place of 8 cells' widening loads a tap and two rounding stores:
// avg_pool2d 3x3/1 pad 1 on 8x192x35x35 bfloat16 NCHW forward 1.79 -> 1.51
// ms on one thread, 0.93 -> 0.79 on two (torch's channels-last 0.61).
template <int64_t KW, bool kMax>
C10_ALWAYS_INLINE void sweep_pairs(const c10::BFloat16* plane, const int64_t* offset,
                                   int64_t nrows, int64_t kernel_w, int64_t pad, int64_t ow,
                                   c10::BFloat16* direct, float divisor) {
  const int64_t kw = KW > 0 ? KW : kernel_w;
  __m256 even = _mm256_setzero_ps(), odd = _mm256_setzero_ps();  // the outputs
  const auto take = [&](__m256& b, __m256 v, bool first) {
    using Vec = at::vec::Vectorized<float>;
    if constexpr (kMax) {
      // As sweep_blocks: the first tap initialises, later ones take over.
      b = first ? v : __m256(Vec::blendv(b, v, takes_max(Vec(b), Vec(v))));
    } else {
      b = _mm256_add_ps(b, v);
    }
  };
  for (int64_t r = 0; r < nrows; ++r) {
    const c10::BFloat16* base = plane + offset[r] + ow - pad;
    __m256 e, o;
    load_pairs<true>(base, kPairCells, kPairCells, e, o);
    for (int64_t tw = 0; tw < kw; tw += 2) {
      take(even, e, r == 0 && tw == 0);
      take(odd, o, r == 0 && tw == 0);
      if (tw + 1 == kw) break;
      take(even, o, false);
      load_pairs<true>(base + tw + 2, kPairCells, kPairCells, e, o);
      take(odd, e, false);
    }
  }
  if constexpr (!kMax) {
    even = _mm256_div_ps(even, _mm256_set1_ps(divisor));
    odd = _mm256_div_ps(odd, _mm256_set1_ps(divisor));
  }
  const __m256i both =
      _mm256_or_si256(bfloat16_lanes(even), _mm256_slli_epi32(bfloat16_lanes(odd), 16));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(direct + ow), both);
}
#endif

// The inside of a row by sweep_blocks: two blocks at a time while they
// fit, then one, then a last block ending at the last output, overlapping
// the one before (outputs are recomputed, not accumulated). Returns the end
// of what it did: inner.hi, or inner.lo when the inside is narrower than a
// vector (the sweep takes it). direct, divisor: as for sweep_blocks.
// bfloat16 values alone at stride 1 go 16 outputs at a time by sweep_pairs
// first.
template <int64_t S, int64_t KW, bool kMax, bool kTaps, typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE int64_t blocked_sweep(const scalar_t* plane, const int64_t* offset,
                                        const int32_t* row_code, int64_t nrows, int64_t kw,
                                        int64_t dilation, int64_t pad, int64_t width,
                                        int64_t last_cell, Interior inner, acc_t* result,
                                        int32_t* best_tap, scalar_t* direct, acc_t divisor) {
  constexpr int64_t L = at::vec::Vectorized<acc_t>::size();
  // One past the last cell a block reads, counted from ow * S.
  const int64_t reach = ((KW > 0 ? KW : kw) - 1) * dilation - pad + L * S;
  const auto fits = [&](int64_t ow, int64_t blocks) {
    return ow + blocks * L <= inner.hi && (ow + (blocks - 1) * L) * S + reach <= width;
  };
  int64_t ow = inner.lo;
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (S == 1 && !kTaps && std::is_same_v<scalar_t, c10::BFloat16>) {
    if (direct != nullptr && dilation == 1) {
      // One past the last cell sweep_pairs reads, counted from ow.
      const int64_t pairs_reach = (KW > 0 ? KW : kw) / 2 * 2 - pad + kPairCells;
      for (; ow + kPairCells <= inner.hi && ow + pairs_reach <= width; ow += kPairCells) {
        sweep_pairs<KW, kMax>(plane, offset, nrows, kw, pad, ow, direct, divisor);
      }
    }
  }
#endif
  for (; fits(ow, 2); ow += 2 * L) {
    sweep_blocks<2, S, KW, kMax, kTaps>(plane, offset, row_code, nrows, kw, dilation, pad,
                                        last_cell, ow, false, result, best_tap, direct,
                                        divisor);
  }
  if (fits(ow, 1)) {
    sweep_blocks<1, S, KW, kMax, kTaps>(plane, offset, row_code, nrows, kw, dilation, pad,
                                        last_cell, ow, false, result, best_tap, direct,
                                        divisor);
    ow += L;
  }
  if (ow >= inner.hi || inner.hi - L < inner.lo) return ow;
  sweep_blocks<1, S, KW, kMax, kTaps>(plane, offset, row_code, nrows, kw, dilation, pad,
                                      last_cell, inner.hi - L, true, result, best_tap,
                                      direct, divisor);
  return inner.hi;
}

// Whether a planes kernel can use blocked_sweep.
inline bool can_block(const PoolGeometry& g, const Layout5& vi) {
  return !g.adaptive && vi.stride[4] == 1 && (g.dim[2].stride == 1 || g.dim[2].stride == 2) &&
         window_taps(g) < (int64_t{1} << 24);
}

// Calls f(S, KW) with blocked_sweep's compile-time W stride and kernel for
// g (KW 0: any kernel), as std::integral_constants.
template <typename F>
void with_sweep_shape(const PoolGeometry& g, const F& f) {
  const auto with_stride = [&](auto s) {
    const int64_t kw = g.dim[2].kernel;
    kw == 2   ? f(s, std::integral_constant<int64_t, 2>{})
    : kw == 3 ? f(s, std::integral_constant<int64_t, 3>{})
              : f(s, std::integral_constant<int64_t, 0>{});
  };
  g.dim[2].stride == 1 ? with_stride(std::integral_constant<int64_t, 1>{})
                       : with_stride(std::integral_constant<int64_t, 2>{});
}

// blocked_sweep's instance for a geometry's W stride and kernel.
template <bool kMax, bool kTaps, typename scalar_t, typename acc_t>
auto blocked_sweep_for(const PoolGeometry& g) {
  decltype(&blocked_sweep<1, 2, kMax, kTaps, scalar_t, acc_t>) sweep = nullptr;
  with_sweep_shape(g, [&](auto s, auto kw) {
    sweep = &blocked_sweep<decltype(s)::value, decltype(kw)::value, kMax, kTaps, scalar_t, acc_t>;
  });
  return sweep;
}

// The D and H window rows of each output row (od, oh) of a fixed geometry:
// where each starts in the plane, and its first tap's code; and the
// average's divisor inside the row. The same for every plane and sample, so
// they are worked out once per call, before the threads start, and a row
// looks its plan up.
class RowPlans {
 public:
  struct Plan {
    int64_t first;    // into offsets() and codes()
    int64_t nrows;    // 0: a window with no cell (wholly in padding)
    int64_t divisor;  // avg_divisor of the windows inside the row
  };

  RowPlans(const PoolGeometry& g, const WindowTable& table, const Layout5& vi) {
    const int64_t out_d = table.dim[0].size(), out_h = table.dim[1].size();
    plan_.reserve(out_d * out_h);
    const Interior inner = table.inner;
    for (const auto od : c10::irange(out_d)) {
      for (const auto oh : c10::irange(out_h)) {
        const Window w[kDims] = {table.dim[0][od], table.dim[1][oh],
                                 inner.lo < inner.hi ? table.dim[2][inner.lo] : Window{}};
        const int64_t o[kDims] = {od, oh, inner.lo};
        plan_.push_back({static_cast<int64_t>(offset_.size()), w[0].count * w[1].count,
                         inner.lo < inner.hi ? avg_divisor(g, w, o) : 1});
        for (int64_t td = w[0].first_tap; td < w[0].first_tap + w[0].count; ++td) {
          for (int64_t th = w[1].first_tap; th < w[1].first_tap + w[1].count; ++th) {
            offset_.push_back(tap_position(w[0], td) * vi.stride[2] +
                              tap_position(w[1], th) * vi.stride[3]);
            code_.push_back(static_cast<int32_t>(encode_tap(g, td, th, 0)));
          }
        }
      }
    }
  }

  const Plan& operator[](int64_t row) const { return plan_[row]; }
  const int64_t* offsets() const { return offset_.data(); }
  const int32_t* codes() const { return code_.data(); }

 private:
  std::vector<Plan> plan_;
  std::vector<int64_t> offset_;
  std::vector<int32_t> code_;
};

// Asks for the cache lines of values [at, at + n).
template <typename scalar_t>
inline void prefetch_lines(const scalar_t* at, int64_t n) {
  const char* first = reinterpret_cast<const char*>(at);
  for (int64_t b = 0; b < n * int64_t{sizeof(scalar_t)}; b += kCacheLine) {
    __builtin_prefetch(first + b);
  }
}

// The rows of the D and H windows w[0], w[1] of a plane, in tap order, with
// their first tap codes. Returns how many.
template <typename scalar_t>
int64_t window_rows(const PoolGeometry& g, const Window* w, const scalar_t* plane,
                    const Layout5& vi, std::vector<const scalar_t*>& rows,
                    std::vector<int32_t>& row_code) {
  const int64_t needed = w[0].count * w[1].count;
  rows.resize(needed);
  row_code.resize(needed);
  int64_t r = 0;
  for (int64_t td = 0; td < w[0].count; ++td) {
    for (int64_t th = 0; th < w[1].count; ++th, ++r) {
      rows[r] = plane + tap_position(w[0], w[0].first_tap + td) * vi.stride[2] +
                tap_position(w[1], w[1].first_tap + th) * vi.stride[3];
      row_code[r] = static_cast<int32_t>(
          encode_tap(g, w[0].first_tap + td, w[1].first_tap + th, 0));
    }
  }
  return r;
}

// The inside of an output row by the row sweep (outputs innermost, tap by
// tap in the element functions' order) from outputs rest.lo to rest.hi.
template <bool kMax, typename scalar_t, typename acc_t>
void sweep_inside(const PoolGeometry& g, const Window* w, const scalar_t* plane,
                  const Layout5& vi, Interior rest, acc_t* result, int32_t* best_tap) {
  if (rest.lo >= rest.hi) return;
  if constexpr (kMax) {
    std::fill(result + rest.lo, result + rest.hi, -std::numeric_limits<acc_t>::infinity());
    std::fill(best_tap + rest.lo, best_tap + rest.hi,
              static_cast<int32_t>(encode_tap(g, w[0].first_tap, w[1].first_tap, 0)));
  } else {
    std::fill(result + rest.lo, result + rest.hi, acc_t(0));
  }
  const int64_t step_w = g.dim[2].stride * vi.stride[4];
  // float16 rows are widened (F16C, 8 cells at a time) and swept as floats:
  // converting tap by tap ran avg_pool1d k4's float16 forward at 3x
  // bfloat16's time (whose conversion is a shift). Where the stride skips
  // most cells, widening them all cost more than it saved: sums, beyond
  // twice the kernel; max, whose tap by tap sweep branches, beyond 8 times.
  // Chunks of outputs keep the floats in a stack buffer (in cache).
  const PoolDim& dw = g.dim[2];
  constexpr int64_t kWideCells = 2048;
  const int64_t span = (dw.kernel - 1) * dw.dilation + 1;
  const bool widen_rows = std::is_same_v<scalar_t, c10::Half> && vi.stride[4] == 1 &&
                          dw.stride <= (kMax ? 8 : 2) * dw.kernel && 2 * span <= kWideCells;
  const int64_t chunk = widen_rows ? (kWideCells - span) / dw.stride + 1 : 0;
  for (int64_t td = w[0].first_tap; td < w[0].first_tap + w[0].count; ++td) {
    for (int64_t th = w[1].first_tap; th < w[1].first_tap + w[1].count; ++th) {
      const scalar_t* row = plane + tap_position(w[0], td) * vi.stride[2] +
                            tap_position(w[1], th) * vi.stride[3];
      if (widen_rows) {
        acc_t wide[kWideCells];
        for (int64_t lo = rest.lo; lo < rest.hi; lo += chunk) {
          // (rest's windows lie inside the row: cells from lo * stride - pad)
          const int64_t n = std::min(chunk, rest.hi - lo);
          widen(row + lo * dw.stride - dw.pad, wide, (n - 1) * dw.stride + span);
          for (int64_t tw = 0; tw < dw.kernel; ++tw) {
            with_step(dw.stride, [&](auto step) {
              if constexpr (kMax) {
                max_sweep(wide + tw * dw.dilation, step, Interior{0, n}, result + lo,
                          best_tap + lo, static_cast<int32_t>(encode_tap(g, td, th, tw)));
              } else {
                sum_sweep(wide + tw * dw.dilation, step, Interior{0, n}, result + lo);
              }
            });
          }
        }
        continue;
      }
      for (int64_t tw = 0; tw < g.dim[2].kernel; ++tw) {
        const scalar_t* at = row + (tw * g.dim[2].dilation - g.dim[2].pad) * vi.stride[4];
        with_step(step_w, [&](auto step) {
          if constexpr (kMax) {
            max_sweep(at, step, rest, result, best_tap,
                      static_cast<int32_t>(encode_tap(g, td, th, tw)));
          } else {
            sum_sweep(at, step, rest, result);
          }
        });
      }
    }
  }
}

// One tap into a vector of lanes: max_takes lane-wise (a larger value or a
// NaN takes the lane, and its tap code with it unless !kCodes), or the sum.
template <bool kMax, bool kCodes = true, typename Vec>
inline void take_or_add(Vec& best, Vec& code, const Vec& v, const Vec& tap) {
  if constexpr (kMax) {
    const Vec takes = (v > best) | (v != v);
    best = Vec::blendv(best, v, takes);
    if constexpr (kCodes) code = Vec::blendv(code, tap, takes);
  } else {
    best += v;
  }
}

// The cell that decides a window's maximum where its value alone does not
// say its bits: the last NaN in tap order, else (a maximum of zero) the first
// zero, over rows[0, nrows) in tap order and columns [w.begin, w.begin +
// w.count) of each.
template <typename scalar_t>
inline auto tap_order_pick(const scalar_t* const* rows, int64_t nrows, const Window& w,
                           bool nan) {
  using acc_t = at::opmath_type<scalar_t>;
  if (nan) {
    for (int64_t r = nrows - 1; r >= 0; --r) {
      for (int64_t x = w.begin + w.count - 1; x >= w.begin; --x) {
        const auto v = static_cast<acc_t>(rows[r][x]);
        if (v != v) return v;
      }
    }
  } else {
    for (int64_t r = 0; r < nrows; ++r) {
      for (int64_t x = w.begin; x < w.begin + w.count; ++x) {
        const auto v = static_cast<acc_t>(rows[r][x]);
        if (v == 0) return v;
      }
    }
  }
  TORCH_INTERNAL_ASSERT(false, "tap_order_pick: no such cell");
  return acc_t(0);
}

// Adaptive windows of a row by columns, where they are short along W: each
// column's D and H taps reduced first, a vector of columns at a time over
// all the window's rows in registers (low precision widened as loaded), then
// each output over its W window's columns. Max merges columns by
// window_max's rule over the taps' order (the last NaN, else the first max),
// so it picks the element functions' tap (and, for values alone, the sign
// of a zero); its codes ride in acc_t lanes (exact: by_columns keeps them
// under 2^24). Sums are reassociated (columns, then across), as torch's
// vectorised kernels do. Max's values alone (!kCodes) keep no codes: a window
// whose maximum is a NaN or a zero, where the tap decides the bits, takes
// them from its cells in tap order (the last NaN, the first zero), which
// are the codes' choice (2 threads, 32x128x36x36 float32 to 4x4: 1.4 ->
// 0.74 ms; variable 8-64 cells a side in 64x64 planes 2.8 -> 2.2).
template <bool kMax, bool kCodes = kMax, typename scalar_t, typename acc_t>
void columns_row(const scalar_t* const* rows, const int32_t* row_code, int64_t nrows,
                 const std::vector<Window>& wx, int64_t width, acc_t* column,
                 acc_t* column_code, acc_t* result, int32_t* best_tap) {
  static_assert(kMax || !kCodes);
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size();
  // Columns [x, x + U * kLanes): the first row initialises, later ones
  // compete (max_takes, lane-wise) or add. U vectors side by side, since
  // each row's step of one vector waits on its previous step.
  const auto block = [&](int64_t x, auto vectors) {
    constexpr int64_t U = decltype(vectors)::value;
    Vec best[U], code[U];
    for (int64_t u = 0; u < U; ++u) {
      best[u] = load_acc<acc_t>(rows[0] + x + u * kLanes);
      if constexpr (kCodes) code[u] = Vec(static_cast<acc_t>(row_code[0]));
    }
    for (int64_t r = 1; r < nrows; ++r) {
      const Vec row_tap(kCodes ? static_cast<acc_t>(row_code[r]) : acc_t(0));
      for (int64_t u = 0; u < U; ++u) {
        take_or_add<kMax, kCodes>(best[u], code[u], load_acc<acc_t>(rows[r] + x + u * kLanes),
                                  row_tap);
      }
    }
    for (int64_t u = 0; u < U; ++u) {
      best[u].store(column + x + u * kLanes);
      if constexpr (kCodes) code[u].store(column_code + x + u * kLanes);
    }
  };
  if (width >= kLanes) {
    int64_t x = 0;
    for (; x + 4 * kLanes <= width; x += 4 * kLanes) block(x, std::integral_constant<int64_t, 4>{});
    if (x + 2 * kLanes <= width) {
      block(x, std::integral_constant<int64_t, 2>{});
      x += 2 * kLanes;
    }
    if (x + kLanes <= width) {
      block(x, std::integral_constant<int64_t, 1>{});
      x += kLanes;
    }
    // The last columns overlap the vector before: recomputed, not accumulated.
    if (x < width) block(width - kLanes, std::integral_constant<int64_t, 1>{});
  } else {
    for (int64_t x = 0; x < width; ++x) {
      acc_t best = static_cast<acc_t>(rows[0][x]);
      int32_t code = row_code[0];
      for (int64_t r = 1; r < nrows; ++r) {
        const auto v = static_cast<acc_t>(rows[r][x]);
        if constexpr (kMax) {
          const bool takes = max_takes(v, best);
          best = select(takes, v, best);
          code = select(takes, row_code[r], code);
        } else {
          best += v;
        }
      }
      column[x] = best;
      if constexpr (kCodes) column_code[x] = static_cast<acc_t>(code);
    }
  }
  for (const auto ow : c10::irange(static_cast<int64_t>(wx.size()))) {
    const acc_t* v = column + wx[ow].begin;
    const int64_t count = wx[ow].count;
    if constexpr (kMax && !kCodes) {
      acc_t top = -std::numeric_limits<acc_t>::infinity();
      bool nan = false;
      for (int64_t x = 0; x < count; ++x) {
        top = v[x] > top ? v[x] : top;
        nan |= v[x] != v[x];
      }
      result[ow] = top;
      if (POOL_EXT_UNPREDICTABLE(nan || top == 0)) {
        result[ow] = tap_order_pick(rows, nrows, wx[ow], nan);
      }
    } else if constexpr (kMax) {
      // Two short independent passes rather than one chain of selects: the
      // largest value and whether a NaN is there, then the tap by
      // window_max's rule (the first max, else the last NaN).
      const acc_t* code = column_code + wx[ow].begin;
      acc_t top = -std::numeric_limits<acc_t>::infinity();
      bool nan = false;
      for (int64_t x = 0; x < count; ++x) {
        top = v[x] > top ? v[x] : top;
        nan |= v[x] != v[x];
      }
      if (POOL_EXT_UNPREDICTABLE(!nan)) {
        acc_t tap = std::numeric_limits<acc_t>::infinity();
        for (int64_t x = 0; x < count; ++x) {
          const acc_t t = code[x] + static_cast<acc_t>(x);
          tap = std::min(tap, v[x] == top ? t : std::numeric_limits<acc_t>::infinity());
        }
        result[ow] = top;
        if (top == 0) {  // +0 and -0 are equal: the winning tap's zero
          for (int64_t x = 0; x < count; ++x) {
            if (code[x] + static_cast<acc_t>(x) == tap) result[ow] = v[x];
          }
        }
        best_tap[ow] = static_cast<int32_t>(tap);
      } else {
        acc_t tap = -1;
        for (int64_t x = 0; x < count; ++x) {
          const acc_t t = code[x] + static_cast<acc_t>(x);
          if (v[x] != v[x] && t > tap) {
            tap = t;
            result[ow] = v[x];
          }
        }
        best_tap[ow] = static_cast<int32_t>(tap);
      }
    } else {
      acc_t sum = 0;
      for (int64_t x = 0; x < count; ++x) sum += v[x];
      result[ow] = sum;
    }
  }
}

// Whether a row of adaptive windows goes by columns_row: contiguous rows,
// more than one of them per window, W windows short (long ones reduce as
// runs), tap codes that fit an int32.
inline bool by_columns(const PoolGeometry& g, const Layout5& vi, const Window* w,
                       const WindowTable& table) {
  return g.adaptive && vi.stride[4] == 1 && w[0].count * w[1].count > 1 &&
         !table.dim[2].empty() && table.widest < 64 && window_taps(g) < (int64_t{1} << 24);
}

// Values alone of windows that reach into padding (or past the input, by
// ceil_mode): each plane is copied once into a buffer with its padding
// filled (-inf for max, which never wins over a real cell and leaves the
// value a window of real cells gives; 0 for sums, which adds nothing), so
// that every window is whole and the vector blocks write every row
// straight to the output, where the element functions took each edge
// output (3x3/1 on 35x35 float planes: 2x). Averages qualify where the
// divisor is the same for every window: count_include_pad (or an
// override) and no window past the padding after the input.
constexpr int64_t kMostPaddedCells = int64_t{1} << 20;

// One past the last cell the last window of d reaches, counted from the
// input's first cell (past d.in: padding after the input, or ceil_mode).
inline int64_t window_reach(const PoolDim& d) {
  return (d.out - 1) * d.stride - d.pad + (d.kernel - 1) * d.dilation + 1;
}

// The padded extent of dim k: every window of g inside it, from pad cells
// of padding before the input.
inline int64_t padded_extent(const PoolDim& d) {
  return d.pad + std::max(d.in, window_reach(d));
}

// Whether g's windows go through a padded buffer (max: its values alone).
inline bool pads_windows(const PoolGeometry& g, bool max) {
  constexpr int64_t L = at::vec::Vectorized<float>::size();
  if (g.adaptive || g.sizes != nullptr || !(g.dim[2].stride == 1 || g.dim[2].stride == 2) ||
      g.dim[2].out < L || window_taps(g) >= (int64_t{1} << 24)) {
    return false;
  }
  bool beyond = false;  // some window reaches a cell that is not in the input
  int64_t cells = 1;
  for (const auto k : c10::irange(kDims)) {
    const PoolDim& d = g.dim[k];
    const int64_t reach = window_reach(d);
    beyond |= d.pad > 0 || reach > d.in;
    if (!max && reach > d.in + d.pad_end && g.divisor_override == 0) return false;
    cells *= padded_extent(d) + (k == 2 ? 2 * L : 0);  // rows end in slack
  }
  return beyond && (max || g.count_include_pad || g.divisor_override != 0) &&
         cells <= kMostPaddedCells;
}

inline bool pads_planes(const PoolGeometry& g, bool max, const Layout5& vi, const Layout5& vo) {
  return vi.stride[4] == 1 && vo.stride[4] == 1 && pads_windows(g, max);
}

constexpr int64_t kPrefetchBytes = 16 << 20;  // inputs larger are taken to be out of cache

// Whether the elements of vi (scalar_t's) span more than kPrefetchBytes.
template <typename scalar_t>
inline bool out_of_cache(const Layout5& vi) {
  return vi.size[0] * vi.stride[0] * int64_t{sizeof(scalar_t)} > kPrefetchBytes;
}

// Prefetches `count` planes (`bytes` long, `stride` bytes apart, from
// address `first`) in `steps` calls of next(), a few cache lines each, plane
// by plane. Addresses are integers: up to two lines past a plane's end may be
// fetched, and prefetches never fault.
class PlanesPrefetch {
 public:
  PlanesPrefetch(uintptr_t first, int64_t stride, int64_t bytes, int64_t count, int64_t steps)
      : plane_(first),
        stride_(stride),
        lines_(bytes / kCacheLine + 2),  // enough for any alignment
        left_(count * lines_),
        per_step_(steps > 0 ? (left_ + steps - 1) / steps : left_) {}

  void next() {
    for (int64_t q = std::min(per_step_, left_); q > 0; --q, --left_) {
      __builtin_prefetch(reinterpret_cast<const void*>(plane_ + line_ * kCacheLine));
      if (++line_ == lines_) {
        line_ = 0;
        plane_ += stride_;
      }
    }
  }

 private:
  uintptr_t plane_;
  int64_t stride_, lines_, line_ = 0, left_, per_step_;
};

template <bool kMax, typename scalar_t>
void forward_planes_padded(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t L = at::vec::Vectorized<acc_t>::size();
  const Layout5 vi = layout_of(in), vo = layout_of(out);
  const auto* src = in.const_data_ptr<scalar_t>();
  auto* dst = out.mutable_data_ptr<scalar_t>();
  // The geometry over the buffer: no padding, every window whole. Rows end
  // in slack, so that the stride-2 blocks' reads past a row's last window
  // stay in the buffer.
  PoolGeometry whole = g;
  for (auto& d : whole.dim) {
    d.in = padded_extent(d);
    d.pad = d.pad_end = 0;
  }
  whole.dim[2].in += 2 * L;
  Layout5 vb{};
  vb.stride[4] = 1;
  vb.stride[3] = whole.dim[2].in;
  vb.stride[2] = whole.dim[1].in * vb.stride[3];
  const int64_t cells = whole.dim[0].in * vb.stride[2];
  WindowTable table;
  table.build(whole, 0);
  const RowPlans plans(whole, table, vb);
  const auto block = blocked_sweep_for<kMax, false, scalar_t, acc_t>(whole);
  const scalar_t fill = kMax ? -std::numeric_limits<scalar_t>::infinity() : scalar_t(0);
  const int64_t rows = vo.size[0] * vo.size[1] * vo.size[2] * vo.size[3];
  const int64_t at_input = (g.dim[0].pad * whole.dim[1].in + g.dim[1].pad) * vb.stride[3] +
                           g.dim[2].pad;
  // An input out of cache: each plane's rows prefetch the next plane's
  // lines, so that its copy finds them in cache (one thread, max 3x3/2 pad
  // 1 on 8x64x112x112 float32: the copy, at the memory's pace, had been
  // more of the time than the pooling).
  const int64_t planes = vi.size[0] * vi.size[1];
  const int64_t plane_bytes = vi.pixels() * int64_t{sizeof(scalar_t)};
  const bool prefetch = dense_planes(vi) && planes * plane_bytes > kPrefetchBytes;
  at::parallel_for(0, rows, grain(vo.size[4] * window_taps(g)), [&](int64_t begin, int64_t end) {
    LineVector<scalar_t> buffer(cells, fill);
    int64_t held = -1;  // the plane (n, c) in the buffer
    std::optional<PlanesPrefetch> ahead;
    RowCursor cursor(begin, vo);
    for (int64_t r = begin; r < end; ++r, cursor.next()) {
      const int64_t n = cursor.n, c = cursor.c;
      if (n * vo.size[1] + c != held) {
        held = n * vo.size[1] + c;
        for (const auto d : c10::irange(vi.size[2])) {
          for (const auto h : c10::irange(vi.size[3])) {
            const scalar_t* from = src + vi.offset(n, c, d, h, 0);
            std::copy(from, from + vi.size[4],
                      buffer.data() + at_input + d * vb.stride[2] + h * vb.stride[3]);
          }
        }
        ahead.reset();
        if (prefetch && held + 1 < planes) {
          const int64_t n1 = (held + 1) / vi.size[1], c1 = (held + 1) % vi.size[1];
          const scalar_t* next = src + vi.offset(n1, c1, 0, 0, 0);
          ahead.emplace(reinterpret_cast<uintptr_t>(next), 0, plane_bytes, 1,
                        vo.size[2] * vo.size[3]);
        }
      }
      if (ahead) ahead->next();
      const RowPlans::Plan& plan = plans[cursor.x[0] * vo.size[3] + cursor.x[1]];
      block(buffer.data(), plans.offsets() + plan.first, plans.codes() + plan.first, plan.nrows,
            whole.dim[2].kernel, whole.dim[2].dilation, 0, whole.dim[2].in, cells - 1,
            table.inner, nullptr, nullptr, dst + vo.offset(n, c, cursor.x[0], cursor.x[1], 0),
            static_cast<acc_t>(plan.divisor));
    }
  });
}

// The planes forward: output rows (n, c, od, oh) split over threads. The
// inside of each row (outputs whose W windows hold every tap) goes into
// result (and best_tap for max) a vector of outputs at a time where
// blocked_sweep applies, by the row sweep elsewhere; short adaptive windows
// by columns_row. Then finish(n, c, o, w, plane, table, inner, from,
// result, best_tap) writes the row: outputs [from, inner.hi) from result,
// those outside `inner` through the element functions (outputs [inner.lo,
// from) the blocks wrote to the output row directly). Without kTaps (max's
// values alone) the vector blocks keep no tap codes.
template <bool kMax, typename scalar_t, bool kTaps = kMax, typename Finish>
void forward_planes(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out,
                    const Finish& finish) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout5 vi = layout_of(in), vo = layout_of(out);
  if (!kTaps && pads_planes(g, kMax, vi, vo)) {
    forward_planes_padded<kMax, scalar_t>(g, in, out);
    return;
  }
  const auto* src = in.const_data_ptr<scalar_t>();
  const int64_t rows = vo.size[0] * vo.size[1] * vo.size[2] * vo.size[3];
  const bool blocked = can_block(g, vi);
  const auto block = blocked_sweep_for<kMax, kTaps, scalar_t, acc_t>(g);
  // Blocks write values alone straight to a unit-stride row.
  auto* dst = out.mutable_data_ptr<scalar_t>();
  const bool direct = !kTaps && vo.stride[4] == 1;
  const int64_t last = last_cell(vi);
  // Windows the same for every sample (all but variable pooling): one table
  // and one set of row plans for all threads.
  WindowTable shared;
  if (g.sizes == nullptr) shared.build(g, 0);
  // Rows read in part (variable pooling's samples inside their padding; views
  // of part of each row) of an input out of cache: the hardware prefetchers
  // leave such reads waiting (a sum over 36x36 corners of 64x64 float planes,
  // torch's too, takes twice a whole plane's time), so each output row by
  // columns asks for the next one's window rows (one thread, 32x128 planes
  // of 8-64 cells a side to 4x4: 1.3x faster).
  const bool prefetch = out_of_cache<scalar_t>(vi);
  const std::optional<RowPlans> plans =
      blocked ? std::make_optional<RowPlans>(g, shared, vi) : std::nullopt;
  if constexpr (!kTaps) {
    // Values alone where the blocks write every row whole: a loop of
    // nothing but the blocks, their instance inlined into it (the general
    // loop's per-row state and call through a pointer cost 50 cycles a
    // row: NCHW forwards 1.0-1.4x faster on 2 threads, 2x2 on 32x64x56x56
    // bfloat16 0.65 -> 0.51 ms; the same rows and calls, so the same bits).
    bool whole = direct && blocked && g.sizes == nullptr && shared.inner.lo == 0 &&
                 shared.inner.hi == vo.size[4] && vo.size[4] >= at::vec::Vectorized<acc_t>::size();
    for (int64_t i = 0; whole && i < vo.size[2] * vo.size[3]; ++i) whole = (*plans)[i].nrows > 0;
    if (whole) {
      const RowPlans& p = *plans;
      const Interior inner = shared.inner;
      with_sweep_shape(g, [&](auto s, auto kw) {
        const int64_t grain_size = grain(vo.size[4] * window_taps(g));
        at::parallel_for(0, rows, grain_size, [&](int64_t begin, int64_t end) {
          RowCursor cursor(begin, vo);
          for (int64_t r = begin; r < end; ++r, cursor.next()) {
            const int64_t plane_at = vi.offset(cursor.n, cursor.c, 0, 0, 0);
            const RowPlans::Plan& plan = p[cursor.x[0] * vo.size[3] + cursor.x[1]];
            blocked_sweep<decltype(s)::value, decltype(kw)::value, kMax, false>(
                src + plane_at, p.offsets() + plan.first, p.codes() + plan.first, plan.nrows,
                g.dim[2].kernel, g.dim[2].dilation, g.dim[2].pad, vi.size[4],
                last - plane_at, inner, static_cast<acc_t*>(nullptr), nullptr,
                dst + vo.offset(cursor.n, cursor.c, cursor.x[0], cursor.x[1], 0),
                static_cast<acc_t>(plan.divisor));
          }
        });
      });
      return;
    }
  }
  at::parallel_for(0, rows, grain(vo.size[4] * window_taps(g)), [&](int64_t begin, int64_t end) {
    WindowTable own;
    WindowTable& table = g.sizes == nullptr ? shared : own;
    LineVector<acc_t> result(vo.size[4]);
    LineVector<int32_t> best_tap(kMax ? vo.size[4] : 0);
    std::vector<const scalar_t*> window_row;
    std::vector<int32_t> row_code;
    LineVector<acc_t> column, column_code;
    RowCursor cursor(begin, vo);
    for (int64_t r = begin; r < end; ++r, cursor.next()) {
      const int64_t n = cursor.n, c = cursor.c;
      int64_t o[kDims] = {cursor.x[0], cursor.x[1], 0};
      if (g.sizes != nullptr) table.build(g, n);
      const int64_t plane_at = vi.offset(n, c, 0, 0, 0);
      const scalar_t* plane = src + plane_at;
      const Interior& inner = table.inner;
      Interior rest = inner;  // the inside left to the row sweep
      // Fixed windows: the blocks first (adaptive ones never block).
      if (blocked && inner.lo < inner.hi) {
        const RowPlans::Plan& plan = (*plans)[o[0] * vo.size[3] + o[1]];
        if (plan.nrows > 0) {
          scalar_t* row = direct ? dst + vo.offset(n, c, o[0], o[1], 0) : nullptr;
          rest.lo = block(plane, plans->offsets() + plan.first, plans->codes() + plan.first,
                          plan.nrows, g.dim[2].kernel, g.dim[2].dilation, g.dim[2].pad,
                          vi.size[4], last - plane_at, inner, result.data(),
                          best_tap.data(), row, static_cast<acc_t>(plan.divisor));
          // A row the blocks wrote whole: nothing left for finish.
          if (direct && rest.lo == vo.size[4] && inner.lo == 0) continue;
        }
      }
      Window w[kDims] = {table.dim[0][o[0]], table.dim[1][o[1]], {}};
      if (by_columns(g, vi, w, table)) {
        const std::vector<Window>& wx = table.dim[2];
        const int64_t width = wx.back().begin + wx.back().count;
        const int64_t nrows = window_rows(g, w, plane, vi, window_row, row_code);
        if (prefetch && width < vi.stride[3] && r + 1 < end) {
          RowCursor after = cursor;
          after.next();
          // (Written out: through a helper, a function or a lambda given to
          // window_rows' loop, GCC emitted none of these prefetches.)
          if (after.n == n) {
            const Window later[2] = {table.dim[0][after.x[0]], table.dim[1][after.x[1]]};
            const scalar_t* next_plane = src + vi.offset(n, after.c, 0, 0, 0);
            for (int64_t td = 0; td < later[0].count; ++td) {
              for (int64_t th = 0; th < later[1].count; ++th) {
                prefetch_lines(next_plane +
                                   tap_position(later[0], later[0].first_tap + td) * vi.stride[2] +
                                   tap_position(later[1], later[1].first_tap + th) * vi.stride[3],
                               width);
              }
            }
          }
        }
        column.resize(width);
        column_code.resize(kTaps ? width : 0);
        columns_row<kMax, kTaps>(window_row.data(), row_code.data(), nrows, wx, width,
                                 column.data(), column_code.data(), result.data(),
                                 best_tap.data());
        finish(n, c, o, w, plane, table, Interior{0, vo.size[4]}, 0, result.data(),
               best_tap.data());
        continue;
      }
      sweep_inside<kMax>(g, w, plane, vi, rest, result.data(), best_tap.data());
      finish(n, c, o, w, plane, table, inner, direct ? rest.lo : inner.lo, result.data(),
             best_tap.data());
    }
  });
}

// taps: null for the values alone (the inference forward).
template <typename scalar_t, typename tap_t>
void max_forward_planes(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out,
                        const at::Tensor* taps) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout5 vi = layout_of(in), vo = layout_of(out), vt = taps ? layout_of(*taps) : vo;
  auto* dst = out.mutable_data_ptr<scalar_t>();
  tap_t* tap = taps ? taps->mutable_data_ptr<tap_t>() : nullptr;
  const auto finish = [&](int64_t n, int64_t c, const int64_t* o, Window* w,
                          const scalar_t* plane, const WindowTable& table, Interior inner,
                          int64_t from, const acc_t* best, const int32_t* best_tap) {
    scalar_t* out_row = dst + vo.offset(n, c, o[0], o[1], 0);
    tap_t* tap_row = tap ? tap + vt.offset(n, c, o[0], o[1], 0) : nullptr;
    for_edges(inner, vo.size[4], [&](int64_t ow) {
      w[2] = table.dim[2][ow];
      int64_t t;
      const acc_t value =
          plane_window_max<scalar_t, acc_t>(g, w, plane, vi, tap_row ? &t : nullptr);
      out_row[ow * vo.stride[4]] = static_cast<scalar_t>(value);
      if (tap_row) tap_row[ow * vt.stride[4]] = static_cast<tap_t>(t);
    });
    if (vo.stride[4] == 1 && vt.stride[4] == 1) {
      // Values and taps in two loops over restrict pointers: byte stores may
      // alias anything, and one plain loop of both stayed scalar.
      narrow(best + from, out_row + from, inner.hi - from);
      if (tap_row) narrow(best_tap + from, tap_row + from, inner.hi - from);
    } else {
      for (int64_t ow = from; ow < inner.hi; ++ow) {
        out_row[ow * vo.stride[4]] = static_cast<scalar_t>(best[ow]);
        if (tap_row) tap_row[ow * vt.stride[4]] = static_cast<tap_t>(best_tap[ow]);
      }
    }
  };
  if (taps) {
    forward_planes<true, scalar_t>(g, in, out, finish);
  } else {
    forward_planes<true, scalar_t, false>(g, in, out, finish);
  }
}

// Channels-last: one output pixel at a time, every channel at once, a
// block of channels in registers where the channels allow it. Max: the
// first tap initialises the lanes (as window_max's start at -inf and its
// rule would), later taps compete; average: taps add in window_sum's order.
// So values and taps are the element functions' exactly.

// A cell of an output's window (channel 0) with its tap code.
template <typename scalar_t>
struct ChannelTap {
  const scalar_t* at;
  int64_t code;
};

constexpr int64_t kChannelBlock = 32;
// Average windows of this many taps or more (global pooling of 128-1023
// pixels, long adaptive windows) sum by blocks of kTapBlock taps, the
// blocks' sums into a total: as deep in roundings as a block and the number
// of blocks, where one chain per channel over 1023 taps of a constant
// drifted 7.6e-6 (torch 1.5e-7; now 1e-7). Shorter windows keep one chain.
constexpr int64_t kBlockedTaps = 128;
constexpr int64_t kTapBlock = 32;
constexpr int64_t kGlobalChannels = 64;  // channels of one avg_forward_global_channels task
constexpr int64_t kPrefetchAhead = 2;
constexpr int64_t kL1Bytes = 32 * 1024;  // L1 data cache of current x86 cores

// Reads a vector of lanes at `at`: whole, or (kPart) its first `width` lanes.
template <bool kPart, typename acc_t, typename scalar_t>
inline at::vec::Vectorized<acc_t> load_lanes(const scalar_t* at, int64_t width) {
  if constexpr (kPart) {
    return load_acc<acc_t>(at, width);
  } else {
    return load_acc<acc_t>(at);
  }
}

// Channels [c0, c0 + kWidth) of one output over its taps (kWidth a whole
// number of vectors) into value[0, kWidth) and (max) the winning codes into
// code[0, kWidth), in acc_t lanes (codes exact there). kPart: one vector
// of which the first `width` lanes are channels (the last few, where a
// scalar loop cost more than the whole vectors before it), stored whole.
// With `out` (values alone: see DirectOut), the outputs go from registers
// to out[0, kWidth) instead, averages divided by `divisor`, narrowed as
// the finish would (the same bits), and value is not written.
template <int64_t kWidth, bool kMax, bool kPart = false, typename scalar_t, typename acc_t>
inline void channels_block(const ChannelTap<scalar_t>* taps, int64_t count, int64_t c0,
                           acc_t* value, acc_t* code, scalar_t* out, acc_t divisor,
                           int64_t width = kWidth) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size(), kVecs = kWidth / kLanes;
  static_assert(!kPart || kVecs == 1);
  const auto put = [&](const Vec* v) {
    for (int64_t j = 0; j < kVecs; ++j) {
      const Vec x = kMax ? v[j] : v[j] / Vec(divisor);
      store_cells(x, out + j * kLanes, kPart ? width : kLanes);
    }
  };
  if constexpr (!kMax) {
    if (count >= kBlockedTaps) {  // by blocks (see kBlockedTaps)
      Vec total[kVecs], sum[kVecs];
      for (auto& v : total) v = Vec(acc_t(0));
      for (int64_t t = 0; t < count; t += kTapBlock) {
        for (auto& v : sum) v = Vec(acc_t(0));
        for (int64_t u = t; u < std::min(t + kTapBlock, count); ++u) {
          for (int64_t j = 0; j < kVecs; ++j) {
            sum[j] += load_lanes<kPart, acc_t>(taps[u].at + c0 + j * kLanes, width);
          }
        }
        for (int64_t j = 0; j < kVecs; ++j) total[j] += sum[j];
      }
      if (out != nullptr) {
        put(total);
        return;
      }
      for (int64_t j = 0; j < kVecs; ++j) total[j].store(value + j * kLanes);
      return;
    }
  }
  Vec best[kVecs], best_code[kVecs];
  for (int64_t j = 0; j < kVecs; ++j) {
    const Vec v = load_lanes<kPart, acc_t>(taps[0].at + c0 + j * kLanes, width);
    best[j] = kMax ? v : Vec(acc_t(0)) + v;
    best_code[j] = Vec(static_cast<acc_t>(taps[0].code));
  }
  for (int64_t t = 1; t < count; ++t) {
    const scalar_t* x = taps[t].at + c0;
    const Vec tap_code(static_cast<acc_t>(taps[t].code));
    for (int64_t j = 0; j < kVecs; ++j) {
      take_or_add<kMax>(best[j], best_code[j], load_lanes<kPart, acc_t>(x + j * kLanes, width),
                        tap_code);
    }
  }
  if (out != nullptr) {
    put(best);
    return;
  }
  for (int64_t j = 0; j < kVecs; ++j) {
    best[j].store(value + j * kLanes);
    if constexpr (kMax) best_code[j].store(code + j * kLanes);
  }
}

// Where the channels forward of values alone (averages; max's inference
// forward, which keeps no taps) stores each block of channels straight
// from its registers: the output (null where the finish writes it) and
// its layout, channels at stride 1. This spares the finish's pass over each
// pixel's channels (stored, reloaded, divided, narrowed): avg_pool2d 3x3/1
// pad 1 on 8x192x35x35 float32, 2 threads, 0.46 -> 0.38-0.39 ms; bfloat16
// there and 2x2 windows, whose loads dominate, 0-5%.
template <typename scalar_t>
struct DirectOut {
  scalar_t* dst;
  Layout5 layout;
};

// State of the channels forward, one per task of a parallel loop.
template <typename scalar_t, typename code_t>
struct ChannelScratch {
  using acc_t = at::opmath_type<scalar_t>;
  WindowTable table;
  std::vector<ChannelTap<scalar_t>> row_taps, taps;
  LineVector<acc_t> value, code;  // a vector past the channels: channels_block's kPart
  LineVector<code_t> rest_code;
  // The streamed average's sum of a block of kTapBlock taps; the streamed
  // loop's half tap, widened.
  LineVector<acc_t> block;
  explicit ChannelScratch(int64_t channels)
      : value(channels + at::vec::Vectorized<acc_t>::size()),
        code(channels + at::vec::Vectorized<acc_t>::size()),
        rest_code(channels) {}
};

// Channels [c0, c0 + width) of a long average window, streamed tap by tap,
// into total: channels_block's blocks, in its order (the same bits), each
// block's last tap added to the total in the same pass.
template <typename scalar_t, typename code_t, typename acc_t>
void sum_taps_by_blocks(const ChannelTap<scalar_t>* taps, int64_t count, int64_t c0,
                        int64_t width, int64_t next, acc_t* __restrict__ total,
                        ChannelScratch<scalar_t, code_t>& s) {
  if (static_cast<int64_t>(s.block.size()) < width) s.block.resize(width);
  acc_t* __restrict__ sum = s.block.data();
  for (int64_t t = 0; t < count; t += kTapBlock) {
    const int64_t last = std::min(t + kTapBlock, count) - 1;
    for (int64_t u = t; u < last; ++u) {
      const scalar_t* __restrict__ at = taps[u].at + c0;
      if (next > 0) prefetch_lines(at + next, width);
      if (u == t) {
        for (int64_t c = 0; c < width; ++c) sum[c] = acc_t(0) + static_cast<acc_t>(at[c]);
      } else {
        for (int64_t c = 0; c < width; ++c) sum[c] += static_cast<acc_t>(at[c]);
      }
    }
    // The last tap, and the block's sum into the total (each from 0 where
    // it is the first).
    const scalar_t* __restrict__ at = taps[last].at + c0;
    if (next > 0) prefetch_lines(at + next, width);
    const bool alone = last == t, first = t == 0;
    for (int64_t c = 0; c < width; ++c) {
      const acc_t block = (alone ? acc_t(0) : sum[c]) + static_cast<acc_t>(at[c]);
      total[c] = (first ? acc_t(0) : total[c]) + block;
    }
  }
}

// Output rows [begin, end) of the channels forward, rows (n, od, oh) of
// the grid of vo (whose channel count is vo.size[1]), reading src laid out
// as vi: finish(n, o, w, c0, width, value, code, count) writes channels
// [c0, c0 + width) of output pixel (n, o) from its window's reduction
// (value: max, or the sum; code: max's winning taps, in acc_t or int64_t),
// count the taps of the window (none: a window wholly in padding).
template <bool kMax, typename scalar_t, typename code_t, typename Finish>
void forward_channel_rows(const PoolGeometry& g, const scalar_t* src, const Layout5& vi,
                          const Layout5& vo, int64_t begin, int64_t end,
                          ChannelScratch<scalar_t, code_t>& s, const Finish& finish,
                          const DirectOut<scalar_t>& direct) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = vo.size[1];
  // Blocks carry tap codes in acc_t lanes: exact below 2^24 (float).
  const bool by_blocks = window_taps(g) < (int64_t{1} << 24);
  const bool prefetch = out_of_cache<scalar_t>(vi);
  WindowTable& table = s.table;
  auto &row_taps = s.row_taps, &taps = s.taps;
  for (const auto r : c10::irange(begin, end)) {
    int64_t n, o[kDims];
    o[1] = r % vo.size[3];
    o[0] = (r / vo.size[3]) % vo.size[2];
    n = r / (vo.size[3] * vo.size[2]);
    table.build(g, n);
    Window w[kDims] = {table.dim[0][o[0]], table.dim[1][o[1]], {}};
    // The window's rows (D and H taps) at W position 0, in tap order.
    row_taps.clear();
    for (int64_t td = w[0].first_tap; td < w[0].first_tap + w[0].count; ++td) {
      for (int64_t th = w[1].first_tap; th < w[1].first_tap + w[1].count; ++th) {
        row_taps.push_back({src + vi.offset(n, 0, tap_position(w[0], td),
                                            tap_position(w[1], th), 0),
                            encode_tap(g, td, th, 0)});
      }
    }
    for (o[2] = 0; o[2] < vo.size[4]; ++o[2]) {
      w[2] = table.dim[2][o[2]];
      taps.clear();
      for (const auto& row : row_taps) {
        for (int64_t tw = w[2].first_tap; tw < w[2].first_tap + w[2].count; ++tw) {
          taps.push_back({row.at + tap_position(w[2], tw) * vi.stride[4], row.code + tw});
        }
      }
      const auto count = static_cast<int64_t>(taps.size());
      acc_t* value = s.value.data();
      acc_t* code = s.code.data();
      // Each tap's lines of the window kPrefetchAhead outputs on are asked
      // for as the tap is read: a pixel's taps are rows apart, too many
      // streams for the hardware prefetchers once the input is out of cache
      // (2x2 on 16x256x56x56 float: 2.0 -> 1.35 ms; max 3x3/2 3.6 -> 1.5;
      // adaptive 56 -> 7 1.85 -> 1.35). Not where that window overlaps this
      // one (its cells are mostly here already: 5x5/1 1.1x slower), nor in
      // cache (7-12 MB inputs: 1.1x slower). Only between windows of the
      // same taps, so that every address asked for is a cell of the input.
      const Window& later = table.dim[2][std::min(o[2] + kPrefetchAhead, vo.size[4] - 1)];
      const bool fresh = later.begin >= w[2].begin + w[2].count * w[2].step &&
                         later.count == w[2].count && later.first_tap == w[2].first_tap;
      const int64_t next = prefetch && fresh ? (later.begin - w[2].begin) * vi.stride[4] : 0;
      int64_t c0 = 0;
      // Blocks re-read the window once per block: only while it stays in L1.
      if (count > 0 && by_blocks && count * channels * sizeof(scalar_t) <= kL1Bytes) {
        scalar_t* const out =
            direct.dst ? direct.dst + direct.layout.offset(n, 0, o[0], o[1], o[2]) : nullptr;
        const acc_t divisor =
            out != nullptr && !kMax ? static_cast<acc_t>(avg_divisor(g, w, o)) : acc_t(1);
        const auto out_at = [&](int64_t c) { return out != nullptr ? out + c : nullptr; };
        for (; c0 + kChannelBlock <= channels; c0 += kChannelBlock) {
          for (int64_t t = 0; next > 0 && t < count; ++t) {
            prefetch_lines(taps[t].at + c0 + next, kChannelBlock);
          }
          channels_block<kChannelBlock, kMax>(taps.data(), count, c0, value + c0, code + c0,
                                              out_at(c0), divisor);
        }
        // The rest a vector at a time.
        constexpr int64_t kLanes = at::vec::Vectorized<acc_t>::size();
        for (; c0 + kLanes <= channels; c0 += kLanes) {
          channels_block<kLanes, kMax>(taps.data(), count, c0, value + c0, code + c0, out_at(c0),
                                       divisor);
        }
        // The last few: the vector ending at the last channel, which recomputes
        // some of the one before (the same values), else a vector in part.
        if (c0 < channels && channels >= kLanes) {
          c0 = channels - kLanes;
          channels_block<kLanes, kMax>(taps.data(), count, c0, value + c0, code + c0, out_at(c0),
                                       divisor);
        } else if (c0 < channels) {
          channels_block<kLanes, kMax, true>(taps.data(), count, c0, value + c0, code + c0,
                                             out_at(c0), divisor, channels - c0);
        }
        c0 = channels;
        if (out == nullptr) finish(n, o, w, 0, c0, value, code, count);
      }
      if (c0 == channels) continue;  // next output
      // The other channels tap by tap, each tap's channels streamed into
      // value (and rest_code), in the same order.
      acc_t* __restrict__ v = value + c0;
      code_t* __restrict__ k = s.rest_code.data();
      const int64_t width = channels - c0;
      if constexpr (!kMax) {
        if (count >= kBlockedTaps) {
          sum_taps_by_blocks(taps.data(), count, c0, width, next, v, s);
          finish(n, o, w, c0, width, v, k, count);
          continue;
        }
      }
      if (count == 0) {
        std::fill(v, v + width, kMax ? -std::numeric_limits<acc_t>::infinity() : acc_t(0));
        const int64_t first = encode_tap(g, w[0].first_tap, w[1].first_tap, w[2].first_tap);
        std::fill(k, k + width, static_cast<code_t>(first));
      } else {
        widen(taps[0].at + c0, v, width);
        if constexpr (!kMax) {
          for (int64_t c = 0; c < width; ++c) v[c] = acc_t(0) + v[c];
        }
        std::fill(k, k + width, static_cast<code_t>(taps[0].code));
      }
      // Half's conversion kept this loop scalar (see widen): a half tap is
      // widened first (a global max over 14x14 planes of 512 channels 8x
      // faster). The others read theirs as they are (the loop as it was: its
      // code, and so the NaN a sum of NaNs keeps, is the compiler's choice).
      using tap_value_t = std::conditional_t<std::is_same_v<scalar_t, c10::Half>, acc_t, scalar_t>;
      for (int64_t t = 1; t < count; ++t) {
        const scalar_t* __restrict__ tap_at = taps[t].at + c0;
        const auto tap_code = static_cast<code_t>(taps[t].code);
        if (next > 0) prefetch_lines(tap_at + next, width);
        const tap_value_t* __restrict__ at;
        if constexpr (std::is_same_v<scalar_t, c10::Half>) {
          if (static_cast<int64_t>(s.block.size()) < width) s.block.resize(width);
          widen(tap_at, s.block.data(), width);
          at = s.block.data();
        } else {
          at = tap_at;
        }
        for (int64_t c = 0; c < width; ++c) {
          const auto x = static_cast<acc_t>(at[c]);
          if constexpr (kMax) {
            const bool takes = max_takes(x, v[c]);
            v[c] = takes ? x : v[c];
            k[c] = takes ? tap_code : k[c];
          } else {
            v[c] += x;
          }
        }
      }
      finish(n, o, w, c0, width, v, k, count);
    }
  }
}

// Small planes (7x7, 13x13, 28x28: the later layers of CNNs) leave a
// planes kernel a few cells per row, and per-row overhead dominates; the
// channels kernels take every channel of a pixel at once. There a planes
// tensor goes through them one sample and group of channels at a time:
// transposed to channels-last into a buffer that stays in cache, pooled or
// gathered, and transposed back. (The input transposed whole, through
// memory, cost more than the pooling: the cache misses of its strided side.
// The backward still transposes the output-sized gradient and taps whole.)
// Measured on 2 cores: adaptive windows gain up to 256 pixels in and out;
// fixed windows' forwards over 2d and 3d planes up to 2048 pixels (28x28,
// 35x35, 8x14x14: 1.5-4x; 44x44 even; 1d rows lose; 2-byte values up to
// 16384: 56x56-128x128 1.1-2x, though a 2 MB buffer is out of L2 there;
// 2d only measured); their average backward, against the planes gather,
// with a W stride of 1 up to 512 pixels (3x3/1: 7x7 2.4-3.8x, 17x17
// 1.1-1.2x, 28x28 0.7-0.9x), with wider strides until a group's buffers
// leave the cache (3x3/2 float: 35x35-62x62 1.0-2.2x, 64x64 0.7x;
// bfloat16 to 64x64 1.1-1.2x), but for 2x2 windows on rows of 48 or more,
// which the planes gather stores in pairs (44x44 1.1-1.3x, 48x48 0.85x,
// 56x56 0.5x, 64x64 0.25x); the fixed max backward gathers faster
// through planes (0.7-0.9x through the transposes).
// Forwards of values alone (average, max's inference) whose rows the
// planes kernels write whole, in vector blocks straight to the output (no
// W padding, stride 1 or 2), stay in planes from 8 outputs a row (16 for
// 2-byte values): 2x2 windows on 20x20-56x56 float planes 0.4-0.8x the
// groups' time, bfloat16 35x35-56x56 0.8-1x (28x28 even, 14x14 3-9x
// slower); through a padded buffer (pads_windows), from 14 outputs a row
// (28 for 2-byte values): 3x3/1 with padding 1 on float 14x14-35x35
// 0.6-0.8x, bfloat16 28x28-112x112 0.6-0.9x; 3x3/2 float 28x28-35x35 0.85x,
// bfloat16 56x56-112x112 0.55-0.8x (fewer outputs a row: 1.1-1.9x slower).
constexpr int64_t kGroup = 64;

// Channels a group takes: kGroup, doubled up to 256 while a group's
// buffer of v's pixels stays within 256 KB and at least four tasks a thread
// remain. Small planes gain from wider groups, whose channels kernels do
// each pixel's window work once for more channels (13x13 -> 6x6 average
// backward 1.2-1.3x, 7x7 3x3/1 forward 1.2-1.8x, 14x14 2x2 1.0-1.3x).
inline int64_t group_width(const Layout5& v, int64_t element_size) {
  constexpr int64_t kWidest = 256, kBytes = int64_t{1} << 18;
  int64_t width = kGroup;
  while (2 * width <= kWidest && v.pixels() * (2 * width + kTile) * element_size <= kBytes &&
         v.size[0] * ((v.size[1] + 2 * width - 1) / (2 * width)) >= 4 * at::get_num_threads()) {
    width *= 2;
  }
  return width;
}

enum class Pass { kForward, kMaxValuesForward, kAvgForward, kMaxBackward, kAvgBackward };

// Whether the planes forward writes every output row whole in vector
// blocks (blocked_sweep, direct): fixed W windows that all hold every tap,
// a W stride of 1 or 2, and at least `lanes` outputs a row.
inline bool whole_rows(const PoolGeometry& g, int64_t lanes) {
  const PoolDim& d = g.dim[2];
  return !g.adaptive && d.pad == 0 && (d.stride == 1 || d.stride == 2) && d.out >= lanes &&
         window_reach(d) <= d.in;
}

// 8-15 channels (one vector of float lanes) gain on the smallest 2d planes,
// whose planes rows hold a few outputs (32 samples, one thread, float and
// bfloat16 alike): 8x8 to 14x14 planes of 8 or 12 channels, 2x2 and 3x3/2
// max and average, adaptive to 3x3 and 6x6, 2-5x faster forward, 1.3-2x
// forward+backward. Not where W windows step by 1 (3x3/1 forwards and
// backwards: 1.2-1.7x slower), nor 16x16 forwards of values alone (max
// bfloat16 2x2, 3x3/2: 1.3-1.9x slower), though the forward keeping taps
// still gains there (3x3/2: 2.7x). 3d and 1d not measured.
inline bool few_channels_gain(const PoolGeometry& g, const Layout5& v, Pass pass) {
  return g.ndim == 2 && (g.adaptive || g.dim[2].stride > 1) &&
         v.pixels() <= (pass == Pass::kForward ? 256 : 196);
}

// Whether the planes average backward stores its W cells two at a time
// (pair_cells): 2-wide unpadded W windows at stride 2, at most one output
// row covering each input row (2x2, 2x2x2).
inline bool pairs_cells(const PoolGeometry& g) {
  const PoolDim& w = g.dim[2];
  return w.kernel == 2 && w.stride == 2 && w.pad == 0 && g.dim[0].kernel <= g.dim[0].stride &&
         g.dim[1].kernel <= g.dim[1].stride;
}

inline bool via_channels(const PoolGeometry& g, const at::Tensor& t, Pass pass) {
  const Layout5 v = layout_of(t);
  if (is_global(g) || v.size[1] < 8 || v.stride[1] == 1 || !dense_planes(v)) return false;
  if (v.size[1] < 16 && !few_channels_gain(g, v, pass)) return false;
  const int64_t outputs = g.dim[0].out * g.dim[1].out * g.dim[2].out;
  // A task per sample and group: too few of them (one image, 64 channels)
  // would leave threads idle that the planes kernels keep busy, unless the
  // call is at most one grain of the planes kernels' work, which they too
  // run on one thread (2 threads, one image of 64 channels: 14x14 max 2x2
  // and 3x3/2 forwards 35-50 us through planes, 11-12 through a group;
  // 8x8x8 max 2x2 95 and 16; fwd+bwd 1.2-1.7x), or at most 16 grains over
  // rows of under a vector of outputs, whose per-row cost outweighs the
  // threads (12x12x12 max forwards 2.7-3.6x, fwd+bwd 1.4-2x; rows of 10 or
  // more outputs gained nothing). Not for averages whose windows the planes
  // kernels may sum by runs (adaptive ones; fixed ones of kMinRun taps or
  // more) where channels sum tap by tap: their bits would change with the
  // thread count.
  const bool values = pass == Pass::kMaxValuesForward || pass == Pass::kAvgForward;
  const bool forward = values || pass == Pass::kForward;
  // (in double: outputs times taps may pass int64 on huge windows)
  const double work = static_cast<double>(v.size[0] * v.size[1]) *
                      ((forward ? 0.0 : static_cast<double>(v.pixels())) +
                       static_cast<double>(outputs) * static_cast<double>(window_taps(g)));
  const double grain_work = static_cast<double>(at::internal::GRAIN_SIZE);
  const bool short_rows = g.dim[2].out < at::vec::Vectorized<float>::size();
  if (v.size[0] * ((v.size[1] + kGroup - 1) / kGroup) < at::get_num_threads() &&
      work > (short_rows ? 16 : 1) * grain_work &&
      !(pass == Pass::kAvgForward && (g.adaptive || window_taps(g) >= kMinRun))) {
    return false;
  }
  // 2-byte values go further forward: their planes kernels widen every
  // load, their transposes move half the bytes (3d 16x56x56 planes lose
  // again); their backwards gain nothing from groups.
  const bool half = t.element_size() == 2;
  if (values &&
      (whole_rows(g, half ? 16 : 8) ||
       (pads_windows(g, pass == Pass::kMaxValuesForward) && g.dim[2].out >= (half ? 28 : 14)))) {
    return false;
  }
  // Adaptive max backwards of 4- and 8-byte values gather faster through
  // planes (13x13 -> 6x6 float: 0.5-0.6x the groups' time; bfloat16
  // 1.2-1.3x; double not measured). 2x2 average backwards on rows of 48
  // or more: planes (above); the bound keeps 3d's short rows (16-28) in
  // groups, whose planes gather is 1.1-1.7x slower.
  const bool long_pairs = pairs_cells(g) && g.dim[2].in >= 48;
  const int64_t most = g.adaptive && pass == Pass::kMaxBackward && !half ? 0
                       : g.adaptive                 ? 256
                       : g.ndim == 1                ? 0
                       : forward                    ? (half ? 16384 : 2048)
                       : pass == Pass::kAvgBackward ? (g.dim[2].stride == 1 ? 512
                                                       : long_pairs            ? 0
                                                       : half                  ? 4096
                                                                               : 3844)
                                                    : 0;
  return v.pixels() <= most && outputs <= most;
}

// Whether a forward runs the channels kernels: channels-last input and
// outputs (taps: the max's), or small planes through the channel groups,
// which write whole dense planes.
inline bool forward_by_channels(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out,
                                bool max, const at::Tensor* taps) {
  if (channels_inner(in, out) && (taps == nullptr || taps->stride(1) == 1)) return true;
  const Pass pass = taps != nullptr ? Pass::kForward
                    : max           ? Pass::kMaxValuesForward
                                    : Pass::kAvgForward;
  return via_channels(g, in, pass) &&
         dense_planes(layout_of(out)) &&
         (taps == nullptr || dense_planes(layout_of(*taps)));
}

// Channels [c0, c0 + width) of one sample of a planes tensor, channels-last,
// with the layout that addresses them for any sample (batch stride 0). The
// planes side moves eight whole planes per step, memory read or written in
// long runs; the buffer, in cache, takes the 8-element pieces, its pixels
// padded apart so that they spread over the cache's sets.
template <typename T>
struct GroupBuffer {
  LineArray<T> data;
  Layout5 layout;

  // Groups of up to `widest` channels (unused: no memory, for the taps of an average).
  GroupBuffer(const Layout5& v, int64_t widest, bool used = true)
      : data(used ? line_array<T>(v.pixels() * (std::min(widest, v.size[1]) + kTile)) : nullptr),
        layout(v) {}

  void resize(int64_t width) {
    layout.size[1] = width;
    layout.stride[0] = 0;
    layout.stride[1] = 1;
    layout.stride[4] = width + kTile;
    layout.stride[3] = layout.size[4] * layout.stride[4];
    layout.stride[2] = layout.size[3] * layout.stride[3];
  }
  // A tile row (eight planes) at a time. Planes of up to 2 KB prefetch the
  // next row's planes meanwhile, a few lines a tile: the planes side takes
  // eight cells of each of eight planes at a time, streams too short for the
  // hardware prefetchers to run ahead of when they are out of cache, as a
  // fresh gradient is (one thread, fwd+bwd, glibc's malloc thresholds fixed:
  // 13x13 -> 6x6 average on 32x256 float 1.37 -> 1.13 ms, with 64 MB touched
  // between calls 2.32 -> 1.92). Longer planes gained nothing (3x3/2 average
  // backward on 28x28 and 40x40 planes) or lost (62x62: 5-8%).
  template <bool kToChannels>
  void move(const T* from, T* to, const Layout5& v) const {
    constexpr int64_t kMostPrefetched = 2048;
    const auto planes = reinterpret_cast<uintptr_t>(kToChannels ? from : to);
    const int64_t plane_bytes = v.stride[1] * static_cast<int64_t>(sizeof(T));
    const int64_t bytes = v.pixels() * static_cast<int64_t>(sizeof(T));
    const int64_t tiles = (v.pixels() + kTile - 1) / kTile;
    for (int64_t c = 0; c < layout.size[1]; c += kTile) {
      const int64_t next_planes =
          bytes <= kMostPrefetched ? std::clamp<int64_t>(layout.size[1] - c - kTile, 0, kTile) : 0;
      PlanesPrefetch ahead(planes + (c + kTile) * plane_bytes, plane_bytes, bytes, next_planes,
                           tiles);
      for (int64_t p = 0; p < v.pixels(); p += kTile) {
        ahead.next();
        transpose_tile<kToChannels>(from, to, v.stride[1], layout.stride[4], layout.size[1],
                                    v.pixels(), c, p);
      }
    }
  }
  void load(const T* planes, const Layout5& v, int64_t n, int64_t c0) {
    move<true>(planes + n * v.stride[0] + c0 * v.stride[1], data.get(), v);
  }
  void store(T* planes, const Layout5& v, int64_t n, int64_t c0) const {
    move<false>(data.get(), planes + n * v.stride[0] + c0 * v.stride[1], v);
  }
};

// Calls f(n, c0, width, state) for every sample and group of (up to
// `widest`) channels of v, over threads, state made once per thread by
// make(). cost: a group's.
template <typename Make, typename F>
void for_channel_groups(const Layout5& v, int64_t widest, int64_t cost, const Make& make,
                        const F& f) {
  const int64_t groups = (v.size[1] + widest - 1) / widest;
  at::parallel_for(0, v.size[0] * groups, grain(cost), [&](int64_t begin, int64_t end) {
    auto state = make();
    for (const auto task : c10::irange(begin, end)) {
      const int64_t c0 = task % groups * widest;
      f(task / groups, c0, std::min(widest, v.size[1] - c0), state);
    }
  });
}

// The channels forward of a channels-last input, rows split over threads;
// a planes input one sample and group of channels at a time. make_finish(
// dst, vo, tap, vt) gives the finish for outputs at dst and tap (max).
template <bool kMax, typename scalar_t, typename code_t, typename tap_t, typename MakeFinish>
void forward_channels(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out,
                      const at::Tensor* taps, const MakeFinish& make_finish) {
  const Layout5 vi = layout_of(in), vo = layout_of(out);
  const Layout5 vt = taps ? layout_of(*taps) : vo;
  const auto* src = in.const_data_ptr<scalar_t>();
  auto* dst = out.mutable_data_ptr<scalar_t>();
  tap_t* tap = taps ? taps->mutable_data_ptr<tap_t>() : nullptr;
  const int64_t cost = vo.size[4] * vo.size[1] * window_taps(g);
  if (vi.stride[1] == 1) {
    const auto finish = make_finish(dst, vo, tap, vt);
    const DirectOut<scalar_t> direct{taps == nullptr && vo.stride[1] == 1 ? dst : nullptr, vo};
    at::parallel_for(0, vo.size[0] * vo.size[2] * vo.size[3], grain(cost),
                     [&](int64_t begin, int64_t end) {
      ChannelScratch<scalar_t, code_t> s(vo.size[1]);
      forward_channel_rows<kMax>(g, src, vi, vo, begin, end, s, finish, direct);
    });
    return;
  }
  struct State {
    GroupBuffer<scalar_t> x, y;
    GroupBuffer<tap_t> t;
    ChannelScratch<scalar_t, code_t> s;
  };
  const int64_t rows = vo.size[2] * vo.size[3];
  const int64_t widest = group_width(vi, sizeof(scalar_t));
  const auto make = [&] {
    return State{GroupBuffer<scalar_t>(vi, widest), GroupBuffer<scalar_t>(vo, widest),
                 GroupBuffer<tap_t>(vt, widest, taps != nullptr),
                 ChannelScratch<scalar_t, code_t>(widest)};
  };
  for_channel_groups(vi, widest, cost * rows * std::min(widest, vo.size[1]) / vo.size[1], make,
                     [&](int64_t n, int64_t c0, int64_t width, State& st) {
    st.x.resize(width);
    st.y.resize(width);
    st.t.resize(width);
    st.x.load(src, vi, n, c0);
    Layout5 grid = vo;
    grid.size[1] = width;
    forward_channel_rows<kMax>(g, st.x.data.get(), st.x.layout, grid, n * rows, (n + 1) * rows,
                               st.s, make_finish(st.y.data.get(), st.y.layout, st.t.data.get(),
                                                 st.t.layout),
                               DirectOut<scalar_t>{taps ? nullptr : st.y.data.get(), st.y.layout});
    st.y.store(dst, vo, n, c0);
    if (taps) st.t.store(tap, vt, n, c0);
  });
}

template <typename scalar_t, typename tap_t>
void max_forward_channels(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out,
                          const at::Tensor* taps) {
  using acc_t = at::opmath_type<scalar_t>;
  // int32 codes while the channel loop runs keep its lanes as wide as float's.
  using code_t = std::conditional_t<sizeof(tap_t) == 1, int32_t, int64_t>;
  forward_channels<true, scalar_t, code_t, tap_t>(
      g, in, out, taps, [](scalar_t* dst, const Layout5& vo, tap_t* tap, const Layout5& vt) {
        return [=](int64_t n, const int64_t* o, const Window*, int64_t c0, int64_t width,
                   const acc_t* value, const auto* code, int64_t) {
          narrow_all(value, dst + vo.offset(n, c0, o[0], o[1], o[2]), width);
          if (tap) narrow(code, tap + vt.offset(n, c0, o[0], o[1], o[2]), width);
        };
      });
}

template <typename scalar_t>
void avg_forward_planes(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout5 vi = layout_of(in), vo = layout_of(out);
  auto* dst = out.mutable_data_ptr<scalar_t>();
  forward_planes<false, scalar_t>(g, in, out, [&](int64_t n, int64_t c, int64_t* o, Window* w,
                                                  const scalar_t* plane,
                                                  const WindowTable& table, Interior inner,
                                                  int64_t from, const acc_t* sum,
                                                  const int32_t*) {
    scalar_t* out_row = dst + vo.offset(n, c, o[0], o[1], 0);
    // Windows of one row (1d) of under 64 cells: summed here, in
    // window_sum's order, without its loops over D and H, nor run_sum's
    // lanes, fold and tail, which cost more than they save there
    // (adaptive_avg_pool1d of 32x256x512 to 300, 48, 20 and 15 outputs:
    // 2.2x, 1.9x, 1.7x and 1.2x faster; 1.4-2x torch's speed). Here, not in
    // plane_window_sum: the global averages that call it keep their order.
    const scalar_t* row = w[0].count * w[1].count == 1 && vi.stride[4] == 1
                              ? plane + w[0].begin * vi.stride[2] + w[1].begin * vi.stride[3]
                              : nullptr;
    for_edges(inner, vo.size[4], [&](int64_t ow) {
      o[2] = ow;
      w[2] = table.dim[2][ow];
      acc_t total = 0;
      if (row != nullptr && w[2].step == 1 && w[2].count < 4 * kMinRun) {  // 64
        const scalar_t* at = row + w[2].begin;
        for (int64_t x = 0; x < w[2].count; ++x) total += static_cast<acc_t>(at[x]);
      } else {
        total = plane_window_sum<scalar_t, acc_t>(w, plane, vi);
      }
      out_row[ow * vo.stride[4]] =
          static_cast<scalar_t>(total / static_cast<acc_t>(avg_divisor(g, w, o)));
    });
    if (g.adaptive) {
      for (int64_t ow = from; ow < inner.hi; ++ow) {
        o[2] = ow;
        w[2] = table.dim[2][ow];
        out_row[ow * vo.stride[4]] =
            static_cast<scalar_t>(sum[ow] / static_cast<acc_t>(avg_divisor(g, w, o)));
      }
    } else if (from < inner.hi) {
      // Inside, the W factor of the divisor is the kernel: one divisor per row.
      o[2] = inner.lo;
      w[2] = table.dim[2][inner.lo];
      const auto divisor = static_cast<acc_t>(avg_divisor(g, w, o));
      with_step(vo.stride[4], [&](auto step) {
        const int64_t so = step;
        for (int64_t ow = from; ow < inner.hi; ++ow) {
          out_row[ow * so] = static_cast<scalar_t>(sum[ow] / divisor);
        }
      });
    }
  });
}

template <typename scalar_t>
void avg_forward_channels(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  forward_channels<false, scalar_t, int32_t, uint8_t>(
      g, in, out, nullptr, [&g](scalar_t* dst, const Layout5& vo, uint8_t*, const Layout5&) {
        return [&g, dst, vo](int64_t n, const int64_t* o, const Window* w, int64_t c0,
                             int64_t width, acc_t* sum, const auto*, int64_t) {
          const auto divisor = static_cast<acc_t>(avg_divisor(g, w, o));
          scalar_t* __restrict__ at = dst + vo.offset(n, c0, o[0], o[1], o[2]);
          if constexpr (std::is_same_v<scalar_t, acc_t>) {  // divided as stored: one pass
            for (int64_t c = 0; c < width; ++c) {
              at[c] = static_cast<scalar_t>(sum[c] / divisor);
            }
            return;
          }
          for (int64_t c = 0; c < width; ++c) {
            sum[c] /= divisor;
          }
          narrow_all(sum, at, width);
        };
      });
}

// One tap of the inside of an average backward row: the cell of output ow
// gets share[ow].
template <typename Step, typename acc_t>
inline void spread_sweep(acc_t* __restrict__ at, Step step, Interior inner,
                         const acc_t* __restrict__ share) {
  const int64_t s = step;
  for (int64_t ow = inner.lo; ow < inner.hi; ++ow) {
    at[ow * s] += share[ow];
  }
}

// ---------------------------------------------------------------- backward
//
// Planes: a task owns (n, c) planes and spreads each output's gradient
// over its window (max: onto the saved tap), outputs in order, into an
// acc_t block (the gradient itself for dense float32/float64 planes): every
// input cell then holds the sum the GPU's gather forms, term for term in
// the same order, so CPU and GPU agree bit for bit and two runs do too.
// Scratch is a plane per thread at most (a band of it for large planes),
// so never more than the gradient in acc_t. Channels-last (and small planes,
// through channels-last buffers: see via_channels) gathers a pixel's
// channels at once.

// Windows covering one input cell overlap at most this many outputs per dim
// on average; a rough cost for the grain size.
inline int64_t gather_cost(const PoolGeometry& g) {
  int64_t cost = 1;
  for (const auto& d : g.dim) {
    cost *= g.adaptive ? 2 : (d.kernel * d.dilation + d.stride - 1) / d.stride;
  }
  return cost;
}

// Calls f(offset), offset(t) giving tap_offset(g, t) for `uses` lookups:
// from a table of every tap, so that the hot loops do no division, or
// computed per use where the window has more taps than lookups or than
// kMaxTapTable (kernels far past the input: 65537x65537 would be a 34 GB
// table, where torch runs).
constexpr int64_t kMaxTapTable = int64_t{1} << 22;  // 32 MB of offsets

template <typename F>
void with_tap_offsets(const PoolGeometry& g, int64_t uses, const F& f) {
  if (window_taps(g) > std::min(kMaxTapTable, uses)) {
    f([&g](int64_t t) { return tap_offset(g, t); });
    return;
  }
  std::vector<int64_t> offsets(window_taps(g));
  for (const auto t : c10::irange(window_taps(g))) {
    offsets[t] = tap_offset(g, t);
  }
  const int64_t* table = offsets.data();
  f([table](int64_t t) { return table[t]; });
}

constexpr int64_t kBandCells = int64_t{1} << 20;  // planes larger spread through a band

// The planes backward: a task owns one (n, c) plane; spread(n, c, table,
// ready) adds the plane's outputs in output order, so every cell sums in
// the GPU's gather order, into base + cell, where base = ready(od, oh) is
// asked before output row (od, oh) (or ready(-1, -1) once, first, for the
// whole plane: not for planes over kBandCells). Then the sums (scratch, or
// the gradient itself) are zeroed up to the last row the row's windows
// reach, so that out of cache the zeros are still there to add to (a fill
// of a whole 4096x4096 plane first, then the spread, read it twice), and
// the rows (3d: slices) no later window reaches are narrowed into the
// gradient while still in cache.
template <typename scalar_t, typename Spread>
void backward_planes(const PoolGeometry& g, const at::Tensor& grad_out, const at::Tensor& grad_in,
                     const Spread& spread) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout5 vo = layout_of(grad_out), vg = layout_of(grad_in);
  const int64_t block = vg.pixels();
  auto* dst = grad_in.mutable_data_ptr<scalar_t>();
  // Full-precision gradients with dense planes need no scratch: the plane
  // itself sums, in the same order.
  constexpr bool exact = std::is_same_v<scalar_t, acc_t>;
  const bool dense = dense_planes(vg);
  const bool direct = exact && dense;
  const int64_t width = vg.size[4];
  // Planes finish in order along their outermost windowed dim: rows of a
  // 2d plane (dim 1, units of W cells), slices of a 3d one (dim 0, units
  // of H * W cells; also 2d planes pooled to several D outputs).
  const int dim = vg.size[2] == 1 && vo.size[2] == 1 ? 1 : 0;
  const int64_t unit = dim == 1 ? width : vg.size[3] * width;
  // Large planes with scratch: a band of it at a time, twice a window's
  // reach along that dim (and at least 64 rows), rather than a whole plane
  // of fresh memory (a 4096x4096 float scratch page-faulted on every call).
  const int64_t reach = (g.dim[dim].kernel - 1) * std::max<int64_t>(g.dim[dim].dilation, 1) + 1;
  const int64_t band = std::max<int64_t>(dim == 1 ? 64 : 1, 2 * reach) * unit;
  const bool banded = !direct && block > kBandCells && band < block;
  at::parallel_for(0, vg.size[0] * vg.size[1], grain(block + vo.pixels() * gather_cost(g)),
                   [&](int64_t begin, int64_t end) {
    WindowTable table;
    // Uninitialised: each task zeroes what it uses.
    const LineArray<acc_t> scratch = line_array<acc_t>(direct ? 0 : banded ? band : block);
    for (const auto task : c10::irange(begin, end)) {
      const int64_t n = task / vg.size[1], c = task % vg.size[1];
      table.build(g, n);
      // base + cell: where the plane's cell sums (banded: the band starts
      // at cell band_start).
      acc_t* base = scratch.get();
      if constexpr (exact) {
        if (direct) base = dst + vg.offset(n, c, 0, 0, 0);
      }
      int64_t band_start = 0;
      int64_t filled = 0;  // cells zeroed
      int64_t copied = 0;  // cells narrowed into the gradient
      const auto zero_to = [&](int64_t upto) {
        if (upto > filled) {
          std::fill(base + filled, base + upto, acc_t(0));
          filled = upto;
        }
      };
      // Rows [copied, upto) into the gradient: from the scratch (whole rows,
      // zeroed), or zeros where `zeros` (rows no window reaches).
      int64_t copy_d = 0, copy_h = 0;  // the row at `copied` (planes not dense)
      const auto copy_to = [&](int64_t upto, bool zeros) {
        if (dense && upto > copied) {
          // The rows lie end to end: one run, whole vectors across row ends
          // (13x13 bfloat16 planes narrowed a row at a time spent half their
          // time in the scalar tails).
          scalar_t* at = dst + vg.offset(n, c, 0, 0, 0) + copied;
          if (zeros) {
            std::fill(at, at + (upto - copied), scalar_t(0));
          } else {
            narrow(base + copied, at, upto - copied);
          }
          copied = upto;
          return;
        }
        for (; copied < upto; copied += width) {
          scalar_t* row = dst + vg.offset(n, c, copy_d, copy_h, 0);
          if (++copy_h == vg.size[3]) {
            copy_h = 0;
            ++copy_d;
          }
          if (zeros) {
            for (const auto x : c10::irange(width)) row[x * vg.stride[4]] = scalar_t(0);
          } else if (vg.stride[4] == 1) {
            narrow(base + copied, row, width);
          } else {
            for (const auto x : c10::irange(width)) {
              row[x * vg.stride[4]] = static_cast<scalar_t>(base[copied + x]);
            }
          }
        }
      };
      const auto ready = [&](int64_t od, int64_t oh) -> acc_t* {
        if (od < 0) {  // the whole plane at once, for a spread in one sweep
          zero_to(block);
          return base;
        }
        const Window& wd = table.dim[0][od];
        const Window& wh = table.dim[1][oh];
        if (wd.count == 0 || wh.count == 0) return base;
        const int64_t last_row = (wd.begin + (wd.count - 1) * wd.step) * vg.size[3] + wh.begin +
                                 (wh.count - 1) * wh.step;
        const int64_t upto = (last_row + 1) * width;
        // The units before where this output row's windows start along
        // `dim` (their tap 0, perhaps in padding: in order, where the first
        // cell is not) are done, and go out while still in cache.
        if (!direct) {
          const Window& wo = dim == 1 ? wh : wd;
          const int64_t done = std::max<int64_t>(wo.begin - wo.first_tap * wo.step, 0) * unit;
          copy_to(std::min(done, filled), false);
          if (done > filled) {  // rows no window reached
            copy_to(done, true);
            filled = done;
          }
          if (banded && upto - band_start > band) {  // the rows still open to the band's start
            std::copy(base + copied, base + filled, scratch.get());
            band_start = copied;
            base = scratch.get() - band_start;
          }
        }
        zero_to(upto);
        return base;
      };
      spread(n, c, table, ready);
      if (direct) {
        zero_to(block);  // cells no window reaches
      } else {
        copy_to(filled, false);
        copy_to(block, true);
      }
    }
  });
}

// The plane offset of tap 0 of the D and H windows of output row (od, oh).
inline int64_t row_origin(const PoolGeometry& g, const Window& wd, const Window& wh) {
  return ((wd.begin - wd.first_tap * wd.step) * g.dim[1].in + wh.begin -
          wh.first_tap * wh.step) * g.dim[2].in;
}

// Channels-last backward by gather: each input pixel sums, channel by
// channel, the outputs covering it in output order (pool.h's covering and
// tap_in, as max_grad_lanes and avg_grad_lanes do on the GPU), a block of
// channels at a time in registers, and writes its cells once: no zero fill,
// no read-modify-write, no scratch, any split of pixels over threads.
//
// A term is one covering output: its values (max: the gradient; average:
// its share, gradient / divisor) at channel 0, and for max its saved taps
// and the code that selects this cell.
template <typename value_t, typename tap_t>
struct GatherTerm {
  const value_t* value;
  const tap_t* taps;
  tap_t code;
};

// The tap codes of a vector of channels as acc_t lanes: bytes to float in
// two conversions where at::vec has them (a plain widening loop of eight
// compiles to scalar conversions), else by a widening loop.
// kPart: the first `width` codes, the other lanes zero.
template <bool kPart, typename acc_t, typename tap_t>
inline at::vec::Vectorized<acc_t> load_codes(const tap_t* at, int64_t width) {
  using Vec = at::vec::Vectorized<acc_t>;
  if constexpr (kPart) {
    tap_t part[Vec::size()] = {};
    for (int64_t i = 0; i < width; ++i) part[i] = at[i];
    return load_codes<false, acc_t>(part, Vec::size());
  } else if constexpr (std::is_same_v<acc_t, float> && std::is_same_v<tap_t, uint8_t> &&
                       Vec::size() * 4 == at::vec::Vectorized<uint8_t>::size()) {
    const auto bytes = at::vec::Vectorized<uint8_t>::loadu_one_fourth(at);
    return at::vec::convert<float>(at::vec::convert<int32_t>(bytes));
  } else {
    alignas(64) acc_t codes[Vec::size()];
    widen(at, codes, Vec::size());
    return Vec::loadu(codes);
  }
}

// Channels [c0, c0 + kWidth) of one cell (kWidth a whole number of
// vectors): the sum of its terms, in registers, into out (the cell's
// channels from c0, narrowed to scalar_t). Values and tap codes are
// widened to acc_t; a tap mask keeps a value or makes it +0, which leaves
// the sum as skipping it would (a sum from +0 is never -0). kPart: the
// cell's last `width` channels, fewer than a vector, read and written in
// part (a scalar loop there mispredicted on every tap compare).
template <int64_t kWidth, bool kMax, bool kPart = false, typename acc_t, typename value_t,
          typename tap_t, typename scalar_t>
inline void gather_block(const GatherTerm<value_t, tap_t>* terms, int64_t count, int64_t c0,
                         scalar_t* out, int64_t width = kWidth) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t kLanes = Vec::size(), kVecs = kWidth / kLanes;
  static_assert(!kPart || kVecs == 1);
  Vec a[kVecs];
  for (auto& v : a) v = Vec(acc_t(0));
  for (int64_t t = 0; t < count; ++t) {
    const value_t* x = terms[t].value + c0;
    if constexpr (kMax) {
      const tap_t* taps = terms[t].taps + c0;
      const Vec code(static_cast<acc_t>(terms[t].code));
      for (int64_t j = 0; j < kVecs; ++j) {
        a[j] += load_lanes<kPart, acc_t>(x + j * kLanes, width) &
                (load_codes<kPart, acc_t>(taps + j * kLanes, width) == code);
      }
    } else {
      for (int64_t j = 0; j < kVecs; ++j) {
        a[j] += load_lanes<kPart, acc_t>(x + j * kLanes, width);
      }
    }
  }
  if constexpr (kPart) {
    store_cells(a[0], out, width);
  } else if constexpr (std::is_same_v<scalar_t, acc_t>) {
    for (int64_t j = 0; j < kVecs; ++j) a[j].store(out + j * kLanes);
  } else {
    // In registers: narrow's loop compiled to scalar NaN tests here.
    for (int64_t j = 0; j < kVecs; ++j) narrow_lanes(a[j], out + j * kLanes);
  }
}

// The same for `width` (<= kChannelBlock) channels, one at a time.
template <bool kMax, typename acc_t, typename value_t, typename tap_t>
inline void gather_tail(const GatherTerm<value_t, tap_t>* terms, int64_t count, int64_t c0,
                        int64_t width, acc_t* sum) {
  std::fill(sum, sum + width, acc_t(0));
  for (int64_t t = 0; t < count; ++t) {
    for (int64_t k = 0; k < width; ++k) {
      if (!kMax || terms[t].taps[c0 + k] == terms[t].code) {
        sum[k] += static_cast<acc_t>(terms[t].value[c0 + k]);
      }
    }
  }
}

// The channels [0, channels) of one cell from its `count` terms, written
// once.
template <bool kMax, typename acc_t, typename value_t, typename tap_t, typename scalar_t>
inline void gather_cell(const GatherTerm<value_t, tap_t>* terms, int64_t count, int64_t channels,
                        scalar_t* cell) {
  int64_t c0 = 0;
  // Blocks compare tap codes in acc_t lanes: exact for byte taps.
  if constexpr (!kMax || sizeof(tap_t) == 1) {
    // Blocks go straight to the cell's channels.
    for (; c0 + kChannelBlock <= channels; c0 += kChannelBlock) {
      gather_block<kChannelBlock, kMax, false, acc_t>(terms, count, c0, cell + c0);
    }
    // The rest a vector at a time.
    constexpr int64_t kLanes = at::vec::Vectorized<acc_t>::size();
    for (; c0 + kLanes <= channels; c0 += kLanes) {
      gather_block<kLanes, kMax, false, acc_t>(terms, count, c0, cell + c0);
    }
    // The last few as the forward takes them.
    if (c0 < channels && channels >= kLanes) {
      gather_block<kLanes, kMax, false, acc_t>(terms, count, channels - kLanes,
                                               cell + channels - kLanes);
    } else if (c0 < channels) {
      gather_block<kLanes, kMax, true, acc_t>(terms, count, c0, cell + c0, channels - c0);
    }
    return;
  }
  acc_t sum[kChannelBlock];
  for (; c0 < channels; c0 += kChannelBlock) {
    const int64_t width = std::min(kChannelBlock, channels - c0);
    gather_tail<kMax>(terms, count, c0, width, sum);
    narrow(sum, cell + c0, width);
  }
}

// State of the channels gather, one per task of a parallel loop.
template <typename value_t, typename tap_t>
struct GatherScratch {
  WindowTable table;
  std::vector<GatherTerm<value_t, tap_t>> row_terms, terms;
  // Where at most one window along W holds each input column (strides at
  // least the windows' span, as 2x2 stride 2): that window's output
  // (owner, -1 where none) and the cell's W tap in it.
  std::vector<int64_t> owner, owner_tap;

  // Whether the table's sample has such columns; fills owner and owner_tap.
  bool owners(const PoolGeometry& g, WindowTable& t) {
    if (owner_sample != t.sample) {
      owner_sample = t.sample;
      const std::vector<Span>& cover = t.cover(g)[2];
      single = true;
      owner.assign(cover.size(), -1);
      owner_tap.assign(cover.size(), 0);
      for (const auto x : c10::irange(static_cast<int64_t>(cover.size()))) {
        for (int64_t ow = cover[x].lo; ow < cover[x].hi; ++ow) {
          const int64_t tw = tap_in(t.dim[2][ow], x);
          if (tw < 0) continue;
          single = single && owner[x] < 0;
          owner[x] = ow;
          owner_tap[x] = tw;
        }
      }
    }
    return single;
  }

 private:
  int64_t owner_sample = -1;
  bool single = false;
};

// Input rows [begin, end), rows (n, d, h) of vg (whose channel count is
// vg.size[1]), into dst laid out as vg, channels at stride 1 (a
// channels-last gradient, or a group buffer). values (and taps) are
// channels-last blocks shaped like the output, `ld` apart from pixel to pixel,
// from sample values_n0 on.
template <bool kMax, typename scalar_t, typename value_t, typename tap_t>
void gather_channel_rows(const PoolGeometry& g, const value_t* values, const tap_t* taps,
                         int64_t ld, scalar_t* dst, const Layout5& vg, int64_t begin,
                         int64_t end, GatherScratch<value_t, tap_t>& s, int64_t values_n0 = 0) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = vg.size[1];
  TORCH_INTERNAL_ASSERT_DEBUG_ONLY(vg.stride[1] == 1);
  const int64_t out_h = g.dim[1].out, out_w = g.dim[2].out;
  WindowTable& table = s.table;
  auto &row_terms = s.row_terms, &terms = s.terms;
  for (const auto r : c10::irange(begin, end)) {
    const int64_t h = r % vg.size[3], d = (r / vg.size[3]) % vg.size[2];
    const int64_t n = r / (vg.size[3] * vg.size[2]);
    table.build(g, n);
    const std::vector<Span>* cover = table.cover(g);
    // The covering output rows (od, oh), at ow = 0, with the D and H part of the tap.
    row_terms.clear();
    const Span sd = cover[0][d], sh = cover[1][h];
    for (int64_t od = sd.lo; od < sd.hi; ++od) {
      const int64_t td = tap_in(table.dim[0][od], d);
      if (td < 0) continue;
      for (int64_t oh = sh.lo; oh < sh.hi; ++oh) {
        const int64_t th = tap_in(table.dim[1][oh], h);
        if (th < 0) continue;
        const int64_t at = (((n - values_n0) * g.dim[0].out + od) * out_h + oh) * out_w * ld;
        row_terms.push_back({values + at, kMax ? taps + at : nullptr,
                             static_cast<tap_t>(encode_tap(g, td, th, 0))});
      }
    }
    if (row_terms.size() <= 1 && s.owners(g, table)) {
      // At most one term a cell, looked up: a cell outside every window
      // (or every row's) sums none, and is zero.
      scalar_t* cell = dst + vg.offset(n, 0, d, h, 0);
      for (const auto x : c10::irange(vg.size[4])) {
        const int64_t ow = row_terms.empty() ? -1 : s.owner[x];
        GatherTerm<value_t, tap_t> term{};
        if (ow >= 0) {
          const auto& row = row_terms[0];
          term = {row.value + ow * ld, kMax ? row.taps + ow * ld : nullptr,
                  static_cast<tap_t>(row.code + s.owner_tap[x])};
        }
        gather_cell<kMax, acc_t>(&term, ow >= 0 ? 1 : 0, channels, cell + x * vg.stride[4]);
      }
      continue;
    }
    for (const auto x : c10::irange(vg.size[4])) {
      terms.clear();
      const Span sw = cover[2][x];
      for (const auto& row : row_terms) {
        for (int64_t ow = sw.lo; ow < sw.hi; ++ow) {
          const int64_t tw = tap_in(table.dim[2][ow], x);
          if (tw < 0) continue;
          terms.push_back({row.value + ow * ld, kMax ? row.taps + ow * ld : nullptr,
                           static_cast<tap_t>(row.code + tw)});
        }
      }
      gather_cell<kMax, acc_t>(terms.data(), static_cast<int64_t>(terms.size()), channels,
                               dst + vg.offset(n, 0, d, h, x));
    }
  }
}

// The rows of samples [n0, n1) of a channels-last grad_in, split over
// threads; values (and taps): dense channels-last blocks shaped like those
// samples' outputs.
template <bool kMax, typename scalar_t, typename value_t, typename tap_t>
void gather_channel_samples(const PoolGeometry& g, const at::Tensor& grad_in,
                            const value_t* values, const tap_t* taps, int64_t n0, int64_t n1) {
  const Layout5 vg = layout_of(grad_in);
  const int64_t channels = vg.size[1], rows = vg.size[2] * vg.size[3];
  auto* dst = grad_in.mutable_data_ptr<scalar_t>();
  at::parallel_for(n0 * rows, n1 * rows, grain(vg.size[4] * channels * gather_cost(g)),
                   [&](int64_t begin, int64_t end) {
    GatherScratch<value_t, tap_t> s;
    gather_channel_rows<kMax>(g, values, taps, channels, dst, vg, begin, end, s, n0);
  });
}

// values (and taps) are dense channels-last blocks shaped like the output.
// A channels-last grad_in gathers by rows split over threads; a planes one
// (via_channels) one sample and group of channels at a time.
template <bool kMax, typename scalar_t, typename value_t, typename tap_t>
void gather_channels(const PoolGeometry& g, const at::Tensor& grad_in, const value_t* values,
                     const tap_t* taps) {
  using Scratch = GatherScratch<value_t, tap_t>;
  const Layout5 vg = layout_of(grad_in);
  const int64_t channels = vg.size[1];
  auto* dst = grad_in.mutable_data_ptr<scalar_t>();
  const int64_t cost = vg.size[4] * channels * gather_cost(g);
  if (vg.stride[1] == 1) {
    gather_channel_samples<kMax, scalar_t>(g, grad_in, values, taps, 0, vg.size[0]);
    return;
  }
  struct State {
    GroupBuffer<scalar_t> b;
    Scratch s;
  };
  const int64_t rows = vg.size[2] * vg.size[3];
  const int64_t widest = group_width(vg, sizeof(scalar_t));
  for_channel_groups(vg, widest, cost * rows * std::min(widest, channels) / channels,
                     [&] { return State{GroupBuffer<scalar_t>(vg, widest), Scratch()}; },
                     [&](int64_t n, int64_t c0, int64_t width, State& st) {
    st.b.resize(width);
    gather_channel_rows<kMax>(g, values + c0, kMax ? taps + c0 : nullptr, channels,
                              st.b.data.get(), st.b.layout, n * rows, (n + 1) * rows, st.s);
    st.b.store(dst, vg, n, c0);
  });
}

template <typename scalar_t, typename tap_t>
void max_backward_gather_channels(const PoolGeometry& g, const at::Tensor& grad_out,
                                  const at::Tensor& taps, const at::Tensor& grad_in) {
  const auto g_c = channels_inner_dense(grad_out), t_c = channels_inner_dense(taps);
  gather_channels<true, scalar_t>(g, grad_in, g_c.template const_data_ptr<scalar_t>(),
                                  t_c.template const_data_ptr<tap_t>());
}

// Channels-last max backward where windows overlap: per sample, each
// output's gradient onto its saved tap, channel by channel, outputs in order
// into zeroed sums, so that every cell adds its terms in the gather's order
// from +0: the same bits. The gather builds each cell's list of terms, which
// costs more than the adds where they are few (scatters_channels).
template <typename scalar_t, typename tap_t>
void max_backward_scatter_channels(const PoolGeometry& g, const at::Tensor& grad_out,
                                   const at::Tensor& taps, const at::Tensor& grad_in) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kInPlace = std::is_same_v<scalar_t, acc_t>;  // sums in the gradient itself
  const auto g_c = channels_inner_dense(grad_out), t_c = channels_inner_dense(taps);
  const auto* grad = g_c.template const_data_ptr<scalar_t>();
  const auto* tap = t_c.template const_data_ptr<tap_t>();
  const Layout5 vg = layout_of(grad_in);
  const int64_t channels = vg.size[1], cells = vg.pixels() * channels;
  const int64_t outputs = g.dim[0].out * g.dim[1].out * g.dim[2].out;
  auto* dst = grad_in.mutable_data_ptr<scalar_t>();
  with_tap_offsets(g, grad_out.numel(), [&](const auto& offset_of) {
    at::parallel_for(0, vg.size[0], grain(outputs * channels), [&](int64_t begin, int64_t end) {
      const auto offset = offset_of;  // (a copy, kept in registers across the stores)
      WindowTable table;
      LineVector<acc_t> scratch(kInPlace ? 0 : cells);
      for (const auto n : c10::irange(begin, end)) {
        table.build(g, n);
        const int64_t* cell = table.cells(g);
        acc_t* sum = kInPlace ? reinterpret_cast<acc_t*>(dst + n * vg.stride[0]) : scratch.data();
        std::fill(sum, sum + cells, acc_t(0));
        const scalar_t* gr = grad + n * outputs * channels;
        const tap_t* tp = tap + n * outputs * channels;
        for (int64_t o = 0; o < outputs; ++o, gr += channels, tp += channels) {
          if (cell[o] == WindowTable::kNoCell) continue;
          acc_t* base = sum + cell[o] * channels;
          for (int64_t c = 0; c < channels; ++c) {
            base[offset(static_cast<int64_t>(tp[c])) * channels + c] += static_cast<acc_t>(gr[c]);
          }
        }
        if constexpr (!kInPlace) narrow(scratch.data(), dst + n * vg.stride[0], cells);
      }
    });
  });
}

// Whether a channels-last max backward scatters: channels innermost in the
// gradient and taps (channels_inner), a dense channels-last gradient,
// samples for every thread (a task per sample), and few channels where
// windows overlap (adaptive ones, or fixed ones wider than their
// stride): 3x3/2 and 3x3/1 1.1-4x faster up to 96 channels (float; bfloat16
// 1.0-3x), adaptive 13x13 -> 6x6 1.2-11x. Where fixed windows do not overlap
// the gather looks each cell's one term up, faster from 16 channels
// (2x2/2: 0.5-0.9x). Samples of up to 256K cells, whose sums stay in
// cache between their zeroing and the scatter (64x112x112 float, 3.2 MB:
// 0.75-1.2x between runs); other sums than float's take such a scratch.
inline bool scatters_channels(const PoolGeometry& g, const at::Tensor& grad_in,
                              const at::Tensor& taps) {
  if (!channels_inner(grad_in, taps)) {
    return false;
  }
  const Layout5 v = layout_of(grad_in);
  bool overlap = g.adaptive;
  for (const auto& d : g.dim) overlap = overlap || (d.kernel - 1) * d.dilation + 1 > d.stride;
  const int64_t cells = v.pixels() * v.size[1];
  return v.size[1] <= (overlap ? 96 : 15) && v.size[0] >= at::get_num_threads() &&
         cells <= (int64_t{1} << 18) && packed_channels_last(v);
}

// Average: each output's share (gradient / divisor, as avg_grad_lanes forms
// it) once, then the gather sums shares. A channels-last gradient takes the
// shares a chunk of samples at a time, about 1 MB of them: a block as large
// as the output, page-faulted in on every call and out of cache by the
// gather, made the 3x3/1 backward on 8x192x35x35 twice torch's time on one
// thread. Planes through channel groups take all at once.
template <typename scalar_t>
void avg_backward_gather_channels(const PoolGeometry& g, const at::Tensor& grad_out,
                                  const at::Tensor& grad_in) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout5 vo = layout_of(grad_out), vg = layout_of(grad_in);
  const int64_t channels = vo.size[1], samples = vo.size[0];
  const int64_t per_sample = std::max<int64_t>(vo.pixels() * channels, 1);
  const bool chunked = vg.stride[1] == 1;
  const int64_t chunk =
      chunked ? std::max<int64_t>(1, (int64_t{1} << 20) / (per_sample * int64_t{sizeof(acc_t)}))
              : samples;
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  const at::Tensor shares =
      at::empty({std::min(chunk, samples) * per_sample}, grad_out.options().dtype(acc_type));
  const auto* grad = grad_out.const_data_ptr<scalar_t>();
  auto* share = shares.mutable_data_ptr<acc_t>();
  for (int64_t n0 = 0; n0 < samples; n0 += chunk) {
    const int64_t n1 = std::min(samples, n0 + chunk);
    at::parallel_for(n0 * vo.pixels(), n1 * vo.pixels(), grain(channels),
                     [&](int64_t begin, int64_t end) {
      WindowTable table;
      // (Stepped, not divided per pixel: the divisions were a third of small backwards.)
      PixelCursor px(begin, vo);
      with_step(vo.stride[1], [&](auto step) {
        const int64_t sc = step;
        for (const auto p : c10::irange(begin, end)) {
          const int64_t n = px.n, *o = px.x;
          table.build(g, n);
          const Window w[kDims] = {table.dim[0][o[0]], table.dim[1][o[1]], table.dim[2][o[2]]};
          const auto divisor = static_cast<acc_t>(avg_divisor(g, w, o));
          const scalar_t* gr = grad + vo.offset(n, 0, o[0], o[1], o[2]);
          acc_t* sh = share + (p - n0 * vo.pixels()) * channels;
          for (int64_t c = 0; c < channels; ++c) {
            sh[c] = static_cast<acc_t>(gr[c * sc]) / divisor;
          }
          px.next();
        }
      });
    });
    const auto* no_taps = static_cast<const uint8_t*>(nullptr);
    if (chunked) {
      gather_channel_samples<false, scalar_t>(g, grad_in, share, no_taps, n0, n1);
    } else {
      gather_channels<false, scalar_t>(g, grad_in, share, no_taps);
    }
  }
}

// One row of a planes max backward: output ow's gradient onto its saved
// tap, offset(tap) from its window's origin. Restrict-qualified, and the
// offset function a copy, so the loop keeps its pointers in registers rather
// than reloading them after every store.
template <typename scalar_t, typename tap_t, typename acc_t, typename Offset>
inline void scatter_row(acc_t* __restrict__ base, const WindowTable& table, const Offset offset,
                        const tap_t* __restrict__ tap, int64_t st,
                        const scalar_t* __restrict__ grad, int64_t sg, int64_t width) {
  const Window* __restrict__ w = table.dim[2].data();
  const int64_t* __restrict__ origin = table.origin.data();
  for (int64_t ow = 0; ow < width; ++ow) {
    if (w[ow].count == 0) continue;
    base[origin[ow] + offset(static_cast<int64_t>(tap[ow * st]))] +=
        static_cast<acc_t>(grad[ow * sg]);
  }
}

// A whole plane of a max backward when outputs and taps are dense planes:
// output o's gradient onto its saved tap, cell[o] its window's origin
// (WindowTable::cells).
template <typename scalar_t, typename tap_t, typename acc_t, typename Offset>
inline void scatter_plane(acc_t* __restrict__ base, const int64_t* __restrict__ cell,
                          const Offset offset, const tap_t* __restrict__ tap,
                          const scalar_t* __restrict__ grad, int64_t outputs) {
  for (int64_t o = 0; o < outputs; ++o) {
    if (cell[o] == WindowTable::kNoCell) continue;
    base[cell[o] + offset(static_cast<int64_t>(tap[o]))] += static_cast<acc_t>(grad[o]);
  }
}

// Planes lying end to end: plane (n, c) at (n * C + c) * pixels (NCHW).
inline bool planes_end_to_end(const Layout5& v) {
  return dense_planes(v) && (v.size[1] == 1 || v.stride[1] == v.pixels()) &&
         (v.size[0] == 1 || v.stride[0] == v.size[1] * v.pixels());
}

constexpr int64_t kZeroChunkBytes = int64_t{1} << 15;  // zeroed at once, then summed into
constexpr int64_t kSmallPlaneBytes = 1024;             // planes max_backward_small_planes takes

// A max backward of small float or double planes lying end to end, each
// summing in place in backward_planes' order: many planes a task, zeroed a
// chunk at a time ahead of their sums. backward_planes' bookkeeping per
// plane, and a fill whose zeros the first adds read back still in flight,
// cost 7x7 and 4x4 planes 1.4x this time (64x256x7x7, 2 threads: 200 us,
// torch 120-130). From 28x28 up, backward_planes' zeroing row by row as the
// windows reach it was 5-8% faster.
template <typename scalar_t, typename tap_t, typename Offset>
void max_backward_small_planes(const PoolGeometry& g, const scalar_t* grad, const tap_t* tap,
                               scalar_t* dst, const Layout5& vg, int64_t outputs,
                               const Offset& offset) {
  const int64_t block = vg.pixels(), channels = vg.size[1];
  const int64_t chunk = std::max<int64_t>(1, kZeroChunkBytes / (block * int64_t{sizeof(scalar_t)}));
  at::parallel_for(0, vg.size[0] * channels, grain(block + outputs * gather_cost(g)),
                   [&](int64_t begin, int64_t end) {
    WindowTable table;
    for (int64_t p0 = begin; p0 < end; p0 += chunk) {
      const int64_t p1 = std::min(end, p0 + chunk);
      std::fill(dst + p0 * block, dst + p1 * block, scalar_t(0));
      for (int64_t p = p0; p < p1; ++p) {
        table.build(g, p / channels);
        scatter_plane(dst + p * block, table.cells(g), offset, tap + p * outputs,
                      grad + p * outputs, outputs);
      }
    }
  });
}

template <typename scalar_t, typename tap_t>
void max_backward_cpu(const PoolGeometry& g, const at::Tensor& grad_out, const at::Tensor& taps,
                      const at::Tensor& grad_in) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout5 vo = layout_of(grad_out), vt = layout_of(taps);
  const auto* grad = grad_out.const_data_ptr<scalar_t>();
  const auto* tap = taps.const_data_ptr<tap_t>();
  if (scatters_channels(g, grad_in, taps)) {
    max_backward_scatter_channels<scalar_t, tap_t>(g, grad_out, taps, grad_in);
    return;
  }
  if (channels_inner(grad_in, taps) ||
      via_channels(g, grad_in, Pass::kMaxBackward)) {
    max_backward_gather_channels<scalar_t, tap_t>(g, grad_out, taps, grad_in);
    return;
  }
  // The flat path's table of window origins is an int64 per output: past
  // 64K outputs (4 MB per thread, out of cache) rows of windows do better.
  const Layout5 vg = layout_of(grad_in);
  const bool flat = dense_planes(vo) && dense_planes(vt) && vo.pixels() <= (int64_t{1} << 16) &&
                    vg.pixels() <= kBandCells;  // a band holds no whole plane
  with_tap_offsets(g, grad_out.numel(), [&](const auto& offset) {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      if (flat && planes_end_to_end(vo) && planes_end_to_end(vt) && planes_end_to_end(vg) &&
          vg.pixels() * int64_t{sizeof(scalar_t)} <= kSmallPlaneBytes) {
        max_backward_small_planes(g, grad, tap, grad_in.mutable_data_ptr<scalar_t>(), vg,
                                  vo.pixels(), offset);
        return;
      }
    }
    backward_planes<scalar_t>(g, grad_out, grad_in,
                              [&](int64_t n, int64_t c, WindowTable& table, const auto& ready) {
      const tap_t* tp = tap + vt.offset(n, c, 0, 0, 0);
      const scalar_t* gp = grad + vo.offset(n, c, 0, 0, 0);
      if (flat) {
        scatter_plane(ready(-1, -1), table.cells(g), offset, tp, gp, vo.pixels());
        return;
      }
      for (const auto od : c10::irange(vo.size[2])) {
        for (const auto oh : c10::irange(vo.size[3])) {
          acc_t* base = ready(od, oh);
          // A dilated window can hold no cell at all: its saved tap is no cell either.
          if (table.dim[0][od].count == 0 || table.dim[1][oh].count == 0) continue;
          scatter_row(base + row_origin(g, table.dim[0][od], table.dim[1][oh]), table, offset,
                      tp + od * vt.stride[2] + oh * vt.stride[3], vt.stride[4],
                      gp + od * vo.stride[2] + oh * vo.stride[3], vo.stride[4], vo.size[4]);
        }
      }
    });
  });
}

// The shares of output row (od, oh) of a plane: each output's gradient
// over its divisor, as avg_grad_lanes forms each term. Inside the row the W
// factor of the divisor is the kernel, so one divisor serves all (a vector
// at a time where the gradient row is contiguous); the edges take their own.
template <typename scalar_t, typename acc_t>
void share_row(const PoolGeometry& g, const WindowTable& table, int64_t od, int64_t oh,
               const scalar_t* gr, int64_t step, int64_t width, acc_t* share) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  const Interior& inner = table.inner;
  Window w[kDims] = {table.dim[0][od], table.dim[1][oh], {}};
  int64_t o[kDims] = {od, oh, 0};
  for (o[2] = 0; o[2] < width; ++o[2]) {
    if (o[2] == inner.lo && inner.lo < inner.hi) {
      w[2] = table.dim[2][o[2]];
      const auto divisor = static_cast<acc_t>(avg_divisor(g, w, o));
      if (step == 1) {
        for (; o[2] + L <= inner.hi; o[2] += L) {
          (load_acc<acc_t>(gr + o[2]) / Vec(divisor)).store(share + o[2]);
        }
      }
      for (; o[2] < inner.hi; ++o[2]) {
        share[o[2]] = static_cast<acc_t>(gr[o[2] * step]) / divisor;
      }
      if (o[2] == width) break;
    }
    w[2] = table.dim[2][o[2]];
    share[o[2]] = static_cast<acc_t>(gr[o[2] * step]) / static_cast<acc_t>(avg_divisor(g, w, o));
  }
}

// U vectors of cells of a gradient row from cell w0, W stride 1: each the
// sum over share rows (in order) of the kw shares from w0 + pad - (kw - 1)
// up, in order. U independent chains: one is bound by the adds' latency.
template <int64_t U, typename scalar_t, typename acc_t>
inline void gather_cells_stride1(const acc_t* const* rows, int64_t nrows, int64_t kw,
                                 int64_t from, int64_t w0, int64_t width,
                                 scalar_t* const* outs, int64_t nouts) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  Vec sum[U];
  for (int64_t u = 0; u < U; ++u) sum[u] = Vec(acc_t(0));
  for (int64_t r = 0; r < nrows; ++r) {
    const acc_t* at = rows[r] + from;
    for (int64_t t = kw - 1; t >= 0; --t) {
      for (int64_t u = 0; u < U; ++u) sum[u] = sum[u] + Vec::loadu(at - t + u * L);
    }
  }
  for (int64_t i = 0; i < nouts; ++i) {
    for (int64_t u = 0; u < U; ++u) {
      store_cells(sum[u], outs[i] + w0 + u * L, std::min(L, width - w0 - u * L));
    }
  }
}

// lo then hi, 2L cells from cell `first` (>= 0), into each of the nouts rows:
// those before `width` only, the row's last ones by masked stores (through a
// buffer and memcpy, the tail of a 56-wide row was half of a 2x2 backward).
template <typename scalar_t, typename acc_t>
inline void store_pair(const at::vec::Vectorized<acc_t>& lo, const at::vec::Vectorized<acc_t>& hi,
                       int64_t first, int64_t width, scalar_t* const* outs, int64_t nouts) {
  constexpr int64_t L = at::vec::Vectorized<acc_t>::size();
  const int64_t count = std::min(2 * L, width - first);
  for (int64_t i = 0; i < nouts; ++i) {
    store_cells(lo, outs[i] + first, std::min(L, count));
    if (count > L) store_cells(hi, outs[i] + first + L, count - L);
  }
}

// The same for W stride 2: U vectors of even cells and U of odd ones
// (terms even_terms and odd_terms, shares m - q for lane m), interleaved
// into 2 * U * L cells from 2 * m0 - pad, those inside [0, width) stored
// (into each of the nouts rows).
template <int64_t U, typename scalar_t, typename acc_t>
inline void gather_cells_stride2(const acc_t* const* rows, int64_t nrows, int64_t even_terms,
                                 int64_t odd_terms, int64_t m0, int64_t pad, int64_t width,
                                 scalar_t* const* outs, int64_t nouts) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  Vec even[U], odd[U];
  for (int64_t u = 0; u < U; ++u) even[u] = odd[u] = Vec(acc_t(0));
  for (int64_t r = 0; r < nrows; ++r) {
    const acc_t* at = rows[r] + m0;
    for (int64_t q = even_terms - 1; q >= 0; --q) {
      for (int64_t u = 0; u < U; ++u) even[u] = even[u] + Vec::loadu(at - q + u * L);
    }
    for (int64_t q = odd_terms - 1; q >= 0; --q) {
      for (int64_t u = 0; u < U; ++u) odd[u] = odd[u] + Vec::loadu(at - q + u * L);
    }
  }
  for (int64_t u = 0; u < U; ++u) {
    const auto [lo, hi] = at::vec::interleave2(even[u], odd[u]);
    const int64_t first = 2 * (m0 + u * L) - pad;  // the cell of lane 0 of lo
    if (first >= 0 && first < width) {
      store_pair(lo, hi, first, width, outs, nouts);
    } else if (first < width) {  // cells before the row's start (padding) skipped
      acc_t cell[2 * L];
      lo.store(cell);
      hi.store(cell + L);
      const int64_t skip = first < 0 ? -first : 0;
      const int64_t count = std::min(2 * L, width - first) - skip;
      for (int64_t i = 0; i < nouts; ++i) {
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          std::copy(cell + skip, cell + skip + count, outs[i] + first + skip);
        } else {
          narrow(cell + skip, outs[i] + first + skip, count);
        }
      }
    }
  }
}

// The cells of a row that has one share row and W windows 2 wide at
// stride 2 without padding (2x2 and 2x2x2 average pooling): cells 2m and
// 2m + 1 both take share m (+0 added, as the sums start from +0), into
// each of the nouts rows; gather_cells_stride2's loops, a term at a time,
// cost twice this here.
template <typename scalar_t, typename acc_t>
inline void pair_cells(const acc_t* share, int64_t width, scalar_t* const* outs, int64_t nouts) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  int64_t m = 0;
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (sizeof(scalar_t) == 2) {
    // Each share narrowed once and its 16 bits doubled (the same bits as
    // narrowing each cell), a 32-byte store per row: narrowing every cell
    // of every row made bfloat16's 2x2 backward slower than float's.
    for (; 2 * (m + L) <= width; m += L) {
      const __m128i v = narrowed_lanes<scalar_t>(Vec(acc_t(0)) + Vec::loadu(share + m));
      const __m256i cells = _mm256_set_m128i(_mm_unpackhi_epi16(v, v), _mm_unpacklo_epi16(v, v));
      for (int64_t i = 0; i < nouts; ++i) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(outs[i] + 2 * m), cells);
      }
    }
  }
#endif
  for (; 2 * m < width; m += L) {
    const Vec v = Vec(acc_t(0)) + Vec::loadu(share + m);
    const auto [lo, hi] = at::vec::interleave2(v, v);
    store_pair(lo, hi, 2 * m, width, outs, nouts);
  }
}

// The end of the run of rows from `first` (before `size`) covered by the same
// outputs as it: spans[first, end) all equal.
inline int64_t same_span_end(const Span* spans, int64_t first, int64_t size) {
  int64_t end = first + 1;
  while (end < size && spans[end].lo == spans[first].lo && spans[end].hi == spans[first].hi) ++end;
  return end;
}

// Whether the average backward of planes gathers by gather_planes_avg:
// fixed windows, W stride 1 or 2, unit-stride gradient rows.
inline bool gathers_planes_avg(const PoolGeometry& g, const Layout5& vg) {
  return !g.adaptive && vg.stride[4] == 1 && (g.dim[2].stride == 1 || g.dim[2].stride == 2);
}

// The average backward of planes by gather, a plane per task: first the
// plane's shares (gradient / divisor, as avg_grad_lanes forms each term) in
// rows with zeros either side, then each input row, a vector of cells at
// a time, sums the share rows of the outputs covering it in avg_grad_lanes's
// order (D, H, then W ascending); along W those terms are contiguous loads
// (stride 2: even and odd cells apart, then interleaved). The zeros stand
// for outputs past a row's ends: a sum that starts at +0 is never -0, so
// adding +0 changes nothing, and each cell gets avg_grad_lanes's sum bit for
// bit, written once: no zero fill, no read-modify-write passes, no scratch.
// Over the spreading kernel: 3x3 stride-1 windows on 35x35 planes 3x.
template <typename scalar_t>
void gather_planes_avg(const PoolGeometry& g, const at::Tensor& grad_out,
                       const at::Tensor& grad_in) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  const Layout5 vo = layout_of(grad_out), vg = layout_of(grad_in);
  const auto* grad = grad_out.const_data_ptr<scalar_t>();
  auto* dst = grad_in.mutable_data_ptr<scalar_t>();
  const PoolDim& dw = g.dim[2];
  const bool stride2 = dw.stride == 2;
  // W terms per cell: all kw for stride 1; for stride 2, ceil(kw / 2) for
  // cells at an even distance u = w + pad from the padded row's start, and
  // floor(kw / 2) for odd ones, outputs u / 2 - q for q below that.
  const int64_t even_terms = (dw.kernel + 1) / 2, odd_terms = dw.kernel / 2;
  // Share rows: output ow at left + ow; the vectors of cells read from
  // left - (terms - 1) up to one vector past their last cell's outputs.
  const int64_t left = stride2 ? even_terms - 1 : std::max<int64_t>(dw.kernel - 1 - dw.pad, 0);
  const int64_t reach = stride2 ? (dw.in - 1 + dw.pad) / 2 + L : dw.in - 1 + dw.pad + L;
  const int64_t row_len = left + std::max(dw.out, reach + 1);
  const int64_t out_rows = vo.size[2] * vo.size[3];
  at::parallel_for(0, vg.size[0] * vg.size[1], grain(vg.pixels() + vo.pixels() * gather_cost(g)),
                   [&](int64_t begin, int64_t end) {
    WindowTable table;
    LineVector<acc_t> shares(out_rows * row_len);
    std::vector<const acc_t*> rows;
    std::vector<scalar_t*> outs;
    for (const auto task : c10::irange(begin, end)) {
      const int64_t n = task / vg.size[1], c = task % vg.size[1];
      table.build(g, n);
      const std::vector<Span>* spans = table.cover(g);
      for (const auto od : c10::irange(vo.size[2])) {
        for (const auto oh : c10::irange(vo.size[3])) {
          acc_t* share = shares.data() + (od * vo.size[3] + oh) * row_len;
          std::fill(share, share + left, acc_t(0));
          std::fill(share + left + dw.out, share + row_len, acc_t(0));
          share_row(g, table, od, oh, grad + vo.offset(n, c, od, oh, 0), vo.stride[4], dw.out,
                    share + left);
        }
      }
      // Rows covered by the same outputs (runs of D and of H with one span:
      // k consecutive rows where stride = kernel) are the same cells, so a
      // run is summed once and stored into each of its rows: half the
      // loads and shuffles of a 2x2 backward.
      for (int64_t d = 0, d_end; d < vg.size[2]; d = d_end) {
        const Span sd = spans[0][d];
        d_end = same_span_end(spans[0].data(), d, vg.size[2]);
        for (int64_t h = 0, h_end; h < vg.size[3]; h = h_end) {
          const Span sh = spans[1][h];
          h_end = same_span_end(spans[1].data(), h, vg.size[3]);
          rows.clear();
          for (int64_t od = sd.lo; od < sd.hi; ++od) {
            for (int64_t oh = sh.lo; oh < sh.hi; ++oh) {
              rows.push_back(shares.data() + (od * vo.size[3] + oh) * row_len + left);
            }
          }
          outs.clear();
          for (int64_t rd = d; rd < d_end; ++rd) {
            for (int64_t rh = h; rh < h_end; ++rh) outs.push_back(dst + vg.offset(n, c, rd, rh, 0));
          }
          const int64_t nrows = static_cast<int64_t>(rows.size());
          const int64_t nouts = static_cast<int64_t>(outs.size());
          const int64_t width = vg.size[4];
          if (!stride2) {
            int64_t w0 = 0;
            for (; w0 + 4 * L <= width; w0 += 4 * L) {
              gather_cells_stride1<4>(rows.data(), nrows, dw.kernel, w0 + dw.pad, w0, width,
                                      outs.data(), nouts);
            }
            for (; w0 < width; w0 += L) {
              gather_cells_stride1<1>(rows.data(), nrows, dw.kernel, w0 + dw.pad, w0, width,
                                      outs.data(), nouts);
            }
            continue;
          }
          if (nrows == 1 && dw.kernel == 2 && dw.pad == 0) {
            pair_cells(rows[0], width, outs.data(), nouts);
            continue;
          }
          // Cells u = w + pad in [2 * m0, 2 * m0 + 2L), from m0 = pad / 2.
          int64_t m0 = dw.pad / 2;
          for (; 2 * (m0 + 2 * L) - dw.pad <= width; m0 += 2 * L) {
            gather_cells_stride2<2>(rows.data(), nrows, even_terms, odd_terms, m0, dw.pad, width,
                                    outs.data(), nouts);
          }
          for (; 2 * m0 - dw.pad < width; m0 += L) {
            gather_cells_stride2<1>(rows.data(), nrows, even_terms, odd_terms, m0, dw.pad, width,
                                    outs.data(), nouts);
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void avg_backward_cpu(const PoolGeometry& g, const at::Tensor& grad_out,
                      const at::Tensor& grad_in) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout5 vo = layout_of(grad_out);
  const auto* grad = grad_out.const_data_ptr<scalar_t>();
  if (channels_inner(grad_in, grad_in) ||
      via_channels(g, grad_in, Pass::kAvgBackward)) {
    avg_backward_gather_channels<scalar_t>(g, grad_out, grad_in);
    return;
  }
  if (gathers_planes_avg(g, layout_of(grad_in))) {
    gather_planes_avg<scalar_t>(g, grad_out, grad_in);
    return;
  }
  const int64_t plane_h = g.dim[1].in, plane_w = g.dim[2].in;
  const int64_t kw = g.dim[2].kernel, stride_w = g.dim[2].stride, pad_w = g.dim[2].pad;
  // One row of outputs (od, oh) into the plane's scratch.
  const auto spread_row = [&](int64_t n, int64_t c, int64_t od, int64_t oh,
                              const WindowTable& table, acc_t* scratch) {
    thread_local LineVector<acc_t> shares;
    shares.resize(vo.size[4]);
    acc_t* share = shares.data();
    share_row(g, table, od, oh, grad + vo.offset(n, c, od, oh, 0), vo.stride[4], vo.size[4],
              share);
    const Interior& inner = table.inner;
    const Window w[kDims] = {table.dim[0][od], table.dim[1][oh], {}};
    // Each cell must sum its outputs in order along W: the left edge, then
    // the inside with taps from the last (so outputs ascend per cell), then
    // the right edge.
    const auto edge = [&](acc_t* row, int64_t ow) {
      const Window& x = table.dim[2][ow];
      for (int64_t tw = 0; tw < x.count; ++tw) {
        row[x.begin + tw * x.step] += share[ow];
      }
    };
    for (int64_t td = 0; td < w[0].count; ++td) {
      for (int64_t th = 0; th < w[1].count; ++th) {
        acc_t* row = scratch + ((w[0].begin + td * w[0].step) * plane_h + w[1].begin +
                                th * w[1].step) * plane_w;
        for (int64_t ow = 0; ow < inner.lo; ++ow) edge(row, ow);
        for (int64_t tw = kw - 1; tw >= 0 && inner.lo < inner.hi; --tw) {
          with_step(stride_w, [&](auto step) {
            spread_sweep(row + tw - pad_w, step, inner, share);
          });
        }
        for (int64_t ow = inner.hi; ow < vo.size[4]; ++ow) edge(row, ow);
      }
    }
  };
  backward_planes<scalar_t>(g, grad_out, grad_in,
                            [&](int64_t n, int64_t c, WindowTable& table, const auto& ready) {
    for (const auto od : c10::irange(vo.size[2])) {
      for (const auto oh : c10::irange(vo.size[3])) {
        spread_row(n, c, od, oh, table, ready(od, oh));
      }
    }
  });
}

// Taps to torch's flat indices a row of outputs at a time: the D and H
// windows once a row, the W windows' origins from the window table, the
// taps' offsets by with_tap_offsets.
template <typename tap_t>
void max_indices_kernel(const PoolGeometry& g, const at::Tensor& taps, const at::Tensor& indices) {
  const Layout5 vt = layout_of(taps), vx = layout_of(indices);
  const auto* tap = taps.const_data_ptr<tap_t>();
  auto* dst = indices.mutable_data_ptr<int64_t>();
  if (is_global(g)) {
    // One output a plane, whose window starts at the plane's first cell (any
    // sample's): its index the tap's offset, the planes in a loop of their
    // own. By rows of one output each, return_indices on a global max over
    // 64x2048x7x7 channels-last took 1.56 ms, now 0.85 (bfloat16, one
    // thread; float 3.19 -> 2.31; torch 0.71 and 1.95).
    with_tap_offsets(g, indices.numel(), [&](const auto& offset) {
      at::parallel_for(0, vx.size[0], grain(vx.size[1]), [&](int64_t begin, int64_t end) {
        for (const auto n : c10::irange(begin, end)) {
          const tap_t* t = tap + n * vt.stride[0];
          int64_t* index = dst + n * vx.stride[0];
          for (const auto c : c10::irange(vx.size[1])) {
            index[c * vx.stride[1]] = offset(static_cast<int64_t>(t[c * vt.stride[1]]));
          }
        }
      });
    });
    return;
  }
  const int64_t rows = vx.size[0] * vx.size[1] * vx.size[2] * vx.size[3];
  WindowTable shared;
  if (g.sizes == nullptr) shared.build(g, 0);
  with_tap_offsets(g, indices.numel(), [&](const auto& offset) {
    at::parallel_for(0, rows, grain(vx.size[4]), [&](int64_t begin, int64_t end) {
      WindowTable own;
      WindowTable& table = g.sizes == nullptr ? shared : own;
      RowCursor cursor(begin, vx);
      for (int64_t r = begin; r < end; ++r, cursor.next()) {
        const int64_t n = cursor.n, c = cursor.c;
        if (g.sizes != nullptr) table.build(g, n);
        const int64_t origin = row_origin(g, table.dim[0][cursor.x[0]], table.dim[1][cursor.x[1]]);
        const tap_t* tap_row = tap + vt.offset(n, c, cursor.x[0], cursor.x[1], 0);
        int64_t* index_row = dst + vx.offset(n, c, cursor.x[0], cursor.x[1], 0);
        for (const auto ow : c10::irange(vx.size[4])) {
          const auto t = static_cast<int64_t>(tap_row[ow * vt.stride[4]]);
          index_row[ow * vx.stride[4]] = origin + table.origin[ow] + offset(t);
        }
      }
    });
  });
}

// ------------------------------------------------- torch's order of a sum
//
// torch's global average pooling is its CPU mean: a sum divided by the
// cell count, the sum that of its cascade_sum (SumKernel.cpp). Over a dense
// plane that sum takes one order, that of 32-byte vectors: torch registers
// no AVX512 form of it, so its AVX2 form runs on AVX512 machines too, and
// its default form's vectors are 32 bytes as well. The whole vectors, as
// rows of four, go to four running sums (blocks of 2^p rows passed up a
// cascade of four levels, p = max(4, ceil(log2(rows)) / 4)), the leftover
// vectors to the first, and the four are added in turn; then from zero the
// cells past the whole vectors, and that vector's lanes, each in turn. A
// plane shorter than a vector sums its cells the same way, as rows of four
// cells. Dense planes sum here in that order, so that the mean is torch's,
// bit for bit (reduced-precision values widened first, as torch's mean
// widens them).

// Whether torch's sum kernel in this process has 32-byte vectors, as ours.
template <typename acc_t>
inline bool sums_as_torch() {
  static const bool x86 = [] {
    const std::string capability = at::get_cpu_capability();
    return capability == "AVX512" || capability == "AVX2" || capability == "NO AVX";
  }();
  return x86 && sizeof(at::vec::Vectorized<acc_t>) == 32;
}

// utils::CeilLog2 of torch: 1 up to 2.
inline int64_t torch_ceil_log2(int64_t x) {
  return x <= 2 ? 1 : 64 - c10::llvm::countLeadingZeros(static_cast<uint64_t>(x - 1));
}

// torch's multi_row_sum: four running sums over `rows` rows of four values,
// row(i, k) the k-th of row i. Its first level starts every block of `step`
// rows from zero (zeroed as it is passed up), so that level is a block's own
// sum, kept here in locals: in torch's array of levels, the compiler kept
// the sums in memory across rows.
template <typename T, typename Row>
inline std::array<T, 4> torch_multi_row(int64_t rows, const T& zero, const Row& row) {
  constexpr int kLevels = 4;
  const int64_t power = std::max<int64_t>(4, torch_ceil_log2(rows) / kLevels);
  const int64_t step = int64_t(1) << power, mask = step - 1;
  const auto sum_rows = [&](int64_t first, int64_t last) {
    std::array<T, 4> sum = {zero, zero, zero, zero};
    for (int64_t i = first; i < last; ++i) {
      for (int k = 0; k < 4; ++k) sum[k] = sum[k] + row(i, k);
    }
    return sum;
  };
  // No block to pass up: the higher levels stay zero, and adding their +0
  // changes no running sum from +0, which is never -0.
  if (rows < step) return sum_rows(0, rows);
  T up[kLevels - 1][4];  // levels 1 to 3
  for (auto& level : up) {
    for (auto& a : level) a = zero;
  }
  int64_t i = 0;
  for (; i + step <= rows; i += step) {
    const std::array<T, 4> block = sum_rows(i, i + step);
    for (int k = 0; k < 4; ++k) up[0][k] = up[0][k] + block[k];
    for (int level = 1; level < kLevels - 1; ++level) {
      if (((i + step) & (mask << (level * power))) != 0) break;
      for (int k = 0; k < 4; ++k) {
        up[level][k] = up[level][k] + up[level - 1][k];
        up[level - 1][k] = zero;
      }
    }
  }
  std::array<T, 4> sum = sum_rows(i, rows);
  for (const auto& level : up) {
    for (int k = 0; k < 4; ++k) sum[k] = sum[k] + level[k];
  }
  return sum;
}

// torch's row_sum: `size` values, load(i) the i-th, as rows of four.
template <typename T, typename Load>
inline T torch_row_sum(int64_t size, const T& zero, const Load& load) {
  const int64_t rows = size / 4;
  auto part = torch_multi_row(rows, zero, [&](int64_t i, int k) { return load(4 * i + k); });
  for (int64_t i = rows * 4; i < size; ++i) part[0] = part[0] + load(i);
  for (int k = 1; k < 4; ++k) part[0] = part[0] + part[k];
  return part[0];
}

// The lanes of a dense plane's `whole` vectors summed in torch's order:
// torch_row_sum over the vectors, written out where it has no cascade
// (fewer than 16 rows of four), for the compiler to keep in registers:
// through torch_row_sum, 14x14 bfloat16 planes took 1.6x the time and 2x2
// planes 1.5x.
template <typename acc_t, typename scalar_t>
C10_ALWAYS_INLINE at::vec::Vectorized<acc_t> torch_lanes(const scalar_t* __restrict__ x,
                                                        int64_t whole) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  if (whole >= 4 * 16) {
    return torch_row_sum(whole, Vec(acc_t(0)),
                         [&](int64_t v) { return load_acc<acc_t>(x + v * L); });
  }
  Vec a0(acc_t(0)), a1 = a0, a2 = a0, a3 = a0;
  int64_t v = 0;
  for (; v + 4 <= whole; v += 4) {
    a0 += load_acc<acc_t>(x + v * L);
    a1 += load_acc<acc_t>(x + (v + 1) * L);
    a2 += load_acc<acc_t>(x + (v + 2) * L);
    a3 += load_acc<acc_t>(x + (v + 3) * L);
  }
  for (; v < whole; ++v) a0 += load_acc<acc_t>(x + v * L);
  return ((a0 + a1) + a2) + a3;
}

// The sum of a dense plane of `cells` values in torch's order.
template <typename acc_t, typename scalar_t>
acc_t torch_plane_sum(const scalar_t* __restrict__ x, int64_t cells) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  const auto cell = [&](int64_t i) { return static_cast<acc_t>(x[i]); };
  if (cells < L) return torch_row_sum(cells, acc_t(0), cell);
  const int64_t whole = cells / L;
  acc_t sum = 0;
  for (int64_t i = whole * L; i < cells; ++i) sum += cell(i);
  alignas(64) acc_t lane[L];
  torch_lanes<acc_t>(x, whole).store(lane);
  for (int64_t k = 0; k < L; ++k) sum += lane[k];
  return sum;
}

// Cells count[0..2] along vi's spatial dims as torch's iterator sees them:
// dims of one cell dropped, a dim merged into the one inside it where its
// cells follow on. Returns the dims left, innermost first, their sizes and
// strides.
inline int runs_of(const int64_t* count, const Layout5& vi, int64_t* size, int64_t* stride) {
  int dims = 0;
  for (int k = kDims - 1; k >= 0; --k) {  // innermost first
    const int64_t n = count[k], st = vi.stride[2 + k];
    if (n == 1) continue;
    if (dims > 0 && stride[dims - 1] * size[dims - 1] == st) {
      size[dims - 1] *= n;
    } else {
      size[dims] = n;
      stride[dims++] = st;
    }
  }
  return dims;
}

// A global window's cells as runs (runs_of).
inline int window_runs(const Window* w, const Layout5& vi, int64_t* size, int64_t* stride) {
  const int64_t count[kDims] = {w[0].count, w[1].count, w[2].count};
  return runs_of(count, vi, size, stride);
}

// The cells of a global window, widened to acc_t, in order (d, h, w), into
// `cells` (channels apart: a dense channels-last copy where `channels` is
// the slice's channel count; one plane where 1).
template <typename acc_t, typename scalar_t>
void widen_window(const Window* w, const scalar_t* plane, const Layout5& vi, int64_t channels,
                  acc_t* cells) {
  for (int64_t d = 0; d < w[0].count; ++d) {
    for (int64_t h = 0; h < w[1].count; ++h) {
      for (int64_t x = 0; x < w[2].count; ++x, cells += channels) {
        const scalar_t* cell = plane + d * vi.stride[2] + h * vi.stride[3] + x * vi.stride[4];
        for (int64_t c = 0; c < channels; ++c) cells[c] = static_cast<acc_t>(cell[c * vi.stride[1]]);
      }
    }
  }
}

// The sum over a global window of a dense plane (a sample's extent in
// variable pooling, from the plane's first cell) in torch's order, as its
// mean over the slice of that extent sums. Its iterator merges the window's
// dims where their cells follow on (whole rows, whole planes of rows),
// drops those of one cell, and sums each run along the innermost dim left
// (as torch_plane_sum, or where those cells are apart, as rows of four),
// the runs added in turn from zero.
template <typename acc_t, typename scalar_t>
acc_t torch_window_sum(const Window* w, const scalar_t* plane, const Layout5& vi) {
  int64_t size[kDims], stride[kDims];
  const int dims = window_runs(w, vi, size, stride);
  if (dims == 0) return acc_t(0) + static_cast<acc_t>(plane[0]);
  const auto run_sum = [&](const scalar_t* x) {
    if (stride[0] == 1) return torch_plane_sum<acc_t>(x, size[0]);
    return torch_row_sum(size[0], acc_t(0),
                         [&](int64_t i) { return static_cast<acc_t>(x[i * stride[0]]); });
  };
  acc_t sum = 0;
  const int64_t outer1 = dims > 1 ? size[1] : 1, outer2 = dims > 2 ? size[2] : 1;
  for (int64_t j = 0; j < outer2; ++j) {
    for (int64_t i = 0; i < outer1; ++i) {
      sum += run_sum(plane + (dims > 2 ? j * stride[2] : 0) + (dims > 1 ? i * stride[1] : 0));
    }
  }
  return sum;
}

// The sum over a global window of a dense plane as torch's mean of that
// slice sums it: 2-byte values are widened first into a copy of the slice,
// dense and contiguous, so that a window of more than one run sums as one
// dense plane of its cells (in place, as runs, a 9x20 bfloat16 sample's
// 5x7 extent came out a bit off now and then); others in place.
template <typename acc_t, typename scalar_t>
acc_t torch_slice_sum(const Window* w, const scalar_t* plane, const Layout5& vi) {
  if constexpr (!std::is_same_v<scalar_t, acc_t>) {
    int64_t size[kDims], stride[kDims];
    if (window_runs(w, vi, size, stride) > 1) {
      thread_local LineVector<acc_t> cells;
      cells.resize(w[0].count * w[1].count * w[2].count);
      widen_window(w, plane, vi, 1, cells.data());
      return torch_plane_sum<acc_t>(cells.data(), static_cast<int64_t>(cells.size()));
    }
  }
  return torch_window_sum<acc_t>(w, plane, vi);
}

// The sums of eight dense planes of at least a vector's cells, in torch's
// order, in float lanes: each plane's lanes and last cells as
// torch_plane_sum forms them, then the eight planes' folds of those at once,
// a vector add per lane across the planes (one plane at a time, each fold a
// chain of eight dependent adds, took 1.5x the time).
template <typename scalar_t>
at::vec::Vectorized<float> torch_eight_plane_sums(const scalar_t* const* plane, int64_t cells) {
  using Vec = at::vec::Vectorized<float>;
  static_assert(Vec::size() == kTile);
  alignas(64) float lanes[kTile * kTile], across[kTile * kTile], rest[kTile];
  const int64_t whole = cells / kTile;
  for (int j = 0; j < kTile; ++j) {
    const scalar_t* x = plane[j];
    torch_lanes<float>(x, whole).store(lanes + j * kTile);
    float sum = 0;
    for (int64_t i = whole * kTile; i < cells; ++i) sum += static_cast<float>(x[i]);
    rest[j] = sum;
  }
  at::vec::transpose_mxn<float, kTile, kTile>(lanes, kTile, across, kTile);
  Vec sum = Vec::loadu(rest);
  for (int k = 0; k < kTile; ++k) sum += Vec::loadu(across + k * kTile);
  return sum;
}

// The global average of dense planes of fixed extents in torch's order,
// eight channels of a sample at a time.
template <typename scalar_t>
void avg_forward_global_as_torch(const PoolGeometry& g, const Layout5& vi, const Layout5& vo,
                                 const scalar_t* src, scalar_t* dst) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = vi.size[1], cells = vi.pixels();
  const int64_t groups = div_ceil(channels, kTile);
  Window win[kDims];
  const int64_t origin[kDims] = {0, 0, 0};
  windows_at(g, 0, origin, win);
  const auto divisor = static_cast<acc_t>(avg_divisor(g, win, origin));
  at::parallel_for(0, vi.size[0] * groups, grain(kTile * cells), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / groups, c0 = task % groups * kTile;
      const int64_t width = std::min<int64_t>(kTile, channels - c0);
      if constexpr (std::is_same_v<acc_t, float>) {
        if (width == kTile && cells >= kTile) {
          const scalar_t* plane[kTile];
          for (int j = 0; j < kTile; ++j) plane[j] = src + vi.offset(n, c0 + j, 0, 0, 0);
          alignas(64) float mean[kTile];
          (torch_eight_plane_sums(plane, cells) / at::vec::Vectorized<float>(divisor)).store(mean);
          for (int j = 0; j < kTile; ++j) {
            dst[vo.offset(n, c0 + j, 0, 0, 0)] = static_cast<scalar_t>(mean[j]);
          }
          continue;
        }
      }
      for (int64_t c = c0; c < c0 + width; ++c) {
        const acc_t sum = torch_plane_sum<acc_t>(src + vi.offset(n, c, 0, 0, 0), cells);
        dst[vo.offset(n, c, 0, 0, 0)] = static_cast<scalar_t>(sum / divisor);
      }
    }
  });
}

// ---------------------------------------------------------- global pooling
//
// Output size 1 in every dim, the head of most CNNs: one reduction per
// (n, c) plane over the sample's whole extent, with no window tables, and a
// backward that writes each plane directly (the value every cell's gather
// would form: 0 + the one output's share).

// Calls f(n, c, w) for the planes of v in order, w the windows of sample n.
template <typename F>
void for_global_planes(const PoolGeometry& g, const Layout5& v, int64_t cost, const F& f) {
  const int64_t channels = v.size[1];
  at::parallel_for(0, v.size[0] * channels, grain(cost), [&](int64_t begin, int64_t end) {
    int64_t n = begin / channels, c = begin % channels, sample = -1;
    Window w[kDims]{};  // (set at the first plane; braces quiet GCC's maybe-uninitialized)
    const int64_t origin[kDims] = {0, 0, 0};
    for (int64_t p = begin; p < end; ++p) {
      if (n != sample) {
        windows_at(g, n, origin, w);
        sample = n;
      }
      f(n, c, w);
      if (++c == channels) {
        c = 0;
        ++n;
      }
    }
  });
}

// A global window that is one short run of each plane, a gap before the
// next plane's (variable pooling's sequences; a slice of longer rows),
// starts a stream at every plane that the hardware prefetchers meet cold
// once the input is out of cache: the planes loops ask for the run of the
// plane kPlanesAhead on (same sample, so the same window) as they start one.
// One thread, 64x256 rows of 512 floats: their max over the first 128 cells
// 1.45-2.0 -> 0.58-0.69 ms; masked max and mean over lengths 1..512
// 1.8-2.0 -> 1.15-1.4 and 1.3-1.7 -> 0.86-1.24. Not where planes follow each
// other back to back (the prefetchers' case) or the run is long.
constexpr int64_t kPlanesAhead = 4;

// Per sample (its windows are the same for all its planes), that run: its
// offset from the start of a plane and its length, or a length of 0 where
// there is none; no samples where none has one.
struct PlaneRun {
  int64_t offset = 0, length = 0;
};

template <typename scalar_t>
std::vector<PlaneRun> runs_ahead(const PoolGeometry& g, const Layout5& vi) {
  constexpr int64_t kLongest = 4096 / sizeof(scalar_t);
  std::vector<PlaneRun> runs(vi.size[0]);
  const int64_t origin[kDims] = {0, 0, 0};
  Window w[kDims];
  bool any = false;
  for (const auto n : c10::irange(vi.size[0])) {
    windows_at(g, n, origin, w);
    const Runs r = runs_of(w, vi, 1);
    const int64_t length = r.merged ? w[1].count * w[2].count : w[2].count;
    if (r.usable && w[0].count == 1 && (r.merged || w[1].count == 1) && length <= kLongest &&
        length < vi.stride[1]) {
      runs[n] = {vi.offset(0, kPlanesAhead, w[0].begin, w[1].begin, w[2].begin), length};
      any = true;
    }
  }
  if (!any) runs.clear();
  return runs;
}

// for_global_planes over the planes of an input (cells at src, laid out
// as vi): f(n, c, w, plane), plane the first cell of plane (n, c), the run
// ahead prefetched meanwhile where runs_ahead found one. Decided before the
// planes, and the loop without prefetches a loop of its own: on small dense
// planes (max over 64x2048x7x7, one thread) deciding it per plane cost 12%,
// and a test per plane of runs found once still 5%. (The loop prefetches,
// not a helper: GCC takes a function whose only effect is a prefetch for
// one without effects, and drops its calls when not inlined.)
template <typename scalar_t, typename F>
void for_input_planes(const PoolGeometry& g, const Layout5& vi, const Layout5& vo,
                      const scalar_t* src, const F& f) {
  const std::vector<PlaneRun> ahead = runs_ahead<scalar_t>(g, vi);
  const auto planes = [&](auto prefetching) {
    for_global_planes(g, vo, vi.pixels(), [&](int64_t n, int64_t c, const Window* w) {
      const scalar_t* plane = src + vi.offset(n, c, 0, 0, 0);
      if constexpr (decltype(prefetching)::value) {
        if (ahead[n].length > 0 && c + kPlanesAhead < vo.size[1]) {
          prefetch_lines(plane + ahead[n].offset, ahead[n].length);
        }
      }
      f(n, c, w, plane);
    });
  };
  if (ahead.empty()) {
    planes(std::false_type{});
  } else {
    planes(std::true_type{});
  }
}

// The maxima of eight dense planes of `cells` (at least a vector's) values,
// as float lanes, NaN propagating: each plane's lanes in an accumulator of
// its own (eight chains of maxima side by side), then the eight planes'
// lanes folded at once, across a transpose.
template <typename scalar_t>
at::vec::Vectorized<float> eight_plane_maxima(const scalar_t* const* plane, int64_t cells) {
  using Vec = at::vec::Vectorized<float>;
  static_assert(Vec::size() == kTile);
  const int64_t last = cells - kTile;  // the last whole vector, over the tail
  Vec m[kTile];
  for (int j = 0; j < kTile; ++j) m[j] = load_acc<float>(plane[j] + last);
  for (int64_t i = 0; i < last; i += kTile) {
    for (int j = 0; j < kTile; ++j) m[j] = at::vec::maximum(m[j], load_acc<float>(plane[j] + i));
  }
  alignas(64) float lanes[kTile * kTile], across[kTile * kTile];
  for (int j = 0; j < kTile; ++j) m[j].store(lanes + j * kTile);
  at::vec::transpose_mxn<float, kTile, kTile>(lanes, kTile, across, kTile);
  Vec best = Vec::loadu(across);
  for (int k = 1; k < kTile; ++k) best = at::vec::maximum(best, Vec::loadu(across + k * kTile));
  return best;
}

// Planes up to this many cells go eight at a time (eight_plane_maxima): a
// plane alone leaves its few vectors' maxima one chain, and a fold of its
// lanes, per plane.
constexpr int64_t kEightPlanesCells = 256;

// Whether a global max of float lanes goes eight planes at a time: dense
// planes of one extent (no per-sample sizes) of a vector to
// kEightPlanesCells cells, whose window is the whole plane, so that a tap is
// its cell's offset.
inline bool eight_planes_apply(const PoolGeometry& g, const Layout5& vi) {
  if (g.sizes != nullptr || !dense_planes(vi)) return false;
  for (int k = 0; k < kDims; ++k) {
    if (g.dim[k].kernel != vi.size[2 + k]) return false;
  }
  return vi.pixels() >= kTile && vi.pixels() <= kEightPlanesCells && vi.size[1] >= kTile;
}

// The global max of dense planes eight channels of a sample at a time
// (eight_planes_apply), the channels past the last eight plane by plane.
// Planes whose max is NaN or a zero, whose bits depend on which cell wins,
// and where a tap is wanted the position, go by run_max's rule.
template <typename scalar_t, typename tap_t>
void max_forward_global_eight(const Layout5& vi, const Layout5& vo, const Layout5& vt,
                              const scalar_t* src, scalar_t* dst, tap_t* tap) {
  const int64_t channels = vi.size[1], cells = vi.pixels();
  const int64_t groups = div_ceil(channels, kTile);
  at::parallel_for(0, vi.size[0] * groups, grain(kTile * cells), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / groups, c0 = task % groups * kTile;
      const scalar_t* plane[kTile];
      alignas(64) float best[kTile];
      const bool whole = c0 + kTile <= channels;
      if (whole) {
        for (int j = 0; j < kTile; ++j) plane[j] = src + vi.offset(n, c0 + j, 0, 0, 0);
        eight_plane_maxima(plane, cells).store(best);
      }
      for (int64_t c = c0; c < std::min(c0 + kTile, channels); ++c) {
        const scalar_t* at = src + vi.offset(n, c, 0, 0, 0);
        float value = whole ? best[c - c0] : 0.f;
        int64_t pos = 0;
        if (!whole || value != value || value == 0.f) {
          value = run_max<scalar_t, float>(at, cells, tap ? &pos : nullptr);
        } else if (tap) {
          pos = first_equal(at, cells, value);
        }
        dst[vo.offset(n, c, 0, 0, 0)] = static_cast<scalar_t>(value);
        if (tap) tap[vt.offset(n, c, 0, 0, 0)] = static_cast<tap_t>(pos);
      }
    }
  });
}

template <typename scalar_t, typename tap_t>
void max_forward_global(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out,
                        const at::Tensor* taps) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout5 vi = layout_of(in), vo = layout_of(out), vt = taps ? layout_of(*taps) : vo;
  const auto* src = in.const_data_ptr<scalar_t>();
  auto* dst = out.mutable_data_ptr<scalar_t>();
  tap_t* tap = taps ? taps->mutable_data_ptr<tap_t>() : nullptr;
  if constexpr (std::is_same_v<acc_t, float>) {
    if (eight_planes_apply(g, vi)) {
      max_forward_global_eight(vi, vo, vt, src, dst, tap);
      return;
    }
  }
  for_input_planes(g, vi, vo, src, [&](int64_t n, int64_t c, const Window* w,
                                       const scalar_t* plane) {
    int64_t t;
    const acc_t value = plane_window_max<scalar_t, acc_t>(g, w, plane, vi, tap ? &t : nullptr);
    dst[vo.offset(n, c, 0, 0, 0)] = static_cast<scalar_t>(value);
    if (tap) tap[vt.offset(n, c, 0, 0, 0)] = static_cast<tap_t>(t);
  });
}

template <typename scalar_t>
void avg_forward_global(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout5 vi = layout_of(in), vo = layout_of(out);
  const auto* src = in.const_data_ptr<scalar_t>();
  auto* dst = out.mutable_data_ptr<scalar_t>();
  // Dense planes in torch's order where its sums are ours to copy.
  const bool as_torch = dense_planes(vi) && sums_as_torch<acc_t>();
  if (as_torch && g.sizes == nullptr) {
    avg_forward_global_as_torch(g, vi, vo, src, dst);
    return;
  }
  const int64_t origin[kDims] = {0, 0, 0};
  // Elsewhere plane by plane: variable pooling's extents (of dense planes,
  // as torch's per-sample mean sums them), strided planes, vectors of
  // another width than torch's.
  for_input_planes(g, vi, vo, src, [&](int64_t n, int64_t c, const Window* w,
                                       const scalar_t* plane) {
    const acc_t sum = as_torch ? torch_slice_sum<acc_t>(w, plane, vi)
                               : plane_window_sum<scalar_t, acc_t>(w, plane, vi);
    dst[vo.offset(n, c, 0, 0, 0)] =
        static_cast<scalar_t>(sum / static_cast<acc_t>(avg_divisor(g, w, origin)));
  });
}

// Channels-last global pooling of long planes (fixed extents): per sample
// and block of kGlobalChannels channels (whole cache lines), the pixels in
// registers, a vector of channels at a time. Few (sample, block) pairs (a
// batch of one, 64 channels) also cut their pixels into chunks for the
// threads to share, joined in order so that the split changes no bit.
// Shorter planes of up to 64 channels come here too, where that measured
// faster than the channels kernels (which read a pixel's channels in one
// run, faster with more channels): max from 32 pixels (16 or 64 channels of
// 14x14 to 31x31: 1.1-2.2x); average of any size, summed in the channels
// kernels' order, several samples at a time (one thread, 8-32 samples of
// 3x3 to 28x28: 1.1-2.5x faster), but under kBlockedTaps pixels only up to
// 32 channels of 2-byte values and 24 of 8-byte ones (64 channels of half
// 0.82-0.86x, 32 of double 0.91-0.96x); from kBlockedTaps pixels any number
// of channels, 64 at a time (SE blocks, 8x96x14x14 float 13.2 -> 7.6 us).
// (Averages whose pixels lie at equal steps, and variable ones, go before
// this to torch's order: global_channels_as_torch.)
inline bool global_by_channels(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out,
                               bool max, const at::Tensor* taps) {
  const Layout5 v = layout_of(in);
  const int64_t pixels = v.pixels(), channels = v.size[1];
  const int64_t size = in.element_size();
  const bool short_avg =
      pixels >= kBlockedTaps || channels <= (size == 4 ? 64 : size == 2 ? 32 : 24);
  const bool long_planes = pixels >= kCascadeCells ||
                           (max ? channels <= kGlobalChannels && pixels >= 32 : short_avg);
  return is_global(g) && g.sizes == nullptr && channels_inner(in, out) &&
         (taps == nullptr || taps->stride(1) == 1) && long_planes &&
         pixels < (int64_t{1} << 24);  // pixel numbers exact in float lanes
}

struct GlobalChunks {
  int64_t pairs;          // (sample, channel block) pairs
  int64_t chunks;         // per pair: `full` chunks of `pixels`, then the rest (maybe none)
  int64_t full;
  int64_t pixels;
};

// Chunks of 2^m blocks of kCascadeBlock pixels (at least 4), small enough
// to give each thread a few tasks; one chunk per pair where pairs suffice.
inline GlobalChunks global_chunks(const Layout5& v) {
  const int64_t pairs = v.size[0] * div_ceil(v.size[1], kGlobalChannels);
  const int64_t blocks = v.pixels() / kCascadeBlock, wanted = 4 * at::get_num_threads();
  int64_t chunk_blocks = blocks + 1;
  if (pairs < wanted) {
    chunk_blocks = kCascadeCells / kCascadeBlock;
    while (chunk_blocks * wanted < blocks * pairs) chunk_blocks *= 2;
  }
  const int64_t full = blocks / chunk_blocks;
  return {pairs, full + 1, full, chunk_blocks * kCascadeBlock};
}

// Calls f(pixel) for the cells [first, last) of channel c0's plane of
// sample n (p = (d * H + h) * W + w), in order.
template <typename scalar_t, typename F>
inline void for_plane_pixels(const scalar_t* src, const Layout5& v, int64_t n, int64_t c0,
                             int64_t first, int64_t last, const F& f) {
  if (first >= last) return;  // (and no pointer past the tensor is formed)
  int64_t x = first % v.size[4], rest = first / v.size[4];
  int64_t h = rest % v.size[3], d = rest / v.size[3];
  const scalar_t* pixel = src + v.offset(n, c0, d, h, x);
  for (int64_t p = first; p < last; ++p) {
    f(pixel);
    if (p + 1 == last) break;
    if (++x < v.size[4]) {
      pixel += v.stride[4];
      continue;
    }
    x = 0;
    if (++h == v.size[3]) {
      h = 0;
      ++d;
    }
    pixel = src + v.offset(n, c0, d, h, 0);
  }
}

// Runs task(pair, chunk, n, c0, width, first, last) for every chunk and
// join(pair, n, c0, width) for every pair after its chunks: in the task
// where a pair is one chunk, else on this thread once all have run (pairs
// are few then, and a second parallel region costs more than the joins).
template <typename Task, typename Join>
void for_global_chunks(const Layout5& v, const GlobalChunks& k, const Task& task,
                       const Join& join) {
  const int64_t groups = div_ceil(v.size[1], kGlobalChannels), pixels = v.pixels();
  const auto pair_at = [&](int64_t pair, int64_t* n, int64_t* c0) {
    *n = pair / groups;
    *c0 = pair % groups * kGlobalChannels;
    return std::min(kGlobalChannels, v.size[1] - *c0);
  };
  at::parallel_for(0, k.pairs * k.chunks, grain(kGlobalChannels * std::min(k.pixels, pixels)),
                   [&](int64_t begin, int64_t end) {
    for (const auto t : c10::irange(begin, end)) {
      const int64_t pair = t / k.chunks, chunk = t % k.chunks;
      int64_t n, c0;
      const int64_t width = pair_at(pair, &n, &c0);
      const int64_t first = chunk * k.pixels;
      task(pair, chunk, n, c0, width, first, chunk < k.full ? first + k.pixels : pixels);
      if (k.chunks == 1) join(pair, n, c0, width);
    }
  });
  for (int64_t pair = 0; k.chunks > 1 && pair < k.pairs; ++pair) {
    int64_t n, c0;
    const int64_t width = pair_at(pair, &n, &c0);
    join(pair, n, c0, width);
  }
}

// Vector k of a pixel's kGlobalChannels channels, of which `width` are
// there (kFull: all): whole vectors by one load, the last one in part, and
// zeros past it (from the channels' end, so that no pointer past the tensor
// is formed: nothing is read there).
template <typename acc_t, typename scalar_t, bool kFull>
inline at::vec::Vectorized<acc_t> load_channels(const scalar_t* at, int64_t k, int64_t width) {
  constexpr int64_t L = at::vec::Vectorized<acc_t>::size();
  if (kFull || (k + 1) * L <= width) return load_acc<acc_t>(at + k * L);
  return load_acc<acc_t>(at + std::min(k * L, width), width - k * L);
}

// sums[k] (k < kUsed) plus vector k of channels [c0, c0 + width) of the
// pixels [first, last) of sample n, in order; those past the channels add
// zeros; kFull: all kUsed vectors whole. Not inlined: inlined into its
// caller's cascade, the compiler kept a sum in memory across pixels.
template <int64_t kUsed, bool kFull, typename acc_t, typename scalar_t>
C10_NOINLINE void sum_channels(const scalar_t* src, const Layout5& v, int64_t n, int64_t c0,
                               int64_t width, int64_t first, int64_t last,
                               at::vec::Vectorized<acc_t>* sums) {
  at::vec::Vectorized<acc_t> acc[kUsed];
  for (int64_t k = 0; k < kUsed; ++k) acc[k] = sums[k];
  for_plane_pixels(src, v, n, c0, first, last, [&](const scalar_t* pixel) {
    for (int64_t k = 0; k < kUsed; ++k) acc[k] += load_channels<acc_t, scalar_t, kFull>(pixel, k, width);
  });
  for (int64_t k = 0; k < kUsed; ++k) sums[k] = acc[k];
}

// f(integral_constant<kUsed>, bool_constant<kFull>) for `width` channels:
// kUsed the fewest of 1, 2, 4 or kMost vectors of L lanes that hold them,
// kFull whether they fill those vectors. Trip counts for the channel loops
// of the global kernels, and no test of a last part vector per load: with
// either test in the loops, the compiler kept their sums in memory.
template <int64_t kMost, int64_t L, typename F>
inline auto with_channel_vectors(int64_t width, const F& f) {
  const auto fill = [&](auto used) {
    return width == decltype(used)::value * L ? f(used, std::true_type{}) : f(used, std::false_type{});
  };
  const int64_t vecs = div_ceil(width, L);
  if (vecs <= 1) return fill(std::integral_constant<int64_t, 1>{});
  if (vecs <= 2) return fill(std::integral_constant<int64_t, 2>{});
  if (vecs <= 4) return fill(std::integral_constant<int64_t, 4>{});
  return fill(std::integral_constant<int64_t, kMost>{});
}

// Average: the pixels summed by blocks of kCascadeBlock added pairwise
// (Cascade): the channels kernels' one running sum per channel over a whole
// 300x300 float plane came out 1e-5 off, where torch's mean is 1e-7. A
// chunk (2^m blocks) ends its cascade as one level-m sum, and a cascade of
// those sums, totalled over the last chunk's total, adds every pair as one
// pass would.
template <typename scalar_t>
void avg_forward_global_channels(const PoolGeometry& g, const at::Tensor& in,
                                 const at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t L = Vec::size(), kVecs = kGlobalChannels / L;
  struct Lanes {
    Vec v[kVecs];
    Lanes operator+(const Lanes& o) const {
      Lanes r;
      for (int64_t k = 0; k < kVecs; ++k) r.v[k] = v[k] + o.v[k];
      return r;
    }
  };
  const Layout5 vi = layout_of(in), vo = layout_of(out);
  const auto* src = in.const_data_ptr<scalar_t>();
  auto* dst = out.mutable_data_ptr<scalar_t>();
  const int64_t origin[kDims] = {0, 0, 0};
  // Planes shorter than a chunk (global_by_channels takes them with at most
  // kGlobalChannels channels) sum as the channels kernels sum their windows:
  // from kBlockedTaps pixels blocks of kTapBlock added in turn, below it one
  // running sum; the same bits, so that a channel's mean does not depend on
  // the channel count. Only the vectors holding channels are kept (kUsed),
  // for kSamples samples at once: each vector's adds are a chain bound by
  // their latency, and samples' chains are independent (16 channels, two
  // vectors, one sample at a time: half the time in waits).
  if (vi.pixels() < kCascadeCells) {
    const int64_t pixels = vi.pixels();
    int64_t c0 = 0, width = 0;  // the group of channels being summed, [c0, c0 + width)
    const int64_t block_size = pixels >= kBlockedTaps ? kTapBlock : pixels;
    Window win[kDims];
    windows_at(g, 0, origin, win);  // (fixed extents: the same for every sample)
    const auto divisor = static_cast<acc_t>(avg_divisor(g, win, origin));
    // kFull: the channels fill all kUsed vectors.
    const auto samples_in_turn = [&](auto used, auto samples, auto full, int64_t n) {
      constexpr int64_t kUsed = decltype(used)::value, kSamples = decltype(samples)::value;
      constexpr bool kFull = decltype(full)::value;
      Vec total[kSamples][kUsed];
      for (int64_t s = 0; s < kSamples; ++s) {
        for (int64_t k = 0; k < kUsed; ++k) total[s][k] = Vec(acc_t(0));
      }
      // Block by block, each summed in a loop of its own (with the fold into
      // the totals inside the pixel loop, the compiler stored every sum on
      // every pixel); the last block, if short, only in the result.
      Vec block[kSamples][kUsed];
      int64_t in_block = 0;
      for (int64_t begin = 0; begin < pixels; begin += block_size) {
        for (int64_t s = 0; s < kSamples; ++s) {
          for (int64_t k = 0; k < kUsed; ++k) block[s][k] = Vec(acc_t(0));
        }
        in_block = std::min(block_size, pixels - begin);
        for_plane_pixels(src, vi, n, c0, begin, begin + in_block, [&](const scalar_t* pixel) {
          for (int64_t s = 0; s < kSamples; ++s) {
            for (int64_t k = 0; k < kUsed; ++k) {
              block[s][k] += load_channels<acc_t, scalar_t, kFull>(pixel + s * vi.stride[0], k,
                                                                   width);
            }
          }
        });
        if (in_block < block_size) break;
        for (int64_t s = 0; s < kSamples; ++s) {
          for (int64_t k = 0; k < kUsed; ++k) total[s][k] = total[s][k] + block[s][k];
        }
        in_block = 0;
      }
      for (int64_t s = 0; s < kSamples; ++s) {
        alignas(64) acc_t sum[kUsed * L];
        for (int64_t k = 0; k < kUsed; ++k) {
          (in_block > 0 ? total[s][k] + block[s][k] : total[s][k]).store(sum + k * L);
        }
        for (int64_t c = 0; c < width; ++c) {
          dst[vo.offset(n + s, c0 + c, 0, 0, 0)] = static_cast<scalar_t>(sum[c] / divisor);
        }
      }
    };
    // Eight chains (kUsed * kSamples) where the channels fill up to eight vectors.
    const auto by_samples = [&](auto used, auto full) {
      constexpr int64_t kUsed = decltype(used)::value;
      constexpr int64_t kSamples = kUsed >= 8 ? 1 : 8 / kUsed;
      at::parallel_for(0, vi.size[0], grain(kSamples * pixels * width),
                       [&](int64_t begin, int64_t end) {
        int64_t n = begin;
        for (; n + kSamples <= end; n += kSamples) {
          samples_in_turn(used, std::integral_constant<int64_t, kSamples>{}, full, n);
        }
        for (; n < end; ++n) samples_in_turn(used, std::integral_constant<int64_t, 1>{}, full, n);
      });
    };
    // More channels than kGlobalChannels (planes of kBlockedTaps pixels or
    // more: global_by_channels) a group at a time.
    for (c0 = 0; c0 < vi.size[1]; c0 += kGlobalChannels) {
      width = std::min(kGlobalChannels, vi.size[1] - c0);
      with_channel_vectors<kVecs, L>(width, by_samples);
    }
    return;
  }
  const GlobalChunks chunks = global_chunks(vi);
  std::vector<Lanes> partial(static_cast<size_t>(chunks.pairs * chunks.chunks));
  const auto task = [&](int64_t pair, int64_t chunk, int64_t n, int64_t c0, int64_t width,
                        int64_t first, int64_t last) {
    Cascade<Lanes> cascade;
    // The first kUsed vectors (those past the channels add zeros), all
    // whole where kFull.
    const auto sum_pixels = [&](auto used, auto full) {
      constexpr int64_t kUsed = decltype(used)::value;
      constexpr bool kFull = decltype(full)::value;
      // Block by block, each summed in a loop of its own: with the cascade's
      // add in the loop, the compiler stored the sums on every pixel.
      for (int64_t begin = first;; begin += kCascadeBlock) {
        const int64_t end = std::min(begin + kCascadeBlock, last);
        Lanes sum;
        for (auto& v : sum.v) v = Vec(acc_t(0));
        sum_channels<kUsed, kFull>(src, vi, n, c0, width, begin, end, sum.v);
        if (end - begin < kCascadeBlock) {
          // The rest (maybe none: a full chunk's sums start from +0 and so
          // are never -0, and adding +0 leaves its one level-m sum as it is).
          return cascade.total(sum);
        }
        cascade.add(sum);
      }
    };
    partial[pair * chunks.chunks + chunk] = with_channel_vectors<kVecs, L>(width, sum_pixels);
  };
  const auto join = [&](int64_t pair, int64_t n, int64_t c0, int64_t width) {
    const Lanes* part = partial.data() + pair * chunks.chunks;
    Cascade<Lanes> cascade;
    for (int64_t j = 0; j < chunks.full; ++j) cascade.add(part[j]);
    const Lanes all = cascade.total(part[chunks.full]);
    Window win[kDims];
    windows_at(g, n, origin, win);
    const auto divisor = static_cast<acc_t>(avg_divisor(g, win, origin));
    alignas(64) acc_t total[kGlobalChannels];
    for (int64_t k = 0; k < kVecs; ++k) all.v[k].store(total + k * L);
    for (int64_t c = 0; c < width; ++c) {
      dst[vo.offset(n, c0 + c, 0, 0, 0)] = static_cast<scalar_t>(total[c] / divisor);
    }
  };
  for_global_chunks(vi, chunks, task, join);
}

// Channels-last global averages in torch's order. torch's mean of a
// channels-last tensor merges the pixels into one dim (when they lie at
// equal steps) and reduces it as the outer dim of each channel, vectors of
// channels across (vectorized_outer_sum; reduced-precision values widened
// first). Each channel takes one of two orders over the pixels:
//  - the cascade (torch_multi_row, a pixel a row): the channels of whole
//    blocks of four vectors, and under a vector's channels the first
//    4 * floor(C / 4) (its rows of four scalar channels);
//  - rows of four pixels (torch_row_sum): the rest.
// It then adds the sum to the output's +0 and divides.

// The threads torch's reductions split among: its get_num_threads(), or
// one inside a parallel region (where they run serially). Taken before our
// own parallel regions.
inline int64_t torch_reduce_threads() {
  return at::in_parallel_region() ? 1 : at::get_num_threads();
}

// The channels [0, cascaded) that torch's channels-last mean sums by the
// cascade. Where its threads split the channels (32768 cells or more, fewer
// samples than threads, and more channels than samples or at least as many
// as threads: its find_split_dim), each part starts at a multiple of 128
// bytes, and a last part under a vector's channels sums as a tensor of so
// few channels would: with two threads never, with eight (36 channels) so.
template <typename acc_t>
int64_t torch_cascaded_channels(int64_t samples, int64_t channels, int64_t pixels,
                                int64_t threads) {
  constexpr int64_t L = at::vec::Vectorized<acc_t>::size();
  if (channels < L) return channels / 4 * 4;
  if (threads > 1 && samples * channels * pixels >= at::internal::GRAIN_SIZE &&
      samples < threads && (channels >= threads || channels > samples)) {
    // at::parallel_for's parts, then torch's rounding of the last one's start.
    const int64_t part = div_ceil(channels, std::min(threads, channels));
    int64_t last = (channels - 1) / part * part;
    last -= last % (128 / static_cast<int64_t>(sizeof(acc_t)));
    if (channels - last < L) return last + (channels - last) / 4 * 4;
  }
  return channels / (4 * L) * (4 * L);
}

// The step between a tensor's pixels where they lie at equal steps (one
// run, as torch's iterator merges them), else 0.
inline int64_t pixel_step(const Layout5& v) {
  int64_t size[kDims], stride[kDims];
  const int runs = runs_of(v.size + 2, v, size, stride);
  return runs == 0 ? 1 : runs == 1 ? stride[0] : 0;
}

// Whether a global average follows torch's channels-last order: channels
// innermost (dense planes, torch's contiguous order, go to
// avg_forward_global), pixels at equal steps or variable extents (whose
// slices' runs the kernel finds), and torch's sums ours to copy.
inline bool global_channels_as_torch(const PoolGeometry& g, const at::Tensor& in) {
  const Layout5 v = layout_of(in);
  const bool sums = in.scalar_type() == at::kDouble ? sums_as_torch<double>()
                                                    : sums_as_torch<float>();
  return is_global(g) && v.size[1] > 1 && v.stride[1] == 1 && !dense_planes(v) &&
         (g.sizes != nullptr || pixel_step(v) != 0) && sums;
}

// torch's cascade (torch_multi_row, a pixel a row) for `vectors` whole
// vectors (a multiple of four) of channels from `base`, pixels `step` apart, into sum: a block of
// pixels at a time, each vector over the block's pixels in a register, so
// that the block's rows of channels are read side by side, each in one run.
// (A vector at a time over all pixels, as torch reads, read a 64x2048x7x7
// bfloat16 tensor 2.5x slower on one thread; a pixel at a time across the
// channels, the sums in memory, 2x.) The levels above are in `scratch`
// (3 * vectors).
template <typename acc_t, typename scalar_t>
void torch_cascade_across(const scalar_t* base, int64_t step, int64_t pixels, int64_t vectors,
                          at::vec::Vectorized<acc_t>* scratch, acc_t* sum) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  constexpr int kLevels = 4;
  const int64_t power = std::max<int64_t>(4, torch_ceil_log2(pixels) / kLevels);
  const int64_t block = int64_t(1) << power, mask = block - 1;
  const Vec zero(acc_t(0));
  // Vectors [v, v + 4) summed over pixels [first, last), four chains of adds.
  const auto block_sum = [&](int64_t first, int64_t last, int64_t v, Vec* s) {
    Vec s0 = zero, s1 = zero, s2 = zero, s3 = zero;
    for (int64_t i = first; i < last; ++i) {
      const scalar_t* x = base + i * step + v * L;
      s0 = s0 + load_acc<acc_t>(x);
      s1 = s1 + load_acc<acc_t>(x + L);
      s2 = s2 + load_acc<acc_t>(x + 2 * L);
      s3 = s3 + load_acc<acc_t>(x + 3 * L);
    }
    s[0] = s0;
    s[1] = s1;
    s[2] = s2;
    s[3] = s3;
  };
  Vec* up = scratch;  // levels 1 to 3, `vectors` apart
  std::fill(up, up + (kLevels - 1) * vectors, zero);
  int64_t i = 0;
  for (; i + block <= pixels; i += block) {
    for (int64_t v = 0; v < vectors; v += 4) {
      Vec s[4];
      block_sum(i, i + block, v, s);
      for (int k = 0; k < 4; ++k) up[v + k] = up[v + k] + s[k];
    }
    for (int level = 1; level < kLevels - 1; ++level) {
      if (((i + block) & (mask << (level * power))) != 0) break;
      Vec* to = up + level * vectors;
      Vec* from = to - vectors;
      for (int64_t v = 0; v < vectors; ++v) {
        to[v] = to[v] + from[v];
        from[v] = zero;
      }
    }
  }
  for (int64_t v = 0; v < vectors; v += 4) {
    // (Under one block, torch_multi_row adds no levels: all +0 here, which
    // change no sum from +0.)
    Vec total[4];
    block_sum(i, pixels, v, total);
    for (int k = 0; k < 4; ++k) {
      for (int level = 0; level < kLevels - 1; ++level) {
        total[k] = total[k] + up[level * vectors + v + k];
      }
      total[k].store(sum + (v + k) * L);
    }
  }
}

// The channels after torch_cascade_across's, under four vectors, `width` of
// them from `base`: lanes [0, cascaded) cascade (the last part of torch's
// thread split), the others go by rows of four pixels, two vectors at once
// where both do.
template <typename acc_t, typename scalar_t>
void torch_channels_rest(const scalar_t* base, int64_t step, int64_t pixels, int64_t width,
                         int64_t cascaded, acc_t* sum) {
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t L = Vec::size();
  struct Two {
    Vec a, b;
    Two operator+(const Two& o) const { return {a + o.a, b + o.b}; }
  };
  const Vec zero(acc_t(0));
  for (int64_t k = 0; k * L < width; ++k) {
    const auto load = [&](int64_t i, int64_t vector) {
      return load_channels<acc_t, scalar_t, false>(base + i * step, vector, width);
    };
    const int64_t lanes = std::clamp<int64_t>(cascaded - k * L, 0, L);
    if (lanes == 0 && (k + 1) * L < width) {
      const Two part = torch_row_sum(pixels, Two{zero, zero}, [&](int64_t i) {
        return Two{load(i, k), load(i, k + 1)};
      });
      part.a.store(sum + k * L);
      part.b.store(sum + (k + 1) * L);
      ++k;
      continue;
    }
    if (lanes < std::min(L, width - k * L)) {
      torch_row_sum(pixels, zero, [&](int64_t i) { return load(i, k); }).store(sum + k * L);
    }
    if (lanes > 0) {
      alignas(64) acc_t cascade[L];
      torch_multi_row(pixels, zero, [&](int64_t i, int j) {
        return j == 0 ? load(i, k) : zero;
      })[0].store(cascade);
      std::copy(cascade, cascade + lanes, sum + k * L);
    }
  }
}

// Per sample: the channels of whole blocks of four vectors that cascade in
// chunks of up to kAcross (fewer where the tasks would not keep every thread
// busy), then the rest in one task, a vector at a time over the pixels.
template <typename scalar_t>
void avg_forward_global_channels_as_torch(const PoolGeometry& g, const at::Tensor& in,
                                          const at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t L = Vec::size(), kBlock = 4 * L, kAcross = 1024;
  const Layout5 vi = layout_of(in), vo = layout_of(out);
  const auto* src = in.const_data_ptr<scalar_t>();
  auto* dst = out.mutable_data_ptr<scalar_t>();
  const int64_t channels = vi.size[1], pixels = vi.pixels(), step = pixel_step(vi);
  const int64_t cascaded =
      torch_cascaded_channels<acc_t>(vi.size[0], channels, pixels, torch_reduce_threads());
  const int64_t across = cascaded / kBlock * kBlock;  // channels [0, across) by chunks
  int64_t chunk = kAcross;
  while (chunk > kBlock && vi.size[0] * div_ceil(across, chunk) < 4 * at::get_num_threads()) {
    chunk /= 2;
  }
  const int64_t chunks = div_ceil(across, chunk), tasks = chunks + (across < channels ? 1 : 0);
  Window win[kDims];
  const int64_t origin[kDims] = {0, 0, 0};
  windows_at(g, 0, origin, win);
  const auto divisor = static_cast<acc_t>(avg_divisor(g, win, origin));
  at::parallel_for(0, vi.size[0] * tasks, grain(std::min(chunk, channels) * pixels),
                   [&](int64_t begin, int64_t end) {
    std::vector<Vec> scratch(3 * std::min(chunk, std::max<int64_t>(across, kBlock)) / L);
    LineVector<acc_t> sum(std::max(chunk, kBlock));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / tasks, part = task % tasks;
      const int64_t c0 = part < chunks ? part * chunk : across;
      const int64_t width = part < chunks ? std::min(chunk, across - c0) : channels - across;
      const scalar_t* base = src + vi.offset(n, c0, 0, 0, 0);
      if (part < chunks) {
        torch_cascade_across(base, step, pixels, width / L, scratch.data(), sum.data());
      } else {
        torch_channels_rest(base, step, pixels, width, cascaded - c0, sum.data());
      }
      for (int64_t c = 0; c < width; ++c) {
        dst[vo.offset(n, c0 + c, 0, 0, 0)] =
            static_cast<scalar_t>((acc_t(0) + sum[c]) / divisor);
      }
    }
  });
}

// Variable extents of a channels-last input: each sample as torch's mean of
// its slice (input[n, :, :d, :h, :w]), a tensor of one sample. Its iterator
// merges the slice's pixels into runs (window_runs); one run sums across the
// channels as above. Of more runs, each channel sums alone over them
// (torch_window_sum), except 2-byte values: torch widens the slice first
// into a dense copy that keeps its order of strides (channels innermost),
// one run of all its pixels, which sums across the channels as above.
// torch's threads split the channels of a large slice (torch_cascaded_channels)
// as they would for the mean of that one slice.
template <typename scalar_t>
void avg_forward_variable_global_channels_as_torch(const PoolGeometry& g, const at::Tensor& in,
                                                   const at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t L = Vec::size(), kBlock = 4 * L;
  constexpr bool kWidened = !std::is_same_v<scalar_t, acc_t>;
  const Layout5 vi = layout_of(in), vo = layout_of(out);
  const auto* src = in.const_data_ptr<scalar_t>();
  auto* dst = out.mutable_data_ptr<scalar_t>();
  const int64_t channels = vi.size[1];
  const int64_t origin[kDims] = {0, 0, 0};
  const int64_t threads = torch_reduce_threads();
  at::parallel_for(0, vi.size[0], grain(channels * vi.pixels()), [&](int64_t begin, int64_t end) {
    std::vector<Vec> scratch(3 * (channels / kBlock + 1) * 4);
    LineVector<acc_t> sum(channels + kBlock), cells;
    for (int64_t n = begin; n < end; ++n) {
      Window w[kDims];
      windows_at(g, n, origin, w);
      const scalar_t* base = src + vi.offset(n, 0, 0, 0, 0);
      int64_t size[kDims], stride[kDims];
      const int runs = window_runs(w, vi, size, stride);
      const int64_t pixels = w[0].count * w[1].count * w[2].count;
      if (runs <= 1 || kWidened) {
        const int64_t cascaded = torch_cascaded_channels<acc_t>(1, channels, pixels, threads);
        const int64_t across = cascaded / kBlock * kBlock;
        const auto sum_across = [&](const auto* from, int64_t step) {
          if (across > 0) {
            torch_cascade_across(from, step, pixels, across / L, scratch.data(), sum.data());
          }
          if (across < channels) {
            torch_channels_rest(from + across, step, pixels, channels - across,
                                cascaded - across, sum.data() + across);
          }
        };
        if (runs <= 1) {
          sum_across(base, runs == 1 ? stride[0] : 1);
        } else {
          cells.resize(pixels * channels);
          widen_window(w, base, vi, channels, cells.data());
          sum_across(cells.data(), channels);
        }
      } else {
        for (int64_t c = 0; c < channels; ++c) {
          sum[c] = torch_window_sum<acc_t>(w, base + c, vi);
        }
      }
      const auto divisor = static_cast<acc_t>(avg_divisor(g, w, origin));
      for (int64_t c = 0; c < channels; ++c) {
        dst[vo.offset(n, c, 0, 0, 0)] = static_cast<scalar_t>((acc_t(0) + sum[c]) / divisor);
      }
    }
  });
}

// value[k] and code[k] (k < kUsed), the scan's winners so far, taking
// vector k of channels [c0, c0 + width) of the pixels [first, last) of
// sample n in order, pixel p as code p; as sum_channels, the vectors past
// the channels take zeros, and the winners stay in registers.
template <int64_t kUsed, bool kFull, typename acc_t, typename scalar_t>
C10_NOINLINE void max_channels(const scalar_t* src, const Layout5& v, int64_t n, int64_t c0,
                               int64_t width, int64_t first, int64_t last,
                               at::vec::Vectorized<acc_t>* value, at::vec::Vectorized<acc_t>* code) {
  using Vec = at::vec::Vectorized<acc_t>;
  Vec best[kUsed], at[kUsed];
  for (int64_t k = 0; k < kUsed; ++k) {
    best[k] = value[k];
    at[k] = code[k];
  }
  auto p = static_cast<acc_t>(first);
  for_plane_pixels(src, v, n, c0, first, last, [&](const scalar_t* pixel) {
    const Vec tap(p);
    p += 1;
    for (int64_t k = 0; k < kUsed; ++k) {
      take_or_add<true>(best[k], at[k], load_channels<acc_t, scalar_t, kFull>(pixel, k, width), tap);
    }
  });
  for (int64_t k = 0; k < kUsed; ++k) {
    value[k] = best[k];
    code[k] = at[k];
  }
}

// Max: each lane keeps the scan's winner (max_takes from the first cell on,
// pixel numbers as tap codes in acc_t lanes); chunks join in order by the
// same rule, which continues the scan: the last NaN, else the first max.
template <typename scalar_t, typename tap_t>
void max_forward_global_channels(const PoolGeometry& g, const at::Tensor& in,
                                 const at::Tensor& out, const at::Tensor* taps) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  constexpr int64_t L = Vec::size(), kVecs = kGlobalChannels / L;
  struct Best {
    Vec value[kVecs], code[kVecs];
  };
  const Layout5 vi = layout_of(in), vo = layout_of(out), vt = taps ? layout_of(*taps) : vo;
  const auto* src = in.const_data_ptr<scalar_t>();
  auto* dst = out.mutable_data_ptr<scalar_t>();
  tap_t* tap = taps ? taps->mutable_data_ptr<tap_t>() : nullptr;
  const GlobalChunks chunks = global_chunks(vi);
  std::vector<Best> partial(static_cast<size_t>(chunks.pairs * chunks.chunks));
  const auto task = [&](int64_t pair, int64_t chunk, int64_t n, int64_t c0, int64_t width,
                        int64_t first, int64_t last) {
    Best& b = partial[pair * chunks.chunks + chunk];
    // From -inf and the chunk's first pixel, as window_max starts (an empty
    // last chunk stays so, and takes nothing in the join).
    for (int64_t k = 0; k < kVecs; ++k) {
      b.value[k] = Vec(-std::numeric_limits<acc_t>::infinity());
      b.code[k] = Vec(static_cast<acc_t>(first));
    }
    with_channel_vectors<kVecs, L>(width, [&](auto used, auto full) {
      max_channels<decltype(used)::value, decltype(full)::value>(src, vi, n, c0, width, first, last,
                                                                  b.value, b.code);
    });
  };
  const auto join = [&](int64_t pair, int64_t n, int64_t c0, int64_t width) {
    const Best* part = partial.data() + pair * chunks.chunks;
    Best best = part[0];
    for (int64_t j = 1; j < chunks.chunks; ++j) {
      for (int64_t k = 0; k < kVecs; ++k) {
        take_or_add<true>(best.value[k], best.code[k], part[j].value[k], part[j].code[k]);
      }
    }
    alignas(64) acc_t value[kGlobalChannels], code[kGlobalChannels];
    for (int64_t k = 0; k < kVecs; ++k) {
      best.value[k].store(value + k * L);
      best.code[k].store(code + k * L);
    }
    narrow(value, dst + vo.offset(n, c0, 0, 0, 0), width);
    if (tap) narrow(code, tap + vt.offset(n, c0, 0, 0, 0), width);
  };
  for_global_chunks(vi, chunks, task, join);
}

// Where in a plane laid out as v each tap of a global window lies (taps
// count from the plane's first cell in the kernel's shape), or nothing for
// windows of more than kTapCells taps. Found once per call: three 64-bit
// divisions per plane were most of a max backward's time over small planes
// (channels-last 64x2048x7x7, one thread: float 3.5 ms against torch's 2.0).
constexpr int64_t kTapCells = int64_t{1} << 16;

inline std::vector<int64_t> global_tap_cells(const PoolGeometry& g, const Layout5& v) {
  std::vector<int64_t> cells;
  if (window_taps(g) > kTapCells) return cells;
  cells.reserve(window_taps(g));
  for (const auto td : c10::irange(g.dim[0].kernel)) {  // in tap order
    for (const auto th : c10::irange(g.dim[1].kernel)) {
      for (const auto tw : c10::irange(g.dim[2].kernel)) {
        cells.push_back(td * v.stride[2] + th * v.stride[3] + tw * v.stride[4]);
      }
    }
  }
  return cells;
}

// n cells from at set to value, as bits: std::fill of a bfloat16 or half
// value stores one cell at a time.
template <typename scalar_t>
C10_ALWAYS_INLINE void fill_bits(scalar_t* at, int64_t n, scalar_t value) {
  using bits_t = std::conditional_t<sizeof(scalar_t) == 2, uint16_t,
                                    std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>>;
  auto* cells = reinterpret_cast<bits_t*>(at);
  std::fill(cells, cells + n, c10::bit_cast<bits_t>(value));
}

// What a max's winning cell takes: the gather's sum of the one output's
// gradient, from +0 (so never -0).
template <typename scalar_t>
inline scalar_t global_max_share(scalar_t grad) {
  using acc_t = at::opmath_type<scalar_t>;
  return static_cast<scalar_t>(acc_t(0) + static_cast<acc_t>(grad));
}

// Writes plane (n, c) of grad_in: `value` in every cell of the sample's
// extent (average), or in the one cell of tap `code` (max, code >= 0; its
// place from `cells`, global_tap_cells, where it has them), zero elsewhere
// (left as it is: zeroed already); whole rows at once where they are
// contiguous.
template <typename scalar_t>
inline void write_global_plane(const PoolGeometry& g, const Layout5& vg, scalar_t* dst,
                               int64_t n, int64_t c, const Window* w, scalar_t value,
                               int64_t code, bool zeroed = false,
                               const std::vector<int64_t>* cells = nullptr) {
  const bool whole = w[0].count == vg.size[2] && w[1].count == vg.size[3] &&
                     w[2].count == vg.size[4] && dense_planes(vg);
  const bool fill = !(zeroed && code >= 0);  // zeros to write
  if (whole && fill) {
    scalar_t* plane = dst + vg.offset(n, c, 0, 0, 0);
    fill_bits(plane, vg.pixels(), code < 0 ? value : scalar_t(0));
  }
  for (const auto d : c10::irange(whole || !fill ? 0 : vg.size[2])) {
    for (const auto h : c10::irange(vg.size[3])) {
      scalar_t* row = dst + vg.offset(n, c, d, h, 0);
      const bool inside = code < 0 && d < w[0].count && h < w[1].count;
      const int64_t valid = inside ? w[2].count : 0;
      if (vg.stride[4] == 1) {
        fill_bits(row, valid, value);
        fill_bits(row + valid, vg.size[4] - valid, scalar_t(0));
        continue;
      }
      for (const auto x : c10::irange(vg.size[4])) {
        row[x * vg.stride[4]] = x < valid ? value : scalar_t(0);
      }
    }
  }
  if (code < 0) return;
  if (cells != nullptr && code < static_cast<int64_t>(cells->size())) {
    dst[vg.offset(n, c, 0, 0, 0) + (*cells)[code]] = value;
  } else if (code < window_taps(g)) {  // a tap from our forward always is
    const int64_t kh = g.dim[1].kernel, kw = g.dim[2].kernel;
    dst[vg.offset(n, c, code / (kh * kw), code / kw % kh, code % kw)] = value;
  }
}

// Max: 0 + each plane's gradient (the gather's sum, never -0) in the cell
// of its tap, zero elsewhere. A channels-last gradient is zeroed whole first
// (one fill, over threads), then each plane's one cell written: its planes'
// cells lie C apart, and the channels gather compared every cell with its
// channel's tap (1x64x224x224: 1.0 ms against torch's 0.3).
template <typename scalar_t, typename tap_t>
void max_backward_global(const PoolGeometry& g, const at::Tensor& grad_out,
                         const at::Tensor& taps, const at::Tensor& grad_in) {
  const Layout5 vo = layout_of(grad_out), vt = layout_of(taps), vg = layout_of(grad_in);
  const auto* grad = grad_out.const_data_ptr<scalar_t>();
  const auto* tap = taps.const_data_ptr<tap_t>();
  auto* dst = grad_in.mutable_data_ptr<scalar_t>();
  const bool zeroed = channels_inner(grad_in, taps);
  const std::vector<int64_t> cells = global_tap_cells(g, vg);
  const int64_t pixels = vg.pixels(), channels = vg.size[1];
  const int64_t taps_n = static_cast<int64_t>(cells.size());
  if (zeroed && !cells.empty()) {
    // Channels-last: a sample's channels in one loop, each writing its cell
    // into the sample's zeros, filled just before and so still in cache
    // (packed, the sample one run, and samples enough for the threads; else
    // one fill over threads first). The loop over planes, a cell each, took
    // twice as long: the op alone, one thread, 64x2048x7x7 bfloat16 1.57 ->
    // 0.74-1.1 ms, float 3.04 -> 1.34-1.87 (torch 0.9-4.0 and 2.1-3.3).
    const bool packed =
        packed_channels_last(vg) && vg.size[0] >= 2 * int64_t{at::get_num_threads()};
    if (!packed) grad_in.zero_();
    at::parallel_for(0, vg.size[0], grain(packed ? vg.stride[0] : channels),
                     [&](int64_t begin, int64_t end) {
      for (const auto n : c10::irange(begin, end)) {
        scalar_t* base = dst + n * vg.stride[0];
        if (packed) fill_bits(base, vg.stride[0], scalar_t(0));
        const tap_t* t = tap + vt.offset(n, 0, 0, 0, 0);
        const scalar_t* gr = grad + vo.offset(n, 0, 0, 0, 0);
        for (const auto c : c10::irange(channels)) {
          const auto code = static_cast<int64_t>(t[c]);
          if (code >= 0 && code < taps_n) {  // a tap from our forward always is
            base[cells[code] + c] = global_max_share(gr[c * vo.stride[1]]);
          }
        }
      }
    });
    return;
  }
  if (!zeroed && !cells.empty() && planes_end_to_end(vg)) {
    // Planes back to back: zeros over a block of planes at once (16 KB of
    // floats), then each plane's one cell, while in cache. A fill per plane
    // cost more than the zeros over small planes (4x4: 64 bytes).
    const int64_t block = std::max<int64_t>(1, 4096 / pixels);
    at::parallel_for(0, vg.size[0] * channels, grain(pixels), [&](int64_t begin, int64_t end) {
      int64_t n = begin / channels, c = begin % channels;
      for (int64_t p0 = begin; p0 < end; p0 += block) {
        const int64_t p1 = std::min(p0 + block, end);
        fill_bits(dst + p0 * pixels, (p1 - p0) * pixels, scalar_t(0));
        for (int64_t p = p0; p < p1; ++p) {
          const auto code = static_cast<int64_t>(tap[vt.offset(n, c, 0, 0, 0)]);
          if (code >= 0 && code < taps_n) {  // a tap from our forward always is
            dst[p * pixels + cells[code]] = global_max_share(grad[vo.offset(n, c, 0, 0, 0)]);
          }
          if (++c == channels) {
            c = 0;
            ++n;
          }
        }
      }
    });
    return;
  }
  if (zeroed) grad_in.zero_();
  for_global_planes(g, vo, zeroed ? 1 : pixels, [&](int64_t n, int64_t c, const Window* w) {
    const auto code = static_cast<int64_t>(tap[vt.offset(n, c, 0, 0, 0)]);
    write_global_plane(g, vg, dst, n, c, w, global_max_share(grad[vo.offset(n, c, 0, 0, 0)]), code,
                       zeroed, &cells);
  });
}

// What every cell of a global average's extent takes: the gather's sum of
// the one output's share (avg_grad_lanes), from gather_start.
template <typename scalar_t, typename acc_t>
inline scalar_t global_avg_share(const PoolGeometry& g, scalar_t grad, acc_t divisor) {
  return static_cast<scalar_t>(gather_start<acc_t>(g, true) + static_cast<acc_t>(grad) / divisor);
}

template <typename scalar_t>
void avg_backward_global(const PoolGeometry& g, const at::Tensor& grad_out,
                         const at::Tensor& grad_in) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout5 vo = layout_of(grad_out), vg = layout_of(grad_in);
  const auto* grad = grad_out.const_data_ptr<scalar_t>();
  auto* dst = grad_in.mutable_data_ptr<scalar_t>();
  const int64_t origin[kDims] = {0, 0, 0};
  const int64_t pixels = vg.pixels(), channels = vg.size[1];
  Window whole[kDims]{};
  if (g.sizes == nullptr) windows_at(g, 0, origin, whole);  // (the same for every sample)
  if (g.sizes == nullptr && whole[0].count * whole[1].count * whole[2].count == pixels &&
      planes_end_to_end(vg)) {
    // Planes back to back, each window the whole plane: one loop of fills
    // (4x4 planes: the general one's per-plane work cost more than the cells;
    // this loop through for_global_planes' walk, 4x4 and bfloat16 7x7 planes
    // 1.35-1.45x slower).
    const auto divisor = static_cast<acc_t>(avg_divisor(g, whole, origin));
    at::parallel_for(0, vg.size[0] * channels, grain(pixels), [&](int64_t begin, int64_t end) {
      int64_t n = begin / channels, c = begin % channels;
      for (int64_t p = begin; p < end; ++p) {
        const auto share = global_avg_share(g, grad[vo.offset(n, c, 0, 0, 0)], divisor);
        fill_bits(dst + p * pixels, pixels, share);
        if (++c == channels) {
          c = 0;
          ++n;
        }
      }
    });
    return;
  }
  for_global_planes(g, vo, pixels, [&](int64_t n, int64_t c, const Window* w) {
    const auto share = global_avg_share(g, grad[vo.offset(n, c, 0, 0, 0)],
                                        static_cast<acc_t>(avg_divisor(g, w, origin)));
    write_global_plane(g, vg, dst, n, c, w, share, -1);
  });
}

// Channels-last, packed: every pixel of a sample's extent holds the same row
// of channel shares (global_avg_share), zero outside it. The
// row is formed and narrowed once per sample and copied to each pixel: the
// channels gather formed it per cell (64x512x14x14 bfloat16, one thread:
// 0.60 -> 0.30 ms).
template <typename scalar_t>
void avg_backward_global_channels(const PoolGeometry& g, const at::Tensor& grad_out,
                                  const at::Tensor& grad_in) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout5 vo = layout_of(grad_out), vg = layout_of(grad_in);
  const auto* grad = grad_out.const_data_ptr<scalar_t>();
  auto* dst = grad_in.mutable_data_ptr<scalar_t>();
  const int64_t channels = vg.size[1], pixels = vg.pixels();
  const int64_t origin[kDims] = {0, 0, 0};
  at::parallel_for(0, vg.size[0] * pixels, grain(channels), [&](int64_t begin, int64_t end) {
    LineVector<scalar_t> share(channels);
    Window w[kDims]{};  // (set at each task's first sample)
    int64_t sample = -1;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / pixels, p = i % pixels;
      if (n != sample) {
        sample = n;
        windows_at(g, n, origin, w);
        const auto divisor = static_cast<acc_t>(avg_divisor(g, w, origin));
        for (const auto c : c10::irange(channels)) {
          share[c] = global_avg_share(g, grad[vo.offset(n, c, 0, 0, 0)], divisor);
        }
      }
      const int64_t x = p % vg.size[4], h = p / vg.size[4] % vg.size[3],
                    d = p / (vg.size[4] * vg.size[3]);
      scalar_t* cell = dst + i * channels;
      if (d < w[0].count && h < w[1].count && x < w[2].count) {
        std::copy(share.begin(), share.end(), cell);
      } else {
        std::fill(cell, cell + channels, scalar_t(0));
      }
    }
  });
}

// With POOL_EXT_HUGE_PAGES=1, a fresh gradient the kernel is about to
// fill, of 32 MB or more (sizes glibc maps anew on every allocation): on
// Linux, ask for transparent huge pages over it (given only on request where
// the system's THP mode is madvise, the common default), as torch's CPU
// allocator does under THP_MEM_ALLOC_ENABLE=1. A 2 MB page faults in once
// where 512 small ones would: a 32 MB avg_pool1d fwd+bwd ran 5 ms
// against 12 ms. Off by default, as torch's is: on the 2-core VMs here its
// times were bimodal, a quarter to half of the calls 18-38 ms (huge pages
// faulted in slowly, perhaps handed back to the host when freed), and
// under THP defrag "madvise" a fault may also wait for memory compaction.
void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool enabled = [] {
    const char* env = std::getenv("POOL_EXT_HUGE_PAGES");
    return env != nullptr && std::string(env) == "1";
  }();
  constexpr uintptr_t kHuge = uintptr_t{1} << 21, kLarge = uintptr_t{1} << 25;
  const auto begin = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  const uintptr_t end = begin + static_cast<uintptr_t>(t.numel()) * t.element_size();
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = end & ~(kHuge - 1);
  if (enabled && end - begin >= kLarge) {
    madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // advice: may fail
  }
#endif
}

// Channels-last tensors of fewer channels than a vector of floats (an RGB
// image, a few masks) leave the channels kernels scalar work per pixel: on
// 32x3x224x224 float, max 3x3/2 took 19 ms, and 1.5 ms through planes. They
// go through the planes kernels a chunk of samples at a time, copied to
// (N, C, D, H, W) order and back. Chunks of at most kDetourBytes reuse their
// memory; one copy of a 37 MB input page-faulted for 12 ms.
constexpr int64_t kDetourChannels = 8;
constexpr int64_t kDetourBytes = 8 << 20;

inline bool few_channels_last(const PoolGeometry& g, const at::Tensor& t) {
  // One pixel: planes and channels order are one (and torch calls such a
  // channels-last tensor contiguous already, so its copy would come back
  // the same).
  const Layout5 v = layout_of(t);
  return g.sizes == nullptr && channels_inner(t, t) && t.size(1) < kDetourChannels &&
         v.pixels() > 1 && !dense_planes(v);
}

// Runs f(ins, outs) on planes-order copies of chunks of samples (at most
// kDetourBytes of `lead`) of the tensors `ins` and on fresh planes-order
// `outs`, which are then copied into the given outs (undefined ones left).
template <size_t kIns, size_t kOuts, typename F>
void through_planes(const at::Tensor& lead, const std::array<at::Tensor, kIns>& ins,
                    const std::array<at::Tensor, kOuts>& outs, const F& f) {
  const int64_t sample_bytes = std::max<int64_t>(lead.numel() / lead.size(0) * lead.element_size(), 1);
  const int64_t chunk = std::max<int64_t>(1, kDetourBytes / sample_bytes);
  for (int64_t n0 = 0; n0 < lead.size(0); n0 += chunk) {
    const int64_t count = std::min(chunk, lead.size(0) - n0);
    std::array<at::Tensor, kIns> in_part;
    std::array<at::Tensor, kOuts> out_part;
    for (size_t i = 0; i < kIns; ++i) in_part[i] = ins[i].narrow(0, n0, count).contiguous();
    for (size_t i = 0; i < kOuts; ++i) {
      if (outs[i].defined()) out_part[i] = at::empty(outs[i].narrow(0, n0, count).sizes(), outs[i].options());
    }
    f(in_part, out_part);
    for (size_t i = 0; i < kOuts; ++i) {
      if (outs[i].defined()) outs[i].narrow(0, n0, count).copy_(out_part[i]);
    }
  }
}

// ------------------------------------------ adaptive averages of narrow planes
//
// Adaptive averages of rows of at most 16 cells into at most 8 outputs
// (13x13 -> 6x6, 7x7 -> 3x3: late feature maps, pyramid levels) straight
// on their planes, where the channel groups' transposes cost more than the
// pooling. A vector of float lanes holds a row of outputs, and two hold a
// row of cells (the second ending at the row's last cell; bfloat16's, the
// even cells and the odd ones: see Sources). The forward sums
// each output row's window rows a vector of cells at a time, then gathers
// each output's cells into its lane by permutes, a tap at a time; the
// backward gathers each output row's shares into its cells' lanes the same
// way, and sums those of the output rows covering each input row. The
// forward adds as columns_row does (a window's rows, then its cells from
// +0), the planes kernels' order for adaptive windows:
// the channels kernels add tap by tap, so contiguous and channels-last
// outputs can differ in the last bit. The backward adds the gather's terms
// in output order from +0, as every backward does: the same bits (but for
// a NaN's sign where NaNs of both signs meet: it follows the order the
// compiler gives an add's operands). A lane a tap skips adds +0, which
// changes no sum begun at +0 (none of these sums is -0).

#if defined(CPU_CAPABILITY_AVX2)
constexpr int64_t kNarrowLanes = 8;  // float lanes of a vector
constexpr int64_t kNarrowCells = 2 * kNarrowLanes;

// How up to 16 sources lie in vectors, and so how a tap gathers them:
// kOne, at most 8 in one (a permute a tap); kSplit, [0, 8) and [n - 8, n)
// (a permute of each and a blend a tap); kPaired, the even ones and the
// odd ones (bfloat16 rows loaded a pair of cells a lane, see load_pairs),
// gathered as kSplit's; kAlternating, kPaired's where every lane's first
// source is even, so that each tap takes all its lanes from one vector,
// even and odd by turns (a permute a tap: 13x13 -> 6x6 windows start at
// even cells; its bfloat16 forward ran 1.17x faster).
enum class Sources { kOne, kSplit, kPaired, kAlternating };

// The taps that gather sources into lanes: lane j takes sources
// [first[j], first[j] + count[j]) in order, tap k the k-th of them, for
// k < `most` (at least each count), the sources laid out as `sources_in`
// says.
struct LaneTaps {
  struct Tap {
    __m256i low, high;  // where tap k's source is in either vector
    __m256 from_high;   // lanes that take it from the second
    __m256 has;         // lanes that have a k-th tap
  };
  std::vector<Tap> taps;
  bool uniform = true;  // every lane has `most` taps: no lane needs masking

  LaneTaps(const int64_t* first, const int64_t* count, int64_t lanes, int64_t sources,
           int64_t most, Sources sources_in) {
    for (const auto j : c10::irange(lanes)) uniform = uniform && count[j] == most;
    const bool paired = sources_in == Sources::kPaired || sources_in == Sources::kAlternating;
    for (const auto k : c10::irange(most)) {
      alignas(32) int32_t low[kNarrowLanes], high[kNarrowLanes], upper[kNarrowLanes],
          has[kNarrowLanes];
      for (const auto j : c10::irange(kNarrowLanes)) {
        const bool real = j < lanes && k < count[j];
        const int64_t s = real ? first[j] + k : 0;
        const bool second = sources_in == Sources::kPaired  ? s % 2 == 1
                            : sources_in == Sources::kSplit ? s >= kNarrowLanes
                                                            : false;
        const int64_t at = paired ? s / 2 : second ? s - (sources - kNarrowLanes) : s;
        low[j] = second ? 0 : static_cast<int32_t>(at);
        high[j] = second ? static_cast<int32_t>(at) : 0;
        upper[j] = second ? -1 : 0;
        has[j] = real ? -1 : 0;
      }
      const auto load = [](const int32_t* v) {
        return _mm256_load_si256(reinterpret_cast<const __m256i*>(v));
      };
      taps.push_back({load(low), load(high), _mm256_castsi256_ps(load(upper)),
                      _mm256_castsi256_ps(load(has))});
    }
  }

  // Whether the sources of `lanes` lanes from first[j] on may be gathered
  // as kAlternating (adaptive windows start at 0: an odd first never
  // comes with the rest odd).
  static bool alternating(const int64_t* first, int64_t lanes) {
    return std::all_of(first, first + lanes, [](int64_t s) { return s % 2 == 0; });
  }

  // acc plus each lane's taps, in order: K of them (0: count), gathered as
  // kIn says from `low` and `high`. kUniform: every lane has every tap (no
  // masks; lanes past the real ones add sources too, and are never
  // stored).
  template <int64_t K, bool kUniform, Sources kIn>
  static C10_ALWAYS_INLINE __m256 add(const Tap* taps, int64_t count, __m256 acc, __m256 low,
                                      __m256 high) {
    for (int64_t k = 0; k < (K > 0 ? K : count); ++k) {
      acc = _mm256_add_ps(acc, gather<kUniform, kIn>(taps[k], k, low, high));
    }
    return acc;
  }

  // Tap k's source of each lane (+0 in lanes without one, unless kUniform).
  template <bool kUniform, Sources kIn>
  static C10_ALWAYS_INLINE __m256 gather(const Tap& t, int64_t k, __m256 low, __m256 high) {
    __m256 v;
    if constexpr (kIn == Sources::kAlternating) {
      v = _mm256_permutevar8x32_ps(k % 2 == 0 ? low : high, t.low);
    } else if constexpr (kIn == Sources::kOne) {
      v = _mm256_permutevar8x32_ps(low, t.low);
    } else {
      v = _mm256_blendv_ps(_mm256_permutevar8x32_ps(low, t.low),
                           _mm256_permutevar8x32_ps(high, t.high), t.from_high);
    }
    return kUniform ? v : _mm256_and_ps(v, t.has);
  }

  // The taps as locals of the caller's loop (kept in registers, where the
  // vector's would be reloaded after every store that might alias them).
  template <int64_t K, bool kUniform>
  struct Local {
    Tap tap[K > 0 ? K : 1];
    const Tap* all;
    int64_t count;
    explicit Local(const LaneTaps& t)
        : all(t.taps.data()), count(static_cast<int64_t>(t.taps.size())) {
      TORCH_INTERNAL_ASSERT(t.uniform || !kUniform);
      if constexpr (K > 0) std::copy(all, all + K, tap);
    }
    template <Sources kIn>
    C10_ALWAYS_INLINE __m256 add(__m256 acc, __m256 low, __m256 high) const {
      return LaneTaps::add<K, kUniform, kIn>(K > 0 ? tap : all, count, acc, low, high);
    }
    int64_t size() const { return K > 0 ? K : count; }
    __m256 has(int64_t k) const { return (K > 0 ? tap : all)[k].has; }
    template <Sources kIn>
    C10_ALWAYS_INLINE __m256 gather_unmasked(int64_t k, __m256 low, __m256 high) const {
      return LaneTaps::gather<true, kIn>((K > 0 ? tap : all)[k], k, low, high);
    }
    template <Sources kIn>
    C10_ALWAYS_INLINE __m256 gather(int64_t k, __m256 low, __m256 high) const {
      return LaneTaps::gather<kUniform, kIn>((K > 0 ? tap : all)[k], k, low, high);
    }
  };
};

// Calls f(K, kUniform) with the taps' count as a compile-time constant where
// it is small (an unrolled loop, its taps in registers), else 0, and
// whether every lane has them all (no masks: 13x13 -> 6x6 and 7x7 -> 3x3
// windows are all 3 cells wide; a 13x13 -> 6x6 bfloat16 forward ran 1.05x
// faster unmasked).
template <typename F>
void with_tap_count(int64_t count, bool uniform, const F& f) {
  const auto with = [&](auto k) {
    if constexpr (decltype(k)::value > 0) {
      if (uniform) return f(k, std::true_type{});
    }
    return f(k, std::false_type{});
  };
  switch (count) {
    case 1: return with(std::integral_constant<int64_t, 1>{});
    case 2: return with(std::integral_constant<int64_t, 2>{});
    case 3: return with(std::integral_constant<int64_t, 3>{});
    case 4: return with(std::integral_constant<int64_t, 4>{});
    default: return with(std::integral_constant<int64_t, 0>{});
  }
}

// Whether avg_forward_narrow and avg_backward_narrow take an adaptive
// average (or one as_fixed_if_uniform made fixed: windows of real cells,
// unpadded, undilated): float lanes (double's hold four), the same windows
// for every sample, rows of at most 16 cells contiguous in `cells` (the
// input, or the gradient to it), at most 8 outputs a row, dense output
// planes (`outputs`: the forward's output; the backward reads any).
inline bool narrow_planes(const PoolGeometry& g, const at::Tensor& cells,
                          const at::Tensor* outputs) {
  const Layout5 v = layout_of(cells);
  return (g.adaptive || g.adaptive_op) && g.sizes == nullptr && !is_global(g) &&
         cells.scalar_type() != at::kDouble && v.stride[4] == 1 && g.dim[2].in <= kNarrowCells &&
         g.dim[2].out <= kNarrowLanes && cells.numel() > 0 &&
         g.dim[0].out * g.dim[1].out * g.dim[2].out > 0 &&
         (outputs == nullptr || (outputs->numel() > 0 && dense_planes(layout_of(*outputs))));
}

// Lanes [0, 8) from `at`, of which the first `count` are wanted: a whole
// vector where it stays inside the tensor (`left` cells from `at` to its
// last), else those lanes alone.
template <typename scalar_t>
C10_ALWAYS_INLINE at::vec::Vectorized<float> load_lanes_within(const scalar_t* at, int64_t count,
                                                              int64_t left) {
  return count >= kNarrowLanes || left >= kNarrowLanes ? load_acc<float>(at)
                                                      : load_acc<float>(at, count);
}

// Walks the (n, c) planes of v from plane `first`: where each starts.
struct PlaneCursor {
  const Layout5& v;
  int64_t n, c;
  PlaneCursor(int64_t first, const Layout5& layout)
      : v(layout), n(first / layout.size[1]), c(first % layout.size[1]) {}
  int64_t at() const { return n * v.stride[0] + c * v.stride[1]; }
  void next() {
    if (++c == v.size[1]) {
      c = 0;
      ++n;
    }
  }
};

// Where each row (d, h) of a plane of v starts, from the plane's start.
inline std::vector<int64_t> row_starts(const Layout5& v) {
  std::vector<int64_t> at(v.size[2] * v.size[3]);
  for (const auto i : c10::irange(v.size[2] * v.size[3])) {
    at[i] = (i / v.size[3]) * v.stride[2] + (i % v.size[3]) * v.stride[3];
  }
  return at;
}

// The W windows of a row of `outs` outputs, as LaneTaps takes them: where
// each begins, how many cells it takes, and the most any takes.
struct OutputColumns {
  std::vector<int64_t> begin, count;
  int64_t most;
  OutputColumns(const WindowTable& table, int64_t outs) : begin(outs), count(outs) {
    for (const auto j : c10::irange(outs)) {
      begin[j] = table.dim[2][j].begin;
      count[j] = table.dim[2][j].count;
    }
    most = *std::max_element(count.begin(), count.end());
  }
};

// The divisors of an output row's outputs, as lanes (1 past the row).
inline at::vec::Vectorized<float> row_divisors(const PoolGeometry& g, const WindowTable& table,
                                                int64_t o0, int64_t o1) {
  Window w[kDims] = {table.dim[0][o0], table.dim[1][o1], {}};
  alignas(32) float d[kNarrowLanes];
  for (const auto j : c10::irange(kNarrowLanes)) {
    const int64_t o[kDims] = {o0, o1, j};
    w[2] = table.dim[2][std::min<int64_t>(j, g.dim[2].out - 1)];
    d[j] = j < g.dim[2].out ? static_cast<float>(avg_divisor(g, w, o)) : 1.0f;
  }
  return at::vec::Vectorized<float>::loadu(d);
}

// avg_forward_narrow's tables: each output row's window rows (where each
// starts in a plane, in tap order: offset[first[r], first[r + 1])) and its
// outputs' divisors; the taps of its lanes.
struct NarrowForward {
  std::vector<int64_t> first, offset;
  std::vector<at::vec::Vectorized<float>> divisor;
  LaneTaps taps;
  int64_t last;   // the input's last cell
  int64_t reach;  // the last cell a plane's loads of 16 cells read, from its start
};

// A row of outputs (or cells) into `at`: lanes [0, count), or a whole
// vector where `whole` says the lanes past count are free to write (later
// stores of the same task overwrite them). (store_cells does the same with
// a count of 8, but as a call per row: bfloat16 forwards 1.1x slower.) Whole stores go straight to
// memory, partial ones mask (AMD's masked stores are slow) or go through
// a buffer (reduced precision), and a staged plane read back a vector at a
// time across row stores stalled on store forwarding.
template <typename scalar_t>
C10_ALWAYS_INLINE void store_row(const at::vec::Vectorized<float>& v, scalar_t* at,
                                 int64_t count, bool whole) {
  if (whole) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      v.store(at);
    } else {
      narrow_lanes(v, at);
    }
  } else {
    store_cells(v, at, count);
  }
}

// Whether avg_forward_narrow loads rows of more than 8 cells of scalar_t
// in pairs (load_pairs).
template <typename scalar_t>
constexpr bool kPairedRows = std::is_same_v<scalar_t, c10::BFloat16>;

// Output rows [q0, q1) of avg_forward_narrow, counted over all planes (a
// task may take part of a plane: few large planes still use every thread,
// and each output is the same sum however the rows are split). K taps a
// lane (0: any), kUniform: no lane masked, kIn: how a row's cells lie in
// vectors. Tables read into locals (see LaneTaps::Local). `packed`: output
// planes follow each other in memory, so that a row's spare lanes may
// spill into the task's next row.
template <int64_t K, bool kUniform, Sources kIn, typename scalar_t>
void narrow_forward_rows(const NarrowForward& f, const scalar_t* src, const Layout5& vi,
                         scalar_t* dst, const Layout5& vo, bool packed, int64_t q0, int64_t q1) {
  using Vec = at::vec::Vectorized<float>;
  const int64_t rows = vo.size[2] * vo.size[3], cells = vi.size[4], last = f.last;
  const int64_t outs = vo.size[4], high_at = cells - kNarrowLanes;
  const int64_t* first = f.first.data();
  const int64_t* offset = f.offset.data();
  const Vec* divisor = f.divisor.data();
  const LaneTaps::Local<K, kUniform> taps(f.taps);
  constexpr bool kPairs = kIn == Sources::kPaired || kIn == Sources::kAlternating;
  const int64_t p0 = q0 / rows, p1 = (q1 + rows - 1) / rows;
  PlaneCursor in_plane(p0, vi), out_plane(p0, vo);
  for (int64_t p = p0; p < p1; ++p, in_plane.next(), out_plane.next()) {
    const int64_t plane_at = in_plane.at();
    const scalar_t* plane = src + plane_at;
    scalar_t* out = dst + out_plane.at();
    const int64_t r0 = std::max(q0 - p * rows, int64_t{0}), r1 = std::min(q1 - p * rows, rows);
    // Outputs from this plane's start to the end of what the task writes
    // there (a row's whole vector when a row's start is 8 or more before it).
    const int64_t room = (packed ? q1 - p * rows : r1) * outs;
    // kWhole: every load_pairs of the plane stays inside the tensor.
    const auto plane_rows = [&](auto whole) {
      constexpr bool kWhole = decltype(whole)::value;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t* at = offset + first[r];
        const int64_t count = first[r + 1] - first[r];
        Vec low, high;
        if constexpr (kPairs) {
          __m256 even, odd, more_even, more_odd;
          load_pairs<kWhole>(plane + at[0], cells, last - plane_at - at[0] + 1, even, odd);
          for (int64_t t = 1; t < count; ++t) {
            load_pairs<kWhole>(plane + at[t], cells, last - plane_at - at[t] + 1, more_even,
                               more_odd);
            even = _mm256_add_ps(even, more_even);
            odd = _mm256_add_ps(odd, more_odd);
          }
          low = even;
          high = odd;
        } else if constexpr (kIn == Sources::kSplit) {
          low = load_acc<float>(plane + at[0]);
          high = load_acc<float>(plane + at[0] + high_at);
          for (int64_t t = 1; t < count; ++t) {
            low = low + load_acc<float>(plane + at[t]);
            high = high + load_acc<float>(plane + at[t] + high_at);
          }
        } else {
          low = load_lanes_within(plane + at[0], cells, last - plane_at - at[0] + 1);
          for (int64_t t = 1; t < count; ++t) {
            low = low + load_lanes_within(plane + at[t], cells, last - plane_at - at[t] + 1);
          }
        }
        const Vec sum = taps.template add<kIn>(_mm256_setzero_ps(), low, high);
        store_row(sum / divisor[r], out + r * outs, outs, room - r * outs >= kNarrowLanes);
      }
    };
    if (kPairs && last - plane_at >= f.reach) {
      plane_rows(std::true_type{});
    } else {
      plane_rows(std::false_type{});
    }
  }
}

template <typename scalar_t>
  requires std::is_same_v<at::opmath_type<scalar_t>, float>
void avg_forward_narrow(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out) {
  const Layout5 vi = layout_of(in), vo = layout_of(out);
  WindowTable table;
  table.build(g, 0);
  const int64_t outs = vo.size[4], rows = vo.size[2] * vo.size[3];
  std::vector<int64_t> first(rows + 1, 0), offset;
  std::vector<at::vec::Vectorized<float>> divisor(rows);
  for (const auto r : c10::irange(rows)) {
    const Window& wd = table.dim[0][r / vo.size[3]];
    const Window& wh = table.dim[1][r % vo.size[3]];
    for (int64_t td = 0; td < wd.count; ++td) {
      for (int64_t th = 0; th < wh.count; ++th) {
        offset.push_back(tap_position(wd, wd.first_tap + td) * vi.stride[2] +
                         tap_position(wh, wh.first_tap + th) * vi.stride[3]);
      }
    }
    first[r + 1] = static_cast<int64_t>(offset.size());
    divisor[r] = row_divisors(g, table, r / vo.size[3], r % vo.size[3]);
  }
  const OutputColumns columns(table, outs);
  const int64_t most = columns.most;
  const int64_t reach = *std::max_element(offset.begin(), offset.end()) + kPairCells - 1;
  const Sources sources_in = vi.size[4] <= kNarrowLanes ? Sources::kOne
                             : !kPairedRows<scalar_t>   ? Sources::kSplit
                             : LaneTaps::alternating(columns.begin.data(), outs)
                                 ? Sources::kAlternating
                                 : Sources::kPaired;
  const NarrowForward f{
      std::move(first), std::move(offset), std::move(divisor),
      LaneTaps(columns.begin.data(), columns.count.data(), outs, vi.size[4], most, sources_in),
      last_cell(vi), reach};
  const auto* src = in.const_data_ptr<scalar_t>();
  auto* dst = out.mutable_data_ptr<scalar_t>();
  with_tap_count(most, f.taps.uniform, [&](auto k, auto uniform) {
    constexpr int64_t K = decltype(k)::value;
    constexpr bool kUniform = decltype(uniform)::value;
    const bool packed = planes_end_to_end(vo);
    const int64_t all = vi.size[0] * vi.size[1] * rows;
    const auto run = [&](auto in) {
      constexpr Sources kIn = decltype(in)::value;
      at::parallel_for(0, all, grain(vi.pixels() / rows + outs), [&](int64_t q0, int64_t q1) {
        narrow_forward_rows<K, kUniform, kIn>(f, src, vi, dst, vo, packed, q0, q1);
      });
    };
    using One = std::integral_constant<Sources, Sources::kOne>;
    using Split = std::integral_constant<Sources, Sources::kSplit>;
    using Paired = std::integral_constant<Sources, Sources::kPaired>;
    using Alternating = std::integral_constant<Sources, Sources::kAlternating>;
    if (sources_in == Sources::kOne) {
      run(One{});
    } else if constexpr (kPairedRows<scalar_t>) {
      sources_in == Sources::kAlternating ? run(Alternating{}) : run(Paired{});
    } else {
      run(Split{});
    }
  });
}

// Adaptive max of narrow planes, as avg_forward_narrow: each input row's
// maxima over each output's columns first (a permute a tap gathers the
// column into its output's lane), then each output row's over its window
// rows. A scan of a window in tap order by max_takes' rule (a later NaN, or
// a larger value, takes over) keeps the cell that scanning each of its rows,
// then the rows' winners in row order, keeps: the last NaN, or the first of
// the largest. So values and taps are the element functions' (the taps'
// codes as floats: each row's first tap's code plus the column's). Rows of
// up to 8 cells in one vector, longer ones in two (Sources::kOne, kSplit;
// bfloat16 widened as it loads).
struct NarrowMax {
  // Each output row's window rows in tap order (rows[first[r], first[r + 1]),
  // as rows of the plane) and their first taps' codes; where each row of
  // the plane starts.
  std::vector<int64_t> first, rows, in_at;
  std::vector<float> row_code;
  std::vector<at::vec::Vectorized<float>> tap_code;  // tap k's code in each lane, less its row's
  LaneTaps taps;
  int64_t last;  // the input's last cell
};

// Output rows [q0, q1) of max_forward_narrow, counted over all planes (as
// narrow_forward_rows'), their taps' codes into tap_dst where kCodes.
template <int64_t K, bool kUniform, Sources kIn, bool kCodes, typename scalar_t>
void narrow_max_rows(const NarrowMax& m, const scalar_t* src, const Layout5& vi, scalar_t* dst,
                     uint8_t* tap_dst, const Layout5& vo, bool packed, int64_t q0, int64_t q1) {
  using Vec = at::vec::Vectorized<float>;
  static_assert(kIn == Sources::kOne || kIn == Sources::kSplit);
  const int64_t rows = vo.size[2] * vo.size[3], in_rows = vi.size[2] * vi.size[3];
  const int64_t cells = vi.size[4], last = m.last, outs = vo.size[4];
  const int64_t high_at = cells - kNarrowLanes;
  const int64_t* first = m.first.data();
  const int64_t* window_rows = m.rows.data();
  const int64_t* in_at = m.in_at.data();
  const float* row_code = m.row_code.data();
  const Vec* tap_code = m.tap_code.data();
  const LaneTaps::Local<K, kUniform> taps(m.taps);
  // Each input row's maxima and (kCodes) their columns' codes.
  LineArray<float> scratch = line_array<float>(in_rows * (kCodes ? 2 : 1) * kNarrowLanes);
  float* const row_max = scratch.get();
  float* const row_tap = row_max + in_rows * kNarrowLanes;
  const int64_t p0 = q0 / rows, p1 = (q1 + rows - 1) / rows;
  PlaneCursor in_plane(p0, vi), out_plane(p0, vo);
  for (int64_t p = p0; p < p1; ++p, in_plane.next(), out_plane.next()) {
    const int64_t plane_at = in_plane.at();
    const scalar_t* plane = src + plane_at;
    const int64_t out_at = out_plane.at();
    const int64_t r0 = std::max(q0 - p * rows, int64_t{0}), r1 = std::min(q1 - p * rows, rows);
    const int64_t room = (packed ? q1 - p * rows : r1) * outs;  // as narrow_forward_rows'
    // The input rows of output rows [r0, r1): all of a whole plane's.
    int64_t lo = 0, hi = in_rows;
    if (r0 > 0 || r1 < rows) {
      const auto needed = std::minmax_element(window_rows + first[r0], window_rows + first[r1]);
      lo = *needed.first;
      hi = *needed.second + 1;
    }
    for (int64_t i = lo; i < hi; ++i) {
      const scalar_t* at = plane + in_at[i];
      __m256 low, high;
      if constexpr (kIn == Sources::kSplit) {
        low = load_acc<float>(at);
        high = load_acc<float>(at + high_at);
      } else {
        low = high = load_lanes_within(at, cells, last - plane_at - in_at[i] + 1);
      }
      __m256 best = taps.template gather_unmasked<kIn>(0, low, high), code = tap_code[0];
      for (int64_t k = 1; k < taps.size(); ++k) {
        const __m256 v = taps.template gather_unmasked<kIn>(k, low, high);
        __m256 takes = takes_max(Vec(best), Vec(v));
        if constexpr (!kUniform) takes = _mm256_and_ps(takes, taps.has(k));
        best = _mm256_blendv_ps(best, v, takes);
        if constexpr (kCodes) code = _mm256_blendv_ps(code, tap_code[k], takes);
      }
      _mm256_store_ps(row_max + i * kNarrowLanes, best);
      if constexpr (kCodes) _mm256_store_ps(row_tap + i * kNarrowLanes, code);
    }
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t* w = window_rows + first[r];
      const float* w_code = row_code + first[r];
      __m256 best = _mm256_load_ps(row_max + w[0] * kNarrowLanes), code;
      if constexpr (kCodes) {
        code = _mm256_add_ps(_mm256_load_ps(row_tap + w[0] * kNarrowLanes),
                             _mm256_set1_ps(w_code[0]));
      }
      for (int64_t t = 1; t < first[r + 1] - first[r]; ++t) {
        const __m256 v = _mm256_load_ps(row_max + w[t] * kNarrowLanes);
        const __m256 takes = takes_max(Vec(best), Vec(v));
        best = _mm256_blendv_ps(best, v, takes);
        if constexpr (kCodes) {
          const __m256 c = _mm256_add_ps(_mm256_load_ps(row_tap + w[t] * kNarrowLanes),
                                         _mm256_set1_ps(w_code[t]));
          code = _mm256_blendv_ps(code, c, takes);
        }
      }
      const bool whole = room - r * outs >= kNarrowLanes;
      if constexpr (kCodes) {
        const __m256i c = _mm256_cvttps_epi32(code);
        const __m128i words =
            _mm_packus_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
        const __m128i bytes = _mm_packus_epi16(words, words);
        uint8_t* to = tap_dst + out_at + r * outs;
        if (whole) {
          _mm_storel_epi64(reinterpret_cast<__m128i*>(to), bytes);
        } else {
          alignas(16) uint8_t b[16];
          _mm_store_si128(reinterpret_cast<__m128i*>(b), bytes);
          std::copy(b, b + outs, to);
        }
      }
      store_row(Vec(best), dst + out_at + r * outs, outs, whole);
    }
  }
}

// Whether max_forward_narrow takes a max forward: narrow_planes', and taps
// (if any) of one byte laid out as the output.
inline bool narrow_max_planes(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out,
                              const at::Tensor* taps) {
  return narrow_planes(g, in, &out) &&
         (taps == nullptr ||
          (taps->scalar_type() == at::kByte && taps->strides() == out.strides()));
}

template <typename scalar_t>
  requires std::is_same_v<at::opmath_type<scalar_t>, float>
void max_forward_narrow(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out,
                        const at::Tensor* taps) {
  const Layout5 vi = layout_of(in), vo = layout_of(out);
  WindowTable table;
  table.build(g, 0);
  const int64_t outs = vo.size[4], rows = vo.size[2] * vo.size[3];
  std::vector<int64_t> first(rows + 1, 0), window_rows;
  std::vector<float> row_code;
  for (const auto r : c10::irange(rows)) {
    const Window& wd = table.dim[0][r / vo.size[3]];
    const Window& wh = table.dim[1][r % vo.size[3]];
    for (int64_t td = wd.first_tap; td < wd.first_tap + wd.count; ++td) {
      for (int64_t th = wh.first_tap; th < wh.first_tap + wh.count; ++th) {
        window_rows.push_back(tap_position(wd, td) * vi.size[3] + tap_position(wh, th));
        row_code.push_back(static_cast<float>(encode_tap(g, td, th, 0)));
      }
    }
    first[r + 1] = static_cast<int64_t>(window_rows.size());
  }
  const OutputColumns columns(table, outs);
  const int64_t most = columns.most;
  std::vector<at::vec::Vectorized<float>> tap_code(most);
  for (const auto k : c10::irange(most)) {
    alignas(32) float c[kNarrowLanes] = {};
    for (const auto j : c10::irange(outs)) c[j] = static_cast<float>(table.dim[2][j].first_tap + k);
    tap_code[k] = at::vec::Vectorized<float>::loadu(c);
  }
  const Sources sources_in = vi.size[4] <= kNarrowLanes ? Sources::kOne : Sources::kSplit;
  const NarrowMax m{
      std::move(first), std::move(window_rows), row_starts(vi), std::move(row_code),
      std::move(tap_code),
      LaneTaps(columns.begin.data(), columns.count.data(), outs, vi.size[4], most, sources_in),
      last_cell(vi)};
  const auto* src = in.const_data_ptr<scalar_t>();
  auto* dst = out.mutable_data_ptr<scalar_t>();
  uint8_t* tap_dst = taps ? taps->mutable_data_ptr<uint8_t>() : nullptr;
  with_tap_count(most, m.taps.uniform, [&](auto k, auto uniform) {
    constexpr int64_t K = decltype(k)::value;
    constexpr bool kUniform = decltype(uniform)::value;
    const bool packed = planes_end_to_end(vo);
    const int64_t all = vi.size[0] * vi.size[1] * rows;
    const auto run = [&](auto in, auto codes) {
      constexpr Sources kIn = decltype(in)::value;
      constexpr bool kCodes = decltype(codes)::value;
      at::parallel_for(0, all, grain(vi.pixels() / rows + outs), [&](int64_t q0, int64_t q1) {
        narrow_max_rows<K, kUniform, kIn, kCodes>(m, src, vi, dst, tap_dst, vo, packed, q0, q1);
      });
    };
    const auto with_codes = [&](auto in) {
      tap_dst ? run(in, std::true_type{}) : run(in, std::false_type{});
    };
    if (sources_in == Sources::kOne) {
      with_codes(std::integral_constant<Sources, Sources::kOne>{});
    } else {
      with_codes(std::integral_constant<Sources, Sources::kSplit>{});
    }
  });
}

// avg_backward_narrow's tables: each output row's divisors and where it
// starts in a plane; each input row's covering output rows, in order
// (covering[first[r], first[r + 1])), and where it starts; the taps of the
// lanes of cells [0, 8) and [cells - 8, cells).
struct NarrowBackward {
  std::vector<at::vec::Vectorized<float>> divisor;
  std::vector<int64_t> out_at, in_at, first, covering;
  LaneTaps low, high;
  int64_t last;  // the gradient's last cell
};

// Input rows [q0, q1) of avg_backward_narrow, counted over all planes (as
// narrow_forward_rows' outputs). K taps a lane (0: any), kUniform: no lane
// masked, kTwo: rows of more than 8 cells. Tables read into locals (see
// LaneTaps::Local). Each output row's shares are gathered into the cells'
// lanes once a plane, a vector a tap, and each input row adds those of the
// output rows covering it, in the order the taps would add them: the
// permutes of an output row are made once, not once for each of the 2-3
// input rows it covers (13x13 -> 6x6 float32, one thread: 0.55 -> 0.37 ms,
// the channels-last backward 0.20).
template <int64_t K, bool kUniform, bool kTwo, typename scalar_t>
void narrow_backward_rows(const NarrowBackward& b, const scalar_t* grad, const Layout5& vo,
                          scalar_t* dst, const Layout5& vi, int64_t q0, int64_t q1) {
  using Vec = at::vec::Vectorized<float>;
  const int64_t out_rows = vo.size[2] * vo.size[3], in_rows = vi.size[2] * vi.size[3];
  const int64_t outs = vo.size[4], step = vo.stride[4], cells = vi.size[4], last = b.last;
  const int64_t low_cells = std::min(cells, kNarrowLanes), high_at = cells - kNarrowLanes;
  const Vec* divisor = b.divisor.data();
  const int64_t* out_at = b.out_at.data();
  const int64_t* in_at = b.in_at.data();
  const int64_t* first = b.first.data();
  const int64_t* covering = b.covering.data();
  const LaneTaps::Local<K, kUniform> low_taps(b.low), high_taps(b.high);
  const int64_t taps = low_taps.size();
  // Each output row's gathered shares: a vector a tap for cells [0, 8), then
  // (kTwo) for cells [cells - 8, cells).
  const int64_t row_floats = (kTwo ? 2 : 1) * taps * kNarrowLanes;
  LineArray<float> gathered = line_array<float>(out_rows * row_floats);
  float* const rows = gathered.get();
  const int64_t p0 = q0 / in_rows, p1 = (q1 + in_rows - 1) / in_rows;
  PlaneCursor in_plane(p0, vi), out_plane(p0, vo);
  for (int64_t p = p0; p < p1; ++p, in_plane.next(), out_plane.next()) {
    const int64_t plane_at = out_plane.at();
    const int64_t r0 = std::max(q0 - p * in_rows, int64_t{0});
    const int64_t r1 = std::min(q1 - p * in_rows, in_rows);
    // The shares of the output rows covering input rows [r0, r1): all of a
    // whole plane's (a task that splits a plane gathers its own part's).
    int64_t lo = 0, hi = out_rows;
    if (r0 > 0 || r1 < in_rows) {
      const auto needed = std::minmax_element(covering + first[r0], covering + first[r1]);
      lo = first[r0] < first[r1] ? *needed.first : 0;
      hi = first[r0] < first[r1] ? *needed.second + 1 : 0;
    }
    for (int64_t r = lo; r < hi; ++r) {
      const scalar_t* at = grad + plane_at + out_at[r];
      Vec row;
      if (step == 1) {
        row = load_lanes_within(at, outs, last - plane_at - out_at[r] + 1);
      } else {
        alignas(32) float values[kNarrowLanes] = {};
        for (int64_t j = 0; j < outs; ++j) values[j] = static_cast<float>(at[j * step]);
        row = Vec::loadu(values);
      }
      const __m256 share = row / divisor[r];
      float* to = rows + r * row_floats;
      for (int64_t k = 0; k < taps; ++k) {
        _mm256_store_ps(to + k * kNarrowLanes,
                        low_taps.template gather<Sources::kOne>(k, share, share));
        if constexpr (kTwo) {
          _mm256_store_ps(to + (taps + k) * kNarrowLanes,
                          high_taps.template gather<Sources::kOne>(k, share, share));
        }
      }
    }
    scalar_t* plane = dst + in_plane.at();
    for (int64_t r = r0; r < r1; ++r) {
      __m256 low = _mm256_setzero_ps(), high = _mm256_setzero_ps();
      for (int64_t i = first[r]; i < first[r + 1]; ++i) {
        const float* from = rows + covering[i] * row_floats;
        for (int64_t k = 0; k < taps; ++k) {
          low = _mm256_add_ps(low, _mm256_load_ps(from + k * kNarrowLanes));
          if constexpr (kTwo) {
            high = _mm256_add_ps(high, _mm256_load_ps(from + (taps + k) * kNarrowLanes));
          }
        }
      }
      store_row(Vec(low), plane + in_at[r], low_cells, cells >= kNarrowLanes);
      if constexpr (kTwo) store_row(Vec(high), plane + in_at[r] + high_at, kNarrowLanes, true);
    }
  }
}

template <typename scalar_t>
  requires std::is_same_v<at::opmath_type<scalar_t>, float>
void avg_backward_narrow(const PoolGeometry& g, const at::Tensor& grad_out,
                         const at::Tensor& grad_in) {
  const Layout5 vo = layout_of(grad_out), vi = layout_of(grad_in);
  WindowTable table;
  table.build(g, 0);
  const std::vector<Span>* cover = table.cover(g);
  const int64_t cells = vi.size[4], outs = vo.size[4];
  const int64_t out_rows = vo.size[2] * vo.size[3], in_rows = vi.size[2] * vi.size[3];
  std::vector<at::vec::Vectorized<float>> divisor(out_rows);
  std::vector<int64_t> first(in_rows + 1, 0), covering;
  for (const auto r : c10::irange(out_rows)) {
    divisor[r] = row_divisors(g, table, r / vo.size[3], r % vo.size[3]);
  }
  for (const auto r : c10::irange(in_rows)) {
    const Span sd = cover[0][r / vi.size[3]], sh = cover[1][r % vi.size[3]];
    for (int64_t od = sd.lo; od < sd.hi; ++od) {
      for (int64_t oh = sh.lo; oh < sh.hi; ++oh) covering.push_back(od * vo.size[3] + oh);
    }
    first[r + 1] = static_cast<int64_t>(covering.size());
  }
  // Lane x of the first vector is cell x, of the second cell cells - 16 + x.
  int64_t begin[kNarrowCells], count[kNarrowCells];
  for (const auto x : c10::irange(kNarrowCells)) {
    const Span s = cover[2][std::clamp<int64_t>(x < kNarrowLanes ? x : cells - kNarrowCells + x,
                                                0, cells - 1)];
    begin[x] = s.lo;
    count[x] = s.hi - s.lo;
  }
  const bool two = cells > kNarrowLanes;
  const int64_t most = *std::max_element(count, count + kNarrowCells);
  const NarrowBackward b{std::move(divisor),
                         row_starts(vo),
                         row_starts(vi),
                         std::move(first),
                         std::move(covering),
                         LaneTaps(begin, count, std::min(cells, kNarrowLanes), outs, most,
                                  Sources::kOne),
                         LaneTaps(begin + kNarrowLanes, count + kNarrowLanes,
                                  two ? kNarrowLanes : 0, outs, most, Sources::kOne),
                         last_cell(vo)};
  const auto* grad = grad_out.const_data_ptr<scalar_t>();
  auto* dst = grad_in.mutable_data_ptr<scalar_t>();
  with_tap_count(most, b.low.uniform && b.high.uniform, [&](auto k, auto uniform) {
    constexpr int64_t K = decltype(k)::value;
    constexpr bool kUniform = decltype(uniform)::value;
    const int64_t all = vi.size[0] * vi.size[1] * in_rows;
    at::parallel_for(0, all, grain(vi.pixels() / in_rows * 2), [&](int64_t q0, int64_t q1) {
      if (two) {
        narrow_backward_rows<K, kUniform, true>(b, grad, vo, dst, vi, q0, q1);
      } else {
        narrow_backward_rows<K, kUniform, false>(b, grad, vo, dst, vi, q0, q1);
      }
    });
  });
}
#else
inline bool narrow_planes(const PoolGeometry&, const at::Tensor&, const at::Tensor*) {
  return false;
}
inline bool narrow_max_planes(const PoolGeometry&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor*) {
  return false;
}
#endif

// The instances narrow_planes never takes: double, and any without AVX2.
template <typename scalar_t>
void avg_forward_narrow(const PoolGeometry&, const at::Tensor&, const at::Tensor&) {
  TORCH_INTERNAL_ASSERT(false, "avg_forward_narrow: no kernel for this type");
}
template <typename scalar_t>
void avg_backward_narrow(const PoolGeometry&, const at::Tensor&, const at::Tensor&) {
  TORCH_INTERNAL_ASSERT(false, "avg_backward_narrow: no kernel for this type");
}
template <typename scalar_t>
void max_forward_narrow(const PoolGeometry&, const at::Tensor&, const at::Tensor&,
                        const at::Tensor*) {
  TORCH_INTERNAL_ASSERT(false, "max_forward_narrow: no kernel for this type");
}

// The CPU backend of pool_ops.h: each op picks its kernel by layout and
// geometry.
struct CpuKernels {
  // Sizes on the CPU: reading them costs no sync.
  static bool sizes_readable(const at::Tensor&) { return true; }

  static void max_forward(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out,
                          const at::Tensor& taps) {
    if (few_channels_last(g, in)) {
      through_planes<1, 2>(in, {in}, {out, taps},
                           [&](const auto& i, const auto& o) { max_forward(g, i[0], o[0], o[1]); });
      return;
    }
    const at::Tensor* saved = taps.defined() ? &taps : nullptr;  // none: values only
    POOL_EXT_DISPATCH(in.scalar_type(), "max_pool_cpu", [&] {
      dispatch_taps(taps, [&](auto tap_tag) {
        using tap_t = decltype(tap_tag);
        if (global_by_channels(g, in, out, true, saved)) {
          max_forward_global_channels<scalar_t, tap_t>(g, in, out, saved);
        } else if (narrow_max_planes(g, in, out, saved)) {
          max_forward_narrow<scalar_t>(g, in, out, saved);
        } else if (forward_by_channels(g, in, out, true, saved)) {
          max_forward_channels<scalar_t, tap_t>(g, in, out, saved);
        } else if (is_global(g)) {
          max_forward_global<scalar_t, tap_t>(g, in, out, saved);
        } else {
          max_forward_planes<scalar_t, tap_t>(g, in, out, saved);
        }
      });
    });
  }

  static void max_backward(const PoolGeometry& g, const at::Tensor& grad_out,
                           const at::Tensor& taps, const at::Tensor& grad_in) {
    advise_huge_pages(grad_in);
    // (Not where the channels kernel scatters: a copy there costs more.)
    if (few_channels_last(g, grad_in) && !scatters_channels(g, grad_in, taps)) {
      through_planes<2, 1>(grad_in, {grad_out, taps}, {grad_in},
                           [&](const auto& i, const auto& o) { max_backward(g, i[0], i[1], o[0]); });
      return;
    }
    POOL_EXT_DISPATCH(grad_in.scalar_type(), "max_pool_backward_cpu", [&] {
      dispatch_taps(taps, [&](auto tap_tag) {
        using tap_t = decltype(tap_tag);
        if (is_global(g)) {
          max_backward_global<scalar_t, tap_t>(g, grad_out, taps, grad_in);
        } else {
          max_backward_cpu<scalar_t, tap_t>(g, grad_out, taps, grad_in);
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
    // (Before the detour of few channels: torch sums those in its channels-last order too.)
    if (global_channels_as_torch(g, in)) {
      POOL_EXT_DISPATCH(in.scalar_type(), "avg_pool_cpu", [&] {
        if (g.sizes == nullptr) {
          avg_forward_global_channels_as_torch<scalar_t>(g, in, out);
        } else {
          avg_forward_variable_global_channels_as_torch<scalar_t>(g, in, out);
        }
      });
      return;
    }
    if (few_channels_last(g, in)) {
      through_planes<1, 1>(in, {in}, {out},
                           [&](const auto& i, const auto& o) { avg_forward(g, i[0], o[0]); });
      return;
    }
    POOL_EXT_DISPATCH(in.scalar_type(), "avg_pool_cpu", [&] {
      if (global_by_channels(g, in, out, false, nullptr)) {
        avg_forward_global_channels<scalar_t>(g, in, out);
      } else if (narrow_planes(g, in, &out)) {
        avg_forward_narrow<scalar_t>(g, in, out);
      } else if (forward_by_channels(g, in, out, false, nullptr)) {
        avg_forward_channels<scalar_t>(g, in, out);
      } else if (is_global(g)) {
        avg_forward_global<scalar_t>(g, in, out);
      } else {
        avg_forward_planes<scalar_t>(g, in, out);
      }
    });
  }

  static void avg_backward(const PoolGeometry& g, const at::Tensor& grad_out,
                           const at::Tensor& grad_in) {
    advise_huge_pages(grad_in);
    if (few_channels_last(g, grad_in)) {
      through_planes<1, 1>(grad_in, {grad_out}, {grad_in},
                           [&](const auto& i, const auto& o) { avg_backward(g, i[0], o[0]); });
      return;
    }
    POOL_EXT_DISPATCH(grad_in.scalar_type(), "avg_pool_backward_cpu", [&] {
      // (Global: a plane at a time where the channels are not packed
      // innermost, as in planes of one pixel, whose strides say both.)
      if (is_global(g) && channels_inner(grad_in, grad_in) &&
          packed_channels_last(layout_of(grad_in))) {
        avg_backward_global_channels<scalar_t>(g, grad_out, grad_in);
      } else if (is_global(g)) {
        avg_backward_global<scalar_t>(g, grad_out, grad_in);
      } else if (narrow_planes(g, grad_in, nullptr)) {
        avg_backward_narrow<scalar_t>(g, grad_out, grad_in);
      } else {
        avg_backward_cpu<scalar_t>(g, grad_out, grad_in);
      }
    });
  }
};

}  // namespace
}  // namespace pool_ext

TORCH_LIBRARY_IMPL(pool_ext, CPU, m) {
  pool_ext::register_ops<pool_ext::CpuKernels>(m);
}
