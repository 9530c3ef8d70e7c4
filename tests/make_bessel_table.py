"""Generates tests/data/bessel_table.npz, the mpmath reference for tests/test_special.py.

Every value is computed with mpmath at 50 significant digits and again at 70; the script
fails if the two disagree beyond 1e-30 (relative, absolute near 0), then stores float64.
All arguments are float32 numbers (so one table serves float32 and float64 tests: the
float32 inputs are exact and only the algorithms' rounding is measured).

Tables:
  * ``dim_*``: for p in DIMS and kappa on a log grid over [1e-8, 1e6] (4 per decade),
    kappa = 0, the series/recurrence switch point 8 and its float32 neighbours, and
    random log-uniform points: log I_nu(kappa), A_p(kappa) = R_nu(kappa), dA_p/dkappa,
    log C_p(kappa) and the entropy -log C_p - kappa A_p, nu = p/2 - 1.
  * ``order_*``: (order, x) pairs with orders off the half-integers, around the Debye
    switch (20) and up to 5000: log I_order(x) and R_order(x).

Run from the repository root: ``python tests/make_bessel_table.py`` (a few minutes).
"""

from __future__ import annotations

import pathlib

import mpmath as mp
import numpy as np

DIMS = (2, 3, 4, 5, 8, 16, 33, 64, 128, 256, 512, 1000, 1024, 2048, 4096)
OUT = pathlib.Path(__file__).parent / "data" / "bessel_table.npz"
SEED = 20240611


def f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def besseli(nu, x):
    # maxterms: the hypergeometric series needs more than the default near x ~ 15 nu.
    return mp.besseli(nu, x, maxterms=10**6)


def dim_row(dim: int, kappa: float) -> tuple[mp.mpf, ...]:
    nu = mp.mpf(dim) / 2 - 1
    k = mp.mpf(kappa)
    log_c0 = mp.loggamma(mp.mpf(dim) / 2) - mp.log(2) - mp.mpf(dim) / 2 * mp.log(mp.pi)
    if kappa == 0:
        log_iv = mp.mpf(0) if nu == 0 else mp.ninf
        return log_iv, mp.mpf(0), 1 / mp.mpf(dim), log_c0, -log_c0
    i0, i1 = besseli(nu, k), besseli(nu + 1, k)
    ratio = i1 / i0
    log_iv = mp.log(i0)
    d_ratio = 1 - ratio**2 - (dim - 1) * ratio / k
    log_c = nu * mp.log(k) - mp.mpf(dim) / 2 * mp.log(2 * mp.pi) - log_iv
    return log_iv, ratio, d_ratio, log_c, -log_c - k * ratio


def order_row(order: float, x: float) -> tuple[mp.mpf, ...]:
    i0, i1 = besseli(mp.mpf(order), mp.mpf(x)), besseli(mp.mpf(order) + 1, mp.mpf(x))
    return mp.log(i0), i1 / i0


def evaluate(fn, *args) -> np.ndarray:
    with mp.workdps(50):
        low = fn(*args)
    with mp.workdps(70):
        high = fn(*args)
    for a, b in zip(low, high):
        if mp.isinf(b):
            assert a == b, (fn.__name__, args, a, b)
            continue
        assert abs(a - b) <= mp.mpf(10) ** -30 * max(1, abs(b)), (fn.__name__, args, a, b)
    return np.array([float(v) for v in high])


def main() -> None:
    rng = np.random.default_rng(SEED)
    grid = f32(np.logspace(-8, 6, 57))
    switch = f32([np.nextafter(np.float32(8), np.float32(0)), 8.0, np.nextafter(np.float32(8), np.float32(9))])
    dims, kappas, rows = [], [], []
    for dim in DIMS:
        random = f32(10.0 ** rng.uniform(-8, 6, size=8))
        for kappa in np.concatenate([[0.0], grid, switch, random]):
            dims.append(dim)
            kappas.append(kappa)
            rows.append(evaluate(dim_row, dim, float(kappa)))
        print(f"dim {dim} done", flush=True)
    rows = np.array(rows)

    fixed_orders = [0.0, 0.25, 0.5, 1.0, 1.5, 2.7, 5.0, 9.5, 13.3, 19.5, 19.9, 20.0, 20.5, 27.3, 63.0,
                    100.7, 255.0, 511.5, 1000.2, 2047.0, 3000.0]
    random_orders = [rng.uniform(0, 60, size=16), 10.0 ** rng.uniform(np.log10(60), np.log10(5000), size=8)]
    orders_all = f32(np.concatenate([fixed_orders, *random_orders]))
    orders, xs, order_rows = [], [], []
    for order in orders_all:
        points = f32(np.concatenate([10.0 ** rng.uniform(-8, 6, size=10), rng.uniform(0.5, 40, size=4)]))
        for x in points:
            orders.append(order)
            xs.append(x)
            order_rows.append(evaluate(order_row, float(order), float(x)))
    order_rows = np.array(order_rows)
    print(f"{len(orders)} order rows done", flush=True)

    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT,
        dim_dim=np.array(dims, dtype=np.int64),
        dim_kappa=np.array(kappas),
        dim_log_iv=rows[:, 0],
        dim_ratio=rows[:, 1],
        dim_d_ratio=rows[:, 2],
        dim_log_c=rows[:, 3],
        dim_entropy=rows[:, 4],
        order_order=np.array(orders),
        order_x=np.array(xs),
        order_log_iv=order_rows[:, 0],
        order_ratio=order_rows[:, 1],
    )
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
