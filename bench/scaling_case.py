"""The CPU scaling case: RADI-P forward + backward at B = 32, T = 10, K = 2500 on the CPU path.

Prints the loss, the wall time and the process's peak resident memory before and after the call
(``ru_maxrss``), i.e. what the blockwise path adds on top of its inputs.

    python bench/scaling_case.py [--B 32 --T 10 --K 2500]
"""
import argparse
import resource
import time

import torch

import radi_fast


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--T", type=int, default=10)
    ap.add_argument("--K", type=int, default=2500)
    args = ap.parse_args()
    torch.manual_seed(0)
    mc = torch.randn(args.B, 1, args.K) * 2 + 0.5 * torch.randn(args.B, args.T, args.K)
    student = torch.randn(args.B, args.K, requires_grad=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    loss = radi_fast.radi_pairwise_loss(student, mc, backend="torch")
    loss.backward()
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"B={args.B} T={args.T} K={args.K}: loss {loss.item():.5f}, {elapsed:.2f} s, "
          f"peak RSS {after / 1024:.0f} MB (inputs and imports {before / 1024:.0f} MB, "
          f"added by the loss {(after - before) / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
