"""sgm: score-based generative modelling with SDEs and ODEs."""
from . import guidance, inverse, samplers
from .samplers import sample
from .score import ScoreModel
from .sde import SDE, VESDE, VPSDE, CosineVPSDE, DiscreteChain, SubVPSDE
from .targets import FullGaussianMixture, GaussianMixture, random_mixture, ring_mixture
from . import data, likelihood, losses, metrics, nets, train  # noqa: E402  (the submodules the docs use as sgm.X)

__version__ = "0.1.0"

__all__ = ["SDE", "VPSDE", "CosineVPSDE", "SubVPSDE", "VESDE", "DiscreteChain", "GaussianMixture", "FullGaussianMixture",
           "ring_mixture", "random_mixture", "ScoreModel", "sample", "samplers", "guidance", "inverse", "data",
           "likelihood", "losses", "metrics", "nets", "train", "__version__"]
