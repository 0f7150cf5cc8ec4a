"""Checkpoint -> self-describing ONNX file, parity-checked against torch.

Why the graph is written here by hand instead of traced by `torch.onnx.export`: the torch model packs
its sequences (`pack_padded_sequence`), which does not export, and a traced padded GRU would let the
reverse direction read the padding. ONNX's own `GRU`/`LSTM` operators take a `sequence_lens` input
with exactly the packed semantics (the forward direction stops at each sequence's last step, the
reverse direction starts there), and ONNX Runtime runs them as one fused kernel, which is both
identical in logits and several times faster than a decomposed loop. The graph is small:

    x [B, T, 3], lengths [B]  ->  Transpose -> RNN layer 1 (sequence_lens) -> ... -> RNN layer N
    -> final states of both directions [B, H * dirs] -> LayerNormalization -> Gemm -> logits [B, C]

Batch and length are dynamic. Everything `Classifier` needs besides the weights (classes, encoding,
length rules, temperature, metrics, model config, package version) travels in `metadata_props`
as JSON strings, so serving from the .onnx file needs no torch and no checkpoint.

`verify_parity` compares ONNX Runtime logits with the torch model's on given padded batches;
`quantize_int8` makes the optional dynamically quantised variant (weights of the MatMul/Gemm and
RNN operators that ONNX Runtime can quantise; always re-check accuracy, it is not the default).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from doodle_rnn.errors import DoodleError

OPSET = 17  # LayerNormalization
META_PREFIX = "doodle_rnn."
META_KEYS = (
    "format",
    "classes",
    "encoding",
    "encoding_version",
    "length_rules",
    "temperature",
    "metrics",
    "model_config",
    "package_version",
)
ONNX_FORMAT = "doodle-rnn-onnx"

# torch packs gates as (r, z, n) for GRU and (i, f, g, o) for LSTM; ONNX wants (z, r, h) and (i, o, f, c).
_GATE_ORDER = {"gru": (1, 0, 2), "lstm": (0, 3, 1, 2)}


class ExportError(DoodleError):
    pass


def _reorder(w: np.ndarray, rnn: str, hidden: int) -> np.ndarray:
    """Reorder the gate blocks along axis 0 from torch's order to ONNX's."""
    blocks = [w[i * hidden : (i + 1) * hidden] for i in range(len(_GATE_ORDER[rnn]))]
    return np.concatenate([blocks[i] for i in _GATE_ORDER[rnn]], axis=0)


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _rnn_weights(state: dict, layer: int, cfg: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W [dirs, G*H, in], R [dirs, G*H, H], B [dirs, 2*G*H] for one layer, in ONNX layout."""
    rnn, hidden = cfg["rnn"], cfg["hidden_size"]
    suffixes = ["", "_reverse"] if cfg["bidirectional"] else [""]
    ws, rs, bs = [], [], []
    for sfx in suffixes:
        w_ih, w_hh, b_ih, b_hh = (
            _reorder(_np(state[f"gru.{name}_l{layer}{sfx}"]), rnn, hidden)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )
        ws.append(w_ih)
        rs.append(w_hh)
        bs.append(np.concatenate([b_ih, b_hh]))
    return np.stack(ws), np.stack(rs), np.stack(bs)


def _conv_front_end(nodes: list, const, state: dict, cfg: dict) -> None:
    """The model's Conv1d + ReLU layers, steps past each length zeroed after each (as `_ConvFrontEnd`)."""
    from onnx import TensorProto, helper

    mk = helper.make_node
    nodes.append(mk("Shape", ["x"], ["x_shape"]))
    nodes.append(mk("Gather", ["x_shape", const("one_i", np.array(1, np.int64))], ["t_len"], axis=0))
    nodes.append(mk("Range", [const("zero_i", np.array(0, np.int64)), "t_len", "one_i"], ["steps"]))
    nodes.append(mk("Unsqueeze", ["steps", const("ax0", np.array([0], np.int64))], ["steps_1t"]))
    nodes.append(mk("Unsqueeze", ["lengths", const("ax1", np.array([1], np.int64))], ["len_b1"]))
    nodes.append(mk("Less", ["steps_1t", "len_b1"], ["valid"]))  # [B, T]
    nodes.append(mk("Cast", ["valid"], ["valid_f"], to=TensorProto.FLOAT))
    nodes.append(mk("Unsqueeze", ["valid_f", "ax1"], ["mask"]))  # [B, 1, T]
    nodes.append(mk("Transpose", ["x"], ["x_bft"], perm=[0, 2, 1]))
    nodes.append(mk("Mul", ["x_bft", "mask"], ["c_in"]))
    k = int(cfg.get("conv_kernel", 5))
    inp = "c_in"
    for i in range(len(cfg["conv_channels"])):
        w, b = _np(state[f"conv.layers.{i}.weight"]), _np(state[f"conv.layers.{i}.bias"])
        nodes.append(mk("Conv", [inp, const(f"conv_w{i}", w), const(f"conv_b{i}", b)], [f"conv{i}"],
                        kernel_shape=[k], pads=[k // 2, k // 2]))  # fmt: skip
        nodes.append(mk("Relu", [f"conv{i}"], [f"relu{i}"]))
        nodes.append(mk("Mul", [f"relu{i}", "mask"], [f"c_out{i}"]))
        inp = f"c_out{i}"
    nodes.append(mk("Transpose", [inp], ["x_tbf"], perm=[2, 0, 1]))  # [B, C, T] -> [T, B, C]


def build_onnx(ckpt: dict):
    """The ONNX ModelProto for a checkpoint dict (see module docstring for the graph)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cfg = ckpt["model_config"]
    state = ckpt["model_state"]
    rnn, hidden, layers = cfg["rnn"], cfg["hidden_size"], cfg["num_layers"]
    dirs = 2 if cfg["bidirectional"] else 1
    direction = "bidirectional" if dirs == 2 else "forward"
    op = "GRU" if rnn == "gru" else "LSTM"
    inits, nodes = [], []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    if cfg.get("conv_channels"):
        _conv_front_end(nodes, const, state, cfg)  # x -> x_tbf through the convolutions
    else:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_tbf"], perm=[1, 0, 2]))
    nodes.append(helper.make_node("Cast", ["lengths"], ["seq_lens"], to=TensorProto.INT32))
    const("shape_tb_", np.array([0, 0, -1], np.int64))
    inp = "x_tbf"
    for layer in range(layers):
        w, r, b = _rnn_weights(state, layer, cfg)
        outs = [f"y{layer}", f"yh{layer}"] + ([f"yc{layer}"] if op == "LSTM" else [])
        attrs = {"hidden_size": hidden, "direction": direction}
        if op == "GRU":
            attrs["linear_before_reset"] = 1  # torch's GRU applies r after the hidden matmul
        nodes.append(
            helper.make_node(
                op,
                [inp, const(f"W{layer}", w), const(f"R{layer}", r), const(f"B{layer}", b), "seq_lens"],
                outs,
                name=f"{op.lower()}{layer}",
                **attrs,
            )
        )
        # Y [T, dirs, B, H] -> [T, B, dirs * H]: the next layer's input, both directions side by side.
        nodes.append(helper.make_node("Transpose", [f"y{layer}"], [f"y{layer}_t"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"y{layer}_t", "shape_tb_"], [f"h{layer}"]))
        inp = f"h{layer}"
    last = layers - 1
    # Y_h [dirs, B, H]: each direction's state at its own end of each sequence (packed semantics).
    nodes.append(helper.make_node("Transpose", [f"yh{last}"], ["yh_b"], perm=[1, 0, 2]))
    nodes.append(
        helper.make_node("Reshape", ["yh_b", const("shape_b_", np.array([0, -1], np.int64))], ["feat"])
    )
    npf = lambda k: _np(state[k])  # noqa: E731
    nodes.append(
        helper.make_node(
            "LayerNormalization",
            ["feat", const("norm_w", npf("norm.weight")), const("norm_b", npf("norm.bias"))],
            ["normed"],
            axis=-1,
            epsilon=1e-5,
        )
    )
    nodes.append(
        helper.make_node(
            "Gemm",
            ["normed", const("fc_w", npf("fc.weight")), const("fc_b", npf("fc.bias"))],
            ["logits"],
            transB=1,
        )  # fmt: skip
    )
    n_classes = len(ckpt["classes"])
    graph = helper.make_graph(
        nodes,
        "doodle_rnn",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", cfg["input_size"]]),
            helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_classes])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="doodle-rnn"
    )
    model.ir_version = 8  # readable by every onnxruntime this package admits
    meta = metadata_from_checkpoint(ckpt)
    for k, v in meta.items():
        model.metadata_props.add(key=META_PREFIX + k, value=json.dumps(v))
    onnx.checker.check_model(model)
    return model


def metadata_from_checkpoint(ckpt: dict) -> dict:
    return {
        "format": ONNX_FORMAT,
        "classes": list(ckpt["classes"]),
        "encoding": ckpt["encoding"],
        "encoding_version": int(ckpt.get("encoding_version", 1)),
        "length_rules": dict(ckpt["length_rules"]),
        "temperature": float(ckpt.get("temperature", 1.0)),
        "metrics": _jsonable(ckpt.get("metrics", {})),
        "model_config": dict(ckpt["model_config"]),
        "package_version": ckpt.get("package_version", ""),
        # a shipped model's card: name, test metrics on real drawings, announcement threshold
        "card": _jsonable(ckpt.get("card", {})),
    }


def _jsonable(obj):
    """Metrics may hold numpy/torch scalars; keep what JSON can say."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def read_metadata(path: str | Path) -> dict:
    """The doodle_rnn metadata of an exported file (raises ExportError for a foreign .onnx)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return metadata_from_props({p.key: p.value for p in model.metadata_props}, path)


def metadata_from_props(props: dict[str, str], path: str | Path) -> dict:
    try:
        meta = {k[len(META_PREFIX) :]: json.loads(v) for k, v in props.items() if k.startswith(META_PREFIX)}
    except ValueError as exc:  # a damaged or hand-edited file: one clear error, not a traceback
        raise ExportError(f"{path}: its doodle_rnn metadata is not valid JSON ({exc})") from None
    missing = [k for k in META_KEYS if k not in meta]
    if meta.get("format") != ONNX_FORMAT or missing:
        raise ExportError(
            f"{path}: not an ONNX file exported by `doodle export` (missing metadata: {', '.join(missing) or 'format'})"
        )
    return meta


def export_onnx(ckpt: dict, out: str | Path) -> Path:
    """Write the ONNX file atomically (temporary name, then rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(build_onnx(ckpt).SerializeToString())
    tmp.replace(out)
    return out


def quantize_int8(src: str | Path, out: str | Path) -> Path:
    """Dynamic int8 quantisation of the weights (activations stay float; no calibration data needed)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.onnx")
    quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8)
    # quantize_dynamic keeps metadata_props in current onnxruntime; copy them anyway so the file stays
    # self-describing whatever the version, and mark the variant.
    q = onnx.load(str(tmp))
    srcm = onnx.load(str(src), load_external_data=False)
    have = {p.key for p in q.metadata_props}
    for p in srcm.metadata_props:
        if p.key not in have:
            q.metadata_props.add(key=p.key, value=p.value)
    q.metadata_props.add(key=META_PREFIX + "quantization", value=json.dumps("int8-dynamic"))
    onnx.save(q, str(tmp))
    tmp.replace(out)
    return out


def half_weights(model, min_size: int = 16):
    """The graph with its float weights stored as float16 and cast back to float32 as the graph starts.

    Half the bytes to download, the same float32 arithmetic: ONNX Runtime folds each `Cast` of a constant
    once when the session is built (in Python and in the browser alike), so the GRU never runs in float16
    (onnxruntime-web's wasm build has no float16 GRU kernel). Tiny tensors (< `min_size` values) stay
    float32. The file says so in its metadata (`quantization`: `fp16-weights`). Returns a new ModelProto.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        if values.size < min_size:
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(values.astype(np.float16), f"{name}_fp16"))
        casts.append(helper.make_node("Cast", [init.name], [name], to=TensorProto.FLOAT, name=f"cast_{name}"))
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    props = [p for p in out.metadata_props if p.key != META_PREFIX + "quantization"]
    del out.metadata_props[:]
    out.metadata_props.extend(props)
    out.metadata_props.add(key=META_PREFIX + "quantization", value=json.dumps("fp16-weights"))
    onnx.checker.check_model(out)
    return out


def verify_parity(ckpt: dict, onnx_path: str | Path, batches) -> float:
    """Max |logit difference| between torch (packed) and ONNX Runtime over `(x, lengths)` batches."""
    import onnxruntime as ort
    import torch

    from doodle_rnn.checkpoint import build_model

    model = build_model(ckpt)
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()  # the same as torch: see threads.py
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.inference_mode():
        for x, lengths in batches:
            ref = model(x, lengths).numpy()
            got = sess.run(["logits"], {"x": x.numpy(), "lengths": lengths.numpy()})[0]
            worst = max(worst, float(np.abs(ref - got).max()))
    return worst
