"""Diffusion training against frozen text encoders: the run config, the models of a run
(`diffusion.setup`) and the loop (`diffusion.loop.train_diffusion`)."""
