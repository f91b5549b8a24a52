#!/usr/bin/env python3
"""Turns the logs of gpu-bin/run.sh (scripts/gpu-run.sh) into one markdown page, ready to be checked and copied
into docs/BENCHMARKS.md: the GPU, the pass/fail summary, every benchmark's output verbatim,
criterion's estimates and throughputs as a table, and the fixed-length evaluation's report.
Nothing is computed here beyond picking lines out, so nothing can be rounded up.

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
