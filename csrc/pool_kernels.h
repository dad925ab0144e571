// The per-thread work of the CUDA kernels, as host-device functions: the
// kernels in csrc/cuda/ are loops and launches around these, and
// tests/csrc/cuda_on_host.cpp runs the same functions on the host, so that
// the CPU tests check what the GPU computes. Element functions take one
// element number e of the flat output (forwards, indices) or input
// (backwards), split by an ElementSplit, and write that element.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <type_traits>

#include "pool.h"
#include "pool_plan.h"

namespace pool_ext {

// Launch shape: threads of a block, and past this many blocks the kernels
// loop (grid-stride) instead.
constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;
// Element numbers below this, stepped by a whole grid, still fit in int32.
constexpr int64_t kNarrowLimit = std::numeric_limits<int32_t>::max() - kMaxBlocks * kThreads;

// Calls f(index_t{}) with int32_t when `total` elements can be numbered in it.
template <typename F>
void dispatch_index(int64_t total, const F& f) {
  if (total <= kNarrowLimit) {
    f(int32_t{});
  } else {
    f(int64_t{});
  }
}

// Whether environment variable `name` is set to `value`: the launches'
// switches, and the tests' run of them on the host.
inline bool env_is(const char* name, const char* value) {
  const char* set = std::getenv(name);
  return set != nullptr && std::strcmp(set, value) == 0;
}

// Whether threads take channels fastest: a channels-last (N, C, D, H, W) view.
inline bool channels_last(const Layout5& v) {
  return v.size[1] > 1 && v.stride[1] == 1;
}

// ------------------------------------------------------------ channel lanes
//
// The window kernels give a thread V channels (4 floats, 8 halves, 2
// doubles) wherever every tensor they touch allows it, else V = 1: all the
// work of a window (element split, tables, bounds, taps) is done once for V
// channels. Where every tensor is channels-last and lines up, they are a
// pack of neighbouring channels, one 16-byte load or store per cell;
// otherwise they lie stride[1] apart in each tensor (a plane, in NCHW), one
// access each. Element numbers follow the written tensor: channels (in
// groups of V) fastest for channels-last, else w fastest, so that
// neighbouring threads' accesses to each channel of an NCHW tensor are
// neighbouring cells. (In the H200 run of 2026-11-30 a window kernel got
// through about as many threads a second with a pack of four channels as
// with one, and the NCHW kernels, one channel a thread, ran at 0.24-1.0x
// torch; their lanes are not yet measured on a GPU.)

// The most channels of scalar_t in one 16-byte access.
template <typename scalar_t>
constexpr int kMaxLanes = static_cast<int>(16 / sizeof(scalar_t));

// Whether packs of `lanes` channels line up in the (N, C, D, H, W) view t5:
// channels-last, a channel count and every stride (of a dim longer than 1)
// multiples of lanes, and the data aligned to a pack (Pack's alignment).
inline bool packs_fit(int lanes, const at::Tensor& t5) {
  const Layout5 v = layout_of(t5);
  if (v.stride[1] != 1 || v.size[1] % lanes != 0) return false;
  for (int k = 0; k < 5; ++k) {
    if (k != 1 && v.size[k] > 1 && v.stride[k] % lanes != 0) return false;
  }
  const auto align = static_cast<uintptr_t>(std::min<int64_t>(t5.element_size() * lanes, 16));
  return reinterpret_cast<uintptr_t>(t5.const_data_ptr()) % align == 0;
}

struct ChannelLanes {
  int lanes;    // channels per thread: 1 or kMaxLanes
  bool packed;  // side by side in every tensor (one access), else one access a lane
};

// The channels per thread of a window kernel over scalar_t touching the
// views `tensors` (undefined: a tensor the kernel skips) and writing
// `elements` values. Every tensor needs a channel count that is a multiple
// of V, and where neighbouring channels sit side by side (channel stride 1),
// packs that fit as well (a simplification: in a call that takes its lanes
// apart, such a tensor could do without). Lanes apart only where that
// leaves `fill` threads or more (the threads a GPU holds at once): below
// that, one channel a thread keeps the GPU busier (an NCHW half
// 1x64x112x112 max_pool2d 3x3/2 would get 98 blocks of 8 channels a thread
// for 132 SMs). Packs whatever the size: their 16-byte accesses are a gain
// of their own.
template <typename scalar_t>
ChannelLanes channel_lanes(std::initializer_list<at::Tensor> tensors, int64_t elements,
                           int64_t fill) {
  constexpr int lanes = kMaxLanes<scalar_t>;
  bool packed = true;
  for (const at::Tensor& t : tensors) {
    if (!t.defined()) continue;
    const Layout5 v = layout_of(t);
    const bool fits = packs_fit(lanes, t);
    if (v.size[1] % lanes != 0 || (v.stride[1] == 1 && !fits)) return {1, true};
    packed = packed && fits;
  }
  if (!packed && elements / lanes < fill) return {1, true};
  return {lanes, packed};
}

// Calls f(std::integral_constant<int, V>{}, std::bool_constant<packed>{})
// for l: V = 1 (packed, trivially) or kMaxLanes, packed or not.
template <typename scalar_t, typename F>
void dispatch_lanes(const ChannelLanes& l, const F& f) {
  using most = std::integral_constant<int, kMaxLanes<scalar_t>>;
  if (l.lanes == 1) {
    f(std::integral_constant<int, 1>{}, std::true_type{});
  } else if (l.packed) {
    f(most{}, std::true_type{});
  } else {
    f(most{}, std::false_type{});
  }
}

// The stride between the lanes of view v, as load_lanes takes it.
template <bool Packed>
C10_HOST_DEVICE inline auto lane_stride(const Layout5& v) {
  if constexpr (Packed) {
    return SideBySide{};
  } else {
    return v.stride[1];
  }
}

// ------------------------------------------------------------ element numbers
//
// Splitting an element number into (n, c, d, h, w) takes four divisions by
// the tensor's extents. A 32-bit integer division costs a GPU about twenty
// instructions (a float reciprocal and its corrections); the extents are
// fixed for a launch, so the host turns each into a multiplier and a shift
// (Granlund and Montgomery, "Division by invariant integers using
// multiplication", 1994): a multiply-high, an add and a shift.

// Division by d >= 1 of numbers n of index_t, 0 <= n < 2^31 for int32_t.
template <typename index_t>
struct Divider {
  index_t d;
  explicit Divider(int64_t divisor = 1) : d(static_cast<index_t>(divisor)) {}
  C10_HOST_DEVICE index_t divisor() const { return d; }
  C10_HOST_DEVICE index_t div(index_t n) const { return n / d; }
};

template <>
struct Divider<int32_t> {
  uint32_t d;
  uint32_t magic;  // floor(2^32 * (2^shift - d) / d) + 1
  uint32_t shift;  // ceil(log2(d)): 2^(shift - 1) < d <= 2^shift
  explicit Divider(int64_t divisor = 1) : d(static_cast<uint32_t>(divisor)), shift(0) {
    TORCH_CHECK(divisor >= 1 && divisor <= std::numeric_limits<int32_t>::max(),
                "pool_ext: a 32-bit divider of ", divisor);
    while ((uint64_t{1} << shift) < d) ++shift;
    magic = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - d)) / d + 1);
  }
  C10_HOST_DEVICE int32_t divisor() const { return static_cast<int32_t>(d); }
  // q = floor(n / d) = (hi + n) >> shift with hi the high word of n * magic;
  // hi <= n < 2^31, so hi + n does not overflow.
  C10_HOST_DEVICE int32_t div(int32_t n) const {
    const auto u = static_cast<uint32_t>(n);
#ifdef __CUDA_ARCH__
    const uint32_t hi = __umulhi(u, magic);
#else
    const auto hi = static_cast<uint32_t>((static_cast<uint64_t>(u) * magic) >> 32);
#endif
    return static_cast<int32_t>((hi + u) >> shift);
  }
};

// How a kernel over the (N, C, D, H, W) view v, V channels an element, splits
// its element numbers, with the divisions prepared: channels fastest for
// channels-last views (cl), else w fastest (and V channels a plane apart),
// so that neighbouring threads touch neighbouring memory.
template <typename index_t>
struct ElementSplit {
  using index_type = index_t;
  bool cl;
  // By the view's extents: C counted in groups of V, and a (D, H, W) plane's cells.
  Divider<index_t> channels, d, h, w, pixels;

  ElementSplit(const Layout5& v, bool channels_last, int lanes)
      : cl(channels_last),
        channels(v.size[1] / lanes),
        d(v.size[2]),
        h(v.size[3]),
        w(v.size[4]),
        pixels(v.pixels()) {}

  // (n, c, x) of element e, c counted in groups of V.
  C10_HOST_DEVICE void operator()(index_t e, int64_t* n, int64_t* c, int64_t* x) const {
    index_t row;  // e's (n, d, h) row, w split off
    if (cl) {
      const index_t p = channels.div(e);
      *c = e - p * channels.divisor();
      row = w.div(p);
      x[2] = p - row * w.divisor();
      const index_t plane = h.div(row);
      x[1] = row - plane * h.divisor();
      *n = d.div(plane);
      x[0] = plane - *n * d.divisor();
    } else {
      const index_t plane = pixels.div(e);  // n * C + c
      const index_t cell = e - plane * pixels.divisor();
      *n = channels.div(plane);
      *c = plane - *n * channels.divisor();
      row = w.div(cell);
      x[2] = cell - row * w.divisor();
      x[0] = h.div(row);
      x[1] = row - x[0] * h.divisor();
    }
  }
};

// Splits element number e of a kernel taking V channels each: (n, c, x)
// with c the first of its channels.
template <int V, typename index_t>
C10_HOST_DEVICE inline void unflatten_pack(index_t e, const ElementSplit<index_t>& split,
                                           int64_t* n, int64_t* c, int64_t* x) {
  split(e, n, c, x);
  *c *= V;
}

// Output e of a forward (or indices) element taking V channels: (n, c, o)
// as unflatten_pack splits it, and its windows.
template <int V, typename index_t>
C10_HOST_DEVICE inline void output_windows(const PoolTables& t,
                                           const ElementSplit<index_t>& split, index_t e,
                                           int64_t* n, int64_t* c, int64_t* o, Window* w) {
  unflatten_pack<V, index_t>(e, split, n, c, o);
  for (int k = 0; k < kDims; ++k) {
    w[k] = table_window(t, *n, k, o[k]);
  }
}

template <int V, typename acc_t, typename T>
C10_HOST_DEVICE inline Pack<T, V> narrow_pack(const acc_t* values) {
  Pack<T, V> pack;
  for (int u = 0; u < V; ++u) pack.v[u] = narrow_value<T>(values[u]);
  return pack;
}

// Forward of max pooling at output e (V channels, packed or not); taps null
// for the inference forward.
template <int V, bool P, typename scalar_t, typename tap_t, typename index_t>
C10_HOST_DEVICE inline void max_forward_element(const PoolGeometry& g, const PoolTables& t,
                                                const Layout5& vi, const Layout5& vo,
                                                const Layout5& vt,
                                                const ElementSplit<index_t>& split, index_t e,
                                                const scalar_t* in, scalar_t* out, tap_t* taps) {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t n, c, o[kDims];
  Window w[kDims];
  output_windows<V, index_t>(t, split, e, &n, &c, o, w);
  acc_t best[V];
  int64_t tap[V];
  window_max_lanes<V, scalar_t, acc_t>(g, w, in + vi.offset(n, c, 0, 0, 0), vi.spatial_strides(),
                                       lane_stride<P>(vi), best, tap);
  store_lanes<V>(out + vo.offset(n, c, o[0], o[1], o[2]), lane_stride<P>(vo),
                 narrow_pack<V, acc_t, scalar_t>(best));
  if (taps != nullptr) {
    store_lanes<V>(taps + vt.offset(n, c, o[0], o[1], o[2]), lane_stride<P>(vt),
                   narrow_pack<V, int64_t, tap_t>(tap));
  }
}

template <int V, bool P, typename scalar_t, typename index_t>
C10_HOST_DEVICE inline void avg_forward_element(const PoolGeometry& g, const PoolTables& t,
                                                const Layout5& vi, const Layout5& vo,
                                                const ElementSplit<index_t>& split, index_t e,
                                                const scalar_t* in, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t n, c, o[kDims];
  Window w[kDims];
  output_windows<V, index_t>(t, split, e, &n, &c, o, w);
  acc_t mean[V];
  window_sum_lanes<V, scalar_t, acc_t>(w, in + vi.offset(n, c, 0, 0, 0), vi.spatial_strides(),
                                       lane_stride<P>(vi), mean);
  const auto divisor = static_cast<acc_t>(avg_divisor(g, w, o));
  for (int u = 0; u < V; ++u) mean[u] /= divisor;
  store_lanes<V>(out + vo.offset(n, c, o[0], o[1], o[2]), lane_stride<P>(vo),
                 narrow_pack<V, acc_t, scalar_t>(mean));
}

// Backward of max pooling at input cell e (V channels, packed or not).
template <int V, bool P, typename scalar_t, typename tap_t, typename index_t>
C10_HOST_DEVICE inline void max_backward_element(const PoolGeometry& g, const PoolTables& t,
                                                 const Layout5& vo, const Layout5& vt,
                                                 const Layout5& vg,
                                                 const ElementSplit<index_t>& split, index_t e,
                                                 const scalar_t* grad, const tap_t* taps,
                                                 scalar_t* grad_in) {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t n, c, i[kDims];
  unflatten_pack<V, index_t>(e, split, &n, &c, i);
  acc_t sum[V];
  max_grad_lanes<V, scalar_t, tap_t, acc_t>(g, t, n, i, grad + vo.offset(n, c, 0, 0, 0),
                                            vo.spatial_strides(), lane_stride<P>(vo),
                                            taps + vt.offset(n, c, 0, 0, 0), vt.spatial_strides(),
                                            lane_stride<P>(vt), sum);
  store_lanes<V>(grad_in + vg.offset(n, c, i[0], i[1], i[2]), lane_stride<P>(vg),
                 narrow_pack<V, acc_t, scalar_t>(sum));
}

template <int V, bool P, typename scalar_t, typename index_t>
C10_HOST_DEVICE inline void avg_backward_element(const PoolGeometry& g, const PoolTables& t,
                                                 const Layout5& vo, const Layout5& vg,
                                                 const ElementSplit<index_t>& split, index_t e,
                                                 const scalar_t* grad, scalar_t* grad_in) {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t n, c, i[kDims];
  unflatten_pack<V, index_t>(e, split, &n, &c, i);
  acc_t sum[V];
  avg_grad_lanes<V, scalar_t, acc_t>(g, t, n, i, grad + vo.offset(n, c, 0, 0, 0),
                                     vo.spatial_strides(), lane_stride<P>(vo), sum);
  store_lanes<V>(grad_in + vg.offset(n, c, i[0], i[1], i[2]), lane_stride<P>(vg),
                 narrow_pack<V, acc_t, scalar_t>(sum));
}

template <typename tap_t, typename index_t>
C10_HOST_DEVICE inline void max_indices_element(const PoolGeometry& g, const PoolTables& t,
                                                const Layout5& vt, const Layout5& vx,
                                                const ElementSplit<index_t>& split, index_t e,
                                                const tap_t* taps, int64_t* indices) {
  int64_t n, c, o[kDims];
  Window w[kDims];
  output_windows<1, index_t>(t, split, e, &n, &c, o, w);
  indices[vx.offset(n, c, o[0], o[1], o[2])] =
      tap_to_index(g, w, static_cast<int64_t>(taps[vt.offset(n, c, o[0], o[1], o[2])]));
}

// ------------------------------------------------------------ global pooling
//
// Output size 1 in every dim, the head of most CNNs. One thread per output
// would walk a whole plane alone: slow, and its running float sum drifts
// over a long plane (1e-5 over 300x300) where torch's mean does not. Here a
// block of kGlobalThreads (kThreads) reduces `lanes` planes with `parts` threads each,
// joined by a tree in shared memory. Planes are numbered n * C + c.
// Channels-last blocks put lanes (neighbouring channels, side by side in
// memory) on the fastest thread axis, other layouts parts (neighbouring
// cells of one plane). Few long planes are also cut into `chunks`, each
// reduced by its own block, and a second kernel joins a plane's chunks in
// order. Every order is fixed: results are bit-identical from run to run.
// Sums are kept in double. The threads of a plane and its chunks depend on
// the SM count, so GPUs of other models may sum a plane in another order
// (double sums rounded to the output's type: rarely a last-bit difference,
// in the forward only).

constexpr int kGlobalThreads = kThreads;
constexpr int64_t kBlocksPerSM = 8;     // 2048 threads: a whole SM
constexpr int64_t kGlobalChunks = 256;  // most chunks per plane (joined one by one)
constexpr int64_t kChunkCells = 16;     // fewest cells per thread of a plane, or of its chunk
constexpr int kUnroll = 4;              // loads in flight per thread

// Global pooling of planes of at most this many cells goes to the window
// kernels instead (a thread a plane, or V of them) where the launches are
// asked to (POOL_EXT_CUDA_GLOBAL_WINDOWS=1): the reduction's alternative
// for small planes, for a GPU run to measure (on 7x7 -> 1 the H100's older
// kernel, a thread a plane, took 0.124 ms; the reduction of 5b1aa11 on an
// H200 0.771, of threads 16 cells or more each since, unmeasured).
constexpr int64_t kWindowGlobalCells = 64;

// Whether global pooling g of the view v takes the block reduction, when
// small planes may go to the window kernels (`windows`).
inline bool by_reduction(const PoolGeometry& g, const Layout5& v, bool windows) {
  return is_global(g) && !(windows && v.pixels() <= kWindowGlobalCells);
}

struct GlobalSplit {
  int lanes;        // planes of one block
  int parts;        // threads per plane: lanes * parts == kGlobalThreads
  int lane_step;    // thread numbers between neighbouring lanes: 1 or parts
  int part_step;    // and between neighbouring parts: lanes or 1
  int64_t groups;   // blocks per chunk: ceil(N * C / lanes)
  int64_t chunks;   // blocks per plane
  // Dense planes (no per-sample sizes, cells at one stride in tap order):
  // the hot loop then needs no division.
  bool dense;
  int64_t cells;        // of every plane
  int64_t per_chunk;    // cells of a chunk
  int64_t cell_stride;  // elements between neighbouring cells

  C10_HOST_DEVICE int lane(int thread) const { return thread / lane_step % lanes; }
  C10_HOST_DEVICE int part(int thread) const { return thread / part_step % parts; }
};

// The split of global pooling g over input v, channels-last or not, on a
// GPU of `multiprocessors` SMs.
inline GlobalSplit global_split(const PoolGeometry& g, const Layout5& v, bool cl,
                                int64_t multiprocessors) {
  const int64_t cells = v.pixels();  // the padded extent: the most any sample has
  const int64_t channels = v.size[1];
  // Threads per plane, a power of two: as few as leave each kChunkCells cells
  // or more, then more while the planes alone would leave the GPU's threads
  // idle, up to one a cell. (Each part costs the block's tree a level and a
  // barrier. With a part a cell, 7x7 planes to 1 ran 0.2-0.4x torch on an
  // H200, 3-6x the time of the one thread a plane that came before; this
  // split is not yet measured on a GPU.)
  const int64_t resident = kBlocksPerSM * kGlobalThreads * multiprocessors;
  int parts = 1;
  while (parts < kGlobalThreads && 2 * parts <= cells &&
         (2 * parts * kChunkCells <= cells || v.size[0] * channels * parts < resident)) {
    parts *= 2;
  }
  if (cl) {  // lanes enough for one 128-byte run of float channels
    int lanes = 1;
    while (lanes < 32 && lanes < channels) lanes *= 2;
    parts = std::min(parts, kGlobalThreads / lanes);
  }
  const int lanes = kGlobalThreads / parts;
  GlobalSplit s{lanes, parts, cl ? 1 : parts, cl ? lanes : 1, 0, 1, false, cells, 0, 0};
  s.groups = (v.size[0] * channels + lanes - 1) / lanes;
  const int64_t wanted_blocks = kBlocksPerSM * multiprocessors;
  if (s.groups < wanted_blocks) {
    const int64_t wanted = (wanted_blocks + s.groups - 1) / s.groups;
    s.chunks =
        std::clamp<int64_t>(std::min(wanted, cells / (parts * kChunkCells)), 1, kGlobalChunks);
  }
  s.per_chunk = (cells + s.chunks - 1) / s.chunks;
  // Dense: cell p of every plane at p * cell_stride, its tap p (the window,
  // the whole plane, numbers its taps over the plane's own extents).
  s.dense = g.sizes == nullptr && g.dim[1].kernel == v.size[3] && g.dim[2].kernel == v.size[4];
  int64_t expected = -1;
  for (int k = 4; k >= 2 && s.dense; --k) {
    if (v.size[k] == 1) continue;
    if (expected < 0) {
      s.cell_stride = v.stride[k];
    } else if (v.stride[k] != expected) {
      s.dense = false;
    }
    expected = v.stride[k] * v.size[k];
  }
  return s;
}

// What a reduction keeps of a plane (or of the cells one thread saw): a sum,
// or a max and its tap. Aggregates, so that they can live in shared memory.
template <typename acc_t>
struct SumState {
  double sum;
  C10_HOST_DEVICE static SumState empty() { return {0.0}; }
  C10_HOST_DEVICE void add(acc_t v, int64_t /*tap*/) { sum += static_cast<double>(v); }
  C10_HOST_DEVICE void merge(const SumState& o) { sum += o.sum; }
};

template <typename acc_t>
struct MaxState {
  acc_t value;
  int64_t tap;  // -1: no cell yet
  C10_HOST_DEVICE static MaxState empty() { return {-std::numeric_limits<acc_t>::infinity(), -1}; }
  C10_HOST_DEVICE void add(acc_t v, int64_t t) {  // cells come in tap order
    if (tap < 0 || max_takes(v, value)) {
      value = v;
      tap = t;
    }
  }
  C10_HOST_DEVICE void merge(const MaxState& o) {
    if (max_merge_takes(o.value, o.tap, value, tap)) *this = o;
  }
};

template <typename scalar_t>
struct AvgOutput {
  using acc_t = at::opmath_type<scalar_t>;
  using State = SumState<acc_t>;
  PoolGeometry g;
  Layout5 vo;
  scalar_t* out;
  C10_HOST_DEVICE void operator()(int64_t n, int64_t c, const State& s) const {
    const int64_t origin[kDims] = {0, 0, 0};
    Window w[kDims];
    windows_at(g, n, origin, w);
    const double mean = s.sum / static_cast<double>(avg_divisor(g, w, origin));
    out[vo.offset(n, c, 0, 0, 0)] = narrow_value<scalar_t>(static_cast<acc_t>(mean));
  }
};

template <typename scalar_t, typename tap_t>
struct MaxOutput {
  using acc_t = at::opmath_type<scalar_t>;
  using State = MaxState<acc_t>;
  Layout5 vo;
  Layout5 vt;
  scalar_t* out;
  tap_t* taps;  // null for the inference forward
  C10_HOST_DEVICE void operator()(int64_t n, int64_t c, const State& s) const {
    out[vo.offset(n, c, 0, 0, 0)] = narrow_value<scalar_t>(s.value);
    if (taps != nullptr) {
      taps[vt.offset(n, c, 0, 0, 0)] = static_cast<tap_t>(s.tap);
    }
  }
};

// What thread `thread` of global block b sees of its plane q (set; q >=
// N * C: no plane) in its chunk: its cells in tap order.
template <typename scalar_t, typename State, typename index_t>
C10_HOST_DEVICE inline State global_scan(const PoolGeometry& g, const Layout5& vi,
                                         const GlobalSplit& s, index_t b, int thread,
                                         const scalar_t* in, index_t* q_out) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto channels = static_cast<index_t>(vi.size[1]);
  const auto chunks = static_cast<index_t>(s.chunks);
  const index_t chunk = b % chunks, q = b / chunks * s.lanes + s.lane(thread);
  const int part = s.part(thread);
  *q_out = q;
  State state = State::empty();
  if (q >= static_cast<index_t>(vi.size[0]) * channels) return state;
  const index_t n = q / channels, c = q % channels;
  const scalar_t* plane = in + vi.offset(n, c, 0, 0, 0);
  if (s.dense) {
    const auto step = static_cast<index_t>(s.parts);
    const auto last = static_cast<index_t>(min64((chunk + 1) * s.per_chunk, s.cells));
    auto p = static_cast<index_t>(chunk * s.per_chunk + part);
    for (; p + (kUnroll - 1) * step < last; p += kUnroll * step) {
      acc_t v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        v[u] = widen_value<acc_t>(plane[(p + u * step) * s.cell_stride]);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) state.add(v[u], p + u * step);  // in tap order
    }
    for (; p < last; p += step) state.add(widen_value<acc_t>(plane[p * s.cell_stride]), p);
  } else {  // per-sample extents or gaps between rows: the cell's (d, h, w)
    const int64_t* st = vi.spatial_strides();
    const auto ed = static_cast<index_t>(extent(g, 0, n));
    const auto eh = static_cast<index_t>(extent(g, 1, n));
    const auto ew = static_cast<index_t>(extent(g, 2, n));
    const int64_t cells = static_cast<int64_t>(ed) * eh * ew;
    const int64_t per_chunk = (cells + s.chunks - 1) / s.chunks;
    const auto last = static_cast<index_t>(min64((chunk + 1) * per_chunk, cells));
    const auto scan = [&](const auto& split) {
      for (auto p = static_cast<index_t>(chunk * per_chunk + part); p < last; p += s.parts) {
        index_t d = 0, h = 0, x = p;
        split(p, &d, &h, &x);
        state.add(widen_value<acc_t>(plane[d * st[0] + h * st[1] + x * st[2]]),
                  encode_tap(g, d, h, x));
      }
    };
    // Integer division costs a GPU about twenty instructions a cell, as
    // much as the rest of the scan: only the dims that have more than one
    // row are split (a sequence's cells, variable 1d pooling's, need none).
    if (ed == 1 && eh == 1) {
      scan([](index_t, index_t*, index_t*, index_t*) {});
    } else if (ed == 1) {
      scan([ew](index_t p, index_t*, index_t* h, index_t* x) {
        *h = p / ew;
        *x = p - *h * ew;
      });
    } else {
      scan([ew, eh](index_t p, index_t* d, index_t* h, index_t* x) {
        const index_t rest = p / ew;
        *x = p - rest * ew;
        *d = rest / eh;
        *h = rest - *d * eh;
      });
    }
  }
  return state;
}

// One level `half` of a global block's tree (levels in turn, halving from
// parts / 2, a barrier after each): a thread of the lower half of its plane's
// parts joins the thread `half` parts on.
template <typename State>
C10_HOST_DEVICE inline void global_tree_step(const GlobalSplit& s, State* joined, int thread,
                                             int half) {
  if (s.part(thread) < half) joined[thread].merge(joined[thread + half * s.part_step]);
}

// After the tree, the first part of each plane q (below `planes`) holds the
// plane's chunk `chunk`: written to the output itself when planes are not
// cut, else to its partial, joined later by global_join.
template <typename State, typename Output, typename index_t>
C10_HOST_DEVICE inline void global_finish(const GlobalSplit& s, int thread, index_t channels,
                                          index_t planes, index_t q, index_t chunk,
                                          const State& state, State* partial,
                                          const Output& output) {
  if (s.part(thread) != 0 || q >= planes) return;
  if (s.chunks == 1) {
    output(q / channels, q % channels, state);
  } else {
    partial[static_cast<int64_t>(q) * s.chunks + chunk] = state;
  }
}

// Joins the chunks of plane q in order and writes its output.
template <typename State, typename Output>
C10_HOST_DEVICE inline void global_join(int64_t q, int64_t channels, int64_t chunks,
                                        const State* partial, const Output& output) {
  State state = partial[q * chunks];
  for (int64_t j = 1; j < chunks; ++j) state.merge(partial[q * chunks + j]);
  output(q / channels, q % channels, state);
}

}  // namespace pool_ext
