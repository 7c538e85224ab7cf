#!/usr/bin/env python3
"""The per-step communication of `quantnet train --distributed mpi` on paper (docs/distributed.md).

A step all-reduces one flat f32 buffer: every parameter's gradient plus one flag per parameter
tensor. A ring all-reduce over N nodes sends and receives 2(N-1)/N times the buffer per node,
plus 2(N-1) latency hops. quantnet does not overlap the all-reduce with the backward pass (the
buffer is made after it), so a step takes compute + communication and the scaling efficiency is
compute / (compute + communication).

    python3 scripts/scaling_model.py [--latency-us 10] [--batch 64] [--r18 2000] [--r50 700]

--r18/--r50: images per second one node trains (an assumption to replace with a measurement of
your nodes; the defaults are of the order published for one A100-class GPU in FP32/TF32).
"""
import argparse

# Parameter counts of the torchvision models (the same layers as quantnet's ResNet-18/50) and
# their parameter tensors (conv/linear weights and biases, batch-norm weight and bias).
MODELS = {
    "ResNet-18": (11_689_512, 62),
    "ResNet-50": (25_557_032, 161),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--latency-us", type=float, default=10.0, help="per-hop latency")
    p.add_argument("--batch", type=int, default=64, help="images per node per step")
    p.add_argument("--r18", type=float, default=2000.0, help="ResNet-18 images/s per node")
    p.add_argument("--r50", type=float, default=700.0, help="ResNet-50 images/s per node")
    a = p.parse_args()
    rate = {"ResNet-18": a.r18, "ResNet-50": a.r50}
    nodes = [2, 4, 8, 16, 32, 64]
    links = [10, 25, 100]
    print(
        f"Per node: {a.batch} images per step; ResNet-18 at {a.r18:.0f} images/s, ResNet-50 at "
        f"{a.r50:.0f} images/s (assumed); ring all-reduce, {a.latency_us:.0f} µs per hop, "
        "no overlap with the backward pass.\n"
    )
    for name, (params, tensors) in MODELS.items():
        size = 4 * (params + tensors)
        compute = a.batch / rate[name]
        print(f"{name}: {size / 1e6:.1f} MB per step; compute {1e3 * compute:.0f} ms per step\n")
        print("| Gbit/s | " + " | ".join(f"N = {n}" for n in nodes) + " |")
        print("|---" * (len(nodes) + 1) + "|")
        for gbit in links:
            cells = []
            for n in nodes:
                comm = 2 * (n - 1) / n * size / (gbit * 1e9 / 8) + 2 * (n - 1) * a.latency_us * 1e-6
                eff = compute / (compute + comm)
                cells.append(f"{1e3 * comm:.1f} ms, {100 * eff:.0f} %")
            print(f"| {gbit} | " + " | ".join(cells) + " |")
        # Where the all-reduce takes as long as the step's compute (efficiency 50 %): the
        # bandwidth below which adding nodes gives less than half of each one.
        need = 2 * size / compute * 8 / 1e9
        print(
            f"\nCommunication equals compute (50 % efficiency) below about {need:.0f} Gbit/s "
            f"at any N (2(N-1)/N < 2); images per second then grow with N only while the link "
            "keeps up.\n"
        )


if __name__ == "__main__":
    main()
