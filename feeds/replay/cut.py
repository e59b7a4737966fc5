#!/usr/bin/env python3
"""Cut the liqwatch demo recording from Binance 5-minute spot candles.

Reads freqtrade candle files ([open_time_ms, open, high, low, close, volume]) for BTC, ETH and
SOL, keeps 2021-05-19 00:00 -> 16:00 UTC, and writes one Binance USD-M `markPriceUpdate` frame
per price point in liqwatch's replay JSONL format:

    {"venue":"binance-usdm","received_ms":<ms>,"frame":"<raw frame text>"}

Each candle becomes four frames, 75 s apart inside its 5 minutes: open, then low and high in the
order a bar most likely took them (low first on an up bar, high first on a down bar), then close.
`p` (mark), `i` (index) and `P` carry the candle price; `r` (funding) is a placeholder "0"; `T` is
the next 8-hour funding time. Prices are read from the numbers' text with Decimal, never float.

Python 3 standard library only. Usage:

    python3 feeds/replay/cut.py [DATA_DIR] [OUT_FILE]

Defaults: /work/shared/data/binance_spot_5m_2020-12_2021-07 and
feeds/replay/crash-2021-05-19.jsonl next to this script.
"""

import hashlib
import json
import os
import sys
from decimal import Decimal

START_MS = 1621382400000  # 2021-05-19T00:00:00Z
END_MS = 1621440000000  # 2021-05-19T16:00:00Z (exclusive)
CANDLE_MS = 300_000
STEP_MS = 75_000  # four points spaced inside each 5-minute candle
FUNDING_MS = 8 * 3600 * 1000
SYMBOLS = [  # (file stem, Binance USD-M symbol, offset so frames interleave in a fixed order)
    ("BTC", "BTCUSDT", 0),
    ("ETH", "ETHUSDT", 100),
    ("SOL", "SOLUSDT", 200),
]


def text(d: Decimal) -> str:
    """Exact plain decimal text (no exponent), as Binance writes prices."""
    return format(d, "f")


def load(path: str):
    with open(path, "rb") as f:
        raw = f.read()
    rows = json.loads(raw, parse_float=Decimal, parse_int=int)
    return hashlib.sha256(raw).hexdigest(), rows


def points(o: Decimal, h: Decimal, l: Decimal, c: Decimal):
    """open, low/high in likely order, close."""
    middle = (l, h) if c >= o else (h, l)
    return [o, middle[0], middle[1], c]


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    data_dir = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/binance_spot_5m_2020-12_2021-07"
    out_path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "crash-2021-05-19.jsonl")

    lines = []
    for stem, symbol, offset in SYMBOLS:
        digest, rows = load(os.path.join(data_dir, f"{stem}_USDT-5m.json"))
        print(f"{stem}_USDT-5m.json sha256 {digest}", file=sys.stderr)
        kept = [r for r in rows if START_MS <= r[0] < END_MS]
        expected = (END_MS - START_MS) // CANDLE_MS
        if len(kept) != expected:
            print(f"{stem}: expected {expected} candles, found {len(kept)}", file=sys.stderr)
            return 1
        stream = f"{symbol.lower()}@markPrice@1s"
        for open_ms, o, h, l, c, _vol in kept:
            for k, price in enumerate(points(o, h, l, c)):
                t = open_ms + k * STEP_MS + offset
                next_funding = (t // FUNDING_MS + 1) * FUNDING_MS
                data = (
                    '{"e":"markPriceUpdate","E":%d,"s":"%s","p":"%s","i":"%s","P":"%s","r":"0","T":%d}'
                    % (t, symbol, text(price), text(price), text(price), next_funding)
                )
                frame = '{"stream":"%s","data":%s}' % (stream, data)
                line = json.dumps(
                    {"venue": "binance-usdm", "received_ms": t, "frame": frame},
                    separators=(",", ":"),
                )
                lines.append((t, line))
    lines.sort(key=lambda x: x[0])
    with open(out_path, "w", encoding="utf-8", newline="\n") as f:
        for _, line in lines:
            f.write(line + "\n")
    print(f"wrote {len(lines)} lines to {out_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
