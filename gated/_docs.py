"""Renders ``docs/variants.md`` from the registries (``python scripts/gen_variants_doc.py``)."""

from __future__ import annotations

from gated.cores import CORES, make_layout
from gated.gates import cumax
from gated.variants import VARIANTS, Variant

_HEADER = """# Variants

Generated from `gated/variants.py` and `gated/cores.py` by `python scripts/gen_variants_doc.py`;
a test fails when this file and the registries disagree. Paper: Gu et al., "Improving the Gating
Mechanism of Recurrent Neural Networks", ICML 2020, §5 (labels), Eqs. 9-12 (UR cell).

Notation: `P_X = W_ih[X] x + b_ih[X] + W_hh[X] h + b_hh[X]` is block X's pre-activation (torch's
two biases), `σ` the sigmoid, `cumax = cumsum∘softmax` over the units, `b_f` the shared trainable
`forget_bias_l{k}`, `k`/`w` the keep and write gates of the state update `s' = k s + w cand`
(LSTM: `s = c`, `cand = tanh(P_g)`; GRU/MGU: `s = h`, `cand = n`). Every core keeps torch's
block order: LSTM `(i, f, g, o)`, GRU `(r, z, n)` with `z` the keep gate, MGU `(f, n)` with `f`
the keep gate and the candidate's reset `1 - f` (Zhou et al. 2016 with `f = 1 - f_zhou`).
Refine variants of GRU/MGU append one block `ρ`; master variants append a master-forget and a
master-input block of `m = ceil(d / C)` rows (`chunk_size` C, default 4), upsampled by repeating
each master unit C times. `n` is the input size, `d` the hidden size; parameter counts are per
layer and direction, with torch's two bias vectors.

"""

_FOOTER = """
## Choices where the paper is silent

- **Baseline `-`**: the standard LSTM with an untied input gate and torch's default init, so it
  equals `torch.nn.LSTM`/`GRU` (tested to 1e-10 in float64).
- **`b_f` in refine variants** is one trainable vector per layer and direction, added to the keep
  gate and subtracted from the refine gate, as in the paper's pseudo-code; UGI sets it and zeroes
  the keep and refine rows of `b_ih`/`b_hh`, so `f = σ(b_f)` and `r = σ(-b_f) = 1 - f` at init on a
  zero input. Loading torch weights into a refine variant leaves `forget_bias_l{k}` missing
  (`strict=False`).
- **UR-GRU / UR-MGU**: the refine gate is a new block with the same `-b_f` convention; the reset
  gate (GRU) and the candidate's reset `1 - f` (MGU) use the unrefined gates.
- **`O` (cumax without master gates)**: the forget gate is `cumax(P_f)` over the hidden units; the
  LSTM's input gate stays an untied sigmoid.
- **Master gates** follow ON-LSTM's equations on any core; in GRU/MGU the fine-grained write gate
  is `1 - z`. `UM` replaces cumax by a sigmoid whose bias is UGI-initialised over the `m` master
  units; the master input gate `1 - σ(P)` gets the same bias, so it starts at `1 - master_f`, as
  cumax's does.
- **Chrono `C`**: `t_max` defaults to `hidden_size` (the longest timescale UGI can give), so C and U
  span the same range unless `t_max` is given; GRU/MGU have no input-gate bias to set.
- **UGI's ε** is `1/d` with `d` the gate's number of units (`hidden_size`; `m` for master gates).
"""


def _act(v: Variant) -> str:
    return "cumax" if v.primary is cumax else "σ"


def _equations(v: Variant) -> str:
    a = _act(v)
    if v.auxiliary == "refine":
        fb = " + b_f" if v.has_forget_bias else ""
        mfb = " - b_f" if v.has_forget_bias else ""
        return (f"f = {a}(P_f{fb}), r = σ(P_r{mfb}), k = g = f² + 2rf(1-f), w = 1 - g"
                " (LSTM: r in the i block)")
    if v.auxiliary == "master":
        return (f"f = σ(P_f), F = {a}(P_F), I = 1 - {a}(P_I), ω = F·I, k = f·ω + F - ω, "
                "w = w₀·ω + I - ω (w₀: LSTM σ(P_i), GRU/MGU 1 - f)")
    return f"k = f = {a}(P_f), w = σ(P_i) (LSTM) or 1 - f (GRU/MGU)"


def _params(core_name: str, v: Variant) -> str:
    core = CORES[core_name]
    if v.name not in core.variants:
        return "n/a"
    blocks = len(core.blocks) + (1 if v.auxiliary == "refine" and core.write is None else 0)
    rows = f"{blocks}d" + (" + 2m" if v.auxiliary == "master" else "")
    rows = f"({rows})" if "+" in rows else rows
    extra = " + d" if v.has_forget_bias else ""
    # sanity: the formula must agree with the layout the modules use
    d, m_ = 8, 2
    L = make_layout(core, v, d, chunk_size=4)
    assert L.rows == blocks * d + (2 * m_ if v.auxiliary == "master" else 0)
    return f"{rows}(n + d + 2){extra}"


_OPTIONS = """
## Cell options: LayerNorm, zoneout, recurrent dropout, weight dropout

Keyword arguments of `gated.LSTM`, `GRU`, `MGU` and their cells (`LSTMCell`, `GRUCell`, `MGUCell`), off
by default, composable with every variant:

```python
rnn = gated.LSTM(32, 128, variant="UR", layer_norm=True, zoneout=0.1, recurrent_dropout=0.25)  # LN-UR-LSTM
```

| option | what (training; eval) | parameters added per layer and direction |
|---|---|---|
| `layer_norm=True` | Ba et al. 2016: `P = LN_ih(W_ih x) + b_ih + LN_hh(W_hh h) + b_hh`, each LN over the `G` gate rows; LSTM `h = o·tanh(LN_c(c))`, `c` unnormalised; GRU's reset gate multiplies `LN_hh(W_hh h)[n] + b_hn` (haste's LayerNormGRU) | `layer_norm_ih_l{k}`, `layer_norm_hh_l{k}` (`G` gains and biases each), LSTM `layer_norm_c_l{k}` (`d`) |
| `zoneout=p` or `(p_h, p_c)` | Krueger et al. 2017: `s_t = z s_{t-1} + (1-z) s̃_t`, `z ~ Bernoulli(p)` per unit and step; eval `p s_{t-1} + (1-p) s̃_t` | none |
| `recurrent_dropout=p` | Gal & Ghahramani 2016: `h_{t-1}·m / (1-p)` feeds `W_hh`, one mask `m` per sequence for all steps; eval identity | none |
| `weight_dropout=p` | DropConnect on `W_hh` (AWD-LSTM's weight drop), one mask per forward call; eval identity | none |

The gate biases (`b_ih`, `b_hh`, `b_f`) are added after the normalisation, so UGI, chrono and
`forget_bias_` set the same biases with and without LayerNorm; the LayerNorms start at gain 1, bias 0
(eps 1e-5) and draw nothing, so a seed gives the same RNN weights with and without them. Masks come
from torch's generator on the input's device, per call, layer and direction, whatever the backend (a
seed gives the same masks on each). Weight dropout runs on every backend. LayerNorm, zoneout and
recurrent dropout run in the fused CPU kernels (float32/float64, packed sequences, `proj_size` too;
the kernels take the `(B, P)` recurrent-dropout mask and per state the zoneout mask, `(T, B, P)` for
`h` and `(T, B, H)` for `c` (`P` is `proj_size`, else `H`), or in eval the float `p`; with
projections zoneout and the mask act on the projected `h`, as on the reference; with LayerNorm the
input side `LN_ih(W_ih x) + b` of all steps is computed by torch ops before the kernel in training,
and by the kernel, a chunk of steps at a time, in inference; the kernel normalises each step's
`W_hh h` and the LSTM's `c` per batch row: in float32 on the tiled path each step's product is
split by hidden units over the threads, then the norms and gate maths by batch rows); the Triton
backend runs all three too (the norms in its kernels, one program per batch row), with
`proj_size` too. `"auto"` logs each fallback once; `backend="fused_cpu"`
refuses a call it cannot run. A cell sees one step per call: it keeps its recurrent and weight
dropout masks until `cell.reset_dropout_mask()` (call it at the start of each sequence, as
Keras's `reset_recurrent_dropout_mask`), and draws a zoneout mask per step. The scan cores take none
of them. Details: `gated/options.py`.
"""

_SCAN = """
## Scan cores: minGRU and minLSTM

`gated.MinGRU` and `gated.MinLSTM` (Feng et al. 2024, "Were RNNs All We Needed?") have gates that read
`x_t` only: `P = W_ih x_t + b_ih` (no recurrent weight, one bias), so a layer is the linear recurrence
`h_t = k_t h_{t-1} + w_t P_n`, solved by a scan ([scan.md](scan.md)). Blocks: minGRU `(f, n)`, minLSTM
`(f, i, n)`, and `ρ` appended with a refine gate; `f` is the keep gate (Feng et al.'s update gate is
`z = 1 - f`), the candidate `P_n` has no activation. Variants `-`, `C`, `U`, `R`, `UR` (cumax and master
gates are not defined for them). Weights and biases start as torch.nn.Linear's, `U(-1/√n, 1/√n)` with
`n` the layer's input width. On minLSTM, UGI and chrono also set the input gate's bias to `-b` (so
`i = 1 - f` and `k = f` at init), and the normalisation is computed in log space.

| variant | minGRU: k, w | minLSTM: k, w | minGRU params | minLSTM params |
|---|---|---|---|---|
"""


def _scan_rows() -> list[str]:
    rows = []
    for v in VARIANTS.values():
        if v.name not in CORES["mingru"].variants:
            continue
        refine = v.auxiliary == "refine"
        g = "g = f² + 2rf(1-f), f = σ(P_f + b_f), r = σ(P_ρ - b_f)" if refine else "f = σ(P_f)"
        k = "g" if refine else "f"
        cells = [f"`{v.name}`", f"{g}; k = {k}, w = 1 - {k}", f"k = {k} / ({k} + σ(P_i)), w = 1 - k",
                 f"{2 + refine}d(n + 1){' + d' if refine else ''}", f"{3 + refine}d(n + 1){' + d' if refine else ''}"]
        for core, blocks in (("mingru", 2), ("minlstm", 3)):  # sanity: the formula is the modules' layout
            assert make_layout(core, v, 8).rows == (blocks + refine) * 8
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def variants_markdown() -> str:
    lines = [_HEADER, "| variant | long name | equations | init | LSTM params | GRU params | MGU params |",
             "|---|---|---|---|---|---|---|"]
    for v in VARIANTS.values():
        init = {None: "torch default", "uniform": "UGI (`gated.init.uniform_gate_`)",
                "chrono": "chrono (`gated.init.chrono_`)"}[v.init]
        cells = [f"`{v.name}`", f"`{v.long_name}`", _equations(v), init,
                 _params("lstm", v), _params("gru", v), _params("mgu", v)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| variant | summary | assumed |", "|---|---|---|"]
    lines += [f"| `{v.name}` | {v.summary} | {v.assumed} |" for v in VARIANTS.values()]
    return "\n".join(lines) + "\n" + _FOOTER + _OPTIONS + _SCAN + "\n".join(_scan_rows()) + "\n"
