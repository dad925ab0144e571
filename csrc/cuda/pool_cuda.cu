// CUDA kernels: one thread per output (forward) or per input cell (backward),
// each a thin loop around the element functions of pool.h that the CPU
// kernels run too. Threads walk elements in memory order (channels fastest
// for channels-last), so neighbouring threads touch neighbouring memory.
// Windows and covering spans come from per-dim tables filled by a first small
// kernel, and element numbers are split in 32 bits where the tensor allows:
// the hot loops do no 64-bit division. Backward kernels gather: no atomics,
// bit-identical gradients.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../pool_ops.h"

namespace pool_ext {
namespace {

constexpr int kThreads = 256;
// Past this many blocks the kernels loop (grid-stride) instead.
constexpr int64_t kMaxBlocks = int64_t{1} << 20;
// Element numbers below this, stepped by a whole grid, still fit in int32.
constexpr int64_t kNarrowLimit = std::numeric_limits<int32_t>::max() - kMaxBlocks * kThreads;

struct Launch {
  dim3 grid;
  dim3 block;
  cudaStream_t stream;
};

Launch launch_for(const at::Tensor& t, int64_t total) {
  return {dim3(static_cast<unsigned>(std::min((total + kThreads - 1) / kThreads, kMaxBlocks))),
          dim3(kThreads), c10::cuda::getCurrentCUDAStream(t.device().index()).stream()};
}

bool channels_last(const at::Tensor& t5) {
  return t5.size(1) > 1 && t5.stride(1) == 1;
}

// Calls f(index_t{}) with int32_t when `total` elements can be numbered in it.
template <typename F>
void dispatch_index(int64_t total, const F& f) {
  if (total <= kNarrowLimit) {
    f(int32_t{});
  } else {
    f(int64_t{});
  }
}

template <typename index_t>
__device__ __forceinline__ index_t first_element() {
  return static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
template <typename index_t>
__device__ __forceinline__ index_t element_step() {
  return static_cast<index_t>(gridDim.x) * blockDim.x;
}

__global__ void fill_tables_kernel(PoolGeometry g, PoolTables t, int64_t total) {
  for (int64_t e = first_element<int64_t>(); e < total; e += element_step<int64_t>()) {
    fill_table_entry(g, t, e);
  }
}

// The tables of one call, in device memory: windows, then covering spans.
struct DeviceTables {
  at::Tensor storage;
  PoolTables view;

  DeviceTables(const PoolGeometry& g, const at::Tensor& like) : view(table_layout(g, like.size(0))) {
    const int64_t window_bytes = view.samples * view.out_total * sizeof(Window);
    const int64_t span_bytes = view.samples * view.in_total * sizeof(Span);
    storage = at::empty({window_bytes + span_bytes}, like.options().dtype(at::kByte));
    auto* base = storage.mutable_data_ptr<uint8_t>();
    view.windows = reinterpret_cast<Window*>(base);
    view.covering = reinterpret_cast<Span*>(base + window_bytes);
    const int64_t entries = table_entries(view);
    if (entries > 0) {
      const auto l = launch_for(like, entries);
      fill_tables_kernel<<<l.grid, l.block, 0, l.stream>>>(g, view, entries);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
};

__device__ __forceinline__ void table_windows(const PoolTables& t, int64_t n, const int64_t* o,
                                              Window* w) {
  for (int k = 0; k < kDims; ++k) {
    w[k] = table_window(t, n, k, o[k]);
  }
}

template <typename scalar_t, typename tap_t, typename index_t>
__global__ void max_forward_kernel(PoolGeometry g, PoolTables t, Layout5 vi, Layout5 vo,
                                   Layout5 vt, bool cl, index_t total,
                                   const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                   tap_t* __restrict__ taps) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t e = first_element<index_t>(); e < total; e += element_step<index_t>()) {
    int64_t n, c, o[kDims];
    unflatten_element<index_t>(e, vo, cl, &n, &c, o);
    Window w[kDims];
    table_windows(t, n, o, w);
    int64_t tap;
    const acc_t best = window_max<scalar_t, acc_t>(g, w, in + vi.offset(n, c, 0, 0, 0),
                                                   vi.spatial_strides(), &tap);
    out[vo.offset(n, c, o[0], o[1], o[2])] = static_cast<scalar_t>(best);
    if (taps != nullptr) {  // none for the inference forward
      taps[vt.offset(n, c, o[0], o[1], o[2])] = static_cast<tap_t>(tap);
    }
  }
}

template <typename scalar_t, typename index_t>
__global__ void avg_forward_kernel(PoolGeometry g, PoolTables t, Layout5 vi, Layout5 vo, bool cl,
                                   index_t total, const scalar_t* __restrict__ in,
                                   scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t e = first_element<index_t>(); e < total; e += element_step<index_t>()) {
    int64_t n, c, o[kDims];
    unflatten_element<index_t>(e, vo, cl, &n, &c, o);
    Window w[kDims];
    table_windows(t, n, o, w);
    const acc_t sum =
        window_sum<scalar_t, acc_t>(w, in + vi.offset(n, c, 0, 0, 0), vi.spatial_strides());
    out[vo.offset(n, c, o[0], o[1], o[2])] =
        static_cast<scalar_t>(sum / static_cast<acc_t>(avg_divisor(g, w, o)));
  }
}

template <typename scalar_t, typename tap_t, typename index_t>
__global__ void max_backward_kernel(PoolGeometry g, PoolTables t, Layout5 vo, Layout5 vt,
                                    Layout5 vg, bool cl, index_t total,
                                    const scalar_t* __restrict__ grad,
                                    const tap_t* __restrict__ taps,
                                    scalar_t* __restrict__ grad_in) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t e = first_element<index_t>(); e < total; e += element_step<index_t>()) {
    int64_t n, c, i[kDims];
    unflatten_element<index_t>(e, vg, cl, &n, &c, i);
    const acc_t sum = max_grad_at<scalar_t, tap_t, acc_t>(
        g, t, n, i, grad + vo.offset(n, c, 0, 0, 0), vo.spatial_strides(),
        taps + vt.offset(n, c, 0, 0, 0), vt.spatial_strides());
    grad_in[vg.offset(n, c, i[0], i[1], i[2])] = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t, typename index_t>
__global__ void avg_backward_kernel(PoolGeometry g, PoolTables t, Layout5 vo, Layout5 vg, bool cl,
                                    index_t total, const scalar_t* __restrict__ grad,
                                    scalar_t* __restrict__ grad_in) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t e = first_element<index_t>(); e < total; e += element_step<index_t>()) {
    int64_t n, c, i[kDims];
    unflatten_element<index_t>(e, vg, cl, &n, &c, i);
    const acc_t sum = avg_grad_at<scalar_t, acc_t>(g, t, n, i, grad + vo.offset(n, c, 0, 0, 0),
                                                   vo.spatial_strides());
    grad_in[vg.offset(n, c, i[0], i[1], i[2])] = static_cast<scalar_t>(sum);
  }
}

template <typename tap_t, typename index_t>
__global__ void max_indices_kernel(PoolGeometry g, PoolTables t, Layout5 vt, Layout5 vx, bool cl,
                                   index_t total, const tap_t* __restrict__ taps,
                                   int64_t* __restrict__ indices) {
  for (index_t e = first_element<index_t>(); e < total; e += element_step<index_t>()) {
    int64_t n, c, o[kDims];
    unflatten_element<index_t>(e, vx, cl, &n, &c, o);
    Window w[kDims];
    table_windows(t, n, o, w);
    indices[vx.offset(n, c, o[0], o[1], o[2])] =
        tap_to_index(g, w, static_cast<int64_t>(taps[vt.offset(n, c, o[0], o[1], o[2])]));
  }
}

// ------------------------------------------------------------ global pooling
//
// Output size 1 in every dim, the head of most CNNs. One thread per output
// would walk a whole plane alone: slow, and its running float sum drifts
// over a long plane (1e-5 over 300x300) where torch's mean does not. Here a
// block reduces `lanes` planes with `parts` threads each, joined by a tree in
// shared memory. Planes are numbered n * C + c. Channels-last blocks put
// lanes (neighbouring channels, side by side in memory) on the fastest
// thread axis, other layouts parts (neighbouring cells of one plane). Few
// long planes are also cut into `chunks`, each reduced by its own block, and
// a second kernel joins a plane's chunks in order. Every order is fixed:
// results are bit-identical from run to run. Sums are kept in double.

struct GlobalSplit {
  int lanes;        // planes of one block
  int parts;        // threads per plane: lanes * parts == kThreads
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
};

constexpr int64_t kBlocksPerSM = 8;     // 2048 threads: a whole SM
constexpr int64_t kGlobalChunks = 256;  // most chunks per plane (joined one by one)
constexpr int64_t kChunkCells = 16;     // fewest cells per thread in a chunk of a cut plane
constexpr int kUnroll = 4;              // loads in flight per thread

int multiprocessors(const at::Tensor& t) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, t.device().index()));
  return count;
}

GlobalSplit global_split(const PoolGeometry& g, const at::Tensor& in) {
  const Layout5 v = layout_of(in);
  const int64_t cells = v.pixels();  // the padded extent: the most any sample has
  const int64_t channels = v.size[1];
  const bool cl = channels_last(in);
  int parts = kThreads;  // a power of two, at most the plane's cells
  while (parts > 1 && parts > cells) parts /= 2;
  if (cl) {  // lanes enough for one 128-byte run of float channels
    int lanes = 1;
    while (lanes < 32 && lanes < channels) lanes *= 2;
    parts = std::min(parts, kThreads / lanes);
  }
  const int lanes = kThreads / parts;
  GlobalSplit s{lanes, parts, cl ? 1 : parts, cl ? lanes : 1, 0, 1, false, cells, 0, 0};
  s.groups = (v.size[0] * channels + lanes - 1) / lanes;
  const int64_t wanted_blocks = kBlocksPerSM * multiprocessors(in);
  if (s.groups < wanted_blocks) {
    const int64_t wanted = (wanted_blocks + s.groups - 1) / s.groups;
    s.chunks = std::clamp<int64_t>(std::min(wanted, cells / (parts * kChunkCells)), 1, kGlobalChunks);
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
  __device__ static SumState empty() { return {0.0}; }
  __device__ void add(acc_t v, int64_t /*tap*/) { sum += static_cast<double>(v); }
  __device__ void merge(const SumState& o) { sum += o.sum; }
};

template <typename acc_t>
struct MaxState {
  acc_t value;
  int64_t tap;  // -1: no cell yet
  __device__ static MaxState empty() { return {-std::numeric_limits<acc_t>::infinity(), -1}; }
  __device__ void add(acc_t v, int64_t t) {  // cells come in tap order
    if (tap < 0 || max_takes(v, value)) {
      value = v;
      tap = t;
    }
  }
  __device__ void merge(const MaxState& o) {
    if (max_merge_takes(o.value, o.tap, value, tap)) *this = o;
  }
};

template <typename scalar_t>
struct AvgOutput {
  using acc_t = at::opmath_type<scalar_t>;
  PoolGeometry g;
  Layout5 vo;
  scalar_t* out;
  __device__ void operator()(int64_t n, int64_t c, const SumState<acc_t>& s) const {
    const int64_t origin[kDims] = {0, 0, 0};
    Window w[kDims];
    windows_at(g, n, origin, w);
    const double mean = s.sum / static_cast<double>(avg_divisor(g, w, origin));
    out[vo.offset(n, c, 0, 0, 0)] = static_cast<scalar_t>(static_cast<acc_t>(mean));
  }
};

template <typename scalar_t, typename tap_t>
struct MaxOutput {
  using acc_t = at::opmath_type<scalar_t>;
  Layout5 vo;
  Layout5 vt;
  scalar_t* out;
  tap_t* taps;  // null for the inference forward
  __device__ void operator()(int64_t n, int64_t c, const MaxState<acc_t>& s) const {
    out[vo.offset(n, c, 0, 0, 0)] = static_cast<scalar_t>(s.value);
    if (taps != nullptr) {
      taps[vt.offset(n, c, 0, 0, 0)] = static_cast<tap_t>(s.tap);
    }
  }
};

template <typename scalar_t, typename State, typename Output, typename index_t>
__global__ void __launch_bounds__(kThreads)
    global_reduce_kernel(PoolGeometry g, Layout5 vi, GlobalSplit s, const scalar_t* __restrict__ in,
                         State* __restrict__ partial, Output output) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ State joined[kThreads];
  const int lane = threadIdx.x / s.lane_step % s.lanes;
  const int part = threadIdx.x / s.part_step % s.parts;
  const auto channels = static_cast<index_t>(vi.size[1]);
  const auto planes = static_cast<index_t>(vi.size[0]) * channels;
  const auto chunks = static_cast<index_t>(s.chunks);
  const int64_t* st = vi.spatial_strides();
  for (index_t b = blockIdx.x; b < static_cast<index_t>(s.groups) * chunks; b += gridDim.x) {
    // (the loop is uniform per block: every thread meets the barriers below)
    const index_t chunk = b % chunks, q = b / chunks * s.lanes + lane;
    State state = State::empty();
    if (q < planes) {
      const index_t n = q / channels, c = q % channels;
      const scalar_t* plane = in + vi.offset(n, c, 0, 0, 0);
      if (s.dense) {
        const auto step = static_cast<index_t>(s.parts);
        const auto last = static_cast<index_t>(min64((chunk + 1) * s.per_chunk, s.cells));
        auto p = static_cast<index_t>(chunk * s.per_chunk + part);
        for (; p + (kUnroll - 1) * step < last; p += kUnroll * step) {
          acc_t v[kUnroll];
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) v[u] = static_cast<acc_t>(plane[(p + u * step) * s.cell_stride]);
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) state.add(v[u], p + u * step);  // in tap order
        }
        for (; p < last; p += step) state.add(static_cast<acc_t>(plane[p * s.cell_stride]), p);
      } else {  // per-sample extents or gaps between rows: the cell's (d, h, w)
        const auto eh = static_cast<index_t>(extent(g, 1, n));
        const auto ew = static_cast<index_t>(extent(g, 2, n));
        const int64_t cells = extent(g, 0, n) * eh * ew;
        const int64_t per_chunk = (cells + s.chunks - 1) / s.chunks;
        const auto last = static_cast<index_t>(min64((chunk + 1) * per_chunk, cells));
        for (auto p = static_cast<index_t>(chunk * per_chunk + part); p < last; p += s.parts) {
          const index_t x = p % ew, rest = p / ew, h = rest % eh, d = rest / eh;
          state.add(static_cast<acc_t>(plane[d * st[0] + h * st[1] + x * st[2]]),
                    encode_tap(g, d, h, x));
        }
      }
    }
    joined[threadIdx.x] = state;
    __syncthreads();
    for (int half = s.parts / 2; half > 0; half /= 2) {
      if (part < half) joined[threadIdx.x].merge(joined[threadIdx.x + half * s.part_step]);
      __syncthreads();
    }
    if (part == 0 && q < planes) {
      if (s.chunks == 1) {
        output(q / channels, q % channels, joined[threadIdx.x]);
      } else {
        partial[static_cast<int64_t>(q) * s.chunks + chunk] = joined[threadIdx.x];
      }
    }
    __syncthreads();  // `joined` is reused by the block's next turn
  }
}

template <typename State, typename Output>
__global__ void global_join_kernel(int64_t planes, int64_t channels, int64_t chunks,
                                   const State* __restrict__ partial, Output output) {
  for (int64_t q = first_element<int64_t>(); q < planes; q += element_step<int64_t>()) {
    State state = partial[q * chunks];
    for (int64_t j = 1; j < chunks; ++j) state.merge(partial[q * chunks + j]);
    output(q / channels, q % channels, state);
  }
}

template <typename scalar_t, typename State, typename Output>
void global_reduce(const PoolGeometry& g, const at::Tensor& in, const Output& output) {
  const Layout5 vi = layout_of(in);
  const GlobalSplit s = global_split(g, in);
  const int64_t planes = vi.size[0] * vi.size[1];
  at::Tensor partial;
  State* partial_ptr = nullptr;
  if (s.chunks > 1) {
    partial = at::empty({planes * s.chunks * static_cast<int64_t>(sizeof(State))},
                        in.options().dtype(at::kByte));
    partial_ptr = reinterpret_cast<State*>(partial.mutable_data_ptr<uint8_t>());
  }
  const auto l = launch_for(in, planes);
  const dim3 grid(static_cast<unsigned>(std::min(s.groups * s.chunks, kMaxBlocks)));
  // Block, plane and cell numbers (plus a step of every thread) fit in int32?
  dispatch_index(std::max({s.groups * s.chunks, planes, vi.pixels() + kUnroll * kThreads}),
                 [&](auto index_tag) {
    global_reduce_kernel<scalar_t, State, Output, decltype(index_tag)>
        <<<grid, dim3(kThreads), 0, l.stream>>>(g, vi, s, in.const_data_ptr<scalar_t>(),
                                                partial_ptr, output);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (s.chunks > 1) {
    global_join_kernel<State, Output><<<l.grid, l.block, 0, l.stream>>>(planes, vi.size[1], s.chunks,
                                                                        partial_ptr, output);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

struct CudaKernels {
  static void max_forward(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out,
                          const at::Tensor& taps) {
    const c10::cuda::CUDAGuard guard(in.device());
    if (is_global(g)) {
      POOL_EXT_DISPATCH(in.scalar_type(), "max_pool_cuda", [&] {
        dispatch_taps(taps, [&](auto tap_tag) {
          using tap_t = decltype(tap_tag);
          using Output = MaxOutput<scalar_t, tap_t>;
          const bool values_only = !taps.defined();
          global_reduce<scalar_t, MaxState<at::opmath_type<scalar_t>>>(
              g, in,
              Output{layout_of(out), layout_of(values_only ? out : taps),
                     out.mutable_data_ptr<scalar_t>(),
                     values_only ? nullptr : taps.mutable_data_ptr<tap_t>()});
        });
      });
      return;
    }
    const DeviceTables tables(g, in);
    const int64_t total = out.numel();
    const auto l = launch_for(out, total);
    POOL_EXT_DISPATCH(in.scalar_type(), "max_pool_cuda", [&] {
      dispatch_taps(taps, [&](auto tap_tag) {
        dispatch_index(total, [&](auto index_tag) {
          using tap_t = decltype(tap_tag);
          using index_t = decltype(index_tag);
          const bool values_only = !taps.defined();
          max_forward_kernel<scalar_t, tap_t, index_t><<<l.grid, l.block, 0, l.stream>>>(
              g, tables.view, layout_of(in), layout_of(out), layout_of(values_only ? out : taps),
              channels_last(out), static_cast<index_t>(total), in.const_data_ptr<scalar_t>(),
              out.mutable_data_ptr<scalar_t>(),
              values_only ? nullptr : taps.mutable_data_ptr<tap_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    });
  }

  static void max_backward(const PoolGeometry& g, const at::Tensor& grad_out,
                           const at::Tensor& taps, const at::Tensor& grad_in) {
    const c10::cuda::CUDAGuard guard(grad_in.device());
    const DeviceTables tables(g, grad_in);
    const int64_t total = grad_in.numel();
    const auto l = launch_for(grad_in, total);
    POOL_EXT_DISPATCH(grad_in.scalar_type(), "max_pool_backward_cuda", [&] {
      dispatch_taps(taps, [&](auto tap_tag) {
        dispatch_index(total, [&](auto index_tag) {
          using tap_t = decltype(tap_tag);
          using index_t = decltype(index_tag);
          max_backward_kernel<scalar_t, tap_t, index_t><<<l.grid, l.block, 0, l.stream>>>(
              g, tables.view, layout_of(grad_out), layout_of(taps), layout_of(grad_in),
              channels_last(grad_in), static_cast<index_t>(total),
              grad_out.const_data_ptr<scalar_t>(), taps.const_data_ptr<tap_t>(),
              grad_in.mutable_data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    });
  }

  static void max_indices(const PoolGeometry& g, const at::Tensor& taps,
                          const at::Tensor& indices) {
    const c10::cuda::CUDAGuard guard(taps.device());
    const DeviceTables tables(g, taps);
    const int64_t total = indices.numel();
    const auto l = launch_for(indices, total);
    dispatch_taps(taps, [&](auto tap_tag) {
      dispatch_index(total, [&](auto index_tag) {
        using tap_t = decltype(tap_tag);
        using index_t = decltype(index_tag);
        max_indices_kernel<tap_t, index_t><<<l.grid, l.block, 0, l.stream>>>(
            g, tables.view, layout_of(taps), layout_of(indices), channels_last(indices),
            static_cast<index_t>(total), taps.const_data_ptr<tap_t>(),
            indices.mutable_data_ptr<int64_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }

  static void avg_forward(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out) {
    const c10::cuda::CUDAGuard guard(in.device());
    if (is_global(g)) {
      POOL_EXT_DISPATCH(in.scalar_type(), "avg_pool_cuda", [&] {
        global_reduce<scalar_t, SumState<at::opmath_type<scalar_t>>>(
            g, in, AvgOutput<scalar_t>{g, layout_of(out), out.mutable_data_ptr<scalar_t>()});
      });
      return;
    }
    const DeviceTables tables(g, in);
    const int64_t total = out.numel();
    const auto l = launch_for(out, total);
    POOL_EXT_DISPATCH(in.scalar_type(), "avg_pool_cuda", [&] {
      dispatch_index(total, [&](auto index_tag) {
        using index_t = decltype(index_tag);
        avg_forward_kernel<scalar_t, index_t><<<l.grid, l.block, 0, l.stream>>>(
            g, tables.view, layout_of(in), layout_of(out), channels_last(out),
            static_cast<index_t>(total), in.const_data_ptr<scalar_t>(),
            out.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }

  static void avg_backward(const PoolGeometry& g, const at::Tensor& grad_out,
                           const at::Tensor& grad_in) {
    const c10::cuda::CUDAGuard guard(grad_in.device());
    const DeviceTables tables(g, grad_in);
    const int64_t total = grad_in.numel();
    const auto l = launch_for(grad_in, total);
    POOL_EXT_DISPATCH(grad_in.scalar_type(), "avg_pool_backward_cuda", [&] {
      dispatch_index(total, [&](auto index_tag) {
        using index_t = decltype(index_tag);
        avg_backward_kernel<scalar_t, index_t><<<l.grid, l.block, 0, l.stream>>>(
            g, tables.view, layout_of(grad_out), layout_of(grad_in), channels_last(grad_in),
            static_cast<index_t>(total), grad_out.const_data_ptr<scalar_t>(),
            grad_in.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
};

}  // namespace
}  // namespace pool_ext

TORCH_LIBRARY_IMPL(pool_ext, CUDA, m) {
  pool_ext::register_ops<pool_ext::CudaKernels>(m);
}
