#!/usr/bin/env python3
"""Writes the corpus of broken model inputs under tests/bad_inputs/ (safetensors and config
cases; the GGUF cases live in tests/bad_inputs/gguf/). Each case is a model directory (or a
file) that ponder must refuse with a one-line error naming the problem. Deterministic: run it
again and git sees no change. Uses only the standard library."""
import json
import os
import struct
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "bad_inputs")

# A micro llama: small enough that every case is a few kilobytes.
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8,
    "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
    "num_key_value_heads": 1, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": 16,
    "max_position_embeddings": 64, "tie_word_embeddings": True, "bos_token_id": 1,
    "eos_token_id": 2,
}


def tensors():
    d, f, v, kv = 8, 8, 16, 4
    p = "model.layers.0."
    return [
        ("model.embed_tokens.weight", [v, d]),
        (p + "input_layernorm.weight", [d]),
        (p + "self_attn.q_proj.weight", [d, d]),
        (p + "self_attn.k_proj.weight", [kv, d]),
        (p + "self_attn.v_proj.weight", [kv, d]),
        (p + "self_attn.o_proj.weight", [d, d]),
        (p + "post_attention_layernorm.weight", [d]),
        (p + "mlp.gate_proj.weight", [f, d]),
        (p + "mlp.up_proj.weight", [f, d]),
        (p + "mlp.down_proj.weight", [d, f]),
        ("model.norm.weight", [d]),
    ]


def safetensors_bytes(specs, lie=False):
    header, blobs, off = {}, [], 0
    for i, (name, shape) in enumerate(specs):
        n = 1
        for s in shape:
            n *= s
        data = struct.pack("<%df" % n, *[((i * 31 + j * 7) % 13 - 6) / 10.0 for j in range(n)])
        end = off + len(data)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, end]}
        blobs.append(data)
        off = end
    if lie:  # the last tensor claims bytes past the end of the data section
        last = specs[-1][0]
        a, b = header[last]["data_offsets"]
        header[last]["data_offsets"] = [a, b + 4096]
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def case(name, config=CONFIG, st=None, raw_config=None):
    d = os.path.join(ROOT, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write(raw_config if raw_config is not None else json.dumps(config, indent=1) + "\n")
    if st is not None:
        with open(os.path.join(d, "model.safetensors"), "wb") as f:
            f.write(st)


def main():
    full = safetensors_bytes(tensors())
    case("truncated_safetensors", st=full[: len(full) - 100])
    case("lying_offsets", st=safetensors_bytes(tensors(), lie=True))
    case("missing_tensor", st=safetensors_bytes([t for t in tensors() if t[0] != "model.norm.weight"]))
    wrong = [(n, [8, 4] if n.endswith("q_proj.weight") else s) for n, s in tensors()]
    case("wrong_shape", st=safetensors_bytes(wrong))
    # A bias ponder's layers do not compute: loading without it would run another model.
    biased = tensors() + [("model.layers.0.self_attn.q_proj.bias", [8])]
    case("unknown_tensor", st=safetensors_bytes(biased))
    case("malformed_config", raw_config='{"model_type": "llama", "hidden_size": 8,,}\n', st=full)
    case("missing_weights")
    with open(os.path.join(ROOT, "prompt_not_utf8.txt"), "wb") as f:
        f.write(b"What is 2 + 2?\n\xff\xfe\xc3(\n")
    print("wrote", ROOT, file=sys.stderr)


if __name__ == "__main__":
    main()
