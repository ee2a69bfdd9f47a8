"""Variational bounds on ``-log p(x)``: the DDPM bound of a discrete chain, the continuous-time ELBO of an SDE,
and Analytic-DPM's optimal reverse variance.

- ``discrete``: the DDPM bound of a discrete chain (``elbo``);
- ``analytic_dpm``: Analytic-DPM's Γ and optimal reverse variance (``estimate_gamma``, ``GammaEstimate``);
- ``continuous``: the continuous-time ELBO of a path (``continuous_elbo``).
"""
from .analytic_dpm import GammaEstimate, estimate_gamma
from .chain import Bound
from .continuous import T_PROPOSALS, continuous_elbo
from .discrete import DECODERS, VARIANCES, decoder_nll, elbo, prior_kl

__all__ = ["Bound", "GammaEstimate", "estimate_gamma", "elbo", "decoder_nll", "prior_kl", "continuous_elbo",
           "VARIANCES", "DECODERS", "T_PROPOSALS"]
