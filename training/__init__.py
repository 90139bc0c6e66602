"""Training for clipcond, installed as ``clipcond.training`` (the repository's ``training/``).

By objective, over shared parts::

    clip/         contrastive CLIP / SigLIP (train-clip; eval-clip, convert-clip, init-clip)
    diffusion/    a UNet, LoRA or a projection adapter against frozen text encoders (train-diffusion)
    t5/           span-corruption pretraining of a small T5 encoder (train-t5)
    data/         every data source through one door: DataConfig, ImageCaptionBatches, CaptionSource
    loop.py       the loop skeleton (TrainingRun): run folder, resume, NaN stop, logging, checkpoints
    checkpoint.py, run_folder.py, optim.py, command.py (what the training commands share)
    train_clip.py, train_diffusion.py, train_t5.py: ``accelerate launch -m clipcond.training.train_clip``
"""
