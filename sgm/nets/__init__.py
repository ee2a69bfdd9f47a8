"""Score networks ``net(x, t)``: an MLP for low-dimensional data and a DDPM++-style U-Net for images."""
from .embeddings import EMBEDDINGS, FourierEmbedding, SinusoidalEmbedding
from .mlp import MLP
from .classifier import DigitsClassifier, train_digits_classifier
from .unet import UNet

__all__ = ["MLP", "UNet", "DigitsClassifier", "train_digits_classifier", "SinusoidalEmbedding", "FourierEmbedding",
           "EMBEDDINGS"]
