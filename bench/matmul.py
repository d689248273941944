"""Measure this machine's fp32 matrix-multiply rate (GFLOP/s) with torch.mm."""
import argparse
import statistics
import time

import torch


def matmul_gflops(n=2048, repeats=10, warmup=2, dtype=torch.float32):
    """Median GFLOP/s of an n x n by n x n torch.mm (2*n^3 FLOPs), default threads."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    out = torch.empty(n, n, dtype=dtype)
    for _ in range(warmup):
        torch.mm(a, b, out=out)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        rates.append(2 * n**3 / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    rate = matmul_gflops(args.n, args.repeats)
    print(f"{args.n}x{args.n} fp32 mm, {torch.get_num_threads()} threads: {rate:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
