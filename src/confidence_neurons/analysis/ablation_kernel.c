/* Fused softmax statistics of closed-form ablated logits (confidence-neurons).
 *
 * For every token t and neuron k of a chunk, the logits after an ablation are
 *     y_v = cap(A[t,k] * L[t,v] + B[t,k] * U[k,v] + C[t,k] * P[t,v] + bias[v]) + D[t,k] * Q[v]
 * (P and Q optional, cap(z) = softcap * tanh(z / softcap) when softcap > 0).
 * Nothing of size (T, K, V) is ever stored: the vocabulary is walked in tiles that stay
 * in L1 and an online-softmax state (max, sum exp, sum (y - max) exp) is carried per pair.
 * Outputs per (t, k): max, argmax, S = sum exp(y - max), Sz = sum (y - max) exp(y - max),
 * and y at the target token; so logsumexp = max + log S and entropy = log S - Sz / S.
 * Built with -ffast-math (for the vectorised expf of glibc's libmvec), so no infinities are
 * used: -FLT_MAX stands for "no value yet".
 */
#include <math.h>
#include <stdint.h>
#include <float.h>

#define TILE 1024
#define TB 4
#define KB 8

static inline float capf(float z, float softcap) {
    return softcap > 0.f ? softcap * tanhf(z / softcap) : z;
}

void ablation_softmax_stats(
    int T, int K, int V,
    const float *L, const float *U, const float *P, const float *Q, const float *bias,
    const float *A, const float *B, const float *C, const float *D, float softcap,
    const int64_t *target,
    float *out_max, int64_t *out_arg, float *out_S, float *out_Sz, float *out_yt)
{
    int ntb = (T + TB - 1) / TB, nkb = (K + KB - 1) / KB;
    #pragma omp parallel for schedule(dynamic) collapse(2)
    for (int tb = 0; tb < ntb; tb++)
    for (int kb = 0; kb < nkb; kb++) {
        float buf[TILE] __attribute__((aligned(64)));
        int t0 = tb * TB, t1 = t0 + TB < T ? t0 + TB : T;
        int k0 = kb * KB, k1 = k0 + KB < K ? k0 + KB : K;
        float m[TB * KB], S[TB * KB], Sz[TB * KB];
        int64_t am[TB * KB];
        for (int i = 0; i < TB * KB; i++) { m[i] = -FLT_MAX; S[i] = 0.f; Sz[i] = 0.f; am[i] = 0; }
        for (int v0 = 0; v0 < V; v0 += TILE) {
            int n = V - v0 < TILE ? V - v0 : TILE;
            for (int t = t0; t < t1; t++)
            for (int k = k0; k < k1; k++) {
                int i = (t - t0) * KB + (k - k0);
                int64_t tk = (int64_t)t * K + k;
                const float *Lt = L + (int64_t)t * V + v0, *Uk = U + (int64_t)k * V + v0, *bb = bias + v0;
                float a = A[tk], b = B[tk];
                float tmax = -FLT_MAX;
                if (P == 0 && Q == 0 && softcap <= 0.f) {
                    #pragma omp simd reduction(max:tmax) aligned(buf:64)
                    for (int j = 0; j < n; j++) {
                        float y = a * Lt[j] + b * Uk[j] + bb[j];
                        buf[j] = y; tmax = y > tmax ? y : tmax;
                    }
                } else {
                    const float *Pt = P ? P + (int64_t)t * V + v0 : 0, *Qv = Q ? Q + v0 : 0;
                    float c = C ? C[tk] : 0.f, d = D ? D[tk] : 0.f;
                    for (int j = 0; j < n; j++) {
                        float z = a * Lt[j] + b * Uk[j] + bb[j];
                        if (Pt) z += c * Pt[j];
                        float y = capf(z, softcap);
                        if (Qv) y += d * Qv[j];
                        buf[j] = y; tmax = y > tmax ? y : tmax;
                    }
                }
                if (tmax > m[i]) {
                    for (int j = 0; j < n; j++) if (buf[j] == tmax) { am[i] = v0 + j; break; }
                    if (S[i] > 0.f) {
                        float sc = expf(m[i] - tmax);
                        Sz[i] = sc * (Sz[i] + (m[i] - tmax) * S[i]);
                        S[i] *= sc;
                    }
                    m[i] = tmax;
                }
                float mm = m[i], s = 0.f, sz = 0.f;
                #pragma omp simd reduction(+:s,sz) aligned(buf:64)
                for (int j = 0; j < n; j++) { float dd = buf[j] - mm; float e = expf(dd); s += e; sz += dd * e; }
                S[i] += s; Sz[i] += sz;
            }
        }
        for (int t = t0; t < t1; t++)
        for (int k = k0; k < k1; k++) {
            int i = (t - t0) * KB + (k - k0);
            int64_t tk = (int64_t)t * K + k, g = target[t];
            float z = A[tk] * L[(int64_t)t * V + g] + B[tk] * U[(int64_t)k * V + g] + bias[g];
            if (P) z += (C ? C[tk] : 0.f) * P[(int64_t)t * V + g];
            float y = capf(z, softcap);
            if (Q) y += (D ? D[tk] : 0.f) * Q[g];
            out_max[tk] = m[i]; out_arg[tk] = am[i]; out_S[tk] = S[i]; out_Sz[tk] = Sz[i]; out_yt[tk] = y;
        }
    }
}
