"""Plain ``nn.Module``s that the LightningModules in ``avatar_lightning.models`` compose."""
