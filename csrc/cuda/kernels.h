// Host entry points of the CUDA sampler kernels (csrc/cuda/sampler_kernels.cu). They take the CPU
// kernels' argument structs (csrc/ops.h; num_threads is ignored), the device that holds the
// tensors and the stream to enqueue on; they return once the work is enqueued.
#pragma once
#include "ops.h"

typedef struct CUstream_st* cudaStream_t;  // as in the CUDA runtime headers

namespace diffrt::cuda {

void ddim_step(const DdimStepArgs& a, int device, cudaStream_t stream);
void cfg_combine(const CfgCombineArgs& a, int device, cudaStream_t stream);
void mask_blend(const MaskBlendArgs& a, int device, cudaStream_t stream);
void diffedit_mask(const DiffEditMaskArgs& a, int device, cudaStream_t stream);
void euler_step(const EulerStepArgs& a, int device, cudaStream_t stream);
void dpm_solver_2m_step(const DpmSolver2mStepArgs& a, int device, cudaStream_t stream);

}  // namespace diffrt::cuda
