#!/usr/bin/env python3
"""PyTorch reference for `quantnet bench train`: the same models (LeNet-5 on 1x28x28, ResNet-20 on
3x32x32, layer for layer as quantnet-models builds them), the same full-precision step (forward,
cross-entropy, backward, Adam at 1e-3) on synthetic input N(0, 1) with uniform random labels,
timed the same way (median, min, max of STEPS after WARMUP). Prints one JSON object per line with
the fields of `quantnet bench train --json` (backend "pytorch-cpu").

Run by hand, never in CI: it needs `pip install torch` (e.g. in a venv).

    python3 benches/peer/pytorch_train_step.py --model lenet5 --batch 64 --steps 10 --warmup 2
"""
import argparse
import json
import time

import torch
from torch import nn


class Lenet5(nn.Module):
    """quantnet's LeNet-5 at 28x28: conv 6 (5x5, pad 2) - relu - maxpool 2, conv 16 (5x5) - relu -
    maxpool 2, fc 120 - relu, fc 84 - relu, fc classes."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(x.flatten(1)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class BasicBlock(nn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut), shortcut a 1x1 conv + bn when the shape
    changes (quantnet's ResNet-20 block; no conv bias)."""

    def __init__(self, c_in, width, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.down = None
        if stride != 1 or c_in != width:
            self.down = nn.Sequential(
                nn.Conv2d(c_in, width, 1, stride, 0, bias=False), nn.BatchNorm2d(width)
            )

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + (self.down(x) if self.down is not None else x))


class Resnet20(nn.Module):
    """3x3 stem of 16, stages of 16/32/64 with 3 basic blocks, global average pool, fc."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, c_in = [], 16
        for stage, width in enumerate([16, 32, 64]):
            for i in range(3):
                blocks.append(BasicBlock(c_in, width, 2 if stage > 0 and i == 0 else 1))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.blocks(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


MODELS = {"lenet5": (Lenet5, (1, 28, 28)), "resnet20": (Resnet20, (3, 32, 32))}


def timing(warmup, steps, f):
    for _ in range(warmup):
        f()
    times = []
    for _ in range(max(steps, 1)):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    times.sort()
    # The upper median for an even count, as quantnet's `Timing`.
    return times[len(times) // 2], times[0], times[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="lenet5")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    make, shape = MODELS[args.model]
    model = make()
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.randn(args.batch, *shape)
    targets = torch.randint(0, 10, (args.batch,))
    loss_fn = nn.CrossEntropyLoss()

    def step():
        optim.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), targets)
        loss.backward()
        optim.step()

    def infer():
        with torch.no_grad():
            model.eval()
            model(images)
            model.train()

    median, low, high = timing(args.warmup, args.steps, step)
    infer_median, _, _ = timing(args.warmup, args.steps, infer)
    print(json.dumps({
        "backend": "pytorch-cpu",
        "model": args.model,
        "batch": args.batch,
        "weights": "fp",
        "acts": "32",
        "ms_per_step": median * 1e3,
        "ms_min": low * 1e3,
        "ms_max": high * 1e3,
        "images_per_s": args.batch / median,
        "inference_images_per_s": args.batch / infer_median,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
