// Bilinear sampling of a channels-last image at DCN kernel points, written as matmul columns.
//
// The DyHead deformable convolution (fiber_det/modeling/head/deform_conv.py) samples every
// (kernel point, output pixel) at a fractional position, bilinearly with zeros outside, scales
// it by the modulation mask and contracts the (9 C, points) columns with the weights. ATen's
// grid_sample does the sampling one channel at a time, gathering 4 scattered values per point;
// here a point's 4 corners are 4 contiguous rows of C values (channels last), and the result is
// written straight into the column layout, the mask applied on the way.
//
// Exactness: every output value is computed with the float operations of ATen's vectorised CPU
// grid_sample (bilinear, zeros, align_corners=True), in the same order, then multiplied by the
// mask as a separate rounding step, so the columns are bitwise those of grid_sample(...) * mask.
// ATen's sum of the 4 weighted corners is contracted into multiply-adds or not depending on how
// its kernel for the running CPU capability was built, so both variants are here (`fused`), and
// fiber_det/modeling/head/dcn_sampler.py picks the one that matches at run time, or none. The
// file is compiled with -ffp-contract=off so that only the multiply-adds written out are fused.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <torch/headeronly/version.h>

#include <string>

#include <cmath>
#include <cstdint>
#include <vector>

// Function clones for AVX2 + FMA and for the baseline ISA, picked when the library loads (x86-64
// with GCC or clang); elsewhere one plain version.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FIBER_DET_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FIBER_DET_CLONES
#endif

namespace {

constexpr int64_t kBlock = 16;  // points per block: 16 consecutive output values per channel

struct Corners {
  const float* p[4];  // nw, ne, sw, se rows (or the zero row when out of bounds)
  float w[4];         // their weights
  float m;            // modulation (1 without mask)
};

inline Corners corners(float gx, float gy, const float* x, const float* zero, int64_t H,
                       int64_t W, int64_t C, float sx, float sy, float m) {
  // unnormalise (align_corners=True), then the weights from the floors, as ATen does
  const float fx = (gx + 1.0f) * sx;
  const float fy = (gy + 1.0f) * sy;
  const float xw = std::floor(fx);
  const float yn = std::floor(fy);
  const float w = fx - xw;
  const float e = 1.0f - w;
  const float n = fy - yn;
  const float s = 1.0f - n;
  Corners c;
  c.w[0] = s * e;
  c.w[1] = s * w;
  c.w[2] = n * e;
  c.w[3] = n * w;
  c.m = m;
  // bounds as float comparisons: for integral values below 2^24 they equal ATen's int32 ones,
  // and NaN or huge coordinates (int32 overflow there) are out of bounds in both
  const float xe = xw + 1.0f;
  const float ys = yn + 1.0f;
  const bool in_w = xw > -1.0f && xw < static_cast<float>(W);
  const bool in_e = xe > -1.0f && xe < static_cast<float>(W);
  const bool in_n = yn > -1.0f && yn < static_cast<float>(H);
  const bool in_s = ys > -1.0f && ys < static_cast<float>(H);
  const int64_t ix = (in_w || in_e) ? static_cast<int64_t>(xw) : 0;
  const int64_t iy = (in_n || in_s) ? static_cast<int64_t>(yn) : 0;
  c.p[0] = (in_n && in_w) ? x + (iy * W + ix) * C : zero;
  c.p[1] = (in_n && in_e) ? x + (iy * W + ix + 1) * C : zero;
  c.p[2] = (in_s && in_w) ? x + ((iy + 1) * W + ix) * C : zero;
  c.p[3] = (in_s && in_e) ? x + ((iy + 1) * W + ix + 1) * C : zero;
  return c;
}

// one point, all channels: ((nw v_nw + ne v_ne) + sw v_sw) + se v_se, then times the mask.
// FUSED: the three additions as multiply-adds, as the compiler contracted ATen's expression in
// the AVX2 / AVX-512 kernels of the torch builds checked. Every clone computes the same values.
template <bool FUSED, bool MASKED>
FIBER_DET_CLONES void interpolate(const Corners& c, int64_t C, float* out) {
  const float* a = c.p[0];
  const float* b = c.p[1];
  const float* d = c.p[2];
  const float* f = c.p[3];
  const float wa = c.w[0], wb = c.w[1], wd = c.w[2], wf = c.w[3], m = c.m;
  for (int64_t k = 0; k < C; ++k) {
    float v;
    if (FUSED) {
      v = std::fma(f[k], wf, std::fma(d[k], wd, std::fma(b[k], wb, a[k] * wa)));
    } else {
      const float ab = a[k] * wa + b[k] * wb;
      const float abd = ab + d[k] * wd;
      v = abd + f[k] * wf;
    }
    out[k] = MASKED ? v * m : v;
  }
}

}  // namespace

// x: (H, W, C) contiguous float32 (an image, channels last); grid: (P, 2) contiguous (x, y)
// normalised points; mask: (P,) contiguous or empty; fused: the variant (see interpolate).
// Returns (C, P): channel c of point p.
torch::Tensor sample_columns(const torch::Tensor& x, const torch::Tensor& grid,
                             const torch::Tensor& mask, bool fused) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat && x.dim() == 3 &&
                  x.is_contiguous(),
              "sample_columns: x must be a contiguous float32 CPU tensor (H, W, C)");
  TORCH_CHECK(grid.device().is_cpu() && grid.scalar_type() == torch::kFloat &&
                  grid.dim() == 2 && grid.size(1) == 2 && grid.is_contiguous(),
              "sample_columns: grid must be a contiguous float32 CPU tensor (P, 2)");
  const bool masked = mask.numel() > 0;
  TORCH_CHECK(!masked || (mask.device().is_cpu() && mask.scalar_type() == torch::kFloat &&
                          mask.dim() == 1 && mask.is_contiguous() &&
                          mask.numel() == grid.size(0)),
              "sample_columns: mask must be a contiguous float32 CPU tensor of P values");
  const int64_t H = x.size(0), W = x.size(1), C = x.size(2), P = grid.size(0);
  auto out = torch::empty({C, P}, x.options());
  if (P == 0 || C == 0) return out;
  const float sx = static_cast<float>(W - 1) / 2;
  const float sy = static_cast<float>(H - 1) / 2;
  const float* xp = x.data_ptr<float>();
  const float* gp = grid.data_ptr<float>();
  const float* mp = masked ? mask.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  const int64_t blocks = (P + kBlock - 1) / kBlock;
  // torch's intra-op threads (OpenMP: the file is compiled with -fopenmp); each chunk writes
  // its own columns
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> zero(C, 0.0f);
    std::vector<float> tile(kBlock * C);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t p0 = blk * kBlock;
      const int64_t n = std::min(kBlock, P - p0);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t p = p0 + j;
        const Corners c = corners(gp[2 * p], gp[2 * p + 1], xp, zero.data(), H, W, C, sx, sy,
                                  masked ? mp[p] : 1.0f);
        float* dst = tile.data() + j * C;
        if (fused) {
          masked ? interpolate<true, true>(c, C, dst) : interpolate<true, false>(c, C, dst);
        } else {
          masked ? interpolate<false, true>(c, C, dst) : interpolate<false, false>(c, C, dst);
        }
      }
      // transpose the block into the columns: n contiguous values per channel
      for (int64_t k = 0; k < C; ++k) {
        float* dst = op + k * P + p0;
        for (int64_t j = 0; j < n; ++j) dst[j] = tile[j * C + k];
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sample_columns", &sample_columns,
        "bilinear DCN samples of a channels-last image as (C, P) columns, times the mask",
        py::call_guard<py::gil_scoped_release>());
  // the torch release whose headers it was built with (fiber_det/modeling/head/dcn_sampler.py
  // refuses a library built for another one)
  m.attr("torch_version") = std::to_string(TORCH_VERSION_MAJOR) + "." +
                            std::to_string(TORCH_VERSION_MINOR) + "." +
                            std::to_string(TORCH_VERSION_PATCH);
}
