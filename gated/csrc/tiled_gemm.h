// Register-tiled float32 GEMM for the recurrence (AVX-512 and AVX2), included by recurrence.cpp.
//
// C (M x N) = [C or bias or 0] + A (M x K) @ B (K x N), with B packed once per call into panels of
// L columns (L = 16 floats per zmm register on AVX-512, 8 per ymm on AVX2) laid out
// [group][k][NV * L], so the K loop streams one contiguous block per group.
// A group holds the NV panels that the caller's pointwise pass needs together: for the forward
// step, the L hidden units of every gate block (i, f, u, o for the LSTM); for the backward step,
// L * NV consecutive columns. So a thread that owns a range of groups owns a range of hidden
// units, and can run the gate maths on them right after its share of the product, before the
// step's barrier (instead of a GEMM call and then a pointwise pass).
// Columns past a block's end are zero in the panel and masked out of every load and store.
//
// The two instruction sets differ only in the Simd traits below and in the register-tile shapes
// (tile()): AVX-512 has 32 registers, so a tile is up to 6 rows x 3-4 panels (8 rows x 2-3 for
// batch 7-8); AVX2 has 16, so a tile is up to 6 rows x 2 panels (12 accumulators, 2 panel
// registers and one broadcast), BLIS's 6 x 16 Haswell shape.
#pragma once

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#define GATED_TILED_GEMM 1
#include <immintrin.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <vector>

namespace tiled {

#if defined(CPU_CAPABILITY_AVX512)
struct Simd {
  using reg = __m512;
  static constexpr int L = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg set1(float x) { return _mm512_set1_ps(x); }
  static reg load(const float* p) { return _mm512_load_ps(p); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static __mmask16 m(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  // the first n lanes of p (the rest zero), and a store of the first n lanes
  static reg loadn(const float* p, int n) { return _mm512_maskz_loadu_ps(m(n), p); }
  static void storen(float* p, reg v, int n) { _mm512_mask_storeu_ps(p, m(n), v); }
  static void store(float* p, reg v) { _mm512_store_ps(p, v); }
  static void storeu(float* p, reg v) { _mm512_storeu_ps(p, v); }
};
#else
struct Simd {
  using reg = __m256;
  static constexpr int L = 8;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg set1(float x) { return _mm256_set1_ps(x); }
  static reg load(const float* p) { return _mm256_load_ps(p); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static __m256i m(int n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
  static reg loadn(const float* p, int n) { return n == L ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m(n)); }
  static void storen(float* p, reg v, int n) {
    if (n == L) {
      _mm256_storeu_ps(p, v);
    } else {
      _mm256_maskstore_ps(p, m(n), v);
    }
  }
  static void store(float* p, reg v) { _mm256_store_ps(p, v); }
  static void storeu(float* p, reg v) { _mm256_storeu_ps(p, v); }
};
#endif

constexpr int kLanes = Simd::L;  // floats per register
constexpr int kMaxRows = 6;  // rows per register tile

// register tiles for M rows (none for M <= 0): on AVX-512 up to 8 rows are one tile (7-8 rows run 2-3 panels at a
// time, so the panels stream once instead of twice), more are split into tiles of at most kMaxRows
inline int64_t tile_count(int64_t M) {
  const int64_t one = Simd::L == 16 ? 8 : kMaxRows;
  if (M <= 0) return 0;  // a thread with no rows (B = 1 split over two threads) writes none
  return M <= one ? 1 : (M + kMaxRows - 1) / kMaxRows;
}

// rows in tile i of M rows split into `tiles` tiles, as even as possible (10 -> 5 + 5, not 6 + 4)
inline int64_t tile_rows(int64_t M, int64_t tiles, int64_t i) { return M / tiles + (i < M % tiles ? 1 : 0); }

// floats ahead of the K loop to prefetch: the panels stream from L3 when they exceed L2 (H = 512)
constexpr int64_t kPrefetch = 1024;

// Panel storage. One idle buffer of the last size is kept: a fresh one above glibc's mmap
// threshold page-faults on every call (6 % of a 1000x32x10x256 train step for the weight-gradient
// panels). A request of another size frees it first, so layers of different sizes never hold
// two (the shared pool in pool.h would keep both, and raise the peak memory of a step).
inline at::Tensor scratch(int64_t numel) {
  static std::mutex m;
  static at::Tensor kept;
  std::lock_guard<std::mutex> guard(m);
  if (kept.defined() && kept.storage().use_count() == 1) {
    if (kept.numel() == numel) return kept.view({numel});
    kept = at::Tensor();  // idle, another size: free it before allocating
  }
  at::Tensor fresh = at::empty({numel}, at::kFloat);
  if (!kept.defined() && int64_t(numel * sizeof(float)) >= (int64_t(32) << 20)) kept = fresh;
  return fresh;
}

// Which hidden units a group of output columns covers: the same `units` consecutive units of every
// gate block (of `width` units), widened to up to 4 registers' worth of one block when the blocks
// are few. Shared by the packed weights (Panels) and the unpacked ones (direct_gemm.h's Rows), so
// the time loop's team splits either the same way.
class Groups {
 public:
  int64_t groups() const { return groups_; }
  int64_t units() const { return units_; }  // hidden units per group
  // the hidden units of groups [q0, q1)
  int64_t unit_begin(int64_t q0) const { return std::min(q0 * units_, width_); }
  int64_t unit_end(int64_t q1) const { return std::min(q1 * units_, width_); }

 protected:
  void set_groups(int64_t blocks, int64_t width) {
    width_ = width;
    per_block_ = std::max<int64_t>(1, 4 / blocks);  // registers (panels) of one block per group
    units_ = kLanes * per_block_;
    groups_ = (width + units_ - 1) / units_;
  }
  int64_t width_ = 0, per_block_ = 1, units_ = kLanes, groups_ = 0;
};

// B (K x N) with element (k, n) at b[k * sk + n * sn]; N = blocks * width (gate blocks of width
// hidden units). Each group covers `units` consecutive units of every block (Groups).
class Panels : public Groups {
 public:
  Panels() = default;
  Panels(const float* b, int64_t sk, int64_t sn, int64_t K, int64_t blocks, int64_t width) {
    TORCH_CHECK(sk == 1 || sn == 1, "gated tiled GEMM: B needs a unit stride");
    layout(K, blocks, width);
    float* d = data_.data_ptr<float>();
    // copy B into the panels, in parallel over groups. Where B's columns are contiguous (the
    // backward's W_hh) rows are copied; where its rows are (the forward's W_hh^T) 16 x 16 blocks
    // are transposed in registers, so W is read along its rows and whole cache lines are written.
    at::parallel_for(0, groups_, 1, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        for (int64_t v = 0; v < nv_; ++v) {
          const int64_t c = col_[q * nv_ + v];
          const int n = lanes_[q * nv_ + v];
          float* p = d + q * K * nv_ * kLanes + v * kLanes;
          if (sn == 1) {
            for (int64_t k = 0; k < K; ++k) Simd::store(p + k * nv_ * kLanes, Simd::loadn(b + k * sk + c, n));
          } else {
            for (int64_t k0 = 0; k0 < K; k0 += kLanes) {
              const int64_t kn = std::min<int64_t>(kLanes, K - k0);
              transpose(b + c * sn + k0, sn, n, kn, p + k0 * nv_ * kLanes, nv_ * kLanes);
            }
          }
        }
      }
    });
  }

  // B (K x N) given by at(k, n), a pointer to element (k, n) from which the row runs on
  // contiguously up to the next column in `breaks` (B is made of side-by-side pieces, e.g.
  // [x_t, h_{t-1}] without materialising it); one block of width N.
  template <typename At>
  Panels(const At& at, const std::vector<int64_t>& breaks, int64_t K, int64_t N) {
    layout(K, 1, N);
    float* d = data_.data_ptr<float>();
    at::parallel_for(0, groups_, 1, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        for (int64_t v = 0; v < nv_; ++v) {
          const int64_t c = col_[q * nv_ + v], n = lanes_[q * nv_ + v];
          const bool whole = std::none_of(breaks.begin(), breaks.end(), [&](int64_t x) { return c < x && x < c + n; });
          float* p = d + q * K * nv_ * kLanes + v * kLanes;
          for (int64_t k = 0; k < K; ++k) {
            if (whole) {
              Simd::store(p + k * nv_ * kLanes, Simd::loadn(at(k, c), int(n)));
            } else {
              for (int64_t l = 0; l < kLanes; ++l) p[k * nv_ * kLanes + l] = l < n ? *at(k, c + l) : 0.0f;
            }
          }
        }
      }
    });
  }

  // C[m0:m1, columns of groups q0:q1] = init + A[m0:m1] @ B, where init is a matrix with row
  // stride ld_init (it may be C itself), a per-column bias (N,) when ld_init is 0, or zero when
  // null. A has row stride lda, C row stride ldc.
  void run(const float* A, int64_t lda, int64_t m0, int64_t m1, float* C, int64_t ldc, int64_t q0, int64_t q1,
           const float* init, int64_t ld_init) const {
    for (int64_t q = q0; q < q1; ++q) rows(A, lda, 1, m0, m1, 0, K_, q, C, ldc, init, ld_init);
  }

  // C (M x N, row stride ldc) = A @ B for a large A with element (m, k) at A[m * sam + k * sak]
  // (so A may be a transposed view), in parallel over rows. Blocked so that a block of A's rows
  // and a block of K stay in L2 while every group's panels pass over them.
  // With sums, also sums[m] = sum over k of A(m, k) (the product with a column of ones, which
  // would cost a whole group of panels), taken while A is copied.
  // Only the first `groups` groups when given (columns past the last one's end are not written).
  void matmul(const float* A, int64_t sam, int64_t sak, int64_t M, float* C, int64_t ldc, float* sums = nullptr,
              int64_t groups = -1) const {
    const int64_t ng = groups < 0 ? groups_ : std::min(groups, groups_);
    // blocks of about 240 rows (240 x 256 floats of A = 240 KB), their count a multiple of the
    // thread count so that every thread gets the same share
    constexpr int64_t kc = 256;
    const int64_t threads = at::get_num_threads();
    const int64_t blocks = (M + 240 * threads - 1) / (240 * threads) * threads;
    const int64_t mc = ((M + blocks - 1) / blocks + kMaxRows - 1) / kMaxRows * kMaxRows;
    at::parallel_for(0, (M + mc - 1) / mc, 1, [&](int64_t b0, int64_t b1) {
      // the A block, copied tile by tile as [tile][k][row], so the kernel reads it contiguously
      std::vector<float> pack(mc * kc);
      for (int64_t k0 = 0; k0 < K_; k0 += kc) {
        const int64_t k1 = std::min(K_, k0 + kc), kn = k1 - k0;
        for (int64_t mb = b0; mb < b1; ++mb) {
          const int64_t m0 = mb * mc, Mb = std::min(M, m0 + mc) - m0, tiles = tile_count(Mb);
          for (int64_t i = 0, m = m0; i < tiles; ++i) {  // the tiles the compute loop below uses
            const int64_t n = tile_rows(Mb, tiles, i);
            float* dst = pack.data() + (m - m0) * kn;
            if (sam == 1) {  // a transposed view (dA^T): the tile's rows are contiguous at each k
              const int rn = int(n);  // <= 8 rows, within one register
              Simd::reg total = sums != nullptr && k0 > 0 ? Simd::loadn(sums + m, rn) : Simd::zero();
              for (int64_t k = 0; k < kn; ++k) {
                const Simd::reg v = Simd::loadn(A + m + (k0 + k) * sak, rn);
                Simd::storen(dst + k * n, v, rn);
                total = Simd::add(total, v);
              }
              if (sums != nullptr) Simd::storen(sums + m, total, rn);
            } else {
              for (int64_t k = 0; k < kn; ++k) {
                for (int64_t r = 0; r < n; ++r) dst[k * n + r] = A[(m + r) * sam + (k0 + k) * sak];
              }
              if (sums != nullptr) {
                for (int64_t r = 0; r < n; ++r) {
                  float total = k0 == 0 ? 0.0f : sums[m + r];
                  for (int64_t k = 0; k < kn; ++k) total += dst[k * n + r];
                  sums[m + r] = total;
                }
              }
            }
            m += n;
          }
          for (int64_t q = 0; q < ng; ++q) {
            for (int64_t i = 0, m = m0; i < tiles; ++i) {
              const int64_t n = tile_rows(Mb, tiles, i);
              const float* a = pack.data() + (m - m0) * kn - k0 * n;  // element (r, k) at a[r + k * n]
              float* c = C + m * ldc;
              tile(n, a, 1, n, k0, k1, q, c, ldc, k0 == 0 ? nullptr : c, ldc);
              m += n;
            }
          }
        }
      }
    });
  }

 private:
  // the panel geometry; data_ zeroed (the lanes past a block's end stay zero)
  void layout(int64_t K, int64_t blocks, int64_t width) {
    K_ = K;
    set_groups(blocks, width);  // panels per group: one per block, or up to 4 of one block
    nv_ = blocks * per_block_;
    // every lane is written by the copy (zeros past a block's end), so no zeroing here
    data_ = scratch(groups_ * K * nv_ * kLanes);
    base_ = data_.data_ptr<float>();  // the kernel reads it per tile: no type check each time
    col_.resize(groups_ * nv_);
    lanes_.resize(groups_ * nv_);
    for (int64_t q = 0; q < groups_; ++q) {
      for (int64_t g = 0; g < blocks; ++g) {
        for (int64_t s = 0; s < per_block_; ++s) {
          const int64_t v = g * per_block_ + s, u0 = q * units_ + s * kLanes;
          const int64_t n = std::clamp<int64_t>(width - u0, 0, kLanes);
          col_[q * nv_ + v] = g * width + std::min(u0, width);
          lanes_[q * nv_ + v] = int(n);
        }
      }
    }
  }

  // rows [m0, m1) of C's columns in group q, over k in [k0, k1), in register tiles (tile_rows)
  void rows(const float* A, int64_t sam, int64_t sak, int64_t m0, int64_t m1, int64_t k0, int64_t k1, int64_t q,
            float* C, int64_t ldc, const float* init, int64_t ld_init) const {
    const int64_t M = m1 - m0, tiles = tile_count(M);
    int64_t m = m0;
    for (int64_t i = 0; i < tiles; ++i) {
      const int64_t n = tile_rows(M, tiles, i);
      tile(n, A + m * sam, sam, sak, k0, k1, q, C + m * ldc, ldc, init == nullptr ? nullptr : init + m * ld_init, ld_init);
      m += n;
    }
  }

  // dst[j * ldd + i] = src[i * lds + j] for i < L, j < cols; rows i >= n read as zero
#if defined(CPU_CAPABILITY_AVX512)
  static void transpose(const float* src, int64_t lds, int64_t n, int64_t cols, float* dst, int64_t ldd) {
    __m512 r[kLanes], t[kLanes], u[kLanes];
    for (int i = 0; i < kLanes; ++i) r[i] = i < n ? Simd::loadn(src + i * lds, int(cols)) : Simd::zero();
    for (int i = 0; i < kLanes; i += 2) {  // interleave row pairs (within 128-bit lanes)
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < kLanes; i += 4) {  // u[i + c], lane L: column 4L + c of rows i..i+3
      auto pd = [](__m512 x) { return _mm512_castps_pd(x); };
      u[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[i]), pd(t[i + 2])));
      u[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[i]), pd(t[i + 2])));
      u[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[i + 1]), pd(t[i + 3])));
      u[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[i + 1]), pd(t[i + 3])));
    }
    for (int c = 0; c < 4; ++c) {  // column 4L + c = lane L of u[c], u[4 + c], u[8 + c], u[12 + c]
      const __m512 lo0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44), hi0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE);
      const __m512 lo1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44);
      const __m512 hi1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xEE);
      const __m512 col[4] = {_mm512_shuffle_f32x4(lo0, lo1, 0x88), _mm512_shuffle_f32x4(lo0, lo1, 0xDD),
                             _mm512_shuffle_f32x4(hi0, hi1, 0x88), _mm512_shuffle_f32x4(hi0, hi1, 0xDD)};
      for (int L = 0; L < 4; ++L) {
        if (4 * L + c < cols) Simd::storeu(dst + (4 * L + c) * ldd, col[L]);
      }
    }
  }
#else
  static void transpose(const float* src, int64_t lds, int64_t n, int64_t cols, float* dst, int64_t ldd) {
    __m256 r[8], t[8], u[8];
    for (int i = 0; i < 8; ++i) r[i] = i < n ? Simd::loadn(src + i * lds, int(cols)) : Simd::zero();
    for (int i = 0; i < 8; i += 2) {  // interleave row pairs (within 128-bit lanes)
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {  // u[i + c], 128-bit lane L: column 4L + c of rows i..i+3
      u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
      u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
      u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int c = 0; c < 4; ++c) {  // column c: low halves of u[c], u[4 + c]; column 4 + c: high halves
      if (c < cols) Simd::storeu(dst + c * ldd, _mm256_permute2f128_ps(u[c], u[4 + c], 0x20));
      if (4 + c < cols) Simd::storeu(dst + (4 + c) * ldd, _mm256_permute2f128_ps(u[c], u[4 + c], 0x31));
    }
  }
#endif

  // MR rows x panels [v0, v0 + NV) of group q
  template <int MR, int NV>
  void kernel(const float* A, int64_t sam, int64_t sak, int64_t k0, int64_t k1, int64_t q, float* C, int64_t ldc,
              const float* init, int64_t ld_init, int64_t v0 = 0) const {
    const int64_t* col = col_.data() + q * nv_ + v0;
    const int* lanes = lanes_.data() + q * nv_ + v0;
    typename Simd::reg acc[MR][NV];
    for (int m = 0; m < MR; ++m) {
      for (int v = 0; v < NV; ++v) acc[m][v] = init != nullptr ? Simd::loadn(init + m * ld_init + col[v], lanes[v]) : Simd::zero();
    }
    const int64_t row = nv_ * kLanes;  // floats per panel row of the group
    const float* p = base_ + (q * K_ + k0) * row + v0 * kLanes;
    for (int64_t k = k0; k < k1; ++k, p += row) {
      typename Simd::reg w[NV];
      for (int v = 0; v < NV; ++v) {
        _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetch + v * kLanes), _MM_HINT_T0);
        w[v] = Simd::load(p + v * kLanes);
        // keep the panel in a register: folded into each FMA it would be loaded MR times
        asm("" : "+v"(w[v]));
      }
      for (int m = 0; m < MR; ++m) {
        const typename Simd::reg a = Simd::set1(A[m * sam + k * sak]);
        for (int v = 0; v < NV; ++v) acc[m][v] = Simd::fmadd(a, w[v], acc[m][v]);
      }
    }
    for (int m = 0; m < MR; ++m) {
      for (int v = 0; v < NV; ++v) Simd::storen(C + m * ldc + col[v], acc[m][v], lanes[v]);
    }
  }

  // rows <= kMaxRows x panels [v0, v0 + NV)
  template <int NV>
  void tile_rows_nv(int64_t rows, const float* A, int64_t sam, int64_t sak, int64_t k0, int64_t k1, int64_t q,
                    float* C, int64_t ldc, const float* init, int64_t ld_init, int64_t v0 = 0) const {
    switch (rows) {
      case 1: return kernel<1, NV>(A, sam, sak, k0, k1, q, C, ldc, init, ld_init, v0);
      case 2: return kernel<2, NV>(A, sam, sak, k0, k1, q, C, ldc, init, ld_init, v0);
      case 3: return kernel<3, NV>(A, sam, sak, k0, k1, q, C, ldc, init, ld_init, v0);
      case 4: return kernel<4, NV>(A, sam, sak, k0, k1, q, C, ldc, init, ld_init, v0);
      case 5: return kernel<5, NV>(A, sam, sak, k0, k1, q, C, ldc, init, ld_init, v0);
      default: return kernel<6, NV>(A, sam, sak, k0, k1, q, C, ldc, init, ld_init, v0);
    }
  }

  void tile(int64_t rows, const float* A, int64_t sam, int64_t sak, int64_t k0, int64_t k1, int64_t q, float* C,
            int64_t ldc, const float* init, int64_t ld_init) const {
#if !defined(CPU_CAPABILITY_AVX512)
    // AVX2: up to 6 rows x 2 panels per pass (15 of 16 registers), the group's panels two by two
    for (int64_t v0 = 0; v0 < nv_; v0 += 2) {
      if (nv_ - v0 >= 2) {
        tile_rows_nv<2>(rows, A, sam, sak, k0, k1, q, C, ldc, init, ld_init, v0);
      } else {
        tile_rows_nv<1>(rows, A, sam, sak, k0, k1, q, C, ldc, init, ld_init, v0);
      }
    }
#else
    if (rows > kMaxRows) {  // 7 or 8 rows (small batches) in one pass over the panels, 2-3 at a time
      const bool eight = rows == 8;
      if (nv_ == 3) {
        return eight ? kernel<8, 3>(A, sam, sak, k0, k1, q, C, ldc, init, ld_init)
                     : kernel<7, 3>(A, sam, sak, k0, k1, q, C, ldc, init, ld_init);
      }
      for (int64_t v0 = 0; v0 < nv_; v0 += 2) {
        if (eight) {
          kernel<8, 2>(A, sam, sak, k0, k1, q, C, ldc, init, ld_init, v0);
        } else {
          kernel<7, 2>(A, sam, sak, k0, k1, q, C, ldc, init, ld_init, v0);
        }
      }
      return;
    }
    switch (nv_) {
      case 3: return tile_rows_nv<3>(rows, A, sam, sak, k0, k1, q, C, ldc, init, ld_init);
      case 4: return tile_rows_nv<4>(rows, A, sam, sak, k0, k1, q, C, ldc, init, ld_init);
      default: TORCH_CHECK(false, "gated tiled GEMM: unexpected panel count ", nv_);
    }
#endif
  }

  at::Tensor data_;
  const float* base_ = nullptr;
  std::vector<int64_t> col_;
  std::vector<int> lanes_;  // columns of each panel that B has (the rest are zero padding)
  int64_t K_ = 0, nv_ = 1;
};

}  // namespace tiled

#endif
