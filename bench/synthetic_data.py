"""Synthetic 784-pixel data for bench/run.sh's second workload (stdlib only).

600 rows, 784 features in [0, 1], labels 0..9: each class has a fixed random
template (pixels on with probability 0.2); a row is its class's template with
every pixel flipped with probability 0.1 and scaled by a uniform intensity in
[0.5, 1]. Deterministic (seed 0). Writes CSV to stdout: 784 feature columns,
then the integer label (the format `epk train --data FILE.csv` reads).
"""
import random

def main():
    rng = random.Random(0)
    templates = [[1 if rng.random() < 0.2 else 0 for _ in range(784)] for _ in range(10)]
    out = []
    for i in range(600):
        label = i % 10
        row = []
        for p in templates[label]:
            on = p if rng.random() >= 0.1 else 1 - p
            row.append("%.4f" % (on * rng.uniform(0.5, 1.0)))
        out.append(",".join(row) + ",%d" % label)
    print("\n".join(out))

if __name__ == "__main__":
    main()
