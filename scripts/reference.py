#!/usr/bin/env python3
"""Independent numpy reference for SmolLM2-135M-Instruct (GGUF) used to check ponder.

This script shares no code with ponder. It reads the GGUF file with the
llama.cpp ``gguf`` Python package, dequantizes every tensor to float32 with
``gguf.quants.dequantize`` and runs a plain float32 numpy forward pass:

* Q/K projections are kept exactly as stored in GGUF (row-permuted by the
  llama.cpp converter for *interleaved* RoPE), and RoPE is applied GPT-J style
  on consecutive pairs (2i, 2i+1) with theta_i = base^(-2i/head_dim). ponder
  instead un-permutes the rows and uses rotate-half (NeoX) RoPE; both routes
  are mathematically identical, so matching logits checks ponder's permutation.
* RMSNorm x / sqrt(mean(x^2) + eps) * w, causal GQA attention (query head h
  uses kv head h // (n_head / n_kv_head)), SwiGLU MLP, final norm, logits
  against the tied token embedding (the file has no output.weight).
* All arithmetic is float32 (numpy ``@`` accumulates in float32; softmax is
  max-subtracted float32). float64 is used nowhere.

The tokenizer is an independent byte-level BPE (GPT-2 bytes_to_unicode, merge
rank = order in tokenizer.ggml.merges) with the "smollm" pre-tokenizer:
control tokens (token_type 3) are split out literally first, then every digit
is its own piece, then the GPT-2 regex is applied. No BOS is added.

Outputs (consumed by ponder's Rust integration tests, which compare their own
tokenizer ids, last-position logits and greedy continuation against these):
  <out>/smollm2_reference.json   tokenizer cases, logits cases, greedy case
  <out>/smollm2_last_logits.f32  49152 little-endian float32 logits

Usage:
  python3 scripts/reference.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out tests/fixtures
"""
import argparse
import hashlib
import json
import os
import time

import numpy as np
import regex
import gguf
from gguf import GGUFReader

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

TOKENIZER_CASES = [
    "What is 12 times 7?",
    "Janet\u2019s ducks lay 16 eggs per day.",
    "  leading spaces and\ttabs\n\nnewlines",
    "don't won't it's I'm we'll they've",
    "1234567 + 89.5 = ?",
    "na\u00efve caf\u00e9 \u2014 \u6771\u4eac \U0001F600",
    "<|im_start|>user\nHi<|im_end|>\n",
    "She sells the remainder at the farmers' market daily for $18 per fresh duck egg.",
]
CHAT_PROMPT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
               "<|im_end|>\n<|im_start|>user\nWhat is 12 times 7?<|im_end|>\n<|im_start|>assistant\n")
SHORT_IDS = [1, 504, 3458, 314, 260, 1345]
INF = float("inf")


# ----------------------------------------------------------------------------- GGUF
def field(reader, key):
    return reader.fields[key].contents()


def dequant(t):
    """Dequantize a GGUF tensor to float32 with numpy shape [rows, cols] (= HF [out, in])."""
    a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    return a.reshape([int(d) for d in reversed(t.shape)])


def load_model(path):
    r = GGUFReader(path)
    cfg = dict(
        n_layer=int(field(r, "llama.block_count")),
        n_head=int(field(r, "llama.attention.head_count")),
        n_kv=int(field(r, "llama.attention.head_count_kv")),
        d=int(field(r, "llama.embedding_length")),
        base=float(field(r, "llama.rope.freq_base")),
        eps=float(field(r, "llama.attention.layer_norm_rms_epsilon")),
    )
    cfg["hd"] = cfg["d"] // cfg["n_head"]
    w = {t.name: dequant(t) for t in r.tensors}
    assert "output.weight" not in w, "expected tied embeddings"
    tok = dict(tokens=field(r, "tokenizer.ggml.tokens"), types=field(r, "tokenizer.ggml.token_type"),
               merges=field(r, "tokenizer.ggml.merges"))
    return cfg, w, tok


# ----------------------------------------------------------------------------- model
def rms_norm(x, w, eps):
    return x * (np.float32(1.0) / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps))) * w


def rope_interleaved(x, pos, base):
    """GPT-J style RoPE on consecutive pairs. x: [T, H, hd], pos: [T] int."""
    hd = x.shape[-1]
    inv = (np.float32(base) ** (-np.arange(0, hd, 2, dtype=np.float32) / np.float32(hd))).astype(np.float32)
    ang = pos.astype(np.float32)[:, None] * inv[None, :]          # [T, hd/2]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]   # [T, 1, hd/2]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def attention(q, k, v, start):
    """q: [T, H, hd]; k, v: [S, KV, hd] (whole cache, S = start + T). Causal GQA."""
    T, H, hd = q.shape
    S, KV, _ = k.shape
    group = H // KV
    scale = np.float32(1.0 / np.sqrt(hd))
    mask = np.arange(S)[None, :] > (start + np.arange(T))[:, None]   # [T, S] future positions
    out = np.empty_like(q)
    for h in range(H):
        kh, vh = k[:, h // group, :], v[:, h // group, :]
        s = (q[:, h, :] @ kh.T) * scale
        s[mask] = -np.inf
        out[:, h, :] = softmax(s) @ vh
    return out


def forward(cfg, w, ids, cache, start):
    """Run tokens `ids` at positions start.. ; cache is a per-layer list of (k, v) appended in place.
    Returns logits [T, vocab] float32."""
    H, KV, hd, eps = cfg["n_head"], cfg["n_kv"], cfg["hd"], cfg["eps"]
    x = w["token_embd.weight"][np.asarray(ids)]
    T = x.shape[0]
    pos = np.arange(start, start + T)
    for l in range(cfg["n_layer"]):
        p = f"blk.{l}."
        h = rms_norm(x, w[p + "attn_norm.weight"], eps)
        q = (h @ w[p + "attn_q.weight"].T).reshape(T, H, hd)
        k = (h @ w[p + "attn_k.weight"].T).reshape(T, KV, hd)
        v = (h @ w[p + "attn_v.weight"].T).reshape(T, KV, hd)
        q, k = rope_interleaved(q, pos, cfg["base"]), rope_interleaved(k, pos, cfg["base"])
        if len(cache) <= l:
            cache.append((k, v))
        else:
            cache[l] = (np.concatenate([cache[l][0], k]), np.concatenate([cache[l][1], v]))
        a = attention(q, cache[l][0], cache[l][1], start).reshape(T, H * hd)
        x = x + a @ w[p + "attn_output.weight"].T
        h = rms_norm(x, w[p + "ffn_norm.weight"], eps)
        g = h @ w[p + "ffn_gate.weight"].T
        u = h @ w[p + "ffn_up.weight"].T
        x = x + ((g / (np.float32(1.0) + np.exp(-g))) * u) @ w[p + "ffn_down.weight"].T
    x = rms_norm(x, w["output_norm.weight"], eps)
    return x @ w["token_embd.weight"].T


# ----------------------------------------------------------------------------- tokenizer
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) \
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


class BPETokenizer:
    def __init__(self, tok):
        self.tokens = tok["tokens"]
        self.vocab = {t: i for i, t in enumerate(self.tokens)}
        self.ranks = {tuple(m.split(" ", 1)): i for i, m in enumerate(tok["merges"])}
        self.special = {t for t, ty in zip(self.tokens, tok["types"]) if int(ty) == 3}
        alt = "|".join(regex.escape(s) for s in sorted(self.special, key=len, reverse=True))
        self.special_re = regex.compile(f"({alt})")
        self.pat = regex.compile(GPT2_PATTERN)
        self.b2u = bytes_to_unicode()
        self.u2b = {c: b for b, c in self.b2u.items()}
        self.cache = {}

    def bpe(self, piece):
        if piece in self.cache:
            return self.cache[piece]
        word = list(piece)
        while len(word) > 1:
            # lowest-rank adjacent pair, then merge all its (non-overlapping, left-to-right) occurrences
            rank, first, second = min((self.ranks.get(p, INF), p[0], p[1]) for p in zip(word, word[1:]))
            if rank == INF:
                break
            out, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    out.append(first + second)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = out
        ids = [self.vocab[t] for t in word]
        self.cache[piece] = ids
        return ids

    def encode(self, text):
        ids = []
        for chunk in self.special_re.split(text):
            if not chunk:
                continue
            if chunk in self.special:
                ids.append(self.vocab[chunk])
                continue
            for part in regex.split(r"(\p{N})", chunk):        # Digits(individual_digits=True)
                for piece in self.pat.findall(part):
                    ids.extend(self.bpe("".join(self.b2u[b] for b in piece.encode("utf-8"))))
        return ids

    def decode(self, ids):
        out = bytearray()
        for i in ids:
            t = self.tokens[i]
            out += t.encode("utf-8") if t in self.special else bytes(self.u2b[c] for c in t)
        return out.decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------- driver
def top5(logits):
    idx = np.argsort(-logits, kind="stable")[:5]
    return [[int(i), float(logits[i])] for i in idx]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--steps", type=int, default=32)
    args = ap.parse_args()
    t0 = time.time()
    cfg, w, tokd = load_model(args.gguf)
    tok = BPETokenizer(tokd)
    vocab_n = w["token_embd.weight"].shape[0]

    tok_cases = [{"text": s, "ids": tok.encode(s)} for s in TOKENIZER_CASES]
    for c in tok_cases:
        assert tok.decode(c["ids"]) == c["text"], c

    prompt = tok.encode(CHAT_PROMPT)
    cache = []
    logits = forward(cfg, w, prompt, cache, 0)[-1].astype(np.float32)
    os.makedirs(args.out, exist_ok=True)
    logits.astype("<f4").tofile(os.path.join(args.out, "smollm2_last_logits.f32"))
    logits_case = {"ids": prompt, "file": "smollm2_last_logits.f32",
                   "argmax": int(np.argmax(logits)), "top5": top5(logits)}

    greedy, margins, cur, pos = [], [], logits, len(prompt)
    for _ in range(args.steps):
        top2 = np.sort(cur)[-2:]
        margins.append(float(top2[1] - top2[0]))
        nxt = int(np.argmax(cur))
        greedy.append(nxt)
        cur = forward(cfg, w, [nxt], cache, pos)[-1]
        pos += 1
    greedy_case = {"prompt_ids": prompt, "greedy_ids": greedy, "text": tok.decode(greedy),
                   "greedy_margins": margins, "min_margin": min(margins)}

    out = {"gguf_file": os.path.basename(args.gguf), "gguf_sha256": sha256(args.gguf),
           "generated_by": "scripts/reference.py", "tokenizer": tok_cases,
           "logits_case": logits_case, "greedy_case": greedy_case}
    if all(i < vocab_n for i in SHORT_IDS):
        sl = forward(cfg, w, SHORT_IDS, [], 0)[-1]
        out["logits_case_short"] = {"ids": SHORT_IDS, "argmax": int(np.argmax(sl)), "top5": top5(sl)}
    with open(os.path.join(args.out, "smollm2_reference.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"done in {time.time() - t0:.1f}s; greedy: {greedy_case['text']!r}; "
          f"min margin {min(margins):.3f}; top5 {logits_case['top5']}")


if __name__ == "__main__":
    main()
