// The dense GEMMs through cuBLASLt where the machine has libcublasLt: dlopen'ed on first use, so
// the build needs no cuBLAS (cublaslt.cuh declares what is used) and a machine without it runs
// our kernels (gemm.cu). PEFTKIT_CUBLASLT=0 turns it off, =1 requires it (E_CUDA when it cannot
// be loaded), unset uses it when it loads; PEFTKIT_CUBLASLT_PATH names the file to load.
//
// cuBLASLt is column-major and we are row-major: C[M,N] row-major with ldc is the column-major
// N×M matrix Cᵀ = op(B)ᵀ·op(A)ᵀ, so cuBLASLt's "A" is our B and its "B" is our A. A row-major
// operand stored as sr×sc with ld is, read column-major, sc×sr with the same ld, and op(X)ᵀ is
// that matrix as it is (not transposed) or transposed exactly when X.trans is.
#include <dlfcn.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "common.cuh"
#include "cublaslt.cuh"

namespace pk::cuda::lt {

namespace {

const Api* g_api = nullptr;
std::string g_library;

template <typename F>
bool bind(void* lib, const char* name, F& fn) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  return fn != nullptr;
}

// The library's entry points, or an empty string with `why` set.
std::string load(Api& a, std::string& why) {
  std::vector<std::string> names;
  if (const char* path = std::getenv("PEFTKIT_CUBLASLT_PATH"); path && *path) names.push_back(path);
  names.push_back("libcublasLt.so." + std::to_string(CUDART_VERSION / 1000));  // the toolkit we were built with
  for (const char* n : {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11", "libcublasLt.so"}) names.push_back(n);
  for (const std::string& name : names) {
    void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* e = dlerror();
      if (why.empty() && e) why = e;
      continue;
    }
    if (bind(lib, "cublasLtCreate", a.create) && bind(lib, "cublasLtMatmulDescCreate", a.matmul_desc_create) &&
        bind(lib, "cublasLtMatmulDescSetAttribute", a.matmul_desc_set) &&
        bind(lib, "cublasLtMatrixLayoutCreate", a.layout_create) &&
        bind(lib, "cublasLtMatmulPreferenceCreate", a.preference_create) &&
        bind(lib, "cublasLtMatmulPreferenceSetAttribute", a.preference_set) &&
        bind(lib, "cublasLtMatmulPreferenceDestroy", a.preference_destroy) &&
        bind(lib, "cublasLtMatmulAlgoGetHeuristic", a.heuristic) && bind(lib, "cublasLtMatmul", a.matmul))
      return name;
    why = name + " lacks a cuBLASLt entry point";
    dlclose(lib);
  }
  return "";
}

const Api* loaded() {
  static const bool once = [] {
    const char* mode = std::getenv("PEFTKIT_CUBLASLT");
    const std::string m = mode ? mode : "";
    if (m == "0") return true;
    static Api a{};
    std::string why;
    g_library = load(a, why);
    if (!g_library.empty()) g_api = &a;
    else if (m == "1") fail("E_CUDA", "PEFTKIT_CUBLASLT=1 but no libcublasLt could be loaded (" + why +
                                          "): install the CUDA toolkit's cuBLAS or set PEFTKIT_CUBLASLT_PATH");
    return true;
  }();
  (void)once;
  return g_api;
}

// The largest power of two (at most 256) dividing the address and the row pitch in bytes:
// cuBLASLt's heuristic assumes 256-byte aligned operands unless told less.
uint32_t alignment(const void* p, int64_t ld, size_t elem) {
  const uint64_t bits = uint64_t(reinterpret_cast<uintptr_t>(p)) | uint64_t(ld) * elem | 256;
  return uint32_t(bits & (~bits + 1));
}

// One shape's descriptors and algorithm, found once and kept (a run has tens of shapes).
struct Plan {
  MatmulDesc desc = nullptr;
  Layout la = nullptr, lb = nullptr, lc = nullptr;
  Algo algo{};
  size_t workspace = 0;
  bool ok = false;
};
using PlanKey = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int32_t, int32_t, uint32_t,
                           uint32_t, uint32_t>;
constexpr size_t kWorkspace = 32u << 20;  // NVIDIA's advice for Hopper; smaller GPUs use less of it

// One operand in cuBLASLt's terms (see the top of the file).
struct Side {
  const void* data;
  int64_t rows, cols, ld;  // column-major view
  int32_t op;
};
Side side(const void* data, int64_t ld, bool trans, int64_t r, int64_t c) {
  // op(X) is r×c; X is stored row-major as (trans ? c×r : r×c), read column-major as its transpose.
  const int64_t sr = trans ? c : r, sc = trans ? r : c;
  return {data, sc, sr, ld, trans ? kOpT : kOpN};
}

Plan make_plan(Handle h, const Side& a, const Side& b, int64_t m, int64_t n, int64_t ldc, int32_t ab_type,
               int32_t c_type, const uint32_t align[3]) {
  const Api& x = *g_api;
  Plan p;
  if (x.matmul_desc_create(&p.desc, kCompute32F, kR32F) != kSuccess ||
      x.matmul_desc_set(p.desc, kDescTransA, &a.op, sizeof a.op) != kSuccess ||
      x.matmul_desc_set(p.desc, kDescTransB, &b.op, sizeof b.op) != kSuccess ||
      x.layout_create(&p.la, ab_type, uint64_t(a.rows), uint64_t(a.cols), a.ld) != kSuccess ||
      x.layout_create(&p.lb, ab_type, uint64_t(b.rows), uint64_t(b.cols), b.ld) != kSuccess ||
      x.layout_create(&p.lc, c_type, uint64_t(m), uint64_t(n), ldc) != kSuccess)
    return p;
  Preference pref = nullptr;
  if (x.preference_create(&pref) != kSuccess) return p;
  const uint64_t ws = kWorkspace;
  bool set = x.preference_set(pref, kPrefMaxWorkspace, &ws, sizeof ws) == kSuccess;
  for (int i = 0; i < 4; i++)  // A, B, C, D (D is C)
    set = set && x.preference_set(pref, kPrefAlignA + i, &align[i < 3 ? i : 2], sizeof(uint32_t)) == kSuccess;
  HeuristicResult r{};
  int returned = 0;
  if (set && x.heuristic(h, p.desc, p.la, p.lb, p.lc, p.lc, pref, 1, &r, &returned) == kSuccess && returned > 0 &&
      r.state == kSuccess) {
    p.algo = r.algo;
    p.workspace = r.workspace_size;
    p.ok = true;
  }
  x.preference_destroy(pref);
  return p;
}

const Plan& plan_for(Handle h, const Side& a, const Side& b, int64_t m, int64_t n, int64_t k, int64_t ldc,
                     int32_t ab_type, int32_t c_type, const uint32_t align[3]) {
  static std::mutex mu;
  static std::map<PlanKey, Plan> plans;
  const PlanKey key{m, n, k, a.ld, b.ld, ldc, a.op, b.op, ab_type, c_type, align[0], align[1], align[2]};
  std::lock_guard<std::mutex> lock(mu);
  auto it = plans.find(key);
  if (it == plans.end()) it = plans.emplace(key, make_plan(h, a, b, m, n, ldc, ab_type, c_type, align)).first;
  return it->second;
}

// dst [rows, cols] dense = the bf16 rounding of src [rows, cols] (row pitch ld).
__global__ void round_to_bf16_kernel(uint16_t* dst, const float* src, int64_t rows, int64_t cols, int64_t ld) {
  const int64_t n = rows * cols;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x)
    dst[e] = f32_to_bf16_bits(src[(e / cols) * ld + e % cols]);
}

// Bytes of the bf16 copy an operand needs (0: used as it is).
size_t copy_bytes(const MatRef& x, int64_t r, int64_t c) {
  return x.dtype == DType::F32 && x.round_bf16 ? size_t(r) * size_t(c) * 2 : 0;
}

// x, rounded into dst when it is f32 marked round_bf16: the copy is dense (ld = stored columns).
MatRef as_bf16(const MatRef& x, int64_t r, int64_t c, uint16_t* dst) {
  if (!(x.dtype == DType::F32 && x.round_bf16)) return x;
  const int64_t sr = x.trans ? c : r, sc = x.trans ? r : c;
  round_to_bf16_kernel<<<elt_blocks(sr * sc), kEltThreads, 0, stream()>>>(dst, static_cast<const float*>(x.data), sr,
                                                                            sc, x.ld);
  check_launch("gemm: round an operand to bf16 for cuBLASLt");
  MatRef y = x;
  y.data = dst;
  y.dtype = DType::BF16;
  y.ld = sc;
  y.round_bf16 = false;
  return y;
}

}  // namespace

const Api* api() { return loaded(); }

const char* library() { return loaded() ? g_library.c_str() : ""; }

void install_for_test(const Api* a, const char* name) {
  loaded();
  g_api = a;
  g_library = a ? name : "";
}

bool gemm(int64_t M, int64_t N, int64_t K, float alpha, const MatRef& A, const MatRef& B, float beta, void* C,
          DType cdtype, int64_t ldc) {
  if (!loaded() || K == 0) return false;
  const bool a16 = A.dtype == DType::BF16 || A.round_bf16, b16 = B.dtype == DType::BF16 || B.round_bf16;
  const bool bf16 = a16 && b16, f32 = A.dtype == DType::F32 && B.dtype == DType::F32 && !a16 && !b16;
  // cuBLASLt multiplies like types: bf16 × bf16 into f32 or bf16, f32 × f32 into f32. An exact f32
  // side beside a bf16 one is widened by our kernels instead.
  if (!bf16 && !(f32 && cdtype == DType::F32)) return false;
  thread_local Handle handle = nullptr;
  bind_device();  // before the handle: it belongs to the device current when it is made
  if (!handle && g_api->create(&handle) != kSuccess) return false;

  // One block: the workspace first (cuBLAS wants it 256-byte aligned, as pool blocks are), then
  // the bf16 copies, each starting on a 256-byte boundary.
  const size_t a_bytes = (copy_bytes(A, M, K) + 255) / 256 * 256, b_bytes = copy_bytes(B, K, N);
  char* scratch = nullptr;
  if (cudaMallocAsync(reinterpret_cast<void**>(&scratch), kWorkspace + a_bytes + b_bytes, stream()) != cudaSuccess) {
    cudaGetLastError();
    return false;  // no room for the copies and the workspace: our kernels need none
  }
  struct Release {
    char* p;
    ~Release() { cudaFreeAsync(p, stream()); }
  } release{scratch};
  const MatRef a = as_bf16(A, M, K, reinterpret_cast<uint16_t*>(scratch + kWorkspace));
  const MatRef b = as_bf16(B, K, N, reinterpret_cast<uint16_t*>(scratch + kWorkspace + a_bytes));
  const size_t elem = bf16 ? 2 : 4, c_elem = cdtype == DType::F32 ? 4 : 2;
  // cuBLASLt's A is our B (op gives N×K), its B our A (K×M); its N×M result is our Cᵀ.
  const Side sa = side(b.data, b.ld, b.trans, K, N), sb = side(a.data, a.ld, a.trans, M, K);
  const uint32_t align[3] = {alignment(b.data, b.ld, elem), alignment(a.data, a.ld, elem), alignment(C, ldc, c_elem)};
  const int32_t ab_type = bf16 ? kR16BF : kR32F, c_type = cdtype == DType::F32 ? kR32F : kR16BF;
  const Plan& p = plan_for(handle, sa, sb, N, M, K, ldc, ab_type, c_type, align);
  if (!p.ok) return false;
  const Status s = g_api->matmul(handle, p.desc, &alpha, sa.data, p.la, sb.data, p.lb, &beta, C, p.lc, C, p.lc, &p.algo,
                                 scratch, kWorkspace, stream());
  if (s != kSuccess) fail("E_CUDA", "cublasLtMatmul failed with status " + std::to_string(s));
  return true;
}

}  // namespace pk::cuda::lt

namespace pk::cuda {
const char* blas_library() { return lt::library(); }
}  // namespace pk::cuda
