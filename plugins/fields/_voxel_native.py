"""A compiled per-ray kernel for the voxel field's render step (optional, CPU).

Array-at-a-time torch code spends most of a step writing and re-reading per-sample
temporaries. This kernel marches each ray once: trilinear gather of density, the
reference's alpha/transmittance/weight formulas in float32 and in the reference's order,
features only above the weight threshold, and the analytic backward that scatters density
and feature gradients straight into the grid gradients. It is plain C99 (no Python or torch
headers), compiled on first use with the system C compiler into a per-user cache and
loaded with ctypes; ctypes releases the GIL during the call, so ray ranges can run on
several threads. Without a compiler the field falls back to its torch/scipy path.

Environment: ``SJC_CACHE_DIR`` (default ``$XDG_CACHE_HOME/sjc`` or ``~/.cache/sjc``) holds
the built library; ``CC`` picks the compiler.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = r"""
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

INLINE void cells(int64_t count, float ox, float oy, float oz, float dx, float dy, float dz,
                  float tmin, const float *ticks, int64_t X, int64_t Y, int64_t Z, int64_t kk,
                  int32_t *base, int32_t *inside, float *w8) {
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
   only where w > threshold; rgb = sum w * feature. Saves raw, alpha and the softplus slope
   for the backward. Samples j >= counts[r] are outside the box: their weight is 0 and nothing
   else is written for them; features are written only where w > threshold.
   dens [Z*Y*X], feat [Z*Y*X, C]; cbase/cin/cw8 hold one ray's cells (see cells()). */
INLINE void forward_rays(int64_t r0, int64_t r1, int64_t k, const int64_t *order,
                         const float *org, const float *dir, const float *t_min,
                         const int64_t *counts, const float *ticks,
                         const float *dens, const float *feat, int64_t X, int64_t Y, int64_t Z,
                         const int64_t C, float scale, float shift, float step, float threshold,
                         int activation, float *rgb, float *w_out, float *raw_out,
                         float *alpha_out, float *slope_out, float *feat_out,
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
        for (int64_t j = 0; j < count; ++j) {  /* vectorised: softplus, its slope, alpha */
            const float z = rawrow[j] * scale + shift;
            const float ez = exp_poly(z);
            const float u = 1.0f + ez;
            const float inv = 1.0f / u;
            const float soft = log_poly(u) + (ez - (u - 1.0f)) * inv;  /* log1p(ez) */
            const float big = z > 20.0f;  /* torch's softplus threshold */
            const float sigma = big ? z : soft;
            srow[j] = big ? 1.0f : ez * inv;
            arow[j] = 1.0f - exp_poly(-sigma * step);
        }
        float T = 1.0f;
        for (int64_t c = 0; c < C; ++c) acc[c] = 0.0f;
        for (int64_t j = 0; j < count; ++j) {  /* transmittance, weights, features */
            const float alpha = arow[j];
            const float w = alpha * T;
            T = T * (1.0f - alpha);
            wrow[j] = w;
            if (w > threshold && j + 6 < count && cin[j + 6]) {  /* kept runs: fetch ahead */
                const float *p = feat + (int64_t)cbase[j + 6] * C;
                __builtin_prefetch(p); __builtin_prefetch(p + sy * C);
                __builtin_prefetch(p + sz * C); __builtin_prefetch(p + (sz + sy) * C);
            }
            if (w > threshold) {  /* only these features are read back (by the backward) */
                int m = 8;
                if (cin[j]) {
                    const int32_t b = cbase[j];
                    idx[0] = b; idx[1] = b + 1; idx[2] = b + sy; idx[3] = b + sy + 1;
                    idx[4] = b + sz; idx[5] = b + sz + 1; idx[6] = b + sz + sy; idx[7] = b + sz + sy + 1;
                    for (int q = 0; q < 8; ++q) wt[q] = cw8[q * kk + j];
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
    }
}

int sjc_voxel_forward(int64_t r0, int64_t r1, int64_t k, const int64_t *order,
                      const float *org, const float *dir, const float *t_min,
                      const int64_t *counts, const float *ticks,
                      const float *dens, const float *feat, int64_t X, int64_t Y, int64_t Z, int64_t C,
                      float scale, float shift, float step, float threshold, int activation,
                      float *rgb, float *w_out, float *raw_out, float *alpha_out, float *slope_out,
                      float *feat_out) {
    if (C > 64 || C < 1) return -1;
    const int64_t kk = k > 0 ? k : 1;  /* one ray's cells */
    int32_t *cbase = (int32_t *)malloc(sizeof(int32_t) * kk);
    int32_t *cin = (int32_t *)malloc(sizeof(int32_t) * kk);
    float *cw8 = (float *)malloc(sizeof(float) * 8 * kk);
    if (!cbase || !cin || !cw8) { free(cbase); free(cin); free(cw8); return -2; }
#define FORWARD(CC) forward_rays(r0, r1, k, order, org, dir, t_min, counts, ticks, dens, feat, X, Y, Z, CC, \
        scale, shift, step, threshold, activation, rgb, w_out, raw_out, alpha_out, slope_out, feat_out, \
        kk, cbase, cin, cw8)
    switch (C) {  /* constant channel counts let the compiler unroll the channel loops */
        case 3: FORWARD(3); break;
        case 4: FORWARD(4); break;
        default: FORWARD(C); break;
    }
    free(cbase); free(cin); free(cw8);
    return 0;
}

/* dL/dsigma_j = step * (g_j * T_{j+1} - sum_{i>j} g_i w_i), with g_j = dL/dw_j and T_{j+1}
   the inclusive transmittance; through the softplus and scale to the raw density, then
   scattered to the corners (gdens [Z*Y*X]), and the feature gradients w_j * dL/drgb, only
   where w_j > threshold (gfeat [Z*Y*X, C]); both are accumulated into. Returns
   sum(graw * raw), the gradient of the density scale's exponent. */
INLINE double backward_rays(int64_t r0, int64_t r1, int64_t k, const int64_t *order,
                            const float *org, const float *dir, const float *t_min,
                            const int64_t *counts, const float *ticks,
                            int64_t X, int64_t Y, int64_t Z, const int64_t C,
                            float scale, float step, float threshold, int activation,
                            const float *g_rgb, const float *g_w,
                            const float *w_in, const float *raw_in, const float *alpha_in,
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
        for (int64_t j = 0; j < count; ++j) {
            float g = g_w ? g_w[r * k + j] : 0.0f;
            if (wrow[j] > threshold) {
                const float *f = frow + j * C;
                for (int64_t c = 0; c < C; ++c) g += grgb[c] * f[c];
            }
            gw[j] = g;
            total += (double)g * (double)wrow[j];
        }
        float T = 1.0f;
        double prefix = 0.0;
        cells(count, ox, oy, oz, dx, dy, dz, t_min[r], ticks, X, Y, Z, kk, cbase, cin, cw8);
        for (int64_t j = 0; j < count; ++j) {
            const float w = wrow[j];
            T = T * (1.0f - arow[j]);
            prefix += (double)gw[j] * (double)w;
            const float later = (float)(total - prefix);
            const float dsigma = step * (gw[j] * T - later);
            const float graw = dsigma * srow[j] * scale;
            gscale += (double)graw * (double)rawrow[j];
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
                idx[0] = b; idx[1] = b + 1; idx[2] = b + sy; idx[3] = b + sy + 1;
                idx[4] = b + sz; idx[5] = b + sz + 1; idx[6] = b + sz + sy; idx[7] = b + sz + sy + 1;
                for (int q = 0; q < 8; ++q) wt[q] = cw8[q * kk + j];
            } else {
                const float t = t_min[r] + ticks[j];
                m = corners(ox + dx * t, oy + dy * t, oz + dz * t, X, Y, Z, idx, wt);
            }
            for (int q = 0; q < m; ++q) gdens[idx[q]] += wt[q] * graw;
            if (w > threshold) {
                const float *f = frow + j * C;
                for (int64_t c = 0; c < C; ++c) df[c] = w * grgb[c] * activation_slope(f[c], activation);
                for (int q = 0; q < m; ++q) {
                    float *o = gfeat + (int64_t)idx[q] * C;
                    for (int64_t c = 0; c < C; ++c) o[c] += wt[q] * df[c];
                }
            }
        }
    }
    return gscale;
}

int sjc_voxel_backward(int64_t r0, int64_t r1, int64_t k, const int64_t *order,
                       const float *org, const float *dir, const float *t_min,
                       const int64_t *counts, const float *ticks,
                       int64_t X, int64_t Y, int64_t Z, int64_t C,
                       float scale, float step, float threshold, int activation,
                       const float *g_rgb, const float *g_w,
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
        step, threshold, activation, g_rgb, g_w, w_in, raw_in, alpha_in, slope_in, feat_in, gdens, \
        gfeat, gw, kk, cbase, cin, cw8)
    switch (C) {
        case 3: *grad_scale = BACKWARD(3); break;
        case 4: *grad_scale = BACKWARD(4); break;
        default: *grad_scale = BACKWARD(C); break;
    }
    free(gw); free(cbase); free(cin); free(cw8);
    return 0;
}
"""

# No -ffast-math: results must follow IEEE float32 like torch. -fno-trapping-math only lets the
# compiler turn branches on floats into selects (vectorisation); it changes no value.
FLAGS = ["-O3", "-std=c99", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]


def cache_dir() -> Path:
    root = os.environ.get("SJC_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "sjc"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


class KernelUnavailable(RuntimeError):
    """The kernel could not be built or loaded (the reason is the message)."""


def load_kernel() -> ctypes.CDLL:
    """Build (once per source/compiler/platform) and load the kernel library."""
    if sys.platform == "win32":
        raise KernelUnavailable("the native kernel is not built on Windows")
    cc = _compiler()
    if cc is None:
        raise KernelUnavailable("no C compiler found (set CC)")
    key = hashlib.sha1("\0".join([SOURCE, cc, *FLAGS, sys.platform, os.uname().machine]).encode()).hexdigest()[:16]
    folder = cache_dir() / "kernels"
    library = folder / f"voxel_{key}.so"
    if not library.exists():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                src = Path(tmp) / "voxel.c"
                src.write_text(SOURCE)
                built = Path(tmp) / "voxel.so"
                proc = subprocess.run(
                    [cc, *FLAGS, str(src), "-o", str(built), "-lm"], capture_output=True, text=True, timeout=120
                )
                if proc.returncode != 0:
                    first = (proc.stderr.strip().splitlines() or ["unknown error"])[0]
                    raise KernelUnavailable(f"{cc} failed: {first}")
                os.replace(built, library)  # atomic: concurrent builders agree
        except OSError as exc:
            raise KernelUnavailable(f"cannot build in {folder}: {exc}") from exc
    try:
        lib = ctypes.CDLL(str(library))
    except OSError as exc:
        raise KernelUnavailable(f"cannot load {library}: {exc}") from exc
    i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    lib.sjc_voxel_forward.restype = ctypes.c_int
    lib.sjc_voxel_forward.argtypes = [
        i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64,
        f32, f32, f32, f32, ctypes.c_int, ptr, ptr, ptr, ptr, ptr, ptr,
    ]
    lib.sjc_voxel_backward.restype = ctypes.c_int
    lib.sjc_voxel_backward.argtypes = [
        i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64,
        f32, f32, f32, ctypes.c_int, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr,
    ]
    return lib


def kernel_or_reason() -> tuple[ctypes.CDLL | None, str]:
    """The loaded kernel, or None and why not (``SJC_NATIVE=0`` disables it)."""
    if os.environ.get("SJC_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None, "disabled by SJC_NATIVE=0"
    return _cached_kernel()


@functools.lru_cache(maxsize=1)
def _cached_kernel() -> tuple[ctypes.CDLL | None, str]:
    """One build attempt per process, success or failure."""
    try:
        return load_kernel(), ""
    except KernelUnavailable as exc:
        return None, str(exc)
