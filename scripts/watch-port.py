#!/usr/bin/env python3
"""What a client sees on a URL while a Stage rolls: one GET every --every ms (a new connection
each), for --seconds; prints the answers as runs ("1.1.0 for 3.20 s", "no answer for 1.52 s").

    scripts/watch-port.py http://127.0.0.1:8081/ --seconds 30

Used to measure the README's walk-through; standard library only.
"""

import argparse
import time
import urllib.error
import urllib.request


def answer(url, timeout):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode(errors="replace").strip().split()[-1]
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except Exception:  # refused, reset, timed out: the client got nothing
        return "no answer"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("url")
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--every", type=float, default=10, help="milliseconds between requests")
    a = p.parse_args()
    runs = []  # [answer, first seen, last seen, count]
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        t = time.monotonic()
        got = answer(a.url, 1.0)
        if runs and runs[-1][0] == got:
            runs[-1][2] = time.monotonic()
            runs[-1][3] += 1
        else:
            runs.append([got, t, time.monotonic(), 1])
        time.sleep(max(0.0, a.every / 1000 - (time.monotonic() - t)))
    start = runs[0][1] if runs else 0
    for got, first, last, n in runs:
        print(f"{first - start:7.2f} s  {got:<12} for {last - first:5.2f} s ({n} requests)")


if __name__ == "__main__":
    main()
