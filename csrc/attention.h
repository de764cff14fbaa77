// Plain argument structs for the fused attention kernels: pointers, sizes, strides and scalars,
// no framework types. q (B, H, Lq, d), k and v (B, H, Lk, d); the head dimension is dense
// (unit stride) and every other dimension has an element stride, so transposed views need no copy.
#pragma once
#include <cstdint>

#include "common.h"

namespace diffrt {

// Element strides of a (B, H, L, d) tensor whose last dimension is dense.
struct HeadStrides {
  int64_t batch, head, row;
};

struct AttentionForwardArgs {
  DType dtype;  // of q, k, v and out
  int64_t batch, heads, q_len, kv_len, head_dim;
  const void* q;
  const void* k;
  const void* v;
  HeadStrides q_strides, k_strides, v_strides;
  const uint8_t* key_padding_mask;  // (B, Lk) dense, nonzero = attend; nullptr: attend to all keys. A masked
                                    // key's k and v are never read into a result (NaN/inf there is harmless)
  void* out;                        // (B, H, Lq, d)
  HeadStrides out_strides;
  float* lse;    // (B, H, Lq) dense: ln Σ_j exp(scale·q·k_j) over attended keys, −inf for a row with no
                 // key, NaN for a row whose softmax is NaN (non-finite scores); or nullptr
  float scale;   // multiplies q·k before the softmax
  int num_threads;
};

struct AttentionBackwardArgs {
  DType dtype;  // of q, k, v, out, dout, dq, dk, dv
  int64_t batch, heads, q_len, kv_len, head_dim;
  const void* q;
  const void* k;
  const void* v;
  const void* out;   // the forward output O
  const void* dout;  // dL/dO
  HeadStrides q_strides, k_strides, v_strides, out_strides, dout_strides;
  const uint8_t* key_padding_mask;  // as in the forward
  const float* lse;                 // (B, H, Lq) dense, from the forward
  void* dq;                         // (B, H, Lq, d) dense
  void* dk;                         // (B, H, Lk, d) dense
  void* dv;                         // (B, H, Lk, d) dense
  float scale;
  int num_threads;
};

}  // namespace diffrt
