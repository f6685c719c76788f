"""The training schema's keys, one module per section (schema.SECTIONS); schema.TrainConfig joins them."""
