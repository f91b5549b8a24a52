"""Writes the GGUF fixtures of tests/gguf_import/ into this directory.

ok_tiny_llama.gguf is a valid 2-layer llama (written with the `gguf` package) whose weights
follow formulas the Rust test checks exactly; the others are hand-packed broken files.
Run: python3 make_fixtures.py   (needs `pip install gguf numpy`)
"""
import os
import struct

import gguf
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
D, HEADS, KV_HEADS, FFN, LAYERS = 16, 4, 2, 24, 2
HD = D // HEADS


def permute(w, n_head):
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute: interleave the halves of each head.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def grid(rows, cols, scale, offset=0):
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return (r * scale + c + offset).astype(np.float32)


def byte_tokens():
    # GPT-2's byte-to-unicode table, in byte order.
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def tiny_llama(spm=False):
    if spm:
        # A SentencePiece vocabulary as llama.cpp writes Llama's and Mistral's: unknown,
        # controls, the 256 byte pieces, then pieces whose scores fall with their id.
        specials = ["<unk>", "<s>", "</s>"]
        pieces = ["▁t", "he", "▁the", "▁", "t", "h", "e"]
        tokens = specials + [f"<0x{b:02X}>" for b in range(256)] + pieces
        types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
        scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(pieces))]
        name = "ok_tiny_llama_spm.gguf"
    else:
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        merges = ["h e", "t he", "Ġ the"]
        tokens = specials + byte_tokens() + ["he", "the", "Ġthe"]
        types = [3] * len(specials) + [1] * (len(tokens) - len(specials))
        name = "ok_tiny_llama.gguf"
    vocab = len(tokens)
    w = gguf.GGUFWriter(os.path.join(HERE, name), "llama")
    w.add_block_count(LAYERS)
    w.add_context_length(512)
    w.add_embedding_length(D)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(HD)
    if spm:
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_scores(scores)
    else:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_chat_template("{{ messages[0]['content'] }}")
    # Values are small integers, exact in every type used, so the test can recompute them.
    w.add_tensor("token_embd.weight", (grid(vocab, D, 16) % 1000 - 500).astype(np.float16))
    w.add_tensor("output_norm.weight", np.full(D, 0.5, np.float32))
    w.add_tensor("output.weight", (grid(vocab, D, 3) % 100).astype(np.float16))
    for i in range(LAYERS):
        if i == 0:
            q, k = grid(HEADS * HD, D, 1000), -grid(KV_HEADS * HD, D, 1000)
            w.add_tensor(f"blk.{i}.attn_q.weight", permute(q, HEADS))
            w.add_tensor(f"blk.{i}.attn_k.weight", permute(k, KV_HEADS))
        else:
            q, k = grid(HEADS * HD, D, 64), grid(KV_HEADS * HD, D, 16)
            w.add_tensor(f"blk.{i}.attn_q.weight", permute(q, HEADS).astype(np.float16))
            # BF16 has no numpy dtype: keep the high half of each f32 (exact for these values).
            bits = (permute(k, KV_HEADS).view(np.uint32) >> 16).astype(np.uint16)
            # Raw bytes are shaped [rows, row bytes]; the writer derives the element shape.
            w.add_tensor(f"blk.{i}.attn_k.weight", bits.view(np.uint8),
                         raw_dtype=gguf.GGMLQuantizationType.BF16)
        w.add_tensor(f"blk.{i}.attn_v.weight", grid(KV_HEADS * HD, D, 100, 1e5 * i))
        w.add_tensor(f"blk.{i}.attn_output.weight", grid(D, HEADS * HD, 100, 2e5 + 1e5 * i))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.full(D, 1.0 + i, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.full(D, 2.0 + i, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", grid(FFN, D, 100, 3e5 + 1e5 * i))
        w.add_tensor(f"blk.{i}.ffn_up.weight", grid(FFN, D, 100, 4e5 + 1e5 * i))
        w.add_tensor(f"blk.{i}.ffn_down.weight", grid(D, FFN, 100, 5e5 + 1e5 * i))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def header(n_tensors, n_kv, magic=b"GGUF", version=3):
    return magic + struct.pack("<IQQ", version, n_tensors, n_kv)


def tensor_file(ggml_type, dims, data_len):
    # One tensor "x" at offset 0 of the data section, which starts at the next 32-byte boundary.
    info = s("x") + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
    out = header(1, 0) + info + struct.pack("<IQ", ggml_type, 0)
    out += b"\0" * (-len(out) % 32)
    return out + bytes(i % 251 for i in range(data_len))


BAD = {
    "bad_magic.gguf": header(0, 0, magic=b"GGML"),
    "bad_version.gguf": header(0, 0, version=1),
    # Cut inside the tensor count.
    "truncated_header.gguf": header(0, 0)[:12],
    # A metadata key claiming ~2^64 bytes.
    "absurd_string_len.gguf": header(0, 1) + struct.pack("<Q", 0xFFFFFFFFFFFFFF00) + b"key",
    # A string array claiming 2^62 elements.
    "absurd_array_len.gguf": header(0, 1) + s("a") + struct.pack("<IIQ", 9, 8, 1 << 62),
    "unknown_tensor_type.gguf": tensor_file(99, [32], 128),
    # An F32 tensor of 1024 values (4096 bytes) with only 64 bytes of data present.
    "truncated_tensor_data.gguf": tensor_file(0, [1024], 64),
    # A valid Q6_K tensor, a type ggml knows but ponder does not dequantize.
    "unsupported_tensor_type.gguf": tensor_file(14, [256], 210),
}

if __name__ == "__main__":
    tiny_llama()
    tiny_llama(spm=True)
    for name, data in BAD.items():
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(data)
