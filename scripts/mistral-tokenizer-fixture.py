"""Writes tests/fixtures/mistral_tokenizer.json: texts and the ids SentencePiece itself gives
them with Mistral-7B-v0.1's tokenizer, for tests/mistral_tokenizer.rs, which converts the same
tokenizer.model into an HF tokenizer.json with ponder's own converter (src/model/import/spm.rs)
and must give the same ids, pick '+' = 648, '-' = 387 and end a PRM path on the step tag 12902
as Math-Shepherd's reference code does.

The tokenizer.model is Mistral's own, shipped in the `mistral_common` wheel on PyPI
(mistral_common/data/tokenizer.model.v1, the 32000-piece Mistral-7B-v0.1 vocabulary).
Not run by CI (it needs the `sentencepiece` package); CI only reads its output. Run:
    python3 -m venv /tmp/spv && /tmp/spv/bin/pip install sentencepiece
    python3 -m pip download --no-deps mistral_common==1.13.1 -d /tmp/mc
    /tmp/spv/bin/python scripts/mistral-tokenizer-fixture.py /tmp/mc/mistral_common-1.13.1-py3-none-any.whl
"""
import hashlib
import json
import os
import sys
import zipfile

import sentencepiece as spm

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MEMBER = "mistral_common/data/tokenizer.model.v1"
GSM8K_TRAIN = os.path.join(ROOT, "..", "shared", "data", "gsm8k", "train.jsonl")


def texts():
    out = []
    # ponder's own problems, as the protocol prompts them, and their gold solutions.
    with open(os.path.join(ROOT, "data", "default-problems.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            out.append("Q: " + row["question"] + "\nA: Let's think step by step.")
            out.append(row["answer"])
    # Real GSM8K text (numbers, money, <<calculator>> annotations, #### answers).
    with open(GSM8K_TRAIN) as f:
        for i, line in enumerate(f):
            if i == 24:
                break
            row = json.loads(line)
            out.append(row["question"])
            out.append(row["answer"])
    out += [
        # The PRM's input (rebase.md) and its pieces.
        "+", "-", "ки", " ки", "+ -",
        "Janet has 3 apples. Step 1: 3 + 4 = 7. ки\nStep 2: 7 * 2 = 14. ки\nStep 3: The answer is: 14 ки",
        # REBASE's prompts and the baseline's answer phase.
        "Natalia sold clips.\nA: Let's think step by step.\nStep 1:",
        "\nTherefore, the answer (arabic numerals) is",
        " 42.", "\n\nStep 2", "Step 12: 1,234.50 - 0.25 = 1234.25",
        # Whitespace: runs of spaces, tabs, newlines, leading and trailing spaces.
        "a  b   c    d", "  leading", "trailing  ", " ", "\t\tTab\t", "\n", "line\n\n\nbreaks\r\n",
        # Scripts and bytes: Cyrillic, Greek, CJK, accents, emoji (byte fallback), symbols.
        "Привет, мир", "αβγ = 3.14", "数学题 12 个苹果", "café naïve résumé", "😀 🧮✨",
        "x² + y² ≤ 1 → ∞", "50% of $1,200 is $600.", "(3+4)*5=35; 10/4=2.5",
        "",
    ]
    return out


def main():
    whl = sys.argv[1]
    with zipfile.ZipFile(whl) as z:
        model = z.read(MEMBER)
    sp = spm.SentencePieceProcessor(model_proto=model)
    cases = [{"text": t, "ids": sp.encode(t)} for t in texts()]
    fixture = {
        "source": os.path.basename(whl) + ":" + MEMBER,
        "sha256": hashlib.sha256(model).hexdigest(),
        "pieces": sp.get_piece_size(),
        "plus": sp.encode("+ -")[0],
        "minus": sp.encode("+ -")[1],
        "step_tag": sp.encode("ки")[-1],
        "cases": cases,
    }
    path = os.path.join(ROOT, "tests", "fixtures", "mistral_tokenizer.json")
    # One case per line, so that a change shows as the lines of the texts it touches.
    head = {k: v for k, v in fixture.items() if k != "cases"}
    with open(path, "w") as f:
        f.write(json.dumps(head, ensure_ascii=False)[:-1] + ', "cases": [\n')
        f.write(",\n".join(json.dumps(c, ensure_ascii=False) for c in cases))
        f.write("\n]}\n")
    print(f"{path}: {len(cases)} texts, {sum(len(c['ids']) for c in cases)} ids")


if __name__ == "__main__":
    main()
