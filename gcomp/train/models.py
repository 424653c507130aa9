"""Models for ``gcomp train``: an MLP sized so communication dominates, a small 2-D CNN for the 8x8 digits and a
1-D CNN for MNIST-1D's signals."""

import torch

__all__ = ["build_model", "MODELS"]


def mlp(hidden=1024, inputs=64):
    """inputs -> hidden -> hidden -> 10 (about 1.1 M parameters at hidden=1024 on the digits' 64 inputs)."""
    return torch.nn.Sequential(
        torch.nn.Linear(inputs, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, 10),
    )


class SmallCNN(torch.nn.Module):
    """Two 3x3 convolutions on the 8x8 digits, then a wide dense layer."""

    def __init__(self, hidden=1024, inputs=64):
        super().__init__()
        if inputs != 64:
            raise ValueError(f"expected 64 inputs because the cnn model takes 8x8 digit images, found {inputs}: "
                             "use cnn1d for 1-D signals")
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        )
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64 * 16, hidden), torch.nn.ReLU(),
                                        torch.nn.Linear(hidden, 10))

    def forward(self, x):
        return self.head(self.conv(x.view(-1, 1, 8, 8)))


class CNN1D(torch.nn.Module):
    """A 1-D CNN for signals of ``inputs`` samples (MNIST-1D: 40): three convolutions, then a wide dense layer.

    Conv1d(1, 64, 5) and Conv1d(64, 64, 5) with max-pooling by 2, Conv1d(64, 64, 3) with max-pooling by 2 (all
    padded to keep the length), then ``inputs // 4 * 64 -> hidden -> 10``: about 0.70 M parameters at hidden=1024
    and 40 inputs, most of them in the dense layer so that communication dominates a step, as with the MLP.  On
    MNIST-1D it reaches the paper's CNN accuracy (about 94%) in a few hundred steps of batch 64.
    """

    def __init__(self, hidden=1024, inputs=40, channels=64):
        super().__init__()
        if inputs < 4:
            raise ValueError(f"expected at least 4 inputs because the cnn1d model pools twice by 2, found {inputs}")
        self.inputs = inputs
        self.conv = torch.nn.Sequential(
            torch.nn.Conv1d(1, channels, 5, padding=2), torch.nn.ReLU(),
            torch.nn.Conv1d(channels, channels, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool1d(2),
            torch.nn.Conv1d(channels, channels, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool1d(2),
        )
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(channels * (inputs // 4), hidden),
                                        torch.nn.ReLU(), torch.nn.Linear(hidden, 10))

    def forward(self, x):
        return self.head(self.conv(x.view(-1, 1, self.inputs)))


MODELS = {"mlp": mlp, "cnn": SmallCNN, "cnn1d": CNN1D}


def build_model(name, hidden=1024, seed=0, inputs=64):
    """The model ``name`` for samples of ``inputs`` features (64: the digits; 40: MNIST-1D), with parameters
    initialised from ``seed`` (identical on every worker; torch's global generator is left as it was)."""
    if name not in MODELS:
        raise ValueError(f"expected a model in {sorted(MODELS)}, found {name!r}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return MODELS[name](hidden, inputs)
