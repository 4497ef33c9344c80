"""Fine-tuning ATST encoders on HEAR-format scene tasks: the official second evaluation."""
