// Every schema of the pool_ext namespace. Backends register their kernels in
// their own files (csrc/cpu, csrc/cuda).
//
// Tensors are (N, C, *spatial) with 1 to 3 spatial dims. Max pooling returns
// the output and its `taps`: the position of each max inside its window
// (uint8 when windows have at most 256 taps, else int64), which is all its
// backward needs; `_*_indices` turns taps into torch's flat indices. Those
// take int64 taps whatever the window, which adaptive_max_pool makes with
// `long_taps`: a graph traced over symbolic sizes cannot know its windows,
// and the taps' dtype would otherwise guard the sizes.
// `_max_pool_values` and `_adaptive_max_pool_values` are the inference
// forwards: the values alone, with no taps to find or write (functional.py
// takes them when no gradient is needed). An adaptive output_size of -1
// keeps that input extent (torch's None), resolved here rather than in
// Python so that traced and compiled graphs follow the input's size.
// `_*_autograd` are the differentiable forwards with their derivative taken
// in C++ (autograd.cpp): what pool_ext.functional calls in plain eager mode.
#include <Python.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

// Lets `import pool_ext._C` load this library (and run the registrations)
// without pybind11, under the limited API.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(pool_ext, m) {
  m.def(
      "max_pool(Tensor self, int[] kernel_size, int[] stride, int[] padding, int[] dilation, "
      "bool ceil_mode, bool same) -> (Tensor, Tensor)");
  m.def(
      "_max_pool_values(Tensor self, int[] kernel_size, int[] stride, int[] padding, "
      "int[] dilation, bool ceil_mode, bool same) -> Tensor");
  m.def(
      "_max_pool_backward(Tensor grad_output, Tensor self, Tensor taps, int[] kernel_size, "
      "int[] stride, int[] padding, int[] dilation, bool ceil_mode, bool same) -> Tensor");
  m.def(
      "_max_pool_indices(Tensor self, Tensor taps, int[] kernel_size, int[] stride, "
      "int[] padding, int[] dilation, bool ceil_mode, bool same) -> Tensor");
  m.def(
      "avg_pool(Tensor self, int[] kernel_size, int[] stride, int[] padding, bool ceil_mode, "
      "bool same, bool count_include_pad, int? divisor_override) -> Tensor");
  m.def(
      "_avg_pool_backward(Tensor grad_output, Tensor self, int[] kernel_size, int[] stride, "
      "int[] padding, bool ceil_mode, bool same, bool count_include_pad, "
      "int? divisor_override) -> Tensor");
  m.def(
      "adaptive_max_pool(Tensor self, int[] output_size, Tensor? sizes, bool long_taps=False) "
      "-> (Tensor, Tensor)");
  m.def("_adaptive_max_pool_values(Tensor self, int[] output_size, Tensor? sizes) -> Tensor");
  m.def(
      "_adaptive_max_pool_backward(Tensor grad_output, Tensor self, Tensor taps, "
      "int[] output_size, Tensor? sizes) -> Tensor");
  m.def(
      "_adaptive_max_pool_indices(Tensor self, Tensor taps, int[] output_size, "
      "Tensor? sizes) -> Tensor");
  m.def("adaptive_avg_pool(Tensor self, int[] output_size, Tensor? sizes) -> Tensor");
  m.def(
      "_adaptive_avg_pool_backward(Tensor grad_output, Tensor self, int[] output_size, "
      "Tensor? sizes) -> Tensor");
  m.def(
      "_max_pool_autograd(Tensor self, int[] kernel_size, int[] stride, int[] padding, "
      "int[] dilation, bool ceil_mode, bool same) -> (Tensor, Tensor)");
  m.def(
      "_avg_pool_autograd(Tensor self, int[] kernel_size, int[] stride, int[] padding, "
      "bool ceil_mode, bool same, bool count_include_pad, int? divisor_override) -> Tensor");
  m.def(
      "_adaptive_max_pool_autograd(Tensor self, int[] output_size, Tensor? sizes, "
      "bool long_taps=False) -> (Tensor, Tensor)");
  m.def("_adaptive_avg_pool_autograd(Tensor self, int[] output_size, Tensor? sizes) -> Tensor");
}

// The inference forwards have no derivative (pool_ext/_meta.py gives the
// others theirs): an input that needs one fails at backward, naming the op,
// instead of torch's default of a warning and no gradient.
TORCH_LIBRARY_IMPL(pool_ext, Autograd, m) {
  m.impl("_max_pool_values", torch::autograd::autogradNotImplementedFallback());
  m.impl("_adaptive_max_pool_values", torch::autograd::autogradNotImplementedFallback());
}
