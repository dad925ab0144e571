// CUDA kernels: one thread per output (forward) or per input cell
// (backward), in V channels of it where the channel count allows
// (pool_kernels.h's channel_lanes: 16-byte packs of neighbouring channels
// channels-last, else channels a plane apart), each a thin loop around the
// element functions of pool_kernels.h (over pool.h's arithmetic, which the
// CPU kernels run too; the tests run the element functions themselves on the
// host). Threads walk elements in memory order (channels fastest for
// channels-last), so neighbouring threads touch neighbouring memory.
// Windows and covering spans come from per-dim tables filled by a first small
// kernel, and element numbers are split in 32 bits where the tensor allows,
// by multiplications the host prepares (ElementSplit): the hot loops divide
// only to place a cell in a dilated window. Backward kernels gather: no
// atomics, bit-identical gradients.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAMacros.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <limits>

#include "../pool_kernels.h"
#include "../pool_ops.h"

namespace pool_ext {
namespace {

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
  return pool_ext::channels_last(layout_of(t5));
}

// SMs of t's GPU (asked once a device).
int multiprocessors(const at::Tensor& t) {
  static std::atomic<int> counts[C10_COMPILE_TIME_MAX_GPUS];  // 0: not asked yet
  const int device = t.device().index();
  int count = counts[device].load(std::memory_order_relaxed);
  if (count == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    counts[device].store(count, std::memory_order_relaxed);
  }
  return count;
}

// Calls launch(lanes, packed, split, total, l) for a window kernel writing
// `written` and touching `tensors` (pool_kernels.h's channel_lanes: V
// channels an element, packed or not, as std::integral_constant lanes and
// std::bool_constant packed), over `total` elements numbered in index_t and
// split by `split`, an ElementSplit<index_t> of `written`, then checks the
// launch.
template <typename scalar_t, typename F>
void launch_window_kernel(const at::Tensor& written, std::initializer_list<at::Tensor> tensors,
                          const F& launch) {
  // POOL_EXT_CUDA_NCHW_LANES=0 turns lanes apart off (packs stay), for a
  // benchmark to compare the two in one build (benchmarks/gpu_check.sh).
  static const bool apart = !env_is("POOL_EXT_CUDA_NCHW_LANES", "0");
  const int64_t resident = kBlocksPerSM * kThreads * multiprocessors(written);
  const ChannelLanes l = channel_lanes<scalar_t>(
      tensors, written.numel(), apart ? resident : std::numeric_limits<int64_t>::max());
  dispatch_lanes<scalar_t>(l, [&](auto lanes, auto packed) {
    constexpr int V = decltype(lanes)::value;
    const int64_t total = written.numel() / V;
    dispatch_index(total, [&](auto index_tag) {
      const ElementSplit<decltype(index_tag)> split(layout_of(written), channels_last(written), V);
      launch(lanes, packed, split, total, launch_for(written, total));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

// The index type of an ElementSplit argument of a launch.
template <typename Split>
using split_index_t = typename Split::index_type;

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

  DeviceTables(const PoolGeometry& g, const at::Tensor& like)
      : view(table_layout(g, like.size(0))) {
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

template <int V, bool P, typename scalar_t, typename tap_t, typename index_t>
__global__ void max_forward_kernel(PoolGeometry g, PoolTables t, Layout5 vi, Layout5 vo,
                                   Layout5 vt, ElementSplit<index_t> split, index_t total,
                                   const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                   tap_t* __restrict__ taps) {
  for (index_t e = first_element<index_t>(); e < total; e += element_step<index_t>()) {
    max_forward_element<V, P, scalar_t, tap_t, index_t>(g, t, vi, vo, vt, split, e, in, out,
                                                        taps);
  }
}

template <int V, bool P, typename scalar_t, typename index_t>
__global__ void avg_forward_kernel(PoolGeometry g, PoolTables t, Layout5 vi, Layout5 vo,
                                   ElementSplit<index_t> split, index_t total,
                                   const scalar_t* __restrict__ in,
                                   scalar_t* __restrict__ out) {
  for (index_t e = first_element<index_t>(); e < total; e += element_step<index_t>()) {
    avg_forward_element<V, P, scalar_t, index_t>(g, t, vi, vo, split, e, in, out);
  }
}

template <int V, bool P, typename scalar_t, typename tap_t, typename index_t>
__global__ void max_backward_kernel(PoolGeometry g, PoolTables t, Layout5 vo, Layout5 vt,
                                    Layout5 vg, ElementSplit<index_t> split, index_t total,
                                    const scalar_t* __restrict__ grad,
                                    const tap_t* __restrict__ taps,
                                    scalar_t* __restrict__ grad_in) {
  for (index_t e = first_element<index_t>(); e < total; e += element_step<index_t>()) {
    max_backward_element<V, P, scalar_t, tap_t, index_t>(g, t, vo, vt, vg, split, e, grad, taps,
                                                         grad_in);
  }
}

template <int V, bool P, typename scalar_t, typename index_t>
__global__ void avg_backward_kernel(PoolGeometry g, PoolTables t, Layout5 vo, Layout5 vg,
                                    ElementSplit<index_t> split, index_t total,
                                    const scalar_t* __restrict__ grad,
                                    scalar_t* __restrict__ grad_in) {
  for (index_t e = first_element<index_t>(); e < total; e += element_step<index_t>()) {
    avg_backward_element<V, P, scalar_t, index_t>(g, t, vo, vg, split, e, grad, grad_in);
  }
}

template <typename tap_t, typename index_t>
__global__ void max_indices_kernel(PoolGeometry g, PoolTables t, Layout5 vt, Layout5 vx,
                                   ElementSplit<index_t> split, index_t total,
                                   const tap_t* __restrict__ taps,
                                   int64_t* __restrict__ indices) {
  for (index_t e = first_element<index_t>(); e < total; e += element_step<index_t>()) {
    max_indices_element<tap_t, index_t>(g, t, vt, vx, split, e, taps, indices);
  }
}

// Global pooling (see pool_kernels.h): blocks of kGlobalThreads scan, a tree
// in shared memory joins each plane's threads.

template <typename scalar_t, typename State, typename Output, typename index_t>
__global__ void __launch_bounds__(kGlobalThreads)
    global_reduce_kernel(PoolGeometry g, Layout5 vi, GlobalSplit s, const scalar_t* __restrict__ in,
                         State* __restrict__ partial, Output output) {
  __shared__ State joined[kGlobalThreads];
  const auto channels = static_cast<index_t>(vi.size[1]);
  const auto planes = static_cast<index_t>(vi.size[0]) * channels;
  const auto chunks = static_cast<index_t>(s.chunks);
  for (index_t b = blockIdx.x; b < static_cast<index_t>(s.groups) * chunks; b += gridDim.x) {
    // (the loop is uniform per block: every thread meets the barriers below)
    index_t q;
    joined[threadIdx.x] = global_scan<scalar_t, State, index_t>(g, vi, s, b, threadIdx.x, in, &q);
    __syncthreads();
    for (int half = s.parts / 2; half > 0; half /= 2) {
      global_tree_step(s, joined, threadIdx.x, half);
      __syncthreads();
    }
    global_finish(s, threadIdx.x, channels, planes, q, b % chunks, joined[threadIdx.x], partial,
                  output);
    __syncthreads();  // `joined` is reused by the block's next turn
  }
}

template <typename State, typename Output>
__global__ void global_join_kernel(int64_t planes, int64_t channels, int64_t chunks,
                                   const State* __restrict__ partial, Output output) {
  for (int64_t q = first_element<int64_t>(); q < planes; q += element_step<int64_t>()) {
    global_join(q, channels, chunks, partial, output);
  }
}

template <typename scalar_t, typename Output>
void global_reduce(const PoolGeometry& g, const at::Tensor& in, const Output& output) {
  using State = typename Output::State;
  const Layout5 vi = layout_of(in);
  const GlobalSplit s = global_split(g, vi, channels_last(in), multiprocessors(in));
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
        <<<grid, dim3(kGlobalThreads), 0, l.stream>>>(g, vi, s, in.const_data_ptr<scalar_t>(),
                                                      partial_ptr, output);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (s.chunks > 1) {
    global_join_kernel<State, Output>
        <<<l.grid, l.block, 0, l.stream>>>(planes, vi.size[1], s.chunks, partial_ptr, output);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// Whether global pooling g of `in` takes the block reduction: always, but
// for small planes where POOL_EXT_CUDA_GLOBAL_WINDOWS=1 (read once) sends
// them to the window kernels, to compare the two in one build
// (benchmarks/gpu_check.sh; pool_kernels.h's kWindowGlobalCells).
bool by_reduction(const PoolGeometry& g, const at::Tensor& in) {
  static const bool windows = env_is("POOL_EXT_CUDA_GLOBAL_WINDOWS", "1");
  return pool_ext::by_reduction(g, layout_of(in), windows);
}

struct CudaKernels {
  // Not while self's stream captures a CUDA graph: the copy would sync it
  // (an error there), and a graph replays with other sizes anyway.
  static bool sizes_readable(const at::Tensor& self) {
    // (self's device current: its legacy default stream is the current device's)
    const c10::cuda::CUDAGuard guard(self.device());
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    C10_CUDA_CHECK(
        cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(self.device().index()), &status));
    return status == cudaStreamCaptureStatusNone;
  }

  static void max_forward(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out,
                          const at::Tensor& taps) {
    const c10::cuda::CUDAGuard guard(in.device());
    if (by_reduction(g, in)) {
      POOL_EXT_DISPATCH(in.scalar_type(), "max_pool_cuda", [&] {
        dispatch_taps(taps, [&](auto tap_tag) {
          using tap_t = decltype(tap_tag);
          using Output = MaxOutput<scalar_t, tap_t>;
          const bool values_only = !taps.defined();
          global_reduce<scalar_t>(
              g, in,
              Output{layout_of(out), layout_of(values_only ? out : taps),
                     out.mutable_data_ptr<scalar_t>(),
                     values_only ? nullptr : taps.mutable_data_ptr<tap_t>()});
        });
      });
      return;
    }
    const DeviceTables tables(g, in);
    POOL_EXT_DISPATCH(in.scalar_type(), "max_pool_cuda", [&] {
      dispatch_taps(taps, [&](auto tap_tag) {
        using tap_t = decltype(tap_tag);
        const bool values_only = !taps.defined();
        const auto launch = [&](auto lanes, auto packed, const auto& split, int64_t total,
                                const Launch& l) {
          using index_t = split_index_t<std::decay_t<decltype(split)>>;
          max_forward_kernel<decltype(lanes)::value, decltype(packed)::value, scalar_t, tap_t,
                             index_t><<<l.grid, l.block, 0, l.stream>>>(
                  g, tables.view, layout_of(in), layout_of(out),
                  layout_of(values_only ? out : taps), split, static_cast<index_t>(total),
                  in.const_data_ptr<scalar_t>(),
                  out.mutable_data_ptr<scalar_t>(),
                  values_only ? nullptr : taps.mutable_data_ptr<tap_t>());
        };
        launch_window_kernel<scalar_t>(out, {in, out, taps}, launch);
      });
    });
  }

  static void max_backward(const PoolGeometry& g, const at::Tensor& grad_out,
                           const at::Tensor& taps, const at::Tensor& grad_in) {
    const c10::cuda::CUDAGuard guard(grad_in.device());
    const DeviceTables tables(g, grad_in);
    POOL_EXT_DISPATCH(grad_in.scalar_type(), "max_pool_backward_cuda", [&] {
      dispatch_taps(taps, [&](auto tap_tag) {
        using tap_t = decltype(tap_tag);
        const auto launch = [&](auto lanes, auto packed, const auto& split, int64_t total,
                                const Launch& l) {
          using index_t = split_index_t<std::decay_t<decltype(split)>>;
          max_backward_kernel<decltype(lanes)::value, decltype(packed)::value, scalar_t, tap_t,
                              index_t><<<l.grid, l.block, 0, l.stream>>>(
                  g, tables.view, layout_of(grad_out), layout_of(taps), layout_of(grad_in), split,
                  static_cast<index_t>(total),
                  grad_out.const_data_ptr<scalar_t>(), taps.const_data_ptr<tap_t>(),
                  grad_in.mutable_data_ptr<scalar_t>());
        };
        launch_window_kernel<scalar_t>(grad_in, {grad_out, taps, grad_in}, launch);
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
            g, tables.view, layout_of(taps), layout_of(indices),
            ElementSplit<index_t>(layout_of(indices), channels_last(indices), 1),
            static_cast<index_t>(total), taps.const_data_ptr<tap_t>(),
            indices.mutable_data_ptr<int64_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }

  static void avg_forward(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out) {
    const c10::cuda::CUDAGuard guard(in.device());
    if (by_reduction(g, in)) {
      POOL_EXT_DISPATCH(in.scalar_type(), "avg_pool_cuda", [&] {
        global_reduce<scalar_t>(
            g, in, AvgOutput<scalar_t>{g, layout_of(out), out.mutable_data_ptr<scalar_t>()});
      });
      return;
    }
    const DeviceTables tables(g, in);
    POOL_EXT_DISPATCH(in.scalar_type(), "avg_pool_cuda", [&] {
      const auto launch = [&](auto lanes, auto packed, const auto& split, int64_t total,
                                const Launch& l) {
        using index_t = split_index_t<std::decay_t<decltype(split)>>;
        avg_forward_kernel<decltype(lanes)::value, decltype(packed)::value, scalar_t, index_t>
            <<<l.grid, l.block, 0, l.stream>>>(
                g, tables.view, layout_of(in), layout_of(out), split, static_cast<index_t>(total),
                in.const_data_ptr<scalar_t>(),
                out.mutable_data_ptr<scalar_t>());
      };
      launch_window_kernel<scalar_t>(out, {in, out}, launch);
    });
  }

  static void avg_backward(const PoolGeometry& g, const at::Tensor& grad_out,
                           const at::Tensor& grad_in) {
    const c10::cuda::CUDAGuard guard(grad_in.device());
    const DeviceTables tables(g, grad_in);
    POOL_EXT_DISPATCH(grad_in.scalar_type(), "avg_pool_backward_cuda", [&] {
      const auto launch = [&](auto lanes, auto packed, const auto& split, int64_t total,
                                const Launch& l) {
        using index_t = split_index_t<std::decay_t<decltype(split)>>;
        avg_backward_kernel<decltype(lanes)::value, decltype(packed)::value, scalar_t, index_t>
            <<<l.grid, l.block, 0, l.stream>>>(
                g, tables.view, layout_of(grad_out), layout_of(grad_in), split,
                static_cast<index_t>(total), grad_out.const_data_ptr<scalar_t>(),
                grad_in.mutable_data_ptr<scalar_t>());
      };
      launch_window_kernel<scalar_t>(grad_in, {grad_out, grad_in}, launch);
    });
  }
};

}  // namespace
}  // namespace pool_ext

TORCH_LIBRARY_IMPL(pool_ext, CUDA, m) {
  pool_ext::register_ops<pool_ext::CudaKernels>(m);
}
