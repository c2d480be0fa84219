"""LightningModules: the training systems (losses, optimisers, logging) around the networks in ``nets``."""
