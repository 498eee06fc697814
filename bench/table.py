"""Formats bench/run.sh's results.jsonl as the README's performance table.

Reads one JSON object per line (epk-bench output plus "workload" and "kind",
or bench/functorch_kernel.py output) and prints a Markdown table and the
checks of issue 6's "done when", each with the figures it compares.
Stdlib only.
"""
import json
import sys


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    out = []
    out.append("| workload | precision | steps timed | seconds | s/step | products GFLOP/s per thread "
               "| DGEMM GFLOP/s per thread | % of DGEMM | naive / structured | cost / multiply-adds "
               "| peak RSS S / 4S steps | functorch / epk |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    checks = []
    for w in ("digits", "synthetic", "cnn"):
        speed = [r for r in rows if r.get("workload") == w and r.get("kind") == "speed"]
        mem = [r for r in rows if r.get("workload") == w and r.get("kind") == "memory"]
        fx = [r for r in rows if r.get("workload") == w and r.get("kind") == "functorch"]
        rec = [r for r in rows if r.get("workload") == w and r.get("kind") == "memory-recorded"]
        if len(rec) == 2:
            a, b = sorted(rec, key=lambda r: r["steps"])
            grow = (b["peak_rss_kib"] - a["peak_rss_kib"]) / a["peak_rss_kib"]
            checks.append(("%s: peak memory the same for S and 4S, recorded path (params.npy %d and %d rows)" % (
                w, a["steps"] + 1, b["steps"] + 1), abs(grow) <= 0.05,
                "%.1f vs %.1f MiB (%+.1f%%)" % (a["peak_rss_kib"] / 1024, b["peak_rss_kib"] / 1024, 100 * grow)))
        mem_s = "—"
        if len(mem) == 2:
            a, b = sorted(mem, key=lambda r: r["steps"])
            mem_s = "%.1f / %.1f MiB (S=%d, %d)" % (a["peak_rss_kib"] / 1024, b["peak_rss_kib"] / 1024, a["steps"], b["steps"])
            grow = (b["peak_rss_kib"] - a["peak_rss_kib"]) / a["peak_rss_kib"]
            checks.append(("%s: peak memory the same for S and 4S" % w, abs(grow) <= 0.05,
                           "%.1f vs %.1f MiB (%+.1f%%)" % (a["peak_rss_kib"] / 1024, b["peak_rss_kib"] / 1024, 100 * grow)))
        for r in speed:
            s = r["structured"]
            prec = r["precision"]
            g = s["gemm_gflops_per_thread"]
            dg = r.get("dgemm", {}).get("gflops_per_thread")
            frac = r.get("fraction_of_dgemm")
            naive = r.get("naive")
            madd = r.get("madd")
            ftxt = "—"
            if fx and prec == "double" and naive:
                f = fx[0]
                epk_per_step = naive["structured_seconds_same_steps"] / naive["steps"]
                ftxt = "%.0f× (%.2f s/step, %s)" % (f["seconds_per_step"] / epk_per_step, f["seconds_per_step"],
                                                    f.get("torch", "torch"))
            out.append("| %s | %s | %d | %.2f | %.3g | %.3g | %s | %s | %s | %s | %s | %s |" % (
                w, prec, r["steps"], s["seconds"], s["seconds_per_step"], g,
                "%.1f" % dg if dg else "—",
                "%.0f%%" % (100 * frac) if frac else "—",
                "%.0f× (%d steps: %.1f s vs %.2f s)" % (naive["ratio"], naive["steps"], naive["seconds"],
                                                        naive["structured_seconds_same_steps"]) if naive else "—",
                "%.2f (%.0f ns per multiply-add)" % (madd["cost_over_madds"], madd["ns"]) if madd else "—",
                mem_s if prec == "double" else "—",
                ftxt))
            if prec == "double" and naive:
                checks.append(("%s: structured ≥ 20× faster than naive" % w, naive["ratio"] >= 20,
                               "%.1f×" % naive["ratio"]))
            if prec == "double" and frac:
                checks.append(("%s: products ≥ 40%% of DGEMM" % w, frac >= 0.4,
                               "%.1f of %.1f GFLOP/s per thread = %.0f%%" % (g, dg, 100 * frac)))
            if madd:
                checks.append(("%s: %s ≤ 3× its multiply-adds" % (w, prec), madd["cost_over_madds"] <= 3,
                               "%.2f× (%.3g multiply-adds at %.0f ns, %.1f s on %d threads)" % (
                                   madd["cost_over_madds"], madd["structured_madds"], madd["ns"], s["seconds"],
                                   r["threads"])))
            if not s["ok"]:
                checks.append(("%s %s: residual within budget" % (w, prec), False, "%.3g" % s["residual_max_abs"]))
    print("\n".join(out))
    print()
    smooth_table(rows, checks)
    for r in (r for r in rows if r.get("kind") == "certify"):
        ratio = r["certify_seconds"] / r["verify_seconds"]
        print("\n%s: epk certify --bits 256 %.1f s (%s), verify --precision mpfr:256 %.1f s: %.2f×" % (
            r["workload"], r["certify_seconds"], "certified" if r["certified"] else "NOT certified: " + r["reason"],
            r["verify_seconds"], ratio))
        checks.append(("%s: certified at 256 bits" % r["workload"], bool(r["certified"]), r["reason"] or "yes"))
        checks.append(("%s: certify under 5 minutes on 2 cores" % r["workload"], r["certify_seconds"] <= 300,
                       "%.1f s" % r["certify_seconds"]))
        checks.append(("%s: certify within 20× of verify --precision mpfr:256" % r["workload"], ratio <= 20,
                       "%.2f×" % ratio))
    for name, ok, detail in checks:
        print("%s %s: %s" % ("PASS" if ok else "FAIL", name, detail))
    return 0 if all(ok for _, ok, _ in checks) else 1


def smooth_table(rows, checks):
    """Issue 17's table: the digits MLP by activation and optimizer, epk against its own
    full-Jacobian path and against bench/structured_peer.py, with the issue's checks."""
    names = []
    for r in rows:
        w = r.get("workload", "")
        if w.startswith("mlp-") and w not in names:
            names.append(w)
    if not names:
        return
    def one(w, kind):
        got = [r for r in rows if r.get("workload") == w and r.get("kind") == kind]
        return got[0] if got else None
    out = ["| network, optimizer | epk kernel s | epk reconstruction s | epk residual | naive / structured "
           "| peer s (8 nodes) | peer residual | peer / epk kernel | peer BLAS |",
           "|---|---|---|---|---|---|---|---|---|"]
    recon = {}
    for w in names:
        _, act, opt = w.split("-", 2)
        k, rc, peer, mp = one(w, "kernel"), one(w, "reconstruction"), one(w, "peer"), one(w, "mpfr")
        if not k or not rc:
            continue
        ks, rs = k["structured"], rc["structured"]
        recon[(act, opt)] = rs["seconds"]
        naive = k.get("naive")
        ratio = peer["seconds"] / ks["seconds"] if peer else None
        out.append("| %s, %s | %.2f | %.2f | %.2g (%.0f u) | %s | %s | %s | %s | %s |" % (
            act, opt, ks["seconds"], rs["seconds"], ks["residual_max_abs"], ks["residual_over_u"],
            "%.0f× (%d steps: %.1f s vs %.2f s)" % (naive["ratio"], naive["steps"], naive["seconds"],
                                                    naive["structured_seconds_same_steps"]) if naive else "—",
            "%.2f" % peer["seconds"] if peer else "—",
            "%.2g" % peer["reconstruction_max_abs_error"] if peer else "—",
            "%.2f×" % ratio if ratio else "—",
            peer.get("blas", "?").split(" ")[0] if peer else "—"))
        for f in (k, rc):
            if not f["structured"]["ok"]:
                checks.append(("%s: residual within budget" % w, False, "%.3g" % f["structured"]["residual_max_abs"]))
        if ratio is not None and opt == "sgd":
            need = 10 if act == "relu" else 3
            checks.append(("%s: epk ≥ %d× faster than the structured PyTorch peer (%s)" % (
                w, need, peer.get("blas", "?").split(" ")[0]), ratio >= need,
                "%.2f× (%.2f s vs %.2f s)" % (ratio, peer["seconds"], ks["seconds"])))
        if mp and mp.get("madd"):
            m = mp["madd"]
            checks.append(("%s: mpfr:256 ≤ 2× its multiply-adds" % w, m["cost_over_madds"] <= 2,
                           "%.2f× (%.3g multiply-adds at %.0f ns)" % (m["cost_over_madds"], m["structured_madds"], m["ns"])))
    for (act, opt), sec in sorted(recon.items()):
        if opt != "sgd" and (act, "sgd") in recon:
            base = recon[(act, "sgd")]
            checks.append(("mlp-%s-%s: reconstruction ≤ 2× plain SGD's" % (act, opt), sec <= 2 * base,
                           "%.2f s vs %.2f s = %.2f×" % (sec, base, sec / base)))
    print("\n".join(out))
    print()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
