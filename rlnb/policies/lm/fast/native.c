/* Fused CPU kernels for decoding and for the replayed attention backward of tiny
 * Llama-family models (float32), called through ctypes by rlnb/policies/native.py.
 *
 * Each function does in one call what would otherwise be 3-20 small PyTorch operations,
 * whose dispatch costs more than their arithmetic at these sizes (64 rows, hidden 64).
 * Matrix products stay with PyTorch (MKL); these are the pieces between them.
 *
 * Layouts are row-major and contiguous unless a stride is passed. Attention reads only
 * the keys a query may see (a contiguous range of valid prompt keys, then the row's own
 * completion keys), so no -inf mask enters the arithmetic. exp is a branch-free
 * polynomial (Cephes' expf, ~1 ulp on the range used) that the compiler vectorises. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int64_t i64;

static inline float fexp(float x) {
    /* exp(x) for finite x; results below exp(-87) are returned as exp(-87) (~1.6e-38),
     * which no sum of probabilities here can tell from 0. NaN stays NaN. */
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float z = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * z + r + 1.0f;
    union { int32_t i; float f; } s;
    s.i = ((int32_t)n + 127) << 23;
    return p * s.f;
}

/* RoPE in place on one head: y[i] = x[i] cos[i] + x[(i + hd/2) % hd] sin[i] (sin signed:
 * its first half negated, as rlnb.policies.lm._Fast._rotate). */
static inline void rope_head(float *restrict x, const float *restrict cos,
                             const float *restrict sin, i64 hd) {
    float t[hd];
    i64 half = hd / 2;
    for (i64 i = 0; i < hd; i++) t[i] = x[i];
    for (i64 i = 0; i < half; i++) x[i] = t[i] * cos[i] + t[i + half] * sin[i];
    for (i64 i = half; i < hd; i++) x[i] = t[i] * cos[i] + t[i - half] * sin[i];
}

/* The transpose of rope_head (its backward): y[i] = d[i] cos[i] + d[j] sin[j],
 * j = (i + hd/2) % hd. */
static inline void unrope_head(const float *restrict d, float *restrict y,
                               const float *restrict cos, const float *restrict sin, i64 hd) {
    i64 half = hd / 2;
    for (i64 i = 0; i < half; i++) y[i] = d[i] * cos[i] + d[i + half] * sin[i + half];
    for (i64 i = half; i < hd; i++) y[i] = d[i] * cos[i] + d[i - half] * sin[i - half];
}

/* GCC/Clang vector extensions (any target: the compiler splits them where vectors are
 * narrower). A dot product of 16 floats as one multiply and three halvings, not a chain
 * of 16 dependent adds. */
typedef float f16v __attribute__((vector_size(64)));
typedef float f8v __attribute__((vector_size(32)));
typedef float f4v __attribute__((vector_size(16)));

static inline float hsum16(f16v x) {
    f8v lo, hi;
    memcpy(&lo, &x, sizeof lo);
    memcpy(&hi, (const char *)&x + sizeof lo, sizeof hi);
    lo += hi;
    f4v l4, h4;
    memcpy(&l4, &lo, sizeof l4);
    memcpy(&h4, (const char *)&lo + sizeof l4, sizeof h4);
    l4 += h4;
    return (l4[0] + l4[2]) + (l4[1] + l4[3]);
}

static inline float dot16(const float *restrict a, const float *restrict b) {
    f16v x, y;
    memcpy(&x, a, sizeof x);
    memcpy(&y, b, sizeof y);
    return hsum16(x * y);
}

static inline __attribute__((always_inline)) float dot(const float *restrict a,
                                                       const float *restrict b, const i64 n) {
    if (n % 16 == 0) {
        float s = 0.0f;
        for (i64 i = 0; i < n; i += 16) s += dot16(a + i, b + i);
        return s;
    }
    float s = 0.0f;
    for (i64 i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* out[b] = x[b] / sqrt(|x[b]|^2 + c2): RMSNorm without its weight and its sqrt(d), both
 * folded into the next projection (rlnb.policies.lm._UnitRMS). */
void unit_rms(const float *restrict x, float *restrict out, i64 B, i64 d, float c2) {
    for (i64 b = 0; b < B; b++) {
        const float *xb = x + b * d;
        float r = 1.0f / sqrtf(dot(xb, xb, d) + c2);
        float *ob = out + b * d;
        for (i64 i = 0; i < d; i++) ob[i] = xb[i] * r;
    }
}

/* One decoding step of attention for B rows.
 *   qkv (B, H + 2 KV, hd): the fused projection (q pre-scaled); q and k are rotated in
 *       place (cos, sin: (B, hd) rows, row stride rope_stride);
 *   cache (2, B, KV, Lt, hd): k and v are written at position `at`;
 *   start (B,): the first valid prompt key of each row (left padding before it);
 *   out (B, H * hd): attention output; the row reads keys start[b] .. at.
 * Query head h reads KV head h / (H / KV). */
static inline __attribute__((always_inline)) void decode_attend_impl(
    float *restrict qkv, const float *restrict cos, const float *restrict sin,
    i64 rope_stride, float *restrict cache, const i64 *restrict start, float *restrict out,
    float *restrict s, i64 B, i64 H, i64 KV, const i64 hd, i64 Lt, i64 at) {
    i64 W = H + 2 * KV, rep = H / KV, L = at + 1;
    float *kc = cache, *vc = cache + B * KV * Lt * hd;
    float acc[hd];
    for (i64 b = 0; b < B; b++) {
        float *row = qkv + b * W * hd;
        const float *cb = cos + b * rope_stride, *sb = sin + b * rope_stride;
        for (i64 h = 0; h < H + KV; h++) rope_head(row + h * hd, cb, sb, hd);
        for (i64 g = 0; g < KV; g++) {
            memcpy(kc + ((b * KV + g) * Lt + at) * hd, row + (H + g) * hd, sizeof(float) * hd);
            memcpy(vc + ((b * KV + g) * Lt + at) * hd, row + (H + KV + g) * hd, sizeof(float) * hd);
        }
        i64 j0 = start[b];
        for (i64 h = 0; h < H; h++) {
            i64 g = h / rep;
            const float *q = row + h * hd;
            const float *kb = kc + (b * KV + g) * Lt * hd, *vb = vc + (b * KV + g) * Lt * hd;
            float m = -INFINITY;
            for (i64 j = j0; j < L; j++) {
                s[j] = dot(q, kb + j * hd, hd);
                m = s[j] > m ? s[j] : m;
            }
            float z = 0.0f;
#pragma omp simd reduction(+ : z)
            for (i64 j = j0; j < L; j++) {
                s[j] = fexp(s[j] - m);
                z += s[j];
            }
            for (i64 i = 0; i < hd; i++) acc[i] = 0.0f;
            for (i64 j = j0; j < L; j++) {
                const float *v = vb + j * hd;
                float w = s[j];
                for (i64 i = 0; i < hd; i++) acc[i] += w * v[i];
            }
            float iz = 1.0f / z, *o = out + (b * H + h) * hd;
            for (i64 i = 0; i < hd; i++) o[i] = acc[i] * iz;
        }
    }
}

void decode_attend(float *qkv, const float *cos, const float *sin, i64 rope_stride,
                   float *cache, const i64 *start, float *out, i64 B, i64 H, i64 KV, i64 hd,
                   i64 Lt, i64 at) {
    float *s = malloc(sizeof(float) * (size_t)(at + 1));
    if (hd == 16)  /* one AVX-512 vector: the compiler unrolls the head dimension */
        decode_attend_impl(qkv, cos, sin, rope_stride, cache, start, out, s, B, H, KV, 16, Lt, at);
    else if (hd == 32)
        decode_attend_impl(qkv, cos, sin, rope_stride, cache, start, out, s, B, H, KV, 32, Lt, at);
    else if (hd == 64)
        decode_attend_impl(qkv, cos, sin, rope_stride, cache, start, out, s, B, H, KV, 64, Lt, at);
    else
        decode_attend_impl(qkv, cos, sin, rope_stride, cache, start, out, s, B, H, KV, hd, Lt, at);
    free(s);
}

/* The queries of one row that read KV head kv: its Jr steps x the rep query heads of kv,
 * against the row's keys (Kr row-major, Kt and Vt transposed with row length LS, a
 * multiple of 16, zero-padded; step t sees the first P + t + 1). Accumulates into dKr,
 * dVr (LS, hd); writes each query's gradient (rotated) into dq. LS and hd are
 * compile-time constants at the common sizes, so that the scores stay in registers. */
static inline __attribute__((always_inline)) void row_queries(
    const float *restrict Kr, const float *restrict Kt, const float *restrict Vt,
    float *restrict dKr, float *restrict dVr, const float *restrict q,
    const float *restrict dout, float *restrict dq, const i64 *restrict rc, i64 Jr, i64 P,
    i64 kv, i64 rep, i64 H, const i64 hd, const i64 LS) {
    float p[LS], dp[LS], dqm[hd];
    for (i64 t = 0; t < Jr; t++) {
        i64 e = rc[t], lim = P + t + 1;  /* keys this step's queries see */
        for (i64 h = kv * rep; h < (kv + 1) * rep; h++) {
            const float *qm = q + (e * H + h) * hd, *go = dout + (e * H + h) * hd;
            for (i64 l = 0; l < LS; l++) p[l] = 0.0f, dp[l] = 0.0f;
            for (i64 i = 0; i < hd; i++) {
                float a = qm[i], b = go[i];
                const float *kt = Kt + i * LS, *vt = Vt + i * LS;
                for (i64 l = 0; l < LS; l++) {
                    p[l] += a * kt[l];
                    dp[l] += b * vt[l];
                }
            }
            float m = -INFINITY;
            for (i64 l = 0; l < lim; l++) m = p[l] > m ? p[l] : m;
            float z = 0.0f;
#pragma omp simd reduction(+ : z)
            for (i64 l = 0; l < LS; l++) {
                float x = l < lim ? fexp(p[l] - m) : 0.0f;
                p[l] = x;
                z += x;
            }
            float iz = 1.0f / z, pdp = 0.0f;
#pragma omp simd reduction(+ : pdp)
            for (i64 l = 0; l < LS; l++) {
                p[l] *= iz;
                pdp += p[l] * dp[l];
            }
            for (i64 i = 0; i < hd; i++) dqm[i] = 0.0f;
            for (i64 l = 0; l < lim; l++) {
                float ds = p[l] * (dp[l] - pdp), pl = p[l];
                const float *kl = Kr + l * hd;
                float *dkl = dKr + l * hd, *dvl = dVr + l * hd;
                for (i64 i = 0; i < hd; i++) {
                    dqm[i] += ds * kl[i];
                    dkl[i] += ds * qm[i];
                    dvl[i] += pl * go[i];
                }
            }
            for (i64 i = 0; i < hd; i++) dq[(e * H + h) * hd + i] = dqm[i];
        }
    }
}

/* Backward of the completion tokens' attention (the replayed update).
 *   C cells (completion tokens fed to the model); cells (R, J): the cell of (row, step),
 *   present for steps 0 .. (the row's last computed step), -1 after; row r belongs to
 *   group r / n.
 *   q (C, H, hd) rotated and pre-scaled; k, v (C, KV, hd) rotated keys and values;
 *   kp, vp (G, KV, Lp, hd): the prompts' keys and values, valid from pstart[g];
 *   dout (C, H * hd): gradient at the attention output;
 *   cos, sin (C, hd): each cell's rotation.
 * Writes dqkv (C, H + 2 KV, hd): the gradients at the fused projection's output (q and
 * k un-rotated); adds into dkp, dvp (G, KV, Lp, hd) the gradients at the prompts' keys
 * (rotated coordinates, as stored) and values.
 * Row by row and KV head by KV head: the row's keys (valid prompt keys, then its own) are
 * gathered once, in both layouts, and every query of the row (its steps x the query
 * heads that share the KV head) runs against them with vector operations along the keys
 * (scores) or along the head dimension (gradients). */
static inline __attribute__((always_inline)) void cells_backward_impl(
    const float *restrict q, const float *restrict k, const float *restrict v,
    const float *restrict kp, const float *restrict vp, const float *restrict dout,
    const float *restrict cos, const float *restrict sin, const i64 *restrict cells,
    const i64 *restrict pstart, float *restrict dqkv, float *restrict dkp,
    float *restrict dvp, i64 C, i64 R, i64 J, i64 n, i64 H, i64 KV, const i64 hd, i64 Lp) {
    i64 W = H + 2 * KV, rep = H / KV;
    i64 Lmax = (Lp + J + 15) / 16 * 16;  /* keys padded to whole vectors (zeros, per row) */
    float *Kr = malloc(sizeof(float) * (size_t)(Lmax * hd));  /* keys, row-major */
    float *Kt = malloc(sizeof(float) * (size_t)(Lmax * hd));  /* keys, transposed */
    float *Vt = malloc(sizeof(float) * (size_t)(Lmax * hd));
    float *dKr = malloc(sizeof(float) * (size_t)(Lmax * hd));
    float *dVr = malloc(sizeof(float) * (size_t)(Lmax * hd));
    float *dq = malloc(sizeof(float) * (size_t)(C * H * hd));  /* rotated coordinates */
    float *dk = malloc(sizeof(float) * (size_t)(C * KV * hd));
    for (i64 r = 0; r < R; r++) {
        const i64 *rc = cells + r * J;
        i64 Jr = 0;
        while (Jr < J && rc[Jr] >= 0) Jr++;
        if (Jr == 0) continue;
        i64 g = r / n, j0 = pstart[g], P = Lp - j0, L = P + Jr, LS = (L + 15) / 16 * 16;
        for (i64 kv = 0; kv < KV; kv++) {
            for (i64 l = 0; l < LS; l++) {
                const float *ks = NULL, *vs = NULL;
                if (l < P) {
                    ks = kp + ((g * KV + kv) * Lp + j0 + l) * hd;
                    vs = vp + ((g * KV + kv) * Lp + j0 + l) * hd;
                } else if (l < L) {
                    ks = k + (rc[l - P] * KV + kv) * hd;
                    vs = v + (rc[l - P] * KV + kv) * hd;
                }
                for (i64 i = 0; i < hd; i++) {
                    float kx = ks ? ks[i] : 0.0f, vx = vs ? vs[i] : 0.0f;
                    Kr[l * hd + i] = kx;
                    Kt[i * LS + l] = kx; Vt[i * LS + l] = vx;
                    dKr[l * hd + i] = 0.0f; dVr[l * hd + i] = 0.0f;
                }
            }
            if (LS == 16)
                row_queries(Kr, Kt, Vt, dKr, dVr, q, dout, dq, rc, Jr, P, kv, rep, H, hd, 16);
            else if (LS == 32)
                row_queries(Kr, Kt, Vt, dKr, dVr, q, dout, dq, rc, Jr, P, kv, rep, H, hd, 32);
            else if (LS == 48)
                row_queries(Kr, Kt, Vt, dKr, dVr, q, dout, dq, rc, Jr, P, kv, rep, H, hd, 48);
            else if (LS == 64)
                row_queries(Kr, Kt, Vt, dKr, dVr, q, dout, dq, rc, Jr, P, kv, rep, H, hd, 64);
            else
                row_queries(Kr, Kt, Vt, dKr, dVr, q, dout, dq, rc, Jr, P, kv, rep, H, hd, LS);
            for (i64 l = 0; l < L; l++) {
                float *dks, *dvs;
                if (l < P) {
                    dks = dkp + ((g * KV + kv) * Lp + j0 + l) * hd;
                    dvs = dvp + ((g * KV + kv) * Lp + j0 + l) * hd;
                    for (i64 i = 0; i < hd; i++) dks[i] += dKr[l * hd + i], dvs[i] += dVr[l * hd + i];
                } else {  /* a completion key is read by its own row only */
                    i64 e = rc[l - P];
                    dks = dk + (e * KV + kv) * hd;
                    dvs = dqkv + (e * W + H + KV + kv) * hd;
                    for (i64 i = 0; i < hd; i++) dks[i] = dKr[l * hd + i], dvs[i] = dVr[l * hd + i];
                }
            }
        }
    }
    for (i64 c = 0; c < C; c++) {
        for (i64 h = 0; h < H; h++)
            unrope_head(dq + (c * H + h) * hd, dqkv + (c * W + h) * hd, cos + c * hd,
                        sin + c * hd, hd);
        for (i64 kv = 0; kv < KV; kv++)
            unrope_head(dk + (c * KV + kv) * hd, dqkv + (c * W + H + kv) * hd, cos + c * hd,
                        sin + c * hd, hd);
    }
    free(Kr); free(Kt); free(Vt); free(dKr); free(dVr);
    free(dq); free(dk);
}

void attend_cells_backward(const float *q, const float *k, const float *v, const float *kp,
                           const float *vp, const float *dout, const float *cos,
                           const float *sin, const i64 *cells, const i64 *pstart,
                           float *dqkv, float *dkp, float *dvp, i64 C, i64 R, i64 J, i64 n,
                           i64 H, i64 KV, i64 hd, i64 Lp) {
    if (hd == 16)  /* one AVX-512 vector: the compiler unrolls the head dimension */
        cells_backward_impl(q, k, v, kp, vp, dout, cos, sin, cells, pstart, dqkv, dkp, dvp,
                            C, R, J, n, H, KV, 16, Lp);
    else if (hd == 32)
        cells_backward_impl(q, k, v, kp, vp, dout, cos, sin, cells, pstart, dqkv, dkp, dvp,
                            C, R, J, n, H, KV, 32, Lp);
    else
        cells_backward_impl(q, k, v, kp, vp, dout, cos, sin, cells, pstart, dqkv, dkp, dvp,
                            C, R, J, n, H, KV, hd, Lp);
}

/* One sampling step by the Gumbel-max trick, for B rows of V logits:
 *   logp = log_softmax(logits / temperature); tok = argmax(logp + noise) (the first
 *   maximum, NaN counting as the largest, as torch.argmax); lp = logp[tok];
 *   done[b] |= tok is one of the n_eos ids in eos.
 * Returns how many rows are done. */
i64 sample_step(const float *restrict logits, const float *restrict noise, i64 B, i64 V,
                float temperature, const i64 *restrict eos, i64 n_eos, i64 *restrict tok,
                float *restrict lp, uint8_t *restrict done) {
    float *x = malloc(sizeof(float) * (size_t)(V > 0 ? V : 1));
    i64 n_done = 0;
    for (i64 b = 0; b < B; b++) {
        const float *l = logits + b * V, *g = noise + b * V;
        float m = -INFINITY;
        for (i64 v = 0; v < V; v++) {
            x[v] = temperature == 1.0f ? l[v] : l[v] / temperature;
            m = x[v] > m ? x[v] : m;
        }
        float z = 0.0f;
#pragma omp simd reduction(+ : z)
        for (i64 v = 0; v < V; v++) z += fexp(x[v] - m);
        float lse = logf(z);
        i64 arg = 0;
        float best = -INFINITY;
        int best_nan = 0;
        for (i64 v = 0; v < V; v++) {
            float s = (x[v] - m) - lse + g[v];
            if (best_nan) break;
            if (isnan(s)) { arg = v; best_nan = 1; }
            else if (s > best || v == 0) { best = s; arg = v; }
        }
        tok[b] = arg;
        lp[b] = (x[arg] - m) - lse;
        for (i64 e = 0; e < n_eos; e++) done[b] |= (uint8_t)(arg == eos[e]);
        n_done += done[b] != 0;
    }
    free(x);
    return n_done;
}

/* RMSNorm for the replayed backward, x (N, d) rows:
 *   rms_forward: r[n] = 1 / sqrt(mean(x[n]^2) + eps), y = x r w (the normalised, weighted
 *   input of the next projection);
 *   rms_backward: from dy (N, d) at y, dx = (g - xhat mean(g xhat)) r + res with
 *   g = dy w, xhat = x r (res: a residual gradient added on, or NULL), and dw (d,) =
 *   sum over rows of dy xhat. */
void rms_forward(const float *restrict x, const float *restrict w, float *restrict y,
                 float *restrict r, i64 N, i64 d, float eps) {
    for (i64 n = 0; n < N; n++) {
        const float *xn = x + n * d;
        float rr = 1.0f / sqrtf(dot(xn, xn, d) / (float)d + eps);
        r[n] = rr;
        float *yn = y + n * d;
        for (i64 i = 0; i < d; i++) yn[i] = xn[i] * rr * w[i];
    }
}

void rms_backward(const float *restrict dy, const float *restrict x, const float *restrict r,
                  const float *restrict w, const float *restrict res, float *restrict dx,
                  float *restrict dw, i64 N, i64 d) {
    for (i64 i = 0; i < d; i++) dw[i] = 0.0f;
    float *g = malloc(sizeof(float) * (size_t)d), *xh = malloc(sizeof(float) * (size_t)d);
    for (i64 n = 0; n < N; n++) {
        const float *dyn = dy + n * d, *xn = x + n * d;
        float rr = r[n];
        for (i64 i = 0; i < d; i++) {
            g[i] = dyn[i] * w[i];
            xh[i] = xn[i] * rr;
            dw[i] += dyn[i] * xh[i];
        }
        float c = dot(g, xh, d) / (float)d;
        float *dxn = dx + n * d;
        if (res) {
            const float *rn = res + n * d;
            for (i64 i = 0; i < d; i++) dxn[i] = (g[i] - xh[i] * c) * rr + rn[i];
        } else {
            for (i64 i = 0; i < d; i++) dxn[i] = (g[i] - xh[i] * c) * rr;
        }
    }
    free(g);
    free(xh);
}
