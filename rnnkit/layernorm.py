"""Layer-normalised LSTM and GRU layers and cells (haste's LayerNormLSTM and LayerNormGRU, after
Ba et al. 2016), on rnnkit's fused kernels.

    a = LN(W_ih x; γ_x) + LN(W_hh h; γ_h) + b_ih + b_hh          (LSTM; gates as torch.nn)
    c' = f ⊙ c + i ⊙ g,   h' = o ⊙ tanh(LN(c'; γ_c, β_c))
    GRU: x_ = LN(W_ih x; γ_x) + b_ih,  h_ = LN(W_hh h; γ_h) + b_hh, then torch.nn's GRU on them

LN normalises a whole row (all gates at once, as haste does). Constructor arguments, forward
signatures, inputs (padded, batch-first, unbatched, PackedSequence) and results are torch.nn's
LSTM/GRU (and cells'), without proj_size. Parameters: torch.nn's (``weight_ih_l0``, ...) plus
    layer_norm_ih_weight_l{k}{_reverse}   γ_x, (G,)        G = 4H (LSTM) or 3H (GRU)
    layer_norm_hh_weight_l{k}{_reverse}   γ_h, (G,)
    layer_norm_c_weight_l{k}{_reverse}    γ_c, (H,)        LSTM only
    layer_norm_c_bias_l{k}{_reverse}      β_c, (H,)        LSTM only
(cells: the same without ``_l{k}``), initialised to γ = 1, β = 0; torch.nn's own parameters are
initialised as torch.nn's. ``from_torch(module)`` builds one from a torch.nn (or rnnkit) LSTM,
GRU or cell: an initialisation with its weights and the norms at identity, not an equivalent
function (normalising changes what the layer computes).

Dtypes as rnnkit.LSTM's: float32 and float64, and bfloat16 and float16 (on the CPU stored as they
come and computed in float32, the normalisations included); under torch.autocast the operators
run in the autocast dtype. The layers also take rnnkit.LSTM's keyword-only options
(``weight_drop``, ``variational_dropout``, ``forget_bias``, ``chrono_init``, ``zoneout`` and, for
LayerNormLSTM, ``zoneout_cell``), with the same meaning; zoneout mixes the states after the
cell's step, so LN(c) normalises the candidate c~ and the next step reads the mixed c.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import layernorm_functional as LF
from .nn import _VARIANTS_DOC, _CellBase, _RNNBase

#: The layer-norm parameters of each mode, (name, width in units of H), in the order of the
#: kernels' norm vector (csrc/common/cells/layernorm_*.h).
_NORMS = {
    "LSTM": (("layer_norm_ih_weight", 4), ("layer_norm_hh_weight", 4), ("layer_norm_c_weight", 1),
             ("layer_norm_c_bias", 1)),
    "GRU": (("layer_norm_ih_weight", 3), ("layer_norm_hh_weight", 3)),
}


def _reset_norm(module: nn.Module, names: list[str]) -> None:
    """Gains to one, shifts to zero."""
    with torch.no_grad():
        for name in names:
            p = getattr(module, name, None)
            if p is not None:
                p.fill_(0.0 if name.startswith("layer_norm_c_bias") else 1.0)


def _copy_from(target: nn.Module, source: nn.Module) -> nn.Module:
    """target with source's torch.nn parameters (the norms stay at identity)."""
    missing, unexpected = target.load_state_dict(source.state_dict(), strict=False)
    if unexpected or any(not k.startswith("layer_norm_") for k in missing):
        raise ValueError(f"from_torch: parameters do not match: missing {missing}, unexpected "
                         f"{unexpected}")
    return target.train(source.training)


# ---- layers -------------------------------------------------------------------------------------
class _LayerNormRNNBase(_RNNBase):
    # The options of _VARIANTS_DOC come through **variants to _RNNBase, which applies them as it
    # does for rnnkit.LSTM/GRU: forget_bias and chrono_init on the bias_ih/bias_hh slices (added
    # after the normalisations, so they act as on the plain cells); weight_drop through
    # _run_params, which masks w_hh and passes a layer's fifth item (here the norms) through.
    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int, bias: bool,
                 batch_first: bool, dropout: float, bidirectional: bool, device, dtype,
                 **variants) -> None:
        super().__init__(mode, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, **variants)
        factory = {"device": device, "dtype": dtype}
        self._norm_names: list[str] = []
        for layer in range(num_layers):
            for suffix in ("", "_reverse")[:2 if bidirectional else 1]:
                for base, width in _NORMS[mode]:
                    name = f"{base}_l{layer}{suffix}"
                    setattr(self, name, nn.Parameter(torch.empty(width * hidden_size, **factory)))
                    self._norm_names.append(name)
        _reset_norm(self, self._norm_names)

    def reset_parameters(self) -> None:
        """torch.nn's parameters uniform in ±1/sqrt(hidden_size) as torch.nn; γ = 1, β = 0."""
        super().reset_parameters()
        _reset_norm(self, getattr(self, "_norm_names", []))

    def _layer_params(self) -> list[LF.NormLayerParams]:
        directions = 2 if self.bidirectional else 1
        out = []
        for layer in range(self.num_layers):
            for suffix in ("", "_reverse")[:directions]:
                names = [f"{base}_l{layer}{suffix}" for base in
                         ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                w_ih, w_hh, b_ih, b_hh = (self._param(n) for n in names)
                norm = tuple(getattr(self, f"{base}_l{layer}{suffix}")
                             for base, _ in _NORMS[self.mode])
                out.append((w_ih, w_hh, b_ih, b_hh, norm))
        return out

    @property
    def all_weights(self) -> list[list[Tensor]]:
        """Parameters grouped per layer and direction: torch.nn's, then the norms'."""
        return [[*(p for p in params[:4] if p is not None), *params[4]]
                for params in self._layer_params()]

    def _layer(self):
        return {"LSTM": LF.layernorm_lstm_layer, "GRU": LF.layernorm_gru_layer}[self.mode]

    def to_torch(self) -> nn.Module:
        raise TypeError(f"{type(self).__name__} has no torch.nn equivalent (torch.nn has no "
                        "layer-normalised recurrent layers)")

    @classmethod
    def from_torch(cls, module: nn.Module):
        """A new layer with the torch.nn parameters of ``module`` (a torch.nn or rnnkit LSTM or
        GRU, as this class) and the norms at γ = 1, β = 0: an initialisation from its weights,
        not the same function."""
        theirs = cls._TORCH
        if not isinstance(module, (theirs, _RNNBase)) or module.mode != theirs.__name__ \
                or isinstance(module, _LayerNormRNNBase):
            raise TypeError(f"{cls.__name__}.from_torch: expected a torch.nn.{theirs.__name__} "
                            f"or rnnkit.{theirs.__name__}, got {type(module).__name__}")
        if getattr(module, "proj_size", 0):
            raise ValueError(f"{cls.__name__}.from_torch: proj_size is not supported (got "
                             f"proj_size={module.proj_size})")
        p = next(module.parameters())
        out = cls(module.input_size, module.hidden_size, module.num_layers, module.bias,
                  module.batch_first, module.dropout, module.bidirectional, device=p.device,
                  dtype=p.dtype)
        return _copy_from(out, module)


def _refuse_proj_size(name: str, proj_size: object) -> None:
    if proj_size:
        raise ValueError(f"{name}: proj_size is not supported by the layer-normalised layers "
                         f"(got proj_size={proj_size!r}); use rnnkit.LSTM for projections")


class LayerNormLSTM(_LayerNormRNNBase):
    """Multi-layer layer-normalised LSTM (haste's LayerNormLSTM), torch.nn.LSTM's interface
    without proj_size.

    input: (L, N, H_in), (N, L, H_in) if batch_first, (L, H_in) unbatched, or a PackedSequence;
    hx: (h_0, c_0), each (D*num_layers, N, H), zeros if None. Returns output (L, N, D*H) and
    (h_n, c_n).
    """

    _TORCH = nn.LSTM

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, weight_drop: float = 0.0,
                 variational_dropout: float = 0.0, forget_bias: float | None = None,
                 chrono_init: int | None = None, zoneout: float = 0.0,
                 zoneout_cell: float | None = None) -> None:
        _refuse_proj_size("LayerNormLSTM", proj_size)
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device, dtype, weight_drop=weight_drop,
                         variational_dropout=variational_dropout, forget_bias=forget_bias,
                         chrono_init=chrono_init, zoneout=zoneout, zoneout_cell=zoneout_cell)

    def forward(self, input, hx: tuple[Tensor, Tensor] | None = None):
        states = (None, None) if hx is None else tuple(hx)
        if len(states) != 2:
            raise RuntimeError(f"LayerNormLSTM: expects two hidden states, got {len(states)} (hx "
                               "is a tuple (h_0, c_0))")
        out, (h, c) = self._run(input, states)
        return out, (h, c)


class LayerNormGRU(_LayerNormRNNBase):
    """Multi-layer layer-normalised GRU (haste's LayerNormGRU), torch.nn.GRU's interface.

    input as LayerNormLSTM's; hx: (D*num_layers, N, H), zeros if None. Returns output
    (L, N, D*H) and h_n.
    """

    _TORCH = nn.GRU

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, weight_drop: float = 0.0,
                 variational_dropout: float = 0.0, forget_bias: float | None = None,
                 chrono_init: int | None = None, zoneout: float = 0.0, **unexpected) -> None:
        if "proj_size" in unexpected:  # refused even when 0, as torch.nn.GRU does
            raise ValueError(f"LayerNormGRU: proj_size is not supported (got "
                             f"proj_size={unexpected['proj_size']!r}); only rnnkit.LSTM has it")
        if unexpected:
            raise TypeError(f"LayerNormGRU.__init__() got an unexpected keyword argument "
                            f"{next(iter(unexpected))!r}")
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device, dtype, weight_drop=weight_drop,
                         variational_dropout=variational_dropout, forget_bias=forget_bias,
                         chrono_init=chrono_init, zoneout=zoneout)

    def forward(self, input, hx: Tensor | None = None):
        out, (h,) = self._run(input, (hx,))
        return out, h


for _layer_class in (LayerNormLSTM, LayerNormGRU):
    _layer_class.__doc__ += _VARIANTS_DOC


# ---- cells --------------------------------------------------------------------------------------
class _LayerNormCellBase(_CellBase):
    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool, device,
                 dtype) -> None:
        super().__init__(mode, input_size, hidden_size, bias, device, dtype)
        factory = {"device": device, "dtype": dtype}
        self._norm_names = [base for base, _ in _NORMS[mode]]
        for base, width in _NORMS[mode]:
            setattr(self, base, nn.Parameter(torch.empty(width * hidden_size, **factory)))
        _reset_norm(self, self._norm_names)

    def reset_parameters(self) -> None:
        """torch.nn's parameters uniform in ±1/sqrt(hidden_size) as torch.nn; γ = 1, β = 0."""
        super().reset_parameters()
        _reset_norm(self, getattr(self, "_norm_names", []))

    def _norm(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self, name) for name in self._norm_names)

    def to_torch(self) -> nn.Module:
        raise TypeError(f"{type(self).__name__} has no torch.nn equivalent (torch.nn has no "
                        "layer-normalised recurrent cells)")

    @classmethod
    def from_torch(cls, module: nn.Module):
        """A new cell with the parameters of ``module`` (a torch.nn or rnnkit cell of this kind)
        and the norms at γ = 1, β = 0: an initialisation, not the same function."""
        theirs = cls._TORCH
        if type(module).__name__ != theirs.__name__ or not isinstance(module, (theirs, _CellBase)):
            raise TypeError(f"{cls.__name__}.from_torch: expected a torch.nn.{theirs.__name__} "
                            f"or rnnkit.{theirs.__name__}, got {type(module).__name__}")
        p = next(module.parameters())
        out = cls(module.input_size, module.hidden_size, module.bias, device=p.device,
                  dtype=p.dtype)
        return _copy_from(out, module)


class LayerNormLSTMCell(_LayerNormCellBase):
    """One step of LayerNormLSTM. input: (N, H_in) or (H_in,); hx: (h, c), each (N, H) or (H,),
    zeros if None. Returns (h', c')."""

    _TORCH = nn.LSTMCell
    _STATES = 2

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__("LSTM", input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None):
        states = (None, None) if hx is None else tuple(hx)
        x, (h, c), batched = self._prepare(input, states)
        h, c = LF.layernorm_lstm_cell(x, (h, c), self.weight_ih, self.weight_hh, self.bias_ih,
                                      self.bias_hh, self._norm())
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))


class LayerNormGRUCell(_LayerNormCellBase):
    """One step of LayerNormGRU. input: (N, H_in) or (H_in,); hx: (N, H) or (H,), zeros if None.
    Returns h'."""

    _TORCH = nn.GRUCell

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__("GRU", input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        x, (h,), batched = self._prepare(input, (hx,))
        y = LF.layernorm_gru_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih,
                                  self.bias_hh, self._norm())
        return y if batched else y.squeeze(0)
