"""sgm: score-based generative modelling with SDEs and ODEs, on Gaussian paths ``x_t = α(t)·x_0 + σ(t)·ε``."""
from . import guidance, inverse, predictions, samplers
from .paths import (SDE, VESDE, VPSDE, CosineVPSDE, DiscreteChain, EDMPath, GaussianPath, RectifiedFlow,
                    SubVPSDE)
from .samplers import sample
from .score import ScoreModel
from .targets import FullGaussianMixture, GaussianMixture, random_mixture, ring_mixture
# the submodules the docs use as sgm.X
from . import data, likelihood, losses, metrics, nets, reflow, train  # noqa: E402

__version__ = "0.1.0"

__all__ = ["GaussianPath", "SDE", "VPSDE", "CosineVPSDE", "SubVPSDE", "VESDE", "EDMPath", "RectifiedFlow",
           "DiscreteChain", "GaussianMixture", "FullGaussianMixture", "ring_mixture", "random_mixture", "ScoreModel",
           "sample", "samplers", "predictions", "guidance", "inverse", "data", "likelihood", "losses", "metrics",
           "nets", "reflow", "train", "__version__"]
