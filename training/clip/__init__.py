"""Contrastive CLIP / SigLIP training: the run config, the model set up for the run's mode, the
GradCache step, the loop (`clip.loop.train_clip`), evaluation, and the `eval-clip`,
`convert-clip` and `init-clip` commands."""
