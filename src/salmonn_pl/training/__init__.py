"""Fine-tuning SALMONN with ``salmonn-pl fit``: objectives, optimiser schedule, checkpoints, resumption.

* :mod:`.objectives`: the official LM loss and the prior-contrast terms (formulas in its docstring);
  :mod:`.option_prior` scores a question's options with the audio removed, keeping gradients.
* :mod:`.schedule`: the official AdamW with linear warm-up then cosine decay, stepped per optimiser step.
* :mod:`.checkpointing`: checkpoints hold the trainable weights, the ``[PAD]`` rows, optimiser and
  scheduler state and plain hyperparameters; they resume with ``--ckpt_path`` and load as ``model.model.ckpt``.
* :mod:`salmonn_pl.data.resumable` and :mod:`.rng`: what makes a resumed run repeat an uninterrupted one
  exactly (the position in the epoch's data order; dropout masks drawn per rank, epoch and batch from the run's seed).
* :mod:`salmonn_pl.data.activation`: data for activation tuning (``configs/activation.yaml``).
* :mod:`.divergence`: the fit stops at the first non-finite loss or gradient (naming the step), and a
  checkpoint with non-finite trainable weights is refused before it is written.

Multi-device training is chosen in the ``trainer`` section, with no code change:
``strategy: ddp`` (``ddp_find_unused_parameters_true`` when some batches leave the connector unused,
e.g. every row text-only); ``strategy: {class_path: lightning.pytorch.strategies.FSDPStrategy,
init_args: {state_dict_type: full}}`` (the model is built in ``configure_model``, so FSDP wraps it
while it is created); ``strategy: {class_path: lightning.pytorch.strategies.DeepSpeedStrategy,
init_args: {stage: 2, exclude_frozen_parameters: true}}`` (DeepSpeed then writes its own checkpoint
folder). ``precision``, ``accumulate_grad_batches`` and ``gradient_clip_val`` are Trainer settings too.
"""
