// Host entry points of the CUDA attention kernels (csrc/cuda/attention_kernels.cu). They take the CPU
// kernels' argument structs (csrc/attention.h; num_threads is ignored), the device that holds the
// tensors and the stream to enqueue on; they return once the work is enqueued.
#pragma once
#include "attention.h"

typedef struct CUstream_st* cudaStream_t;  // as in the CUDA runtime headers

namespace diffrt::cuda {

constexpr int64_t kAttentionMaxHeadDim = 256;

void attention_forward(const AttentionForwardArgs& a, int device, cudaStream_t stream);
void attention_backward(const AttentionBackwardArgs& a, int device, cudaStream_t stream);

}  // namespace diffrt::cuda
