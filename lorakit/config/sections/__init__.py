"""The training schema's keys, one module per section (schema.SECTION_KEYS); schema.TrainConfig joins them.
A key's section (its TOML table, its place in `config show` and the web form) is the file declaring it."""
