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

struct CudaKernels {
  static void max_forward(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out,
                          const at::Tensor& taps) {
    const c10::cuda::CUDAGuard guard(in.device());
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
