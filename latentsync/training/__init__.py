"""Training. `core` (with `config`, `options`, `state`) is the one trainer core: run folders,
checkpoints, exact resume, history, LR schedule, accelerator, TensorBoard and charts; `config`
also holds the typed config sections every trainer shares (unknown keys are errors). Each trainer
keeps only its config sections, its data, its step and its validation: `syncnet_trainer` (with
`syncnet_config`), `vae_trainer`, and `unet_trainer` with `unet_config`, `unet_models`,
`unet_step`, `unet_validation`."""
