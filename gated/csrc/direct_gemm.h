// The recurrence's float32 GEMM for small calls, on the weight as it is (included by time_loop.h).
//
// C (M x N) = [C or bias or 0] + A (M x K) @ W^T for a row-major W (N x K): each output is the dot
// product of a row of A with a row of W, both contiguous, so nothing is copied or packed. The
// packed kernel (tiled_gemm.h's Panels) copies W into panels on every call, which a call of one or
// two steps (streaming inference: T = 1, the state carried) cannot earn back; this one reads W
// where it lies. Its columns are grouped as the Panels' are (group q: the same hidden units of
// every gate block), with the same run() interface, so the time loop's team drives either one, a
// thread always on the same groups: across a stream of one-step calls each thread's rows of W
// stay in its own L2 (W_hh of a UR-GRU with H = 256 is 1 MiB; half of it per thread on two).
// Register tiles: R rows of W by MR rows of A, the K loop over whole registers (a masked last one),
// then one horizontal sum per output.
// Glossary: M rows of A (batch rows), K inner size, N columns (G gate rows), R/MR a tile's rows of
// W and of A, L lanes per register.
#pragma once

#include "tiled_gemm.h"

#if defined(GATED_TILED_GEMM)

namespace tiled {

inline float hsum(Simd::reg v) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_reduce_add_ps(v);
#else
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
#endif
}

class Rows : public Groups {
 public:
  Rows() = default;
  // W (N x K) with row stride ldw, N = blocks * width; columns grouped as the Panels' (Groups)
  Rows(const float* w, int64_t ldw, int64_t K, int64_t blocks, int64_t width)
      : w_(w), ldw_(ldw), K_(K), blocks_(blocks) {
    set_groups(blocks, width);
  }

  // C[m0:m1, columns of groups q0:q1] = init + A[m0:m1] @ W^T; init as Panels::run's: a matrix of
  // row stride ld_init (C itself to accumulate), a bias (N,) when ld_init is 0, or zero when null
  void run(const float* A, int64_t lda, int64_t m0, int64_t m1, float* C, int64_t ldc, int64_t q0, int64_t q1,
           const float* init, int64_t ld_init) const {
    const int64_t u0 = unit_begin(q0), u1 = unit_end(q1);
    for (int64_t g = 0; g < blocks_; ++g) {
      int64_t n = g * width_ + u0;
      const int64_t end = g * width_ + u1;
      for (; n + kR <= end; n += kR) columns<kR>(A, lda, m0, m1, C, ldc, n, init, ld_init);
      for (; n < end; ++n) columns<1>(A, lda, m0, m1, C, ldc, n, init, ld_init);
    }
  }

 private:
  // AVX-512's 32 registers hold 8 x 2 accumulators; AVX2's 16 hold 4 x 2 (and a W and 2 A registers)
  static constexpr int kR = Simd::L == 16 ? 8 : 4;

  // columns [n, n + R) for rows [m0, m1), in tiles of 2 rows of A (a last one of 1)
  template <int R>
  void columns(const float* A, int64_t lda, int64_t m0, int64_t m1, float* C, int64_t ldc, int64_t n,
               const float* init, int64_t ld_init) const {
    int64_t m = m0;
    for (; m + 2 <= m1; m += 2) tile<R, 2>(A, lda, m, C, ldc, n, init, ld_init);
    if (m < m1) tile<R, 1>(A, lda, m, C, ldc, n, init, ld_init);
  }

  template <int R, int MR>
  void tile(const float* A, int64_t lda, int64_t m, float* C, int64_t ldc, int64_t n, const float* init,
            int64_t ld_init) const {
    Simd::reg acc[MR][R];
    for (int i = 0; i < MR; ++i)
      for (int r = 0; r < R; ++r) acc[i][r] = Simd::zero();
    const float* w = w_ + n * ldw_;
    const float* a = A + m * lda;
    int64_t k = 0;
    for (; k + kLanes <= K_; k += kLanes) {
      Simd::reg x[MR];
      for (int i = 0; i < MR; ++i) x[i] = Simd::loadn(a + i * lda + k, kLanes);
      for (int r = 0; r < R; ++r) {
        const Simd::reg wv = Simd::loadn(w + r * ldw_ + k, kLanes);
        for (int i = 0; i < MR; ++i) acc[i][r] = Simd::fmadd(x[i], wv, acc[i][r]);
      }
    }
    if (k < K_) {  // the last partial register: lanes past K are zero in both operands
      const int rest = int(K_ - k);
      Simd::reg x[MR];
      for (int i = 0; i < MR; ++i) x[i] = Simd::loadn(a + i * lda + k, rest);
      for (int r = 0; r < R; ++r) {
        const Simd::reg wv = Simd::loadn(w + r * ldw_ + k, rest);
        for (int i = 0; i < MR; ++i) acc[i][r] = Simd::fmadd(x[i], wv, acc[i][r]);
      }
    }
    for (int i = 0; i < MR; ++i) {
      float* c = C + (m + i) * ldc + n;
      const float* b = init == nullptr ? nullptr : (ld_init == 0 ? init + n : init + (m + i) * ld_init + n);
      for (int r = 0; r < R; ++r) c[r] = (b == nullptr ? 0.0f : b[r]) + hsum(acc[i][r]);
    }
  }

  const float* w_ = nullptr;
  int64_t ldw_ = 0, K_ = 0, blocks_ = 1;
};

}  // namespace tiled

#endif  // GATED_TILED_GEMM
