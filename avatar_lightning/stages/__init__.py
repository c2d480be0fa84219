"""Pipeline commands that are not Lightning loops, one module each, registered in ``avatar_lightning.cli``."""
