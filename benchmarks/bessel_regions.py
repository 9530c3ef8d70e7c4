"""Error of probdml.special in each of its evaluation regions, against mpmath (40 digits).

The regions are the ones `probdml.special` switches between per element (its module docstring):

  * debye:      nu >= NU_DEBYE (20), any x                 uniform asymptotic (Debye) expansion
  * series:     nu <  NU_DEBYE, x <= X_SERIES (8)          ascending series
  * recurrence: nu <  NU_DEBYE, x >  X_SERIES              Debye at nu + 20, backward ratio recurrence

For each region, N random (nu, x) pairs (nu log-uniform or uniform over the region's orders, x
log-uniform over its arguments, both rounded to float32 so that the same inputs serve both dtypes)
give log I_nu(x) and R_nu(x) = I_{nu+1}(x) / I_nu(x); for dims p in DIMS and kappa log-uniform over
[1e-6, 1e4] (and kappa = 0), log C_p(kappa) and A_p(kappa). Arguments stop at X_MAX = 1e4: mpmath
sums the series of I_nu(x) term by term, so larger x costs minutes per value (tests/test_special.py
covers up to 1e6 from a stored table). Printed: the largest error in float64 and float32, relative to
max(|value|, 1) for the logarithms (absolute below 1) and relative for R and A_p.

Usage: python benchmarks/bessel_regions.py [--n 60] [--seed 0]
"""

from __future__ import annotations

import argparse

import jax
import mpmath as mp
import numpy as np

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

from probdml import special  # noqa: E402

mp.mp.dps = 40
DIMS = (3, 16, 64, 128, 512, 2048)
# mpmath sums the series of I_nu(x) term by term: x up to 1e4 keeps a run to minutes.
X_MAX = 1e4


def _log_iv(nu: float, x: float) -> mp.mpf:
    if x == 0:
        return mp.mpf(0) if nu == 0 else mp.ninf
    return mp.log(mp.besseli(nu, x, maxterms=10**6))


def _ratio(nu: float, x: float) -> mp.mpf:
    if x == 0:
        return mp.mpf(0)
    return mp.besseli(nu + 1, x, maxterms=10**6) / mp.besseli(nu, x, maxterms=10**6)


def _log_c(kappa: float, p: int) -> mp.mpf:
    nu = mp.mpf(p) / 2 - 1
    if kappa == 0:
        return mp.loggamma(mp.mpf(p) / 2) - mp.log(2) - mp.mpf(p) / 2 * mp.log(mp.pi)
    return nu * mp.log(kappa) - mp.mpf(p) / 2 * mp.log(2 * mp.pi) - _log_iv(nu, kappa)


def _errors(values: np.ndarray, exact: list[mp.mpf], relative: bool) -> np.ndarray:
    out = []
    for v, e in zip(values, exact):
        scale = abs(e) if relative else max(abs(e), 1)
        out.append(float(abs(mp.mpf(float(v)) - e) / scale) if scale else float(abs(mp.mpf(float(v)))))
    return np.asarray(out)


def _pairs(rng: np.random.Generator, n: int, region: str) -> tuple[np.ndarray, np.ndarray]:
    if region == "debye":
        nu = np.exp(rng.uniform(np.log(special.NU_DEBYE), np.log(5000.0), n))
        x = np.exp(rng.uniform(np.log(1e-4), np.log(X_MAX), n))
    elif region == "series":
        nu = rng.uniform(0.0, special.NU_DEBYE, n)
        x = np.exp(rng.uniform(np.log(1e-4), np.log(special.X_SERIES), n))
    else:
        nu = rng.uniform(0.0, special.NU_DEBYE, n)
        x = np.exp(rng.uniform(np.log(special.X_SERIES * 1.001), np.log(X_MAX), n))
    return nu.astype(np.float32).astype(np.float64), x.astype(np.float32).astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="random points per region")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    print("| region | quantity | max error float64 | max error float32 |")
    print("|---|---|---|---|", flush=True)
    for region in ("debye", "series", "recurrence"):
        nu, x = _pairs(rng, args.n, region)
        exact_log = [_log_iv(a, b) for a, b in zip(nu, x)]
        exact_ratio = [_ratio(a, b) for a, b in zip(nu, x)]
        row = {}
        for dtype in (jnp.float64, jnp.float32):
            log_iv = np.asarray(special.log_bessel_iv(jnp.asarray(nu, dtype), jnp.asarray(x, dtype)))
            ratio = np.asarray(special.bessel_iv_ratio(jnp.asarray(nu, dtype), jnp.asarray(x, dtype)))
            row[dtype] = (_errors(log_iv, exact_log, False).max(), _errors(ratio, exact_ratio, True).max())
        print(f"| {region} | log I_nu(x) | {row[jnp.float64][0]:.1e} | {row[jnp.float32][0]:.1e} |")
        print(f"| {region} | R_nu(x) | {row[jnp.float64][1]:.1e} | {row[jnp.float32][1]:.1e} |")

    for p in DIMS:
        kappa = np.concatenate([[0.0], np.exp(rng.uniform(np.log(1e-6), np.log(X_MAX), args.n))])
        kappa = kappa.astype(np.float32).astype(np.float64)
        exact_c = [_log_c(k, p) for k in kappa]
        exact_a = [_ratio(mp.mpf(p) / 2 - 1, k) for k in kappa]
        row = {}
        for dtype in (jnp.float64, jnp.float32):
            log_c = np.asarray(special.log_vmf_normalizer(jnp.asarray(kappa, dtype), p))
            a_p = np.asarray(special.vmf_mean_resultant_length(jnp.asarray(kappa, dtype), p))
            row[dtype] = (_errors(log_c, exact_c, False).max(), _errors(a_p[1:], exact_a[1:], True).max())
        region = "debye" if p / 2 - 1 >= special.NU_DEBYE else "series/recurrence"
        print(f"| p = {p} ({region}) | log C_p(kappa) | {row[jnp.float64][0]:.1e} | {row[jnp.float32][0]:.1e} |")
        print(f"| p = {p} ({region}) | A_p(kappa) | {row[jnp.float64][1]:.1e} | {row[jnp.float32][1]:.1e} |")


if __name__ == "__main__":
    main()
