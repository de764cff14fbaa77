// The kernels' argument structs built from what a Python binding receives (data pointers as
// integers, per-sample lists); shared by the CPU (bindings.cpp) and CUDA (cuda/bindings_cuda.cpp)
// bindings, which differ only in the dtypes they accept and in threads vs (device, stream).
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "ops.h"

namespace diffrt::binding {

inline const void* cptr(uintptr_t p) { return reinterpret_cast<const void*>(p); }
inline void* mptr(uintptr_t p) { return reinterpret_cast<void*>(p); }

inline void require_per_sample(const std::vector<double>& v, int64_t batch, const char* name) {
  if (int64_t(v.size()) != batch) throw std::invalid_argument(std::string(name) + " must hold one value per sample");
}

// The per-sample vectors must outlive the returned struct (it points into them).
inline DdimStepArgs ddim_step_args(DType dtype, int64_t batch, int64_t numel, uintptr_t sample, uintptr_t model,
                                   uintptr_t model_cond, uintptr_t noise, uintptr_t out, uintptr_t out_x0,
                                   const std::vector<double>& alpha_t, const std::vector<double>& alpha_prev,
                                   const std::vector<double>& guidance_scale, double eta, double guidance_rescale,
                                   int prediction, int clip, double clip_range, double dynamic_quantile,
                                   double dynamic_max, bool use_clipped_model_output) {
  require_per_sample(alpha_t, batch, "alpha_t");
  require_per_sample(alpha_prev, batch, "alpha_prev");
  if (model_cond) require_per_sample(guidance_scale, batch, "guidance_scale");
  DdimStepArgs a{};
  a.dtype = dtype;
  a.batch = batch;
  a.numel = numel;
  a.sample = cptr(sample);
  a.model = cptr(model);
  a.model_cond = cptr(model_cond);
  a.noise = cptr(noise);
  a.out = mptr(out);
  a.out_x0 = mptr(out_x0);
  a.alpha_t = alpha_t.data();
  a.alpha_prev = alpha_prev.data();
  a.guidance_scale = guidance_scale.data();
  a.eta = eta;
  a.guidance_rescale = guidance_rescale;
  a.prediction = Prediction(prediction);
  a.clip = ClipMode(clip);
  a.clip_range = clip_range;
  a.dynamic_quantile = dynamic_quantile;
  a.dynamic_max = dynamic_max;
  a.use_clipped_model_output = use_clipped_model_output;
  return a;
}

}  // namespace diffrt::binding
