"""placeholder"""
from pathlib import Path
PROCESS_OBJECT = Path(__file__).parent / "bpf" / "obj" / "process.bpf.o"
