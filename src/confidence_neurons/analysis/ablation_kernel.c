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
 * Given a vector w (as the rows w^1..w^NMOM of W, NMOM x V; no Q, no soft-cap), a coefficient G[t,k]
 * and an order n[t,k] per pair, also R = S2 / S - 1 with S2 = sum exp(y + G w - shift), the sum
 * of the logits moved along w (mediation.py: DE_freq). Order 0 skips it; orders 1..NMOM take it from the series
 * S + sum_m G^m/m! sum exp(y - shift) w^m (a few fused multiply-adds per logit instead of a second
 * exponential); order NMOM + 1 takes a second exponential; a negative order is left to the caller.
 * The caller picks each pair's order from a bound on the series' error.
 * Built with -ffast-math (for the vectorised expf of glibc's libmvec), so no infinities are used:
 * -FLT_MAX stands for "no value yet".
 */
#include <math.h>
#include <stdint.h>
#include <float.h>

#define TILE 2048
#define TB 4
#define KB 8
#define NMOM 4

int ablation_kernel_nmom(void) { return NMOM; }

typedef struct {
    const float *L, *U, *P, *Q, *W, *bias, *A, *B, *C, *D, *G;
    const int32_t *order;
    float softcap;
    int K, V;
} Problem;

typedef struct { float mx, s, sz, mom[NMOM], s2; } Acc;

static inline void acc_init(Acc *a) {
    a->mx = -FLT_MAX; a->s = 0.f; a->sz = 0.f; a->s2 = 0.f;
    for (int m = 0; m < NMOM; m++) a->mom[m] = 0.f;
}

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

/* One vectorised loop over a tile: YEXPR is the logit at j, BODY adds to the extra accumulators
 * (those it leaves alone cost nothing). */
#define VLOOP(YEXPR, BODY) do { \
    _Pragma("omp simd reduction(max:m) reduction(+:acc,accz,m1,m2,m3,m4,s2)") \
    for (int j = 0; j < n; j++) { \
        float y = (YEXPR); \
        m = y > m ? y : m; \
        float dd = y - shift, e = expf(dd); \
        acc += e; accz += dd * e; \
        BODY; \
    } } while (0)

/* The loops of one logit expression, one per order of the S2 sum (see the header). */
#define ORDERED_LOOPS(YEXPR) do { \
    switch (ord) { \
    case 0: VLOOP(YEXPR, ); break; \
    case 1: VLOOP(YEXPR, m1 = fmaf(e, W1[j], m1)); break; \
    case 2: VLOOP(YEXPR, m1 = fmaf(e, W1[j], m1); m2 = fmaf(e, W2[j], m2)); break; \
    case 3: VLOOP(YEXPR, m1 = fmaf(e, W1[j], m1); m2 = fmaf(e, W2[j], m2); \
                  m3 = fmaf(e, W3[j], m3)); break; \
    case 4: VLOOP(YEXPR, m1 = fmaf(e, W1[j], m1); m2 = fmaf(e, W2[j], m2); \
                  m3 = fmaf(e, W3[j], m3); m4 = fmaf(e, W4[j], m4)); break; \
    default: VLOOP(YEXPR, s2 += expf(fmaf(g, W1[j], dd))); break; \
    } } while (0)

/* Accumulate one tile [v0, v0 + n) of pair (t, k) into r, relative to shift. */
static inline void tile(const Problem *p, int t, int k, int v0, int n, float shift, Acc *r) {
    int64_t tk = (int64_t)t * p->K + k;
    const float *Lt = p->L + (int64_t)t * p->V + v0, *Uk = p->U + (int64_t)k * p->V + v0, *bb = p->bias + v0;
    int ord = p->W && p->order[tk] > 0 ? p->order[tk] : 0;  /* < 0: S2 is done elsewhere */
    float g = p->W ? p->G[tk] : 0.f;
    const float *W1 = p->W ? p->W + v0 : 0, *W2 = W1 ? W1 + p->V : 0, *W3 = W1 ? W1 + 2 * (int64_t)p->V : 0,
                *W4 = W1 ? W1 + 3 * (int64_t)p->V : 0;
    float a = p->A[tk], b = p->B[tk], m = r->mx, acc = 0.f, accz = 0.f;
    float m1 = 0.f, m2 = 0.f, m3 = 0.f, m4 = 0.f, s2 = 0.f;
    if (!p->P && p->softcap <= 0.f) {
        if (p->Q) {
            const float *Qv = p->Q + v0;
            float d = p->D[tk];
            VLOOP(fmaf(d, Qv[j], lin(a, Lt[j], b, Uk[j], bb[j])), );
        } else {
            ORDERED_LOOPS(lin(a, Lt[j], b, Uk[j], bb[j]));
        }
    } else if (p->softcap <= 0.f) {  /* a post-MLP norm's term C P, and maybe D Q */
        const float *Pt = p->P + (int64_t)t * p->V + v0;
        float c = p->C[tk];
        if (p->Q) {
            const float *Qv = p->Q + v0;
            float d = p->D[tk];
            VLOOP(fmaf(d, Qv[j], fmaf(c, Pt[j], lin(a, Lt[j], b, Uk[j], bb[j]))), );
        } else {
            ORDERED_LOOPS(fmaf(c, Pt[j], lin(a, Lt[j], b, Uk[j], bb[j])));
        }
    } else {
        for (int j = 0; j < n; j++) {
            float y = logit_at(p, t, k, v0 + j);
            m = y > m ? y : m;
            float dd = y - shift, e = expf(dd);
            acc += e; accz += dd * e;
        }
    }
    r->mx = m; r->s += acc; r->sz += accz; r->s2 += s2;
    r->mom[0] += m1; r->mom[1] += m2; r->mom[2] += m3; r->mom[3] += m4;
}

typedef struct {
    float *max, *S, *Sz, *shift, *yt, *yref, *R;
} Out;

/* Finish pair (t, k): redo it around its own maximum if that is far from the shift, and write
 * the outputs at index o. */
static void finish(const Problem *p, int t, int k, float shift, Acc *r, int64_t target, int64_t ref,
                   const Out *out, int64_t o) {
    float sh = shift;
    if (r->mx - sh > 60.f || r->mx - sh < -60.f) {
        sh = r->mx;
        Acc again; acc_init(&again);
        for (int v0 = 0; v0 < p->V; v0 += TILE)
            tile(p, t, k, v0, p->V - v0 < TILE ? p->V - v0 : TILE, sh, &again);
        again.mx = r->mx;
        *r = again;
    }
    out->max[o] = r->mx; out->S[o] = r->s; out->Sz[o] = r->sz; out->shift[o] = sh;
    out->yt[o] = logit_at(p, t, k, target);
    out->yref[o] = logit_at(p, t, k, ref);
    if (out->R) {  /* R = S2 / S - 1 */
        int64_t tk = (int64_t)t * p->K + k;
        int ord = p->order[tk];
        if (ord <= 0) out->R[o] = 0.f;
        else if (ord > NMOM) out->R[o] = (r->s2 - r->s) / r->s;
        else {  /* sum_m G^m / m! M_m / S, the small terms summed first */
            float g = p->G[tk], gm = 1.f, series = 0.f, terms[NMOM];
            for (int m = 0; m < ord; m++) { gm *= g / (float)(m + 1); terms[m] = gm * r->mom[m]; }
            for (int m = ord - 1; m >= 0; m--) series += terms[m];
            out->R[o] = series / r->s;
        }
    }
}

void ablation_softmax_stats(
    int T, int K, int V,
    const float *L, const float *U, const float *P, const float *Q, const float *W, const float *bias,
    const float *A, const float *B, const float *C, const float *D, const float *G, const int32_t *order,
    float softcap, const float *shift, const int64_t *target, const int64_t *ref,
    float *out_max, float *out_S, float *out_Sz, float *out_shift, float *out_yt, float *out_yref, float *out_R)
{
    Problem p = {L, U, P, Q, W, bias, A, B, C, D, G, order, softcap, K, V};
    Out out = {out_max, out_S, out_Sz, out_shift, out_yt, out_yref, W ? out_R : 0};
    int ntb = (T + TB - 1) / TB, nkb = (K + KB - 1) / KB;
    #pragma omp parallel for schedule(dynamic) collapse(2)
    for (int tb = 0; tb < ntb; tb++)
    for (int kb = 0; kb < nkb; kb++) {
        int t0 = tb * TB, t1 = t0 + TB < T ? t0 + TB : T;
        int k0 = kb * KB, k1 = k0 + KB < K ? k0 + KB : K;
        Acc r[TB * KB];
        for (int i = 0; i < TB * KB; i++) acc_init(&r[i]);
        for (int v0 = 0; v0 < V; v0 += TILE) {
            int n = V - v0 < TILE ? V - v0 : TILE;
            for (int t = t0; t < t1; t++)
                for (int k = k0; k < k1; k++)
                    tile(&p, t, k, v0, n, shift[t], &r[(t - t0) * KB + (k - k0)]);
        }
        for (int t = t0; t < t1; t++)
            for (int k = k0; k < k1; k++)
                finish(&p, t, k, shift[t], &r[(t - t0) * KB + (k - k0)], target[t], ref[t], &out,
                       (int64_t)t * K + k);
    }
}

/* The benchmark's floor: out[t,k] = sum_v exp(A[t,k] L[t,v] + B[t,k] U[k,v] + bias[v]) with the same
 * blocks and vocabulary tiles as ablation_softmax_stats, and nothing else (no max, shift, Sz or target).
 * Any exact method evaluates every logit and one exponential of it; this is that work alone. */
void exp_sum_floor(int T, int K, int V, const float *L, const float *U, const float *bias, const float *A,
                   const float *B, float *out)
{
    int ntb = (T + TB - 1) / TB, nkb = (K + KB - 1) / KB;
    #pragma omp parallel for schedule(dynamic) collapse(2)
    for (int tb = 0; tb < ntb; tb++)
    for (int kb = 0; kb < nkb; kb++) {
        int t0 = tb * TB, t1 = t0 + TB < T ? t0 + TB : T;
        int k0 = kb * KB, k1 = k0 + KB < K ? k0 + KB : K;
        float r[TB * KB];
        for (int i = 0; i < TB * KB; i++) r[i] = 0.f;
        for (int v0 = 0; v0 < V; v0 += TILE) {
            int n = V - v0 < TILE ? V - v0 : TILE;
            for (int t = t0; t < t1; t++)
                for (int k = k0; k < k1; k++) {
                    const float *Lt = L + (int64_t)t * V + v0, *Uk = U + (int64_t)k * V + v0, *bb = bias + v0;
                    float a = A[(int64_t)t * K + k], b = B[(int64_t)t * K + k], acc = 0.f;
                    #pragma omp simd reduction(+:acc)
                    for (int j = 0; j < n; j++) acc += expf(lin(a, Lt[j], b, Uk[j], bb[j]));
                    r[(t - t0) * KB + (k - k0)] += acc;
                }
        }
        for (int t = t0; t < t1; t++)
            for (int k = k0; k < k1; k++) out[(int64_t)t * K + k] = r[(t - t0) * KB + (k - k0)];
    }
}
