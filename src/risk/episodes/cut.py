#!/usr/bin/env python3
"""Cut the embedded `crash-2021-05-19` episode from Binance 5-minute spot candles.

Reads the freqtrade candle files of ../shared/data/binance_spot_5m_2020-12_2021-07/
([open_time_ms, open, high, low, close, volume]) for BTC, ETH, SOL, XRP, ADA and DOT, keeps the
candles opening from 2021-05-18 12:00 to 2021-05-20 12:00 UTC (inclusive) and writes
`ts,symbol,price` lines: the candle's open time (ms, UTC) and its open price, copied as text
(never through a float), so every price is byte-for-byte the source's.

Usage: python3 cut.py /work/shared/data/binance_spot_5m_2020-12_2021-07 > crash-2021-05-19.csv
"""
import json
import sys

START = 1621339200000  # 2021-05-18T12:00:00Z
END = 1621512000000  # 2021-05-20T12:00:00Z
ASSETS = ["BTC", "ETH", "SOL", "XRP", "ADA", "DOT"]

src = sys.argv[1]
print("# crash-2021-05-19: Binance spot 5-minute candle opens, 2021-05-18 12:00 to 2021-05-20 12:00 UTC")
print("# source: iterativv/NostalgiaForInfinity@52f08a78f6fd91142f8ea06b991f5a2b5813e7e4 user_data/data/binance/<SYM>_USDT-5m.json (cut by cut.py)")
print("ts,symbol,price")
for a in ASSETS:
    with open(f"{src}/{a}_USDT-5m.json") as f:
        rows = json.load(f, parse_float=str, parse_int=str)
    for r in rows:
        ts = int(r[0])
        if START <= ts <= END:
            print(f"{ts},{a},{r[1]}")
