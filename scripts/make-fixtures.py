#!/usr/bin/env python3
"""Writes fixtures/: prefixes of MNIST and Fashion-MNIST (IDX, gz) and the CIFAR-10 sample batch,
read from ../shared/data. Run from the repository root; the output is byte-identical on every run
(gzip with mtime 0)."""
import gzip
import shutil
import struct

SHARED = "../shared/data"
for name in ["mnist", "fashion-mnist"]:
    for split, n in [("train", 600), ("t10k", 200)]:
        data = gzip.open(f"{SHARED}/{name}/{split}-images-idx3-ubyte.gz").read()
        magic, _, rows, cols = struct.unpack(">IIII", data[:16])
        images = struct.pack(">IIII", magic, n, rows, cols) + data[16 : 16 + n * rows * cols]
        with gzip.GzipFile(f"fixtures/{name}/{split}-images-idx3-ubyte.gz", "wb", 9, mtime=0) as f:
            f.write(images)
        data = gzip.open(f"{SHARED}/{name}/{split}-labels-idx1-ubyte.gz").read()
        magic, _ = struct.unpack(">II", data[:8])
        with gzip.GzipFile(f"fixtures/{name}/{split}-labels-idx1-ubyte.gz", "wb", 9, mtime=0) as f:
            f.write(struct.pack(">II", magic, n) + data[8 : 8 + n])
shutil.copy(f"{SHARED}/cifar10-samples/test_batch_first20.bin", "fixtures/cifar10/")
# Two of the three neon-trees tiles (400×400 PNG) with their VOC annotations, byte for byte.
for stem in ["OSBS_029", "SOAP_061"]:
    shutil.copy(f"{SHARED}/detection-neon-trees/images/{stem}.png", "fixtures/neon-trees/images/")
    shutil.copy(f"{SHARED}/detection-neon-trees/annotations/{stem}.xml", "fixtures/neon-trees/annotations/")
