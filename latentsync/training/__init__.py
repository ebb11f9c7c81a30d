"""Training. `core` (with `config`, `options`, `state`) is the one trainer core: run folders,
checkpoints, exact resume, history, LR schedule, accelerator, TensorBoard and charts. Each trainer
keeps only its data, its step and its validation: `syncnet_trainer`, and `unet_trainer` with
`unet_config`, `unet_models`, `unet_step`, `unet_validation` (`pipeline_parts` is the one place
that imports the inference pipeline)."""
