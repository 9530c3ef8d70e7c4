"""Forward + backward time of every loss: jitted probdml next to pytorch-metric-learning (CPU torch) on the
same inputs, in the same process.

    python benchmarks/losses.py [--batch 128] [--classes 100] [--dim 512] [--per-class 4] [--repeats 20]
                                [--threads N] [--rows NAME ...]

Each row: the minimum wall time over interleaved repeats of one loss value and its gradient w.r.t. the
embeddings (and the proxies), probdml's call being a compiled `jax.jit(jax.value_and_grad(...))`
(compilation excluded, timed after a warm-up), and the ratio pml / probdml (> 1: probdml faster). Before
timing, each row checks that both libraries give the same loss value (relative 1e-4; rows with a sampling
miner are marked 'sampled' and not compared); a row whose values differ prints MISMATCH and is not timed.
Miners run inside the timed call on both sides. Rows without a pytorch-metric-learning counterpart show
probdml alone. Both libraries use their default CPU threading, or N CPUs with --threads N: the process is
pinned to N CPUs (os.sched_setaffinity, before jax starts; XLA sizes its CPU thread pools from the CPUs it
may run on, and with N = 1 also runs Eigen single-threaded) and torch.set_num_threads(N); --threads 1
gives the steadiest ratios on a busy machine. The settings are printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _threads_from_argv() -> int | None:
    """--threads must act before jax is imported (XLA reads its flags once)."""
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return None


_THREADS = _threads_from_argv()
if _THREADS is not None:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:_THREADS])
    if _THREADS == 1:
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from probdml import losses, mining, similarity  # noqa: E402


def _min_ms(fns, repeats: int) -> list[float]:
    """Minimum wall time (ms) of each function over `repeats` interleaved rounds (after two warm-up calls):
    interleaving exposes all of them to the same machine load, the minimum discards interference."""
    for fn in fns:
        fn()
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return [1e3 * b for b in best]


def _jax_timer(loss_fn, emb, *params):
    grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=tuple(range(1 + len(params)))))

    def run():
        jax.block_until_ready(grad_fn(emb, *params))

    run.value = lambda: float(grad_fn(emb, *params)[0])
    return run


def _torch_step(loss, inputs, forward):
    """A timer of forward().backward() for the PML module `loss` (the gradients of the tensors `inputs` and of
    its parameters cleared before each run); its .value() is the loss value."""

    def run():
        for t in inputs:
            t.grad = None
        loss.zero_grad()
        forward().backward()

    run.value = lambda: float(forward().item())
    return run


def _torch_timer(torch, loss, emb, labels, miner=None, params=()):
    for name, value in params:
        getattr(loss, name).data = torch.tensor(np.asarray(value))
    e = torch.tensor(np.asarray(emb), requires_grad=True)
    y = torch.tensor(np.asarray(labels))
    return _torch_step(loss, [e], lambda: loss(e, y, miner(e, y)) if miner is not None else loss(e, y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--per-class", type=int, default=4, help="samples per class in the batch")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="threads for both libraries (default: theirs)")
    parser.add_argument("--rows", nargs="*", default=None, help="only the rows whose name contains one of these")
    args = parser.parse_args()
    b, c, d = args.batch, args.classes, args.dim

    rng = np.random.default_rng(0)
    emb_np = rng.normal(size=(b, d)).astype(np.float32)
    chosen = rng.choice(c, size=b // args.per_class, replace=False)
    labels_np = np.repeat(chosen, args.per_class)[:b]
    labels_np = np.concatenate([labels_np, rng.integers(0, c, size=b - labels_np.size)])
    proxies_np = (rng.normal(size=(c, d)) * np.sqrt(2.0 / c)).astype(np.float32)
    w_np = rng.normal(size=(d, c)).astype(np.float32)
    k = 10
    centers_np = rng.uniform(-1, 1, size=(d, c * k)).astype(np.float32) / np.sqrt(c * k)
    unc_np = rng.normal(size=(b, d)).astype(np.float32)

    emb, labels = jnp.asarray(emb_np), jnp.asarray(labels_np)
    # probdml keeps class weights and centres as rows ([C, D]); pml as columns ([D, C]): same values.
    proxies, w, centers, unc = (jnp.asarray(x) for x in (proxies_np, w_np.T, centers_np.T, unc_np))
    key = jax.random.key(0)

    def chord(e):
        return similarity.chord_distance(similarity.cosine(e, e))

    def semihard_triplet(e):
        dist = chord(e)
        return losses.triplet_margin(dist, labels, margin=0.1, triplets=mining.semihard_mask(dist, labels, margin=0.1))

    def margin_dw(e):
        dist = chord(e)
        t = mining.distance_weighted_triplets(key, dist, labels, dim=d)
        return losses.margin_loss(dist, labels, beta=1.2, margin=0.2, triplets=t)

    def ms_mined(e):
        s = similarity.cosine(e, e)
        pos, neg = mining.multi_similarity_pairs(s, labels, epsilon=0.1)
        return losses.multi_similarity(s, labels, pos_mask=pos, neg_mask=neg)

    ism = similarity.get_similarity("introspective")
    rows = [
        ("proxy_anchor", _jax_timer(lambda e, p: losses.proxy_anchor(similarity.cosine(e, p), labels), emb, proxies),
         ("ProxyAnchorLoss", dict(num_classes=c, embedding_size=d), None, [("proxies", proxies_np)])),
        ("proxy_nca", _jax_timer(lambda e, p: losses.proxy_nca(similarity.cosine(e, p), labels, scale=64.0), emb,
                                 proxies),
         ("ProxyNCALoss", dict(num_classes=c, embedding_size=d, softmax_scale=32), None, [("proxies", proxies_np)])),
        ("normalized_softmax", _jax_timer(lambda e, w_: losses.normalized_softmax(similarity.cosine(e, w_), labels),
                                          emb, w),
         ("NormalizedSoftmaxLoss", dict(num_classes=c, embedding_size=d), None, [("W", w_np)])),
        ("arcface", _jax_timer(lambda e, w_: losses.arcface(similarity.cosine(e, w_), labels), emb, w),
         ("ArcFaceLoss", dict(num_classes=c, embedding_size=d), None, [("W", w_np)])),
        ("soft_triple (K=10)", _jax_timer(lambda e, f: losses.soft_triple(similarity.cosine(e, f), labels,
                                                                          centers_per_class=k), emb, centers),
         ("SoftTripleLoss", dict(num_classes=c, embedding_size=d, centers_per_class=k), None, [("fc", centers_np)])),
        ("contrastive", _jax_timer(lambda e: losses.contrastive(chord(e), labels, neg_margin=0.5), emb),
         ("ContrastiveLoss", dict(neg_margin=0.5), None, [])),
        ("triplet + semihard miner", _jax_timer(semihard_triplet, emb),
         ("TripletMarginLoss", dict(margin=0.1), ("TripletMarginMiner", dict(margin=0.1, type_of_triplets="semihard")),
          [])),
        ("margin + distance-weighted", _jax_timer(margin_dw, emb),
         ("MarginLoss", dict(margin=0.2, beta=1.2), ("DistanceWeightedMiner", {}), [])),
        ("multi_similarity + miner", _jax_timer(ms_mined, emb),
         ("MultiSimilarityLoss", dict(alpha=2, beta=50, base=0.5), ("MultiSimilarityMiner", dict(epsilon=0.1)), [])),
        ("npair", _jax_timer(lambda e: losses.npair(similarity.cosine(e, e), labels), emb),
         ("NPairsLoss", {}, None, [])),
        *_catalogue_rows(emb, labels, w, w_np, c, d),
        ("fast_ap", _jax_timer(lambda e: losses.fast_ap(chord(e) ** 2, labels), emb),
         ("FastAPLoss", dict(num_bins=10), None, [])),
        ("proxy_nca_pp", _jax_timer(lambda e, p: losses.proxy_nca_pp(similarity.cosine(e, p), labels), emb, proxies),
         None),
        ("proxy_anchor, introspective", _jax_timer(
            lambda e, p, u: losses.proxy_anchor(ism({"embedding": e, "uncertainty": u}, {"embedding": p}).similarity,
                                                labels), emb, proxies, unc), None),
        ("triplet + semihard, introspective", _jax_timer(
            lambda e, u: _ism_triplet(ism({"embedding": e, "uncertainty": u}, {"embedding": e, "uncertainty": u}),
                                      labels), emb, unc), None),
    ]
    rows += _vmf_rows(emb, proxies, labels, key)

    try:
        import torch
        from pytorch_metric_learning import losses as pml_losses
        from pytorch_metric_learning import miners as pml_miners
    except ImportError:
        torch = None
    if torch is not None and args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"batch {b}, {c} classes ({len(np.unique(labels_np))} in the batch), dim {d}; min of {args.repeats} "
          "interleaved runs")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, cpus usable {len(os.sched_getaffinity(0))} of "
          f"{os.cpu_count()}, load average "
          f"{os.getloadavg()[0]:.1f}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", end="")
    print(f"; torch {torch.__version__}, {torch.get_num_threads()} threads" if torch else "; torch not installed")
    print(f"{'loss':40s} {'probdml ms':>11s} {'pml ms':>9s} {'pml/probdml':>12s}")
    if args.rows:
        rows = [row for row in rows if any(part in row[0] for part in args.rows)]
    for name, ours, ref in rows:
        if ref is None or torch is None:
            (ours_ms,) = _min_ms([ours], args.repeats)
            print(f"{name:40s} {ours_ms:11.2f} {'-':>9s} {'-':>12s}")
            continue
        note, miner_spec = "", None
        if callable(ref):  # a row with its own PyTorch call (other inputs than (embeddings, labels))
            theirs = ref(torch, pml_losses)
            note = getattr(theirs, "note", "")
        else:
            loss_name, loss_kw, miner_spec, params, *unit = ref
            loss = getattr(pml_losses, loss_name)(**loss_kw)
            miner = getattr(pml_miners, miner_spec[0])(**miner_spec[1]) if miner_spec else None
            theirs = _torch_timer(torch, loss, unit[0] if unit else emb_np, labels_np, miner, params)
        if miner_spec is not None and miner_spec[0] in SAMPLING_MINERS:
            note = "  sampled"
        else:
            ours_value, ref_value = ours.value(), theirs.value()
            if not abs(ours_value - ref_value) <= 1e-4 * max(abs(ref_value), 1e-6):
                print(f"{name:40s} MISMATCH: probdml {ours_value:.6g}, pml {ref_value:.6g} (not timed)")
                continue
        ours_ms, ref_ms = _min_ms([ours, theirs], args.repeats)
        print(f"{name:40s} {ours_ms:11.2f} {ref_ms:9.2f} {ref_ms / ours_ms:12.2f}{note}")


SAMPLING_MINERS = ("DistanceWeightedMiner",)


def _catalogue_rows(emb, labels, w, w_np, c, d):
    """The catalogue's losses with a pytorch-metric-learning counterpart, at its defaults, on its default
    similarity (the cosine; the chord distance of normalised embeddings for distance losses)."""

    def cos(e):
        return similarity.cosine(e, e)

    def chord(e):
        return similarity.chord_distance(cos(e))

    def batch(fn, pml_name, pml_kw=None, reads=cos):
        return (fn.__name__, _jax_timer(lambda e: fn(reads(e), labels), emb), (pml_name, pml_kw or {}, None, []))

    def by_w(fn, pml_name, cols=c, weights=None, extra=None):
        weights_np = w_np if weights is None else weights
        ours = _jax_timer(lambda e, w_: fn(similarity.cosine(e, w_), labels), emb, jnp.asarray(weights_np.T))
        return (fn.__name__, ours, (pml_name, dict(num_classes=c, embedding_size=d, **(extra or {})), None,
                                    [("W", weights_np)]))

    k = 3
    sub_w = np.random.default_rng(1).normal(size=(d, c * k)).astype(np.float32)
    # PML's AngularLoss dots the normalised a + p with the raw negatives: equal on unit embeddings
    unit_np = np.asarray(emb) / np.linalg.norm(np.asarray(emb), axis=1, keepdims=True)
    unit = jnp.asarray(unit_np)
    return [
        batch(losses.circle, "CircleLoss"),
        batch(losses.sup_con, "SupConLoss"),
        batch(losses.nt_xent, "NTXentLoss"),
        batch(losses.lifted_structure, "LiftedStructureLoss", reads=chord),
        batch(losses.generalized_lifted_structure, "GeneralizedLiftedStructureLoss", reads=chord),
        batch(losses.tuplet_margin, "TupletMarginLoss"),
        batch(losses.intra_pair_variance, "IntraPairVarianceLoss"),
        ("nca", _jax_timer(lambda e: losses.nca(cos(e), labels, scale=2.0), emb), ("NCALoss", {}, None, [])),
        ("angular (unit embeddings)", _jax_timer(lambda e: losses.angular(cos(e), labels), unit),
         ("AngularLoss", {}, None, [], unit_np)),
        batch(losses.instance, "InstanceLoss"),
        batch(losses.pnp, "PNPLoss"),
        batch(losses.histogram, "HistogramLoss"),
        batch(losses.threshold_consistent_margin, "ThresholdConsistentMarginLoss"),
        ("ranked_list", _jax_timer(lambda e: losses.ranked_list(chord(e), labels, margin=0.4, tn=10.0), emb),
         ("RankedListLoss", dict(margin=0.4, Tn=10.0), None, [])),
        ("signal_to_noise_ratio_contrastive", _jax_timer(
            lambda e: losses.signal_to_noise_ratio_contrastive(losses.snr_distance(e), labels), emb),
         ("SignalToNoiseRatioContrastiveLoss", {}, None, [])),
        by_w(losses.cos_face, "CosFaceLoss"),
        by_w(losses.sub_center_arc_face, "SubCenterArcFaceLoss", weights=sub_w, extra=dict(sub_centers=k)),
        ("large_margin_softmax", _jax_timer(
            lambda e, w_: losses.large_margin_softmax(
                similarity.cosine(e, w_), labels,
                magnitudes=jnp.linalg.norm(e, axis=1)[:, None] * jnp.linalg.norm(w_, axis=1)[None]),
            emb, w),
         ("LargeMarginSoftmaxLoss", dict(num_classes=c, embedding_size=d), None, [("W", w_np)])),
        ("sphere_face", _jax_timer(
            lambda e, w_: losses.sphere_face(similarity.cosine(e, w_), labels, embedding_norms=jnp.linalg.norm(e, axis=1)),
            emb, w),
         ("SphereFaceLoss", dict(num_classes=c, embedding_size=d), None, [("W", w_np)])),
    ] + _special_rows(emb, labels, w_np, c, d)


def _special_rows(emb, labels, w_np, c, d):
    """Catalogue losses whose PyTorch call takes other inputs than (embeddings, labels): each row's
    reference is a function (torch, pml_losses) -> timer."""
    emb_np, labels_np = np.asarray(emb), np.asarray(labels)
    b = len(emb_np)
    rng = np.random.default_rng(2)

    def cos(e):
        return similarity.cosine(e, e)

    # P2SGrad: PML renormalises its weights in place; unit columns make both sides start equal
    w_unit = w_np / np.linalg.norm(w_np, axis=0, keepdims=True)
    p2s = ("p2s_grad", _jax_timer(lambda e, w_: losses.p2s_grad(similarity.cosine(e, w_), labels), emb,
                                  jnp.asarray(w_unit.T)),
           ("P2SGradLoss", dict(descriptors_dim=d, num_classes=c), None, [("weight", w_unit)]))
    # SmoothAP: PML needs contiguous equal-size classes, as many classes as samples per class (8 x 8)
    g = 8
    ap_emb, ap_labels = emb_np[: g * g], np.repeat(np.arange(g), g)

    def smooth_ap_torch(torch, pml_losses):
        run = _torch_timer(torch, pml_losses.SmoothAPLoss(temperature=0.01), ap_emb, ap_labels)
        run.note = "  batch 64 = 8 x 8"
        return run

    smooth = ("smooth_ap (batch 8 x 8)", _jax_timer(lambda e: losses.smooth_ap(cos(e), jnp.asarray(ap_labels)),
                                                    jnp.asarray(ap_emb)), smooth_ap_torch)
    # VICReg: two views (here the batch and a perturbed copy)
    ref_np = (emb_np + 0.5 * rng.normal(size=emb_np.shape)).astype(np.float32)

    def vic_reg_torch(torch, pml_losses):
        loss = pml_losses.VICRegLoss()
        e, r = (torch.tensor(x, requires_grad=True) for x in (emb_np, ref_np))
        return _torch_step(loss, [e, r], lambda: loss(e, ref_emb=r))

    vic = ("vic_reg", _jax_timer(lambda e, r: losses.vic_reg(e, r), emb, jnp.asarray(ref_np)), vic_reg_torch)
    # Manifold: K = 16 proxies (meta-classes) drawn per sample
    k = 16
    proxies_np = rng.normal(size=(k, d)).astype(np.float32)
    meta = rng.integers(0, k, size=b)

    def manifold_ours(e, p):
        both = jnp.concatenate([e, p])
        return losses.manifold(cos(both), jnp.asarray(meta), num_proxies=k, lambda_c=0.5, margin=0.01)

    def manifold_torch(torch, pml_losses):
        loss = pml_losses.ManifoldLoss(l=d, K=k, lambdaC=0.5, margin=0.01)
        loss.proxies.data = torch.tensor(proxies_np)
        e, m = torch.tensor(emb_np, requires_grad=True), torch.tensor(meta)
        return _torch_step(loss, [e], lambda: loss(e, indices_tuple=m))

    mani = ("manifold (K = 16)", _jax_timer(manifold_ours, emb, jnp.asarray(proxies_np)), manifold_torch)
    # DynamicSoftMargin: stateful; both sides start from an empty histogram and are compared on the first call
    # (PML then updates its histogram on every call, ours is timed with the first histogram held fixed)
    # (PML differentiates through its histogram, so it is detached before each of its calls)
    hist = jnp.zeros(10)

    def dsm_torch(torch, pml_losses):
        loss = pml_losses.DynamicSoftMarginLoss(min_val=-2.0, num_bins=10, momentum=0.1)
        e, y = torch.tensor(emb_np, requires_grad=True), torch.tensor(labels_np)

        def forward():
            loss.hist_ = loss.hist_.detach()
            return loss(e, y)

        return _torch_step(loss, [e], forward)

    dsm = ("dynamic_soft_margin", _jax_timer(
        lambda e: losses.dynamic_soft_margin(similarity.chord_distance(cos(e)), labels, hist, momentum=0.1)[0], emb),
        dsm_torch)
    return [p2s, smooth, vic, mani, dsm]


def _ism_triplet(pair: similarity.Pairwise, labels):
    dist = pair.distance
    return losses.triplet_margin(dist, labels, margin=0.1, triplets=mining.semihard_mask(dist, labels, margin=0.1))


def _vmf_rows(emb, proxies, labels, key):
    """probdml-only rows: ProxyNCA++ over the vMF kernels (image norms as concentrations, proxies with
    concentration 10; nivMF proxies with per-axis concentrations)."""
    c, d = proxies.shape
    kappa = jnp.full((c,), 10.0)
    kappas = jnp.full((c, d), 10.0)
    emb = emb * 10.0
    rows = []
    for name, options, concentration in [
        ("el", {}, {"kappa": kappa}),
        ("kl", {}, {"kappa": kappa}),
        ("el_nivmf", {}, {"kappas": kappas}),
        ("el_nivmf", {"estimator": "monte_carlo", "form": "reference_linear", "num_samples": 5}, {"kappas": kappas}),
    ]:
        fn = similarity.get_similarity(name, **options)
        label = f"proxy_nca_pp, {name}" + (" (monte carlo, 5)" if options else "")
        rows.append((label, _jax_timer(
            lambda e, p, fn=fn, conc=concentration: losses.proxy_nca_pp(
                fn({"embedding": e}, {"embedding": p, **conc}, key=key).similarity, labels, temperature=1.0),
            emb, proxies), None))
    return rows


if __name__ == "__main__":
    main()
