/* Fused softmax statistics of closed-form ablated logits (confidence-neurons).
 *
 * For every token t and neuron k of a chunk, the logits after an ablation are
 *     y_v = cap(A[t,k] * L[t,v] + B[t,k] * U[k,v] + C[t,k] * P[t,v] + bias[v]) + D[t,k] * Q[v]
 * (P and Q optional, cap(z) = softcap * tanh(z / softcap) when softcap > 0).
 * Nothing of size (T, K, V) is ever stored. The vocabulary is walked once, in tiles shared by a
 * block of (t, k) pairs so that L and U stay in cache, with exponentials taken relative to a
 * per-token shift m[t] (the clean maximum logit, which ablated logits stay close to). A pair whose
 * own maximum lands more than 60 nats from the shift is recomputed with its exact maximum, so
 * nothing overflows or underflows.
 * Outputs per (t, k): M = max_v y, S = sum exp(y - shift), Sz = sum (y - shift) exp(y - shift),
 * the shift used, y at the target token and y at a reference token (the clean argmax). Hence
 * logsumexp = shift + log S, entropy = log S - Sz / S, and the top-1 prediction changed iff M > y_ref.
 * Built with -ffast-math (for the vectorised expf of glibc's libmvec), so no infinities are used:
 * -FLT_MAX stands for "no value yet".
 */
#include <math.h>
#include <stdint.h>
#include <float.h>

#define TILE 2048
#define TB 4
#define KB 8

typedef struct {
    const float *L, *U, *P, *Q, *bias, *A, *B, *C, *D;
    float softcap;
    int K, V;
} Problem;

/* One expression for every logit, with explicit fused multiply-adds, so that the vectorised loops
 * and the scalar logit_at round identically (the top-1 test compares their results exactly). */
static inline float lin(float a, float l, float b, float u, float bias) { return fmaf(a, l, fmaf(b, u, bias)); }

/* Not inlined: with soft-capping, a vectorised copy would use libmvec's tanhf, which rounds
 * differently from the scalar tanhf that computes y at the target and reference tokens. */
__attribute__((noinline)) static float logit_at(const Problem *p, int t, int k, int64_t v) {
    int64_t tk = (int64_t)t * p->K + k;
    float z = lin(p->A[tk], p->L[(int64_t)t * p->V + v], p->B[tk], p->U[(int64_t)k * p->V + v], p->bias[v]);
    if (p->P) z = fmaf(p->C[tk], p->P[(int64_t)t * p->V + v], z);
    if (p->softcap > 0.f) z = p->softcap * tanhf(z / p->softcap);
    if (p->Q) z = fmaf(p->D[tk], p->Q[v], z);
    return z;
}

/* Accumulate one tile [v0, v0 + n) of pair (t, k) into (mx, s, sz) relative to shift. */
static inline void tile(const Problem *p, int t, int k, int v0, int n, float shift, float *mx, float *s, float *sz) {
    int64_t tk = (int64_t)t * p->K + k;
    const float *Lt = p->L + (int64_t)t * p->V + v0, *Uk = p->U + (int64_t)k * p->V + v0, *bb = p->bias + v0;
    float a = p->A[tk], b = p->B[tk], m = *mx, acc = 0.f, accz = 0.f;
    if (!p->P && p->softcap <= 0.f) {
        const float *Qv = p->Q ? p->Q + v0 : 0;
        float d = p->Q ? p->D[tk] : 0.f;
        if (Qv) {
            #pragma omp simd reduction(max:m) reduction(+:acc,accz)
            for (int j = 0; j < n; j++) {
                float y = fmaf(d, Qv[j], lin(a, Lt[j], b, Uk[j], bb[j]));
                m = y > m ? y : m;
                float dd = y - shift, e = expf(dd);
                acc += e; accz += dd * e;
            }
        } else {
            #pragma omp simd reduction(max:m) reduction(+:acc,accz)
            for (int j = 0; j < n; j++) {
                float y = lin(a, Lt[j], b, Uk[j], bb[j]);
                m = y > m ? y : m;
                float dd = y - shift, e = expf(dd);
                acc += e; accz += dd * e;
            }
        }
    } else if (p->softcap <= 0.f) {  /* a post-MLP norm's term C P, and maybe D Q */
        const float *Pt = p->P + (int64_t)t * p->V + v0, *Qv = p->Q ? p->Q + v0 : 0;
        float c = p->C[tk], d = p->Q ? p->D[tk] : 0.f;
        #pragma omp simd reduction(max:m) reduction(+:acc,accz)
        for (int j = 0; j < n; j++) {
            float y = fmaf(c, Pt[j], lin(a, Lt[j], b, Uk[j], bb[j]));
            if (Qv) y = fmaf(d, Qv[j], y);
            m = y > m ? y : m;
            float dd = y - shift, e = expf(dd);
            acc += e; accz += dd * e;
        }
    } else {
        for (int j = 0; j < n; j++) {
            float y = logit_at(p, t, k, v0 + j);
            m = y > m ? y : m;
            float dd = y - shift, e = expf(dd);
            acc += e; accz += dd * e;
        }
    }
    *mx = m; *s += acc; *sz += accz;
}

void ablation_softmax_stats(
    int T, int K, int V,
    const float *L, const float *U, const float *P, const float *Q, const float *bias,
    const float *A, const float *B, const float *C, const float *D, float softcap,
    const float *shift, const int64_t *target, const int64_t *ref,
    float *out_max, float *out_S, float *out_Sz, float *out_shift, float *out_yt, float *out_yref)
{
    Problem p = {L, U, P, Q, bias, A, B, C, D, softcap, K, V};
    int ntb = (T + TB - 1) / TB, nkb = (K + KB - 1) / KB;
    #pragma omp parallel for schedule(dynamic) collapse(2)
    for (int tb = 0; tb < ntb; tb++)
    for (int kb = 0; kb < nkb; kb++) {
        int t0 = tb * TB, t1 = t0 + TB < T ? t0 + TB : T;
        int k0 = kb * KB, k1 = k0 + KB < K ? k0 + KB : K;
        float mx[TB * KB], S[TB * KB], Sz[TB * KB];
        for (int i = 0; i < TB * KB; i++) { mx[i] = -FLT_MAX; S[i] = 0.f; Sz[i] = 0.f; }
        for (int v0 = 0; v0 < V; v0 += TILE) {
            int n = V - v0 < TILE ? V - v0 : TILE;
            for (int t = t0; t < t1; t++)
                for (int k = k0; k < k1; k++) {
                    int i = (t - t0) * KB + (k - k0);
                    tile(&p, t, k, v0, n, shift[t], &mx[i], &S[i], &Sz[i]);
                }
        }
        for (int t = t0; t < t1; t++)
            for (int k = k0; k < k1; k++) {
                int i = (t - t0) * KB + (k - k0);
                int64_t tk = (int64_t)t * K + k;
                float sh = shift[t];
                if (mx[i] - sh > 60.f || mx[i] - sh < -60.f) {
                    float m2 = -FLT_MAX;
                    sh = mx[i]; S[i] = 0.f; Sz[i] = 0.f;
                    for (int v0 = 0; v0 < V; v0 += TILE)
                        tile(&p, t, k, v0, V - v0 < TILE ? V - v0 : TILE, sh, &m2, &S[i], &Sz[i]);
                }
                out_max[tk] = mx[i]; out_S[tk] = S[i]; out_Sz[tk] = Sz[i]; out_shift[tk] = sh;
                out_yt[tk] = logit_at(&p, t, k, target[t]);
                out_yref[tk] = logit_at(&p, t, k, ref[t]);
            }
    }
}
