"""Training without a framework: an MLP with BatchNorm, LayerNorm and ReLU trained by plain SGD in NumPy +
normfast, next to the same network in PyTorch from the same initial weights and the same batches.

    Linear(32, 128) -> BatchNorm (ReLU fused) -> Linear(128, 128) -> LayerNorm -> ReLU -> Linear(128, 10)

The data is a built-in synthetic 10-class problem. The script prints both loss curves, how far apart they
are, and the time per training step of each; with matplotlib installed, --plot FILE draws the curves.

    pip install '.[test,plot]'  &&  python examples/train_mlp.py --plot examples/train_mlp.png
"""
import argparse
import sys
import time

import numpy as np

try:
    import torch
    from torch import nn
except ImportError:
    sys.exit("train_mlp.py trains the same network in PyTorch beside normfast: pip install '.[test]' (or torch)")

import normfast
from normfast import layers

SIZES = (32, 128, 128, 10)  # input, hidden, hidden, classes


def dataset(n=4096, seed=0):
    """Points of 10 classes: a random linear rule with a quadratic twist, plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, SIZES[0]))
    rule = rng.standard_normal((SIZES[0], SIZES[-1]))
    labels = (x @ rule + 0.5 * (x[:, :SIZES[-1]] ** 2) + 0.3 * rng.standard_normal((n, SIZES[-1]))).argmax(1)
    return x, labels


def init_weights(seed=0):
    """PyTorch's default Linear initialisation, drawn once in NumPy so both networks start alike."""
    rng = np.random.default_rng(seed)
    weights = []
    for n_in, n_out in zip(SIZES, SIZES[1:]):
        bound = 1 / np.sqrt(n_in)
        weights.append((rng.uniform(-bound, bound, (n_out, n_in)), rng.uniform(-bound, bound, n_out)))
    return weights


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy and its gradient with respect to the logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(labels)
    loss = -np.log(p[np.arange(n), labels]).mean()
    p[np.arange(n), labels] -= 1
    return loss, p / n


class NumpyMLP:
    """The network in NumPy: matmuls for the Linear layers, normfast for the norms and their gradients."""

    def __init__(self, weights, dtype):
        self.lin = [[w.astype(dtype), b.astype(dtype)] for w, b in weights]
        self.bn = layers.BatchNorm(SIZES[1], activation="relu", dtype=dtype)
        self.ln = layers.LayerNorm(SIZES[2], dtype=dtype)

    def step(self, x, labels, lr):
        (w1, b1), (w2, b2), (w3, b3) = self.lin
        h1 = self.bn(x @ w1.T + b1)  # batch norm and ReLU in one pass
        a2 = self.ln(h1 @ w2.T + b2)
        h2 = np.maximum(a2, 0)
        loss, g = cross_entropy(h2 @ w3.T + b3, labels)
        grads = [None, None, (g.T @ h2, g.sum(0))]
        g = (g @ w3) * (a2 > 0)  # through the last Linear and the ReLU
        g = self.ln.backward(g)
        grads[1] = (g.T @ h1, g.sum(0))
        g = self.bn.backward(g @ w2)  # the fused ReLU is differentiated too
        grads[0] = (g.T @ x, g.sum(0))
        for (w, b), (gw, gb) in zip(self.lin, grads):
            w -= lr * gw
            b -= lr * gb
        for norm in (self.bn, self.ln):
            for name, grad in norm.grads.items():
                setattr(norm, name, getattr(norm, name) - lr * grad)
            norm.zero_grad()
        return float(loss)


def torch_mlp(weights, dtype):
    model = nn.Sequential(nn.Linear(*SIZES[:2]), nn.BatchNorm1d(SIZES[1]), nn.ReLU(), nn.Linear(*SIZES[1:3]),
                          nn.LayerNorm(SIZES[2]), nn.ReLU(), nn.Linear(*SIZES[2:])).to(dtype)
    with torch.no_grad():
        for lin, (w, b) in zip([model[0], model[3], model[6]], weights):
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
    return model


def train(steps=200, batch=128, lr=0.1, dtype=np.float32, seed=0):
    """Train both networks on the same batches; returns (normfast losses, torch losses, seconds per step
    of each)."""
    x, labels = dataset(seed=seed)
    weights = init_weights(seed)
    net = NumpyMLP(weights, dtype)
    model = torch_mlp(weights, {np.float32: torch.float32, np.float64: torch.float64}[np.dtype(dtype).type])
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    order = np.random.default_rng(seed + 1).integers(0, len(x), (steps, batch))
    xs = x.astype(dtype)
    ours, theirs, t_ours, t_theirs = [], [], 0.0, 0.0
    for idx in order:
        xb, yb = xs[idx], labels[idx]
        t0 = time.perf_counter()
        ours.append(net.step(xb, yb, lr))
        t1 = time.perf_counter()
        opt.zero_grad()
        loss = loss_fn(model(torch.from_numpy(xb)), torch.from_numpy(yb))
        loss.backward()
        opt.step()
        theirs.append(loss.item())
        t2 = time.perf_counter()
        t_ours += t1 - t0
        t_theirs += t2 - t1
    return np.array(ours), np.array(theirs), t_ours / steps, t_theirs / steps


def plot(ours, theirs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(theirs, label="PyTorch", linewidth=3, alpha=0.5)
    ax.plot(ours, label="NumPy + normfast", linewidth=1)
    ax.set_xlabel("SGD step")
    ax.set_ylabel("training loss (cross-entropy)")
    ax.set_title("MLP with BatchNorm + LayerNorm, same weights and batches")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def positive(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return int(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=positive, default=200, help="SGD steps (default 200)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--threads", type=positive, default=None, help="threads for normfast and torch")
    parser.add_argument("--plot", metavar="FILE", help="save the two loss curves as an image (matplotlib)")
    args = parser.parse_args()
    if args.plot:  # checked before training, not after it
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install '.[plot]'")
    if args.threads:
        normfast.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    ours, theirs, t_ours, t_theirs = train(args.steps, dtype=np.dtype(args.dtype).type)
    print("step    normfast     PyTorch")
    for i in list(range(0, len(ours), max(1, len(ours) // 10))) + [len(ours) - 1]:
        print(f"{i:4d}  {ours[i]:10.6f}  {theirs[i]:10.6f}")
    rel = np.abs(ours - theirs) / np.abs(theirs)
    print(f"largest relative difference of the losses: {rel.max():.1e} (final: {rel[-1]:.1e})")
    print(f"time per step: normfast {t_ours * 1e3:.3f} ms, PyTorch {t_theirs * 1e3:.3f} ms "
          f"({args.dtype}, {normfast.get_num_threads()} threads)")
    if args.plot:
        plot(ours, theirs, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
