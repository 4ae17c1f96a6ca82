// The CPU GEMM: a GotoBLAS/BLIS-style blocked driver over register-blocked micro-kernels
// (gemm_avx512.cc, gemm_avx2.cc, gemm_neon.cc on arm64, or the portable one below, picked once
// from CPUID).
//
// C is cut into blocks that threads take dynamically (gemm_panels); each block runs, outermost first:
//   jc: nc columns ─ pc: kc rows of the concatenated K ─ pack the kc×nc B block (L2/L3)
//     ir: mr rows ─ pack one mr×kc A micro-panel, alpha folded in (L1)
//       jr: nr-column panels ─ micro-kernel: an mr×nr tile of C in registers
// Operands reach the packing through PanelSources (gemm.h), so the terms of a sum share one
// concatenated K and bf16 or quantized operands cost nothing to the kernels. bf16 compute is an
// f32 operand marked round_bf16: its pack rounds it, and a single product whose operands are
// both bf16 (stored or rounded) runs on the bf16 kernel where the CPU has one; an f32 operand
// is never rounded unless marked.
//
// Shapes that would waste the tiles are turned around: when few rows and many columns fit the
// tile badly (M = 16 with mr = 14), the transposed product Cᵀ = op(B)ᵀ·op(A)ᵀ is computed and
// written back transposed. When N fits in a couple of panels (LoRA's rank), an A panel would be
// packed for a single use, so f32 A is read in place. M = 1 and N = 1 are matrix-vector
// products, memory-bound: the matrix is read in place, never packed; so are 2 to 16 rows against
// W's rows where the CPU has GemmFewRows kernels (a decode step of a batch).
#include <algorithm>
#include <cstdlib>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "gemm.h"
#include "gemm_kernels.h"
#include "peftkit/cpu_features.h"
#include "peftkit/parallel.h"

namespace pk::cpu {

namespace {

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// ---- The portable micro-kernel: plain C++ the compiler vectorizes for the baseline ISA -------
constexpr int kPortableMR = 4, kPortableNR = 8, kPortableVW = 4;

template <int W, bool ROW_CONTIG>
void portable_tile(int64_t kc, const float* a, int64_t a_rs, int64_t a_ks, const float* b, float* c, int64_t ldc,
                   float alpha, float beta) {
  float acc[kPortableMR][W] = {};
  for (int64_t k = 0; k < kc; k++, a += a_ks, b += W)
    for (int i = 0; i < kPortableMR; i++) {
      const float ai = ROW_CONTIG ? a[i] : a[i * a_rs];
      for (int j = 0; j < W; j++) acc[i][j] += ai * b[j];
    }
  for (int i = 0; i < kPortableMR; i++)
    for (int j = 0; j < W; j++) {
      float& ci = c[i * ldc + j];
      ci = beta == 0.f ? alpha * acc[i][j] : alpha * acc[i][j] + beta * ci;
    }
}

void portable_kernel(int64_t kc, const float* a, int64_t a_rs, int64_t a_ks, const float* b, int w, float* c,
                     int64_t ldc, float alpha, float beta) {
  if (a_rs == 1) {
    if (w == kPortableNR) portable_tile<kPortableNR, true>(kc, a, a_rs, a_ks, b, c, ldc, alpha, beta);
    else portable_tile<kPortableVW, true>(kc, a, a_rs, a_ks, b, c, ldc, alpha, beta);
  } else {
    if (w == kPortableNR) portable_tile<kPortableNR, false>(kc, a, a_rs, a_ks, b, c, ldc, alpha, beta);
    else portable_tile<kPortableVW, false>(kc, a, a_rs, a_ks, b, c, ldc, alpha, beta);
  }
}

}  // namespace

const GemmArch& gemm_arch() {
  static const GemmArch arch = [] {
#if defined(PEFTKIT_X86)
    if (cpu_isa() == Isa::Avx512) {
      GemmArch a = gemm_arch_avx512();
      a.pack = gemm_packers_avx512();
      a.few_rows = gemm_few_rows_avx512();
      if (!cpu_features().avx512_bf16) a.bf16 = nullptr;
      if (cpu_amx() == Amx::Hardware) return gemm_arch_amx(a);
      if (cpu_amx() == Amx::Emulated) return gemm_arch_amx_emulated(a);
      return a;
    }
    if (cpu_isa() == Isa::Avx2) return gemm_arch_avx2();
#endif
#if defined(PEFTKIT_ARM64)
    if (cpu_isa() == Isa::Neon) return gemm_arch_neon();
#endif
    return GemmArch{"portable", kPortableMR, kPortableNR, kPortableVW, 256, 2048, portable_kernel, nullptr, 0, 0, {}};
  }();
  return arch;
}

namespace {

// ---- Scratch memory: allocated by the calling thread before any parallel region, so that a
// failed allocation throws where it can be caught ------------------------------------------------
struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<unsigned char[], FreeDeleter>;

Buffer alloc_bytes(size_t bytes) {
  bytes = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes ? bytes : 64);
  if (!p) throw std::bad_alloc();
  return Buffer(static_cast<unsigned char*>(p));
}

// gemm_panels' packing buffers, kept per calling thread and grown as needed, up to a cap. They
// are megabytes, and a fresh block per call is a fresh mapping (tensor.cc sets glibc's mmap
// threshold to 1 MiB) page-faulted in on every call: ~42k faults per SmolLM2-135M training step.
// Per thread, so concurrent callers (workers, the libuv pool) never share one; freed when the
// thread exits. Beyond the cap (many threads, huge panels) a call allocates its own, as before,
// so an idle thread never holds more than the cap.
constexpr size_t kKeptScratch = size_t(64) << 20;

struct Scratchpad {
  Buffer owned;  // this call's own buffer, when it is above the cap
  unsigned char* data;
};

Scratchpad thread_scratch(size_t bytes) {
  if (bytes > kKeptScratch) {
    Buffer b = alloc_bytes(bytes);
    unsigned char* p = b.get();
    return {std::move(b), p};
  }
  thread_local Buffer buf;
  thread_local size_t capacity = 0;
  if (bytes > capacity) {
    buf.reset();
    capacity = 0;
    buf = alloc_bytes(bytes);
    capacity = bytes;
  }
  return {nullptr, buf.get()};
}

// ---- The blocked product ----------------------------------------------------------------------
struct Problem {
  const GemmArch* arch;
  int64_t M, N, K;  // K: the terms' K ranges concatenated
  const PanelTerm* terms;
  int nterms;
  float beta;
  void* C;
  DType cdtype;
  int64_t ldc;
  bool c_trans;   // element (i, j) lives at C[j·ldc + i]: the transposed product is computed
  bool bf16;      // VDPBF16PS over bf16 k-pairs
  bool direct_a;  // A is read in place (f32, few column panels)
  int64_t kc, nc;
  // f32 terms added to each C tile right after the last bf16 slice (bf16 compute beside f32
  // terms, e.g. LoRA's rank-r term), from f32 panels holding their concatenated K (tail_k).
  const PanelTerm* tail;
  int ntail;
  int64_t tail_k;
  int mr = 0;       // rows of an A micro-panel: the f32 tile's, or the bf16 kernel's (a multiple)
  int k_align = 2;  // panels hold kc rounded up to this
};

struct Scratch {
  void* bblock;   // kc×nc B block: float, or bf16 pairs
  void* apanel;   // mr×kc A micro-panel
  float* tile;    // mr×nr, for tiles that cannot be written to C directly
  float* acc;     // f32 sums of a bf16 C block across kc slices
  float* tail_b;  // tail_k×nc f32 B block of the tail terms
  float* tail_a;  // mr×tail_k f32 A micro-panel of the tail terms, in strips of the f32 tile's rows
  bf16* apairs;   // the A micro-panel as k-pairs, before GemmArch::bf16_a_layout
};

// Calls f(term, k0 in the term, length, offset in the slice) for each term inside [k0, k0+kc)
// of the concatenated K.
template <typename F>
void for_segments(const Problem& p, int64_t k0, int64_t kc, F&& f) {
  int64_t base = 0;
  for (int t = 0; t < p.nterms; t++) {
    const int64_t lo = std::max(k0, base), hi = std::min(k0 + kc, base + p.terms[t].K);
    if (lo < hi) f(p.terms[t], lo - base, hi - lo, lo - k0);
    base += p.terms[t].K;
  }
}

int panel_width(const GemmArch& a, int64_t cols_left) {
  return int(std::min<int64_t>(a.nr, round_up(cols_left, a.vw)));
}

// C(i0+i, j0+j) = t[i·ldt + j] + beta·C(i0+i, j0+j) for i < m, j < n; beta 0: C is not read.
template <typename T>
void merge_into(T* c, int64_t rs, int64_t cs, const float* t, int64_t ldt, int64_t m, int64_t n, float beta) {
  auto put = [&](int64_t i, int64_t j) {
    T& d = c[i * rs + j * cs];
    const float v = t[i * ldt + j];
    if constexpr (std::is_same_v<T, float>) d = beta == 0.f ? v : v + beta * d;
    else d = f32_to_bf16(beta == 0.f ? v : v + beta * bf16_to_f32(d));
  };
  if (cs == 1) {
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < n; j++) put(i, j);
  } else {
    for (int64_t j = 0; j < n; j++)
      for (int64_t i = 0; i < m; i++) put(i, j);
  }
}

void merge(const Problem& p, const float* t, int64_t ldt, int64_t m, int64_t n, int64_t i0, int64_t j0, float beta) {
  const int64_t rs = p.c_trans ? 1 : p.ldc, cs = p.c_trans ? p.ldc : 1;
  if (p.cdtype == DType::F32)
    merge_into(static_cast<float*>(p.C) + i0 * rs + j0 * cs, rs, cs, t, ldt, m, n, beta);
  else
    merge_into(static_cast<bf16*>(p.C) + i0 * rs + j0 * cs, rs, cs, t, ldt, m, n, beta);
}

void pack_b_block(const Problem& p, const Scratch& s, int64_t pc, int64_t kc, int64_t jc, int64_t nc) {
  const GemmArch& a = *p.arch;
  for (int64_t jr = 0; jr < nc; jr += a.nr) {
    const int w = panel_width(a, nc - jr);
    const int64_t nj = std::min<int64_t>(w, nc - jr);
    if (p.bf16) {
      const PanelSource& b = p.terms[0].b;
      bf16* panel = static_cast<bf16*>(s.bblock) + jr * round_up(kc, p.k_align);
      b.pack_bf16_pairs(panel, w, pc, kc, jc + jr, nj, b.ctx);
      const int64_t pairs = (kc + 1) / 2, padded = round_up(kc, p.k_align) / 2;
      std::fill(panel + pairs * w * 2, panel + padded * w * 2, bf16(0));
      continue;
    }
    float* panel = static_cast<float*>(s.bblock) + jr * kc;
    for_segments(p, pc, kc, [&](const PanelTerm& t, int64_t k0, int64_t len, int64_t off) {
      t.b.pack(panel + off * w, w, k0, len, jc + jr, nj, p.direct_a ? t.alpha : 1.f, t.b.ctx);
    });
  }
}

// The tail terms' B block (all their K at once) and A micro-panel, alpha folded into A.
void pack_tail_b(const Problem& p, const Scratch& s, int64_t jc, int64_t nc) {
  const GemmArch& a = *p.arch;
  for (int64_t jr = 0; jr < nc; jr += a.nr) {
    const int w = panel_width(a, nc - jr);
    const int64_t nj = std::min<int64_t>(w, nc - jr);
    int64_t off = 0;
    for (int t = 0; t < p.ntail; t++) {
      const PanelTerm& term = p.tail[t];
      term.b.pack(s.tail_b + jr * p.tail_k + off * w, w, 0, term.K, jc + jr, nj, 1.f, term.b.ctx);
      off += term.K;
    }
  }
}

// In strips of the f32 tile's rows, for a bf16 tile taller than it (AMX).
void pack_tail_a(const Problem& p, const Scratch& s, int64_t ir, int64_t mr) {
  const int MR = p.arch->mr;
  for (int64_t h = 0; h < mr; h += MR) {
    int64_t off = 0;
    for (int t = 0; t < p.ntail; t++) {
      const PanelTerm& term = p.tail[t];
      term.a.pack(s.tail_a + h * p.tail_k + off * MR, MR, 0, term.K, ir + h, std::min<int64_t>(MR, mr - h),
                  term.alpha, term.a.ctx);
      off += term.K;
    }
  }
}

void pack_a_panel(const Problem& p, const Scratch& s, int64_t pc, int64_t kc, int64_t ir, int64_t mr) {
  const int MR = p.mr;
  if (p.bf16) {
    const PanelSource& a = p.terms[0].a;
    const GemmBf16ALayout layout = p.arch->bf16_a_layout;
    a.pack_bf16_pairs(layout ? s.apairs : static_cast<bf16*>(s.apanel), MR, pc, kc, ir, mr, a.ctx);
    if (layout) layout(static_cast<bf16*>(s.apanel), s.apairs, kc, MR);
    return;
  }
  float* panel = static_cast<float*>(s.apanel);
  for_segments(p, pc, kc, [&](const PanelTerm& t, int64_t k0, int64_t len, int64_t off) {
    t.a.pack(panel + off * MR, MR, k0, len, ir, mr, p.direct_a ? 1.f : t.alpha, t.a.ctx);
  });
}

// Runs the product for rows [m0, m1) and columns [n0, n1) of C, in one thread.
void run_block(const Problem& p, const Scratch& s, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const GemmArch& a = *p.arch;
  const int MR = p.mr;
  // bf16 C is written once, after the last kc slice: partial sums stay f32 in between.
  const bool acc_mode = p.cdtype == DType::BF16 && p.K > p.kc;
  const int64_t ld_acc = round_up(std::min(p.nc, n1 - n0), a.vw);
  for (int64_t jc = n0; jc < n1; jc += p.nc) {
    const int64_t nc = std::min(p.nc, n1 - jc);
    for (int64_t pc = 0; pc < p.K; pc += p.kc) {
      const int64_t kc = std::min(p.kc, p.K - pc);
      const bool first = pc == 0, tail = p.ntail > 0 && pc + kc == p.K;
      pack_b_block(p, s, pc, kc, jc, nc);
      if (tail) pack_tail_b(p, s, jc, nc);
      for (int64_t ir = m0; ir < m1; ir += MR) {
        const int64_t mr = std::min<int64_t>(MR, m1 - ir);
        const bool direct = p.direct_a && mr == MR;
        if (!direct) pack_a_panel(p, s, pc, kc, ir, mr);
        if (tail) pack_tail_a(p, s, ir, mr);
        for (int64_t jr = 0; jr < nc; jr += a.nr) {
          const int w = panel_width(a, nc - jr);
          const int64_t nj = std::min<int64_t>(w, nc - jr);
          float* dst;
          int64_t ldd;
          float beta_k;
          bool via_tile = false;
          if (acc_mode) {
            dst = s.acc + (ir - m0) * ld_acc + jr;
            ldd = ld_acc;
            beta_k = first ? 0.f : 1.f;
          } else if (!p.c_trans && p.cdtype == DType::F32 && mr == MR && nj == w) {
            dst = static_cast<float*>(p.C) + ir * p.ldc + jc + jr;
            ldd = p.ldc;
            beta_k = first ? p.beta : 1.f;
          } else {
            dst = s.tile;
            ldd = w;
            beta_k = 0.f;
            via_tile = true;
          }
          if (p.bf16) {
            const bf16* bp = static_cast<const bf16*>(s.bblock) + jr * round_up(kc, p.k_align);
            a.bf16(kc, static_cast<const bf16*>(s.apanel), bp, w, dst, ldd, p.terms[0].alpha, beta_k);
          } else {
            const float* bp = static_cast<const float*>(s.bblock) + jr * kc;
            if (direct) {
              bool seg_first = true;
              for_segments(p, pc, kc, [&](const PanelTerm& t, int64_t k0, int64_t len, int64_t off) {
                const float* ap = t.a.direct + k0 * t.a.k_stride + ir * t.a.x_stride;
                a.f32(len, ap, t.a.x_stride, t.a.k_stride, bp + off * w, w, dst, ldd, 1.f, seg_first ? beta_k : 1.f);
                seg_first = false;
              });
            } else {
              a.f32(kc, static_cast<const float*>(s.apanel), 1, MR, bp, w, dst, ldd, 1.f, beta_k);
            }
          }
          // The f32 tail joins the tile while it is still in L1, before it is merged into C.
          // In strips of the f32 tile's rows: a bf16 tile may be taller (AMX). A strip past the
          // last row writes only into the tile it is merged from, which has MR rows.
          if (tail)
            for (int64_t h = 0; h < mr; h += a.mr)
              a.f32(p.tail_k, s.tail_a + h * p.tail_k, 1, a.mr, s.tail_b + jr * p.tail_k, w, dst + h * ldd, ldd, 1.f,
                    1.f);
          if (via_tile) merge(p, s.tile, w, mr, nj, ir, jc + jr, first ? p.beta : 1.f);
        }
      }
    }
    if (acc_mode) merge(p, s.acc, ld_acc, m1 - m0, nc, m0, jc, p.beta);
  }
}

// The fraction of tile work that is useful for an M×N product.
double tile_use(const GemmArch& a, int64_t M, int64_t N) {
  const int64_t cols = N / a.nr * a.nr + round_up(N % a.nr, a.vw);
  return double(M) / double(round_up(M, a.mr)) * double(N) / double(cols);
}

void scale_c(int64_t M, int64_t N, float beta, void* C, DType cdtype, int64_t ldc) {
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      if (cdtype == DType::F32) {
        float& c = static_cast<float*>(C)[i * ldc + j];
        c = beta == 0.f ? 0.f : beta * c;
      } else {
        bf16& c = static_cast<bf16*>(C)[i * ldc + j];
        c = f32_to_bf16(beta == 0.f ? 0.f : beta * bf16_to_f32(c));
      }
    }
}

// ---- The products that read their matrix in place (M = 1, N = 1, few rows) share these --------
// C[idx] = v + beta·C[idx], where beta == 0 means C is not read.
inline void store_c(void* C, DType cdtype, int64_t idx, float v, float beta) {
  if (cdtype == DType::F32) {
    float& c = static_cast<float*>(C)[idx];
    c = beta == 0.f ? v : v + beta * c;
  } else {
    bf16& c = static_cast<bf16*>(C)[idx];
    c = f32_to_bf16(beta == 0.f ? v : v + beta * bf16_to_f32(c));
  }
}

// Memory-bound: one thread below 2^16 multiply-adds, else up to one per 16 columns.
int in_place_threads(int64_t work, int64_t N) {
  return work < (int64_t(1) << 16) ? 1 : int(std::min<int64_t>(num_threads(), (N + 15) / 16));
}

// Thread th's columns [j0, j1) of N: 16-aligned cuts, so each column's sum is one thread's.
std::pair<int64_t, int64_t> column_range(int64_t N, int threads, int th) {
  const int64_t j0 = std::min(N, round_up(N * th / threads, 16));
  const int64_t j1 = th + 1 == threads ? N : std::min(N, round_up(N * (th + 1) / threads, 16));
  return {j0, j1};
}

// ---- M = 1: y = Σ_t x_t·op(B_t), memory-bound, the matrix read in place ---------------------
struct VecTerm {
  std::vector<float> x;  // alpha·op(A)(0, :), widened
  MatRef B;              // a K×N view: B(k, j) = trans ? data[j·ld + k] : data[k·ld + j]
};

template <bool ROUND, typename T>
void gemv_rows(float* y, const float* x, const T* b, int64_t ld, int64_t K, int64_t j0, int64_t n) {
  for (int64_t k = 0; k < K; k++) {
    const float xk = x[k];
    const T* r = b + k * ld + j0;
    for (int64_t j = 0; j < n; j++) y[j] += xk * operand_value<ROUND>(r[j]);
  }
}

// Four columns per pass: each load of x feeds four dot products.
template <bool ROUND, typename T>
void gemv_cols(float* y, const float* x, const T* b, int64_t ld, int64_t K, int64_t j0, int64_t n) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const T *c0 = b + (j0 + j) * ld, *c1 = c0 + ld, *c2 = c1 + ld, *c3 = c2 + ld;
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t k = 0; k < K; k++) {
      s0 += x[k] * operand_value<ROUND>(c0[k]);
      s1 += x[k] * operand_value<ROUND>(c1[k]);
      s2 += x[k] * operand_value<ROUND>(c2[k]);
      s3 += x[k] * operand_value<ROUND>(c3[k]);
    }
    y[j] += s0;
    y[j + 1] += s1;
    y[j + 2] += s2;
    y[j + 3] += s3;
  }
  for (; j < n; j++) {
    const T* col = b + (j0 + j) * ld;
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t k = 0; k < K; k++) s += x[k] * operand_value<ROUND>(col[k]);
    y[j] += s;
  }
}

void gemv_range(float* y, const VecTerm& t, int64_t j0, int64_t n) {
  const int64_t K = int64_t(t.x.size());
  const MatRef& B = t.B;
  if (B.dtype == DType::F32 && B.round_bf16) {
    const float* b = static_cast<const float*>(B.data);
    if (B.trans) gemv_cols<true>(y, t.x.data(), b, B.ld, K, j0, n);
    else gemv_rows<true>(y, t.x.data(), b, B.ld, K, j0, n);
  } else if (B.dtype == DType::F32) {
    const float* b = static_cast<const float*>(B.data);
    if (B.trans) gemv_cols<false>(y, t.x.data(), b, B.ld, K, j0, n);
    else gemv_rows<false>(y, t.x.data(), b, B.ld, K, j0, n);
  } else {
    const bf16* b = static_cast<const bf16*>(B.data);
    if (B.trans) gemv_cols<false>(y, t.x.data(), b, B.ld, K, j0, n);
    else gemv_rows<false>(y, t.x.data(), b, B.ld, K, j0, n);
  }
}

// C[j·incc] = Σ_t x_t·B_t(:, j) + beta·C[j·incc] for j < N.
void gemv_sum(int64_t N, const std::vector<VecTerm>& terms, float beta, void* C, DType cdtype, int64_t incc) {
  int64_t work = 0;
  for (const VecTerm& t : terms) work += int64_t(t.x.size()) * N;
  const int threads = in_place_threads(work, N);
  std::vector<float> y(size_t(N), 0.f);
#pragma omp parallel for num_threads(threads) schedule(static, 1)
  for (int th = 0; th < threads; th++) {
    const auto [j0, j1] = column_range(N, threads, th);
    if (j0 >= j1) continue;
    for (const VecTerm& t : terms) gemv_range(y.data() + j0, t, j0, j1 - j0);
    for (int64_t j = j0; j < j1; j++) store_c(C, cdtype, j * incc, y[size_t(j)], beta);
  }
}

float element(const MatRef& m, int64_t i, int64_t j) {
  const int64_t idx = m.trans ? j * m.ld + i : i * m.ld + j;
  if (m.dtype == DType::BF16) return bf16_to_f32(static_cast<const bf16*>(m.data)[idx]);
  const float v = static_cast<const float*>(m.data)[idx];
  return m.round_bf16 ? operand_value<true>(v) : v;
}

// ---- 2 ≤ M ≤ kFewRowsMax: every term's matrix read in place (GemmFewRows) ---------------------
// Where each term's B is W's rows (B(k, j) = W[j·ld + k], X·Wᵀ) stored f32 (not read rounded) or
// bf16 and the CPU has the kernels.
bool few_rows_fit(int64_t M, const GemmTerm* terms, int nterms) {
  const GemmFewRows& fr = gemm_arch().few_rows;
  if (M < 2 || M > kFewRowsMax) return false;
  for (int t = 0; t < nterms; t++) {
    const MatRef& B = terms[t].B;
    const bool f32 = B.dtype == DType::F32 && !B.round_bf16 && fr.f32;
    if (!B.trans || !(f32 || (B.dtype == DType::BF16 && fr.bf16))) return false;
  }
  return true;
}

void few_rows_sum(int64_t M, int64_t N, const GemmTerm* terms, int nterms, float beta, void* C, DType cdtype,
                  int64_t ldc) {
  const GemmFewRows& fr = gemm_arch().few_rows;
  // alpha·A, widened (and rounded where marked) into contiguous rows: M × K floats a term.
  std::vector<std::vector<float>> xs(static_cast<size_t>(nterms));
  int64_t work = 0;
  for (int t = 0; t < nterms; t++) {
    const GemmTerm& g = terms[t];
    std::vector<float>& x = xs[size_t(t)];
    x.resize(size_t(M * g.K));
    for (int64_t i = 0; i < M; i++)
      for (int64_t k = 0; k < g.K; k++) x[size_t(i * g.K + k)] = g.alpha * element(g.A, i, k);
    work += M * g.K * N;
  }
  std::vector<float> y(size_t(M * N), 0.f);
  const int threads = in_place_threads(work, N);
#pragma omp parallel for num_threads(threads) schedule(static, 1)
  for (int th = 0; th < threads; th++) {
    const auto [j0, j1] = column_range(N, threads, th);
    if (j0 >= j1) continue;
    for (int t = 0; t < nterms; t++) {
      const GemmTerm& g = terms[t];
      const float* x = xs[size_t(t)].data();
      if (g.B.dtype == DType::F32)
        fr.f32(int(M), j1 - j0, g.K, x, g.K, static_cast<const float*>(g.B.data) + j0 * g.B.ld, g.B.ld, y.data() + j0, N);
      else
        fr.bf16(int(M), j1 - j0, g.K, x, g.K, static_cast<const bf16*>(g.B.data) + j0 * g.B.ld, g.B.ld, y.data() + j0, N);
    }
    for (int64_t i = 0; i < M; i++)
      for (int64_t j = j0; j < j1; j++) store_c(C, cdtype, i * ldc + j, y[size_t(i * N + j)], beta);
  }
}

MatRef flipped(MatRef m) {
  m.trans = !m.trans;
  return m;
}

}  // namespace

void gemm_panels(int64_t M, int64_t N, const PanelTerm* terms, int nterms, float beta, void* C, DType cdtype,
                 int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  int64_t K = 0;
  for (int t = 0; t < nterms; t++) K += terms[t].K;
  if (K == 0) return scale_c(M, N, beta, C, cdtype, ldc);

  const GemmArch& arch = gemm_arch();
  Problem p{&arch, M, N, K, terms, nterms, beta, C, cdtype, ldc, false, false, false, arch.kc, arch.nc, nullptr, 0, 0,
            arch.mr, 2};
  std::vector<PanelTerm> swapped;
  if (tile_use(arch, N, M) > 1.15 * tile_use(arch, M, N)) {
    swapped.assign(terms, terms + nterms);
    for (PanelTerm& t : swapped) std::swap(t.a, t.b);
    p.terms = swapped.data();
    std::swap(p.M, p.N);
    p.c_trans = true;
  }
  // The bf16 kernel runs when the first term's operands are both bf16 (stored, or rounded under
  // bf16 compute). Other terms then form the f32 tail (at most one f32 slice of K), so bf16
  // compute beside an f32 term still writes C once; with a longer tail everything goes through
  // the f32 kernel, bf16 values widened (the same products).
  const bool lead_bf16 = arch.bf16 && p.terms[0].a.pack_bf16_pairs && p.terms[0].b.pack_bf16_pairs && p.terms[0].K > 0;
  p.bf16 = lead_bf16 && (nterms == 1 || K - p.terms[0].K <= arch.kc);
  if (p.bf16) {
    p.kc = arch.kc_bf16;
    p.nc = arch.nc_bf16;
    p.tail = p.terms + 1;
    p.ntail = nterms - 1;
    p.tail_k = K - p.terms[0].K;
    p.K = p.terms[0].K;
    p.nterms = 1;
    p.mr = arch.mr_bf16 ? arch.mr_bf16 : arch.mr;
    p.k_align = arch.k_align_bf16;
  }
  // Equal kc slices: K = 576 as 288 + 288 rather than 256 + 256 + 64, whose short last slice
  // pays a full C-tile update for a quarter of the work.
  {
    const int64_t slices = (p.K + p.kc - 1) / p.kc;
    p.kc = std::min(p.kc, round_up((p.K + slices - 1) / slices, std::max(16, p.k_align)));
  }
  p.direct_a = !p.bf16 && p.N <= 2 * arch.nr;
  for (int t = 0; t < nterms; t++) p.direct_a = p.direct_a && p.terms[t].a.direct;

  // Threads: one for small products (starting a team costs more than it saves). Larger ones
  // are cut into up to 4 blocks per thread, of at least ~32 MFLOP, handed out dynamically: a
  // thread that gets less of its core (a busy machine, a sibling hyperthread) then takes fewer
  // blocks instead of holding up the others. Each block packs its own operands; the grid
  // minimizes the largest block's multiply-adds plus its packing (~10 flops' worth per element).
  // bf16 C with several kc slices keeps f32 sums for a block's rows × nc: at most 8 MiB, so they
  // stay in cache (46 MiB for M = 5632 would go to DRAM, and be page-faulted in on every call).
  const bool acc_mode = cdtype == DType::BF16 && p.K > p.kc;
  const int64_t um = (p.M + p.mr - 1) / p.mr, un = (p.N + arch.nr - 1) / arch.nr;
  const int64_t acc_units = std::max<int64_t>(1, (int64_t(8) << 20) / (4 * std::min(p.nc, p.N) * p.mr));
  const int min_tm = acc_mode ? int((um + acc_units - 1) / acc_units) : 1;
  const int64_t flops = 2 * p.M * p.N * K;
  const int threads = flops < (int64_t(1) << 20) ? 1 : num_threads();
  const int blocks = std::max(min_tm, threads == 1 ? 1 : int(std::clamp<int64_t>(flops >> 25, threads, 4 * int64_t(threads))));
  int tm = min_tm, tn = blocks / min_tm;
  double best = -1;
  for (int m = min_tm; m <= blocks; m++) {
    const int n = blocks / m;
    const double mb = double((um + m - 1) / m * p.mr), nb = double((un + n - 1) / n * arch.nr);
    const double cost = 2 * mb * nb + 10 * (mb + nb);
    if (best < 0 || cost < best) best = cost, tm = m, tn = n;
  }
  const int64_t m_max = (um + tm - 1) / tm * p.mr, n_max = (un + tn - 1) / tn * arch.nr;

  // Per-thread scratch, sized to this problem.
  const int64_t kc = std::min(p.kc, p.K), nc_max = std::min(p.nc, n_max);
  const size_t elem = p.bf16 ? sizeof(bf16) : sizeof(float), kc_alloc = size_t(round_up(kc, p.k_align));
  const size_t b_bytes = round_up(kc_alloc * size_t(round_up(nc_max, arch.nr)) * elem, 64);
  const size_t a_bytes = round_up(kc_alloc * size_t(p.mr) * elem, 64);
  const size_t ap_bytes = p.bf16 && arch.bf16_a_layout ? a_bytes : 0;
  const size_t t_bytes = round_up(size_t(p.mr) * size_t(arch.nr) * sizeof(float), 64);
  const size_t c_bytes = acc_mode ? round_up(size_t(m_max) * size_t(round_up(nc_max, arch.vw)) * sizeof(float), 64) : 0;
  const size_t tb_bytes = round_up(size_t(p.tail_k) * size_t(round_up(nc_max, arch.nr)) * sizeof(float), 64);
  const size_t ta_bytes = round_up(size_t(p.tail_k) * size_t(p.mr) * sizeof(float), 64);
  const size_t per_thread = b_bytes + a_bytes + t_bytes + c_bytes + tb_bytes + ta_bytes + ap_bytes;
  const Scratchpad pad = thread_scratch(per_thread * size_t(threads));
  unsigned char* const scratch = pad.data;

#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int blk = 0; blk < tm * tn; blk++) {
    const int64_t bi = blk / tn, bj = blk % tn;
    const int64_t m0 = std::min(p.M, um * bi / tm * p.mr), m1 = std::min(p.M, um * (bi + 1) / tm * p.mr);
    const int64_t n0 = std::min(p.N, un * bj / tn * arch.nr), n1 = std::min(p.N, un * (bj + 1) / tn * arch.nr);
    if (m0 >= m1 || n0 >= n1) continue;
#ifdef _OPENMP
    const int th = omp_get_thread_num();
#else
    const int th = 0;
#endif
    unsigned char* base = scratch + per_thread * size_t(th);
    unsigned char* tail = base + b_bytes + a_bytes + t_bytes + c_bytes;
    Scratch s{base, base + b_bytes, reinterpret_cast<float*>(base + b_bytes + a_bytes),
              reinterpret_cast<float*>(base + b_bytes + a_bytes + t_bytes), reinterpret_cast<float*>(tail),
              reinterpret_cast<float*>(tail + tb_bytes), reinterpret_cast<bf16*>(tail + tb_bytes + ta_bytes)};
    run_block(p, s, m0, m1, n0, n1);
  }
}

void gemm_sum(int64_t M, int64_t N, const GemmTerm* terms, int nterms, float beta, void* C, DType cdtype,
              int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (M == 1 || N == 1) {
    // One row (or one column, as the transposed product): x·B with the matrix read in place.
    std::vector<VecTerm> vt(static_cast<size_t>(nterms));
    for (int t = 0; t < nterms; t++) {
      const GemmTerm& g = terms[t];
      VecTerm& v = vt[size_t(t)];
      v.x.resize(size_t(g.K));
      if (M == 1) {
        for (int64_t k = 0; k < g.K; k++) v.x[size_t(k)] = g.alpha * element(g.A, 0, k);
        v.B = g.B;
      } else {
        for (int64_t k = 0; k < g.K; k++) v.x[size_t(k)] = g.alpha * element(g.B, k, 0);
        v.B = flipped(g.A);
      }
    }
    return gemv_sum(M == 1 ? N : M, vt, beta, C, cdtype, M == 1 ? 1 : ldc);
  }
  if (few_rows_fit(M, terms, nterms)) return few_rows_sum(M, N, terms, nterms, beta, C, cdtype, ldc);
  std::vector<MatRef> a_views(static_cast<size_t>(nterms));
  std::vector<PanelTerm> pt(static_cast<size_t>(nterms));
  for (int t = 0; t < nterms; t++) {
    a_views[size_t(t)] = flipped(terms[t].A);
    pt[size_t(t)] = PanelTerm{matref_source(&a_views[size_t(t)]), matref_source(&terms[t].B), terms[t].K, terms[t].alpha};
  }
  gemm_panels(M, N, pt.data(), nterms, beta, C, cdtype, ldc);
}

void gemm(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, MatRef B, float beta, void* C, DType cdtype,
          int64_t ldc) {
  const GemmTerm term{A, B, K, alpha};
  gemm_sum(M, N, &term, 1, beta, C, cdtype, ldc);
}

}  // namespace pk::cpu
