"""With torch.use_deterministic_algorithms(True), two identical CPU training runs give bitwise
identical weights (what holds and what does not is written up in docs/reliability.md)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit


@pytest.fixture
def deterministic():
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(was)


class Tagger(torch.nn.Module):
    """A small sequence model: embedding, a recurrent stack with dropout, a linear head."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        extra = {"proj_size": 6} if kind == "LSTM" else {}
        self.embed = torch.nn.Embedding(20, 8)
        self.rnn = getattr(rnnkit, kind)(8, 16, num_layers=2, bidirectional=True, dropout=0.2,
                                         **extra)
        self.cell = {"LSTM": rnnkit.LSTMCell, "GRU": rnnkit.GRUCell, "RNN": rnnkit.RNNCell}[kind](
            2 * (6 if kind == "LSTM" else 16), 12)
        self.head = torch.nn.Linear(12, 5)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.embed(tokens), lengths, enforce_sorted=False)
        out, _ = self.rnn(packed)
        state = self.cell(out.data)
        return self.head(state[0] if isinstance(state, tuple) else state)


def _train(kind: str, steps: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(1234)
    model = Tagger(kind)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(99)
    for _ in range(steps):
        tokens = torch.randint(0, 20, (15, 6), generator=gen)
        lengths = torch.randint(1, 16, (6,), generator=gen)
        logits = model(tokens, lengths)
        target = torch.randint(0, 5, (logits.shape[0],), generator=gen)
        loss = torch.nn.functional.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_two_cpu_training_runs_are_bitwise_identical(deterministic, kind):
    first, second = _train(kind), _train(kind)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), f"{kind}: {name} differs between runs"
    # The runs trained something (the weights moved from their initialisation).
    torch.manual_seed(1234)
    init = Tagger(kind).state_dict()
    assert any(not torch.equal(init[k], first[k]) for k in init if k.startswith("rnn."))
