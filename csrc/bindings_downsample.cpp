// diffrt._C bindings of the downsampling-conv conditioning kernel. Tensors arrive as data pointers
// plus sizes and strides; python/diffrt/ops/downsample.py validates them first.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>

#include "cpu/downsample_kernels.h"

namespace py = pybind11;

namespace {

void downsample_cond(int dtype, int64_t batch, int64_t image_channels, int64_t mask_channels, int64_t height,
                     int64_t width, uintptr_t image, uintptr_t mask, int64_t mask_batch_stride, uintptr_t weight,
                     uintptr_t bias, int64_t out_channels, int64_t kernel_size, int64_t stride, int64_t padding,
                     uintptr_t out, int64_t out_batch_stride, int64_t out_channel_stride, int64_t channel_offset,
                     int num_threads) {
  using diffrt::DType;
  if (dtype != int(DType::f32) && dtype != int(DType::bf16)) throw std::invalid_argument("unsupported dtype code");
  if (kernel_size < 1 || stride < 1 || padding < 0 || height + 2 * padding < kernel_size ||
      width + 2 * padding < kernel_size)
    throw std::invalid_argument("kernel_size, stride and padding do not fit the image");
  diffrt::DownsampleCondArgs a{};
  a.dtype = DType(dtype);
  a.batch = batch;
  a.image_channels = image_channels;
  a.mask_channels = mask_channels;
  a.height = height;
  a.width = width;
  a.image = reinterpret_cast<const void*>(image);
  a.mask = reinterpret_cast<const void*>(mask);
  a.mask_batch_stride = mask_batch_stride;
  a.weight = reinterpret_cast<const void*>(weight);
  a.bias = reinterpret_cast<const void*>(bias);
  a.out_channels = out_channels;
  a.kernel_size = kernel_size;
  a.stride = stride;
  a.padding = padding;
  a.out_height = (height + 2 * padding - kernel_size) / stride + 1;
  a.out_width = (width + 2 * padding - kernel_size) / stride + 1;
  a.out = reinterpret_cast<void*>(out);
  a.out_batch_stride = out_batch_stride;
  a.out_channel_stride = out_channel_stride;
  a.channel_offset = channel_offset;
  a.num_threads = num_threads;
  diffrt::cpu::downsample_kernels().downsample_cond(a);
}

}  // namespace

void bind_downsample(py::module_& m) {
  m.def("downsample_cond", &downsample_cond, py::call_guard<py::gil_scoped_release>(),
        "Strided conv of [image | mask] into out[:, channel_offset : channel_offset + C] (see diffrt.ops.downsample_cond).");
}
