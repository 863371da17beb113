"""What a benchmark runs and what it yields: a Case (one layer shape), the Settings of a run, one
Result per case, mode and implementation, and the names of the implementations.

Free of torch, so that the command line can offer the names in ``--help`` without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence


MODES = ("inference", "training")
#: The dtypes a case may run in (torch's names; machine.DTYPES maps them to torch dtypes).
DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16")
#: Every implementation rnnkit bench knows, in the order they are timed.
IMPLS = ("rnnkit", "torch", "torch-nocudnn", "cell-loop", "reference", "reference-jit",
         "reference-compile", "torch-autocast", "rnnkit-autocast")
#: Older spellings still accepted on the command line: training called rnnkit's kernels "fused".
IMPL_ALIASES = {"fused": "rnnkit"}
MATMUL = "matmul"
GPU_ONLY = {"torch-nocudnn"}
#: The dtypes that autocast computes in, and the implementations that run a float32 module under
#: torch.autocast to the case's dtype (timed for those dtypes only).
AUTOCAST_DTYPES = ("float16", "bfloat16")
AUTOCAST_IMPLS = ("torch-autocast", "rnnkit-autocast")


class BenchError(ValueError):
    """A benchmark that cannot run as asked (bad name, no GPU, too big); one-line message."""


@dataclass
class Case:
    """One layer shape. Sequences are time-major: input (T, N, I)."""

    cell: str = "lstm"          # lstm, gru or rnn (tanh)
    seq_len: int = 100          # T: time steps (the longest sequence when packed)
    batch: int = 64             # N: sequences in the batch
    input_size: int = 512       # I: features of the input
    hidden_size: int = 512      # H: features of the hidden state
    num_layers: int = 1         # L: stacked layers
    bidirectional: bool = False
    min_len: Optional[int] = None  # packed input, lengths spread evenly over [min_len, seq_len]
    dtype: str = "float32"      # one of DTYPE_NAMES
    device: str = "cpu"         # cpu or cuda

    @property
    def packed(self) -> bool:
        return self.min_len is not None

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def lengths(self) -> list[int]:
        """Sequence lengths, longest first (all seq_len when not packed)."""
        if not self.packed:
            return [self.seq_len] * self.batch
        lo, hi = self.min_len, self.seq_len
        if self.batch == 1:
            return [hi]
        return sorted((round(hi - (hi - lo) * k / (self.batch - 1)) for k in range(self.batch)),
                      reverse=True)

    def batch_sizes(self) -> list[int]:
        """Rows active at each step (torch's PackedSequence.batch_sizes)."""
        lengths = self.lengths()
        return [sum(1 for n in lengths if n > t) for t in range(self.seq_len)]

    @property
    def label(self) -> str:
        s = f"{self.cell} T={self.seq_len} N={self.batch} I={self.input_size} H={self.hidden_size}"
        if self.num_layers > 1:
            s += f" L={self.num_layers}"
        if self.bidirectional:
            s += " bidir"
        if self.packed:
            s += f" packed {self.min_len}-{self.seq_len}"
        if self.dtype != "float32":
            s += f" {self.dtype}"
        return s


@dataclass
class Settings:
    """How to time. Defaults in one place; the CLI and benchmarks/ override some."""

    impls: Sequence[str] = ("rnnkit", "torch", "cell-loop", "reference", "reference-jit",
                            "reference-compile")  # torch-nocudnn is added on GPU
    modes: Sequence[str] = MODES  # inference (no grad) and/or training (forward + backward)
    warmup: int = 2               # untimed calls per implementation before the repeats
    repeats: int = 7              # interleaved samples per implementation
    min_sample_s: float = 0.02    # a sample repeats the call until it lasts at least this long
    check: bool = True            # compare with the float64 reference before timing
    memory: bool = True           # measure peak memory with one extra call
    matmul: bool = True           # time the layer's matrix products alone (the machine's limit)
    seed: int = 0                 # weights and inputs


@dataclass
class Result:
    """One implementation in one mode on one case."""

    case: str
    cell: str
    mode: str
    impl: str
    status: str                   # ok, wrong, error, skipped
    detail: str = ""              # why not ok; or the largest error seen by the check
    median_ms: Optional[float] = None
    min_ms: Optional[float] = None
    max_ms: Optional[float] = None
    q1_ms: Optional[float] = None
    q3_ms: Optional[float] = None
    samples: int = 0
    calls_per_sample: int = 0
    speedup_vs_torch: Optional[float] = None
    gflops: Optional[float] = None          # matrix-product GFLOP/s achieved
    fraction_of_matmul: Optional[float] = None
    peak_mem_mb: Optional[float] = None
    device: str = ""                        # cpu, or the GPU's name
    threads: int = 0                        # torch.get_num_threads() while timing
    cuda_path: str = ""                     # rnnkit on CUDA: which loop its last layer call ran
    shape: dict = field(default_factory=dict)
