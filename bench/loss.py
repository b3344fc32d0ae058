"""Loss benchmark: forward+backward time and peak memory of ``barlow_twins_loss`` against the official formulation.

Cost model (multiply-adds). The official form builds C = bn(z1)^T bn(z2) / N, D x D: N D^2 forward and 2 N D^2
backward, plus several elementwise passes over D^2 elements (1 GiB per D x D copy in fp32 at D=16384). The Gram
form never builds C: ||C||_F^2 = <Z1 Z1^T, Z2 Z2^T> / N^2 with two N x N Gram matrices, 2 N^2 D forward and
2 N^2 D backward. Its share of the reference's arithmetic is 4N/3D, so it wins when N is small against D.

Peak memory two ways, side by side: the tensors' own accounting (``harness.peak_memory_increase``) and, on the CPU,
the growth of resident memory in a fresh process per implementation and case (``harness.peak_rss_increase``).
"""
import math

import torch

from bench import harness, reference

SIZES_N = (256, 1024, 2048)
SIZES_D = (2048, 8192, 16384)
CROSSOVER_D = 2048
CROSSOVER_N = (512, 1024, 2048, 3072, 4096)
FORMS = ("cross_correlation", "gram", "auto")
TARGET_N = 1024
CALIBRATION = (256, 2048)  # (N, D) whose reference time predicts the others


def suite_loss():
    """The suite's loss, imported late so the benchmark says clearly what is missing."""
    try:
        from pretrain.barlow_twins import barlow_twins_loss
    except ImportError as err:
        raise SystemExit(f"bench loss: cannot import pretrain.barlow_twins.barlow_twins_loss ({err})") from err
    return barlow_twins_loss


def implementations(forms=FORMS):
    ours = suite_loss()
    impls = {"reference": reference.cross_correlation_loss}
    for form in forms:
        impls[form] = lambda z1, z2, form=form: ours(z1, z2, lambd=reference.LAMBD, form=form)
    return impls


def reference_seconds_per_nd2(device):
    """Measured seconds of one reference forward+backward per N*D^2 at a small size, to predict larger ones.

    The reference's work (matmuls and D x D elementwise passes alike) grows as N*D^2, so this predicts a case
    within the noise of a shared machine, and lets the benchmark skip what would not finish in time.
    """
    n, d = CALIBRATION
    z1, z2 = (torch.randn(n, d, device=device, requires_grad=True) for _ in range(2))
    timing = harness.time_side_by_side(
        {"reference": lambda: reference.cross_correlation_loss(z1, z2).backward()}, device, reps=3, warmup=1)
    # The fastest run: the least disturbed by other processes on a shared machine.
    return min(timing["reference"].runs) / (n * d * d)


def case_inputs(n, d, device):
    """The two N x D embeddings of one case, the same in every process."""
    generator = torch.Generator(device="cpu").manual_seed(n * 100003 + d)
    z1 = torch.randn(n, d, generator=generator).to(device).requires_grad_()
    z2 = torch.randn(n, d, generator=generator).to(device).requires_grad_()
    return z1, z2


def fresh_process_pass(name, n, d):
    """For ``harness.peak_rss_increase``: one case's inputs on the CPU, and one forward+backward of ``name``."""
    z1, z2 = case_inputs(n, d, torch.device("cpu"))
    impl = implementations()[name]
    return lambda: impl(z1, z2).backward()


def measure_case(n, d, impls, device, reps, rss=True):
    """Time, peak memory, value and gradient agreement of every implementation at one (N, D).

    Peak memory two ways: the tensors' own accounting in this process (``peak_bytes``) and, with ``rss`` on the
    CPU, the growth of resident memory in a fresh process (``rss_bytes``, else None; on CUDA the loss's memory
    is not host memory).
    """
    z1, z2 = case_inputs(n, d, device)
    results = {name: {} for name in impls}

    def clear(_name=None):
        z1.grad = z2.grad = None

    def step(name):
        loss = impls[name](z1, z2)
        loss.backward()
        results[name]["loss"] = loss.item()

    reference_grad = None
    for name in impls:  # also the warm-up pass
        clear()
        results[name]["peak_bytes"] = harness.peak_memory_increase(lambda: step(name), device)
        grad = torch.cat([z1.grad.flatten(), z2.grad.flatten()])
        if reference_grad is None:
            reference_grad = grad
        ref_loss = results["reference"]["loss"]
        results[name]["loss_rel_diff"] = abs(results[name]["loss"] - ref_loss) / abs(ref_loss)
        results[name]["grad_rel_diff"] = ((grad - reference_grad).norm() / reference_grad.norm()).item()
    del reference_grad
    for name in impls:
        results[name]["rss_bytes"] = (harness.peak_rss_increase(f"{__name__}:fresh_process_pass", name, n, d)
                                      if rss and device.type == "cpu" else None)
    timings = harness.time_side_by_side(
        {name: (lambda name=name: step(name)) for name in impls}, device, reps=reps, warmup=0, before_each=clear,
    )
    for name, timing in timings.items():
        results[name]["seconds"] = timing.median
        results[name]["min_seconds"] = min(timing.runs)
        results[name]["spread"] = timing.spread
    return results


def crossover(device, reps, log):
    """N/D where the Gram form stops being faster than the cross-correlation form, from a sweep of N at fixed D."""
    impls = implementations(("cross_correlation", "gram"))
    rows, ratios = [], []
    for n in CROSSOVER_N:
        r = measure_case(n, CROSSOVER_D, impls, device, reps, rss=False)
        gram_over_cc = r["gram"]["seconds"] / r["cross_correlation"]["seconds"]
        ratios.append((n / CROSSOVER_D, gram_over_cc))
        rows.append([n, CROSSOVER_D, f"{n / CROSSOVER_D:.2f}", f"{r['cross_correlation']['seconds'] * 1e3:.0f}",
                     f"{r['gram']['seconds'] * 1e3:.0f}", f"{gram_over_cc:.2f}"])
        log.write(bench="loss-crossover", n=n, d=CROSSOVER_D, **{f"{k}_seconds": r[k]["seconds"] for k in impls})
    print(harness.format_table(["N", "D", "N/D", "cross_corr ms", "gram ms", "gram/cc"], rows))
    return interpolate_crossover(ratios)


def interpolate_crossover(ratios):
    """First N/D where time(gram)/time(cc) reaches 1, interpolated in log space; None if it never does."""
    for (x0, y0), (x1, y1) in zip(ratios, ratios[1:]):
        if y0 < 1 <= y1:
            t = math.log(y0) / (math.log(y0) - math.log(y1))
            return math.exp(math.log(x0) + t * (math.log(x1) - math.log(x0)))
    if ratios and ratios[0][1] >= 1:
        return ratios[0][0]
    return None


def run(device, reps, max_pass_seconds, log, sizes_n=SIZES_N, sizes_d=SIZES_D, crossover_sweep=True):
    print(f"\n== loss: forward+backward of barlow_twins_loss vs the official formulation, fp32 on {device} ==")
    print("tensor peak = most tensor memory allocated above the inputs during one forward+backward "
          + ("(CUDA allocator)" if device.type == "cuda" else "(torch.profiler CPU memory events)"))
    if device.type == "cpu":
        print("RSS peak = growth of the resident memory (VmHWM) over the first forward+backward in a fresh process, "
              "above the inputs: tensors, allocator slack and library workspaces")
    impls = implementations()
    per_nd2 = reference_seconds_per_nd2(device)
    print(f"cases whose reference forward+backward is predicted over {max_pass_seconds:.0f} s are skipped "
          f"(--max-pass-seconds; prediction: N*D^2 scaling of the N={CALIBRATION[0]} D={CALIBRATION[1]} time)")
    rows, at_target = [], {}
    for d in sizes_d:
        for n in sizes_n:
            estimate = per_nd2 * n * d * d
            if estimate > max_pass_seconds:
                print(f"  skipped N={n} D={d}: reference predicted at {estimate:.0f} s per pass")
                continue
            r = measure_case(n, d, impls, device, reps)
            ref = r["reference"]
            for name, m in r.items():
                rows.append([n, d, name, f"{m['seconds'] * 1e3:.0f}", f"{m['min_seconds'] * 1e3:.0f}",
                             f"{m['spread']:.2f}",
                             harness.ratio(m["seconds"], ref["seconds"]),
                             harness.mib(m["peak_bytes"]), harness.ratio(m["peak_bytes"], ref["peak_bytes"]),
                             harness.mib(m["rss_bytes"]), harness.ratio(m["rss_bytes"], ref["rss_bytes"]),
                             f"{m['loss_rel_diff']:.1e}", f"{m['grad_rel_diff']:.1e}"])
                log.write(bench="loss", n=n, d=d, impl=name, device=str(device), **m)
            if n == TARGET_N:
                at_target[d] = r
            print(f"  N={n} D={d} done", flush=True)
    print(harness.format_table(
        ["N", "D", "impl", "median ms", "min ms", "spread", "time/ref", "tensor MiB", "tensor/ref", "RSS MiB",
         "RSS/ref", "loss rel", "grad rel"], rows))
    summary = []
    if crossover_sweep:
        print(f"\ncrossover: Gram form vs cross-correlation form at D={CROSSOVER_D}")
        n_over_d = crossover(device, reps, log)
        where = f"N/D ~ {n_over_d:.2f}" if n_over_d else f"beyond N/D = {CROSSOVER_N[-1] / CROSSOVER_D:.1f}"
        print(f"the Gram form is faster below {where}")
        log.write(bench="loss-crossover-summary", n_over_d=n_over_d)
        summary.append(f"crossover {where}")
    for d, r in sorted(at_target.items()):
        ref = r["reference"]
        summary.append(
            f"N={TARGET_N} D={d}: auto time {harness.ratio(r['auto']['seconds'], ref['seconds'])}, "
            f"auto peak tensors {harness.ratio(r['auto']['peak_bytes'], ref['peak_bytes'])}, "
            f"auto peak RSS {harness.ratio(r['auto']['rss_bytes'], ref['rss_bytes'])}, "
            f"loss rel diff {r['auto']['loss_rel_diff']:.1e}")
    print("RATIOS loss (ours/reference; time and tensors in one process, RSS in a fresh process each): "
          + "; ".join(summary))
