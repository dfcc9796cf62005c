"""``tetragon`` protobuf package, generated from exporter/api/v1/tetragon/*.proto by ``make proto``."""
