"""Score networks ``net(x, t)``: an MLP for low-dimensional data and a DDPM++-style U-Net for images."""
from .embeddings import EMBEDDINGS, FourierEmbedding, SinusoidalEmbedding
from .mlp import MLP
from .unet import UNet

__all__ = ["MLP", "UNet", "SinusoidalEmbedding", "FourierEmbedding", "EMBEDDINGS"]
