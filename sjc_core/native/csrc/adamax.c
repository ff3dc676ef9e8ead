
#include <math.h>
#include <stdint.h>

/* torch.optim.Adamax on n float32 values (torch's single-tensor formulas, in its order):
   m = lerp(m, g, weight); u = maximum(u * beta2, |g| + eps); p = p + neg_clr * m / u.
   torch's vectorised lerp (weight < 0.5) is fma(weight, g - m, m) where the CPU has FMA.

   A block whose gradient and first moment are all zero and whose u sits at its floor eps
   would be rewritten with its own values (m stays 0, u stays eps, p moves by 0), so it is
   skipped: voxel cells that never had a gradient (empty space far from any surface) cost
   one read instead of a read and a write back. */
#define IDLE_BLOCK 64
static inline __attribute__((always_inline)) void adamax_loop(
        int64_t n, float *restrict p, const float *restrict g, float *restrict m, float *restrict u,
        float weight, float beta2, float eps, float neg_clr, int fused) {
    for (int64_t start = 0; start < n; start += IDLE_BLOCK) {
        const int64_t end = start + IDLE_BLOCK < n ? start + IDLE_BLOCK : n;
        int idle = 1;
        for (int64_t i = start; i < end; ++i) idle &= (g[i] == 0.0f) & (m[i] == 0.0f) & (u[i] == eps);
        if (idle) continue;
        for (int64_t i = start; i < end; ++i) {
            const float gi = g[i], m0 = m[i];
            const float mi = fused ? fmaf(weight, gi - m0, m0) : m0 + weight * (gi - m0);
            const float a = u[i] * beta2;
            const float b = fabsf(gi) + eps;
            const float ui = (a > b || a != a) ? a : b;  /* torch.maximum propagates NaN */
            m[i] = mi;
            u[i] = ui;
            p[i] = p[i] + neg_clr * mi / ui;
        }
    }
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx2,fma"))) static void adamax_fma(
        int64_t n, float *p, const float *g, float *m, float *u, float w, float b2, float e, float c) {
    adamax_loop(n, p, g, m, u, w, b2, e, c, 1);
}
static void adamax_plain(
        int64_t n, float *p, const float *g, float *m, float *u, float w, float b2, float e, float c) {
    adamax_loop(n, p, g, m, u, w, b2, e, c, 0);
}
int sjc_adamax_fused_lerp(void) {  /* torch takes its AVX2 (FMA) kernels on such CPUs */
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
void sjc_adamax(int64_t n, float *p, const float *g, float *m, float *u, float w, float b2, float e, float c) {
    if (sjc_adamax_fused_lerp()) adamax_fma(n, p, g, m, u, w, b2, e, c);
    else adamax_plain(n, p, g, m, u, w, b2, e, c);
}
#else
#if defined(__aarch64__)
#define FUSED_LERP 1
#else
#define FUSED_LERP 0
#endif
int sjc_adamax_fused_lerp(void) { return FUSED_LERP; }
void sjc_adamax(int64_t n, float *p, const float *g, float *m, float *u, float w, float b2, float e, float c) {
    adamax_loop(n, p, g, m, u, w, b2, e, c, FUSED_LERP);
}
#endif
