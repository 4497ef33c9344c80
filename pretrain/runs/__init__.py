"""What every training run of the package is made of, pretraining and fine-tuning alike: settings
(preset, YAML, flags), devices, seeded generators, augmentations, schedules, the progress bar and
the plots. Builds on ``pretrain.model``; imports Lightning only where a module says so."""
