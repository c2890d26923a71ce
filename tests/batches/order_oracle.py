"""The epoch permutation of docs/SEMANTICS.md ("The epoch permutation"), re-implemented from
that text alone, with Python integers: an oracle for tests/batches_order.rs.

Reads JSON lines {"plan": "size=..,seed=..", "rows": N, "epoch": e, "k": k} on stdin and
prints, for each, a JSON line {"batches": C, "rows": [...]} (rows null when k >= C).
"""

import json
import sys

M64 = (1 << 64) - 1


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def round_keys(seed, epoch):
    s = seed ^ mix64(epoch)
    keys = []
    for _ in range(6):
        s = (s + 0x9E3779B97F4A7C15) & M64
        keys.append(mix64(s))
    return keys


def make_perm(n, keys):
    h = 1
    while 4**h < n:
        h += 1
    mask = (1 << h) - 1

    def e(x):
        left, right = x >> h, x & mask
        for k in keys:
            left, right = right, left ^ (mix64(right ^ k) & mask)
        return (left << h) | right

    def perm(x):
        y = e(x)
        while y >= n:
            y = e(y)
        return y

    return perm


def parse_plan(text):
    plan = {"seed": 0, "block": 1, "ranks": 1, "rank": 0}
    for item in text.split(","):
        key, value = item.split("=")
        plan[key] = int(value)
    return plan


def batch(plan, n, epoch, k):
    b, r, w, i = plan["size"], plan["block"], plan["ranks"], plan["rank"]
    full = n // r
    tail = n % r
    perm = make_perm(full, round_keys(plan["seed"], epoch))
    g = -(-n // b)
    c = g // w
    if k >= c:
        return c, None
    j = k * w + i
    rows = []
    for p in range(j * b, min((j + 1) * b, n)):
        if p < tail:
            rows.append(full * r + p)
        else:
            q = p - tail
            rows.append(perm(q // r) * r + q % r)
    return c, rows


def main():
    for line in sys.stdin:
        case = json.loads(line)
        c, rows = batch(parse_plan(case["plan"]), case["rows"], case["epoch"], case["k"])
        print(json.dumps({"batches": c, "rows": rows}))


if __name__ == "__main__":
    main()
