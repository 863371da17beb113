"""Bad input gets an error that names what was expected and what came, never a crash."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkit

ops = torch.ops.rnnkit


def _raises_like_torch(theirs, ours, call, match):
    """Both raise; ours with the exception type torch.nn uses and a message matching `match`."""
    with pytest.raises(Exception) as torch_error:
        call(theirs)
    with pytest.raises(type(torch_error.value), match=match):
        call(ours)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_layer_wrong_feature_size(kind):
    theirs = getattr(torch.nn, kind)(4, 6)
    _raises_like_torch(theirs, rnnkit.from_torch(theirs), lambda m: m(torch.randn(3, 2, 5)),
                       r"input_size. Expected 4, got 5 \(input of shape \(3, 2, 5\)\)")


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("ndim", [1, 4])
def test_layer_wrong_ndim(kind, ndim):
    theirs = getattr(torch.nn, kind)(4, 6)
    x = torch.randn(*([2] * (ndim - 1)), 4)
    _raises_like_torch(theirs, rnnkit.from_torch(theirs), lambda m: m(x),
                       f"Expected input to be 2D or 3D, got {ndim}D")


def test_layer_wrong_hidden_shape():
    theirs = torch.nn.GRU(4, 6, num_layers=2)
    hx = torch.randn(2, 3, 7)
    _raises_like_torch(theirs, rnnkit.from_torch(theirs), lambda m: m(torch.randn(5, 3, 4), hx),
                       r"^GRU: Expected hidden size \(2, 3, 6\), got \[2, 3, 7\] \(hx is h_0: "
                       r"\(num_layers \* num_directions, batch, hidden_size\) = \(2 \* 1, 3, 6\)\)$")


def test_lstm_wrong_cell_state_shape():
    theirs = torch.nn.LSTM(4, 6)
    hx = (torch.randn(1, 3, 6), torch.randn(1, 2, 6))
    _raises_like_torch(theirs, rnnkit.from_torch(theirs), lambda m: m(torch.randn(5, 3, 4), hx),
                       r"Expected hidden\[1\] size \(1, 3, 6\), got \[1, 2, 6\] \(hx\[1\] is c_0: "
                       r"\(num_layers \* num_directions, batch, hidden_size\) = \(1 \* 1, 3, 6\)\)")


def test_lstm_projection_state_shape():
    m = rnnkit.LSTM(4, 6, proj_size=2)
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size \(1, 3, 2\), got \[1, 3, 6\] "
                       r"\(hx\[0\] is h_0: \(num_layers \* num_directions, batch, proj_size\) = "
                       r"\(1 \* 1, 3, 2\)\)"):
        m(torch.randn(5, 3, 4), (torch.randn(1, 3, 6), torch.randn(1, 3, 6)))


def test_batched_input_with_unbatched_state():
    m = rnnkit.RNN(4, 6)
    with pytest.raises(RuntimeError, match=r"For batched 3-D input, hx should also be 3-D but got 2-D "
                       r"tensor \(hx of shape \(1, 6\)\)"):
        m(torch.randn(5, 3, 4), torch.randn(1, 6))


def test_dtype_mismatch():
    theirs = torch.nn.LSTM(4, 6)
    _raises_like_torch(theirs, rnnkit.from_torch(theirs),
                       lambda m: m(torch.randn(5, 3, 4, dtype=torch.float64)),
                       r"^RNN input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)\. "
                       r"Convert input: input\.to\(torch.float32\), or convert model: "
                       r"model\.to\(torch.float64\) \(in LSTM\)$")


def test_state_dtype_mismatch():
    m = rnnkit.GRU(4, 6)
    with pytest.raises(RuntimeError, match="Input and hidden tensors are not the same dtype, found input "
                       "tensor with torch.float32 and hidden tensor with torch.float64 .hx .h_0. "
                       "should have the input's dtype."):
        m(torch.randn(5, 3, 4), torch.zeros(1, 3, 6, dtype=torch.float64))


def test_device_mismatch():
    m = rnnkit.GRU(4, 6)
    with pytest.raises(RuntimeError, match="Input and parameter tensors are not at the same device, found "
                       "input tensor at meta and parameter tensor at cpu"):
        m(torch.randn(5, 3, 4, device="meta"))


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integer_input(dtype):
    m = rnnkit.LSTM(4, 6)
    with pytest.raises(ValueError, match=f"expected a floating-point input .float32, float64, float16 or bfloat16., got {dtype}"):
        m(torch.ones(5, 3, 4, dtype=dtype))


def test_not_a_tensor():
    with pytest.raises((TypeError, AttributeError)):
        rnnkit.LSTM(4, 6)([[1.0] * 4])


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_errors(kind):
    theirs = getattr(torch.nn, kind)(4, 6)
    ours = rnnkit.from_torch(theirs)
    _raises_like_torch(theirs, ours, lambda m: m(torch.randn(2, 3, 4)), "Expected input to be 1D or 2D, got 3D")
    with pytest.raises(RuntimeError, match=r"input has inconsistent input_size: got 5 expected 4 "
                       r"\(input of shape \(3, 5\)\)"):
        ours(torch.randn(3, 5))
    bad = torch.randn(2, 6)
    label = r"hx\[0\] \(h\)" if kind == "LSTMCell" else "hx"
    with pytest.raises(RuntimeError, match=r"Input batch size 3 doesn't match hidden0 batch size 2 "
                       rf"\({label} of shape \(2, 6\), expected \(3, 6\)\)"):
        ours(torch.randn(3, 4), (bad, bad) if kind == "LSTMCell" else bad)


def test_constructor_errors():
    with pytest.raises(ValueError, match="proj_size has to be smaller than hidden_size"):
        rnnkit.LSTM(4, 6, proj_size=6)
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
        rnnkit.nn._RNNBase("GRU", 4, 6, proj_size=2)
    with pytest.raises(ValueError, match=r"dropout should be a number in range \[0, 1\]"):
        rnnkit.GRU(4, 6, dropout=1.5)
    with pytest.raises(ValueError, match="Unknown nonlinearity 'sigmoid'"):
        rnnkit.RNN(4, 6, nonlinearity="sigmoid")
    with pytest.raises(TypeError, match="hidden_size should be of type int, got: float"):
        rnnkit.LSTM(4, 6.0)
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        rnnkit.LSTM(4, 0)


# ---- the operators' own checks (what a direct caller of torch.ops.rnnkit hits) ----------------
def _lstm_args(T=3, N=2, I=4, H=5):
    return [torch.randn(T, N, I), None, torch.zeros(N, H), torch.zeros(N, H), torch.randn(4 * H, I),
            torch.randn(4 * H, H), None, None, None, False]


@pytest.mark.parametrize("change,match", [
    ({0: torch.randn(3, 2, 7)}, r"expected input with 4 features .w_ih is \[G, I\] = \[20, 4\]., got 7"),
    ({2: torch.zeros(3, 5)}, r"expected h0 \(N, R\) of shape \[2, 5\], got \[3, 5\]"),
    ({3: torch.zeros(2, 6)}, r"expected c0 \(N, H\) of shape \[2, 5\], got \[2, 6\]"),
    ({4: torch.randn(19, 4)}, r"expected w_ih with a multiple of 4 rows .4 gates per hidden unit., got 19"),
    ({5: torch.randn(20, 4)}, r"expected w_hh \(G, R\) of shape \[20, 5\], got \[20, 4\]"),
    ({6: torch.randn(21)}, r"expected b_ih \(G\) of shape \[20\], got \[21\]"),
    ({2: torch.zeros(2, 5, dtype=torch.float64)}, "expected h0 to have dtype Float .the dtype of input., got Double"),
    ({0: torch.randn(6, 4), 1: torch.tensor([2, 3, 1])}, r"non-increasing batch_sizes .* batch_sizes\[0\] = 2 < batch_sizes\[1\] = 3"),
    ({0: torch.randn(3, 4), 1: torch.tensor([2, 1, 0])}, r"every batch size to be positive, got batch_sizes\[2\] = 0"),
    ({0: torch.randn(9, 4), 1: torch.tensor([2, 2, 2])}, "packed input has 9 rows but batch_sizes add up to 6"),
    ({0: torch.randn(6, 4), 1: torch.tensor([2.0, 2.0, 2.0])}, "expected batch_sizes as a 1-D int64 tensor, got 1-D Float"),
    ({0: torch.ones(3, 2, 4, dtype=torch.int32)}, "expected input of dtype float32, float64, float16 or bfloat16 on device cpu, got Int"),
    ({0: torch.randn(3, 2, 4, dtype=torch.bfloat16)}, "expected h0 to have dtype BFloat16 .the dtype of input., got Float"),
])
def test_operator_checks(change, match):
    args = _lstm_args()
    for k, v in change.items():
        args[k] = v
    with pytest.raises(RuntimeError, match=match):
        ops.lstm(*args)


def test_rnn_operator_rejects_unknown_nonlinearity():
    x, h = torch.randn(2, 1, 3), torch.zeros(1, 4)
    with pytest.raises(RuntimeError, match="expected nonlinearity 'tanh' or 'relu', got 'gelu'"):
        ops.rnn(x, None, h, torch.randn(4, 3), torch.randn(4, 4), None, None, "gelu", False)


def test_backward_operator_checks_gradient_shapes():
    out, h, c, ws = ops.lstm(*_lstm_args())
    with pytest.raises(RuntimeError, match=r"expected grad_output of shape \[3, 2, 5\], got \[3, 2, 4\]"):
        ops.lstm_backward(torch.randn(3, 2, 4), None, None, *_lstm_args()[:2], *_lstm_args()[2:6],
                          None, out, ws, False)


# ---- torch.nn's checks beyond its module_db (tests/library/test_module_db.py walks that) ---------------
@pytest.mark.parametrize("kind", ["GRU", "RNN"])
@pytest.mark.parametrize("proj_size", [0, 2])
def test_proj_size_only_for_lstm(kind, proj_size):
    """torch.nn refuses the keyword itself, even proj_size=0, with a ValueError."""
    with pytest.raises(ValueError, match=rf"^proj_size argument is only supported for LSTM, not RNN "
                       rf"or GRU \({kind} got proj_size={proj_size}\)$"):
        getattr(rnnkit, kind)(4, 6, proj_size=proj_size)
    with pytest.raises(TypeError, match=f"{kind}.__init__.. got an unexpected keyword argument 'foo'"):
        getattr(rnnkit, kind)(4, 6, foo=1)


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1, but "
                      "got dropout=0.5 and num_layers=1") as caught:
        rnnkit.LSTM(4, 6, dropout=0.5)
    assert caught[0].filename == __file__  # points at the caller, as torch.nn's does


def test_packed_unsorted_state_with_too_many_sequences():
    """A state for 5 sequences with a packed batch of 3: torch.nn's permutation picks 3 of the 5
    rows and runs; rnnkit checks the shape before permuting and refuses."""
    packed = pack_padded_sequence(torch.randn(5, 3, 4), torch.tensor([2, 5, 3]),
                                  enforce_sorted=False)
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(1, 3, 6\), got \[1, 5, 6\]"):
        rnnkit.GRU(4, 6)(packed, torch.zeros(1, 5, 6))


def test_packed_data_must_be_2d():
    packed = PackedSequence(torch.randn(5, 3, 4), torch.tensor([3, 2]))
    _raises_like_torch(torch.nn.GRU(4, 6), rnnkit.GRU(4, 6), lambda m: m(packed),
                       r"^GRU: input must have 2 dimensions, got 3 \(the data of a PackedSequence "
                       r"is \(P, H_in\)\)$")


def test_lstm_state_count():
    x, h = torch.randn(5, 3, 4), torch.zeros(1, 3, 6)
    with pytest.raises(RuntimeError, match=r"^LSTM: lstm expects two hidden states, got 3 "
                       r"\(hx is a tuple \(h_0, c_0\)\)$"):
        rnnkit.LSTM(4, 6)(x, (h, h, h))
    theirs = torch.nn.LSTMCell(4, 6)
    _raises_like_torch(theirs, rnnkit.from_torch(theirs), lambda m: m(torch.randn(3, 4), (h[0],)),
                       r"^LSTMCell: lstm_cell expects two hidden states, got 1 \(hx is a tuple "
                       r"\(h, c\)\)$")


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_dtype_and_device_mismatch(kind):
    """torch.nn's cells raise RuntimeError for these (from ATen); so does rnnkit, with words."""
    theirs = getattr(torch.nn, kind)(4, 6)
    ours = rnnkit.from_torch(theirs)
    _raises_like_torch(theirs, ours, lambda m: m(torch.randn(3, 4, dtype=torch.float64)),
                       r"Input and parameter tensors are not the same dtype, found input tensor "
                       r"with torch.float64 and parameter tensor with torch.float32 \(convert the "
                       r"input: input\.to\(torch.float32\), or the module: "
                       r"module\.to\(torch.float64\)\)$")
    _raises_like_torch(theirs, ours, lambda m: m(torch.ones(3, 4, dtype=torch.int64)),
                       r"found input tensor with torch.int64 .*; expected a floating-point "
                       r"input \(float32, float64, float16 or bfloat16\), got "
                       r"torch.int64$")
    def states(h):
        return (h, h) if kind == "LSTMCell" else h

    label = r"hx\[0\] \(h\)" if kind == "LSTMCell" else "hx"
    h = torch.zeros(3, 6, dtype=torch.float64)
    _raises_like_torch(theirs, ours, lambda m: m(torch.randn(3, 4), states(h)),
                       r"Input and hidden tensors are not the same dtype, found input tensor with "
                       rf"torch.float32 and hidden tensor with torch.float64 \({label} should have "
                       r"the input's dtype\)$")
    h = torch.zeros(3, 6, device="meta")
    with pytest.raises(RuntimeError, match=r"Input and hidden tensors are not at the same device, "
                       r"found input tensor at cpu and hidden tensor at meta "
                       rf"\({label} should be on the input's device\)$"):
        ours(torch.randn(3, 4), states(h))
