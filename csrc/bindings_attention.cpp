// Python bindings of the fused attention kernels. python/diffrt/ops/attention.py validates the tensors and
// passes data pointers (ints), sizes and element strides; every call releases the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <stdexcept>

#include "attention.h"
#include "cpu/attention_kernels.h"
#if defined(DIFFRT_WITH_CUDA)
#include "cuda/attention_kernels.h"
#endif

namespace py = pybind11;
using namespace diffrt;

namespace {

using Strides = std::array<int64_t, 3>;  // batch, head, row (in elements; the head dim is dense)

HeadStrides to_strides(const Strides& s) { return HeadStrides{s[0], s[1], s[2]}; }

DType attention_dtype(int code) {
  if (code != int(DType::f32) && code != int(DType::bf16)) throw std::invalid_argument("unsupported dtype code");
  return DType(code);
}

template <typename P>
P* ptr(uintptr_t p) {
  return reinterpret_cast<P*>(p);
}

AttentionForwardArgs forward_args(DType dtype, int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len,
                                  int64_t head_dim, uintptr_t q, const Strides& q_strides, uintptr_t k,
                                  const Strides& k_strides, uintptr_t v, const Strides& v_strides,
                                  uintptr_t key_padding_mask, uintptr_t out, const Strides& out_strides, uintptr_t lse,
                                  double scale, int num_threads) {
  AttentionForwardArgs a{};
  a.dtype = dtype;
  a.batch = batch;
  a.heads = heads;
  a.q_len = q_len;
  a.kv_len = kv_len;
  a.head_dim = head_dim;
  a.q = ptr<const void>(q);
  a.k = ptr<const void>(k);
  a.v = ptr<const void>(v);
  a.q_strides = to_strides(q_strides);
  a.k_strides = to_strides(k_strides);
  a.v_strides = to_strides(v_strides);
  a.key_padding_mask = ptr<const uint8_t>(key_padding_mask);
  a.out = ptr<void>(out);
  a.out_strides = to_strides(out_strides);
  a.lse = ptr<float>(lse);
  a.scale = float(scale);
  a.num_threads = num_threads;
  return a;
}

void attention_forward(int dtype, int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len, int64_t head_dim,
                       uintptr_t q, const Strides& q_strides, uintptr_t k, const Strides& k_strides, uintptr_t v,
                       const Strides& v_strides, uintptr_t key_padding_mask, uintptr_t out,
                       const Strides& out_strides, uintptr_t lse, double scale, int num_threads) {
  cpu::attention_kernels().forward(forward_args(attention_dtype(dtype), batch, heads, q_len, kv_len, head_dim, q,
                                                q_strides, k, k_strides, v, v_strides, key_padding_mask, out,
                                                out_strides, lse, scale, num_threads));
}

AttentionBackwardArgs backward_args(DType dtype, int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len,
                                    int64_t head_dim, uintptr_t q, const Strides& q_strides, uintptr_t k,
                                    const Strides& k_strides, uintptr_t v, const Strides& v_strides, uintptr_t out,
                                    const Strides& out_strides, uintptr_t dout, const Strides& dout_strides,
                                    uintptr_t key_padding_mask, uintptr_t lse, uintptr_t dq, uintptr_t dk,
                                    uintptr_t dv, double scale, int num_threads) {
  if (!lse) throw std::invalid_argument("attention_backward needs the forward's lse");
  AttentionBackwardArgs a{};
  a.dtype = dtype;
  a.batch = batch;
  a.heads = heads;
  a.q_len = q_len;
  a.kv_len = kv_len;
  a.head_dim = head_dim;
  a.q = ptr<const void>(q);
  a.k = ptr<const void>(k);
  a.v = ptr<const void>(v);
  a.out = ptr<const void>(out);
  a.dout = ptr<const void>(dout);
  a.q_strides = to_strides(q_strides);
  a.k_strides = to_strides(k_strides);
  a.v_strides = to_strides(v_strides);
  a.out_strides = to_strides(out_strides);
  a.dout_strides = to_strides(dout_strides);
  a.key_padding_mask = ptr<const uint8_t>(key_padding_mask);
  a.lse = ptr<const float>(lse);
  a.dq = ptr<void>(dq);
  a.dk = ptr<void>(dk);
  a.dv = ptr<void>(dv);
  a.scale = float(scale);
  a.num_threads = num_threads;
  return a;
}

void attention_backward(int dtype, int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len, int64_t head_dim,
                        uintptr_t q, const Strides& q_strides, uintptr_t k, const Strides& k_strides, uintptr_t v,
                        const Strides& v_strides, uintptr_t out, const Strides& out_strides, uintptr_t dout,
                        const Strides& dout_strides, uintptr_t key_padding_mask, uintptr_t lse, uintptr_t dq,
                        uintptr_t dk, uintptr_t dv, double scale, int num_threads) {
  cpu::attention_kernels().backward(backward_args(attention_dtype(dtype), batch, heads, q_len, kv_len, head_dim, q,
                                                  q_strides, k, k_strides, v, v_strides, out, out_strides, dout,
                                                  dout_strides, key_padding_mask, lse, dq, dk, dv, scale,
                                                  num_threads));
}

#if defined(DIFFRT_WITH_CUDA)
// The CUDA kernels (csrc/cuda/attention_kernels.cu): the same arguments with (device, stream) in place of
// num_threads — the tensors' device index and torch's current stream on it. Float16 is accepted here.
DType cuda_attention_dtype(int code) {
  if (code != int(DType::f32) && code != int(DType::bf16) && code != int(DType::f16))
    throw std::invalid_argument("unsupported dtype code for the CUDA kernels");
  return DType(code);
}

void cuda_attention_forward(int dtype, int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len,
                            int64_t head_dim, uintptr_t q, const Strides& q_strides, uintptr_t k,
                            const Strides& k_strides, uintptr_t v, const Strides& v_strides,
                            uintptr_t key_padding_mask, uintptr_t out, const Strides& out_strides, uintptr_t lse,
                            double scale, int device, uintptr_t stream) {
  cuda::attention_forward(forward_args(cuda_attention_dtype(dtype), batch, heads, q_len, kv_len, head_dim, q,
                                       q_strides, k, k_strides, v, v_strides, key_padding_mask, out, out_strides,
                                       lse, scale, 0),
                          device, reinterpret_cast<cudaStream_t>(stream));
}

void cuda_attention_backward(int dtype, int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len,
                             int64_t head_dim, uintptr_t q, const Strides& q_strides, uintptr_t k,
                             const Strides& k_strides, uintptr_t v, const Strides& v_strides, uintptr_t out,
                             const Strides& out_strides, uintptr_t dout, const Strides& dout_strides,
                             uintptr_t key_padding_mask, uintptr_t lse, uintptr_t dq, uintptr_t dk, uintptr_t dv,
                             double scale, int device, uintptr_t stream) {
  cuda::attention_backward(backward_args(cuda_attention_dtype(dtype), batch, heads, q_len, kv_len, head_dim, q,
                                         q_strides, k, k_strides, v, v_strides, out, out_strides, dout, dout_strides,
                                         key_padding_mask, lse, dq, dk, dv, scale, 0),
                           device, reinterpret_cast<cudaStream_t>(stream));
}
#endif

}  // namespace

void bind_attention(py::module_& m) {
  auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("attention_forward", &attention_forward, nogil,
        "Fused attention forward: out (and lse if its pointer is nonzero) from q, k, v (B, H, L, d).");
  m.def("attention_backward", &attention_backward, nogil,
        "Fused attention backward: dq, dk, dv (dense) from q, k, v, out, dout and the forward's lse.");
#if defined(DIFFRT_WITH_CUDA)
  m.def("cuda_attention_forward", &cuda_attention_forward, nogil,
        "attention_forward on CUDA tensors (device, stream).");
  m.def("cuda_attention_backward", &cuda_attention_backward, nogil,
        "attention_backward on CUDA tensors (device, stream).");
#endif
  m.def("attention_uses_bf16_dot_product", [] { return cpu::attention_kernels().bf16_dot_product; },
        "Whether the active ISA's bfloat16 attention runs on AVX512-BF16 dot products.");
}
