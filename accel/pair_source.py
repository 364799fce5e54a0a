"""The per-pair kernel source of the GPU backend, written once as CUDA-C/C++ (MATH §2, §2.1, §4).

One source string serves two compilers:

* on a GPU it is the ``preamble`` and ``operation`` of two ``cupy.ElementwiseKernel`` s
  (:func:`elementwise_kernels`), compiled by NVRTC;
* in CI (no GPU) the NumPy stand-in (:mod:`accel.standin`) wraps the same ``operation`` in a
  loop over the elements and compiles it with the host C compiler (gcc), so that the history
  pass and the pair kernels of the GPU backend run, and are checked against refimpl and the
  golden files, on every commit.

The source has three parts:

``COMMON``
    Macros that the two targets define differently (``BD_DEVICE``, ``atomicAdd``).
``ARCH[name]``
    The architecture: two device functions of one pair (x, y) given the norms ``nx = |x|``,
    ``ny = |y|`` and the dot product ``dot = x.y`` (equivalently ``q = |x|^2``, ``q~ = |y|^2``,
    ``c = x.y``):

    ``int bd_near(nx, ny, dot)``
        whether this pair needs the explicit differences ``|x^ - y^|^2``, ``|x^ + y^|^2``
        (numerics, MATH §2.1); the driver then computes them from the rows in float64;
    ``bd_terms bd_pair(nx, ny, dot, minus2, plus2, m, par)``
        Sigma, Sigmadot, K (= the NTK at scale m), and the coefficients alpha, beta of
        Xi = alpha y + beta x^.  ``minus2 < 0`` when the differences were not computed.
        ``par`` is one architecture parameter (linear: the depth L_f).

    Another architecture (another activation, biases, depth) is one more entry of ``ARCH``
    with these two functions; the drivers below and all the Python around them stay as they are.
``HISTORY_OP``, ``PAIR_OP``
    The drivers (numerics: MATH §2.1): the body of the elementwise loop for the history pass (one query row b against
    one history row j: K, and the Xi weights alpha w, beta w with w = C_j (mode 1) or
    C_j . chi_b (mode 2)) and for the pair kernels (a p x q matrix of Sigma, Sigmadot, K or
    alpha, beta).  In the history pass of a float32 history, the Xi term of a nearly parallel
    pair (where alpha ~ 1/sin cancels against beta's term) is accumulated in float64 into
    ``T64`` (an atomic add on the GPU) instead of going through the float32 GEMM.

Variables the drivers may use: ``i`` (the element index, CuPy's name) and the parameters below;
``T`` is the working float type (float32 or float64) of the GEMM inputs and outputs.
"""

from __future__ import annotations

from refimpl.activations import XI_SIN_THRESHOLD
from refimpl.angles import NEAR_PARALLEL_COS

#: |cos| above which a pair's angle comes from explicit differences: refimpl's near-parallel rule
#: (:data:`refimpl.angles.NEAR_PARALLEL_COS`, MATH §2.1), emitted into the source below.
NEAR_COS = NEAR_PARALLEL_COS

COMMON = r"""
/* BD_DEVICE and atomicAdd are defined by the target (CUDA: __device__ and the hardware
   atomic; host C: static inline and a plain add). */
typedef struct { double sigma, sigmadot, K, alpha, beta; } bd_terms;
#define BD_PI 3.141592653589793238462643383279502884
#define BD_TWO_PI 6.283185307179586476925286766559005768

/* The near-parallel rule and the angle formula of refimpl.angles (MATH 2.1), in C. */
BD_DEVICE int bd_is_near(double lam) { return fabs(lam) > %(near_cos)r; }

/* theta in [0, pi] from cos theta and sin, cos of theta/2: asin on [-1/2, 1/2] only */
BD_DEVICE double bd_angle(double lam, double hu, double hv)
{
    const int pos = lam > 0.5, neg = lam < -0.5;
    const double a = asin(pos ? hu : (neg ? hv : lam));     /* one call: one inlined asin */
    return pos ? 2.0 * a : (neg ? BD_PI - 2.0 * a : 0.5 * BD_PI - a);
}

/* hu, hv from a cosine with |lam| <= NEAR_PARALLEL_COS */
BD_DEVICE void bd_halves_from_cos(double lam, double *hu, double *hv)
{
    *hu = sqrt(0.5 - 0.5 * lam);
    *hv = sqrt(0.5 + 0.5 * lam);
}

/* hu, hv, lam from |x^ - y^|^2 and |x^ + y^|^2; both 0 (two zero vectors): theta = 0 */
BD_DEVICE double bd_halves_from_differences(double minus2, double plus2, double *hu, double *hv)
{
    double r2 = minus2 + plus2;
    if (r2 > 0.0) { *hu = sqrt(minus2 / r2); *hv = sqrt(plus2 / r2); }
    else { *hu = 0.0; *hv = 1.0; }
    return (*hv - *hu) * (*hv + *hu);
}

/* the cosine of a pair: a zero vector gives 0, two give 1; clipped to [-1, 1] */
BD_DEVICE double bd_cos_of_pair(double nx, double ny, double dot)
{
    double nn = nx * ny;
    double lam = nn > 0.0 ? dot / nn : (nx + ny == 0.0 ? 1.0 : 0.0);
    return lam > 1.0 ? 1.0 : (lam < -1.0 ? -1.0 : lam);
}
"""

ARCH = {
    # One hidden ReLU layer (MATH §1, §2; paper eq 45, 46 in the stable form of MATH §2).
    "relu": r"""
BD_DEVICE int bd_near(double nx, double ny, double dot)
{
    return bd_is_near(bd_cos_of_pair(nx, ny, dot));
}

BD_DEVICE bd_terms bd_pair(double nx, double ny, double dot, double minus2, double plus2,
                           double m, double par)
{
    /* angle from hu = sin(theta/2), hv = cos(theta/2) (MATH 2.1) */
    double nn = nx * ny, hu, hv, lam;
    if (minus2 >= 0.0) {                              /* explicit differences */
        lam = bd_halves_from_differences(minus2, plus2, &hu, &hv);
    } else {                                          /* cosine of a pair not near +-1 */
        lam = bd_cos_of_pair(nx, ny, dot);
        bd_halves_from_cos(lam, &hu, &hv);
    }
    double theta = bd_angle(lam, hu, hv);
    double s = 2.0 * hu * hv;
    bd_terms t;
    t.sigmadot = (BD_PI - theta) / BD_TWO_PI;
    t.sigma = nn / m * (lam * (BD_PI - theta) + s) / BD_TWO_PI;
    t.K = dot / m * t.sigmadot + t.sigma;
    double inv_s = s < %(xi_sin)r ? 0.0 : 1.0 / s;
    t.alpha = (2.0 * t.sigmadot + lam * inv_s / BD_TWO_PI) / m;
    t.beta = ny * (s - lam * lam * inv_s) / (BD_TWO_PI * m);
    return t;
}
""",
    # Deep linear network with par = L weight matrices (lemma 4.1): K = L x.y / m, Xi = L y / m.
    "linear": r"""
BD_DEVICE int bd_near(double nx, double ny, double dot) { return 0; }

BD_DEVICE bd_terms bd_pair(double nx, double ny, double dot, double minus2, double plus2,
                           double m, double par)
{
    bd_terms t;
    t.sigma = dot / m;
    t.sigmadot = 1.0;
    t.K = par * dot / m;
    t.alpha = par / m;
    t.beta = 0.0;
    return t;
}
""",
}

#: Parameters of the history-pass loop (CuPy's in_params / out_params syntax).  Element i of a
#: (qb, nb) block is query row b = i / nb against history row j = i % nb.  Raw arrays are
#: C-contiguous and flat: P (nb, dim) T, pn (nb,), zn (qb,), Zh (qb, dim) float64, C (nb, dr) T,
#: chi (qb, dr) float64; outputs WA (R, qb, nb) T, WB (R, qb, nb) float64, T64 (R, qb, dim).
HISTORY_IN = ("T G, raw T P, raw float64 pn, raw float64 zn, raw float64 Zh, raw T C, "
              "raw float64 chi, int64 nb, int64 qb, int64 dim, int64 dr, int64 R, int64 mode, "
              "int64 exact_near, float64 m, float64 par")
HISTORY_OUT = "T K, raw T WA, raw float64 WB, raw float64 T64"

HISTORY_OP = r"""
const long long b = i / nb, j = i - b * nb;
const double znb = zn[b], pnj = pn[j], dot = (double)G;
double minus2 = -1.0, plus2 = -1.0;
if (bd_near(znb, pnj, dot)) {
    minus2 = 0.0; plus2 = 0.0;
    const double rpn = pnj > 0.0 ? 1.0 / pnj : 0.0;  /* one division per pair, not per element */
    for (long long k = 0; k < dim; ++k) {
        double y = (double)P[j * dim + k] * rpn;
        double u = Zh[b * dim + k];
        minus2 += (u - y) * (u - y);
        plus2 += (u + y) * (u + y);
    }
}
const bd_terms t = bd_pair(znb, pnj, dot, minus2, plus2, m, par);
K = (T)t.K;
if (mode != 0) {
    for (long long r = 0; r < R; ++r) {
        double w = 0.0;
        if (mode == 1) w = (double)C[j * dr + r];
        else for (long long rr = 0; rr < dr; ++rr) w += chi[b * dr + rr] * (double)C[j * dr + rr];
        const long long o = r * qb * nb + i;
        WB[o] = t.beta * w;
        const double aw = t.alpha * w;
        if (exact_near && minus2 >= 0.0) {
            WA[o] = (T)0.0;
            for (long long k = 0; k < dim; ++k)
                atomicAdd(&T64[(r * qb + b) * dim + k], aw * (double)P[j * dim + k]);
        } else {
            WA[o] = (T)aw;
        }
    }
}
"""

#: Parameters of the pair-kernel loop: element i of a (p, q) matrix is (a = i / q, j = i % q);
#: raw nx (p,), ny (q,), Xh (p, dim) unit rows of X, Y (q, dim) rows of Y, all float64; out2
#: (p, q) is written only for two outputs ("xi", "nngp+ntk"; else it may be a 1-element dummy).
PAIR_IN = ("float64 G, raw float64 nx, raw float64 ny, raw float64 Xh, raw float64 Y, "
           "int64 ncols, int64 dim, float64 m, float64 par, int64 what")
PAIR_OUT = "float64 out1, raw float64 out2"

#: ``what`` codes of PAIR_OP (and of :mod:`accel.kernelapi`).
WHAT = {"ntk": 0, "nngp": 1, "sigmadot": 2, "xi": 3, "nngp+ntk": 4}

PAIR_OP = r"""
const long long a = i / ncols, j = i - a * ncols;
const double nxa = nx[a], nyj = ny[j], dot = G;
double minus2 = -1.0, plus2 = -1.0;
if (bd_near(nxa, nyj, dot)) {
    minus2 = 0.0; plus2 = 0.0;
    for (long long k = 0; k < dim; ++k) {
        double y = nyj > 0.0 ? Y[j * dim + k] / nyj : 0.0;
        double u = Xh[a * dim + k];
        minus2 += (u - y) * (u - y);
        plus2 += (u + y) * (u + y);
    }
}
const bd_terms t = bd_pair(nxa, nyj, dot, minus2, plus2, m, par);
if (what == 0) out1 = t.K;
else if (what == 1) out1 = t.sigma;
else if (what == 2) out1 = t.sigmadot;
else if (what == 3) { out1 = t.alpha; out2[i] = t.beta; }
else { out1 = t.sigma; out2[i] = t.K; }
"""

#: Macro definitions per target (prepended to COMMON).
TARGET_MACROS = {
    "cuda": "#define BD_DEVICE __device__ __forceinline__\n",
    "host": ("#include <math.h>\n#define BD_DEVICE static inline\n"
             "#define atomicAdd(p, v) (*(p) += (v))\n"),
}


def preamble(arch, target):
    """The device functions of ``arch`` ("relu", "linear") for ``target`` ("cuda", "host")."""
    if arch not in ARCH:
        raise ValueError(f"arch: expected one of {sorted(ARCH)}, got {arch!r}")
    values = {"near_cos": NEAR_COS, "xi_sin": XI_SIN_THRESHOLD}
    return TARGET_MACROS[target] + COMMON % values + ARCH[arch] % values


def elementwise_kernels(xp, arch):
    """(history_kernel, pair_kernel): ``xp.ElementwiseKernel`` s of this source for ``arch``.

    ``xp`` is CuPy (target "cuda") or the NumPy stand-in (target "host", gcc).
    """
    target = getattr(xp, "KERNEL_TARGET", "cuda")
    pre = preamble(arch, target)
    hist = xp.ElementwiseKernel(HISTORY_IN, HISTORY_OUT, HISTORY_OP, f"bd_history_{arch}",
                                preamble=pre)
    pair = xp.ElementwiseKernel(PAIR_IN, PAIR_OUT, PAIR_OP, f"bd_pair_{arch}", preamble=pre)
    return hist, pair
