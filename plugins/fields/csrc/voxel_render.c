
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))

INLINE float as_float(int32_t i) { float f; memcpy(&f, &i, 4); return f; }
INLINE int32_t as_int(float f) { int32_t i; memcpy(&i, &f, 4); return i; }

/* exp and log as branch-free polynomials (Cephes coefficients, about 1 ulp) so that the
   per-ray loops over samples vectorise; libm calls would not. */
INLINE float exp_poly(float x) {
    x = x < 88.3762626647949f ? x : 88.3762626647949f;
    x = x > -87.3365447505531f ? x : -87.3365447505531f;
    const float fx = x * 1.44269504088896341f + 0.5f;
    int32_t n = (int32_t)fx;
    n = n - (fx < (float)n);
    const float fn = (float)n;
    float r = x - fn * 0.693359375f;
    r = r - fn * -2.12194440e-4f;
    const float z = r * r;
    float y = ((((1.9875691500E-4f * r + 1.3981999507E-3f) * r + 8.3334519073E-3f) * r
                + 4.1665795894E-2f) * r + 1.6666665459E-1f) * r + 5.0000001201E-1f;
    y = y * z + r + 1.0f;
    return y * as_float((n + 127) << 23);
}

INLINE float log_poly(float x) {  /* x >= 1 here */
    const int32_t bits = as_int(x);
    int32_t e = ((bits >> 23) & 0xff) - 126;
    const float m = as_float((bits & 0x007fffff) | 0x3f000000);  /* [0.5, 1) */
    const int32_t small = m < 0.707106781186547524f;
    e = e - small;
    const float t = small ? (m + m - 1.0f) : (m - 1.0f);
    const float z = t * t;
    float y = (((((((7.0376836292E-2f * t - 1.1514610310E-1f) * t + 1.1676998740E-1f) * t
                  - 1.2420140846E-1f) * t + 1.4249322787E-1f) * t - 1.6668057665E-1f) * t
                + 2.0000714765E-1f) * t - 2.4999993993E-1f) * t + 3.3333331174E-1f;
    y = y * t * z;
    const float fe = (float)e;
    y = y + fe * -2.12194440e-4f;
    y = y - 0.5f * z;
    return t + y + fe * 0.693359375f;
}

INLINE int64_t floor_i64(float x) {  /* floorf without SSE4.1 or a libm call */
    const int64_t i = (int64_t)x;
    return (x < (float)i) ? i - 1 : i;
}

/* Continuous voxel coordinate u (centre of voxel i at u = i) -> the corners that lie in the
   grid, with grid_sample(align_corners=False, padding zeros) weights, in grid_sample's
   order (z, then y, then x). Returns how many. */
INLINE int corners(float ux, float uy, float uz, int64_t X, int64_t Y, int64_t Z,
                   int32_t *idx, float *wt) {
    const int64_t ix = floor_i64(ux), iy = floor_i64(uy), iz = floor_i64(uz);
    const float fx = ux - (float)ix, fy = uy - (float)iy, fz = uz - (float)iz;
    const float wx[2] = {1.0f - fx, fx}, wy[2] = {1.0f - fy, fy}, wz[2] = {1.0f - fz, fz};
    if (ix >= 0 && iy >= 0 && iz >= 0 && ix < X - 1 && iy < Y - 1 && iz < Z - 1) {
        const int32_t base = (int32_t)((iz * Y + iy) * X + ix);
        const int32_t sx = 1, sy = (int32_t)X, sz = (int32_t)(X * Y);
        idx[0] = base;                wt[0] = wx[0] * wy[0] * wz[0];
        idx[1] = base + sx;           wt[1] = wx[1] * wy[0] * wz[0];
        idx[2] = base + sy;           wt[2] = wx[0] * wy[1] * wz[0];
        idx[3] = base + sy + sx;      wt[3] = wx[1] * wy[1] * wz[0];
        idx[4] = base + sz;           wt[4] = wx[0] * wy[0] * wz[1];
        idx[5] = base + sz + sx;      wt[5] = wx[1] * wy[0] * wz[1];
        idx[6] = base + sz + sy;      wt[6] = wx[0] * wy[1] * wz[1];
        idx[7] = base + sz + sy + sx; wt[7] = wx[1] * wy[1] * wz[1];
        return 8;
    }
    int m = 0;
    for (int dz = 0; dz < 2; ++dz) {
        const int64_t z = iz + dz;
        if (z < 0 || z >= Z) continue;
        for (int dy = 0; dy < 2; ++dy) {
            const int64_t y = iy + dy;
            if (y < 0 || y >= Y) continue;
            for (int dx = 0; dx < 2; ++dx) {
                const int64_t x = ix + dx;
                if (x < 0 || x >= X) continue;
                idx[m] = (int32_t)((z * Y + y) * X + x);
                wt[m] = wx[dx] * wy[dy] * wz[dz];
                ++m;
            }
        }
    }
    return m;
}

/* The 8 corners of an inside cell with base index b (corner 0), in corners()'s order, with
   their weights from column j of the cell rows w8 (see cells()). */
INLINE void cell_corners(int32_t b, int32_t sy, int32_t sz, const float *w8, int64_t kk, int64_t j,
                         int32_t *idx, float *wt) {
    idx[0] = b; idx[1] = b + 1; idx[2] = b + sy; idx[3] = b + sy + 1;
    idx[4] = b + sz; idx[5] = b + sz + 1; idx[6] = b + sz + sy; idx[7] = b + sz + sy + 1;
    for (int q = 0; q < 8; ++q) wt[q] = w8[q * kk + j];
}

/* grid[corner q of the inside cell at b] += add[q], corners in corners()'s order. */
INLINE void add_to_cell(float *grid, int32_t b, int32_t sy, int32_t sz, const float *add) {
    float *p = grid + b;
    p[0] += add[0]; p[1] += add[1]; p[sy] += add[2]; p[sy + 1] += add[3];
    p[sz] += add[4]; p[sz + 1] += add[5]; p[sz + sy] += add[6]; p[sz + sy + 1] += add[7];
}

/* The cell of each sample j < count of a ray, as structure-of-arrays: base index (corner
   0), whether all 8 corners lie in the grid, and the 8 weights in corners()'s order. A
   straight loop the compiler vectorises (restrict rows: no aliasing checks); samples near a
   face (not inside) go through corners() instead. */
INLINE void cell_rows(int64_t count, float ox, float oy, float oz, float dx, float dy, float dz,
                      float tmin, const float *restrict ticks, int32_t X1, int32_t Y1, int32_t Z1,
                      int32_t sy, int32_t sz, int32_t *restrict base, int32_t *restrict inside,
                      float *restrict w0, float *restrict w1, float *restrict w2, float *restrict w3,
                      float *restrict w4, float *restrict w5, float *restrict w6, float *restrict w7) {
    for (int64_t j = 0; j < count; ++j) {
        const float t = tmin + ticks[j];
        const float ux = ox + dx * t, uy = oy + dy * t, uz = oz + dz * t;
        int32_t ix = (int32_t)ux, iy = (int32_t)uy, iz = (int32_t)uz;
        ix -= ux < (float)ix;  /* floor */
        iy -= uy < (float)iy;
        iz -= uz < (float)iz;
        const float fx = ux - (float)ix, fy = uy - (float)iy, fz = uz - (float)iz;
        const float gx = 1.0f - fx, gy = 1.0f - fy, gz = 1.0f - fz;
        inside[j] = (ix >= 0) & (iy >= 0) & (iz >= 0) & (ix < X1) & (iy < Y1) & (iz < Z1);
        base[j] = iz * sz + iy * sy + ix;
        w0[j] = gx * gy * gz;
        w1[j] = fx * gy * gz;
        w2[j] = gx * fy * gz;
        w3[j] = fx * fy * gz;
        w4[j] = gx * gy * fz;
        w5[j] = fx * gy * fz;
        w6[j] = gx * fy * fz;
        w7[j] = fx * fy * fz;
    }
}

/* sigma = softplus(raw * scale + shift) as torch (log1p(exp(z)), z itself above 20), its
   slope sigmoid(z), and alpha = 1 - exp(-sigma * step), for samples [j0, count). */
INLINE void softplus_alpha_scalar(int64_t j0, int64_t count, const float *restrict raw, float scale,
                                  float shift, float step, float *restrict slope, float *restrict alpha) {
    for (int64_t j = j0; j < count; ++j) {  /* gcc vectorises this with SSE2 */
        const float z = raw[j] * scale + shift;
        const float ez = exp_poly(z);
        const float u = 1.0f + ez;
        const float inv = 1.0f / u;
        const float soft = log_poly(u) + (ez - (u - 1.0f)) * inv;  /* log1p(ez) */
        const float big = z > 20.0f;  /* torch's softplus threshold */
        const float sigma = big ? z : soft;
        slope[j] = big ? 1.0f : ez * inv;
        alpha[j] = 1.0f - exp_poly(-sigma * step);
    }
}

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 9))
/* The two loops that are pure arithmetic (cells, softplus/alpha) again, eight samples at a
   time with AVX2 through the compiler's vector extensions: the same operations in the same
   order (no FMA), so bit-identical to the scalar code, and 3-4x fewer instructions (gcc
   does not vectorise exp_poly by itself under AVX2). Chosen at run time by CPU. */
#define HAVE_AVX2_PATH 1
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2")))
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

AVX2_INLINE v8f splat8(float x) { return (v8f){x, x, x, x, x, x, x, x}; }
AVX2_INLINE v8i splat8i(int32_t x) { return (v8i){x, x, x, x, x, x, x, x}; }
AVX2_INLINE v8f select8(v8i mask, v8f a, v8f b) { return (v8f)((mask & (v8i)a) | (~mask & (v8i)b)); }
AVX2_INLINE v8i floor8(v8f x) {  /* a true comparison is -1 */
    const v8i i = __builtin_convertvector(x, v8i);
    return i + (x < __builtin_convertvector(i, v8f));
}

AVX2_INLINE v8f exp8(v8f x) {  /* exp_poly */
    x = select8(x < splat8(88.3762626647949f), x, splat8(88.3762626647949f));
    x = select8(x > splat8(-87.3365447505531f), x, splat8(-87.3365447505531f));
    const v8f fx = x * splat8(1.44269504088896341f) + splat8(0.5f);
    const v8i n = floor8(fx);
    const v8f fn = __builtin_convertvector(n, v8f);
    v8f r = x - fn * splat8(0.693359375f);
    r = r - fn * splat8(-2.12194440e-4f);
    const v8f z = r * r;
    v8f y = ((((splat8(1.9875691500E-4f) * r + splat8(1.3981999507E-3f)) * r + splat8(8.3334519073E-3f)) * r
              + splat8(4.1665795894E-2f)) * r + splat8(1.6666665459E-1f)) * r + splat8(5.0000001201E-1f);
    y = y * z + r + splat8(1.0f);
    return y * (v8f)((n + splat8i(127)) << 23);
}

AVX2_INLINE v8f log8(v8f x) {  /* log_poly, x >= 1 */
    const v8i bits = (v8i)x;
    v8i e = ((bits >> 23) & splat8i(0xff)) - splat8i(126);
    const v8f m = (v8f)((bits & splat8i(0x007fffff)) | splat8i(0x3f000000));
    const v8i small = m < splat8(0.707106781186547524f);
    e = e + small;
    const v8f t = select8(small, m + m - splat8(1.0f), m - splat8(1.0f));
    const v8f z = t * t;
    v8f y = (((((((splat8(7.0376836292E-2f) * t - splat8(1.1514610310E-1f)) * t + splat8(1.1676998740E-1f)) * t
                 - splat8(1.2420140846E-1f)) * t + splat8(1.4249322787E-1f)) * t - splat8(1.6668057665E-1f)) * t
               + splat8(2.0000714765E-1f)) * t - splat8(2.4999993993E-1f)) * t + splat8(3.3333331174E-1f);
    y = y * t * z;
    const v8f fe = __builtin_convertvector(e, v8f);
    y = y + fe * splat8(-2.12194440e-4f);
    y = y - splat8(0.5f) * z;
    return t + y + fe * splat8(0.693359375f);
}

AVX2_INLINE void softplus_alpha8(const float *raw, float scale, float shift, float step, float *slope, float *alpha) {
    v8f rv;
    __builtin_memcpy(&rv, raw, sizeof rv);
    const v8f z = rv * splat8(scale) + splat8(shift);
    const v8f ez = exp8(z);
    const v8f u = splat8(1.0f) + ez;
    const v8f inv = splat8(1.0f) / u;
    const v8f soft = log8(u) + (ez - (u - splat8(1.0f))) * inv;
    const v8i big = z > splat8(20.0f);
    const v8f sigma = select8(big, z, soft);
    const v8f sl = select8(big, splat8(1.0f), ez * inv);
    const v8f al = splat8(1.0f) - exp8(-sigma * splat8(step));
    __builtin_memcpy(slope, &sl, sizeof sl);
    __builtin_memcpy(alpha, &al, sizeof al);
}

__attribute__((target("avx2"))) static void softplus_alpha_avx2(
        int64_t count, const float *raw, float scale, float shift, float step, float *slope, float *alpha) {
    int64_t j = 0;
    for (; j + 8 <= count; j += 8) softplus_alpha8(raw + j, scale, shift, step, slope + j, alpha + j);
    if (j < count) {  /* the last few samples through a zero-padded vector */
        float in[8] = {0, 0, 0, 0, 0, 0, 0, 0}, sl[8], al[8];
        const size_t bytes = sizeof(float) * (size_t)(count - j);
        memcpy(in, raw + j, bytes);
        softplus_alpha8(in, scale, shift, step, sl, al);
        memcpy(slope + j, sl, bytes);
        memcpy(alpha + j, al, bytes);
    }
}

__attribute__((target("avx2"))) static void cell_rows_avx2(
        int64_t count, float ox, float oy, float oz, float dx, float dy, float dz, float tmin,
        const float *ticks, int32_t X1, int32_t Y1, int32_t Z1, int32_t sy, int32_t sz, int32_t *base,
        int32_t *inside, float *w8, int64_t kk) {
    int64_t j = 0;
    for (; j + 8 <= count; j += 8) {
        v8f tick;
        __builtin_memcpy(&tick, ticks + j, sizeof tick);
        const v8f t = splat8(tmin) + tick;
        const v8f ux = splat8(ox) + splat8(dx) * t, uy = splat8(oy) + splat8(dy) * t;
        const v8f uz = splat8(oz) + splat8(dz) * t;
        const v8i ix = floor8(ux), iy = floor8(uy), iz = floor8(uz);
        const v8f fx = ux - __builtin_convertvector(ix, v8f), fy = uy - __builtin_convertvector(iy, v8f);
        const v8f fz = uz - __builtin_convertvector(iz, v8f);
        const v8f gx = splat8(1.0f) - fx, gy = splat8(1.0f) - fy, gz = splat8(1.0f) - fz;
        const v8i zero = splat8i(0);
        const v8i in = (ix >= zero) & (iy >= zero) & (iz >= zero) & (ix < splat8i(X1)) & (iy < splat8i(Y1))
                       & (iz < splat8i(Z1)) & splat8i(1);
        const v8i b = iz * splat8i(sz) + iy * splat8i(sy) + ix;
        const v8f w[8] = {gx * gy * gz, fx * gy * gz, gx * fy * gz, fx * fy * gz,
                          gx * gy * fz, fx * gy * fz, gx * fy * fz, fx * fy * fz};
        __builtin_memcpy(inside + j, &in, sizeof in);
        __builtin_memcpy(base + j, &b, sizeof b);
        for (int q = 0; q < 8; ++q) __builtin_memcpy(w8 + q * kk + j, &w[q], sizeof w[q]);
    }
    if (j < count)
        cell_rows(count - j, ox, oy, oz, dx, dy, dz, tmin, ticks + j, X1, Y1, Z1, sy, sz, base + j, inside + j,
                  w8 + j, w8 + kk + j, w8 + 2 * kk + j, w8 + 3 * kk + j, w8 + 4 * kk + j, w8 + 5 * kk + j,
                  w8 + 6 * kk + j, w8 + 7 * kk + j);
}

static int avx2_state = -1;  /* -1 unknown; a benign race: every thread finds the same value */
static int cpu_has_avx2(void) {
    if (avx2_state < 0) avx2_state = __builtin_cpu_supports("avx2") ? 1 : 0;
    return avx2_state;
}
/* enable < 0: query; 0: scalar loops only; > 0: AVX2 where the CPU has it. Returns the state. */
int sjc_voxel_simd(int enable) {
    if (enable >= 0) avx2_state = enable ? (__builtin_cpu_supports("avx2") ? 1 : 0) : 0;
    return cpu_has_avx2();
}
#else
#define HAVE_AVX2_PATH 0
static int cpu_has_avx2(void) { return 0; }
int sjc_voxel_simd(int enable) { (void)enable; return 0; }
#endif

INLINE void softplus_alpha_rows(int64_t count, const float *raw, float scale, float shift, float step,
                                float *slope, float *alpha) {
#if HAVE_AVX2_PATH
    if (cpu_has_avx2()) {
        softplus_alpha_avx2(count, raw, scale, shift, step, slope, alpha);
        return;
    }
#endif
    softplus_alpha_scalar(0, count, raw, scale, shift, step, slope, alpha);
}

INLINE void cells(int64_t count, float ox, float oy, float oz, float dx, float dy, float dz,
                  float tmin, const float *ticks, int64_t X, int64_t Y, int64_t Z, int64_t kk,
                  int32_t *base, int32_t *inside, float *w8) {
#if HAVE_AVX2_PATH
    if (cpu_has_avx2()) {
        cell_rows_avx2(count, ox, oy, oz, dx, dy, dz, tmin, ticks, (int32_t)X - 1, (int32_t)Y - 1,
                       (int32_t)Z - 1, (int32_t)X, (int32_t)(X * Y), base, inside, w8, kk);
        return;
    }
#endif
    cell_rows(count, ox, oy, oz, dx, dy, dz, tmin, ticks, (int32_t)X - 1, (int32_t)Y - 1,
              (int32_t)Z - 1, (int32_t)X, (int32_t)(X * Y), base, inside, w8, w8 + kk, w8 + 2 * kk,
              w8 + 3 * kk, w8 + 4 * kk, w8 + 5 * kk, w8 + 6 * kk, w8 + 7 * kk);
}

/* activation: 0 identity, 1 2*sigmoid-1, 2 sigmoid */
INLINE float activate(float x, int kind) {
    if (kind == 0) return x;
    const float s = 1.0f / (1.0f + expf(-x));
    return kind == 1 ? 2.0f * s - 1.0f : s;
}
INLINE float activation_slope(float a, int kind) {  /* from the activated value */
    if (kind == 0) return 1.0f;
    if (kind == 1) { const float s = 0.5f * (a + 1.0f); return 2.0f * s * (1.0f - s); }
    return a * (1.0f - a);
}

/* Rays are processed in the order order[r0..r1) (NULL: r0..r1 themselves); outputs stay at
   each ray's own index, so the order only changes memory locality, never a result.

   Per ray: sigma = softplus(raw * scale + shift), alpha = 1 - exp(-sigma * step),
   w = alpha * T with T the exclusive running product of (1 - alpha); features (activated)
   only where w > threshold; rgb = sum w * feature, opacity = sum w, depth = sum w * t (both
   summed in double). Saves raw, alpha and the softplus slope for the backward. Samples j >= counts[r] are outside the box: their weight is 0 and nothing
   else is written for them; features are written only where w > threshold.
   dens [Z*Y*X], feat [Z*Y*X, C]; cbase/cin/cw8 hold one ray's cells (see cells()). */
INLINE void forward_rays(int64_t r0, int64_t r1, int64_t k, const int64_t *order,
                         const float *org, const float *dir, const float *t_min,
                         const int64_t *counts, const float *ticks,
                         const float *dens, const float *feat, int64_t X, int64_t Y, int64_t Z,
                         const int64_t C, float scale, float shift, float step, float threshold,
                         int activation, float *rgb, float *opacity, float *depth, float *w_out,
                         float *raw_out, float *alpha_out, float *slope_out, float *feat_out,
                         int64_t kk, int32_t *cbase, int32_t *cin, float *cw8) {
    const int32_t sy = (int32_t)X, sz = (int32_t)(X * Y);
    int32_t idx[8];
    float wt[8];
    float acc[64];
    for (int64_t ii = r0; ii < r1; ++ii) {
        const int64_t r = order ? order[ii] : ii;
        const float ox = org[3 * r], oy = org[3 * r + 1], oz = org[3 * r + 2];
        const float dx = dir[3 * r], dy = dir[3 * r + 1], dz = dir[3 * r + 2];
        const int64_t count = counts[r] < k ? counts[r] : k;
        float *wrow = w_out + r * k, *rawrow = raw_out + r * k, *arow = alpha_out + r * k;
        float *srow = slope_out + r * k, *frow = feat_out + r * k * C;
        cells(count, ox, oy, oz, dx, dy, dz, t_min[r], ticks, X, Y, Z, kk, cbase, cin, cw8);
        for (int64_t j = 0; j < count; ++j) {  /* gathers: independent loads, better overlapped */
            if (j + 8 < count && cin[j + 8]) {
                const float *p = dens + cbase[j + 8];
                __builtin_prefetch(p); __builtin_prefetch(p + sy);
                __builtin_prefetch(p + sz); __builtin_prefetch(p + sz + sy);
            }
            float raw = 0.0f;
            if (cin[j]) {
                const float *d = dens + cbase[j];
                raw = d[0] * cw8[j] + d[1] * cw8[kk + j];
                raw = raw + d[sy] * cw8[2 * kk + j];
                raw = raw + d[sy + 1] * cw8[3 * kk + j];
                raw = raw + d[sz] * cw8[4 * kk + j];
                raw = raw + d[sz + 1] * cw8[5 * kk + j];
                raw = raw + d[sz + sy] * cw8[6 * kk + j];
                raw = raw + d[sz + sy + 1] * cw8[7 * kk + j];
            } else {
                const float t = t_min[r] + ticks[j];
                const int m = corners(ox + dx * t, oy + dy * t, oz + dz * t, X, Y, Z, idx, wt);
                for (int q = 0; q < m; ++q) raw += dens[idx[q]] * wt[q];
            }
            rawrow[j] = raw;
        }
        softplus_alpha_rows(count, rawrow, scale, shift, step, srow, arow);
        float T = 1.0f;
        double w_sum = 0.0, wt_sum = 0.0;
        for (int64_t c = 0; c < C; ++c) acc[c] = 0.0f;
        for (int64_t j = 0; j < count; ++j) {  /* transmittance, weights, features */
            const float alpha = arow[j];
            const float w = alpha * T;
            T = T * (1.0f - alpha);
            wrow[j] = w;
            w_sum += (double)w;
            wt_sum += (double)(w * (t_min[r] + ticks[j]));
            if (w > threshold && j + 6 < count && cin[j + 6]) {  /* kept runs: fetch ahead */
                const float *p = feat + (int64_t)cbase[j + 6] * C;
                __builtin_prefetch(p); __builtin_prefetch(p + sy * C);
                __builtin_prefetch(p + sz * C); __builtin_prefetch(p + (sz + sy) * C);
            }
            if (w > threshold) {  /* only these features are read back (by the backward) */
                int m = 8;
                if (cin[j]) {
                    cell_corners(cbase[j], sy, sz, cw8, kk, j, idx, wt);
                } else {
                    const float t = t_min[r] + ticks[j];
                    m = corners(ox + dx * t, oy + dy * t, oz + dz * t, X, Y, Z, idx, wt);
                }
                float fv[64];  /* local: the stores to feat_out cannot alias the loads */
                for (int64_t c = 0; c < C; ++c) fv[c] = 0.0f;
                for (int q = 0; q < m; ++q) {
                    const float *g = feat + (int64_t)idx[q] * C;
                    for (int64_t c = 0; c < C; ++c) fv[c] += g[c] * wt[q];
                }
                float *f = frow + j * C;
                for (int64_t c = 0; c < C; ++c) {
                    f[c] = activate(fv[c], activation);
                    acc[c] += w * f[c];
                }
            }
        }
        for (int64_t j = count; j < k; ++j) wrow[j] = 0.0f;  /* the other rows are read up to count */
        for (int64_t c = 0; c < C; ++c) rgb[r * C + c] = acc[c];
        opacity[r] = (float)w_sum;
        depth[r] = (float)wt_sum;
    }
}

int sjc_voxel_forward(int64_t r0, int64_t r1, int64_t k, const int64_t *order,
                      const float *org, const float *dir, const float *t_min,
                      const int64_t *counts, const float *ticks,
                      const float *dens, const float *feat, int64_t X, int64_t Y, int64_t Z, int64_t C,
                      float scale, float shift, float step, float threshold, int activation,
                      float *rgb, float *opacity, float *depth, float *w_out, float *raw_out,
                      float *alpha_out, float *slope_out, float *feat_out) {
    if (C > 64 || C < 1) return -1;
    const int64_t kk = k > 0 ? k : 1;  /* one ray's cells */
    int32_t *cbase = (int32_t *)malloc(sizeof(int32_t) * kk);
    int32_t *cin = (int32_t *)malloc(sizeof(int32_t) * kk);
    float *cw8 = (float *)malloc(sizeof(float) * 8 * kk);
    if (!cbase || !cin || !cw8) { free(cbase); free(cin); free(cw8); return -2; }
#define FORWARD(CC) forward_rays(r0, r1, k, order, org, dir, t_min, counts, ticks, dens, feat, X, Y, Z, CC, \
        scale, shift, step, threshold, activation, rgb, opacity, depth, w_out, raw_out, alpha_out, slope_out, \
        feat_out, \
        kk, cbase, cin, cw8)
    switch (C) {  /* constant channel counts let the compiler unroll the channel loops */
        case 3: FORWARD(3); break;
        case 4: FORWARD(4); break;
        default: FORWARD(C); break;
    }
    free(cbase); free(cin); free(cw8);
    return 0;
}

/* dL/dsigma_j = step * (g_j * T_{j+1} - sum_{i>j} g_i w_i), with g_j = dL/dw_j (the weights'
   own gradient g_w plus those through rgb, opacity and depth) and T_{j+1}
   the inclusive transmittance; through the softplus and scale to the raw density, then
   scattered to the corners (gdens [Z*Y*X]), and the feature gradients w_j * dL/drgb, only
   where w_j > threshold (gfeat [Z*Y*X, C]); both are accumulated into. Returns
   sum(graw * raw), the gradient of the density scale's exponent. */
INLINE double backward_rays(int64_t r0, int64_t r1, int64_t k, const int64_t *order,
                            const float *org, const float *dir, const float *t_min,
                            const int64_t *counts, const float *ticks,
                            int64_t X, int64_t Y, int64_t Z, const int64_t C,
                            float scale, float step, float threshold, int activation,
                            const float *g_rgb, const float *g_w, const float *g_opacity,
                            const float *g_depth, const float *w_in, const float *raw_in, const float *alpha_in,
                            const float *slope_in, const float *feat_in,
                            float *gdens, float *gfeat, float *gw,
                            int64_t kk, int32_t *cbase, int32_t *cin, float *cw8) {
    const int32_t sy = (int32_t)X, sz = (int32_t)(X * Y);
    int32_t idx[8];
    float wt[8];
    float df[64];
    double gscale = 0.0;
    for (int64_t ii = r0; ii < r1; ++ii) {
        const int64_t r = order ? order[ii] : ii;
        const float ox = org[3 * r], oy = org[3 * r + 1], oz = org[3 * r + 2];
        const float dx = dir[3 * r], dy = dir[3 * r + 1], dz = dir[3 * r + 2];
        const int64_t count = counts[r] < k ? counts[r] : k;
        const float *wrow = w_in + r * k, *frow = feat_in + r * k * C;
        const float *arow = alpha_in + r * k, *srow = slope_in + r * k, *rawrow = raw_in + r * k;
        const float *grgb = g_rgb + r * C;
        double total = 0.0;
        const float g_op = g_opacity ? g_opacity[r] : 0.0f, g_dep = g_depth ? g_depth[r] : 0.0f;
        for (int64_t j = 0; j < count; ++j) {
            float g = (g_w ? g_w[r * k + j] : 0.0f) + g_op + g_dep * (t_min[r] + ticks[j]);
            if (wrow[j] > threshold) {
                const float *f = frow + j * C;
                for (int64_t c = 0; c < C; ++c) g += grgb[c] * f[c];
            }
            gw[j] = g;
            total += (double)g * (double)wrow[j];
        }
        float T = 1.0f;
        double prefix = 0.0;
        for (int64_t j = 0; j < count; ++j) {  /* dL/draw per sample, in place of gw */
            T = T * (1.0f - arow[j]);
            prefix += (double)gw[j] * (double)wrow[j];
            const float later = (float)(total - prefix);
            const float dsigma = step * (gw[j] * T - later);
            gw[j] = dsigma * srow[j] * scale;
        }
        double ray_scale = 0.0;
        for (int64_t j = 0; j < count; ++j) ray_scale += (double)gw[j] * (double)rawrow[j];
        gscale += ray_scale;
        cells(count, ox, oy, oz, dx, dy, dz, t_min[r], ticks, X, Y, Z, kk, cbase, cin, cw8);
        int32_t cur = -1;
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t j = 0; j < count; ++j) {
            const float w = wrow[j];
            const float graw = gw[j];
            if (j + 6 < count && cin[j + 6]) {  /* fetch a later sample's gradient rows early */
                const int64_t b = cbase[j + 6];
                float *p = gdens + b;
                __builtin_prefetch(p, 1); __builtin_prefetch(p + sy, 1);
                __builtin_prefetch(p + sz, 1); __builtin_prefetch(p + sz + sy, 1);
                if (wrow[j + 6] > threshold) {
                    float *q = gfeat + b * C;
                    __builtin_prefetch(q, 1); __builtin_prefetch(q + sy * C, 1);
                    __builtin_prefetch(q + sz * C, 1); __builtin_prefetch(q + (sz + sy) * C, 1);
                }
            }
            int m = 8;
            if (cin[j]) {
                const int32_t b = cbase[j];
                if (b != cur) {  /* consecutive samples in one cell: summed before touching the grid */
                    if (cur >= 0) add_to_cell(gdens, cur, sy, sz, acc);
                    cur = b;
                    for (int q = 0; q < 8; ++q) acc[q] = 0.0f;
                }
                for (int q = 0; q < 8; ++q) acc[q] += cw8[q * kk + j] * graw;
                if (!(w > threshold)) continue;
                cell_corners(b, sy, sz, cw8, kk, j, idx, wt);
            } else {
                const float t = t_min[r] + ticks[j];
                m = corners(ox + dx * t, oy + dy * t, oz + dz * t, X, Y, Z, idx, wt);
                for (int q = 0; q < m; ++q) gdens[idx[q]] += wt[q] * graw;
            }
            if (w > threshold) {
                const float *f = frow + j * C;
                for (int64_t c = 0; c < C; ++c) df[c] = w * grgb[c] * activation_slope(f[c], activation);
                for (int q = 0; q < m; ++q) {
                    float *o = gfeat + (int64_t)idx[q] * C;
                    for (int64_t c = 0; c < C; ++c) o[c] += wt[q] * df[c];
                }
            }
        }
        if (cur >= 0) add_to_cell(gdens, cur, sy, sz, acc);
    }
    return gscale;
}

int sjc_voxel_backward(int64_t r0, int64_t r1, int64_t k, const int64_t *order,
                       const float *org, const float *dir, const float *t_min,
                       const int64_t *counts, const float *ticks,
                       int64_t X, int64_t Y, int64_t Z, int64_t C,
                       float scale, float step, float threshold, int activation,
                       const float *g_rgb, const float *g_w, const float *g_opacity, const float *g_depth,
                       const float *w_in, const float *raw_in, const float *alpha_in,
                       const float *slope_in, const float *feat_in,
                       float *gdens, float *gfeat, double *grad_scale) {
    if (C > 64 || C < 1) return -1;
    const int64_t kk = k > 0 ? k : 1;
    float *gw = (float *)malloc(sizeof(float) * kk);
    int32_t *cbase = (int32_t *)malloc(sizeof(int32_t) * kk);
    int32_t *cin = (int32_t *)malloc(sizeof(int32_t) * kk);
    float *cw8 = (float *)malloc(sizeof(float) * 8 * kk);
    if (!gw || !cbase || !cin || !cw8) { free(gw); free(cbase); free(cin); free(cw8); return -2; }
#define BACKWARD(CC) backward_rays(r0, r1, k, order, org, dir, t_min, counts, ticks, X, Y, Z, CC, scale, \
        step, threshold, activation, g_rgb, g_w, g_opacity, g_depth, w_in, raw_in, alpha_in, slope_in, feat_in, gdens, \
        gfeat, gw, kk, cbase, cin, cw8)
    switch (C) {
        case 3: *grad_scale = BACKWARD(3); break;
        case 4: *grad_scale = BACKWARD(4); break;
        default: *grad_scale = BACKWARD(C); break;
    }
    free(gw); free(cbase); free(cin); free(cw8);
    return 0;
}
