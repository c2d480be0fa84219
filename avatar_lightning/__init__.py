"""avatar_lightning: video-driven animation of neural head avatars (Paier et al.) on PyTorch Lightning."""

__version__ = "0.1.0"
