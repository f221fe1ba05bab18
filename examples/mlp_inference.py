"""Inference of a trained PyTorch network in NumPy + normfast, without the framework.

A Linear -> BatchNorm1d -> ReLU network is trained for a few steps on random data, then its state dict
is loaded into normfast's BatchNorm layers (ReLU fused into them) with NumPy matmuls for the Linear
layers; a second copy has each BatchNorm folded into the Linear before it. The script prints how far
both are from PyTorch and how fast the three run.

    pip install '.[bench]'  &&  python examples/mlp_inference.py [--threads 2]
"""
import argparse
import os
import time

# This script alternates BLAS matmuls with threaded normalizations. By default OpenMP's idle threads
# (libgomp) spin for milliseconds after each normalization, holding a core the next matmul wants; a
# short spin suits this pattern. It must be set before OpenMP loads: before normfast and torch import.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import sys  # noqa: E402

import numpy as np  # noqa: E402

try:
    import torch  # noqa: E402
    from torch import nn  # noqa: E402
except ImportError:
    sys.exit("mlp_inference.py compares with the PyTorch network it loads: pip install '.[bench]' (or torch)")

import normfast  # noqa: E402
from normfast import layers  # noqa: E402

WIDTHS = [256, 512, 512, 256]
CLASSES = 10


def trained_model(seed=0):
    torch.manual_seed(seed)
    blocks = []
    for n_in, n_out in zip(WIDTHS, WIDTHS[1:]):
        blocks += [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU()]
    model = nn.Sequential(*blocks, nn.Linear(WIDTHS[-1], CLASSES))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(2048, WIDTHS[0])
    labels = (x[:, :CLASSES] + 0.3 * torch.randn(2048, CLASSES)).argmax(1)  # a learnable rule
    for step in range(60):
        idx = torch.randint(0, 2048, (128,))
        loss = nn.functional.cross_entropy(model(x[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


class NumpyNet:
    """The network from a PyTorch state dict: weights as float32 arrays, BatchNorm+ReLU as normfast layers."""

    def __init__(self, state_dict):
        sd = {k: v.numpy() for k, v in state_dict.items()}
        self.linears, self.norms = [], []
        for i, width in enumerate(WIDTHS[1:]):
            p = 3 * i
            self.linears.append((sd[f"{p}.weight"].T.copy(), sd[f"{p}.bias"]))
            bn = layers.BatchNorm(width, activation="relu")
            bn.load_state_dict(sd, prefix=f"{p + 1}.", strict=False)
            self.norms.append(bn.eval())
        last = 3 * (len(WIDTHS) - 1)
        self.head = (sd[f"{last}.weight"].T.copy(), sd[f"{last}.bias"])

    def __call__(self, x):
        for (w, b), bn in zip(self.linears, self.norms):
            h = x @ w
            h += b
            x = bn(h, out=h)  # normalization and ReLU in one pass, in place
        return x @ self.head[0] + self.head[1]


class FoldedNet:
    """The same network with each BatchNorm folded into the Linear before it: matmul, bias, ReLU."""

    def __init__(self, state_dict):
        sd = {k: v.numpy() for k, v in state_dict.items()}
        self.linears = []
        for i in range(len(WIDTHS) - 1):
            p, q = 3 * i, 3 * i + 1
            w, b = normfast.fold_batch_norm(sd[f"{p}.weight"], sd[f"{p}.bias"], sd[f"{q}.running_mean"],
                                            sd[f"{q}.running_var"], sd[f"{q}.weight"], sd[f"{q}.bias"])
            self.linears.append((w.T.copy(), b))
        last = 3 * (len(WIDTHS) - 1)
        self.head = (sd[f"{last}.weight"].T.copy(), sd[f"{last}.bias"])

    def __call__(self, x):
        for w, b in self.linears:
            h = x @ w
            h += b
            x = np.maximum(h, 0, out=h)
        return x @ self.head[0] + self.head[1]


def median_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def positive(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return int(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=positive, default=2, help="threads for PyTorch and normfast (default 2)")
    ap.add_argument("--repeat", type=positive, default=50, help="timed calls per case, the median printed")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    normfast.set_num_threads(args.threads)

    model = trained_model()
    sd = model.state_dict()
    nets = {"numpy + normfast": NumpyNet(sd), "folded (numpy)": FoldedNet(sd)}
    rng = np.random.default_rng(1)
    print(f"network {' -> '.join(map(str, WIDTHS + [CLASSES]))}, BatchNorm1d + ReLU after each hidden Linear; "
          f"{args.threads} threads, median of {args.repeat} calls")
    print(f"{'batch':>6} {'torch ms':>9} " + " ".join(f"{name + ' ms':>20}" for name in nets)
          + f" {'max |diff| vs torch':>22}")
    for batch in (1, 64, 1024):
        x = rng.standard_normal((batch, WIDTHS[0])).astype(np.float32)
        tx = torch.from_numpy(x)
        with torch.inference_mode():
            want = model(tx).numpy()
            t_torch = median_ms(lambda: model(tx), args.repeat)
        diffs = [float(np.abs(net(x) - want).max()) for net in nets.values()]
        times = [median_ms(lambda net=net: net(x), args.repeat) for net in nets.values()]
        print(f"{batch:>6} {t_torch:>9.3f} " + " ".join(f"{t:>20.3f}" for t in times)
              + f" {max(diffs):>22.2e}")
        assert max(diffs) < 1e-4 * max(1.0, float(np.abs(want).max())), diffs


if __name__ == "__main__":
    main()
