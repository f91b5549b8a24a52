"""Re-scores the study's own REBASE results with protocol.md's answer rule.

The study (MarwanWalid2/Reasoning-vs-InfernceScaling) read answers and golds with the regex
(\\d{1,3}(?:,\\d{3})*|\\d+), which cuts a number of four or more digits written without
commas into 3-digit pieces ("5000" -> "500", "0"). This reads its Results/*.json and prints,
per run, its count of correct problems beside the count when the best leaf (highest score)
is read by its last integer, commas dropped, against the last integer after "####" — and the
problems that change. docs/methods.md quotes the output.
    python3 scripts/study-rescore.py PATH/TO/Reasoning-vs-InfernceScaling/Results
"""
import json
import os
import re
import sys

RUNS = ["width3.json", "width6_results.json", "width16_results.json", "quietstarrebase.json"]


def last_integer(text):
    nums = re.findall(r"\d+", text.replace(",", ""))
    return (nums[-1].lstrip("0") or "0") if nums else None


def main():
    root = sys.argv[1]
    for name in RUNS:
        with open(os.path.join(root, name)) as f:
            items = json.load(f)["results"]
        study = ours = 0
        changed = []
        for it in items:
            gold = last_integer(it["ground_truth_answer"].split("####")[-1])
            leaves = sorted(it["model_answer"] or [], key=lambda a: -a["score"])
            pred = last_integer(leaves[0]["text"]) if leaves else None
            right = pred is not None and pred == gold
            study += bool(it["correct"])
            ours += right
            if right != bool(it["correct"]):
                changed.append(f"problem {it['id']}: gold {gold}, best leaf {pred}, "
                               f"study read {leaves[0]['answer'] if leaves else None} "
                               f"({'correct' if it['correct'] else 'wrong'})")
        print(f"{name}: {len(items)} problems, study {study} correct, last integer {ours}")
        for c in changed:
            print("   ", c)


if __name__ == "__main__":
    main()
