"""Accuracy and throughput of probdml.special.log_vmf_normalizer at p = 512, against
scipy.special.ive (the usual way to evaluate log C_p) in the same process.

For N (default 10^6) concentrations kappa, log-uniform over [1e-8, 1e6] and rounded to
float32 (order nu = p/2 - 1 = 255 for every pair), prints:
  * max relative error (absolute where |log C| < 1) against mpmath (50 digits) on a
    random subsample, for the jitted float32 and float64 normaliser and for scipy;
  * how often log(ive) is -inf (underflow) with scipy, in float64 and float32;
  * throughput (million evaluations per second, median of repeats) of the jitted float32
    normaliser, its gradient, the float64 normaliser, and scipy's ive-based evaluation,
    with the ratios to scipy.

Usage: python benchmarks/special.py [--n 1000000] [--subsample 300] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import scipy.special

from probdml.special import log_vmf_normalizer

DIM = 512
NU = DIM / 2 - 1


def scipy_log_normalizer(kappa: np.ndarray) -> np.ndarray:
    """log C_p via scipy: nu log k - (p/2) log 2 pi - (log ive(nu, k) + k)."""
    with np.errstate(divide="ignore"):
        return NU * np.log(kappa) - DIM / 2 * math.log(2 * math.pi) - (np.log(scipy.special.ive(NU, kappa)) + kappa)


def mpmath_log_normalizer(kappa: float) -> float:
    with mp.workdps(50):
        k = mp.mpf(kappa)
        value = NU * mp.log(k) - mp.mpf(DIM) / 2 * mp.log(2 * mp.pi) - mp.log(mp.besseli(NU, k, maxterms=10**6))
        return float(value)


def timed(fn, repeats: int) -> float:
    """Median seconds of fn() (results blocked on)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def max_error(got: np.ndarray, want: np.ndarray) -> tuple[float, int]:
    """max |got - want| / max(1, |want|), and the number of non-finite values in got."""
    finite = np.isfinite(got)
    err = np.abs(got[finite] - want[finite]) / np.maximum(1.0, np.abs(want[finite]))
    return (float(err.max()) if err.size else float("nan")), int((~finite).sum())


def criterion(got, want, kappa, slope, rtol, atol, unit_roundoff) -> str:
    """Points outside the issue's tolerance max(rtol |f|, atol), and the largest error there
    in units of u |kappa f'(kappa)| (the value's uncertainty from rounding kappa)."""
    finite = np.isfinite(got)
    err = np.abs(got - want)
    outside = finite & (err > np.maximum(rtol * np.abs(want), atol))
    if not outside.any():
        return "all within max(rtol |f|, atol)"
    ratio = err[outside] / (unit_roundoff * np.abs(kappa[outside] * slope[outside]))
    return f"{int(outside.sum())} outside max(rtol |f|, atol), there err <= {ratio.max():.2f} u |kappa A_p|"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10**6)
    parser.add_argument("--subsample", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    kappa32 = (10.0 ** rng.uniform(-8, 6, args.n)).astype(np.float32)
    kappa64 = kappa32.astype(np.float64)
    print(f"p = {DIM} (order {NU:g}), N = {args.n} kappas log-uniform in [1e-8, 1e6] (float32 values)")
    print(f"devices: {jax.devices()}")

    normalizer = jax.jit(log_vmf_normalizer, static_argnums=1)
    gradient = jax.jit(jax.grad(lambda k: jnp.sum(log_vmf_normalizer(k, DIM))))
    x32 = jnp.asarray(kappa32)
    ours32 = np.asarray(normalizer(x32, DIM), np.float64)
    jax.block_until_ready(gradient(x32))
    with jax.enable_x64(True):
        normalizer64 = jax.jit(log_vmf_normalizer, static_argnums=1)
        x64 = jnp.asarray(kappa64)
        ours64 = np.asarray(normalizer64(x64, DIM))
        t_ours64 = timed(lambda: normalizer64(x64, DIM), args.repeats)
    theirs64 = scipy_log_normalizer(kappa64)
    with np.errstate(divide="ignore"):
        theirs32 = NU * np.log(kappa32) - DIM / 2 * np.float32(math.log(2 * math.pi)) - (
            np.log(scipy.special.ive(np.float32(NU), kappa32)) + kappa32
        )

    idx = rng.choice(args.n, size=args.subsample, replace=False)
    reference = np.array([mpmath_log_normalizer(float(kappa64[i])) for i in idx])
    with jax.enable_x64(True):
        slope = np.asarray(jax.vmap(jax.grad(log_vmf_normalizer), in_axes=(0, None))(jnp.asarray(kappa64[idx]), DIM))
    print(f"\naccuracy on {args.subsample} random pairs vs mpmath (max |err| / max(1, |log C|); non-finite count):")
    for name, values, (rtol, atol, u) in (
        ("probdml float32", ours32, (2e-6, 1e-5, 2.0**-24)),
        ("probdml float64", ours64, (1e-12, 1e-12, 2.0**-53)),
        ("scipy ive float64", theirs64, (1e-12, 1e-12, 2.0**-53)),
        ("scipy ive float32", theirs32.astype(np.float64), (2e-6, 1e-5, 2.0**-24)),
    ):
        err, bad = max_error(values[idx], reference)
        verdict = criterion(values[idx], reference, kappa64[idx], slope, rtol, atol, u)
        print(f"  {name:18s} max err {err:.3e}   non-finite {bad:4d}   {verdict}")
    print("\nscipy log(ive) = -inf (underflow) over all N pairs:")
    print(f"  float64: {int(np.isinf(theirs64).sum())} ({np.isinf(theirs64).mean():.1%})   "
          f"float32: {int(np.isinf(theirs32).sum())} ({np.isinf(theirs32).mean():.1%})")
    bad32, bad64 = int((~np.isfinite(ours32)).sum()), int((~np.isfinite(ours64)).sum())
    print(f"  probdml: {bad32} non-finite (float32), {bad64} (float64)")

    t_ours32 = timed(lambda: normalizer(x32, DIM), args.repeats)
    t_grad32 = timed(lambda: gradient(x32), args.repeats)
    t_scipy64 = timed(lambda: scipy_log_normalizer(kappa64), args.repeats)
    print(f"\nthroughput (million evaluations / s, median of {args.repeats}):")
    for name, seconds in (
        ("probdml float32 (jit)", t_ours32),
        ("probdml float32 grad (jit)", t_grad32),
        ("probdml float64 (jit)", t_ours64),
        ("scipy ive float64", t_scipy64),
    ):
        print(f"  {name:28s} {args.n / seconds / 1e6:8.2f}   ({t_scipy64 / seconds:6.1f}x scipy)")


if __name__ == "__main__":
    main()
