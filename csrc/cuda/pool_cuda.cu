// CUDA kernels: one thread per output (forward) or per input cell (backward),
// each a thin loop around the element functions of pool.h that the CPU
// kernels run too. Threads walk elements in memory order (channels fastest
// for channels-last), so neighbouring threads touch neighbouring memory.
// Backward kernels gather: no atomics, bit-identical gradients.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../pool_ops.h"

namespace pool_ext {
namespace {

constexpr int kThreads = 256;
// Past this many blocks the kernels loop (grid-stride) instead.
constexpr int64_t kMaxBlocks = int64_t{1} << 20;

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

__device__ __forceinline__ int64_t first_element() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t element_step() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

template <typename scalar_t, typename tap_t>
__global__ void max_forward_kernel(PoolGeometry g, Layout5 vi, Layout5 vo, Layout5 vt, bool cl,
                                   int64_t total, const scalar_t* __restrict__ in,
                                   scalar_t* __restrict__ out, tap_t* __restrict__ taps) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t e = first_element(); e < total; e += element_step()) {
    int64_t n, c, o[kDims];
    unflatten_element(e, vo, cl, &n, &c, o);
    Window w[kDims];
    windows_at(g, n, o, w);
    int64_t tap;
    const acc_t best = window_max<scalar_t, acc_t>(g, w, in + vi.offset(n, c, 0, 0, 0),
                                                   vi.spatial_strides(), &tap);
    out[vo.offset(n, c, o[0], o[1], o[2])] = static_cast<scalar_t>(best);
    taps[vt.offset(n, c, o[0], o[1], o[2])] = static_cast<tap_t>(tap);
  }
}

template <typename scalar_t>
__global__ void avg_forward_kernel(PoolGeometry g, Layout5 vi, Layout5 vo, bool cl, int64_t total,
                                   const scalar_t* __restrict__ in, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t e = first_element(); e < total; e += element_step()) {
    int64_t n, c, o[kDims];
    unflatten_element(e, vo, cl, &n, &c, o);
    Window w[kDims];
    windows_at(g, n, o, w);
    const acc_t sum =
        window_sum<scalar_t, acc_t>(w, in + vi.offset(n, c, 0, 0, 0), vi.spatial_strides());
    out[vo.offset(n, c, o[0], o[1], o[2])] =
        static_cast<scalar_t>(sum / static_cast<acc_t>(avg_divisor(g, w, o)));
  }
}

template <typename scalar_t, typename tap_t>
__global__ void max_backward_kernel(PoolGeometry g, Layout5 vo, Layout5 vt, Layout5 vg, bool cl,
                                    int64_t total, const scalar_t* __restrict__ grad,
                                    const tap_t* __restrict__ taps,
                                    scalar_t* __restrict__ grad_in) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t e = first_element(); e < total; e += element_step()) {
    int64_t n, c, i[kDims];
    unflatten_element(e, vg, cl, &n, &c, i);
    const acc_t sum = max_grad_at<scalar_t, tap_t, acc_t>(
        g, n, i, grad + vo.offset(n, c, 0, 0, 0), vo.spatial_strides(),
        taps + vt.offset(n, c, 0, 0, 0), vt.spatial_strides());
    grad_in[vg.offset(n, c, i[0], i[1], i[2])] = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t>
__global__ void avg_backward_kernel(PoolGeometry g, Layout5 vo, Layout5 vg, bool cl, int64_t total,
                                    const scalar_t* __restrict__ grad,
                                    scalar_t* __restrict__ grad_in) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t e = first_element(); e < total; e += element_step()) {
    int64_t n, c, i[kDims];
    unflatten_element(e, vg, cl, &n, &c, i);
    const acc_t sum = avg_grad_at<scalar_t, acc_t>(g, n, i, grad + vo.offset(n, c, 0, 0, 0),
                                                   vo.spatial_strides());
    grad_in[vg.offset(n, c, i[0], i[1], i[2])] = static_cast<scalar_t>(sum);
  }
}

template <typename tap_t>
__global__ void max_indices_kernel(PoolGeometry g, Layout5 vt, Layout5 vx, bool cl, int64_t total,
                                   const tap_t* __restrict__ taps, int64_t* __restrict__ indices) {
  for (int64_t e = first_element(); e < total; e += element_step()) {
    int64_t n, c, o[kDims];
    unflatten_element(e, vx, cl, &n, &c, o);
    Window w[kDims];
    windows_at(g, n, o, w);
    indices[vx.offset(n, c, o[0], o[1], o[2])] =
        tap_to_index(g, w, static_cast<int64_t>(taps[vt.offset(n, c, o[0], o[1], o[2])]));
  }
}

struct CudaKernels {
  static void max_forward(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out,
                          const at::Tensor& taps) {
    const c10::cuda::CUDAGuard guard(in.device());
    const auto l = launch_for(out, out.numel());
    POOL_EXT_DISPATCH(in.scalar_type(), "max_pool_cuda", [&] {
      dispatch_taps(taps, [&](auto tap_tag) {
        using tap_t = decltype(tap_tag);
        max_forward_kernel<scalar_t, tap_t><<<l.grid, l.block, 0, l.stream>>>(
            g, layout_of(in), layout_of(out), layout_of(taps), channels_last(out), out.numel(),
            in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
            taps.mutable_data_ptr<tap_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }

  static void max_backward(const PoolGeometry& g, const at::Tensor& grad_out,
                           const at::Tensor& taps, const at::Tensor& grad_in) {
    const c10::cuda::CUDAGuard guard(grad_in.device());
    const auto l = launch_for(grad_in, grad_in.numel());
    POOL_EXT_DISPATCH(grad_in.scalar_type(), "max_pool_backward_cuda", [&] {
      dispatch_taps(taps, [&](auto tap_tag) {
        using tap_t = decltype(tap_tag);
        max_backward_kernel<scalar_t, tap_t><<<l.grid, l.block, 0, l.stream>>>(
            g, layout_of(grad_out), layout_of(taps), layout_of(grad_in), channels_last(grad_in),
            grad_in.numel(), grad_out.const_data_ptr<scalar_t>(), taps.const_data_ptr<tap_t>(),
            grad_in.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }

  static void max_indices(const PoolGeometry& g, const at::Tensor& taps,
                          const at::Tensor& indices) {
    const c10::cuda::CUDAGuard guard(taps.device());
    const auto l = launch_for(indices, indices.numel());
    dispatch_taps(taps, [&](auto tap_tag) {
      using tap_t = decltype(tap_tag);
      max_indices_kernel<tap_t><<<l.grid, l.block, 0, l.stream>>>(
          g, layout_of(taps), layout_of(indices), channels_last(indices), indices.numel(),
          taps.const_data_ptr<tap_t>(), indices.mutable_data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void avg_forward(const PoolGeometry& g, const at::Tensor& in, const at::Tensor& out) {
    const c10::cuda::CUDAGuard guard(in.device());
    const auto l = launch_for(out, out.numel());
    POOL_EXT_DISPATCH(in.scalar_type(), "avg_pool_cuda", [&] {
      avg_forward_kernel<scalar_t><<<l.grid, l.block, 0, l.stream>>>(
          g, layout_of(in), layout_of(out), channels_last(out), out.numel(),
          in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void avg_backward(const PoolGeometry& g, const at::Tensor& grad_out,
                           const at::Tensor& grad_in) {
    const c10::cuda::CUDAGuard guard(grad_in.device());
    const auto l = launch_for(grad_in, grad_in.numel());
    POOL_EXT_DISPATCH(grad_in.scalar_type(), "avg_pool_backward_cuda", [&] {
      avg_backward_kernel<scalar_t><<<l.grid, l.block, 0, l.stream>>>(
          g, layout_of(grad_out), layout_of(grad_in), channels_last(grad_in), grad_in.numel(),
          grad_out.const_data_ptr<scalar_t>(), grad_in.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

}  // namespace
}  // namespace pool_ext

TORCH_LIBRARY_IMPL(pool_ext, CUDA, m) {
  pool_ext::register_ops<pool_ext::CudaKernels>(m);
}
