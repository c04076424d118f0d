"""The semi-supervised benchmark splits (case IDs), as published with the benchmark code, and seeded choices
where no list was published. No nnU-Net import.

Synapse (BTCV abdomen, 30 labelled CT): the split of xmed-lab/GenericSSL ``Synapse_data/split_txts``, the one the
DHC protocol's published results use: 20 training, 4 evaluation, 6 test cases; 20% labeled = 4 cases. The DHC
repository's own ``synapse_data/splits`` files hold a different train/test partition (its training list
contains five of these test cases), so they are not mixed in here.

AMOS22 (15 organs): xmed-lab/DHC ``amos_data/splits``: 216 training and 24 evaluation cases from the official
training set, the 120 official validation cases as test; 2/5/10% labeled = 4/10/21 cases. IDs of 500 and above
are MR scans.
"""
from __future__ import annotations

import random
from typing import Dict, List, Sequence, Tuple


def _ids(spec: str) -> List[str]:
    """'0002-0006 0009' -> ['0002', ..., '0006', '0009'] (4-digit IDs)."""
    out = []
    for part in spec.split():
        if "-" in part:
            a, b = part.split("-")
            out += [f"{i:04d}" for i in range(int(a), int(b) + 1)]
        else:
            out.append(part)
    return out


SYNAPSE = {
    "source": "xmed-lab/GenericSSL Synapse_data/split_txts",
    "train": _ids("0002-0006 0009 0010 0021 0022 0024-0026 0028 0031 0032 0034-0036 0038 0040"),
    "eval": _ids("0001 0007 0023 0030"),
    "test": _ids("0008 0027 0029 0033 0037 0039"),
    "labeled": {20: _ids("0009 0021 0025 0034")},
}

AMOS = {
    "source": "xmed-lab/DHC amos_data/splits",
    "train": _ids(
        "0001 0004-0007 0009-0011 0014-0017 0019 0021 0023-0025 0030 0033 0035 0036 0038 0042-0045 0047-0050 0052 "
        "0054 0057-0060 0064 0067 0069 0071 0072 0075-0079 0081 0083 0084 0086 0088 0089 0092 0094 0098 0099 "
        "0102-0105 0110 0111 0113 0115 0118 0119 0121 0125-0127 0129 0131 0133-0135 0137 0138 0141-0143 0147 0149 "
        "0152 0156 0158 0160-0162 0166 0170-0173 0175 0177 0179-0181 0184-0186 0188 0190 0192 0193 0195 0196 0198 "
        "0199 0212 0217 0224-0226 0230 0231 0235 0237 0239 0242 0245 0248 0249 0254 0259 0263 0264 0268 "
        "0272-0274 0276 0279 0281 0282 0288 0294 0296 0299 0301 0302 0307 0317 0320 0321 0330 0332 0341 0348 0350 "
        "0351 0358 0361 0362 0366 0367 0370 0371 0374 0376 0378-0380 0383 0384 0387 0388 0390-0392 0395 0396 0398 "
        "0400-0406 0408 0410 0507 0508 0510 0514 0517 0518 0522 0530 0532 0541 0548 0551 0555 0557 0558 0570 0571 "
        "0578 0580 0582-0584 0586-0591 0593-0597 0600"),
    "eval": _ids("0027 0066 0097 0109 0116 0124 0153 0154 0159 0197 0214 0215 0297 0336 0337 0349 0353 0381 0538 0540 "
                 "0554 0585 0592 0599"),
    "test": _ids(
        "0008 0013 0018 0022 0029 0032 0034 0040 0041 0051 0056 0061 0063 0070 0073 0085 0087 0090 0106 0108 0112 "
        "0117 0120 0123 0128 0132 0136 0140 0144 0150 0155 0157 0167 0174 0176 0189 0191 0194 0200 0202-0204 "
        "0206-0208 0216 0218 0219 0223 0228 0233 0238 0244 0247 0250 0255 0257 0258 0278 0280 0283 0284 0286 0287 "
        "0289 0290 0292 0293 0304 0308-0311 0313 0316 0318 0323 0325 0326 0328 0333 0334 0339 0342 0344 0346 0352 "
        "0356 0357 0363-0365 0368 0372 0373 0377 0385 0397 0399 0409 0544-0547 0549 0550 0552 0553 0556 0559 0561 "
        "0562 0563 0568 0572 0573 0575 0576 0581 0598"),
    "labeled": {
        2: _ids("0017 0077 0358 0361"),
        5: _ids("0078 0158 0170 0192 0391 0396 0410 0514 0548 0578"),
        10: _ids("0009 0042 0110 0125 0138 0143 0147 0149 0166 0177 0230 0248 0264 0321 0341 0361 0510 0558 0590 0595 "
                 "0597"),
    },
}


def labeled_count(num_train: int, ratio: float) -> int:
    """As the benchmark code computes it: ``int(len(train) * ratio / 100)``, at least 1."""
    return max(1, int(num_train * ratio / 100))


def choose_labeled(train: Sequence[str], ratio: float, published: Dict[int, List[str]],
                   seed: int = 0) -> Tuple[List[str], str]:
    """The labeled cases for ``ratio`` percent of ``train``, and where the choice comes from.

    A published list is used as is. Otherwise the choice is seeded and nested with the published lists: a larger
    ratio keeps the largest smaller published list and adds seeded cases; a smaller one is a seeded subset of the
    smallest larger list. So the ratios of one seed are comparable.
    """
    train = list(train)
    usable = {r: [i for i in ids if i in train] for r, ids in published.items()}
    if ratio in usable and len(usable[ratio]) == len(published[ratio]):
        return sorted(usable[ratio]), "published"
    n = labeled_count(len(train), ratio)
    rng = random.Random(seed)
    smaller = [r for r in usable if r < ratio and len(usable[r]) <= n]
    larger = [r for r in usable if r > ratio and len(usable[r]) >= n]
    if larger and not smaller:
        base = sorted(usable[min(larger)])
        return sorted(rng.sample(base, n)), f"seeded subset (seed {seed}) of the published {min(larger)}% list"
    keep = sorted(usable[max(smaller)]) if smaller else []
    rest = sorted(set(train) - set(keep))
    chosen = keep + rng.sample(rest, n - len(keep))
    how = f"seeded (seed {seed})" + (f", containing the published {max(smaller)}% list" if keep else "")
    return sorted(chosen), how
