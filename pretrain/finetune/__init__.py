"""Fine-tuning ATST encoders on HEAR-format tasks: scene tasks (the official second evaluation)
and event tasks (ATST-SED's two stages), each beside its frozen baseline."""
