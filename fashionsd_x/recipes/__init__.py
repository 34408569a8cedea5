"""Multi-stage runs built on the stages below them: the tiny-model recipe (`fsdx train tiny`), shipping its
result as the embedded default, and the demo (`fsdx demo`)."""
