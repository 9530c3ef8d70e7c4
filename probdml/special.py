"""Modified Bessel functions and von Mises-Fisher normalisers, exact and differentiable.

Notation: ``I_nu`` is the modified Bessel function of the first kind, ``R_nu(x) =
I_{nu+1}(x) / I_nu(x)``; on the unit sphere ``S^{p-1}`` the vMF density is
``C_p(kappa) exp(kappa mu.x)`` with

    C_p(kappa) = kappa^nu / ((2 pi)^{p/2} I_nu(kappa)),   nu = p/2 - 1,
    A_p(kappa) = R_nu(kappa) = -d/dkappa log C_p(kappa)   (mean resultant length).

Every function takes ``x >= 0`` (``x = 0`` included) and ``nu >= 0``, in float32 or
float64, and is jittable, vmappable and broadcasting. Inputs outside the domain give NaN.

Methods, chosen per element:

* ``nu >= NU_DEBYE``: Olver's uniform asymptotic (Debye) expansion, DLMF 10.41.3-4,
  with K = 15 (float64) / 5 (float32) terms, written so that nothing cancels:
  ``eta - z = 1/(s+z) - log1p((1 + 1/(s+z))/z)``; log C_p relative to its exact value
  at kappa = 0 (the ``nu log kappa`` terms cancel analytically, docs/numerics.md); the
  ratio as ``z/(1+s) (1 + (1+p) G/U)`` with ``G`` from the exact polynomial quotients
  ``g_k = (v_k - u_k)/(1 - p^2)``, and ``1 - R`` and ``x (1-R) - nu - 1/2`` likewise
  (``A_p`` relatively exact at kappa -> 0, ``kappa (1 - A_p)`` at kappa = 1e6).
* ``nu < NU_DEBYE``, ``x <= X_SERIES``: the ascending series DLMF 10.25.2 (positive
  terms; lgamma(1 + nu) by our own series, XLA's float32 lgamma errs by 5e-7 at 1).
* ``nu < NU_DEBYE``, ``x > X_SERIES``: the expansion at order ``nu + 20`` carried down
  by the backward recurrence ``R_{m-1} = x/(2m + x R_m)`` (DLMF 10.29.1; the ratio is
  the minimal solution, so this is stable), ``log I_nu = log I_{nu+20} - log prod R``.
  The ratio uses the recurrence for every x, its complement and slope the forms of
  ``_recurrence`` (switch at ``X_EXCESS``).

Switch points, each set by measured error (mpmath, 40-50 digits):

* ``NU_DEBYE = 20``: at nu = 20 the expansion errs by <= 2.5e-16 (log I, absolute) and
  4.2e-16 (R, relative) with 14-16 terms (first omitted term max|U_16|/20^16 = 5e-17);
  at nu = 10 even 16 terms leave 3e-14 / 1.7e-12, and the terms' growth (U_k ~ 4.5^k)
  rules out going lower.
* ``X_SERIES = 8``: the recurrence cancels against ``log prod R`` at small x, erring by
  up to 72 eps at x = 1..4 but <= 3 eps for x >= 8 (away from zeros of log I, where the
  series errs as much); the series needs 20 (float64) / 13 (float32) terms at x = 8.
* ``X_EXCESS = 8``: 1 - R and R' carried directly err by <= 15 eps for x <= 10 but up to
  2200 / 4700 eps at large x (nu = 0, float32); the excess forms err by <= 4 / 170 eps
  for x >= 5 but up to 2500 eps at x = 0.5.

Measured accuracy (tests/test_special.py, table of tests/make_bessel_table.py): float64
within 1e-12 relative (absolute near 0) for log C_p, log I_nu and A_p on dims 2..4096 and
kappa 0..1e6; float32 within 2e-6 relative / 1e-5 absolute and A_p within 1e-6, except
where log C_p or log I_nu crosses zero at large kappa: there the value is a difference
of terms of size kappa, and the error stays below 2.1 u |kappa f'(kappa)|, the change of
the value when kappa moves by 2.1 half-ulps (u = 2^-24).

Compiled kernels take the order as an array argument (static plans "large", "small",
"mixed"), so one compiled program serves every dimension p.

Gradients: ``log_bessel_iv`` has a ``jax.custom_jvp`` in x (``R_nu + nu/x``),
``log_vmf_normalizer`` one in kappa (``-A_p``), the ratio one with its stably evaluated
slope (so ``jax.hessian`` of log C_p is accurate to 2e-14 / 1e-5 relative); none in the
order (a ValueError says so).
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from numbers import Real

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jax.scipy.special import xlogy
from scipy.special import zetac

__all__ = [
    "log_bessel_iv",
    "bessel_iv_ratio",
    "log_vmf_normalizer",
    "vmf_mean_resultant_length",
]

NU_DEBYE = 20.0
X_SERIES = 8.0
X_EXCESS = 8.0
_K_MAX = 16
_LGAMMA_TERMS = 28
_UNROLL_TERMS = 6
_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------
# Debye polynomials, exact rationals.
#
# U_k(p) = p^k u_k(p^2) (DLMF 10.41.10), V_k(p) = p^k v_k(p^2) (DLMF 10.41.11) and
# g_k(q) = (v_k(q) - u_k(q)) / (1 - q), an exact quotient since v_k(1) = u_k(1).
# --------------------------------------------------------------------------------------


def _padd(a: list, b: list) -> list:
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]


def _pmul(a: list, b: list) -> list:
    out = [Fraction(0)] * (len(a) + len(b) - 1)
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            out[i + j] += ai * bj
    return out


def _pder(a: list) -> list:
    return [i * a[i] for i in range(1, len(a))] or [Fraction(0)]


def _pint(a: list) -> list:
    return [Fraction(0)] + [c / (i + 1) for i, c in enumerate(a)]


def _pdiv_one_minus(a: list) -> list:
    """Quotient of a(q) by (1 - q); asserts the remainder a(1) is zero."""
    if sum(a) != 0:
        raise AssertionError("polynomial does not vanish at 1")
    # a(q) = (1 - q) b(q):  a_0 = b_0,  a_i = b_i - b_{i-1}.
    b, acc = [], Fraction(0)
    for c in a[:-1]:
        acc += c
        b.append(acc)
    return b or [Fraction(0)]


@functools.cache
def _debye_polynomials() -> tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...], tuple]:
    """Coefficients (ascending in q = p^2) of u_k and g_k, k = 0.._K_MAX, and exact u_k(1)."""
    u_full = [[Fraction(1)]]  # U_k in powers of p
    for _ in range(_K_MAX + 1):
        u = u_full[-1]
        t1 = _pmul([Fraction(0), Fraction(0), Fraction(1, 2), Fraction(0), Fraction(-1, 2)], _pder(u))
        t2 = [c / 8 for c in _pint(_pmul([Fraction(1), Fraction(0), Fraction(-5)], u))]
        u_full.append(_padd(t1, t2))
    # V_k = U_k + p (p^2 - 1) (U_{k-1}/2 + p U'_{k-1})  (DLMF 10.41.12).
    v_full = [[Fraction(1)]]
    for k in range(1, _K_MAX + 2):
        um = u_full[k - 1]
        inner = _padd([c / 2 for c in um], _pmul([Fraction(0), Fraction(1)], _pder(um)))
        v_full.append(_padd(u_full[k], _pmul([Fraction(0), Fraction(-1), Fraction(0), Fraction(1)], inner)))

    def even_part(poly: list, k: int) -> list:
        # poly = p^k * f(p^2); return the coefficients of f.
        coeffs = poly[k::2]
        if any(c != 0 for c in poly[:k]) or any(c != 0 for c in poly[k + 1 :: 2]):
            raise AssertionError("unexpected parity in Debye polynomial")
        return coeffs

    u_q = [even_part(u_full[k], k) for k in range(_K_MAX + 2)]
    v_q = [even_part(v_full[k], k) for k in range(_K_MAX + 2)]
    g_q = [_pdiv_one_minus(_padd(v_q[k], [-c for c in u_q[k]])) for k in range(_K_MAX + 2)]
    if g_q[1] != [Fraction(-1, 2)]:
        raise AssertionError("g_1 must be -1/2")
    u_at_1 = tuple(sum(c) for c in u_q)
    return (
        tuple(tuple(float(c) for c in poly) for poly in u_q),
        tuple(tuple(float(c) for c in poly) for poly in g_q),
        (u_q, u_at_1),
    )


@functools.cache
def _debye_term_bounds() -> tuple[float, ...]:
    """max over p in [0, 1] of max(|U_k(p)|, |p^k g_k(p^2)|), k = 0.._K_MAX+1."""
    u_q, g_q, _ = _debye_polynomials()
    p = np.linspace(0.0, 1.0, 4001)
    bounds = []
    for k in range(_K_MAX + 2):
        uk = np.abs(p**k * np.polyval(u_q[k][::-1], p * p))
        gk = np.abs(p**k * np.polyval(g_q[k][::-1], p * p))
        bounds.append(float(max(uk.max(), gk.max())))
    return tuple(bounds)


def _debye_terms(nu_min: float, dtype) -> int:
    """Smallest K whose first omitted term max|U_{K+1}| / nu_min^(K+1) is below eps/2."""
    tol = 0.5 * float(jnp.finfo(dtype).eps)
    bounds = _debye_term_bounds()
    for k in range(1, _K_MAX + 1):
        if bounds[k + 1] / nu_min ** (k + 1) <= tol:
            return k
    return _K_MAX


@functools.cache
def _series_terms(dtype_name: str, nu_min: float) -> int:
    """Terms of the ascending series so that the tail at x = X_SERIES is below eps/2."""
    tol = 0.5 * float(np.finfo(dtype_name).eps)
    q = X_SERIES * X_SERIES / 4.0
    term, total, k = 1.0, 1.0, 0
    while True:
        k += 1
        term *= q / (k * (nu_min + k))
        total += term
        ratio = q / ((k + 1) * (nu_min + k + 1))
        if ratio < 1.0 and term * ratio / (1.0 - ratio) <= tol * total:
            return k


# --------------------------------------------------------------------------------------
# Building blocks. ``nu`` is a Python float (static) or an array; ``x`` an array.
# --------------------------------------------------------------------------------------


def _float_dtype(*args) -> jnp.dtype:
    dtype = jnp.result_type(*args, 1.0)
    if dtype not in (jnp.float32, jnp.float64):
        dtype = jnp.dtype(jnp.float32)
    return dtype


def _is_static(value) -> bool:
    return isinstance(value, Real) or (isinstance(value, np.ndarray) and value.ndim == 0)


def _sqrt1p_sq(z):
    """s = sqrt(1 + z^2) and log s, without overflow for huge z (z >= 0)."""
    big = z > 1.0
    zb = jnp.where(big, z, 2.0)
    zs = jnp.where(big, 0.0, z)
    inv = 1.0 / zb
    s = jnp.where(big, zb * jnp.sqrt(1.0 + inv * inv), jnp.sqrt(1.0 + zs * zs))
    log_s = jnp.where(big, jnp.log(zb) + 0.5 * jnp.log1p(inv * inv), 0.5 * jnp.log1p(zs * zs))
    return s, log_s


@functools.cache
def _debye_tables(num_terms: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows k = 0..num_terms of u_k and g_k, descending powers of q, zero-padded in front."""
    u_q, g_q, _ = _debye_polynomials()
    width = num_terms + 1
    tables = []
    for polys in (u_q, g_q):
        table = np.zeros((num_terms + 1, width))
        for k in range(1, num_terms + 1):
            coeffs = polys[k][::-1]
            table[k, width - len(coeffs) :] = coeffs
        tables.append(table)
    return tables[0], tables[1]


def _debye_sums(p, r, num_terms: int):
    """U1 = sum_{k=1}^K U_k(p) r^k and T2 = sum_{k=2}^K (p r)^(k-1) g_k(p^2) (Horner in p r).

    sum_{k>=1} p^k g_k(p^2) r^k = p r (g_1 + T2) with g_1 = -1/2. Unrolled for
    K <= _UNROLL_TERMS; beyond, a ``fori_loop`` over k keeps the compiled program small
    (unrolled, K = 15 costs ~1 s of XLA compile time per call site).
    """
    q = p * p
    pr = p * r
    if num_terms <= _UNROLL_TERMS:
        u_q, g_q, _ = _debye_polynomials()
        u_sum = jnp.zeros_like(pr)
        t2 = jnp.zeros_like(pr)
        for k in range(num_terms, 0, -1):
            uk = jnp.full_like(q, u_q[k][-1])
            for c in u_q[k][-2::-1]:
                uk = uk * q + c
            u_sum = (u_sum + uk) * pr
            if k >= 2:
                gk = jnp.full_like(q, g_q[k][-1])
                for c in g_q[k][-2::-1]:
                    gk = gk * q + c
                t2 = (t2 + gk) * pr
        return u_sum, t2
    u_table, g_table = _debye_tables(num_terms)
    u_rows = jnp.asarray(u_table, q.dtype)
    g_rows = jnp.asarray(g_table, q.dtype)

    def term(i, carry):
        u_sum, t2 = carry
        row = num_terms - i
        u_row, g_row = u_rows[row], g_rows[row]
        uk = jnp.zeros_like(q)
        gk = jnp.zeros_like(q)
        for j in range(num_terms + 1):
            uk = uk * q + u_row[j]
            gk = gk * q + g_row[j]
        return (u_sum + uk) * pr, jnp.where(row >= 2, (t2 + gk) * pr, t2)

    zero = jnp.zeros_like(pr)
    return jax.lax.fori_loop(0, num_terms, term, (zero, zero))


def _debye_geometry(nu, x):
    """z = x/nu, s = sqrt(1+z^2), log s, p = 1/s, 1/(s+z) and s - 1 (no cancellation)."""
    z = x / nu
    s, log_s = _sqrt1p_sq(z)
    zs = jnp.where(z > 1.0, 0.0, z)
    s_minus_1 = jnp.where(z > 1.0, s - 1.0, zs * zs / (1.0 + jnp.sqrt(1.0 + zs * zs)))
    return z, s, log_s, 1.0 / s, 1.0 / (s + z), s_minus_1


def _debye_log_ive(nu, x, num_terms: int):
    """log I_nu(x) - x by the Debye expansion (nu >= NU_DEBYE)."""
    z, s, log_s, p, inv_spz, _ = _debye_geometry(nu, x)
    u_sum, _ = _debye_sums(p, 1.0 / nu, num_terms)
    # nu (eta - z), eta - z = (s - z) + log(z / (1 + s)), s - z = 1/(s+z).
    zs = jnp.where(z > 0, z, 1.0)
    log_z_over_1ps = jnp.where(z > 0, -jnp.log1p((1.0 + inv_spz) / zs), -jnp.inf)
    return nu * (inv_spz + log_z_over_1ps) - 0.5 * jnp.log(2.0 * math.pi * nu) - 0.5 * log_s + jnp.log1p(u_sum)


def _debye_ratio(nu, x, num_terms: int, with_slope: bool = False):
    """R_nu(x), 1 - R_nu(x), the excess x (1 - R_nu) - nu - 1/2 and (if asked) dR_nu/dx,
    by the Debye expansion (nu >= NU_DEBYE); all without cancellation.

    R = F1 F2 with F1 = z/(1+s), F2 = 1 + (1+p) G/U, G = p r (T2 - 1/2). The excess,
    -nu/(s+z) - (T2 (1-q) + U1/2 + q/2)/U, follows from z(1-R) - 1 = -1/(s+z) -
    (1-q) G/(p r U) and g_1 = -1/2 (q = p^2). The slope uses dF1/dz = p/(1+s) (autodiff
    of z/(1+s) would cancel terms of size z) and autodiff for F2 - 1 = O(1/nu).
    """
    z, s, _, p, inv_spz, _ = _debye_geometry(nu, x)
    r = 1.0 / nu

    def correction(z):
        p = 1.0 / _sqrt1p_sq(z)[0]
        u_sum, t2 = _debye_sums(p, r, num_terms)
        return (1.0 + p) * p * r * (t2 - 0.5), 1.0 + u_sum, t2

    if with_slope:
        (onep_g, u_tot, t2), (onep_g_dot, u_tot_dot, _) = jax.jvp(correction, (z,), (jnp.ones_like(z),))
    else:
        onep_g, u_tot, t2 = correction(z)
    half_angle = z / (1.0 + s)
    f2 = 1.0 + onep_g / u_tot
    ratio = half_angle * f2
    complement = ((1.0 + inv_spz) * u_tot - z * onep_g) / ((1.0 + s) * u_tot)
    q = p * p
    excess = -nu * inv_spz - (t2 * (1.0 - q) + 0.5 * (u_tot - 1.0) + 0.5 * q) / u_tot
    slope = None
    if with_slope:
        f2_dot = (onep_g_dot * u_tot - onep_g * u_tot_dot) / (u_tot * u_tot)
        slope = r * (p / (1.0 + s) * f2 + half_angle * f2_dot)
    return ratio, complement, excess, slope


@functools.cache
def _lgamma2_coefficients() -> tuple[float, ...]:
    """Taylor coefficients of lgamma(2 + u): (1 - gamma), then (-1)^k zeta_c(k) / k."""
    ks = np.arange(2, _LGAMMA_TERMS + 1)
    return (1.0 - float(np.euler_gamma),) + tuple(float(c) for c in (-1.0) ** ks * zetac(ks) / ks)


def _lgamma1p(nu):
    """lgamma(1 + nu) for traced 0 <= nu < NU_DEBYE, exact to rounding (also at nu = 0, 1).

    XLA's float32 lgamma errs by 4.8e-7 at 1 and 1.1e-5 near 20, which would make
    log I_0(x) negative at small x. Here nu = n + f, lgamma(1 + f) comes from the series
    of lgamma(2 + u) (|u| <= 1/2, terms <= 4^-k) and the rest from log prod (f + j).
    """
    n = jnp.floor(nu)
    f = nu - n
    upper = f > 0.5
    u = jnp.where(upper, f - 1.0, f)
    coeffs = _lgamma2_coefficients()
    acc = jnp.zeros_like(u)
    for c in coeffs[::-1]:
        acc = (acc + c) * u
    lgamma_1pf = jnp.where(upper, acc, acc - jnp.log1p(u))
    prod = jnp.ones_like(f)
    for j in range(1, int(NU_DEBYE)):
        prod = prod * jnp.where(j <= n, f + j, 1.0)
    return lgamma_1pf + jnp.log(prod)


def _series_log_iv(nu, x, num_terms: int):
    """log I_nu(x) by the ascending series (x <= X_SERIES, nu < NU_DEBYE)."""
    log_sum, _ = _series_log1p_sum(nu, x, num_terms)
    return xlogy(nu, 0.5 * x) - _lgamma1p(nu) + log_sum


def _series_log1p_sum(nu, x, num_terms: int):
    """log(sum_k (x^2/4)^k / (k! (nu+1)_k)) = log1p(S1) and S1."""
    q = 0.25 * x * x
    term = jnp.ones_like(q)
    s1 = jnp.zeros_like(q)
    for k in range(1, num_terms + 1):
        term = term * q / (k * (nu + k))
        s1 = s1 + term
    return jnp.log1p(s1), s1


def _recurrence(nu, x, num_terms: int, with_slope: bool = False):
    """R_nu, 1 - R_nu, dR_nu/dx (if asked, else None) and log prod_{j<n} R_{nu+j},
    n = NU_DEBYE, from the Debye expansion at order nu + n, by the backward recurrence
    R_{m-1} = x/D, D = 2m + x R_m (stable: the ratio is the minimal solution).

    Carried directly, the complement 1 - R_{m-1} = (2m - x (1-R_m))/D and the slope
    R'_{m-1} = (2m - x^2 R'_m)/D^2 lose up to ~n^2 eps at large x (each step amplifies
    by (m+1/2)/(m-1/2): 2200 eps at nu = 0, x = 4914 in float32). Beyond x = X_EXCESS they
    come from the small excesses e_m = x (1-R_m) - m - 1/2 and f_m = x^2 R'_m - m - 1/2,
    whose recurrences (with a = m - 1/2 - e_m, D = x + a)
        e_{m-1} = -((m-1/2)^2 + (x-m+1/2) e_m)/D,   f_{m-1} = -(x^2 f_m + (m-1/2) a (2x+a))/D^2
    do not amplify errors: 1 - R = (nu + 1/2 + e)/x, R' = (nu + 1/2 + f)/x^2. Measured
    (mpmath, nu < 20, x <= 1e6): 1 - R within 4 eps, R' within 170 eps (nu = 0, float32).

    A ``fori_loop`` rather than unrolled code: XLA would otherwise fuse the chain with
    duplicated subexpressions (seconds of compile time for 20 steps).
    """
    steps = int(NU_DEBYE)
    top = nu + steps
    ratio, comp, excess, slope = _debye_ratio(top, x, num_terms, with_slope)
    carry = (ratio, comp, excess, jnp.ones_like(ratio))
    if with_slope:
        carry = carry + (slope, x * x * slope - top - 0.5)

    def step(i, carry):
        ratio, comp, excess, prod = carry[:4]
        m = nu + (steps - i)
        den = 2.0 * m + x * ratio
        a = m - 0.5 - excess
        new = (x / den, (2.0 * m - x * comp) / den, -((m - 0.5) ** 2 + (x - m + 0.5) * excess) / den)
        new = new + (prod * new[0],)
        if with_slope:
            slope, slope_excess = carry[4:]
            new = new + (
                (2.0 * m - x * x * slope) / (den * den),
                -(x * x * slope_excess + (m - 0.5) * a * (2.0 * x + a)) / (den * den),
            )
        return new

    carry = jax.lax.fori_loop(0, steps, step, carry)
    ratio, comp, excess, prod = carry[:4]
    large = x > X_EXCESS
    x_large = jnp.where(large, x, X_EXCESS)
    comp = jnp.where(large, (nu + 0.5 + excess) / x_large, comp)
    if with_slope:
        slope, slope_excess = carry[4:]
        slope = jnp.where(large, (nu + 0.5 + slope_excess) / (x_large * x_large), slope)
    return ratio, comp, slope, jnp.log(prod)


def _shifted_log_ive(nu, x, num_terms: int):
    """log I_nu(x) - x = log I_{nu+n}(x) - x - log prod_{j<n} R_{nu+j}(x), n = NU_DEBYE."""
    log_prod = _recurrence(nu, x, num_terms)[3]
    return _debye_log_ive(nu + NU_DEBYE, x, num_terms) - log_prod


def _small_order_terms(dtype) -> tuple[int, int]:
    """(Debye terms at order >= NU_DEBYE, series terms) for orders below NU_DEBYE."""
    return _debye_terms(NU_DEBYE, dtype), _series_terms(jnp.dtype(dtype).name, 0.0)


def _small_order_log_iv(nu, x):
    """log I_nu(x) for nu < NU_DEBYE: series for x <= X_SERIES, else recurrence."""
    num_terms, series_terms = _small_order_terms(x.dtype)
    small = x <= X_SERIES
    xs = jnp.where(small, x, X_SERIES)
    xl = jnp.where(small, X_SERIES, x)
    series = _series_log_iv(nu, xs, series_terms)
    shifted = _shifted_log_ive(nu, xl, num_terms) + xl
    return jnp.where(small, series, shifted)


def _nan_outside(value, *conditions):
    bad = functools.reduce(jnp.logical_or, [jnp.logical_not(c) for c in conditions])
    return jnp.where(bad, jnp.nan, value)


# --------------------------------------------------------------------------------------
# Kernels. The order enters as an array even when it is static, so that one compiled
# program serves every order of the same plan (and every dimension p):
#   ("large",)    static order >= NU_DEBYE;
#   ("small",)    static order < NU_DEBYE;
#   ("mixed",)    an array of orders, both with a per-element switch.
# --------------------------------------------------------------------------------------


def _plan(nu) -> tuple:
    if not _is_static(nu):
        return ("mixed",)
    return ("large",) if nu >= NU_DEBYE else ("small",)


def _split_orders(nu):
    large = nu >= NU_DEBYE
    return large, jnp.where(large, nu, NU_DEBYE), jnp.where(large, 0.0, nu)


@functools.partial(jax.jit, static_argnames="plan")
def _log_iv_kernel(nu, x, plan):
    xs = jnp.where(x >= 0, x, 0.0)
    num_terms, _ = _small_order_terms(x.dtype)
    if plan[0] == "large":
        value = _debye_log_ive(nu, xs, num_terms) + xs
    elif plan[0] == "small":
        value = _small_order_log_iv(nu, xs)
    else:
        large, nu_large, nu_small = _split_orders(nu)
        value = jnp.where(large, _debye_log_ive(nu_large, xs, num_terms) + xs, _small_order_log_iv(nu_small, xs))
    return _nan_outside(value, x >= 0, nu >= 0)


@functools.partial(jax.jit, static_argnames=("plan", "with_slope"))
def _ratio_kernel(nu, x, plan, with_slope: bool = False):
    """(R_nu(x), 1 - R_nu(x)) for x >= 0, and dR_nu/dx if ``with_slope``."""
    num_terms, _ = _small_order_terms(x.dtype)
    if plan[0] == "large":
        parts = _debye_ratio(nu, x, num_terms, with_slope)
        parts = parts[:2] + parts[3:]
    elif plan[0] == "small":
        parts = _recurrence(nu, x, num_terms, with_slope)[:3]
    else:
        large, nu_large, nu_small = _split_orders(nu)
        parts_large = _debye_ratio(nu_large, x, num_terms, with_slope)
        parts_large = parts_large[:2] + parts_large[3:]
        parts_small = _recurrence(nu_small, x, num_terms, with_slope)[:3]
        parts = tuple(None if a is None else jnp.where(large, a, b) for a, b in zip(parts_large, parts_small))
    return parts if with_slope else parts[:2]


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _ratio(nu, x, plan):
    """(R_nu(x), 1 - R_nu(x)), differentiable in x with the stably evaluated R'."""
    return _ratio_kernel(nu, x, plan)


def _ratio_jvp(plan, primals, tangents):
    nu, x = primals
    nu_dot, x_dot = tangents
    if not isinstance(nu_dot, SymbolicZero):
        raise ValueError(
            "Bessel functions here are not differentiable with respect to the order; "
            "differentiate with respect to x only (pass the order as a constant)"
        )
    out = _ratio(nu, x, plan)
    if isinstance(x_dot, SymbolicZero):
        return out, (jnp.zeros_like(out[0]), jnp.zeros_like(out[1]))
    ratio_dot = _ratio_kernel(nu, x, plan, with_slope=True)[2] * x_dot
    return out, (ratio_dot, -ratio_dot)


_ratio.defjvp(_ratio_jvp, symbolic_zeros=True)


def _ratio_and_complement(nu, x):
    """R_nu(x) and 1 - R_nu(x) for x >= 0; nu a Python float or an array broadcastable with x."""
    return _ratio(jnp.asarray(nu, x.dtype), x, _plan(nu))


@functools.partial(jax.jit, static_argnames="plan")
def _log_iv_slope_kernel(nu, x, plan):
    """d/dx log I_nu(x) = R_nu(x) + nu/x (0 at x = 0 for nu = 0, +inf for nu > 0)."""
    ratio, _ = _ratio(nu, jnp.where(x >= 0, x, 0.0), plan)
    positive = x > 0
    nu_over_x = jnp.where(positive, nu / jnp.where(positive, x, 1.0), jnp.where(nu == 0, 0.0, jnp.inf))
    return ratio + nu_over_x


@functools.partial(jax.jit, static_argnames="plan")
def _log_normalizer_kernel(kappa, nu, log_c0, log1p_u_at_0, plan):
    """log C_p(kappa); NaN for kappa < 0.

    Large orders: App. A of nivmf.md relative to the exact log C_p(0), all O(nu log nu)
    terms cancelled analytically. Small orders: the series (kappa <= X_SERIES) with the
    kappa^nu factor cancelled, else nu log kappa - (nu+1) log 2 pi - log I_nu(kappa).
    """
    k = jnp.where(kappa >= 0, kappa, 0.0)
    num_terms, series_terms = _small_order_terms(k.dtype)
    if plan[0] == "large":
        _, _, log_s, p, _, sm1 = _debye_geometry(nu, k)
        u_sum, _ = _debye_sums(p, 1.0 / nu, num_terms)
        delta_u = jnp.log1p(u_sum) - log1p_u_at_0
        value = log_c0 + nu * (jnp.log1p(0.5 * sm1) - sm1) + 0.5 * log_s - delta_u
    else:
        small = k <= X_SERIES
        ks = jnp.where(small, k, X_SERIES)
        kl = jnp.where(small, X_SERIES, k)
        series = log_c0 - _series_log1p_sum(nu, ks, series_terms)[0]
        shifted = nu * jnp.log(kl) - (nu + 1.0) * _LOG_2PI - kl - _shifted_log_ive(nu, kl, num_terms)
        value = jnp.where(small, series, shifted)
    return _nan_outside(value, kappa >= 0)


@functools.partial(jax.jit, static_argnames="plan")
def _entropy_kernel(kappa, nu, log_c0, log1p_u_at_0, plan):
    """-log C_p(kappa) - kappa A_p(kappa) with the O(kappa) terms cancelled analytically:
    -log C_p - kappa = -log C_p(0) - nu [log((1+s)/2) + 1 - 1/(s+z)] - (log s)/2 + dU
    (large orders) or -nu log kappa + (nu+1) log 2 pi + log(I_nu e^-kappa) (small), plus
    kappa (1 - A_p) from the complement of the ratio. No autodiff through it (custom JVP)."""
    k = jnp.where(kappa >= 0, kappa, 0.0)
    num_terms, _ = _small_order_terms(k.dtype)
    if plan[0] == "large":
        _, comp = _ratio_kernel(nu, k, plan)
        _, _, log_s, p, inv_spz, sm1 = _debye_geometry(nu, k)
        u_sum, _ = _debye_sums(p, 1.0 / nu, num_terms)
        delta_u = jnp.log1p(u_sum) - log1p_u_at_0
        value = -log_c0 - nu * (jnp.log1p(0.5 * sm1) + (1.0 - inv_spz)) - 0.5 * log_s + delta_u + k * comp
    else:
        # One recurrence serves both branches (NaN from k = 0 in the unused one is discarded).
        ratio, comp, _, log_prod = _recurrence(nu, k, num_terms)
        small = k <= X_SERIES
        series = -_log_normalizer_kernel(k, nu, log_c0, log1p_u_at_0, plan) - k * ratio
        log_ive = _debye_log_ive(nu + NU_DEBYE, k, num_terms) - log_prod
        shifted = -nu * jnp.log(k) + (nu + 1.0) * _LOG_2PI + log_ive + k * comp
        value = jnp.where(small, series, shifted)
    return _nan_outside(value, kappa >= 0)


# --------------------------------------------------------------------------------------
# Public functions.
# --------------------------------------------------------------------------------------


def _check_order(order: float) -> float:
    order = float(order)
    if not order >= 0.0 or math.isinf(order):
        raise ValueError(f"order must be a finite number >= 0, got {order}")
    return order


def _prepare(order, x):
    x = jnp.asarray(x)
    if _is_static(order):
        order = _check_order(order)
        dtype = _float_dtype(x)
        return order, x.astype(dtype)
    order = jnp.asarray(order)
    dtype = _float_dtype(x, order)
    order, x = jnp.broadcast_arrays(order.astype(dtype), x.astype(dtype))
    return order, x


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _log_iv_static(nu: float, x):
    return _log_iv_kernel(jnp.asarray(nu, x.dtype), x, _plan(nu))


@_log_iv_static.defjvp
def _log_iv_static_jvp(nu, primals, tangents):
    (x,), (x_dot,) = primals, tangents
    slope = _log_iv_slope_kernel(jnp.asarray(nu, x.dtype), x, _plan(nu))
    return _log_iv_static(nu, x), slope * x_dot


@jax.custom_jvp
def _log_iv_traced(nu, x):
    return _log_iv_kernel(nu, x, ("mixed",))


def _log_iv_traced_jvp(primals, tangents):
    nu, x = primals
    nu_dot, x_dot = tangents
    if not isinstance(nu_dot, SymbolicZero):
        raise ValueError(
            "log_bessel_iv is not differentiable with respect to the order; "
            "differentiate with respect to x only (pass the order as a constant)"
        )
    out = _log_iv_traced(nu, x)
    if isinstance(x_dot, SymbolicZero):
        return out, jnp.zeros_like(out)
    return out, _log_iv_slope_kernel(nu, x, ("mixed",)) * x_dot


_log_iv_traced.defjvp(_log_iv_traced_jvp, symbolic_zeros=True)


def log_bessel_iv(order, x) -> jax.Array:
    """log I_order(x), the log of the modified Bessel function of the first kind.

    Args:
      order: nu >= 0, a Python number (static) or an array broadcastable with x.
      x: argument >= 0 (x = 0 gives 0 for nu = 0 and -inf for nu > 0).

    Returns:
      log I_nu(x) in the promoted floating dtype (float32 or float64); NaN outside the
      domain. Error <= max(1e-12 |f|, 1e-12) (float64) / max(2e-6 |f|, 1e-5) (float32),
      see the module docstring. Differentiable in x with d/dx log I_nu(x) = R_nu(x) + nu/x
      (custom JVP, also at x = 0); not in the order (raises ValueError).
    """
    nu, x = _prepare(order, x)
    if _is_static(nu):
        return _log_iv_static(nu, x)
    return _log_iv_traced(nu, x)


def bessel_iv_ratio(order, x) -> jax.Array:
    """R_nu(x) = I_{nu+1}(x) / I_nu(x), in [0, 1), for nu >= 0 and x >= 0.

    Uniform Debye expansion for nu >= 20, backward recurrence from order nu + 20 below
    (see module docstring); relative error <= 1e-12 (float64) / 1e-6 (float32), within
    the Amos-type bounds x/(nu + 1 + sqrt((nu+1)^2 + x^2)) <= R_nu(x) <=
    x/(nu + 1/2 + sqrt((nu+1/2)^2 + x^2)). Differentiable in x (also twice).
    """
    nu, x = _prepare(order, x)
    ratio, _ = _ratio_and_complement(nu, jnp.where(x >= 0, x, 0.0))
    return _nan_outside(ratio, x >= 0, jnp.asarray(nu) >= 0)


def _check_dim(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 2:
        raise ValueError(f"dim must be a static Python int >= 2 (the ambient dimension p), got {dim!r}")
    return int(dim)


@functools.cache
def _normalizer_constants(dim: int, dtype_name: str) -> tuple[float, float, float, tuple]:
    """nu = p/2 - 1, log C_p(0) = lgamma(p/2) - log 2 - (p/2) log pi (exact, in float64),
    log(1 + sum_k U_k(1)/nu^k) (the Debye series at kappa = 0, exact rationals) and the plan."""
    nu = dim / 2.0 - 1.0
    plan = _plan(nu)
    log_c0 = math.lgamma(dim / 2.0) - math.log(2.0) - (dim / 2.0) * math.log(math.pi)
    log1p_u_at_0 = 0.0
    if plan[0] == "large":
        _, _, (_, u_at_1) = _debye_polynomials()
        num_terms, _ = _small_order_terms(jnp.dtype(dtype_name))
        total = sum(u_at_1[k] / Fraction(nu) ** k for k in range(1, num_terms + 1))
        log1p_u_at_0 = math.log1p(float(total))
    return nu, log_c0, log1p_u_at_0, plan


def _normalizer_args(kappa, dim: int):
    nu, log_c0, log1p_u_at_0, plan = _normalizer_constants(dim, kappa.dtype.name)
    dtype = kappa.dtype
    return (jnp.asarray(nu, dtype), jnp.asarray(log_c0, dtype), jnp.asarray(log1p_u_at_0, dtype)), plan


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _log_normalizer(kappa, dim: int):
    args, plan = _normalizer_args(kappa, dim)
    return _log_normalizer_kernel(kappa, *args, plan)


@_log_normalizer.defjvp
def _log_normalizer_jvp(dim, primals, tangents):
    (kappa,), (kappa_dot,) = primals, tangents
    return _log_normalizer(kappa, dim), -_mean_resultant_length(kappa, dim) * kappa_dot


def _mean_resultant_length(kappa, dim: int):
    ratio, _ = _ratio_and_complement(dim / 2.0 - 1.0, jnp.where(kappa >= 0, kappa, 0.0))
    return _nan_outside(ratio, kappa >= 0)


def log_vmf_normalizer(kappa, dim: int) -> jax.Array:
    """log C_p(kappa) = (p/2-1) log kappa - (p/2) log(2 pi) - log I_{p/2-1}(kappa).

    The log-normaliser of the vMF density on S^{p-1} (surface measure), exact for every
    p >= 2 and kappa >= 0 (log C_p(0) = lgamma(p/2) - log 2 - (p/2) log pi, minus the log
    area of the sphere). ``dim`` = p is a static int; ``kappa`` any array. The derivative
    is the custom JVP d/dkappa log C_p = -A_p(kappa) (so ``jax.grad`` is exact at small
    kappa), itself differentiable (``jax.hessian`` works).
    """
    dim = _check_dim(dim)
    kappa = jnp.asarray(kappa)
    return _log_normalizer(kappa.astype(_float_dtype(kappa)), dim)


def vmf_mean_resultant_length(kappa, dim: int) -> jax.Array:
    """A_p(kappa) = I_{p/2}(kappa) / I_{p/2-1}(kappa) = E[mu.x] under vMF(mu, kappa) on S^{p-1}."""
    dim = _check_dim(dim)
    kappa = jnp.asarray(kappa)
    return _mean_resultant_length(kappa.astype(_float_dtype(kappa)), dim)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _vmf_entropy(kappa, dim: int):
    """-log C_p(kappa) - kappa A_p(kappa) (see ``_entropy_kernel``); dH/dkappa = -kappa A_p'."""
    args, plan = _normalizer_args(kappa, dim)
    return _entropy_kernel(kappa, *args, plan)


@_vmf_entropy.defjvp
def _vmf_entropy_jvp(dim, primals, tangents):
    (kappa,), (kappa_dot,) = primals, tangents
    k = jnp.where(kappa >= 0, kappa, 0.0)
    slope = _ratio_kernel(jnp.asarray(dim / 2.0 - 1.0, k.dtype), k, _plan(dim / 2.0 - 1.0), with_slope=True)[2]
    return _vmf_entropy(kappa, dim), -k * slope * kappa_dot
