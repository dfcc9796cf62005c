"""Generated code; populated by ``make proto`` (the *_pb2*.py files are not committed)."""
