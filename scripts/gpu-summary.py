#!/usr/bin/env python3
"""Turns the logs of gpu-bin/run.sh (scripts/gpu-run.sh) into one markdown page, ready to be checked and copied
into docs/BENCHMARKS.md: the GPU, the pass/fail summary, every benchmark's output verbatim,
criterion's estimates and throughputs as a table, the fixed-length evaluation's report, and
hardware.md's targets beside the figures they concern. Nothing is computed here beyond
picking lines out and, where a target is a ratio, one quotient (4 decimals), so nothing can be
rounded up.

    python3 gpu-summary.py LOGS_DIR > summary.md      (run.sh does this at its end)
"""
import pathlib
import re
import sys


def read(path):
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def fenced(title, text, out):
    out.append(f"### {title}\n")
    out.append("```")
    out.append(text.rstrip())
    out.append("```\n")


def criterion_table(text):
    """(benchmark, time line, throughput line) for every benchmark in criterion's output."""
    rows, name, time = [], None, None
    for line in text.splitlines():
        s = line.strip()
        # criterion prints a name of up to 23 characters on the same line as its time.
        m = re.match(r"^((?:cpu|cuda|cuda-emu)/\S+)(?:\s+time:\s*(.*))?$", s)
        if m:
            name, time = m.group(1), m.group(2)
        elif s.startswith("time:") and name and time is None:
            time = s[len("time:"):].strip()
        elif s.startswith("thrpt:") and name and time:
            rows.append((name, time, s[len("thrpt:"):].strip()))
            name = None
    return rows


KINDS = {"batch-invariant": "invariant", "fastest per pass": "fast"}


def by_kind(text):
    """[(kernel kind, its lines)] of a bench run with --kernels both, invariant first (a run of
    one kind: "invariant" only)."""
    out, kind = {}, "invariant"
    for line in text.splitlines():
        m = re.match(r"kernels: (batch-invariant|fastest per pass)", line)
        if m:
            kind = KINDS[m.group(1)]
            continue
        out.setdefault(kind, []).append(line)
    return sorted(out.items(), key=lambda kv: kv[0] != "invariant")


def targets(logs):
    """hardware.md's targets beside what this run measured: every figure as the bench printed it,
    the verdict from those figures (a quotient where the target is one). Rows only for what ran."""
    rows = []
    dec = read(logs / "bench-decode.log")
    for kind, lines in by_kind(dec or ""):
        step = {}
        for l in lines:
            m = re.match(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+\S+\s+\S+\s*$", l)
            if m:
                step[int(m.group(1))] = (m.group(2), m.group(3))
        if 1 in step:
            ms, tok = step[1]
            rows.append((f"decode, batch 1 ({kind})", "≥ 195 tok/s", f"{tok} tok/s ({ms} ms/step)",
                         "met" if float(tok) >= 195 else "not met"))
        if 1 in step and 16 in step and float(step[1][0]) > 0:
            a, b = float(step[16][0]), float(step[1][0])
            rows.append((f"16 branches on a shared prefix / batch 1, ms per step ({kind})", "≤ 1.1",
                         f"{step[16][0]} / {step[1][0]} = {a / b:.4f}",
                         "met" if a / b <= 1.1 else "not met"))
    pre = read(logs / "bench-prefill.log")
    for kind, lines in by_kind(pre or ""):
        for l in lines:
            m = re.search(r"prefill of (\d+) tokens .*?([\d.]+) TFLOP/s useful", l)
            if m:
                rows.append((f"prefill {m.group(1)} tokens ({kind})", "≥ 550 TFLOP/s", f"{m.group(2)} TFLOP/s",
                             "met" if float(m.group(2)) >= 550 else "not met"))
    att = read(logs / "bench-attention.log")
    for kind, lines in by_kind(att or ""):
        for l in lines:
            # case, shape, ms, TFLOP/s, GB/s, roofline: columns two or more spaces apart.
            c = re.split(r"\s{2,}", l.strip())
            if len(c) >= 5 and c[0] == "diagonal-mask" and re.fullmatch(r"[\d.]+", c[3]):
                # 60% of cuDNN's 549-661 TFLOP/s: 329.4 to 396.6.
                v = float(c[3])
                rows.append((f"thought-diagonal mask, {c[1]} ({kind})", "≥ 329.4-396.6 TFLOP/s",
                             f"{c[3]} TFLOP/s ({c[2]} ms)", "met" if v >= 396.6 else
                             "met against 549 only" if v >= 329.4 else "not met"))
    csv = read(logs / "eval-mistral" / "summary.csv")
    limit = {"baseline": 2.2, "quiet-star": 16.0, "rebase": 0.6, "combined": 4.0}
    if csv:
        head, *body = [l.split(",") for l in csv.splitlines() if l]
        col = {h: i for i, h in enumerate(head)}
        for r in body:
            m = r[col["method"]]
            if m in limit and "mean_seconds" in col:
                sec = r[col["mean_seconds"]]
                rows.append((f"{m}, budget {r[col['budget']]}, s per question (mean of {r[col['n']]}; "
                             "problems ran in flight together)", f"≤ {limit[m]} s", f"{sec} s",
                             "met" if float(sec) <= limit[m] else "not met"))
    return rows


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: gpu-summary.py LOGS_DIR")
    logs = pathlib.Path(sys.argv[1])
    if not logs.is_dir():
        sys.exit(f"error: {logs} is not a folder of run.sh logs")
    out = ["# GPU run of gpu-bin/run.sh\n"]
    build = read(logs / "build.log")
    if build:
        fenced("Bundle", build, out)
    smi = read(logs / "nvidia-smi.log")
    if smi:
        gpu = [l for l in smi.splitlines() if re.search(r"H100|H200|NVIDIA", l)]
        fenced("GPU (nvidia-smi)", "\n".join(gpu[:6]) or smi[:2000], out)
    summary = read(logs / "summary.txt")
    if summary:
        fenced("Summary", summary, out)
    for name in ["roofline", "check-mistral", "bench-decode", "bench-prefill",
                 "bench-attention", "smoke-tiny", "smoke-parallel"]:
        text = read(logs / f"{name}.log")
        if text:
            fenced(name, text[-6000:], out)
    kernels = read(logs / "bench-kernels.log")
    if kernels:
        rows = criterion_table(kernels)
        if rows:
            out.append("### criterion kernel benches (criterion's point estimate (its regression slope, or the mean when it samples flat) in the middle of its 95% confidence interval)\n")
            out.append("| benchmark | time [low estimate high] | throughput [low estimate high] |")
            out.append("|---|---|---|")
            out += [f"| {n} | {t} | {p} |" for n, t, p in rows]
            out.append("")
        else:
            fenced("bench-kernels (no benchmark lines found)", kernels[-4000:], out)
    report = read(logs / "eval-mistral" / "report.md")
    if report:
        out.append("### eval --fixed-lengths on synthetic:mistral-7b (report.md)\n")
        out.append(report.rstrip() + "\n")
    elif read(logs / "eval-mistral.log"):
        fenced("eval-mistral (no report written)", read(logs / "eval-mistral.log")[-4000:], out)
    try:
        rows = targets(logs)
    except (ValueError, KeyError, IndexError) as e:
        # This page is a GPU run's only readable result: a log in an unexpected shape costs
        # the table, never the page.
        rows = [("(the targets table)", "-", f"not made: {type(e).__name__}: {e}", "-")]
    if rows:
        out.append("### Against hardware.md's targets (set for Mistral-7B's shape on one H100)\n")
        out.append("| what | target | measured | verdict |")
        out.append("|---|---|---|---|")
        out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
        out.append("")
    dual = read(logs / "dual-tests.log")
    if dual:
        lines = [l for l in dual.splitlines()
                 if re.search(r"FAILED|panicked|test result|^failures", l)]
        fenced("dual-backend tests, CUDA half (failures and the result line)",
               "\n".join(lines) or dual[-3000:], out)
    each = read(logs / "dual-each.log")
    if each:
        fenced("dual-backend tests, each in its own process (after a failure)", each[-4000:], out)
    for name in ["flops-audit", "profile", "sanitizer-memcheck", "sanitizer-racecheck"]:
        text = read(logs / f"{name}.log")
        if text:
            fenced(name, text[-4000:], out)
    print("\n".join(out))


if __name__ == "__main__":
    main()
