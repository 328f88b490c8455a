// The recurrent GEMM of the fused kernels (included by recurrence.cpp and time_loop.h).
//
// Per step, h_{t-1} @ W_hh^T (forward) or the gate gradients @ W_hh (backward) on one of: oneDNN's
// matmul with the weight reordered once per call, plain addmm, or (float32 with AVX-512 or AVX2)
// the register-tiled kernel of tiled_gemm.h, which the time loop drives itself. The path is chosen
// per call; g_gemm pins one (tests, gated bench). A bfloat16 W with float32 A and C (bfloat16
// matmuls, gated/precision.py): A is rounded to bfloat16 per step, the product runs on oneDNN's
// bfloat16 matmul (AMX or AVX512-BF16; at::mm where oneDNN refuses bfloat16, e.g. on AVX2, where
// torch emulates it) with float32 accumulation and a bfloat16 result, added to C in float32.
// Glossary: M rows (the batch B), K inner size, N output columns (G gate rows or H hidden units),
// W the weight (W_hh, or W_hr with projections), C the accumulated operand.
#pragma once

#include "vec_math.h"  // first: its CPU_CAPABILITY defines precede every ATen header and tiled_gemm.h

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <atomic>
#include <optional>
#include <string>

#include "tiled_gemm.h"

using at::Tensor;

namespace {

// ---------------------------------------------------------------- recurrent GEMM

// oneDNN's matmul with a weight reordered once into its blocked layout (torch's mkldnn ops,
// the same kernels its own LSTM uses). Looked up in the dispatcher; absent without mkldnn.
struct OneDnn {
  std::optional<c10::OperatorHandle> reorder, linear, linear_add;
  OneDnn() {
    auto& d = c10::Dispatcher::singleton();
    reorder = d.findSchema({"mkldnn::_reorder_linear_weight", ""});
    linear = d.findSchema({"mkldnn::_linear_pointwise", ""});
    linear_add = d.findSchema({"mkldnn::_linear_pointwise", "binary"});
  }
  bool ok() const { return reorder && linear && linear_add; }
};

const OneDnn& onednn() {
  static OneDnn o;
  return o;
}

// 2 was MKL's packed GEMM, removed: the tiled kernel serves AVX2 and AVX-512, and oneDNN (in every
// torch CPU build) the rest
// kDirect: the tiled team on the unpacked weights (direct_gemm.h), which auto takes for small calls (direct_chosen)
enum GemmKind : int64_t { kAuto = 0, kOneDnn = 1, kAddmm = 3, kTiled = 4, kDirect = 5 };
int64_t g_gemm = kAuto;  // tests pin each path
std::atomic<int64_t> g_tiled_runs{0};   // time loops run on the tiled kernel (gated bench reports it)
std::atomic<int64_t> g_direct_runs{0};  // and those on the direct one

// C + A (M x K) @ op(W), with op(W) = W^T for W (N, K) or W for W (K, N); the recurrent weight is
// prepared once per call and reused by the T steps. run() returns the result: C itself where the
// product accumulates in place, else a new tensor.
class RecurrentGemm {
 public:
  // steps: how many products will use the weight; with one, preparing it costs more than it saves
  RecurrentGemm(const Tensor& w, bool transpose, int64_t M, int64_t steps) : w_(w), transpose_(transpose), M_(M) {
    K_ = transpose ? w.size(1) : w.size(0);
    N_ = transpose ? w.size(0) : w.size(1);
    low_ = w.scalar_type() == at::kBFloat16;
    const bool packable = (w.scalar_type() == at::kFloat || low_) && (steps > 1 || g_gemm != kAuto);
    if (packable && (g_gemm == kAuto || g_gemm == kOneDnn) && onednn().ok()) {
      Tensor wt = transpose ? w : w.t().contiguous();  // oneDNN's linear takes (N, K)
      try {
        packed_ = onednn().reorder->typed<Tensor(const Tensor&, std::optional<int64_t>)>().call(wt, M);
        kind_ = kOneDnn;
      } catch (const c10::Error&) {  // bfloat16 on a CPU without its instructions: at::mm below
        TORCH_CHECK(low_, "gated fused CPU backend: oneDNN could not prepare a float32 weight");
      }
    }
  }
  // C may be undefined (no accumulation); out is scratch of shape (M, N) for that case.
  Tensor run(const Tensor& A, const Tensor& C, Tensor& out) const {
    const bool acc = C.defined();
    if (low_) {  // bfloat16 operands, float32 A, C and result
      Tensor a = A.to(at::kBFloat16), prod;
      if (kind_ == kOneDnn) {
        torch::jit::Stack stack{a, packed_, c10::IValue(), std::string("none"),
                                c10::List<std::optional<at::Scalar>>(), c10::IValue()};
        onednn().linear->callBoxed(stack);
        prod = stack[0].toTensor();
      } else {
        prod = at::mm(a, transpose_ ? w_.t() : w_);
      }
      Tensor dst = acc ? C : out;
      if (acc) {
        dst.add_(prod);
      } else {
        dst.copy_(prod);
      }
      return dst;
    }
    if (kind_ == kOneDnn) {
      if (acc) {
        return onednn().linear_add->typed<Tensor(const Tensor&, const Tensor&, const Tensor&,
                                                 const std::optional<Tensor>&, c10::string_view)>()
            .call(A, C, packed_, std::nullopt, "add");
      }
      torch::jit::Stack stack{A, packed_, c10::IValue(), std::string("none"),
                              c10::List<std::optional<at::Scalar>>(), c10::IValue()};
      onednn().linear->callBoxed(stack);
      return stack[0].toTensor();
    }
    Tensor dst = acc ? C : out;
    if (acc) {
      dst.addmm_(A, transpose_ ? w_.t() : w_);
    } else {
      at::mm_out(dst, A, transpose_ ? w_.t() : w_);
    }
    return dst;
  }

 private:
  Tensor w_, packed_;
  bool transpose_, low_ = false;
  int64_t M_, K_ = 0, N_ = 0, kind_ = kAddmm;
};

// The tiled AVX-512 path (tiled_gemm.h) for float32: at each time step every thread of one team
// computes its hidden units' share of the recurrent product and then their gate maths.
template <typename T>
constexpr bool use_tiled() {
#if defined(GATED_TILED_GEMM)
  return std::is_same_v<T, float>;
#else
  return false;
#endif
}

inline bool tiled_chosen() { return g_gemm == kAuto || g_gemm == kTiled; }

// A forward of Tn steps at batch B reads the weights where they lie, unpacked (direct_gemm.h):
// pinned, or in auto at batch 1 (its dot products beat the packed kernel's one-row tiles at any
// length) and for at most 16 rows in all (Tn x B), below which packing (a copy of each weight)
// costs more than the packed kernel saves. Measured with H = 256 on two threads: a one-step UR-GRU
// call at batch 1 54 us direct against 108 us packed; 1383 against 1689 us for 100 steps at batch
// 1; 956 against 702 us for 20 steps at batch 4; 204 against 239 us for one step at batch 16.
inline bool direct_chosen(int64_t Tn, int64_t B) {
  return g_gemm == kDirect || (g_gemm == kAuto && (B == 1 || Tn * B <= 16));
}

}  // namespace
