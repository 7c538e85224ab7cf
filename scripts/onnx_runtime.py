"""An exported ONNX model (`quantnet export --format onnx`) in ONNX Runtime.

Checks the file with the ONNX checker (full check), evaluates it on the whole MNIST or
Fashion-MNIST test set (IDX files, pixels / 255 into the graph, which normalises them) with
ONNX Runtime's graph optimisations off and at their default, counts the images whose predicted
class differs from another engine's (`quantnet eval --predictions FILE`: one class per line),
and times a batch of 1 and of 64 with 1 and 2 threads (median of 25 runs after 3 warm-up).

    pip install onnx onnxruntime numpy
    python scripts/onnx_runtime.py model.onnx --data DIR/fashion-mnist [--predictions burn.txt]
"""

import argparse
import gzip
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def session(path, level, threads):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def predict(sess, images, batch=500):
    out = []
    for i in range(0, len(images), batch):
        (scores,) = sess.run(None, {"image": images[i : i + batch]})
        out.append(scores.argmax(axis=1))
    return np.concatenate(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--data", required=True, help="folder with t10k-*-idx*-ubyte.gz")
    p.add_argument("--predictions", help="another engine's classes, one per line")
    p.add_argument("--runs", type=int, default=25)
    p.add_argument(
        "--require-same",
        action="store_true",
        help="exit 1 if any prediction differs from --predictions' (CI)",
    )
    p.add_argument("--no-timing", action="store_true")
    a = p.parse_args()

    onnx.checker.check_model(onnx.load(a.model), full_check=True)
    print(f"{a.model}: passes the ONNX checker (onnx {onnx.__version__}, full check)")
    images = idx(f"{a.data}/t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    images = images.reshape(len(images), 1, 28, 28)
    labels = idx(f"{a.data}/t10k-labels-idx1-ubyte.gz").astype(np.int64)
    other = None
    if a.predictions:
        other = np.array([int(l) for l in open(a.predictions) if l.strip()])
    levels = [
        ("optimisations off", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
        ("default optimisations", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
    ]
    differ = 0
    for name, level in levels:
        pred = predict(session(a.model, level, 2), images)
        acc = 100.0 * (pred == labels).mean()
        line = f"onnxruntime {ort.__version__} ({name}): test accuracy {acc:.2f}% on {len(labels)} images"
        if other is not None:
            differ += int((pred != other).sum())
            line += f"; predictions that differ from {a.predictions}: {(pred != other).sum()} of {len(other)}"
        print(line)
    if a.require_same and differ:
        raise SystemExit(f"{differ} predictions differ from {a.predictions}")
    if a.no_timing:
        return

    print("| engine | batch | threads | ms/batch (median) | min | max | images/s |")
    print("|---|---|---|---|---|---|---|")
    for threads in (1, 2):
        sess = session(a.model, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, threads)
        for batch in (1, 64):
            x = images[:batch]
            for _ in range(3):
                sess.run(None, {"image": x})
            times = []
            for _ in range(a.runs):
                t = time.perf_counter()
                sess.run(None, {"image": x})
                times.append(1e3 * (time.perf_counter() - t))
            med = statistics.median(times)
            print(
                f"| onnxruntime | {batch} | {threads} | {med:.3f} | {min(times):.3f} | "
                f"{max(times):.3f} | {batch / med * 1e3:.0f} |"
            )


if __name__ == "__main__":
    main()
