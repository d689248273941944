"""Baseline: the pytorch/examples MNIST recipe (mnist/main.py), run on Fashion-MNIST.

Per-sample torchvision transforms through a DataLoader, the example's Net,
Adadelta(lr=1.0) and StepLR(step_size=1, gamma=0.7). Used as the reference
point for speed/accuracy comparisons of mnistlab.

    python bench/reference.py --epochs 3 --data-dir /path/to/fashion-mnist
"""
import argparse
import gzip
import os
import shutil
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import StepLR
from torchvision import datasets, transforms

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package location
FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def train(model, loader, optimizer):
    model.train()
    for data, target in loader:
        optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()


@torch.no_grad()
def test(model, loader):
    model.eval()
    correct = 0
    for data, target in loader:
        correct += (model(data).argmax(dim=1) == target).sum().item()
    return correct / len(loader.dataset)


def run_reference(data_dir=DEFAULT_DATA_DIR, epochs=3, seed=1, threads=None, stop_at=None):
    """Train the reference recipe; return one dict per epoch:
    {epoch, train_seconds (cumulative, excludes evaluation), test_seconds, test_accuracy}.
    With stop_at, stop after the first epoch whose test accuracy reaches it."""
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))]
    )
    results = []
    with tempfile.TemporaryDirectory() as root:
        # torchvision reads <root>/FashionMNIST/raw/*-ubyte. Its download() only
        # accepts .gz files matching upstream md5s, which recompressed copies (e.g.
        # Debian's) do not, so decompress them here and skip download().
        raw = os.path.join(root, "FashionMNIST", "raw")
        os.makedirs(raw)
        for name in FILES:
            with gzip.open(os.path.join(data_dir, name)) as src, open(
                os.path.join(raw, name[: -len(".gz")]), "wb"
            ) as dst:
                shutil.copyfileobj(src, dst)
        train_set = datasets.FashionMNIST(root, train=True, transform=transform)
        test_set = datasets.FashionMNIST(root, train=False, transform=transform)
        train_loader = torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True)
        test_loader = torch.utils.data.DataLoader(test_set, batch_size=1000, shuffle=True)

        model = Net()
        optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
        scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
        train_seconds = 0.0
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            train(model, train_loader, optimizer)
            scheduler.step()
            train_seconds += time.perf_counter() - start
            start = time.perf_counter()
            accuracy = test(model, test_loader)
            results.append(
                {
                    "epoch": epoch,
                    "train_seconds": round(train_seconds, 2),
                    "test_seconds": round(time.perf_counter() - start, 2),
                    "test_accuracy": round(accuracy, 4),
                }
            )
            if stop_at is not None and accuracy >= stop_at:
                break
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for row in run_reference(args.data_dir, args.epochs, args.seed, args.threads):
        print(row, flush=True)


if __name__ == "__main__":
    main()
