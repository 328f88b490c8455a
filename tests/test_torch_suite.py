"""PyTorch's own RNN test material, run against gated's ``variant="-"`` modules and compared with torch.nn.

Three sources, ported (not copied) from PyTorch:

1. ``torch.testing._internal.common_modules.module_db``: the ModuleInfo entries of ``nn.LSTM``,
   ``nn.GRU``, ``nn.LSTMCell`` and ``nn.GRUCell`` (their sample inputs, ``reference_fn`` and
   ``module_error_inputs_func``), driven the way ``test/test_modules.py`` drives them
   (test_forward, test_factory_kwargs, test_repr, test_pickle, test_save_load,
   test_non_contiguous_tensors, test_grad, test_gradgrad, test_memory_format,
   test_if_train_and_eval_modes_differ, test_device_ctx_init, test_errors, test_to, test_to_empty).
   Every sample is also run through ``torch.nn`` with the same weights, and the outputs, final
   states and the gradients of the inputs, states and every parameter must agree.
2. ``test/test_nn.py``'s RNN tests (TestNN and TestNNDeviceType), ported case by case.
3. ``test/nn/test_packed_sequence.py``: the packing utilities fed through the modules.

Every sequence-module case runs on ``fused_cpu``, every other one on ``reference`` and every third
one on ``auto`` as well (which resolves to ``fused_cpu`` for these CPU calls; its resolution has its own
tests, tests/test_call_path.py; cells have no backend). The modules are always built with ``variant="-"`` (the library's
default is ``"UR"``). Cases of torch's that cannot apply are listed in ``SKIPPED`` below, each
with its reason, and appear as skipped tests.
"""

from __future__ import annotations

import copy
import io
import itertools
import pickle
import re
import warnings
from functools import partial

import pytest
import torch
import torch.nn.utils.rnn as rnn_utils
from torch import nn
from torch.nn.utils.rnn import PackedSequence

pytest.importorskip("expecttest")  # torch.testing._internal imports it
_flags = torch.backends.__dict__.get("__allow_nonbracketed_mutation_flag", True)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "Fail to import hypothesis" (ImportWarning; the suite errors on warnings)
    from torch.testing._internal import common_modules as cm  # noqa: E402
    from torch.testing._internal.common_modules import ModuleErrorEnum, module_db  # noqa: E402
    from torch.testing._internal.common_utils import freeze_rng_state, gradcheck, gradgradcheck  # noqa: E402
# common_utils freezes torch.backends' global flags at import; give the rest of the suite its default back
torch.backends.__dict__["__allow_nonbracketed_mutation_flag"] = _flags

import gated  # noqa: E402

# torch's own warning (once per process) for float32 LSTMs with projections on CPU
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN:UserWarning")

GATED = {nn.LSTM: gated.LSTM, nn.GRU: gated.GRU, nn.LSTMCell: gated.LSTMCell, nn.GRUCell: gated.GRUCell}
INFOS = {info.module_cls.__name__: info for info in module_db if info.module_cls in GATED}
SEQ = ("LSTM", "GRU")
BACKENDS = ("reference", "fused_cpu", "auto")
DTYPES = {"f64": torch.float64, "f32": torch.float32}


def tol(dtype):
    return {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}


def make_gated(torch_cls, *args, backend=None, **kwargs):
    """The gated twin of ``torch_cls(*args, **kwargs)`` (variant "-", and ``backend`` for sequence modules)."""
    extra = {"variant": "-"}
    if torch_cls in (nn.LSTM, nn.GRU) and backend is not None:
        extra["backend"] = backend
    return GATED[torch_cls](*args, **kwargs, **extra)


def twins(torch_cls, *args, backend=None, dtype=torch.float64, **kwargs):
    """(torch module, gated module) with the same constructor args and torch's weights."""
    ref = torch_cls(*args, **kwargs).to(dtype)
    ours = make_gated(torch_cls, *args, backend=backend, **kwargs).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.fixture(autouse=True)
def _one_thread(request):
    """Most cases are tiny (H <= 6): on a loaded 2-core machine intra-op threads only add
    scheduling waits (10-100x slower), so they run on one thread. The tests in DEFAULT_THREADS
    (torch's larger shapes: H = 20-100, B up to 32) keep torch's default thread count, so the
    fused kernels' multi-threaded paths are exercised too."""
    if request.function.__name__ in DEFAULT_THREADS:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


DEFAULT_THREADS = {"test_RNN_dropout_state", "test_rnn_initial_hidden_state",
                   "test_projections_lstm_initial_hidden_state", "test_weight_tying", "test_rnn_weight_norm"}


# ----------------------------------------------------------------------------------------------
# sample inputs from module_db
# ----------------------------------------------------------------------------------------------


def _lstm_packed_samples(dtype, requires_grad):
    # module_db has PackedSequence samples for GRU (with_packed_sequence=True) only; the same two
    # packed inputs, built with module_db's own make_packed_sequence, for every LSTM configuration.
    make_input = partial(cm.make_tensor, device="cpu", dtype=dtype, requires_grad=requires_grad)
    out = []
    for b, b_f, bidir, proj in itertools.product((False, True), (False, True), (False, True), (0, 2)):
        kw = dict(input_size=2, hidden_size=3, num_layers=2, proj_size=proj, batch_first=b_f, bias=b,
                  bidirectional=bidir)
        for shape, lengths in (((5, 2, 2), [5, 3]), ((5, 5, 2), [5, 3, 3, 2, 2])):
            out.append(cm.ModuleInput(constructor_input=cm.FunctionInput(**kw),
                                      forward_input=cm.FunctionInput(
                                          cm.make_packed_sequence(make_input(shape), torch.tensor(lengths)))))
    return out


def samples(name, dtype, training, requires_grad=True):
    """module_db's samples for ``name`` (GRU with its PackedSequence samples; LSTM plus packed ones)."""
    info = INFOS[name]
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        extra = {"with_packed_sequence": True} if name == "GRU" else {}
        out = list(info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=requires_grad,
                                           training=training, **extra))
        if name == "LSTM":
            out += _lstm_packed_samples(dtype, requires_grad)
    return out


def _is_packed(x):
    return isinstance(x, PackedSequence)


def describe(s) -> str:
    kw = s.constructor_input.kwargs
    args = s.constructor_input.args
    parts = [str(a) for a in args]
    short = {"input_size": "I", "hidden_size": "H", "num_layers": "L", "batch_first": "bf", "bias": "bias",
             "bidirectional": "bi", "proj_size": "proj"}
    for k, v in kw.items():
        if k in ("input_size", "hidden_size", "num_layers"):
            parts.append(f"{short[k]}{v}")
        elif isinstance(v, bool):
            if v:
                parts.append(short.get(k, k))
        else:
            parts.append(f"{short.get(k, k)}{v}")
    fa = s.forward_input.args
    if _is_packed(fa[0]):
        parts.append(f"packed{fa[0].batch_sizes.tolist()}")
    else:
        parts.append("x" + "x".join(map(str, fa[0].shape)))
    if len(fa) > 1:
        parts.append("hx")
    return "-".join(parts)


def _sample_ids(name):
    return [describe(s) for s in samples(name, torch.float64, True, requires_grad=False)]


SAMPLE_IDS = {name: _sample_ids(name) for name in INFOS}


def _cases(names, dtypes_training=(("f64", True), ("f64", False), ("f32", True)), backends=True, every=1):
    out = []
    for name in names:
        for dt, training in dtypes_training:
            for idx, desc in enumerate(SAMPLE_IDS[name]):
                if every > 1 and name in SEQ and idx % every != (idx // every) % every:
                    continue  # a spread: alternates samples with and without hx, and both packed shapes
                for b in (BACKENDS if (backends and name in SEQ) else (None,)):
                    if b == "auto" and idx % 3:  # it resolves to fused_cpu here: a third of the samples
                        continue
                    if b == "reference" and idx % 2:  # the oracle itself (tested against torch.nn and the
                        continue  # paper's equations elsewhere too): every other sample
                    bid = f"-{b}" if b else ""
                    out.append(pytest.param(name, dt, training, idx, b,
                                            id=f"{name}-{dt}-{'train' if training else 'eval'}-{idx:02d}-{desc}{bid}"))
    return out


# ----------------------------------------------------------------------------------------------
# running a module on (cloned) inputs and comparing with torch
# ----------------------------------------------------------------------------------------------


def clone_inputs(obj):
    """Fresh leaves with the same values and requires_grad (PackedSequence: its data)."""
    if isinstance(obj, PackedSequence):
        return PackedSequence(clone_inputs(obj.data), obj.batch_sizes, obj.sorted_indices, obj.unsorted_indices)
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone().requires_grad_(obj.requires_grad)
    if isinstance(obj, (tuple, list)):
        return type(obj)(clone_inputs(o) for o in obj)
    return obj


def leaves(obj):
    if isinstance(obj, PackedSequence):
        return leaves(obj.data)
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.requires_grad else []
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in leaves(o)]
    return []


def flat_outputs(out):
    """Output tensors in order; a PackedSequence contributes its data."""
    if isinstance(out, PackedSequence):
        return [out.data]
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in flat_outputs(o)]


def packed_meta(out):
    if isinstance(out, PackedSequence):
        return [(out.batch_sizes, out.sorted_indices, out.unsorted_indices)]
    if isinstance(out, (tuple, list)):
        return [m for o in out for m in packed_meta(o)]
    return []


def cotangents(outs, seed=7):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in outs]


def compare(ref, ours, args, dtype, kwargs=None, check_grads=True, what=""):
    """Run ``ref`` and ``ours`` on clones of ``args``; outputs, states, input/state grads and the
    grad of every parameter (matched by name) must agree."""
    kwargs = kwargs or {}
    r_args, o_args = clone_inputs(args), clone_inputs(args)
    with freeze_rng_state():
        r_out = ref(*r_args, **kwargs)
    with freeze_rng_state():
        o_out = ours(*o_args, **kwargs)
    t = tol(dtype)
    assert type(o_out) is type(r_out) or (isinstance(o_out, tuple) and isinstance(r_out, tuple)), (type(o_out), type(r_out))
    r_flat, o_flat = flat_outputs(r_out), flat_outputs(o_out)
    assert len(o_flat) == len(r_flat), f"{what}: {len(o_flat)} outputs, torch gives {len(r_flat)}"
    for k, (a, b) in enumerate(zip(o_flat, r_flat)):
        assert a.shape == b.shape, f"{what}: output {k} has shape {tuple(a.shape)}, torch {tuple(b.shape)}"
        assert a.dtype == b.dtype, f"{what}: output {k} dtype {a.dtype}, torch {b.dtype}"
        torch.testing.assert_close(a, b, **t, msg=lambda m, k=k: f"{what}: output {k}: {m}")
    for (ab, asi, aui), (bb, bsi, bui) in zip(packed_meta(o_out), packed_meta(r_out)):
        assert torch.equal(ab, bb)
        for x, y in ((asi, bsi), (aui, bui)):
            assert (x is None) == (y is None) and (x is None or torch.equal(x, y))
    if not check_grads:
        return r_out, o_out
    r_leaves, o_leaves = leaves(r_args), leaves(o_args)
    names = [n for n, _ in ref.named_parameters()]
    o_params = dict(ours.named_parameters())
    assert set(o_params) == set(names), f"parameter names {sorted(o_params)} != torch's {sorted(names)}"
    r_diff = [o for o in r_flat if o.requires_grad]
    o_diff = [o for o in o_flat if o.requires_grad]
    assert len(o_diff) == len(r_diff), f"{what}: {len(o_diff)} differentiable outputs, torch {len(r_diff)}"
    if not r_diff:
        return r_out, o_out
    gs = cotangents(r_diff)
    r_inputs = [*r_leaves, *(p for _, p in ref.named_parameters())]
    o_inputs = [*o_leaves, *(o_params[n] for n in names)]
    r_grads = torch.autograd.grad(r_diff, r_inputs, gs, allow_unused=True)
    o_grads = torch.autograd.grad(o_diff, o_inputs, gs, allow_unused=True)
    labels = [f"input leaf {k}" for k in range(len(r_leaves))] + names
    for label, a, b, x in zip(labels, o_grads, r_grads, r_inputs):
        a = torch.zeros_like(x) if a is None else a
        b = torch.zeros_like(x) if b is None else b
        assert a.shape == b.shape, f"{what}: grad of {label}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
        torch.testing.assert_close(a, b, **t, msg=lambda m, label=label: f"{what}: grad of {label}: {m}")
    return r_out, o_out


def build(name, s, dtype, training, backend):
    args, kwargs = s.constructor_input.args, s.constructor_input.kwargs
    torch_cls = INFOS[name].module_cls
    ref, ours = twins(torch_cls, *args, backend=backend, dtype=dtype, **kwargs)
    ref.train(training)
    ours.train(training)
    return ref, ours


# ----------------------------------------------------------------------------------------------
# 1. module_db samples: forward + every gradient against torch.nn, and reference_fn
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,dt,training,idx,backend", _cases(list(INFOS), (("f64", True), ("f32", False))))
def test_module_db_matches_torch(name, dt, training, idx, backend):
    dtype = DTYPES[dt]
    s = samples(name, dtype, training)[idx]
    ref, ours = build(name, s, dtype, training, backend)
    compare(ref, ours, s.forward_input.args, dtype, s.forward_input.kwargs, what=describe(s))


@pytest.mark.parametrize("name,dt,training,idx,backend", _cases(list(INFOS), (("f64", True),)))
def test_module_db_forward_reference_fn(name, dt, training, idx, backend):
    """test_modules.py::test_forward: output equals the sample's reference_fn; then ``.float()`` /
    ``.double()`` keep working and convert every parameter."""
    dtype = DTYPES[dt]
    s = samples(name, dtype, training, requires_grad=False)[idx]
    _, m = build(name, s, dtype, training, backend)
    args, kwargs = s.forward_input.args, s.forward_input.kwargs
    with freeze_rng_state():
        out = m(*args, **kwargs)
        if s.reference_fn is not None and not _is_packed(args[0]):
            expected = s.reference_fn(m, *args, **kwargs)
            torch.testing.assert_close(flat_outputs(out), flat_outputs(expected), **tol(dtype))
    getattr(m, {torch.float32: "float", torch.float64: "double"}[dtype])()
    m(*args, **kwargs)
    for n, p in m.named_parameters():
        assert p.dtype == dtype and p.device.type == "cpu", n


@pytest.mark.parametrize("name,dt,training,idx,backend", _cases(list(INFOS), (("f64", True),), backends=False))
def test_module_db_state_dict_both_ways(name, dt, training, idx, backend):
    """torch's names and shapes exactly: gated.state_dict() loads strictly into torch.nn and back,
    and under one seed ``variant="-"`` draws torch's initial weights."""
    s = samples(name, torch.float64, training, requires_grad=False)[idx]
    args, kwargs = s.constructor_input.args, s.constructor_input.kwargs
    torch_cls = INFOS[name].module_cls
    torch.manual_seed(3)
    ref = torch_cls(*args, **kwargs)
    torch.manual_seed(3)
    ours = make_gated(torch_cls, *args, **kwargs)
    r_sd, o_sd = ref.state_dict(), ours.state_dict()
    assert list(o_sd) == list(r_sd)
    for k in r_sd:
        assert o_sd[k].shape == r_sd[k].shape, k
        torch.testing.assert_close(o_sd[k], r_sd[k], rtol=0, atol=0, msg=lambda m, k=k: f"init of {k}: {m}")
    fresh = torch_cls(*args, **kwargs)
    fresh.load_state_dict(o_sd)  # strict


# ----------------------------------------------------------------------------------------------
# test_modules.py generic tests on the gated classes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(INFOS))
@pytest.mark.parametrize("dt", list(DTYPES))
def test_factory_kwargs(name, dt):
    """test_factory_kwargs: device/dtype reach every parameter and buffer."""
    dtype = DTYPES[dt]
    for s in samples(name, dtype, True, requires_grad=False):
        args, kwargs = s.constructor_input.args, dict(s.constructor_input.kwargs)
        m = make_gated(INFOS[name].module_cls, *args, **kwargs, device="cpu", dtype=dtype)
        for n, t in [*m.named_parameters(), *m.named_buffers()]:
            assert t.device == torch.device("cpu") and t.dtype == dtype, (describe(s), n, t.dtype)


@pytest.mark.parametrize("name", list(INFOS))
def test_device_ctx_init(name):
    """test_device_ctx_init: built under ``torch.device('meta')`` the parameters are meta tensors
    with the metadata (shape, dtype, strides) of the CPU-built ones."""
    for s in samples(name, torch.float32, True, requires_grad=False):
        args, kwargs = s.constructor_input.args, s.constructor_input.kwargs
        m_cpu = make_gated(INFOS[name].module_cls, *args, **kwargs)
        with torch.device("meta"):
            m = make_gated(INFOS[name].module_cls, *args, **kwargs)
        pairs = list(zip(m.named_parameters(), m_cpu.named_parameters()))
        assert len(pairs) == len(list(m_cpu.parameters()))
        for (n1, p_meta), (n2, p_cpu) in pairs:
            assert n1 == n2 and p_meta.is_meta
            assert (p_meta.shape, p_meta.dtype, p_meta.stride()) == (p_cpu.shape, p_cpu.dtype, p_cpu.stride())


def _repr_tokens(module):
    r = repr(module)
    inner = r[r.index("(") + 1: r.rindex(")")]
    return [t.strip() for t in inner.split(",") if t.strip()]


@pytest.mark.parametrize("name", list(INFOS))
def test_repr(name):
    """test_repr (repr/str work) and, for a drop-in, torch's repr fields: every field torch prints
    (num_layers, bias, batch_first, dropout, bidirectional, proj_size when not default) appears in
    gated's repr, in torch's order, with torch's spelling."""
    cases = [s.constructor_input for s in samples(name, torch.float32, True, requires_grad=False)]
    if name in SEQ:
        cases += [cm.FunctionInput(3, 5, 2, dropout=0.5), cm.FunctionInput(3, 5, num_layers=3, batch_first=True)]
    for ci in cases:
        ref = INFOS[name].module_cls(*ci.args, **ci.kwargs)
        ours = make_gated(INFOS[name].module_cls, *ci.args, **ci.kwargs)
        str(ours)
        want, got = _repr_tokens(ref), _repr_tokens(ours)
        it = iter(got)
        assert all(tok in it for tok in want), f"torch: {ref!r}\ngated: {ours!r}"


@pytest.mark.parametrize("how", ["torch.save", "pickle", "deepcopy"])
@pytest.mark.parametrize("name", list(INFOS))
def test_pickle_and_save_load(name, how):
    """test_pickle / test_save_load: the whole module survives torch.save/torch.load (and
    pickle, deepcopy) with the same outputs; its state_dict survives torch.save and
    ``torch.load(weights_only=True)``."""
    for s in samples(name, torch.float64, True, requires_grad=False):
        _, m = build(name, s, torch.float64, True, "auto" if name in SEQ else None)
        args = s.forward_input.args
        with freeze_rng_state():
            out = m(*args)
        if how == "torch.save":
            buf = io.BytesIO()
            torch.save(m, buf)
            buf.seek(0)
            m2 = torch.load(buf, weights_only=False)
        elif how == "pickle":
            m2 = pickle.loads(pickle.dumps(m))
        else:
            m2 = copy.deepcopy(m)
        assert type(m2) is type(m)
        with freeze_rng_state():
            out2 = m2(*args)
        torch.testing.assert_close(flat_outputs(out2), flat_outputs(out), rtol=0, atol=0)
        sd = m.state_dict()
        buf = io.BytesIO()
        torch.save(sd, buf)
        buf.seek(0)
        sd2 = torch.load(buf, weights_only=True)
        assert list(sd2) == list(sd) and all(torch.equal(sd2[k], sd[k]) for k in sd)


def _make_noncontig(obj):
    # test_modules.py: repeat_interleave along the last dim, then take every other element
    if isinstance(obj, PackedSequence):
        return PackedSequence(_make_noncontig(obj.data), obj.batch_sizes, obj.sorted_indices, obj.unsorted_indices)
    if isinstance(obj, torch.Tensor):
        if obj.dim() == 0:
            return obj
        out = torch.repeat_interleave(obj, 2, dim=-1)[..., ::2].detach()
        out.requires_grad_(obj.requires_grad)
        return out
    if isinstance(obj, (tuple, list)):
        return type(obj)(_make_noncontig(o) for o in obj)
    return obj


@pytest.mark.parametrize("name,dt,training,idx,backend", _cases(list(INFOS), (("f64", True),), every=2))
def test_non_contiguous_tensors(name, dt, training, idx, backend):
    """test_non_contiguous_tensors: non-contiguous inputs, states and grad outputs give the
    contiguous run's outputs and gradients (and those equal torch's)."""
    dtype = DTYPES[dt]
    s = samples(name, dtype, training)[idx]
    ref, ours = build(name, s, dtype, training, backend)
    args = s.forward_input.args
    nc_args = _make_noncontig(clone_inputs(args))
    for a in leaves(nc_args):
        assert a.dim() == 0 or not a.is_contiguous() or a.shape[-1] <= 1 or a.numel() == 0
    compare(ref, ours, nc_args, dtype, what="non-contiguous " + describe(s))
    base_args = clone_inputs(args)
    out = ours(*base_args)
    flat = [o for o in flat_outputs(out) if o.requires_grad]
    gs = cotangents(flat)
    params = list(ours.parameters())
    base = torch.autograd.grad(flat, [*leaves(base_args), *params], gs, allow_unused=True)
    nc_in = _make_noncontig(clone_inputs(args))
    out2 = ours(*nc_in)
    flat2 = [o for o in flat_outputs(out2) if o.requires_grad]
    nc_gs = [_make_noncontig(g) for g in gs]
    got = torch.autograd.grad(flat2, [*leaves(nc_in), *params], nc_gs, allow_unused=True)
    torch.testing.assert_close(flat_outputs(out2), flat_outputs(out), **tol(dtype))
    for a, b in zip(got, base):
        if a is None or b is None:
            assert a is None and b is None or (a if a is not None else b).abs().max() == 0
        else:
            torch.testing.assert_close(a, b, **tol(dtype))


@pytest.mark.parametrize("name,dt,training,idx,backend", _cases(list(INFOS), (("f64", True),), every=2))
def test_memory_format(name, dt, training, idx, backend):
    """test_memory_format (RNN inputs are neither 4-D nor 5-D, so only contiguous_format applies):
    every output and every input/parameter gradient is contiguous, as torch's are, and
    ``module.to(memory_format=...)`` leaves the results unchanged."""
    dtype = DTYPES[dt]
    s = samples(name, dtype, training)[idx]
    ref, ours = build(name, s, dtype, training, backend)
    args = clone_inputs(s.forward_input.args)
    out = ours(*args)
    r_out = ref(*clone_inputs(s.forward_input.args))
    for k, (o, r) in enumerate(zip(flat_outputs(out), flat_outputs(r_out))):
        assert o.is_contiguous() == r.is_contiguous(), f"output {k}: contiguous={o.is_contiguous()}, torch {r.is_contiguous()}"
    flat = [o for o in flat_outputs(out) if o.requires_grad]
    diff_in = [*leaves(args), *ours.parameters()]
    grads = torch.autograd.grad(flat, diff_in, [torch.rand_like(o) for o in flat], allow_unused=True)
    for g in grads:
        assert g is None or g.is_contiguous()
    for fmt in (torch.preserve_format, torch.contiguous_format):
        ours.to(memory_format=fmt)
        out2 = ours(*args)
        torch.testing.assert_close(flat_outputs(out2), flat_outputs(out), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(INFOS))
def test_if_train_and_eval_modes_differ(name):
    """test_if_train_and_eval_modes_differ: with ``training`` deleted, forward reads it only if the
    ModuleInfo says train and eval differ (True for LSTM/GRU, False for the cells)."""
    info = INFOS[name]
    for s in samples(name, torch.float32, True, requires_grad=False):
        _, m = build(name, s, torch.float32, True, "auto" if name in SEQ else None)
        delattr(m, "training")
        try:
            m(*s.forward_input.args)
        except AttributeError as e:
            if "'training'" not in str(e):
                raise
            assert info.train_and_eval_differ, f"{name}'s forward reads self.training but torch's does not"


@pytest.fixture
def _restore_swap():
    old = torch.__future__.get_swap_module_params_on_conversion()
    yield
    torch.__future__.set_swap_module_params_on_conversion(old)


def copy_params(dst, src):
    """``dst``'s parameters := ``src``'s, by name. Not load_state_dict: under
    swap_module_params_on_conversion=True torch's own nn.LSTM cannot load_state_dict either
    ("Cannot swap t1 because it has weakref associated with it")."""
    with torch.no_grad():
        s_params = dict(src.named_parameters())
        for n, p in dst.named_parameters():
            p.copy_(s_params[n])


@pytest.mark.usefixtures("_restore_swap")
@pytest.mark.parametrize("set_grad", [True, False])
@pytest.mark.parametrize("swap", [True, False])
@pytest.mark.parametrize("name", list(INFOS))
def test_to(name, swap, set_grad):
    """test_to: parameters replaced by ``setattr``, then ``module.to(dtype)`` in both swap modes;
    the ids/_cdata rules of torch's test hold, and afterwards the module computes torch's results
    with the new parameters (the module must not keep references to the old ones)."""
    torch.__future__.set_swap_module_params_on_conversion(swap)
    for s in samples(name, torch.float32, True, requires_grad=False)[:6]:
        c_args, c_kwargs = s.constructor_input.args, s.constructor_input.kwargs
        m = make_gated(INFOS[name].module_cls, *c_args, **c_kwargs)
        for n, p in list(m.named_parameters(recurse=False)):
            new_p = nn.Parameter(p.detach().clone().to("cpu", torch.float32) + 0.25)
            setattr(m, n, new_p)
            if set_grad:
                new_p.grad = torch.randn_like(new_p)
        args = s.forward_input.args
        if swap and not set_grad:
            out = m(*args)
            flat_outputs(out)[0].sum().backward()
            m.to(dtype=torch.half)
            m.to(dtype=torch.float32)
        prev = torch.float32
        for dtype_ in (torch.float32, torch.float64):
            p_ids = [id(p) for p in m.parameters()]
            p_cdata = [p._cdata for p in m.parameters()]
            m.to(device="cpu", dtype=dtype_)
            assert all(isinstance(p, nn.Parameter) and p.dtype == dtype_ for p in m.parameters())
            assert [id(p) for p in m.parameters()] == p_ids
            if swap and dtype_ != prev:
                assert all(a != b for a, b in zip(p_cdata, (p._cdata for p in m.parameters())))
            elif not swap:
                assert [p._cdata for p in m.parameters()] == p_cdata
            prev = dtype_
        m.zero_grad()
        ref = INFOS[name].module_cls(*c_args, **c_kwargs).double()
        copy_params(ref, m)
        x = clone_inputs(args)
        x = tuple(a.double() if isinstance(a, torch.Tensor) else
                  (PackedSequence(a.data.double(), a.batch_sizes, a.sorted_indices, a.unsorted_indices)
                   if _is_packed(a) else tuple(t.double() for t in a)) for a in x)
        compare(ref, m, x, torch.float64, what="after .to(float64) " + describe(s))


@pytest.mark.usefixtures("_restore_swap")
@pytest.mark.parametrize("swap", [True, False])
@pytest.mark.parametrize("name", list(INFOS))
def test_to_empty(name, swap):
    """test_to_empty: built on meta, ``to_empty(device='cpu')`` gives CPU Parameters (same ids when
    swapping); after loading torch's weights it computes torch's results."""
    torch.__future__.set_swap_module_params_on_conversion(swap)
    for s in samples(name, torch.float32, True, requires_grad=False)[:4]:
        c_args, c_kwargs = s.constructor_input.args, s.constructor_input.kwargs
        with torch.device("meta"):
            m = make_gated(INFOS[name].module_cls, *c_args, **c_kwargs)
        ids = [id(p) for p in m.parameters()]
        m.to_empty(device="cpu")
        assert all(isinstance(p, nn.Parameter) and p.device.type == "cpu" and p.dtype == torch.float32
                   for p in m.parameters())
        if swap:
            assert [id(p) for p in m.parameters()] == ids
        ref = INFOS[name].module_cls(*c_args, **c_kwargs)
        copy_params(m, ref)
        compare(ref, m, s.forward_input.args, torch.float32, what="after to_empty " + describe(s))


# --- test_grad / test_gradgrad -----------------------------------------------------------------


def _grad_helper(m, s, check, partials):
    """test_modules.py::_test_gradients_helper: ``check`` (torch's gradcheck/gradgradcheck with
    torch's defaults: fast_mode, check_batched_grad) of the total derivative w.r.t. inputs and
    parameters, then (``partials``) w.r.t. each parameter alone."""
    input_args = s.forward_input.args
    params = tuple(m.parameters())
    leaves_all, spec = torch.utils._pytree.tree_flatten(input_args + params)
    # gradcheck takes tensors only: a PackedSequence's None indices stay fixed, outside
    pos = [k for k, t in enumerate(leaves_all) if isinstance(t, torch.Tensor)]

    def fn(*tensors):
        full = list(leaves_all)
        for k, t in zip(pos, tensors):
            full[k] = t
        inputs_and_params = torch.utils._pytree.tree_unflatten(full, spec)
        with freeze_rng_state():
            out = m(*inputs_and_params[:len(input_args)])
        return [t for t in torch.utils._pytree.tree_flatten(out)[0]
                if isinstance(t, torch.Tensor) and t.is_floating_point()]

    def flat():
        return [leaves_all[k] for k in pos]

    assert check(fn, flat(), nondet_tol=0.0)
    if not partials:
        return
    old = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
            assert check(fn, flat(), nondet_tol=0.0)
            p.requires_grad_(False)
    finally:
        for p, o in zip(params, old):
            p.requires_grad_(o)


def _subset(name, every):
    ids = SAMPLE_IDS[name]
    return [i for i in range(len(ids)) if i % every == 0 or "packed" in ids[i] and i % (2 * every) == 1]


def _pick(name, *wanted):
    """The first sample of ``name`` whose id has every token of each ``wanted`` string."""
    ids = SAMPLE_IDS[name]
    def has(d, t):  # a whole "-"-separated token, or a prefix such as "packed[2,"
        return t in d if "[" in t else t in d.split("-")

    return [next(i for i, d in enumerate(ids) if all(has(d, t) for t in w.split())) for w in wanted]


# double backward is the slow one: per sequence module, a plain unbatched sample, a bidirectional one
# with hx, a packed bidirectional one and (LSTM) a projected one with hx
GRADGRAD_SAMPLES = {"LSTM": _pick("LSTM", "x2x2", "bi hx bias", "bi packed[2,", "proj2 bi hx"),
                    "GRU": _pick("GRU", "x3x2", "bi hx bias", "bi packed[2,")}


def _grad_cases(every, partial_first, backends=BACKENDS, chosen=None):
    out = []
    for name in INFOS:
        idxs = (chosen or {}).get(name) or (_subset(name, every) if name in SEQ else range(len(SAMPLE_IDS[name])))
        for idx in idxs:
            for b in (backends if name in SEQ else (None,)):
                partials = idx in partial_first.get(name, ())
                out.append(pytest.param(name, idx, b, partials,
                                        id=f"{name}-{idx:02d}-{SAMPLE_IDS[name][idx]}{'-' + b if b else ''}"
                                           f"{'-partials' if partials else ''}"))
    return out


# full coverage of the total derivative on a spread of samples; torch's per-parameter partial
# derivatives on the first, small, sample of each module (the cost grows with the parameter count)
# ("auto" resolves to one of the two: the resolution has its own tests, tests/test_call_path.py)
_FIRST_PARTIALS = {"LSTM": (0,), "GRU": (0,), "LSTMCell": (0,), "GRUCell": (0,)}


@pytest.mark.parametrize("name,idx,backend,partials", _grad_cases(5, _FIRST_PARTIALS, backends=BACKENDS[:2]))
def test_grad(name, idx, backend, partials):
    s = samples(name, torch.float64, True)[idx]
    _, m = build(name, s, torch.float64, True, backend)
    _grad_helper(m, s, gradcheck, partials)


@pytest.mark.parametrize("name,idx,backend,partials", _grad_cases(0, {}, BACKENDS[:2], GRADGRAD_SAMPLES))
def test_gradgrad(name, idx, backend, partials):
    s = samples(name, torch.float64, True)[idx]
    _, m = build(name, s, torch.float64, True, backend)
    _grad_helper(m, s, gradgradcheck, partials)


# --- test_errors -------------------------------------------------------------------------------


def _error_inputs(name, dtype):
    info = INFOS[name]
    return list(info.module_error_inputs_func(info, device="cpu", dtype=dtype, requires_grad=False, training=True))


def _error_cases():
    out = []
    for name in INFOS:
        for dt in DTYPES:
            for k, e in enumerate(_error_inputs(name, DTYPES[dt])):
                out.append(pytest.param(name, dt, k, id=f"{name}-{dt}-{k:02d}-{e.error_on.name}-{e.error_regex[:40]}"))
    return out


@pytest.mark.parametrize("name,dt,k", _error_cases())
def test_module_db_errors(name, dt, k):
    """test_errors: each of module_db's error inputs raises an instance of torch's exception type
    with a message matching torch's regex (torch's wording is kept: users grep for it)."""
    e = _error_inputs(name, DTYPES[dt])[k]
    mi = e.module_error_input
    c_args, c_kwargs = mi.constructor_input.args, mi.constructor_input.kwargs
    torch_cls = INFOS[name].module_cls
    if e.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
        with pytest.raises(e.error_type, match=e.error_regex):
            torch_cls(*c_args, **c_kwargs)  # the sample is valid for this torch
        with pytest.raises(e.error_type, match=e.error_regex):
            make_gated(torch_cls, *c_args, **c_kwargs)
    else:
        fw = mi.forward_input
        with pytest.raises(e.error_type, match=e.error_regex):
            torch_cls(*c_args, **c_kwargs)(*fw.args, **fw.kwargs)
        m = make_gated(torch_cls, *c_args, **c_kwargs)
        with pytest.raises(e.error_type, match=e.error_regex):
            m(*fw.args, **fw.kwargs)


# ----------------------------------------------------------------------------------------------
# 2. test_nn.py's RNN tests, ported to the gated classes
# ----------------------------------------------------------------------------------------------

SEQ_CLS = {"LSTM": nn.LSTM, "GRU": nn.GRU}
seq_backends = pytest.mark.parametrize("backend", BACKENDS)
seq_modes = pytest.mark.parametrize("mode", list(SEQ_CLS))


def raised(fn):
    """The exception ``fn()`` raises (None if it returns)."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return e
    return None


def assert_raises_like_torch(torch_fn, gated_fn, regex=None):
    """torch raises; gated raises an instance of the same type (and matches ``regex`` if given)."""
    want = raised(torch_fn)
    assert want is not None, "torch does not raise here: the case is wrong"
    got = raised(gated_fn)
    assert got is not None, f"gated does not raise; torch raises {type(want).__name__}: {want}"
    assert isinstance(got, type(want)), (
        f"gated raises {type(got).__mro__[:-2]}: {got}\n  torch raises {type(want).__name__}: {want}")
    if regex is not None:
        assert re.search(regex, str(got)), f"gated's message {str(got)!r} does not match torch's {regex!r}"


# --- TestNN.test_RNN_cell / test_LSTM_cell (+ _forward_zero_hidden_size) -------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_RNN_cell(bias):
    """test_RNN_cell (GRUCell part): six steps feeding the state back, then backward; here the
    values and every gradient are compared with nn.GRUCell."""
    ref, ours = twins(nn.GRUCell, 10, 20, bias=bias, dtype=torch.float64)
    x = torch.randn(3, 10, dtype=torch.float64, requires_grad=True)
    hx0 = torch.randn(3, 20, dtype=torch.float64, requires_grad=True)

    def run(cell, x, hx):
        for _ in range(6):
            hx = cell(x, hx)
        return hx

    compare(_Wrap(run, ref), _Wrap(run, ours), (x, hx0), torch.float64, what="GRUCell x6")


@pytest.mark.parametrize("bias", [True, False])
def test_LSTM_cell(bias):
    """test_LSTM_cell: six LSTMCell steps, backward of (hx + cx).sum(); compared with nn.LSTMCell."""
    ref, ours = twins(nn.LSTMCell, 10, 20, bias=bias, dtype=torch.float64)
    x = torch.randn(3, 10, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, 20, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(3, 20, dtype=torch.float64, requires_grad=True)

    def run(cell, x, hx, cx):
        for _ in range(6):
            hx, cx = cell(x, (hx, cx))
        return hx + cx

    compare(_Wrap(run, ref), _Wrap(run, ours), (x, h0, c0), torch.float64, what="LSTMCell x6")


class _Wrap(nn.Module):
    """A module whose forward is ``fn(inner, *args)``, with ``inner``'s parameter names."""

    def __init__(self, fn, inner):
        super().__init__()
        self.fn, self.inner = fn, inner

    def forward(self, *args):
        return self.fn(self.inner, *args)

    def named_parameters(self, *a, **k):  # the inner module's names, so ``compare`` can match them
        return self.inner.named_parameters(*a, **k)


@pytest.mark.parametrize("cls", [nn.GRUCell, nn.LSTMCell])
def test_RNN_cell_forward_zero_hidden_size(cls):
    """test_RNN_cell_forward_zero_hidden_size: hidden_size=0 is accepted and gives (3, 0) states."""
    x = torch.randn(3, 10)
    hx = torch.randn(3, 0)
    ref, ours = twins(cls, 10, 0, dtype=torch.float32)
    state = (hx, hx) if cls is nn.LSTMCell else hx
    compare(ref, ours, (x, state), torch.float32, what="hidden_size=0")
    for t in flat_outputs(ours(x, state)):
        assert t.shape == torch.Size([3, 0])


def test_RNN_cell_no_broadcasting():
    """test_RNN_cell_no_broadcasting: mismatched batch sizes, hidden sizes or input sizes are
    errors of torch's type (RuntimeError), never broadcast."""
    input_size, hidden_size = 10, 20
    x = torch.randn(3, input_size)
    good = torch.randn(3, hidden_size)
    for bad_x, bad_hx in ((x, torch.randn(1, hidden_size)), (x, torch.randn(3, 1)), (torch.randn(3, 1), good)):
        cases = [(nn.GRUCell, bad_hx)]
        if bad_hx is good:
            cases.append((nn.LSTMCell, (good, good)))
        else:
            cases += [(nn.LSTMCell, (bad_hx, good)), (nn.LSTMCell, (good, bad_hx))]
        for cls, hx in cases:
            ref = cls(input_size, hidden_size)
            ours = make_gated(cls, input_size, hidden_size)
            assert_raises_like_torch(lambda: ref(bad_x, hx), lambda: ours(bad_x, hx))
            assert isinstance(raised(lambda: ours(bad_x, hx)), RuntimeError)


def test_LSTM_cell_forward_input_and_hidden_size():
    """test_LSTM_cell_forward_input_size / _hidden_size: wrong sizes raise (torch's type)."""
    ref, ours = nn.LSTMCell(10, 20), make_gated(nn.LSTMCell, 10, 20)
    hx, cx = torch.randn(3, 20), torch.randn(3, 20)
    assert_raises_like_torch(lambda: ref(torch.randn(3, 11), (hx, cx)), lambda: ours(torch.randn(3, 11), (hx, cx)))
    bad = torch.randn(3, 21)
    x = torch.randn(3, 10)
    assert_raises_like_torch(lambda: ref(x, (bad, cx)), lambda: ours(x, (bad, cx)))
    assert_raises_like_torch(lambda: ref(x, (cx, bad)), lambda: ours(x, (cx, bad)))


@pytest.mark.parametrize("cls", [nn.GRUCell, nn.LSTMCell])
def test_lstmcell_backward_only_one_output_grad(cls):
    """test_lstmcell_backward_only_one_output_grad (onlyCUDA there, device-independent): a
    backward through only h' or only c' works (undefined grads for the other) and equals torch's."""
    for i in range(2 if cls is nn.LSTMCell else 1):
        ref, ours = twins(cls, 2, 3, dtype=torch.float64)
        s = torch.randn(1, 2, dtype=torch.float64, requires_grad=True)
        got = []
        for m in (ref, ours):
            x = s.detach().clone().requires_grad_()
            out = m(x)
            out = out[i] if isinstance(out, tuple) else out
            out.sum().backward()
            assert x.grad is not None and x.grad.abs().sum().item() != 0
            got.append([x.grad, *(p.grad for p in m.parameters())])
        for a, b in zip(*got):
            torch.testing.assert_close(a, b, **tol(torch.float64))


# --- TestNN.test_rnn_args_check / test_projections_lstm_args_check -------------------------------


def _update(shape, dim, size):
    shape = list(shape)
    shape[dim] = size
    return tuple(shape)


def _args_check_cases(proj):
    input_size, hidden_size, num_layers, batch, seq_len, bad = 3, 5, 2, 4, 6, 7
    h_size = 2 if proj else hidden_size
    inp = (seq_len, batch, input_size)
    h = (num_layers, batch, h_size)
    c = (num_layers, batch, hidden_size)
    cases = {
        "input batch": (_update(inp, 1, bad), h, c),
        "hidden batch": (inp, _update(h, 1, bad), _update(c, 1, bad)),
        "input size": (_update(inp, 2, bad), h, c),
        "hidden size": (inp, _update(h, 2, bad), _update(c, 2, bad)),
        "hidden[0]": (inp, _update(h, 0, bad), _update(c, 0, bad)),
    }
    if proj:
        cases.update({
            "h with hidden_size not proj_size": (inp, _update(h, 0, hidden_size), c),
            "h num_layers": (inp, _update(h, 0, bad), c),
            "c num_layers": (inp, h, _update(c, 0, bad)),
        })
    return cases


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
@pytest.mark.parametrize("case", list(_args_check_cases(False)))
def test_rnn_args_check(mode, case):
    """test_rnn_args_check: wrong input batch / hidden batch / input size / hidden size /
    hidden[0] raise RuntimeError (for LSTM with the bad tensor as h and as c)."""
    inp, h, _ = _args_check_cases(False)[case]
    ref = SEQ_CLS[mode](3, 5, 2)
    ours = make_gated(SEQ_CLS[mode], 3, 5, 2)
    x = torch.randn(inp)
    bad = torch.randn(h)
    good = torch.randn(2, 4, 5)
    hiddens = [bad] if mode == "GRU" else ([(bad, bad)] if h == (2, 4, 5) else [(bad, good), (good, bad)])
    for hx in hiddens:
        assert_raises_like_torch(lambda: ref(x, hx), lambda: ours(x, hx))
        assert isinstance(raised(lambda: ours(x, hx)), RuntimeError)


@pytest.mark.parametrize("case", list(_args_check_cases(True)))
def test_projections_lstm_args_check(case):
    """test_projections_lstm_args_check: the same with proj_size=2 (h is (L, B, proj_size))."""
    inp, h, c = _args_check_cases(True)[case]
    ref = nn.LSTM(3, 5, 2, proj_size=2)
    ours = make_gated(nn.LSTM, 3, 5, 2, proj_size=2)
    x, hx = torch.randn(inp), (torch.randn(h), torch.randn(c))
    assert_raises_like_torch(lambda: ref(x, hx), lambda: ours(x, hx))
    assert isinstance(raised(lambda: ours(x, hx)), RuntimeError)


def test_cudnn_forward_exception():
    """test_cudnn_forward_exception (runs on CPU in torch too): torch's messages
    "Expected hidden.*size.*got" and "input.size(-1) must be equal to input_size"."""
    cases = [
        (nn.LSTM, dict(batch_first=True), (torch.zeros(1, 2, 19), torch.zeros(1, 2, 19))),
        (nn.LSTM, dict(batch_first=True, proj_size=10), (torch.zeros(1, 2, 19), torch.zeros(1, 2, 19))),
        (nn.GRU, dict(batch_first=True), torch.zeros(1, 2, 19)),
    ]
    x_wrong, x_right = torch.randn(2, 3, 3), torch.randn(2, 3, 10)
    for cls, kw, hidden in cases:
        ref, ours = cls(10, 20, **kw), make_gated(cls, 10, 20, **kw)
        assert_raises_like_torch(lambda: ref(x_right, hidden), lambda: ours(x_right, hidden), r"Expected hidden.*size.*got")
        assert_raises_like_torch(lambda: ref(x_wrong), lambda: ours(x_wrong), re.escape("input.size(-1) must be equal to input_size"))


# --- initial hidden state, projections ----------------------------------------------------------


@seq_backends
@seq_modes
def test_rnn_initial_hidden_state(mode, backend):
    """test_rnn_initial_hidden_state: hx of zeros equals hx=None (and both equal torch's)."""
    ref, ours = twins(SEQ_CLS[mode], 30, 20, 2, backend=backend, dtype=torch.float32)
    x = torch.randn(10, 32, 30)
    hidden = torch.zeros(2, 32, 20)
    if mode == "LSTM":
        hidden = (hidden, hidden)
    out1, h1 = ours(x, hidden)
    out2, h2 = ours(x)
    torch.testing.assert_close(out1, out2)
    torch.testing.assert_close(h1, h2)
    compare(ref, ours, (x, hidden), torch.float32, check_grads=False)


@seq_backends
@pytest.mark.parametrize("bidir", [False, True])
def test_projections_lstm_initial_hidden_state(bidir, backend):
    """test_projections_lstm_initial_hidden_state: proj_size=10, zeros (h: proj_size wide, c:
    hidden_size wide) equal None; compared with torch."""
    ref, ours = twins(nn.LSTM, 30, 20, 2, bidirectional=bidir, proj_size=10, backend=backend, dtype=torch.float32)
    d = 2 if bidir else 1
    x = torch.randn(10, 32, 30)
    hidden = (torch.zeros(2 * d, 32, 10), torch.zeros(2 * d, 32, 20))
    out1, h1 = ours(x, hidden)
    out2, h2 = ours(x)
    torch.testing.assert_close(out1, out2)
    torch.testing.assert_close(h1, h2)
    compare(ref, ours, (x, hidden), torch.float32, check_grads=False)


def test_projections_errors_on_gru():
    """test_projections_errors_on_gru_and_rnn: GRU(…, proj_size=10) raises ValueError with torch's message."""
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM, not RNN or GRU"):
        nn.GRU(30, 20, 2, proj_size=10)
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM, not RNN or GRU"):
        make_gated(nn.GRU, 30, 20, 2, proj_size=10)


@pytest.mark.parametrize("kwargs", [dict(proj_size=5), dict(proj_size=7), dict(proj_size=-1)],
                         ids=["proj=hidden", "proj>hidden", "proj<0"])
def test_projections_bad_proj_size(kwargs):
    """torch's constructor checks on proj_size (ValueError with torch's wording)."""
    want = raised(lambda: nn.LSTM(3, 5, **kwargs))
    assert isinstance(want, ValueError)
    with pytest.raises(ValueError, match=re.escape(str(want))):
        make_gated(nn.LSTM, 3, 5, **kwargs)


# --- TestNN._test_RNN_cpu_vs_cudnn, as gated vs torch (weights copied through all_weights) --------


def _fb(rnn, input_val, grad_output, weights_val, hx_val, grad_hy, cx_val=None, grad_cy=None):
    """forward_backward of _test_RNN_cpu_vs_cudnn: copy weights through ``all_weights``, run, and
    backprop the given cotangents; returns outputs and gradients."""
    is_lstm = isinstance(rnn, (nn.LSTM, gated.LSTM))
    with torch.no_grad():
        for x_layer, y_layer in zip(rnn.all_weights, weights_val):
            for x, y in zip(x_layer, y_layer):
                x.copy_(y)
    if isinstance(input_val, PackedSequence):
        inp = PackedSequence(input_val.data.detach().clone().requires_grad_(), input_val.batch_sizes,
                             input_val.sorted_indices, input_val.unsorted_indices)
        inp_var = inp.data
    else:
        inp = input_val.detach().requires_grad_()  # detach, not clone: keeps non-contiguous strides
        inp_var = inp
    if is_lstm:
        c = hx_val.add(1) if cx_val is None else cx_val.add(1)
        hx = (hx_val.detach().requires_grad_(), c.detach().requires_grad_())
    else:
        hx = hx_val.detach().requires_grad_()
    output, hy = rnn(inp, hx)
    if isinstance(output, PackedSequence):
        output = output.data
    if is_lstm:
        gc = grad_hy + 1 if grad_cy is None else grad_cy + 1
        torch.autograd.backward([output, hy[0], hy[1]], [grad_output, grad_hy, gc])
    else:
        torch.autograd.backward([output, hy], [grad_output, grad_hy])
    res = {"output": output, "hy": hy[0] if is_lstm else hy, "grad_input": inp_var.grad,
           "grad_hx": hx[0].grad if is_lstm else hx.grad}
    if is_lstm:
        res.update(cy=hy[1], grad_cx=hx[1].grad)
    res["weight_grads"] = [[w.grad for w in layer] for layer in rnn.all_weights]
    return res


def _noncontig(t):
    nd = t.dim()
    return torch.stack([t.clone().zero_(), t], nd).select(nd, 1)


@seq_backends
@pytest.mark.parametrize("dropout", [0, 1], ids=["no_dropout", "dropout1"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "LSTM-proj"])
def test_RNN_cpu_vs_torch_all_weights(kind, dropout, backend):
    """_test_RNN_cpu_vs_cudnn (test_RNN_cpu_vs_cudnn_no_dropout / _with_dropout), with gated in
    cuDNN's place: every (bias, bidirectional, batch_first, contiguous, variable length, lengths as
    tensor) combination, weights copied in through ``all_weights``, outputs, states and all
    gradients compared. dropout=1 is allowed by torch ([0, 1]) and zeroes every inner layer's output."""
    dtype = torch.double
    input_size, hidden_size, proj_size, num_layers, seq_length, batch = 10, 6, 3, 2, 7, 6
    cls = nn.GRU if kind == "GRU" else nn.LSTM
    proj = proj_size if kind == "LSTM-proj" else 0
    h_out = proj or hidden_size
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    combos = [c for c in itertools.product((True, False), repeat=6) if c[5] <= c[4]]  # lens_as_tensor needs variable_len
    # all 48 combinations on "auto" without dropout; every fourth one (a different one per backend) otherwise
    if not (backend == "auto" and dropout == 0):
        combos = combos[BACKENDS.index(backend)::4]
    for bias, bidirectional, batch_first, contig, variable_len, lens_as_tensor in combos:
        D = 2 if bidirectional else 1
        shape_in = (batch, seq_length, input_size) if batch_first else (seq_length, batch, input_size)
        shape_out = (batch, seq_length, h_out * D) if batch_first else (seq_length, batch, h_out * D)
        input_val, grad_output = rand(*shape_in), rand(*shape_out)
        hx_val, grad_hy = rand(num_layers * D, batch, h_out), rand(num_layers * D, batch, h_out)
        cx_val = grad_cy = None
        if proj:
            cx_val, grad_cy = rand(num_layers * D, batch, hidden_size), rand(num_layers * D, batch, hidden_size)
        if not contig:
            input_val, grad_output, hx_val, grad_hy = map(_noncontig, (input_val, grad_output, hx_val, grad_hy))
            if proj:
                cx_val, grad_cy = _noncontig(cx_val), _noncontig(grad_cy)
        if variable_len:
            lengths = [7, 5, 5, 2, 1, 1]
            if lens_as_tensor:
                lengths = torch.tensor(lengths, dtype=torch.long)
            input_val = rnn_utils.pack_padded_sequence(input_val, lengths, batch_first=batch_first)
            grad_output = rnn_utils.pack_padded_sequence(grad_output, lengths, batch_first=batch_first).data
        kw = dict(bias=bias, dropout=dropout, bidirectional=bidirectional, batch_first=batch_first)
        if proj:
            kw["proj_size"] = proj
        ref = cls(input_size, hidden_size, num_layers, **kw).to(dtype)
        ours = make_gated(cls, input_size, hidden_size, num_layers, backend=backend, **kw).to(dtype)
        assert [[tuple(w.shape) for w in layer] for layer in ours.all_weights] == \
               [[tuple(w.shape) for w in layer] for layer in ref.all_weights]
        r = _fb(ref, input_val, grad_output, ref.all_weights, hx_val, grad_hy, cx_val, grad_cy)
        o = _fb(ours, input_val, grad_output, ref.all_weights, hx_val, grad_hy, cx_val, grad_cy)
        combo = dict(bias=bias, bidirectional=bidirectional, batch_first=batch_first, contig=contig,
                     variable_len=variable_len, lens_as_tensor=lens_as_tensor)
        for key in r:
            if key == "weight_grads":
                for li, (ra, oa) in enumerate(zip(r[key], o[key])):
                    for wi, (a, b) in enumerate(zip(oa, ra)):
                        torch.testing.assert_close(a, b, **tol(dtype), msg=lambda m, li=li, wi=wi: f"{combo} all_weights[{li}][{wi}].grad: {m}")
            else:
                torch.testing.assert_close(o[key], r[key], **tol(dtype), msg=lambda m, key=key: f"{combo} {key}: {m}")


# --- weight norm, weight tying, partial flat weights, flatten_parameters, _flat_weights -----------


@pytest.mark.parametrize("name,num_params,kw", [("weight_ih_l0", 4, {}), ("weight_hr_l0", 5, {"proj_size": 16})],
                         ids=["weight_ih_l0", "weight_hr_l0"])
def test_rnn_weight_norm(name, num_params, kw):
    """test_rnn_weight_norm (+ the CPU half of test_RNN_cudnn_weight_norm): weight_norm turns one
    entry of ``_flat_weights`` into a plain tensor, remove_weight_norm restores the Parameter
    under its name; the weight-normed module computes torch's weight-normed results."""
    ref, l = twins(nn.LSTM, 32, 32, dtype=torch.float32, **kw)
    x = torch.randn(7, 6, 32)
    expected = l(x)
    l = torch.nn.utils.weight_norm(l, name=name)
    ref = torch.nn.utils.weight_norm(ref, name=name)
    assert sum(isinstance(p, nn.Parameter) for p in l._flat_weights) == num_params - 1
    compare(ref, l, (x,), torch.float32, what="weight-normed")
    torch.testing.assert_close(flat_outputs(l(x)), flat_outputs(expected), rtol=1e-5, atol=1e-5)
    l = torch.nn.utils.remove_weight_norm(l, name=name)
    assert sum(isinstance(p, nn.Parameter) for p in l._flat_weights) == num_params
    assert name in l._parameters and l._parameters[name] is not None
    assert name + "_v" not in l._parameters and name + "_g" not in l._parameters
    params = dict(l.named_parameters())
    assert name in params and name + "_v" not in params and name + "_g" not in params
    torch.testing.assert_close(flat_outputs(l(x)), flat_outputs(expected), rtol=1e-5, atol=1e-5)


@seq_backends
@pytest.mark.parametrize("kind", ["LSTM", "LSTM-proj", "GRU"])
def test_weight_tying(kind, backend):
    """test_cudnn_weight_tying on CPU: ``bias_ih_l0_reverse = bias_ih_l0`` (one Parameter in two
    places), forward, backward, an SGD step, forward again: all equal torch doing the same."""
    cls = nn.GRU if kind == "GRU" else nn.LSTM
    kw = dict(batch_first=True, bidirectional=True, **({"proj_size": 10} if kind == "LSTM-proj" else {}))
    ref, ours = twins(cls, 10, 20, backend=backend, dtype=torch.float64, **kw)
    results = []
    for m in (ref, ours):
        m.bias_ih_l0_reverse = m.bias_ih_l0
        torch.manual_seed(5)
        x = torch.randn(5, 4, 10, dtype=torch.float64, requires_grad=True)
        h = torch.randn(2, 5, 10 if kind == "LSTM-proj" else 20, dtype=torch.float64, requires_grad=True)
        hx = (h, torch.randn(2, 5, 20, dtype=torch.float64, requires_grad=True)) if cls is nn.LSTM else h
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        opt.zero_grad()
        out = m(x, hx)
        out[0].sum().backward()
        grads = [p.grad.clone() for p in m.parameters()]
        opt.step()
        out2 = m(x, hx)
        results.append((out[0], grads, out2[0], [p.detach().clone() for p in m.parameters()]))
    assert len(list(ours.parameters())) == len(list(ref.parameters()))
    (ro, rg, ro2, rp), (oo, og, oo2, op) = results
    torch.testing.assert_close(oo, ro, **tol(torch.float64))
    torch.testing.assert_close(oo2, ro2, **tol(torch.float64))
    for a, b in zip(og, rg):
        torch.testing.assert_close(a, b, **tol(torch.float64))
    for a, b in zip(op, rp):
        torch.testing.assert_close(a, b, **tol(torch.float64))


@seq_backends
def test_partial_flat_weights(backend):
    """test_partial_flat_weights, CPU version (torch's moves to CUDA): a module with weight_hh_l0
    deleted can still be converted (``.double()``); once the weight is assigned back it computes
    torch's results."""
    ref, m = twins(nn.LSTM, 10, 6, 2, backend=backend, dtype=torch.float32)
    inp = torch.randn(3, 2, 10)
    out_expected = ref(inp)
    weight_orig = m.weight_hh_l0
    del m.weight_hh_l0
    assert not hasattr(m, "weight_hh_l0")
    m.double()
    m.weight_hh_l0 = weight_orig.detach().double()  # a plain tensor, as in torch's test
    torch.testing.assert_close(m(inp.double())[0], out_expected[0].double(), rtol=1e-5, atol=1e-6)


@seq_backends
@pytest.mark.parametrize("kind", ["LSTM", "LSTM-proj", "GRU"])
def test_flat_weights_and_flatten_parameters(kind, backend):
    """torch's RNNBase attributes, which test_nn.py relies on throughout: ``_flat_weights_names``
    (torch's names and order), ``_flat_weights`` (the very Parameter objects, refreshed after
    ``.to()``/setattr), ``all_weights``, ``mode``, ``proj_size``, ``num_directions``, and
    ``flatten_parameters()`` as a no-op that leaves results unchanged."""
    cls = nn.GRU if kind == "GRU" else nn.LSTM
    kw = dict(num_layers=2, bidirectional=True, **({"proj_size": 2} if kind == "LSTM-proj" else {}))
    ref, ours = twins(cls, 3, 4, backend=backend, dtype=torch.float32, **kw)
    assert ours.mode == ref.mode
    assert ours.proj_size == ref.proj_size
    assert ours._flat_weights_names == ref._flat_weights_names
    assert all(w is getattr(ours, n) for w, n in zip(ours._flat_weights, ours._flat_weights_names))
    assert [[tuple(w.shape) for w in layer] for layer in ours.all_weights] == \
           [[tuple(w.shape) for w in layer] for layer in ref.all_weights]
    x = torch.randn(5, 2, 3)
    before = ours(x)
    ours.flatten_parameters()
    assert all(w is getattr(ours, n) for w, n in zip(ours._flat_weights, ours._flat_weights_names))
    torch.testing.assert_close(flat_outputs(ours(x)), flat_outputs(before), rtol=0, atol=0)
    ours.double()
    assert all(w is getattr(ours, n) and w.dtype == torch.float64
               for w, n in zip(ours._flat_weights, ours._flat_weights_names))
    name = ours._flat_weights_names[1]
    setattr(ours, name, nn.Parameter(torch.zeros_like(getattr(ours, name))))
    assert ours._flat_weights[1] is getattr(ours, name)


# --- dropout -------------------------------------------------------------------------------------


@seq_backends
@seq_modes
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("p", [0, 0.1234])
def test_RNN_dropout_state(mode, p, train, backend):
    """test_RNN_dropout_state (nn.RNN with relu there; the dropout state is what it tests, so on
    LSTM/GRU): two calls and a torch.save/torch.load copy (after flatten_parameters) agree iff
    p == 0 or eval."""
    rnn = make_gated(SEQ_CLS[mode], 100, 100, 2, bias=False, dropout=p, backend=backend)
    rnn.train(train)
    x, hx = torch.rand(1, 1, 100), torch.rand(2, 1, 100)
    hx = (hx, hx) if mode == "LSTM" else hx
    out1, hy1 = rnn(x, hx)
    out2, hy2 = rnn(x, hx)
    buf = io.BytesIO()
    torch.save(rnn, buf)
    buf.seek(0)
    rnn2 = torch.load(buf, weights_only=False)
    rnn2.flatten_parameters()
    out3, hy3 = rnn2(x, hx)
    same = p == 0 or not train
    for a, b in ((out1, out2), (out1, out3), (flat_outputs(hy1)[0], flat_outputs(hy2)[0]),
                 (flat_outputs(hy1)[0], flat_outputs(hy3)[0])):
        assert torch.equal(a, b) == same


@seq_backends
@seq_modes
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_RNN_change_dropout(mode, train, backend):
    """test_RNN_change_dropout: ``rnn.dropout`` changed between calls (0, 0.5, 0, 0.7, 0.2, 1,
    0.2, 0) takes effect at once; p in {0, 1} and eval are deterministic. The p=1 and p=0 outputs
    also equal torch's under the same weights. (100 x 100 there; 20 x 30 here, for time.)"""
    ref, rnn = twins(SEQ_CLS[mode], 20, 30, 2, dropout=0, backend=backend, dtype=torch.float64)
    rnn.train(train)
    ref.train(train)
    x = torch.rand(3, 2, 20, dtype=torch.float64)
    prev = None
    for p in (0, 0.5, 0, 0.7, 0.2, 1, 0.2, 0):
        rnn.dropout = p
        ref.dropout = p
        out1, hy1 = rnn(x)
        out2, hy2 = rnn(x)
        if p in (0, 1) or not train:
            torch.testing.assert_close(out1, out2, rtol=0, atol=0)
            torch.testing.assert_close(out1, ref(x)[0], **tol(torch.float64))
        else:
            assert not torch.equal(out1, out2)
        if prev is not None:
            assert torch.equal(out1, prev) == (not train)
        prev = out1


@seq_modes
def test_RNN_dropout_warning(mode):
    """torch warns for dropout > 0 with one layer (dropout only acts between layers); gated too,
    with torch's text."""
    with pytest.warns(UserWarning, match="dropout option adds dropout after all but last recurrent layer"):
        make_gated(SEQ_CLS[mode], 3, 5, dropout=0.5)


@seq_modes
@pytest.mark.parametrize("p", [1, 1.0], ids=["int", "float"])
def test_dropout_one_accepted(mode, p):
    """torch accepts dropout in [0, 1] (1 included); with p=1 in training the inner layers'
    outputs are zeroed, and gated matches torch."""
    ref, ours = twins(SEQ_CLS[mode], 3, 4, 2, dropout=p, dtype=torch.float64)
    compare(ref, ours, (torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True),), torch.float64)


# --- empty inputs --------------------------------------------------------------------------------


@seq_backends
@pytest.mark.parametrize("bidirectional", [True, False], ids=["bi", "uni"])
@seq_modes
def test_error_RNN_seq_len_zero(mode, bidirectional, backend):
    """test_error_RNN_seq_len_zero: T = 0 raises RuntimeError "Expected sequence length to be
    larger than 0 in RNN"."""
    rnn = make_gated(SEQ_CLS[mode], 5, 6, bidirectional=bidirectional, backend=backend)
    with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0 in RNN"):
        rnn(torch.ones(0, 10, 5))


@seq_backends
@seq_modes
@pytest.mark.parametrize("kw", [{}, {"bidirectional": True, "num_layers": 2}, {"batch_first": True}],
                         ids=["plain", "bi-2layers", "batch_first"])
def test_RNN_input_size_zero(mode, kw, backend):
    """test_RNN_input_size_zero: batch 0 gives an empty (5, 0, H) output and a backward that does
    not fail; here outputs, states and gradients (empty) are compared with torch's."""
    ref, ours = twins(SEQ_CLS[mode], 3, 4, backend=backend, dtype=torch.float32, **kw)
    x = torch.zeros((0, 5, 3) if kw.get("batch_first") else (5, 0, 3), requires_grad=True)
    outs = ours(x)
    D = 2 if kw.get("bidirectional") else 1
    assert outs[0].shape == (torch.Size([0, 5, 4 * D]) if kw.get("batch_first") else torch.Size([5, 0, 4 * D]))
    outs[0].sum().backward()
    compare(ref, ours, (x,), torch.float32, what="batch 0")


def test_LSTM_input_size_zero_with_projections():
    ref, ours = twins(nn.LSTM, 3, 4, proj_size=2, dtype=torch.float32)
    compare(ref, ours, (torch.zeros(5, 0, 3, requires_grad=True),), torch.float32, what="batch 0, proj")


@pytest.mark.parametrize("cls", [nn.LSTMCell, nn.GRUCell])
def test_cell_batch_zero(cls):
    ref, ours = twins(cls, 3, 4, dtype=torch.float32)
    compare(ref, ours, (torch.zeros(0, 3, requires_grad=True),), torch.float32, what="cell batch 0")


# --- variable sequences, packing -----------------------------------------------------------------


def _pad(var, length):
    if var.size(0) == length:
        return var
    return torch.cat([var, var.new_zeros(length - var.size(0), *var.size()[1:])])


@seq_backends
@pytest.mark.parametrize("proj_size", [0, 2])
@pytest.mark.parametrize("enforce_sorted,lengths", [
    (True, [5]), (False, [5]), (True, [10, 10, 6, 2, 2, 1, 1]), (False, [10, 10, 6, 2, 2, 1, 1]),
    (False, [2, 1, 3, 2, 10, 5, 3])], ids=["s5", "u5", "sorted7", "unsorted7-sorted", "unsorted7"])
def test_variable_sequence(enforce_sorted, lengths, proj_size, backend):
    """test_variable_sequence: a packed batch (sorted or not, given or default hiddens, proj_size
    0 or 2) equals running each sequence alone; forward and backward. Also the packed run equals
    torch's."""
    input_size, hidden_size, num_layers = 3, 4, 2
    for use_default_hiddens in (True, False):
        max_length = max(lengths)
        x_leaf = torch.randn(max_length, len(lengths), input_size, dtype=torch.float64, requires_grad=True)
        ref, lstm = twins(nn.LSTM, input_size, hidden_size, bidirectional=True, num_layers=num_layers,
                          proj_size=proj_size, backend=backend, dtype=torch.float64)
        lstm2 = copy.deepcopy(lstm)
        hidden0 = None
        if not use_default_hiddens:
            real = proj_size or hidden_size
            hidden0 = (torch.randn(2 * num_layers, len(lengths), real, dtype=torch.float64),
                       torch.randn(2 * num_layers, len(lengths), hidden_size, dtype=torch.float64))
        seq_outs, seq_hiddens = [], []
        for i, n in enumerate(lengths):
            hidden_i = None if hidden0 is None else tuple(h[:, i:i + 1].contiguous() for h in hidden0)
            out, hid = lstm2(x_leaf[:n, i:i + 1], hidden_i)
            seq_outs.append(_pad(out, max_length))
            seq_hiddens.append(hid)
        seq_out = torch.cat(seq_outs, 1)
        seq_hidden = tuple(torch.cat(h, 1) for h in zip(*seq_hiddens))
        packed = rnn_utils.pack_padded_sequence(x_leaf, lengths, enforce_sorted=enforce_sorted)
        packed_out, packed_hidden = lstm(packed, hidden0)
        unpacked, unpacked_len = rnn_utils.pad_packed_sequence(packed_out)
        t = tol(torch.float64)
        for a, b in zip(packed_hidden, seq_hidden):
            torch.testing.assert_close(a, b, **t)
        torch.testing.assert_close(unpacked, seq_out, **t)
        assert unpacked_len.tolist() == list(lengths)
        seq_out.sum().backward()
        grad_x = x_leaf.grad.clone()
        x_leaf.grad = None
        unpacked.sum().backward()
        torch.testing.assert_close(x_leaf.grad, grad_x, **t)
        for p1, p2 in zip(lstm.parameters(), lstm2.parameters()):
            torch.testing.assert_close(p1.grad, p2.grad, **t)
        compare(ref, lstm, (rnn_utils.pack_padded_sequence(x_leaf.detach().requires_grad_(), lengths,
                                                           enforce_sorted=enforce_sorted), hidden0),
                torch.float64, what="packed vs torch")


@seq_backends
@seq_modes
@pytest.mark.parametrize("batch_first", [False, True], ids=["tbf", "bf"])
def test_pack_sequence_through_module(mode, batch_first, backend):
    """test_packed_sequence.py's pack_sequence / pack_padded_sequence (sorted and unsorted),
    unpack_sequence and pad_packed_sequence(total_length=...) around the modules: the packed output
    keeps the input's sorted/unsorted indices, and everything equals torch's."""
    ref, ours = twins(SEQ_CLS[mode], 4, 3, 2, bidirectional=True, batch_first=batch_first, backend=backend,
                      dtype=torch.float64)
    seqs = [torch.randn(n, 4, dtype=torch.float64) for n in (3, 6, 1, 4)]
    for enforce_sorted in (False, True):
        s = sorted(seqs, key=len, reverse=True) if enforce_sorted else seqs
        packed = rnn_utils.pack_sequence([t.clone().requires_grad_() for t in s], enforce_sorted=enforce_sorted)
        packed = PackedSequence(packed.data.detach().requires_grad_(), packed.batch_sizes, packed.sorted_indices,
                                packed.unsorted_indices)
        r_out, o_out = compare(ref, ours, (packed,), torch.float64, what=f"pack_sequence sorted={enforce_sorted}")
        for total_length in (None, 8):
            a, la = rnn_utils.pad_packed_sequence(o_out[0], batch_first=batch_first, total_length=total_length)
            b, lb = rnn_utils.pad_packed_sequence(r_out[0], batch_first=batch_first, total_length=total_length)
            torch.testing.assert_close(a, b, **tol(torch.float64))
            assert torch.equal(la, lb)
        for a, b in zip(rnn_utils.unpack_sequence(o_out[0]), rnn_utils.unpack_sequence(r_out[0])):
            torch.testing.assert_close(a, b, **tol(torch.float64))
        padded = rnn_utils.pad_sequence(s, batch_first=batch_first)
        pp = rnn_utils.pack_padded_sequence(padded, [len(t) for t in s], batch_first=batch_first,
                                            enforce_sorted=enforce_sorted)
        compare(ref, ours, (pp,), torch.float64, check_grads=False, what="pack_padded_sequence")


# --- retain_graph, double backward ----------------------------------------------------------------


@seq_backends
@seq_modes
def test_rnn_retain_variables(mode, backend):
    """test_rnn_retain_variables: backward five times through one graph (retain_graph) gives the
    same gradients each time, equal to torch's."""
    ref, rnn = twins(SEQ_CLS[mode], 10, 20, num_layers=2, backend=backend, dtype=torch.float64)
    x = torch.randn(5, 6, 10, dtype=torch.float64, requires_grad=True)
    out = rnn(x)
    out[0].sum().backward(retain_graph=True)
    grads = [x.grad.clone()] + [p.grad.clone() for p in rnn.parameters()]
    for _ in range(4):
        rnn.zero_grad()
        x.grad.zero_()
        out[0].sum().backward(retain_graph=True)
        for a, b in zip([x.grad] + [p.grad for p in rnn.parameters()], grads):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    xr = x.detach().clone().requires_grad_()
    ref(xr)[0].sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, **tol(torch.float64))
    for a, b in zip(rnn.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, **tol(torch.float64))


@seq_backends
@pytest.mark.parametrize("bias", [True, False])
@seq_modes
def test_grad_and_gradgrad(mode, bias, backend):
    """test_LSTM_grad_and_gradgrad / test_GRU_grad_and_gradgrad (_test_rnn_mod): gradcheck and
    gradgradcheck of the flattened outputs w.r.t. a (1, 3, 4) input, check_batched_grad=False."""
    hsize = 4
    inp = torch.rand(1, 3, hsize, dtype=torch.double, requires_grad=True)
    mod = make_gated(SEQ_CLS[mode], hsize, hsize, bias=bias, backend=backend).double()

    def flatten_out(x):
        out, state = mod(x)
        return (out, *(state if isinstance(state, tuple) else (state,)))

    assert gradcheck(flatten_out, (inp,), check_batched_grad=False)
    assert gradgradcheck(flatten_out, (inp,), check_batched_grad=False)


@seq_backends
@pytest.mark.parametrize("which", ["output", "h_n", "c_n"])
def test_backward_through_one_output(which, backend):
    """In the spirit of test_lstmcell_backward_only_one_output_grad, for the sequence LSTM: a
    backward from the output alone, h_n alone or c_n alone (undefined grads for the rest) equals torch's."""
    ref, ours = twins(nn.LSTM, 3, 4, 2, bidirectional=True, backend=backend, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    got = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        out, (h, c) = m(xi)
        t = {"output": out, "h_n": h, "c_n": c}[which]
        (t * torch.arange(t.numel(), dtype=t.dtype).reshape(t.shape)).sum().backward()
        got.append([xi.grad, *(p.grad for p in m.parameters())])
    for a, b in zip(*got):
        torch.testing.assert_close(a, b, **tol(torch.float64))


@seq_backends
def test_LSTM_differentiable_backward(backend):
    """test_LSTM_differentiable_backward_using_oneDNN: the input gradient of a deep LSTM (20 layers
    there; 6 here, for time), taken with create_graph=True, is itself differentiated; values and
    x.grad equal torch's."""
    ref, ours = twins(nn.LSTM, 3, 3, 6, batch_first=True, backend=backend, dtype=torch.float32)
    x = torch.rand(10, 12, 3)
    res = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_(True)
        out, _ = m(xi)
        der = torch.autograd.grad(out, xi, grad_outputs=torch.ones_like(out), retain_graph=True, create_graph=True)[0]
        der.sum().backward(retain_graph=True)
        res.append((der.detach(), xi.grad))
    torch.testing.assert_close(res[1][0], res[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res[1][1], res[0][1], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# torch tests that do not apply, each with its reason
# ----------------------------------------------------------------------------------------------

SKIPPED = {
    "test_modules::test_cpu_gpu_parity": "CUDA only (onlyCUDA); gated's fast backend is CPU-only",
    "test_modules::test_multiple_device_transfer": "CUDA only (onlyCUDA)",
    "test_modules::test_check_inplace": "RNN modules have no `inplace` argument",
    "test_nn::test_rnn_check_device": "needs two CUDA devices (TEST_MULTIGPU)",
    "test_nn::test_projections_lstm_check_device": "needs two CUDA devices (TEST_MULTIGPU)",
    "test_nn::test_cudnn_rnn_dropout_states_device": "cuDNN + two CUDA devices",
    "test_nn::test_cudnn_weight_format": "cuDNN's single contiguous weight buffer (its warning and "
                                         "_flat_weights as views of one chunk) has no CPU counterpart",
    "test_nn::test_RNN_dropout": "nn.RNN with nonlinearity='relu' and cuDNN's dropout placement; "
                                 "gated has no nn.RNN (dropout placement is covered by the dropout=1 cases)",
    "test_nn::test_RNN_nonlinearity": "nn.RNN's `nonlinearity` argument; gated has no nn.RNN",
    "test_nn::test_rnn_fused": "CUDA fused kernels (onlyCUDA)",
    "test_nn::test_cudnn_rnn": "CUDA half/bfloat16 cuDNN RNN",
    "test_nn::test_pack_sequence_batch_sizes_throw": "CUDA only (batch_sizes on a CUDA device)",
    "test_nn::test_save_lstm_compatibility": "loads pickles from PyTorch <= 1.7 (no proj_size in "
                                             "__dict__); no gated pickle predates proj_size",
    "test_nn::test_inplace_thnn": "activation modules, not RNNs",
    "module_db::nn.RNN / nn.RNNCell": "gated has no plain tanh/relu RNN (the `nonlinearity` samples)",
}


@pytest.mark.parametrize("name", list(SKIPPED))
def test_not_applicable(name):
    pytest.skip(SKIPPED[name])
