"""PyTorch's CPU inference on the nets `quantnet bench infer --model` times (run by hand).

    python3 -m venv ~/.venvs/torch && ~/.venvs/torch/bin/pip install torch
    ~/.venvs/torch/bin/python benches/peer/infer.py [--threads 1,2] [--batch 1,64] [--runs 25] [--json]

The nets are the ones quantnet trains, at their usual input shapes, freshly initialised
(inference time does not depend on the weights' values): LeNet-5 (1x28x28, conv 5x5 pad 2),
ResNet-20 (3x32x32, option-B 1x1 shortcuts) and LFC (784-1024-1024-1024-10 with batch norm).
Three engines per net, interleaved in one run so that the machine's noise hits them alike:

- `torch-f32`: eager float32;
- `torch-f32-frozen`: `torch.jit.freeze` + `optimize_for_inference` (batch norm folded, oneDNN);
- `torch-int8`: FX post-training quantization with PyTorch's default x86 engine (fbgemm/oneDNN,
  VNNI where the CPU has it), per-tensor int8 activations and per-channel int8 weights.

One line (or JSON object) per (model, engine, batch, threads): the median, min and max
milliseconds per batch over `--runs` timed calls (8x as many at batch 1) after 5 warm-up calls,
in the fields `quantnet bench infer --json` writes.
"""

import argparse
import json
import statistics
import time
import warnings

import torch
import torch.nn as nn

warnings.filterwarnings("ignore")


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )
        self.r1, self.r2 = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        y = self.r1(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return self.r2(y + self.short(x))


class ResNet20(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.b = nn.BatchNorm2d(16)
        self.r = nn.ReLU()
        blocks, cin = [], 16
        for cout, stride in [(16, 1), (32, 2), (64, 2)]:
            for i in range(3):
                blocks.append(Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.blocks(self.r(self.b(self.c(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5, padding=2)
        self.c2 = nn.Conv2d(6, 16, 5)
        self.f1, self.f2, self.f3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)
        self.r1, self.r2, self.r3, self.r4 = nn.ReLU(), nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.p = nn.MaxPool2d(2)

    def forward(self, x):
        x = self.p(self.r1(self.c1(x)))
        x = self.p(self.r2(self.c2(x)))
        x = self.r3(self.f1(torch.flatten(x, 1)))
        return self.f3(self.r4(self.f2(x)))


def lfc():
    layers, width = [nn.Flatten()], 784
    for _ in range(3):
        layers += [nn.Linear(width, 1024, bias=False), nn.BatchNorm1d(1024), nn.ReLU()]
        width = 1024
    return nn.Sequential(*layers, nn.Linear(1024, 10))


MODELS = {
    "lenet5": (LeNet5, (1, 28, 28)),
    "resnet20": (ResNet20, (3, 32, 32)),
    "lfc": (lfc, (1, 28, 28)),
}


def engines(make, shape, batch):
    """The three engines of one net, built for `batch` (tracing fixes the shape)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    x = torch.rand(batch, *shape)
    eager = make().eval()
    with torch.inference_mode():
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(eager, x)))
    torch.backends.quantized.engine = "x86"
    prepared = prepare_fx(make().eval(), get_default_qconfig_mapping("x86"), (x,))
    with torch.inference_mode():
        for _ in range(4):
            prepared(torch.rand(16, *shape))
    int8 = convert_fx(prepared)
    return x, {"torch-f32": eager, "torch-f32-frozen": frozen, "torch-int8": int8}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet5,resnet20,lfc")
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=25)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not a.json:
        print(f"torch {torch.__version__}; quantized engines {torch.backends.quantized.supported_engines}")
        print("| model | engine | batch | threads | ms/batch (median) | min | max | images/s |")
        print("|---|---|---|---|---|---|---|---|")
    for threads in [int(t) for t in a.threads.split(",")]:
        torch.set_num_threads(threads)
        for name in a.models.split(","):
            make, shape = MODELS[name]
            for batch in [int(b) for b in a.batch.split(",")]:
                x, nets = engines(make, shape, batch)
                times = {k: [] for k in nets}
                runs = a.runs * (8 if batch == 1 else 1)
                with torch.inference_mode():
                    for net in nets.values():
                        for _ in range(5):
                            net(x)
                    for _ in range(runs):
                        for k, net in nets.items():
                            t = time.perf_counter()
                            net(x)
                            times[k].append((time.perf_counter() - t) * 1e3)
                for k, ts in times.items():
                    med = statistics.median(ts)
                    row = {
                        "model": name,
                        "engine": k,
                        "batch": batch,
                        "threads": threads,
                        "ms_per_batch": round(med, 4),
                        "ms_min": round(min(ts), 4),
                        "ms_max": round(max(ts), 4),
                        "images_per_s": round(batch / med * 1e3, 1),
                    }
                    if a.json:
                        print(json.dumps(row), flush=True)
                    else:
                        print(
                            f"| {name} | {k} | {batch} | {threads} | {med:.3f} | {min(ts):.3f}"
                            f" | {max(ts):.3f} | {batch / med * 1e3:.0f} |",
                            flush=True,
                        )


if __name__ == "__main__":
    main()
