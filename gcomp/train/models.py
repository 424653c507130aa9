"""Models for ``gcomp train``: an MLP sized so communication dominates, and a small CNN."""

import torch

__all__ = ["build_model", "MODELS"]


def mlp(hidden=1024):
    """64 -> hidden -> hidden -> 10 (about 1.1 M parameters at hidden=1024)."""
    return torch.nn.Sequential(
        torch.nn.Linear(64, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, 10),
    )


class SmallCNN(torch.nn.Module):
    """Two 3x3 convolutions on the 8x8 digits, then a wide dense layer."""

    def __init__(self, hidden=1024):
        super().__init__()
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        )
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64 * 16, hidden), torch.nn.ReLU(),
                                        torch.nn.Linear(hidden, 10))

    def forward(self, x):
        return self.head(self.conv(x.view(-1, 1, 8, 8)))


MODELS = {"mlp": mlp, "cnn": SmallCNN}


def build_model(name, hidden=1024, seed=0):
    """The model ``name`` with parameters initialised from ``seed`` (identical on every worker)."""
    if name not in MODELS:
        raise ValueError(f"expected a model in {sorted(MODELS)}, found {name!r}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return MODELS[name](hidden)
